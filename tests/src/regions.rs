//! Checks over the region layout of a cluster: the placement driver's routing table must tile
//! the keyspace, and the regions a node holds must never overlap.

use crate::debug;
use ringkv_client::PdClient;
use ringkv_proto::keys::ranges_overlap;
use ringkv_proto::kvrpcpb::{Context, Keyspace, RawScanRequest};
use ringkv_proto::metapb::Region;
use std::collections::BTreeMap;

/// Every region the placement driver knows, in key order, with the address of its leader's
/// store if a leader has reported.
pub async fn pd_regions(pd: &PdClient) -> Vec<(Region, Option<String>)> {
    let routes = pd
        .scan_regions(b"", b"", 0)
        .await
        .expect("placement driver answers scan_regions");
    let stores: BTreeMap<u64, String> = pd
        .get_all_stores()
        .await
        .expect("placement driver lists stores")
        .into_iter()
        .map(|s| (s.id, s.address))
        .collect();
    routes
        .into_iter()
        .map(|r| {
            let addr = r.leader.and_then(|l| stores.get(&l.store_id).cloned());
            (r.region, addr)
        })
        .collect()
}

/// Why `regions` (in key order) do not cover the whole keyspace exactly once, if they don't.
pub fn tiling_error(regions: &[Region]) -> Option<String> {
    let Some(first) = regions.first() else {
        return Some("no regions".into());
    };
    if !first.start_key.is_empty() {
        return Some(format!(
            "first region {} does not start at the beginning",
            first.id
        ));
    }
    for pair in regions.windows(2) {
        if pair[0].end_key.is_empty() || pair[0].end_key != pair[1].start_key {
            return Some(format!(
                "region {} ends at {:?} but region {} starts at {:?}",
                pair[0].id, pair[0].end_key, pair[1].id, pair[1].start_key
            ));
        }
    }
    let last = regions.last().expect("non-empty");
    if !last.end_key.is_empty() {
        return Some(format!("last region {} does not reach the end", last.id));
    }
    None
}

/// The first two of `regions` that overlap, if any.
pub fn overlapping_pair(regions: &[Region]) -> Option<(Region, Region)> {
    for (i, a) in regions.iter().enumerate() {
        for b in &regions[i + 1..] {
            if ranges_overlap(&a.start_key, &a.end_key, &b.start_key, &b.end_key) {
                return Some((a.clone(), b.clone()));
            }
        }
    }
    None
}

/// Panics unless no two of `regions` (one node's regions, listed at one instant) overlap.
pub fn assert_disjoint(node: &str, regions: &[Region]) {
    if let Some((a, b)) = overlapping_pair(regions) {
        panic!("node {node} holds overlapping regions {a:?} and {b:?}");
    }
}

/// Node `addr`'s regions, checked to be disjoint. The listing asks each peer in turn, so a
/// split or merge applied between two answers can show a parent's old range next to a new
/// region: an overlap is a failure only if a second listing shows the very same two regions
/// (ids and epochs) again; a passing one gives None, for the caller to ask again.
pub async fn node_regions_disjoint(addr: &str) -> Option<Vec<Region>> {
    let have = node_regions(addr).await?;
    let Some(pair) = overlapping_pair(&have) else {
        return Some(have);
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let again = node_regions(addr).await?;
    if overlapping_pair(&again).as_ref() == Some(&pair) {
        panic!(
            "node {addr} holds overlapping regions {:?} and {:?}",
            pair.0, pair.1
        );
    }
    None
}

/// The regions the node at `addr` holds, or None if it does not answer.
pub async fn node_regions(addr: &str) -> Option<Vec<Region>> {
    Some(
        debug::regions(addr)
            .await?
            .into_iter()
            .filter_map(|r| r.region)
            .collect(),
    )
}

/// How many keys of `keyspace` region `region` holds, counted by its leader at `leader_addr`
/// (through the KV API: a linearizable read).
pub async fn count_keys(leader_addr: &str, region: &Region, keyspace: Keyspace) -> usize {
    let mut kv = debug::kv_client(leader_addr).await;
    let r = kv
        .raw_scan(RawScanRequest {
            context: Some(Context {
                region_id: region.id,
                region_epoch: region.region_epoch,
                replica_read: false,
                stale_read: false,
                ..Default::default()
            }),
            keyspace: Some(keyspace),
            start_key: Vec::new(),
            end_key: Vec::new(),
            limit: ringkv_proto::limits::SCAN_LIMIT_MAX,
            key_only: true,
        })
        .await
        .expect("leader answers the scan")
        .into_inner();
    assert!(
        r.region_error.is_none(),
        "scan of region {} failed: {:?}",
        region.id,
        r.region_error
    );
    r.pairs.len()
}
