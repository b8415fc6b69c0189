//! The client's view of where regions are and who leads them. It learns from the placement
//! driver on a miss and, preferably, from the nodes' own errors (`EpochNotMatch` carries the new
//! regions, `NotLeader` the new leader), which are fresher than the placement driver.

use crate::pd::RegionRoute;
use parking_lot::RwLock;
use ringkv_proto::keys::{in_range, ranges_overlap};
use ringkv_proto::metapb::{Peer, Region};
use std::collections::BTreeMap;

/// Cached routes, keyed by region start key.
#[derive(Default)]
pub struct RegionCache {
    by_start: RwLock<BTreeMap<Vec<u8>, RegionRoute>>,
}

fn newer(a: &Region, b: &Region) -> bool {
    let (ea, eb) = (
        a.region_epoch.unwrap_or_default(),
        b.region_epoch.unwrap_or_default(),
    );
    (ea.version, ea.conf_ver) > (eb.version, eb.conf_ver)
}

impl RegionCache {
    /// The cached route of the region holding encoded `key`.
    pub fn locate(&self, key: &[u8]) -> Option<RegionRoute> {
        let map = self.by_start.read();
        let (_, route) = map.range(..=key.to_vec()).next_back()?;
        in_range(key, &route.region.start_key, &route.region.end_key).then(|| route.clone())
    }

    /// Adds a route, replacing every cached region it overlaps unless one of them is newer.
    pub fn insert(&self, route: RegionRoute) {
        let mut map = self.by_start.write();
        let overlapping: Vec<Vec<u8>> = map
            .values()
            .filter(|r| {
                ranges_overlap(
                    &r.region.start_key,
                    &r.region.end_key,
                    &route.region.start_key,
                    &route.region.end_key,
                )
            })
            .map(|r| r.region.start_key.clone())
            .collect();
        if overlapping.iter().any(|k| {
            map.get(k)
                .is_some_and(|r| r.region.id == route.region.id && newer(&r.region, &route.region))
        }) {
            return;
        }
        for k in overlapping {
            map.remove(&k);
        }
        map.insert(route.region.start_key.clone(), route);
    }

    /// Records a new leader learnt from a `NotLeader` answer. A leader the cached membership
    /// does not list joined after the route was cached: it is added (replacing an older peer
    /// on its store, one peer per store), otherwise every retry would go back to the old one.
    pub fn update_leader(&self, region_id: u64, leader: Peer) {
        let mut map = self.by_start.write();
        if let Some(route) = map.values_mut().find(|r| r.region.id == region_id) {
            let peers = &mut route.region.peers;
            if !peers.iter().any(|p| p.id == leader.id) {
                peers.retain(|p| p.store_id != leader.store_id);
                peers.push(leader);
            }
            route.leader = Some(leader);
        }
    }

    /// Forgets the leader of a region (its node did not answer).
    pub fn clear_leader(&self, region_id: u64) {
        let mut map = self.by_start.write();
        if let Some(route) = map.values_mut().find(|r| r.region.id == region_id) {
            route.leader = None;
        }
    }

    /// Forgets a region entirely.
    pub fn invalidate(&self, region_id: u64) {
        self.by_start
            .write()
            .retain(|_, r| r.region.id != region_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_proto::metapb::RegionEpoch;

    fn peer(id: u64, store_id: u64) -> Peer {
        Peer {
            id,
            store_id,
            role: 0,
        }
    }

    fn region(id: u64, start: &[u8], end: &[u8], version: u64) -> RegionRoute {
        RegionRoute {
            region: Region {
                id,
                start_key: start.to_vec(),
                end_key: end.to_vec(),
                region_epoch: Some(RegionEpoch {
                    conf_ver: 1,
                    version,
                }),
                peers: vec![peer(id * 10, 1)],
            },
            leader: None,
            health: None,
        }
    }

    #[test]
    fn a_leader_the_cached_membership_does_not_list_is_added_and_used() {
        let cache = RegionCache::default();
        cache.insert(region(1, b"", b"", 1));
        let joined = peer(60, 52);
        cache.update_leader(1, joined);
        let route = cache.locate(b"k").unwrap();
        assert_eq!(route.leader, Some(joined));
        assert!(route.region.peers.contains(&joined));
        let newer_on_store_1 = peer(70, 1);
        cache.update_leader(1, newer_on_store_1);
        let route = cache.locate(b"k").unwrap();
        assert_eq!(route.leader, Some(newer_on_store_1));
        assert_eq!(
            route
                .region
                .peers
                .iter()
                .filter(|p| p.store_id == 1)
                .count(),
            1,
            "the older peer on store 1 is replaced"
        );
    }

    #[test]
    fn locate_and_replace_after_split() {
        let cache = RegionCache::default();
        cache.insert(region(1, b"", b"", 1));
        assert_eq!(cache.locate(b"k").unwrap().region.id, 1);
        // A split: region 1 now [ "", "m"), region 2 ["m", "").
        cache.insert(region(1, b"", b"m", 2));
        assert!(cache.locate(b"z").is_none());
        cache.insert(region(2, b"m", b"", 2));
        assert_eq!(cache.locate(b"z").unwrap().region.id, 2);
        assert_eq!(cache.locate(b"a").unwrap().region.id, 1);
        // A stale copy of region 1 does not replace the newer one.
        cache.insert(region(1, b"", b"", 1));
        assert_eq!(
            cache
                .locate(b"a")
                .unwrap()
                .region
                .region_epoch
                .unwrap()
                .version,
            2
        );
        cache.invalidate(2);
        assert!(cache.locate(b"z").is_none());
    }
}
