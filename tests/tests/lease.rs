//! Leader leases on the real binaries: a leader stopped (SIGSTOP) past its lease, while the
//! others elect a new leader that takes a write, must not serve the old value when it resumes:
//! neither to a read that waited in its socket while it was stopped, nor to reads sent after.

use ringkv_client::PdClient;
use ringkv_proto::kvrpcpb::{Context, RawGetRequest};
use ringkv_tests::debug;
use ringkv_tests::process::ProcessCluster;
use std::time::{Duration, Instant};

#[test]
fn a_leader_stopped_past_its_lease_serves_no_stale_read_when_it_resumes() {
    let mut cluster = ProcessCluster::start(3);
    let (rt, client) = cluster.client();
    let pd = rt
        .block_on(PdClient::connect(std::slice::from_ref(&cluster.pd_addr)))
        .unwrap();
    rt.block_on(client.put(b"lease-key".to_vec(), b"old".to_vec()))
        .unwrap();
    // Read it once through the leader, so the leader holds a lease.
    assert_eq!(
        rt.block_on(client.get(b"lease-key".to_vec())).unwrap(),
        Some(b"old".to_vec())
    );
    let encoded = ringkv_proto::keys::encode(&ringkv_proto::keys::default_keyspace(), b"lease-key");
    let route = rt.block_on(pd.get_region(&encoded)).unwrap();
    let leader_store = route.leader.expect("a leader").store_id;
    let old_leader = (0..3)
        .find(|&i| rt.block_on(debug::store_id(cluster.node_addr(i))) == Some(leader_store))
        .expect("the leader's node");
    let context = Context {
        region_id: route.region.id,
        region_epoch: route.region.region_epoch,
        replica_read: false,
        stale_read: false,
        ..Default::default()
    };

    cluster.pause_node(old_leader);
    // The others elect a new leader (after an election timeout), which takes the write.
    rt.block_on(client.put(b"lease-key".to_vec(), b"new".to_vec()))
        .unwrap();
    let written = Instant::now();
    // A read sent to the stopped leader now waits in its socket until it resumes.
    let addr = cluster.node_addr(old_leader).to_string();
    let waiting = {
        let (addr, key, context) = (addr.clone(), encoded.clone(), context);
        rt.spawn(async move {
            let mut kv = debug::kv_client(&addr).await;
            kv.raw_get(RawGetRequest {
                context: Some(context),
                key,
            })
            .await
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    cluster.resume_node(old_leader);

    let mut answers = Vec::new();
    answers.push(rt.block_on(waiting).unwrap());
    // Reads sent right after it resumed, for a second.
    let mut kv = rt.block_on(debug::kv_client(&addr));
    while written.elapsed() < Duration::from_secs(10) && answers.len() < 50 {
        answers.push(rt.block_on(kv.raw_get(RawGetRequest {
            context: Some(context),
            key: encoded.clone(),
        })));
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut refused = 0;
    for answer in &answers {
        match answer {
            Ok(r) => {
                let r = r.get_ref();
                if r.region_error.is_some() {
                    refused += 1;
                } else {
                    assert_eq!(
                        r.value,
                        b"new",
                        "the resumed old leader served {:?} after \"new\" was acknowledged",
                        String::from_utf8_lossy(&r.value)
                    );
                }
            }
            Err(_) => refused += 1,
        }
    }
    println!(
        "{} reads at the resumed old leader: {refused} refused, the rest saw the new value",
        answers.len()
    );
    assert!(refused > 0, "the old leader was never found deposed");
}
