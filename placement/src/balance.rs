//! The balance schedulers: spread leaders (balance-leader) and replicas (balance-region) evenly
//! over the stores that can take them. Pure: the cluster comes in as a [`ClusterView`], the
//! operators to start go out; the placement core runs them one step at a time.
//!
//! - **balance-leader** moves leadership from the store with the most leaders to one with the
//!   fewest that holds a voter of the region (one `TransferLeader` step).
//! - **balance-region** moves a replica from the store with the highest *region score* to the
//!   one with the lowest that has none of the region: add a learner there, promote it, remove
//!   the old peer (a leader asked to remove itself hands leadership over first). A store's
//!   region score is the sum of its regions' sizes in MiB, each region counting at least 1, so
//!   small regions balance by count and large ones by size.
//!
//! Convergence without flapping: a move is made only while the two stores differ by more than
//! the tolerance (`tolerance_ratio` of the mean, at least 1) *and* by more than twice what
//! the move shifts, so a move never reverses the order of the two stores; a cluster within
//! tolerance is left alone. Operators in flight are bounded per kind (`*_schedule_limit`).

use crate::replica_checker::{move_replica_steps, Operator, Step};
use ringkv_proto::metapb::{Peer, PeerRole, Region};
use std::collections::{BTreeMap, BTreeSet};

/// How the balance schedulers run; `[schedule]` in the placement configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BalanceConfig {
    /// balance-leader runs (false: paused).
    pub balance_leader: bool,
    /// balance-region runs (false: paused).
    pub balance_region: bool,
    /// Leader transfers in flight at most.
    pub leader_schedule_limit: usize,
    /// Replica moves in flight at most.
    pub region_schedule_limit: usize,
    /// Differences up to this fraction of the mean score are left alone.
    pub tolerance_ratio: f64,
    /// hot-region runs (false: paused); see [`crate::hot_region`].
    pub balance_hot_region: bool,
    /// Hot-region operators in flight at most.
    pub hot_region_schedule_limit: usize,
    /// A region reading or writing at least this many bytes per second is hot.
    pub hot_region_min_bytes_per_sec: u64,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        BalanceConfig {
            balance_leader: true,
            balance_region: true,
            leader_schedule_limit: 4,
            region_schedule_limit: 4,
            tolerance_ratio: 0.05,
            balance_hot_region: true,
            hot_region_schedule_limit: 4,
            hot_region_min_bytes_per_sec: 64 * 1024,
        }
    }
}

/// A region the schedulers may move: healthy (every replica up, the full count, a leader
/// known) and without an operator.
#[derive(Debug, Clone)]
pub struct RegionLoad<'a> {
    pub region: &'a Region,
    pub leader: Peer,
    /// Its size in MiB as counted in region scores (at least 1).
    pub score: u64,
}

/// What the schedulers see of the cluster.
#[derive(Debug, Default, Clone)]
pub struct ClusterView<'a> {
    /// Stores that can take leaders and replicas: up, heartbeating, not being decommissioned.
    pub schedulable: BTreeSet<u64>,
    /// Schedulable stores that take no leaders (an evict-leader scheduler runs for them).
    pub leader_refused: BTreeSet<u64>,
    /// Store locations (see [`crate::location`]) when location labels are in use; a move
    /// never leaves the moved replica less isolated than it was.
    pub locations: BTreeMap<u64, Vec<String>>,
    /// Leaders and region score per store, over every region (movable or not).
    pub leaders: BTreeMap<u64, u64>,
    pub region_scores: BTreeMap<u64, u64>,
    /// The regions that may move, in id order.
    pub movable: Vec<RegionLoad<'a>>,
}

/// A region's score from its approximate size (None: not measured yet).
pub fn region_score(size_bytes: Option<u64>) -> u64 {
    (size_bytes.unwrap_or(0) >> 20).max(1)
}

/// Whether `a` exceeds `b` by more than the tolerance and by more than twice `step`.
fn worth_moving(a: u64, b: u64, step: u64, mean: f64, cfg: &BalanceConfig) -> bool {
    let tolerance = (cfg.tolerance_ratio * mean).max(1.0);
    a > b && (a - b) as f64 > tolerance && a - b > 2 * step
}

