//! The merge checker: finds small regions to merge into a small neighbour on the same stores.
//! Pure: it reads the routing table and the regions' reported sizes, and returns orders.
//!
//! A region is merged only when its size and key count were measured (a node reported them),
//! no follower lags, it has existed for `split_merge_interval_ms` since its range last changed
//! (so a fresh split is not undone at once), and the two regions together stay within the
//! limits (so the merged region does not split again). The smaller eligible neighbour is the
//! target. At most one merge per region is in flight; an order that does not complete within
//! `merge_timeout_ms` may be given again.

use ringkv_proto::metapb::Region;
use ringkv_proto::region::same_stores;
use std::collections::HashMap;

/// Limits of the merge checker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeConfig {
    /// Regions at most this large (and their merged result) may merge; 0 turns merging off.
    /// TiKV's default: 20 MiB.
    pub merge_size_bytes_max: u64,
    /// Regions with at most this many keys (and their merged result) may merge. TiKV: 200,000.
    pub merge_keys_max: u64,
    /// A region whose range changed less than this long ago is not merged. TiKV: 1 hour.
    pub split_merge_interval_ms: i64,
    /// An order not completed within this long may be given again.
    pub merge_timeout_ms: i64,
}

impl Default for MergeConfig {
    fn default() -> Self {
        MergeConfig {
            merge_size_bytes_max: 20 * 1024 * 1024,
            merge_keys_max: 200_000,
            split_merge_interval_ms: 3_600_000,
            merge_timeout_ms: 60_000,
        }
    }
}

/// What a leader last reported of its region's size and health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegionStats {
    pub size_bytes: u64,
    pub keys: u64,
    /// Followers whose log lags the leader's.
    pub pending_peers: usize,
}

/// A region as the merge checker sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub region: &'a Region,
    pub stats: Option<RegionStats>,
    /// When its range last changed, as far as the placement driver knows.
    pub range_since_ms: Option<i64>,
}

/// Merges ordered and not yet seen to complete: source -> (target, deadline).
#[derive(Debug, Default)]
pub struct MergesInFlight {
    orders: HashMap<u64, (u64, i64)>,
}

impl MergesInFlight {
    /// Forgets orders past their deadline.
    pub fn expire(&mut self, now_ms: i64) {
        self.orders.retain(|_, (_, deadline)| *deadline > now_ms);
    }

    /// Whether `region_id` is the source or target of an order in flight.
    pub fn involves(&self, region_id: u64) -> bool {
        self.orders.contains_key(&region_id) || self.orders.values().any(|(t, _)| *t == region_id)
    }

    /// The region left routing (merged away, or replaced): its order is done.
    pub fn forget(&mut self, region_id: u64) {
        self.orders.remove(&region_id);
    }

    pub fn record(&mut self, source: u64, target: u64, deadline_ms: i64) {
        self.orders.insert(source, (target, deadline_ms));
    }

    pub fn is_empty(&self) -> bool {
        self.orders.is_empty()
    }
}

fn small_and_settled(c: &Candidate<'_>, cfg: &MergeConfig, now_ms: i64) -> Option<RegionStats> {
    let stats = c.stats?;
    let settled = c
        .range_since_ms
        .is_some_and(|t| now_ms - t >= cfg.split_merge_interval_ms);
    (settled
        && stats.pending_peers == 0
        && stats.size_bytes <= cfg.merge_size_bytes_max
        && stats.keys <= cfg.merge_keys_max)
        .then_some(stats)
}

