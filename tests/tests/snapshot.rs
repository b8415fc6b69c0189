//! Snapshots and log GC: a follower that missed more than the log keeps catches up from a
//! snapshot streamed by the leader, also when regions split while it was away (then it learns of
//! the new regions from their leaders' messages and gets a snapshot of each).

use ringkv_tests::cluster::ClusterBuilder;
use ringkv_tests::cluster_checks::node_matches_routing;
use ringkv_tests::regions::{node_regions, pd_regions, tiling_error};
use ringkv_tests::wait_until;
use std::time::Duration;

fn key(i: usize) -> Vec<u8> {
    format!("snap{i:05}").into_bytes()
}

#[test]
fn lagging_follower_catches_up_from_a_snapshot() {
    let mut c = ClusterBuilder::default().eager_log_gc(40).start();
    let client = c.client();
    let leader = c.wait_for_leader(Duration::from_secs(10));
    let follower = (leader + 1) % c.node_count();
    let regions = c.rt.block_on(node_regions(&c.node_addr(leader))).unwrap();
    assert_eq!(regions.len(), 1, "a fresh cluster has one region");
    let region_id = regions[0].id;
    c.rt.block_on(client.put(key(0), b"first".to_vec()))
        .unwrap();
    c.wait_replicated(&key(0), b"first", Duration::from_secs(10));
    let follower_last = c.region_info(follower, region_id).unwrap().last_index;
    c.stop_node(follower);

    // One entry per put: far more than the 40 entries the log keeps.
    for i in 1..300 {
        c.rt.block_on(client.put(key(i), format!("v{i}").into_bytes()))
            .unwrap();
    }
    wait_until(
        "the leader to compact its log past what the follower has",
        Duration::from_secs(20),
        || {
            let info = c.region_info(c.leader()?, region_id)?;
            (info.truncated_index > follower_last).then_some(())
        },
    );
    c.restart_node(follower);
    c.wait_replicated(&key(299), b"v299", Duration::from_secs(30));
    for i in 1..300 {
        assert_eq!(
            c.local_get(follower, &key(i)),
            Some(format!("v{i}").into_bytes()),
            "follower lacks key {i} after catching up"
        );
    }
    let info = c.region_info(follower, region_id).unwrap();
    assert!(
        info.truncated_index > follower_last,
        "the follower's log restarts after a snapshot (truncated {} <= old last {follower_last})",
        info.truncated_index
    );
    // It keeps replicating normally afterwards.
    c.rt.block_on(client.put(key(300), b"after".to_vec()))
        .unwrap();
    c.wait_replicated(&key(300), b"after", Duration::from_secs(10));
}

#[test]
fn follower_away_during_splits_gets_every_new_region() {
    let mut c = ClusterBuilder::default()
        .small_regions(16 * 1024)
        .eager_log_gc(30)
        .start();
    let client = c.client();
    let leader = c.wait_for_leader(Duration::from_secs(10));
    let follower = (leader + 2) % c.node_count();
    c.stop_node(follower);
    let value = vec![b'y'; 300];
    for chunk in (0..1500).collect::<Vec<usize>>().chunks(20) {
        let batch = chunk.iter().map(|i| (key(*i), value.clone())).collect();
        c.rt.block_on(client.batch_put(batch)).unwrap();
    }
    let pd = c.pd();
    let regions = wait_until("several regions", Duration::from_secs(30), || {
        let r: Vec<_> =
            c.rt.block_on(pd_regions(&pd))
                .into_iter()
                .map(|(r, _)| r)
                .collect();
        (r.len() >= 8 && tiling_error(&r).is_none()).then_some(r)
    });
    println!("{} regions while the follower was away", regions.len());
    c.restart_node(follower);
    wait_until(
        "the returning follower to hold every routed region",
        Duration::from_secs(60),
        || node_matches_routing(&c, follower),
    );
    for i in (0..1500).step_by(7) {
        wait_until(
            &format!("key {i} on the returning follower"),
            Duration::from_secs(20),
            || (c.local_get(follower, &key(i)) == Some(value.clone())).then_some(()),
        );
    }
}
