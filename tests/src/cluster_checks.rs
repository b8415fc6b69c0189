//! Waiting for and checking the region layout of an in-process cluster, shared by the split
//! and merge tests.

use crate::cluster::TestCluster;
use crate::regions::{node_regions_disjoint, pd_regions, tiling_error};
use crate::wait_until;
use ringkv_proto::keys;
use ringkv_proto::metapb::Region;
use std::time::Duration;

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
