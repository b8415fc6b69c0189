//! The scheduling simulation: the placement core alone, with simulated stores that heartbeat
//! and simulated region leaders that carry out every operator step the core hands them, the way
//! nodes do (a leader ordered to remove itself hands leadership over first). It measures how
//! many scheduling rounds the balancers need to spread a skewed cluster, and what a region
//! heartbeat costs the core at that size.
//!
//! Start: `initial_stores` of `stores` hold every replica (regions placed round-robin over
//! them, leaders on the first replica); the other stores are empty. Each round: every store
//! heartbeats, the schedulers plan, and every operator in flight runs to its end. Done when a
//! round plans nothing and no operator is left.

use crate::balance::BalanceConfig;
use crate::cluster::{MetaWrites, PersistedState, PlacementCore};
use crate::replica_checker::Step;
use ringkv_proto::metapb::{ConfChangeKind, Peer, PeerRole, Region, RegionEpoch, Store};
use ringkv_proto::pdpb::StoreStats;
use std::collections::BTreeMap;
use std::time::Instant;

/// Ids of simulated regions and their first peers start here, far above what the core's
/// allocator hands out for new peers.
const SIM_ID_BASE: u64 = 1 << 40;

#[derive(Debug, Clone, Copy)]
pub struct SimSpec {
    pub stores: u64,
    pub initial_stores: u64,
    pub regions: u64,
    pub balance: BalanceConfig,
    /// Give up after this many rounds.
    pub rounds_max: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    /// Rounds until a round planned nothing with no operator left (None: not within
    /// `rounds_max`).
    pub rounds: Option<usize>,
    pub operators: usize,
    /// (min, max) replicas and leaders per store at the end.
    pub region_spread: (u64, u64),
    pub leader_spread: (u64, u64),
    /// Mean wall time of one scheduling pass (the schedulers alone), in ms.
    pub schedule_ms_mean: f64,
    /// Mean wall time the core spends on one ordinary region heartbeat (the report plus the
    /// operator lookup), in µs, measured over one heartbeat of every region at the end.
    pub heartbeat_us_mean: f64,
}

struct SimRegion {
    region: Region,
    leader: Peer,
    term: u64,
}

fn key_of(i: u64) -> Vec<u8> {
    if i == 0 {
        Vec::new()
    } else {
        i.to_be_bytes().to_vec()
    }
}

/// When the simulated cluster starts, in the core's ms.
const START_MS: i64 = 1_000_000;

/// The starting cluster of `spec`, as the core sees it at [`START_MS`] (every store just
/// registered): for benchmarks of one scheduling pass.
pub fn skewed_core(spec: &SimSpec) -> (PlacementCore, i64) {
    (setup(spec).0, START_MS)
}

fn setup(spec: &SimSpec) -> (PlacementCore, BTreeMap<u64, SimRegion>) {
    assert!(spec.initial_stores >= 3 && spec.initial_stores <= spec.stores);
    let mut core = PlacementCore::new(1, 3, 3000, PersistedState::default());
    core.set_balance_config(spec.balance);
    let mut w = MetaWrites::default();
    let now = START_MS;
    for id in 1..=spec.stores {
        let store = Store {
            id,
            address: format!("10.0.{}.{}:20160", id / 256, id % 256),
            ..Default::default()
        };
        core.put_store(store, now, &mut w).expect("store registers");
    }
    let mut regions: BTreeMap<u64, SimRegion> = BTreeMap::new();
    for i in 0..spec.regions {
        let id = SIM_ID_BASE + i * 4;
        let peers: Vec<Peer> = (0..3)
            .map(|k| Peer {
                id: id + 1 + k,
                store_id: 1 + (i + k) % spec.initial_stores,
                role: PeerRole::Voter as i32,
            })
            .collect();
        let region = Region {
            id,
            start_key: key_of(i),
            end_key: if i + 1 == spec.regions {
                Vec::new()
            } else {
                key_of(i + 1)
            },
            region_epoch: Some(RegionEpoch {
                conf_ver: 1,
                version: 2,
            }),
            peers: peers.clone(),
        };
        core.region_heartbeat(region.clone(), Some(peers[0]), 1, &mut w)
            .expect("region reported");
        regions.insert(
            id,
            SimRegion {
                region,
                leader: peers[0],
                term: 1,
            },
        );
    }
    (core, regions)
}

