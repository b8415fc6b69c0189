//! The real binaries as separate processes: `kill -9` the leader's node in the middle of 10,000
//! writes, keep writing through the new leader, restart the killed node, and find every
//! acknowledged key on all three replicas.

use ringkv_proto::keys::{default_keyspace, encode};
use ringkv_tests::process::ProcessCluster;
use ringkv_tests::{debug, wait_until};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const KEYS: usize = 10_000;
const WRITERS: usize = 16;

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:05}").into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    format!("value-{i}-{}", "x".repeat(i % 50)).into_bytes()
}

#[test]
fn kill_leader_mid_write_loses_no_acknowledged_key() {
    let mut cluster = ProcessCluster::start(3);
    let (rt, client) = cluster.client();

    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (client, next, acked) = (client.clone(), next.clone(), acked.clone());
            rt.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= KEYS {
                        return;
                    }
                    // A put that times out has an unknown outcome; retrying it is safe (puts are
                    // idempotent) and only an Ok counts as acknowledged.
                    for _attempt in 0..5 {
                        if client.put(key(i), value(i)).await.is_ok() {
                            acked.lock().push(i);
                            break;
                        }
                    }
                }
            })
        })
        .collect();

    // Kill the leader's node once a third of the keys are in.
    wait_until(
        "3,000 acknowledged writes",
        Duration::from_secs(120),
        || (acked.lock().len() >= 3_000).then_some(()),
    );
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    cluster.kill_node(leader);
    let acked_at_kill = acked.lock().len();
    for w in writers {
        rt.block_on(w).unwrap();
    }
    let acked: Vec<usize> = acked.lock().clone();
    println!(
        "acknowledged {} of {KEYS} keys ({acked_at_kill} before the kill)",
        acked.len()
    );
    assert!(
        acked.len() > acked_at_kill,
        "writes continued through the new leader"
    );
    assert_eq!(acked.len(), KEYS, "every key was eventually acknowledged");

    cluster.restart_node(leader);
    // Every acknowledged key, on every replica, with its value (one connection per node).
    for node in 0..cluster.node_count() {
        let addr = cluster.node_addr(node).to_string();
        let mut missing: Vec<usize> = acked.clone();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(
                &format!("node {node} to hold every acknowledged key"),
                Duration::from_secs(90),
                || {
                    let mut c = rt.block_on(debug::debug_client(&addr))?;
                    let mut still = Vec::new();
                    for &i in &missing {
                        let req = ringkv_proto::raftpb::LocalGetRequest {
                            key: encode(&default_keyspace(), &key(i)),
                        };
                        let ok = rt
                            .block_on(c.local_get(req))
                            .is_ok_and(|r| r.get_ref().found && r.get_ref().value == value(i));
                        if !ok {
                            still.push(i);
                        }
                    }
                    missing = still;
                    missing.is_empty().then_some(())
                },
            )
        }));
        if result.is_err() {
            panic!(
                "node {node} misses {} acknowledged keys (first: {:?}); its log ends:\n{}",
                missing.len(),
                missing.first(),
                cluster.log_tail(node)
            );
        }
    }
    // And the cluster serves them all through the SDK.
    rt.block_on(async {
        let found = client
            .batch_get((0..KEYS).step_by(97).map(key).collect())
            .await
            .unwrap();
        assert_eq!(found.len(), (0..KEYS).step_by(97).count());
    });
}
