//! Replica repair: keeps `replicas` healthy replicas of every region. A peer on a store that
//! has not heartbeated for `max_store_down_time_ms` is down; the checker then plans an
//! *operator* for its region — add a learner on a healthy store without a replica, promote it,
//! remove the down peer — which the region's leader carries out one step at a time, as the
//! placement driver hands each step back on the leader's heartbeats. A region short of
//! replicas gets the first two steps. Pure: time, stores and ids come in as arguments.

use crate::location;
use ringkv_proto::metapb::{ConfChangeKind, Peer, PeerRole, Region};
use std::collections::BTreeMap;

/// What the checker needs to know of a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreView {
    pub id: u64,
    pub last_heartbeat_ms: i64,
    /// Regions with a replica on the store (for choosing where a new one goes).
    pub region_count: usize,
    /// A tombstone (decommissioned) store takes no replica.
    pub tombstone: bool,
    /// The store has reported its state (a store heartbeat) since this placement leader
    /// loaded: only such a store takes new replicas. A registration alone proves nothing
    /// (it may name an address nothing listens on).
    pub reported: bool,
    /// Being decommissioned: its replicas move away, it takes no new one.
    pub offline: bool,
    /// Its location (see [`crate::location`]); empty when no location labels are used.
    pub location: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaConfig {
    pub replicas: u32,
    pub max_store_down_time_ms: i64,
    /// An operator not done within this long is dropped (and planned afresh if still needed).
    pub operator_timeout_ms: i64,
}

/// One step of an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A membership change of the region.
    ChangePeer { kind: ConfChangeKind, peer: Peer },
    /// Leadership handed to this voter.
    TransferLeader { to: Peer },
    /// The region split: at `key` (encoded), or where its data halves when `key` is empty.
    /// Done once the region's version passes `version`, the one it had when asked.
    Split { version: u64, key: Vec<u8> },
    /// The region merged into the adjacent region `target`. Never shown done by the region
    /// itself: it is gone once merged, and its operator with it.
    Merge { target: u64 },
}

impl Step {
    /// Whether `region`, led by `leader`, shows the step done.
    fn done_in(&self, region: &Region, leader: Option<&Peer>) -> bool {
        match *self {
            Step::ChangePeer { kind, peer } => {
                let member = region.peers.iter().find(|p| p.id == peer.id);
                match kind {
                    ConfChangeKind::AddLearner => member.is_some(),
                    ConfChangeKind::AddVoter => {
                        member.is_some_and(|p| p.role == PeerRole::Voter as i32)
                    }
                    ConfChangeKind::Remove => member.is_none(),
                }
            }
            Step::TransferLeader { to } => leader.is_some_and(|l| l.id == to.id),
            Step::Split { version, .. } => {
                region.region_epoch.unwrap_or_default().version > version
            }
            Step::Merge { .. } => false,
        }
    }
}

/// Ordered steps for one region, tracked until done or timed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub region_id: u64,
    pub steps: Vec<Step>,
    pub created_ms: i64,
    /// Why it exists, for logs and the admin CLI.
    pub reason: String,
}

impl Operator {
    /// The first step `region` (led by `leader`) does not show done yet (None: the operator
    /// is finished).
    pub fn next_step(&self, region: &Region, leader: Option<&Peer>) -> Option<Step> {
        self.steps
            .iter()
            .find(|s| !s.done_in(region, leader))
            .cloned()
    }

    /// Whether the operator only moves leadership.
    pub fn is_leader_transfer(&self) -> bool {
        self.steps
            .iter()
            .all(|s| matches!(s, Step::TransferLeader { .. }))
    }
}

fn is_up(store: &StoreView, now_ms: i64, cfg: &ReplicaConfig) -> bool {
    !store.tombstone && now_ms - store.last_heartbeat_ms < cfg.max_store_down_time_ms
}