fn mean(scores: &BTreeMap<u64, u64>, stores: &BTreeSet<u64>) -> f64 {
    if stores.is_empty() {
        return 0.0;
    }
    let total: u64 = stores
        .iter()
        .map(|s| scores.get(s).copied().unwrap_or(0))
        .sum();
    total as f64 / stores.len() as f64
}

/// Stores of `stores` ordered by score, highest first, ties by id.
fn by_score_desc(scores: &BTreeMap<u64, u64>, stores: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = stores
        .iter()
        .map(|&s| (s, scores.get(&s).copied().unwrap_or(0)))
        .collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

/// Leader transfers to start, at most `budget`.
pub fn balance_leaders(
    view: &ClusterView<'_>,
    cfg: &BalanceConfig,
    budget: usize,
    now_ms: i64,
) -> Vec<Operator> {
    let mut leaders = view.leaders.clone();
    let mean = mean(&leaders, &view.schedulable);
    let mut used: BTreeSet<u64> = BTreeSet::new();
    let mut exhausted: BTreeSet<u64> = BTreeSet::new();
    let mut out = Vec::new();
    // (leader's store, store of another voter) -> the regions that could move between them,
    // so each pick is a lookup rather than a scan.
    let mut between: BTreeMap<(u64, u64), Vec<usize>> = BTreeMap::new();
    for (i, r) in view.movable.iter().enumerate() {
        for p in &r.region.peers {
            if p.store_id != r.leader.store_id && p.role == PeerRole::Voter as i32 {
                between
                    .entry((r.leader.store_id, p.store_id))
                    .or_default()
                    .push(i);
            }
        }
    }
    while out.len() < budget {
        let order = by_score_desc(&leaders, &view.schedulable);
        let mut planned = None;
        // The most loaded source that can hand a leader to one of the least loaded stores
        // holding a voter of a region it leads.
        'sources: for &(source, most) in &order {
            if exhausted.contains(&source) {
                continue;
            }
            for &(target, fewest) in order.iter().rev() {
                if !worth_moving(most, fewest, 1, mean, cfg) {
                    break;
                }
                if view.leader_refused.contains(&target) {
                    continue;
                }
                let Some(candidates) = between.get_mut(&(source, target)) else {
                    continue;
                };
                while let Some(i) = candidates.pop() {
                    let r = &view.movable[i];
                    if used.contains(&r.region.id) {
                        continue;
                    }
                    let to = *r
                        .region
                        .peers
                        .iter()
                        .find(|p| p.store_id == target)
                        .expect("indexed by its voters");
                    planned = Some((r, to, source, most, target, fewest));
                    break 'sources;
                }
            }
            // Within this call targets only gain leaders: this source stays without a move.
            exhausted.insert(source);
        }
        let Some((r, to, source, most, target, fewest)) = planned else {
            break;
        };
        used.insert(r.region.id);
        *leaders.entry(source).or_default() -= 1;
        *leaders.entry(target).or_default() += 1;
        out.push(Operator {
            region_id: r.region.id,
            steps: vec![Step::TransferLeader { to }],
            created_ms: now_ms,
            reason: format!(
                "balance-leader: store {source} leads {most}, store {target} leads {fewest}"
            ),
        });
    }
    out
}

