//! Faults on the in-process cluster: a partitioned leader is replaced and cannot serve; stopped
//! and restarted nodes recover everything from their data directories.

use ringkv_tests::cluster::{ClusterBuilder, TestCluster};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

fn put_all(c: &TestCluster, client: &ringkv_client::RawClient, prefix: &str, n: u32) {
    c.rt.block_on(async {
        for i in 0..n {
            client
                .put(
                    format!("{prefix}{i:04}").into_bytes(),
                    format!("v{i}").into_bytes(),
                )
                .await
                .unwrap_or_else(|e| panic!("put {prefix}{i}: {e}"));
        }
    });
}

fn check_all(c: &TestCluster, client: &ringkv_client::RawClient, prefix: &str, n: u32) {
    c.rt.block_on(async {
        for i in 0..n {
            let got = client
                .get(format!("{prefix}{i:04}").into_bytes())
                .await
                .unwrap();
            assert_eq!(got, Some(format!("v{i}").into_bytes()), "{prefix}{i:04}");
        }
    });
}

#[test]
fn partitioned_leader_is_replaced_and_stops_serving() {
    let c = ClusterBuilder::default().start();
    let client = c.client();
    put_all(&c, &client, "before", 50);
    let old = c.wait_for_leader(LONG);
    c.isolate(old);
    let new = c.wait_for_new_leader(old, LONG);
    assert_ne!(new, old);
    // Writes go on through the majority side.
    put_all(&c, &client, "during", 50);
    // The isolated old leader cannot confirm a read: it answers NotLeader (after stepping down
    // through check-quorum) or times out, but never serves.
    c.rt.block_on(async {
        let route = client
            .pd()
            .get_region(&ringkv_proto::keys::encode(
                &ringkv_proto::keys::default_keyspace(),
                b"during0001",
            ))
            .await
            .unwrap();
        let mut kv = ringkv_tests::debug::kv_client(&c.node_addr(old)).await;
        let req = ringkv_proto::kvrpcpb::RawGetRequest {
            context: Some(ringkv_proto::kvrpcpb::Context {
                region_id: route.region.id,
                region_epoch: route.region.region_epoch,
                ..Default::default()
            }),
            key: ringkv_proto::keys::encode(&ringkv_proto::keys::default_keyspace(), b"during0001"),
        };
        let r = tokio::time::timeout(Duration::from_secs(15), kv.raw_get(req)).await;
        match r {
            Ok(Ok(resp)) => {
                let resp = resp.into_inner();
                assert!(
                    resp.region_error.is_some(),
                    "isolated old leader served a read: {resp:?}"
                );
            }
            Ok(Err(status)) => assert_ne!(status.code(), tonic::Code::Ok),
            Err(_) => {} // no answer at all is also not a stale read
        }
    });
    assert!(
        c.local_get(old, b"during0001").is_none(),
        "isolated node cannot have applied new writes"
    );
    c.heal();
    // The old leader catches up as a follower.
    c.wait_replicated(b"during0049", b"v49", LONG);
    check_all(&c, &client, "before", 50);
    check_all(&c, &client, "during", 50);
}

#[test]
fn minority_partition_cannot_elect_and_majority_keeps_serving() {
    let c = ClusterBuilder::default().start();
    let client = c.client();
    let leader = c.wait_for_leader(LONG);
    let follower = (0..3).find(|&i| i != leader).unwrap();
    c.isolate(follower);
    put_all(&c, &client, "k", 30);
    // Pre-vote keeps the isolated follower from disrupting the leader when it returns.
    std::thread::sleep(Duration::from_secs(2));
    c.heal();
    put_all(&c, &client, "m", 30);
    c.wait_replicated(b"k0029", b"v29", LONG);
    c.wait_replicated(b"m0029", b"v29", LONG);
}

#[test]
fn stopped_node_recovers_and_catches_up() {
    let mut c = ClusterBuilder::default().start();
    let client = c.client();
    put_all(&c, &client, "a", 50);
    let leader = c.wait_for_leader(LONG);
    let victim = (0..3).find(|&i| i != leader).unwrap();
    c.stop_node(victim);
    put_all(&c, &client, "b", 50);
    c.restart_node(victim);
    c.wait_replicated(b"b0049", b"v49", LONG);
    assert_eq!(c.local_get(victim, b"a0000"), Some(b"v0".to_vec()));
}

#[test]
fn whole_cluster_restart_loses_nothing() {
    let mut c = ClusterBuilder::default().start();
    let client = c.client();
    put_all(&c, &client, "x", 100);
    c.rt.block_on(async { client.delete(b"x0007".to_vec()).await.unwrap() });
    for i in 0..3 {
        c.stop_node(i);
    }
    for i in 0..3 {
        c.restart_node(i);
    }
    c.wait_for_leader(LONG);
    let client = c.client();
    c.rt.block_on(async {
        for i in 0..100u32 {
            let got = client.get(format!("x{i:04}").into_bytes()).await.unwrap();
            let want = (i != 7).then(|| format!("v{i}").into_bytes());
            assert_eq!(got, want, "x{i:04}");
        }
    });
    // And the cluster still takes writes.
    put_all(&c, &client, "y", 10);
}

#[test]
fn leader_stop_fails_over_with_no_acknowledged_write_lost() {
    let mut c = ClusterBuilder::default().start();
    let client = c.client();
    put_all(&c, &client, "p", 50);
    let leader = c.wait_for_leader(LONG);
    c.stop_node(leader);
    put_all(&c, &client, "q", 50);
    check_all(&c, &client, "p", 50);
    c.restart_node(leader);
    c.wait_replicated(b"q0049", b"v49", LONG);
}
