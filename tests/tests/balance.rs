//! The placement driver's balancers on an in-process cluster: a 4th and then a 5th node join a
//! three-node cluster of twelve regions, and replicas and leaders move until every store is
//! within the balancers' tolerance — with every key still readable throughout.
//!
//! The tolerance: a move is made only while the busiest and the idlest store differ by more
//! than 5 % of the mean *and* by more than two regions (a move shifts one region, so it never
//! reverses their order); the test asserts at most two regions (and two leaders) between the
//! busiest and the idlest store.

use ringkv_tests::cluster::{ClusterBuilder, TestCluster};
use std::collections::BTreeMap;
use std::time::Duration;

const REGIONS: usize = 12;
const TOLERANCE: u64 = 2;

/// Replicas and leaders per store as the placement driver routes them, over every store.
fn counts(cluster: &TestCluster) -> (BTreeMap<u64, u64>, BTreeMap<u64, u64>) {
    let routes = cluster
        .rt
        .block_on(cluster.pd().scan_regions(b"", b"", 0))
        .expect("regions");
    let mut replicas: BTreeMap<u64, u64> =
        cluster.store_ids().into_iter().map(|s| (s, 0)).collect();
    let mut leaders = replicas.clone();
    for r in routes {
        for p in &r.region.peers {
            *replicas.entry(p.store_id).or_default() += 1;
        }
        if let Some(l) = r.leader {
            *leaders.entry(l.store_id).or_default() += 1;
        }
    }
    (replicas, leaders)
}

fn spread(m: &BTreeMap<u64, u64>) -> u64 {
    m.values().max().unwrap() - m.values().min().unwrap()
}

/// Waits until every store is within the tolerance, each region with 3 voters, and no
/// operator is in flight. A generous bound: on a loaded machine every step of every move waits
/// for a region heartbeat. On timeout it names what was still in flight.
fn wait_balanced(cluster: &TestCluster, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    loop {
        let ops = cluster
            .rt
            .block_on(cluster.pd().get_operators())
            .unwrap_or_default();
        let (replicas, leaders) = counts(cluster);
        let total: u64 = replicas.values().sum();
        let led: u64 = leaders.values().sum();
        if ops.is_empty()
            && total == 3 * REGIONS as u64
            && led == REGIONS as u64
            && spread(&replicas) <= TOLERANCE
            && spread(&leaders) <= TOLERANCE
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: replicas {replicas:?}, leaders {leaders:?}, operators in flight {ops:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_fourth_and_a_fifth_node_get_their_share_of_replicas_and_leaders() {
    let mut cluster = ClusterBuilder {
        balance: true,
        ..ClusterBuilder::default()
    }
    .start();
    cluster.split_and_fill(REGIONS);
    wait_balanced(&cluster, "leaders spread over the first three nodes");

    let fourth = cluster.add_node();
    wait_balanced(&cluster, "the fourth node to get its share");
    let (replicas, _) = counts(&cluster);
    assert!(replicas[&cluster.store_id(fourth)] >= 7, "{replicas:?}");
    cluster.check_filled();

    let fifth = cluster.add_node();
    wait_balanced(&cluster, "the fifth node to get its share");
    let (replicas, leaders) = counts(&cluster);
    assert!(replicas[&cluster.store_id(fifth)] >= 5, "{replicas:?}");
    assert!(leaders[&cluster.store_id(fifth)] >= 1, "{leaders:?}");
    cluster.check_filled();

    // Balanced means settled: nothing moves any more.
    let before = counts(&cluster);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(counts(&cluster), before, "balanced stores stay put");
}

#[test]
fn an_evicted_store_gives_up_every_leader_and_leads_again_once_the_scheduler_is_removed() {
    let cluster = ClusterBuilder {
        balance: true,
        ..ClusterBuilder::default()
    }
    .start();
    cluster.split_and_fill(REGIONS);
    wait_balanced(&cluster, "leaders spread over the three nodes");
    let pd = cluster.pd();
    let store = cluster.store_id(0);
    let config = cluster
        .rt
        .block_on(pd.evict_leader(store, true))
        .expect("evict-leader added");
    assert_eq!(config.evict_leader_stores, vec![store]);
    ringkv_tests::wait_until(
        "the evicted store to lead nothing",
        Duration::from_secs(120),
        || (counts(&cluster).1[&store] == 0).then_some(()),
    );
    // balance-leader does not hand leaders back while the scheduler runs, and data is served.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        counts(&cluster).1[&store],
        0,
        "the evicted store got a leader back"
    );
    cluster.check_filled();
    // Errors: an unknown store; removing a scheduler that does not run.
    assert!(cluster.rt.block_on(pd.evict_leader(999, true)).is_err());
    assert!(cluster
        .rt
        .block_on(pd.evict_leader(cluster.store_id(1), false))
        .is_err());
    cluster
        .rt
        .block_on(pd.evict_leader(store, false))
        .expect("evict-leader removed");
    wait_balanced(&cluster, "the store to lead its share again");
    assert!(counts(&cluster).1[&store] >= 2, "{:?}", counts(&cluster).1);
}
