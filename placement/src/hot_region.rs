//! The hot-region scheduler: spreads the regions with the most flow, so no store serves far
//! more reads, or applies far more writes, than the others. Pure: the flow of every hot region
//! comes in with the cluster view, operators go out.
//!
//! - **Reads** are served by a region's leader: a store's *read load* is the read bytes per
//!   second of the hot regions it leads. The hottest store hands the leadership of one of its
//!   hot regions to a voter on a store with less read load (one `TransferLeader` step).
//! - **Writes** are applied by every replica: a store's *write load* is the written bytes per
//!   second of the hot regions it holds a replica of. A replica of a hot region moves from the
//!   hottest store to one without a replica of it (add a learner, promote, remove), never
//!   leaving the replica less isolated (see [`crate::location`]).
//!
//! A move is made only when the two stores differ by more than the region's flow plus the
//! tolerance (`tolerance_ratio` of the source's load), so after it the target still carries
//! less than the source did and the move is never reversed by the next round. Reads are
//! looked at before writes; each round makes at most `budget` moves.

use crate::balance::{keeps_isolation, ClusterView};
use crate::replica_checker::{move_replica_steps, Operator, Step};
use ringkv_proto::metapb::{Peer, PeerRole, Region};
use std::collections::{BTreeMap, BTreeSet};

/// A region's flow per second, as its leader last reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowRate {
    pub read_bytes: u64,
    pub read_keys: u64,
    pub written_bytes: u64,
    pub written_keys: u64,
}

/// A region whose read or write flow is at least the hot threshold.
#[derive(Debug, Clone)]
pub struct HotRegion<'a> {
    pub region: &'a Region,
    pub leader: Peer,
    pub flow: FlowRate,
    /// Healthy and without an operator (see [`ClusterView::movable`]): it may move now. Hot
    /// regions that may not still count in the stores' loads.
    pub movable: bool,
}

/// Read and write load per schedulable store, from every hot region.
fn loads(view: &ClusterView<'_>, hot: &[HotRegion<'_>]) -> (Load, Load) {
    let mut read: Load = view.schedulable.iter().map(|s| (*s, 0)).collect();
    let mut write = read.clone();
    for h in hot {
        if let Some(l) = read.get_mut(&h.leader.store_id) {
            *l += h.flow.read_bytes;
        }
        for p in &h.region.peers {
            if let Some(l) = write.get_mut(&p.store_id) {
                *l += h.flow.written_bytes;
            }
        }
    }
    (read, write)
}

type Load = BTreeMap<u64, u64>;