/// evict-leader: a leader transfer for every region led from a store in `view.leader_refused`,
/// at most `budget`, each to the voter whose store leads the fewest. `led_from_evicting` are
/// those regions (healthy or not: a region with a replica catching up is skipped, as a
/// transfer to it would stall) with their leader, in id order.
pub fn evict_leaders(
    view: &ClusterView<'_>,
    led_from_evicting: &[RegionLoad<'_>],
    budget: usize,
    now_ms: i64,
) -> Vec<Operator> {
    let mut leaders = view.leaders.clone();
    let mut out = Vec::new();
    for r in led_from_evicting {
        if out.len() >= budget {
            break;
        }
        let target = r
            .region
            .peers
            .iter()
            .filter(|p| {
                p.role == PeerRole::Voter as i32
                    && p.store_id != r.leader.store_id
                    && view.schedulable.contains(&p.store_id)
                    && !view.leader_refused.contains(&p.store_id)
            })
            .min_by_key(|p| (leaders.get(&p.store_id).copied().unwrap_or(0), p.store_id));
        let Some(to) = target.copied() else {
            continue;
        };
        *leaders.entry(to.store_id).or_default() += 1;
        out.push(Operator {
            region_id: r.region.id,
            steps: vec![Step::TransferLeader { to }],
            created_ms: now_ms,
            reason: format!(
                "evict-leader: store {} gives up its leaders",
                r.leader.store_id
            ),
        });
    }
    out
}

/// Whether moving `region`'s replica from `source` to `target` leaves it at least as isolated
/// from the region's other replicas as it was (always true without locations).
pub(crate) fn keeps_isolation(
    view: &ClusterView<'_>,
    region: &Region,
    source: u64,
    target: u64,
) -> bool {
    if view.locations.is_empty() {
        return true;
    }
    let at = |store: u64| view.locations.get(&store).map(Vec::as_slice);
    let others: Vec<&[String]> = region
        .peers
        .iter()
        .filter(|p| p.store_id != source)
        .filter_map(|p| at(p.store_id))
        .collect();
    let (Some(from), Some(to)) = (at(source), at(target)) else {
        return false;
    };
    crate::location::isolation(to, others.iter().copied())
        >= crate::location::isolation(from, others.iter().copied())
}

/// Replica moves to start, at most `budget`; `new_peer_id` hands out peer ids.
pub fn balance_regions(
    view: &ClusterView<'_>,
    cfg: &BalanceConfig,
    budget: usize,
    now_ms: i64,
    new_peer_id: &mut dyn FnMut() -> u64,
) -> Vec<Operator> {
    let mut scores = view.region_scores.clone();
    let mean = mean(&scores, &view.schedulable);
    let mut used: BTreeSet<u64> = BTreeSet::new();
    let mut exhausted: BTreeSet<u64> = BTreeSet::new();
    let mut out = Vec::new();
    let mut on_store: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, r) in view.movable.iter().enumerate() {
        for p in &r.region.peers {
            on_store.entry(p.store_id).or_default().push(i);
        }
    }
    while out.len() < budget {
        let order = by_score_desc(&scores, &view.schedulable);
        let mut planned = None;
        // The most loaded source with a replica one of the least loaded targets can take.
        'pairs: for &(source, highest) in &order {
            if exhausted.contains(&source) {
                continue;
            }
            for &(target, lowest) in order.iter().rev() {
                if !worth_moving(highest, lowest, 1, mean, cfg) {
                    break;
                }
                for &i in on_store.get(&source).into_iter().flatten() {
                    let r = &view.movable[i];
                    if used.contains(&r.region.id)
                        || r.region.peers.iter().any(|p| p.store_id == target)
                        || !worth_moving(highest, lowest, r.score, mean, cfg)
                        || !keeps_isolation(view, r.region, source, target)
                    {
                        continue;
                    }
                    let from = *r
                        .region
                        .peers
                        .iter()
                        .find(|p| p.store_id == source)
                        .expect("indexed by its stores");
                    planned = Some((r, from, source, highest, target, lowest));
                    break 'pairs;
                }
            }
            // Within this call targets only gain: this source stays without a move.
            exhausted.insert(source);
        }
        let Some((r, from, source, highest, target, lowest)) = planned else {
            break;
        };
        used.insert(r.region.id);
        *scores.entry(source).or_default() -= r.score;
        *scores.entry(target).or_default() += r.score;
        out.push(Operator {
            region_id: r.region.id,
            steps: move_replica_steps(new_peer_id(), target, from),
            created_ms: now_ms,
            reason: format!(
                "balance-region: store {source} scores {highest}, store {target} scores {lowest}"
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_proto::metapb::ConfChangeKind;

    fn peer(id: u64, store_id: u64) -> Peer {
        Peer {
            id,
            store_id,
            role: PeerRole::Voter as i32,
        }
    }

    /// Regions (with their leader and score) over schedulable stores.
    struct World {
        stores: Vec<u64>,
        regions: Vec<(Region, Peer, u64)>,
    }

    /// `regions` regions with replicas on stores `on` (rotating) and leaders on the first.
    fn world(stores: &[u64], on: &[u64], regions: u64) -> World {
        let regions = (1..=regions)
            .map(|id| {
                let peers: Vec<Peer> = (0..3)
                    .map(|k| peer(id * 10 + k as u64, on[(id as usize + k) % on.len()]))
                    .collect();
                let leader = peers[0];
                (
                    Region {
                        id,
                        peers,
                        ..Default::default()
                    },
                    leader,
                    1,
                )
            })
            .collect();
        World {
            stores: stores.to_vec(),
            regions,
        }
    }

    fn view(w: &World) -> ClusterView<'_> {
        let mut v = ClusterView {
            schedulable: w.stores.iter().copied().collect(),
            ..Default::default()
        };
        for (region, leader, score) in &w.regions {
            for p in &region.peers {
                *v.region_scores.entry(p.store_id).or_default() += score;
            }
            *v.leaders.entry(leader.store_id).or_default() += 1;
            v.movable.push(RegionLoad {
                region,
                leader: *leader,
                score: *score,
            });
        }
        v
    }

    /// Carries `ops` out in `w`, as leaders do (one removing itself hands over first).
    fn apply(w: &mut World, ops: &[Operator]) {
        for op in ops {
            let (region, leader, _) = w
                .regions
                .iter_mut()
                .find(|(r, _, _)| r.id == op.region_id)
                .unwrap();
            for step in &op.steps {
                match *step {
                    Step::TransferLeader { to } => *leader = to,
                    Step::ChangePeer { kind, peer } => match kind {
                        ConfChangeKind::AddLearner => region.peers.push(peer),
                        ConfChangeKind::AddVoter => {
                            let p = region.peers.iter_mut().find(|p| p.id == peer.id).unwrap();
                            p.role = PeerRole::Voter as i32;
                        }
                        ConfChangeKind::Remove => {
                            region.peers.retain(|p| p.id != peer.id);
                            if leader.id == peer.id {
                                *leader = region.peers[0];
                            }
                        }
                    },
                    Step::Split { .. } | Step::Merge { .. } => {
                        panic!("the balancers neither split nor merge: {op:?}")
                    }
                }
            }
        }
    }

    fn spread(m: &BTreeMap<u64, u64>, stores: &[u64]) -> (u64, u64) {
        let vals: Vec<u64> = stores
            .iter()
            .map(|s| m.get(s).copied().unwrap_or(0))
            .collect();
        (*vals.iter().min().unwrap(), *vals.iter().max().unwrap())
    }

    #[test]
    fn new_stores_fill_up_until_every_store_is_within_tolerance_and_then_nothing_moves() {
        let stores = [1, 2, 3, 4, 5];
        let mut w = world(&stores, &[1, 2, 3], 60);
        let cfg = BalanceConfig::default();
        let mut next = 1000;
        for _round in 0..200 {
            let ops = balance_regions(&view(&w), &cfg, 4, 0, &mut || {
                next += 1;
                next
            });
            if ops.is_empty() {
                break;
            }
            apply(&mut w, &ops);
        }
        let (lo, hi) = spread(&view(&w).region_scores, &stores);
        assert!(hi - lo <= 2, "region counts {lo}..{hi}");
        for _round in 0..200 {
            let ops = balance_leaders(&view(&w), &cfg, 4, 0);
            if ops.is_empty() {
                break;
            }
            apply(&mut w, &ops);
        }
        let v = view(&w);
        let (lo, hi) = spread(&v.leaders, &stores);
        assert!(hi - lo <= 2, "leader counts {lo}..{hi}: {:?}", v.leaders);
        // Balanced: a further round plans nothing (no flapping).
        assert!(balance_regions(&v, &cfg, 4, 0, &mut || 1).is_empty());
        assert!(balance_leaders(&v, &cfg, 4, 0).is_empty());
    }

    #[test]
    fn a_region_never_gets_two_replicas_on_one_store_and_moves_respect_the_budget() {
        let w = world(&[1, 2, 3, 4], &[1, 2, 3], 30);
        let v = view(&w);
        let ops = balance_regions(&v, &BalanceConfig::default(), 3, 0, &mut || 77);
        assert_eq!(ops.len(), 3);
        for op in &ops {
            let r = v
                .movable
                .iter()
                .find(|r| r.region.id == op.region_id)
                .unwrap()
                .region;
            let Step::ChangePeer { peer: added, .. } = op.steps[0] else {
                panic!("starts with a learner");
            };
            assert!(r.peers.iter().all(|p| p.store_id != added.store_id));
            assert_eq!(added.store_id, 4, "onto the empty store");
        }
        let ids: BTreeSet<u64> = ops.iter().map(|o| o.region_id).collect();
        assert_eq!(ids.len(), ops.len(), "one operator per region");
    }

    #[test]
    fn a_big_region_is_not_moved_when_moving_it_would_just_reverse_the_imbalance() {
        // Store 1 scores 10 more than store 4, but the only region it could move weighs 8:
        // moving it would leave store 4 6 ahead.
        let mut w = world(&[1, 2, 3, 4], &[1, 2, 3], 1);
        w.regions[0].2 = 8;
        let mut v = view(&w);
        v.region_scores = [(1, 10), (2, 8), (3, 8), (4, 0)].into_iter().collect();
        assert!(balance_regions(&v, &BalanceConfig::default(), 4, 0, &mut || 1).is_empty());
    }

    #[test]
    fn an_unschedulable_store_takes_nothing() {
        let w = world(&[1, 2, 3], &[1, 2, 3], 30);
        let mut v = view(&w);
        v.region_scores.insert(4, 0);
        v.leaders.insert(4, 0);
        assert!(balance_regions(&v, &BalanceConfig::default(), 4, 0, &mut || 1).is_empty());
        assert!(balance_leaders(&v, &BalanceConfig::default(), 4, 0).is_empty());
    }

    #[test]
    fn evicting_moves_every_leader_off_the_store_spread_over_the_others_and_balance_gives_none_back(
    ) {
        let stores = [1, 2, 3, 4];
        let mut w = world(&stores, &stores, 12);
        // Every region led from store 1 where it has a replica.
        for (region, leader, _) in &mut w.regions {
            if let Some(p) = region.peers.iter().find(|p| p.store_id == 1) {
                *leader = *p;
            }
        }
        let mut v = view(&w);
        v.leader_refused.insert(1);
        let led: Vec<RegionLoad<'_>> = v
            .movable
            .iter()
            .filter(|r| r.leader.store_id == 1)
            .cloned()
            .collect();
        assert!(led.len() >= 6);
        // The budget bounds a round.
        assert_eq!(evict_leaders(&v, &led, 2, 0).len(), 2);
        let ops = evict_leaders(&v, &led, 64, 0);
        assert_eq!(ops.len(), led.len(), "every leader on store 1 moves");
        drop(v);
        apply(&mut w, &ops);
        let mut v = view(&w);
        v.leader_refused.insert(1);
        assert_eq!(v.leaders.get(&1).copied().unwrap_or(0), 0);
        let (least, most) = spread(&v.leaders, &[2, 3, 4]);
        assert!(
            most - least <= 2,
            "leaders spread over the others: {:?}",
            v.leaders
        );
        // balance-leader sees store 1 idle but hands it nothing.
        let cfg = BalanceConfig::default();
        let back = balance_leaders(&v, &cfg, 16, 0);
        assert!(
            back.iter()
                .all(|op| !matches!(op.steps[0], Step::TransferLeader { to } if to.store_id == 1)),
            "{back:?}"
        );
        v.leader_refused.clear();
        assert!(
            !balance_leaders(&v, &cfg, 16, 0).is_empty(),
            "without the scheduler it would"
        );
    }

    #[test]
    fn balance_region_never_puts_a_second_replica_in_a_zone() {
        // Stores 1-3 in zones a, b, c hold every region; store 4, empty, is in zone a.
        let stores = [1, 2, 3, 4];
        let w = world(&stores, &[1, 2, 3], 9);
        let mut v = view(&w);
        v.locations = [(1, "a"), (2, "b"), (3, "c"), (4, "a")]
            .into_iter()
            .map(|(s, z)| (s, vec![z.to_string()]))
            .collect();
        let mut next = 1000;
        let ops = balance_regions(&v, &BalanceConfig::default(), 16, 0, &mut || {
            next += 1;
            next
        });
        assert!(!ops.is_empty(), "store 4 gets replicas");
        for op in &ops {
            let Step::ChangePeer { peer: removed, .. } = op.steps[2] else {
                panic!("a move ends with a removal: {op:?}");
            };
            assert_eq!(
                removed.store_id, 1,
                "only zone a's replica may move to store 4: {op:?}"
            );
        }
    }
}
