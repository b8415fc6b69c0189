//! Waiting for and checking the region layout of an in-process cluster, shared by the split
//! and merge tests; splitting it up front and the restart-and-partition nemesis the
//! transactional tests run.

use crate::cluster::TestCluster;
use crate::regions::{node_regions_disjoint, pd_regions, tiling_error};
use crate::wait_until;
use ringkv_proto::keys;
use ringkv_proto::metapb::Region;
use std::time::{Duration, Instant};

/// Splits the cluster's keyspace at these user keys (default keyspace), so transactions span
/// several regions.
pub fn presplit(c: &TestCluster, points: &[&[u8]]) {
    let raw = c.client();
    for p in points {
        c.rt.block_on(raw.split_region(crate::txn_rpc::encoded(p)))
            .expect("split");
    }
}

/// A nemesis for workloads running on `c`'s runtime, bounded in rounds (six) and time (40 s):
/// every other round a node is stopped for 1.5 s and restarted, in between the leader's node
/// is cut off for 2 s. Returns what it did.
pub fn restart_and_partition_nemesis(c: &mut TestCluster) -> Vec<String> {
    let started = Instant::now();
    let mut faults = Vec::new();
    for round in 0..6 {
        if started.elapsed() > Duration::from_secs(40) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1500));
        if round % 2 == 0 {
            let victim = round % c.node_count();
            c.stop_node(victim);
            std::thread::sleep(Duration::from_millis(1500));
            c.restart_node(victim);
            faults.push(format!("node {victim} stopped and restarted"));
        } else if let Some(leader) = c.leader() {
            c.isolate(leader);
            std::thread::sleep(Duration::from_millis(2000));
            c.heal();
            faults.push(format!("leader on node {leader} cut off for 2 s"));
        }
    }
    faults
}

/// The encoded key at ring position `pos` of the default keyspace: a clean boundary.
pub fn ring_position(pos: u64) -> Vec<u8> {
    let mut key = keys::keyspace_prefix(&keys::default_keyspace());
    key.extend_from_slice(&pos.to_be_bytes());
    key
}

/// Waits until the placement driver's regions tile the keyspace, number at least `min`, and
/// each has a reported leader; returns them.
pub fn wait_for_regions(c: &TestCluster, min: usize, limit: Duration) -> Vec<(Region, String)> {
    let pd = c.pd();
    wait_until(&format!("at least {min} routed regions"), limit, || {
        let regions = c.rt.block_on(pd_regions(&pd));
        let plain: Vec<Region> = regions.iter().map(|(r, _)| r.clone()).collect();
        if regions.len() < min || tiling_error(&plain).is_some() {
            return None;
        }
        regions
            .into_iter()
            .map(|(r, leader)| leader.map(|l| (r, l)))
            .collect()
    })
}

/// Every running node's regions are disjoint, and once replication settles, every node holds
/// exactly the placement driver's regions (same ids and epochs).
pub fn assert_nodes_agree(c: &TestCluster, limit: Duration) {
    wait_until("every node to hold the routed regions", limit, || {
        (0..c.node_count()).try_for_each(|i| node_matches_routing(c, i))
    });
}

/// Some if node `i` holds exactly the placement driver's regions (same ids and epochs);
/// panics if two of its regions overlap.
pub fn node_matches_routing(c: &TestCluster, i: usize) -> Option<()> {
    let mut want: Vec<Region> =
        c.rt.block_on(pd_regions(&c.pd()))
            .into_iter()
            .map(|(r, _)| r)
            .collect();
    want.sort_by_key(|r| r.id);
    let mut have = c.rt.block_on(node_regions_disjoint(&c.node_addr(i)))?;
    have.sort_by_key(|r| r.id);
    (have == want).then_some(())
}

/// Waits until the placement driver routes exactly `count` regions that tile the keyspace,
/// each with a reported leader; returns them.
pub fn wait_for_region_count(
    c: &TestCluster,
    count: usize,
    limit: Duration,
) -> Vec<(Region, String)> {
    let pd = c.pd();
    wait_until(&format!("exactly {count} routed regions"), limit, || {
        let regions = c.rt.block_on(pd_regions(&pd));
        let plain: Vec<Region> = regions.iter().map(|(r, _)| r.clone()).collect();
        if regions.len() != count || tiling_error(&plain).is_some() {
            return None;
        }
        regions
            .into_iter()
            .map(|(r, leader)| leader.map(|l| (r, l)))
            .collect()
    })
}