/// The neighbour `source` should merge into, if any: `prev` ends where it starts, `next`
/// starts where it ends.
pub fn merge_target<'a>(
    source: &Candidate<'_>,
    prev: Option<&Candidate<'a>>,
    next: Option<&Candidate<'a>>,
    cfg: &MergeConfig,
    now_ms: i64,
) -> Option<&'a Region> {
    if cfg.merge_size_bytes_max == 0 {
        return None;
    }
    let own = small_and_settled(source, cfg, now_ms)?;
    let eligible = |c: &&Candidate<'a>| -> Option<u64> {
        let stats = small_and_settled(c, cfg, now_ms)?;
        let fits = own.size_bytes + stats.size_bytes <= cfg.merge_size_bytes_max
            && own.keys + stats.keys <= cfg.merge_keys_max;
        (fits && same_stores(c.region, source.region) && c.region.id != source.region.id)
            .then_some(stats.size_bytes)
    };
    let prev = prev
        .filter(|p| !p.region.end_key.is_empty() && p.region.end_key == source.region.start_key)
        .and_then(|p| eligible(&p).map(|size| (size, p)));
    let next = next
        .filter(|n| {
            !source.region.end_key.is_empty() && n.region.start_key == source.region.end_key
        })
        .and_then(|n| eligible(&n).map(|size| (size, n)));
    match (prev, next) {
        (Some((ps, p)), Some((ns, n))) => Some(if ns < ps { n.region } else { p.region }),
        (Some((_, p)), None) => Some(p.region),
        (None, Some((_, n))) => Some(n.region),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_proto::metapb::{Peer, RegionEpoch};

    fn region(id: u64, start: &[u8], end: &[u8], stores: &[u64]) -> Region {
        Region {
            id,
            start_key: start.to_vec(),
            end_key: end.to_vec(),
            region_epoch: Some(RegionEpoch {
                conf_ver: 1,
                version: 2,
            }),
            peers: stores
                .iter()
                .map(|s| Peer {
                    id: id * 10 + s,
                    store_id: *s,
                    role: 0,
                })
                .collect(),
        }
    }

    fn cand(r: &Region, size: u64) -> Candidate<'_> {
        Candidate {
            region: r,
            stats: Some(RegionStats {
                size_bytes: size,
                keys: size / 100,
                pending_peers: 0,
            }),
            range_since_ms: Some(0),
        }
    }

    fn cfg() -> MergeConfig {
        MergeConfig {
            merge_size_bytes_max: 1000,
            merge_keys_max: 100,
            split_merge_interval_ms: 10,
            merge_timeout_ms: 100,
        }
    }

    #[test]
    fn picks_the_smaller_eligible_neighbour() {
        let (a, b, c) = (
            region(1, b"", b"m", &[1, 2, 3]),
            region(2, b"m", b"t", &[3, 2, 1]),
            region(3, b"t", b"", &[1, 2, 3]),
        );
        let got = merge_target(
            &cand(&b, 100),
            Some(&cand(&a, 500)),
            Some(&cand(&c, 200)),
            &cfg(),
            50,
        );
        assert_eq!(got.map(|r| r.id), Some(3));
        let got = merge_target(
            &cand(&b, 100),
            Some(&cand(&a, 100)),
            Some(&cand(&c, 200)),
            &cfg(),
            50,
        );
        assert_eq!(got.map(|r| r.id), Some(1));
    }

    #[test]
    fn refuses_big_young_unmeasured_lagging_or_scattered_regions() {
        let (a, b) = (
            region(1, b"", b"m", &[1, 2, 3]),
            region(2, b"m", b"", &[1, 2, 3]),
        );
        let now = 50;
        // Together over the size limit.
        assert!(merge_target(&cand(&b, 600), Some(&cand(&a, 600)), None, &cfg(), now).is_none());
        // Too young.
        let young = Candidate {
            range_since_ms: Some(45),
            ..cand(&a, 10)
        };
        assert!(merge_target(&cand(&b, 10), Some(&young), None, &cfg(), now).is_none());
        // Not measured.
        let unmeasured = Candidate {
            stats: None,
            ..cand(&a, 10)
        };
        assert!(merge_target(&cand(&b, 10), Some(&unmeasured), None, &cfg(), now).is_none());
        // A lagging follower.
        let lagging = Candidate {
            stats: Some(RegionStats {
                pending_peers: 1,
                ..cand(&a, 10).stats.unwrap()
            }),
            ..cand(&a, 10)
        };
        assert!(merge_target(&cand(&b, 10), Some(&lagging), None, &cfg(), now).is_none());
        // Peers on other stores.
        let elsewhere = region(1, b"", b"m", &[1, 2, 4]);
        assert!(merge_target(
            &cand(&b, 10),
            Some(&cand(&elsewhere, 10)),
            None,
            &cfg(),
            now
        )
        .is_none());
        // Not adjacent.
        let apart = region(1, b"", b"k", &[1, 2, 3]);
        assert!(merge_target(&cand(&b, 10), Some(&cand(&apart, 10)), None, &cfg(), now).is_none());
        // Turned off.
        let off = MergeConfig {
            merge_size_bytes_max: 0,
            ..cfg()
        };
        assert!(merge_target(&cand(&b, 10), Some(&cand(&a, 10)), None, &off, now).is_none());
        // And the same pair merges when all is well.
        assert_eq!(
            merge_target(&cand(&b, 10), Some(&cand(&a, 10)), None, &cfg(), now).map(|r| r.id),
            Some(1)
        );
    }

    #[test]
    fn in_flight_orders_block_both_regions_until_done_or_expired() {
        let mut f = MergesInFlight::default();
        f.record(2, 1, 100);
        assert!(f.involves(2) && f.involves(1) && !f.involves(3));
        f.expire(99);
        assert!(f.involves(2));
        f.expire(100);
        assert!(f.is_empty());
        f.record(2, 1, 100);
        f.forget(2);
        assert!(!f.involves(1));
    }
}