/// Runs the simulation.
pub fn run(spec: SimSpec) -> SimReport {
    let (mut core, mut regions) = setup(&spec);
    let mut w = MetaWrites::default();
    let mut now = START_MS;
    let mut operators = 0;
    let mut schedule_ms = Vec::new();
    let mut rounds = None;
    for round in 1..=spec.rounds_max {
        now += 1000;
        for id in 1..=spec.stores {
            let stats = StoreStats {
                store_id: id,
                ..Default::default()
            };
            core.store_heartbeat(stats, now).expect("store heartbeats");
        }
        let started = Instant::now();
        let planned = core.schedule(now, &mut w);
        schedule_ms.push(started.elapsed().as_secs_f64() * 1e3);
        operators += planned.len();
        if planned.is_empty() && core.operators().next().is_none() {
            rounds = Some(round);
            break;
        }
        let busy: Vec<u64> = core.operators().map(|o| o.region_id).collect();
        for id in busy {
            carry_out(
                &mut core,
                regions.get_mut(&id).expect("simulated"),
                now,
                &mut w,
            );
        }
    }
    // The cost of an ordinary heartbeat at this size.
    let started = Instant::now();
    for r in regions.values() {
        core.region_heartbeat(r.region.clone(), Some(r.leader), r.term, &mut w)
            .expect("region reported");
        let _ = core.operator_step(r.region.id, now, &mut w);
    }
    let heartbeat_us_mean = started.elapsed().as_secs_f64() * 1e6 / regions.len().max(1) as f64;
    let mut replicas: BTreeMap<u64, u64> = (1..=spec.stores).map(|s| (s, 0)).collect();
    let mut leaders = replicas.clone();
    for r in regions.values() {
        for p in &r.region.peers {
            *replicas.entry(p.store_id).or_default() += 1;
        }
        *leaders.entry(r.leader.store_id).or_default() += 1;
    }
    let spread = |m: &BTreeMap<u64, u64>| {
        (
            m.values().copied().min().unwrap_or(0),
            m.values().copied().max().unwrap_or(0),
        )
    };
    SimReport {
        rounds,
        operators,
        region_spread: spread(&replicas),
        leader_spread: spread(&leaders),
        schedule_ms_mean: schedule_ms.iter().sum::<f64>() / schedule_ms.len().max(1) as f64,
        heartbeat_us_mean,
    }
}

/// The region's leader carries out its operator to the end, reporting after every step as a
/// real leader's heartbeat would.
fn carry_out(core: &mut PlacementCore, r: &mut SimRegion, now: i64, w: &mut MetaWrites) {
    for _ in 0..16 {
        let Some(step) = core.operator_step(r.region.id, now, w) else {
            return;
        };
        match step {
            Step::TransferLeader { to } => {
                r.leader = to;
                r.term += 1;
            }
            Step::ChangePeer {
                kind: ConfChangeKind::Remove,
                peer,
            } if peer.id == r.leader.id => {
                // A leader cannot remove itself: it hands leadership to another voter first.
                let to = *r
                    .region
                    .peers
                    .iter()
                    .find(|p| p.id != peer.id && p.role == PeerRole::Voter as i32)
                    .expect("another voter");
                r.leader = to;
                r.term += 1;
            }
            Step::ChangePeer { kind, peer } => {
                match kind {
                    ConfChangeKind::AddLearner => r.region.peers.push(peer),
                    ConfChangeKind::AddVoter => {
                        if let Some(p) = r.region.peers.iter_mut().find(|p| p.id == peer.id) {
                            p.role = PeerRole::Voter as i32;
                        }
                    }
                    ConfChangeKind::Remove => r.region.peers.retain(|p| p.id != peer.id),
                }
                let epoch = r.region.region_epoch.get_or_insert_with(Default::default);
                epoch.conf_ver += 1;
            }
            Step::Split { .. } | Step::Merge { .. } => {
                unreachable!("the schedulers simulated here neither split nor merge")
            }
        }
        core.region_heartbeat(r.region.clone(), Some(r.leader), r.term, w)
            .expect("region reported");
    }
    panic!(
        "region {}: operator did not finish in 16 steps",
        r.region.id
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twenty_stores_joining_ten_are_filled_until_balanced() {
        let report = run(SimSpec {
            stores: 30,
            initial_stores: 10,
            regions: 3000,
            balance: BalanceConfig {
                leader_schedule_limit: 64,
                region_schedule_limit: 64,
                ..BalanceConfig::default()
            },
            rounds_max: 2000,
        });
        assert!(report.rounds.is_some(), "did not converge: {report:?}");
        // 9,000 replicas over 30 stores: 300 each, within the 5 % tolerance (15) and a
        // region either way.
        let (lo, hi) = report.region_spread;
        assert!(lo >= 283 && hi <= 317, "{report:?}");
        let (lo, hi) = report.leader_spread;
        assert!(lo >= 93 && hi <= 107, "{report:?}");
    }
}