/// Whether a replica on `store` must move: the store is down or being decommissioned.
fn must_leave(store: Option<&StoreView>, now_ms: i64, cfg: &ReplicaConfig) -> bool {
    store.is_none_or(|s| s.offline || !is_up(s, now_ms, cfg))
}

/// The steps that add a replica (peer `peer_id`) on `store_id`: a learner, which catches up,
/// then promoted. A move appends the removal of the old replica.
pub fn add_replica_steps(peer_id: u64, store_id: u64) -> Vec<Step> {
    let peer = Peer {
        id: peer_id,
        store_id,
        role: PeerRole::Learner as i32,
    };
    vec![
        Step::ChangePeer {
            kind: ConfChangeKind::AddLearner,
            peer,
        },
        Step::ChangePeer {
            kind: ConfChangeKind::AddVoter,
            peer,
        },
    ]
}

/// The steps that move the replica `from` to `store_id` (new peer `peer_id`): add first,
/// then remove, so the region never has fewer replicas than before.
pub fn move_replica_steps(peer_id: u64, store_id: u64, from: Peer) -> Vec<Step> {
    let mut steps = add_replica_steps(peer_id, store_id);
    steps.push(Step::ChangePeer {
        kind: ConfChangeKind::Remove,
        peer: from,
    });
    steps
}

/// Where a new replica of `region` goes: an up store that takes replicas and has none of the
/// region, most isolated from the replicas at `others` (see [`location`]), then the least
/// loaded. Returns it with that isolation.
fn best_new_home<'a>(
    region: &Region,
    stores: &'a BTreeMap<u64, StoreView>,
    cfg: &ReplicaConfig,
    now_ms: i64,
    others: &[&[String]],
) -> Option<(&'a StoreView, usize)> {
    stores
        .values()
        .filter(|s| is_up(s, now_ms, cfg) && !s.offline && s.reported)
        .filter(|s| !region.peers.iter().any(|p| p.store_id == s.id))
        .map(|s| (s, location::isolation(&s.location, others.iter().copied())))
        .min_by_key(|(s, iso)| (std::cmp::Reverse(*iso), s.region_count, s.id))
}

/// An operator removing one replica of a region with more than the configured count (a move
/// that timed out between adding and removing, or an admin's doing): a learner first, else
/// the least isolated voter, then the one on the most loaded store.
fn remove_extra_replica(
    region: &Region,
    stores: &BTreeMap<u64, StoreView>,
    cfg: &ReplicaConfig,
    now_ms: i64,
) -> Operator {
    let at = |p: &Peer| stores.get(&p.store_id).map(|s| s.location.as_slice());
    let isolation_of = |p: &Peer| -> usize {
        at(p).map_or(0, |here| {
            location::isolation(
                here,
                region.peers.iter().filter(|o| o.id != p.id).filter_map(at),
            )
        })
    };
    let victim = *region
        .peers
        .iter()
        .min_by_key(|p| {
            (
                p.role == PeerRole::Voter as i32,
                isolation_of(p),
                std::cmp::Reverse(stores.get(&p.store_id).map_or(0, |s| s.region_count)),
                std::cmp::Reverse(p.id),
            )
        })
        .expect("a region with more replicas than configured has one");
    Operator {
        region_id: region.id,
        steps: vec![Step::ChangePeer {
            kind: ConfChangeKind::Remove,
            peer: victim,
        }],
        created_ms: now_ms,
        reason: format!(
            "remove an extra replica ({} of {}): peer {} on store {}",
            region.peers.len(),
            cfg.replicas,
            victim.id,
            victim.store_id
        ),
    }
}