/// Stores by load, highest first, ties by id.
fn by_load_desc(load: &Load) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = load.iter().map(|(s, l)| (*s, *l)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

/// Whether moving `rate` from a store carrying `source` to one carrying `target` leaves the
/// target below what the source carried, with the tolerance to spare.
fn worth_moving(source: u64, target: u64, rate: u64, tolerance_ratio: f64) -> bool {
    let tolerance = (source as f64 * tolerance_ratio) as u64;
    target.saturating_add(rate).saturating_add(tolerance) < source
}

/// Hot-region operators to start, at most `budget`; `min_bytes_per_sec` is the hot threshold,
/// `new_peer_id` hands out peer ids for replica moves.
pub fn balance_hot_regions(
    view: &ClusterView<'_>,
    hot: &[HotRegion<'_>],
    min_bytes_per_sec: u64,
    tolerance_ratio: f64,
    budget: usize,
    now_ms: i64,
    new_peer_id: &mut dyn FnMut() -> u64,
) -> Vec<Operator> {
    let (mut read, mut write) = loads(view, hot);
    let mut used: BTreeSet<u64> = BTreeSet::new();
    let mut out = Vec::new();
    // Hottest first, so each store gives up its hottest region it can.
    let mut by_read: Vec<&HotRegion<'_>> = hot
        .iter()
        .filter(|h| h.movable && h.flow.read_bytes >= min_bytes_per_sec)
        .collect();
    by_read.sort_by(|a, b| {
        b.flow
            .read_bytes
            .cmp(&a.flow.read_bytes)
            .then(a.region.id.cmp(&b.region.id))
    });
    let mut by_write: Vec<&HotRegion<'_>> = hot
        .iter()
        .filter(|h| h.movable && h.flow.written_bytes >= min_bytes_per_sec)
        .collect();
    by_write.sort_by(|a, b| {
        b.flow
            .written_bytes
            .cmp(&a.flow.written_bytes)
            .then(a.region.id.cmp(&b.region.id))
    });
    while out.len() < budget {
        if let Some((h, to)) = plan_read(view, &read, &by_read, &used, tolerance_ratio) {
            let (source, rate) = (h.leader.store_id, h.flow.read_bytes);
            out.push(Operator {
                region_id: h.region.id,
                steps: vec![Step::TransferLeader { to }],
                created_ms: now_ms,
                reason: format!(
                    "hot-region: store {source} serves {} B/s of hot reads, store {} {} B/s",
                    read[&source], to.store_id, read[&to.store_id]
                ),
            });
            *read.get_mut(&source).expect("a schedulable store") -= rate;
            *read.get_mut(&to.store_id).expect("a schedulable store") += rate;
            used.insert(h.region.id);
            continue;
        }
        if let Some((h, from, target)) = plan_write(view, &write, &by_write, &used, tolerance_ratio)
        {
            let rate = h.flow.written_bytes;
            out.push(Operator {
                region_id: h.region.id,
                steps: move_replica_steps(new_peer_id(), target, from),
                created_ms: now_ms,
                reason: format!(
                    "hot-region: store {} applies {} B/s of hot writes, store {target} {} B/s",
                    from.store_id, write[&from.store_id], write[&target]
                ),
            });
            *write.get_mut(&from.store_id).expect("a schedulable store") -= rate;
            *write.get_mut(&target).expect("a schedulable store") += rate;
            used.insert(h.region.id);
            continue;
        }
        break;
    }
    out
}

/// A leader transfer of a read-hot region from the store with the most read load, if one
/// helps: (region, the voter to lead it).
fn plan_read<'r, 'a>(
    view: &ClusterView<'_>,
    read: &Load,
    by_read: &[&'r HotRegion<'a>],
    used: &BTreeSet<u64>,
    tolerance_ratio: f64,
) -> Option<(&'r HotRegion<'a>, Peer)> {
    for (source, load) in by_load_desc(read) {
        for h in by_read
            .iter()
            .filter(|h| h.leader.store_id == source && !used.contains(&h.region.id))
        {
            let to = h
                .region
                .peers
                .iter()
                .filter(|p| {
                    p.store_id != source
                        && p.role == PeerRole::Voter as i32
                        && !view.leader_refused.contains(&p.store_id)
                        && read.get(&p.store_id).is_some_and(|t| {
                            worth_moving(load, *t, h.flow.read_bytes, tolerance_ratio)
                        })
                })
                .min_by_key(|p| (read[&p.store_id], p.store_id));
            if let Some(to) = to {
                return Some((h, *to));
            }
        }
    }
    None
}

/// A replica move of a write-hot region off the store with the most write load, if one
/// helps: (region, its replica there, the store to move it to).
fn plan_write<'r, 'a>(
    view: &ClusterView<'_>,
    write: &Load,
    by_write: &[&'r HotRegion<'a>],
    used: &BTreeSet<u64>,
    tolerance_ratio: f64,
) -> Option<(&'r HotRegion<'a>, Peer, u64)> {
    for (source, load) in by_load_desc(write) {
        for h in by_write.iter().filter(|h| !used.contains(&h.region.id)) {
            let Some(from) = h.region.peers.iter().find(|p| p.store_id == source) else {
                continue;
            };
            let target = write
                .iter()
                .filter(|(t, l)| {
                    !h.region.peers.iter().any(|p| p.store_id == **t)
                        && worth_moving(load, **l, h.flow.written_bytes, tolerance_ratio)
                        && keeps_isolation(view, h.region, source, **t)
                })
                .min_by_key(|(t, l)| (**l, **t));
            if let Some((target, _)) = target {
                return Some((h, *from, *target));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_proto::metapb::RegionEpoch;

    fn region(id: u64, stores: &[u64]) -> Region {
        Region {
            id,
            start_key: vec![id as u8],
            end_key: vec![id as u8 + 1],
            region_epoch: Some(RegionEpoch {
                conf_ver: 1,
                version: 1,
            }),
            peers: stores
                .iter()
                .map(|s| Peer {
                    id: id * 10 + s,
                    store_id: *s,
                    role: PeerRole::Voter as i32,
                })
                .collect(),
        }
    }

    fn hot<'a>(r: &'a Region, leader_store: u64, read: u64, written: u64) -> HotRegion<'a> {
        HotRegion {
            region: r,
            leader: *r
                .peers
                .iter()
                .find(|p| p.store_id == leader_store)
                .expect("a replica there"),
            flow: FlowRate {
                read_bytes: read,
                written_bytes: written,
                ..Default::default()
            },
            movable: true,
        }
    }

    fn view(stores: &[u64]) -> ClusterView<'static> {
        ClusterView {
            schedulable: stores.iter().copied().collect(),
            ..Default::default()
        }
    }

    const MIN: u64 = 1000;

    #[test]
    fn read_hot_leaders_piled_on_one_store_are_spread_over_the_voters() {
        let regions: Vec<Region> = (1..=3).map(|id| region(id, &[1, 2, 3])).collect();
        let hot: Vec<HotRegion<'_>> = regions.iter().map(|r| hot(r, 1, 10_000, 0)).collect();
        let mut ids = 100..;
        let ops = balance_hot_regions(&view(&[1, 2, 3]), &hot, MIN, 0.05, 8, 0, &mut || {
            ids.next().expect("ids")
        });
        // Store 1 leads 30 kB/s of reads; moving one region each to stores 2 and 3 leaves
        // 10 kB/s everywhere, and no third move helps.
        assert_eq!(ops.len(), 2, "{ops:?}");
        let targets: BTreeSet<u64> = ops
            .iter()
            .map(|o| match o.steps[..] {
                [Step::TransferLeader { to }] => to.store_id,
                _ => panic!("a leader transfer: {o:?}"),
            })
            .collect();
        assert_eq!(targets, BTreeSet::from([2, 3]));
    }

    #[test]
    fn write_hot_replicas_move_to_stores_without_hot_writes() {
        let regions: Vec<Region> = (1..=2).map(|id| region(id, &[1, 2, 3])).collect();
        let hot: Vec<HotRegion<'_>> = regions.iter().map(|r| hot(r, 1, 0, 50_000)).collect();
        let mut ids = 100..;
        let ops = balance_hot_regions(&view(&[1, 2, 3, 4, 5]), &hot, MIN, 0.05, 8, 0, &mut || {
            ids.next().expect("ids")
        });
        assert!(!ops.is_empty(), "stores 4 and 5 carry no hot writes");
        for op in &ops {
            let added = match op.steps[0] {
                Step::ChangePeer { peer, .. } => peer.store_id,
                _ => panic!("a replica move: {op:?}"),
            };
            assert!(added == 4 || added == 5, "{op:?}");
        }
        // Each of stores 1..=3 carries 100 kB/s, 4 and 5 nothing: two moves (one per region,
        // never the same region twice) bring two sources down to 50 kB/s.
        assert_eq!(ops.len(), 2, "{ops:?}");
        assert_ne!(ops[0].region_id, ops[1].region_id);
    }

    #[test]
    fn balanced_or_cold_regions_are_left_alone() {
        let regions: Vec<Region> = (1..=3).map(|id| region(id, &[1, 2, 3])).collect();
        // One hot reader per store: balanced.
        let spread: Vec<HotRegion<'_>> = regions
            .iter()
            .zip([1, 2, 3])
            .map(|(r, s)| hot(r, s, 10_000, 0))
            .collect();
        let mut ids = 100..;
        let mut next = || ids.next().expect("ids");
        let v = view(&[1, 2, 3]);
        assert!(balance_hot_regions(&v, &spread, MIN, 0.05, 8, 0, &mut next).is_empty());
        // Below the threshold nothing is hot, however unevenly led.
        let cold: Vec<HotRegion<'_>> = regions.iter().map(|r| hot(r, 1, MIN - 1, 0)).collect();
        assert!(balance_hot_regions(&v, &cold, MIN, 0.05, 8, 0, &mut next).is_empty());
        // A region with an operator (not movable) counts in the load but does not move.
        let mut busy: Vec<HotRegion<'_>> = regions.iter().map(|r| hot(r, 1, 10_000, 0)).collect();
        for h in &mut busy {
            h.movable = false;
        }
        assert!(balance_hot_regions(&v, &busy, MIN, 0.05, 8, 0, &mut next).is_empty());
    }

    #[test]
    fn a_store_refusing_leaders_gets_no_hot_leader() {
        let regions: Vec<Region> = (1..=2).map(|id| region(id, &[1, 2, 3])).collect();
        let hot: Vec<HotRegion<'_>> = regions.iter().map(|r| hot(r, 1, 10_000, 0)).collect();
        let mut v = view(&[1, 2, 3]);
        v.leader_refused.insert(2);
        let mut ids = 100..;
        let ops = balance_hot_regions(&v, &hot, MIN, 0.05, 8, 0, &mut || ids.next().expect("ids"));
        assert_eq!(ops.len(), 1, "{ops:?}");
        assert!(matches!(ops[0].steps[0], Step::TransferLeader { to } if to.store_id == 3));
    }
}
