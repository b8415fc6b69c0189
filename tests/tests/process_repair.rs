//! Replica repair with real processes: four `ringkv-node`s, a region on three of them; one is
//! `kill -9`ed and stays down; after the placement driver's down time the region has three
//! healthy voters again (the fourth node took a replica) and every acknowledged key reads back.

use ringkv_proto::metapb::PeerRole;
use ringkv_tests::debug;
use ringkv_tests::process::{ProcessCluster, FAST_NODE_TOML};
use ringkv_tests::wait_until;
use std::time::Duration;

const PLACEMENT_TOML: &str = "max_store_down_time_ms = 3000\n";

#[test]
fn a_killed_node_s_replicas_are_rebuilt_elsewhere_with_nothing_lost() {
    let mut cluster = ProcessCluster::start_with_configs(4, FAST_NODE_TOML, PLACEMENT_TOML);
    let (rt, client) = cluster.client();
    rt.block_on(async {
        for i in 0..200 {
            client.put(format!("k{i}"), format!("v{i}")).await.unwrap();
        }
    });
    let key = ringkv_proto::keys::encode(&ringkv_proto::keys::default_keyspace(), b"k1");
    let pd = client.pd().clone();
    let before = rt.block_on(pd.get_region(&key)).unwrap().region;
    let store_ids: Vec<u64> = (0..4)
        .map(|i| {
            rt.block_on(debug::store_id(cluster.node_addr(i)))
                .expect("node answers")
        })
        .collect();
    let victim = (0..4)
        .find(|&i| before.peers.iter().any(|p| p.store_id == store_ids[i]))
        .expect("a node with a replica");
    cluster.kill_node(victim);

    wait_until(
        "three healthy voters without the killed node",
        Duration::from_secs(90),
        || {
            let r = rt.block_on(pd.get_region(&key)).ok()?.region;
            (r.peers.len() == 3
                && r.peers.iter().all(|p| p.store_id != store_ids[victim])
                && r.peers.iter().all(|p| p.role == PeerRole::Voter as i32))
            .then_some(())
        },
    );
    rt.block_on(async {
        for i in 0..200 {
            let v = client.get(format!("k{i}")).await.unwrap();
            assert_eq!(
                v,
                Some(format!("v{i}").into_bytes()),
                "k{i} after the repair"
            );
        }
    });
}