/// Plans the repair `region` needs, if any. `new_peer_id` hands out a fresh peer id.
pub fn check_region(
    region: &Region,
    stores: &BTreeMap<u64, StoreView>,
    cfg: &ReplicaConfig,
    now_ms: i64,
    new_peer_id: &mut dyn FnMut() -> u64,
) -> Option<Operator> {
    let down: Vec<Peer> = region
        .peers
        .iter()
        .filter(|p| must_leave(stores.get(&p.store_id), now_ms, cfg))
        .copied()
        .collect();
    let healthy = region.peers.len() - down.len();
    if down.is_empty() && region.peers.len() > cfg.replicas as usize {
        return Some(remove_extra_replica(region, stores, cfg, now_ms));
    }
    if down.is_empty() && region.peers.len() >= cfg.replicas as usize {
        return None;
    }
    // Never take away a replica without one to replace it: first add, then remove. The new
    // replica goes where it is most isolated from the replicas that stay, then to the least
    // loaded store.
    let staying: Vec<&[String]> = region
        .peers
        .iter()
        .filter(|p| !down.iter().any(|d| d.id == p.id))
        .filter_map(|p| stores.get(&p.store_id).map(|s| s.location.as_slice()))
        .collect();
    let (target, _) = best_new_home(region, stores, cfg, now_ms, &staying)?;
    let mut steps = add_replica_steps(new_peer_id(), target.id);
    let reason = match down.first() {
        Some(d) if healthy + 1 >= cfg.replicas as usize || region.peers.len() > cfg.replicas as usize => {
            steps.push(Step::ChangePeer {
                kind: ConfChangeKind::Remove,
                peer: *d,
            });
            format!("move peer {} off store {} (down or decommissioned)", d.id, d.store_id)
        }
        Some(d) => format!(
            "add a replica (peer {} on store {} is down and too few others are healthy to drop it yet)",
            d.id, d.store_id
        ),
        None => format!(
            "add a missing replica ({} of {})",
            region.peers.len(),
            cfg.replicas
        ),
    };
    Some(Operator {
        region_id: region.id,
        steps,
        created_ms: now_ms,
        reason,
    })
}

/// A move of the region's worst-isolated replica to a store that isolates it strictly better
/// (label-aware placement), if there is one; None when the region is as spread as the up
/// stores allow. Only for regions with every replica up and none missing.
pub fn improve_isolation(
    region: &Region,
    stores: &BTreeMap<u64, StoreView>,
    cfg: &ReplicaConfig,
    now_ms: i64,
    new_peer_id: &mut dyn FnMut() -> u64,
) -> Option<Operator> {
    let at = |p: &Peer| stores.get(&p.store_id).map(|s| s.location.as_slice());
    let isolation_of = |p: &Peer| -> usize {
        let Some(here) = at(p) else { return 0 };
        location::isolation(
            here,
            region.peers.iter().filter(|o| o.id != p.id).filter_map(at),
        )
    };
    let worst = region
        .peers
        .iter()
        .filter(|p| p.role == PeerRole::Voter as i32)
        .min_by_key(|p| (isolation_of(p), p.id))?;
    let current = isolation_of(worst);
    let others: Vec<&[String]> = region
        .peers
        .iter()
        .filter(|o| o.id != worst.id)
        .filter_map(at)
        .collect();
    let (target, better) = best_new_home(region, stores, cfg, now_ms, &others)?;
    if better <= current {
        return None;
    }
    Some(Operator {
        region_id: region.id,
        steps: move_replica_steps(new_peer_id(), target.id, *worst),
        created_ms: now_ms,
        reason: format!(
            "spread replicas over locations: peer {} on store {} (isolation {current}) moves to store {} (isolation {better})",
            worst.id, worst.store_id, target.id
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(step: &Step) -> ConfChangeKind {
        match step {
            Step::ChangePeer { kind, .. } => *kind,
            other => panic!("a repair only changes peers: {other:?}"),
        }
    }

    fn peer_of(step: &Step) -> Peer {
        match step {
            Step::ChangePeer { peer, .. } => *peer,
            Step::TransferLeader { to } => *to,
            other => panic!("no peer in {other:?}"),
        }
    }

    fn cfg() -> ReplicaConfig {
        ReplicaConfig {
            replicas: 3,
            max_store_down_time_ms: 10_000,
            operator_timeout_ms: 60_000,
        }
    }

    fn stores(up: &[(u64, usize)], down: &[u64]) -> BTreeMap<u64, StoreView> {
        let mut m = BTreeMap::new();
        for &(id, region_count) in up {
            m.insert(
                id,
                StoreView {
                    id,
                    last_heartbeat_ms: 99_000,
                    region_count,
                    tombstone: false,
                    reported: true,
                    offline: false,
                    location: Vec::new(),
                },
            );
        }
        for &id in down {
            m.insert(
                id,
                StoreView {
                    id,
                    last_heartbeat_ms: 50_000,
                    region_count: 0,
                    tombstone: false,
                    reported: true,
                    offline: false,
                    location: Vec::new(),
                },
            );
        }
        m
    }

    fn region(on: &[u64]) -> Region {
        Region {
            id: 7,
            peers: on
                .iter()
                .map(|&s| Peer {
                    id: s * 10,
                    store_id: s,
                    role: PeerRole::Voter as i32,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_down_peer_is_replaced_on_the_least_loaded_healthy_store_add_before_remove() {
        let mut next = 100;
        let op = check_region(
            &region(&[1, 2, 3]),
            &stores(&[(1, 5), (2, 5), (4, 9), (5, 2)], &[3]),
            &cfg(),
            100_000,
            &mut || {
                next += 1;
                next
            },
        )
        .expect("a repair");
        let kinds: Vec<_> = op
            .steps
            .iter()
            .map(|s| match *s {
                Step::ChangePeer { kind, peer } => (kind, peer.id, peer.store_id),
                ref other => panic!("a repair only changes peers: {other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                (ConfChangeKind::AddLearner, 101, 5),
                (ConfChangeKind::AddVoter, 101, 5),
                (ConfChangeKind::Remove, 30, 3),
            ]
        );
        // Progress is read off the region.
        let mut r = region(&[1, 2, 3]);
        assert_eq!(
            kind_of(&op.next_step(&r, None).unwrap()),
            ConfChangeKind::AddLearner
        );
        r.peers.push(Peer {
            id: 101,
            store_id: 5,
            role: PeerRole::Learner as i32,
        });
        assert_eq!(
            kind_of(&op.next_step(&r, None).unwrap()),
            ConfChangeKind::AddVoter
        );
        r.peers[3].role = PeerRole::Voter as i32;
        assert_eq!(
            kind_of(&op.next_step(&r, None).unwrap()),
            ConfChangeKind::Remove
        );
        r.peers.remove(2);
        assert_eq!(op.next_step(&r, None), None);
    }

    #[test]
    fn healthy_regions_need_nothing_and_a_short_one_gets_a_replica() {
        let s = stores(&[(1, 0), (2, 0), (3, 0), (4, 0)], &[]);
        assert_eq!(
            check_region(&region(&[1, 2, 3]), &s, &cfg(), 100_000, &mut || 1),
            None
        );
        let op = check_region(&region(&[1, 2]), &s, &cfg(), 100_000, &mut || 9).unwrap();
        assert_eq!(op.steps.len(), 2, "add and promote, nothing to remove");
        assert_eq!(peer_of(&op.steps[0]).store_id, 3);
    }

    #[test]
    fn an_extra_replica_is_removed_a_learner_first_else_a_voter_on_the_busiest_store() {
        let s = stores(&[(1, 3), (2, 9), (3, 5), (4, 1)], &[]);
        let mut extra = region(&[1, 2, 3, 4]);
        let op = check_region(&extra, &s, &cfg(), 100_000, &mut || 1).expect("a removal");
        assert_eq!(op.steps.len(), 1);
        assert_eq!(kind_of(&op.steps[0]), ConfChangeKind::Remove);
        assert_eq!(peer_of(&op.steps[0]).store_id, 2, "the busiest store");
        extra.peers[3].role = PeerRole::Learner as i32;
        let op = check_region(&extra, &s, &cfg(), 100_000, &mut || 1).expect("a removal");
        assert_eq!(peer_of(&op.steps[0]).store_id, 4, "the learner");
    }

    #[test]
    fn a_decommissioned_store_s_replica_moves_and_it_takes_no_new_one() {
        let mut s = stores(&[(1, 0), (2, 0), (3, 0), (4, 0), (5, 0)], &[]);
        s.get_mut(&3).unwrap().offline = true;
        s.get_mut(&4).unwrap().offline = true;
        let op = check_region(&region(&[1, 2, 3]), &s, &cfg(), 100_000, &mut || 9).unwrap();
        assert_eq!(
            peer_of(&op.steps[0]).store_id,
            5,
            "not onto another offline store"
        );
        assert_eq!(peer_of(&op.steps[2]).store_id, 3);
    }

    #[test]
    fn without_a_healthy_store_to_move_to_nothing_is_planned() {
        let s = stores(&[(1, 0), (2, 0)], &[3]);
        assert_eq!(
            check_region(&region(&[1, 2, 3]), &s, &cfg(), 100_000, &mut || 1),
            None
        );
    }

    /// `stores` with zones: store id -> zone.
    fn in_zones(
        mut m: BTreeMap<u64, StoreView>,
        zones: &[(u64, &str)],
    ) -> BTreeMap<u64, StoreView> {
        for &(id, zone) in zones {
            if let Some(s) = m.get_mut(&id) {
                s.location = vec![zone.to_string()];
            }
        }
        m
    }

    #[test]
    fn a_replacement_goes_to_a_zone_the_region_lacks_before_a_less_loaded_store() {
        let stores = in_zones(
            stores(&[(1, 5), (2, 5), (4, 9), (5, 2)], &[3]),
            &[(1, "z1"), (2, "z2"), (3, "z3"), (4, "z3"), (5, "z1")],
        );
        let mut next = 100;
        let op = check_region(&region(&[1, 2, 3]), &stores, &cfg(), 100_000, &mut || {
            next += 1;
            next
        })
        .expect("a repair");
        // Store 5 is the least loaded, but in z1 with store 1; store 4 is the one in z3.
        assert_eq!(peer_of(&op.steps[0]).store_id, 4);
    }

    #[test]
    fn two_replicas_in_one_zone_move_apart_once_and_then_stay() {
        let zoned = in_zones(
            stores(&[(1, 1), (2, 1), (3, 1), (4, 1), (5, 0)], &[]),
            &[(1, "z1"), (2, "z1"), (3, "z2"), (4, "z3"), (5, "z3")],
        );
        let mut next = 100;
        let mut ids = || {
            next += 1;
            next
        };
        let op = improve_isolation(&region(&[1, 2, 3]), &zoned, &cfg(), 100_000, &mut ids)
            .expect("a move out of z1");
        let moved = peer_of(&op.steps[2]);
        assert_eq!(kind_of(&op.steps[2]), ConfChangeKind::Remove);
        assert!(
            [1, 2].contains(&moved.store_id),
            "a z1 replica leaves: {op:?}"
        );
        // To z3; store 5 (empty) over store 4.
        assert_eq!(peer_of(&op.steps[0]).store_id, 5);
        // Spread over z1, z2, z3: nothing better exists.
        assert!(
            improve_isolation(&region(&[1, 3, 4]), &zoned, &cfg(), 100_000, &mut ids).is_none()
        );
        // Without locations nothing is ever "better".
        let plain = stores(&[(1, 1), (2, 1), (3, 1), (4, 1)], &[]);
        assert!(
            improve_isolation(&region(&[1, 2, 3]), &plain, &cfg(), 100_000, &mut ids).is_none()
        );
    }
}
