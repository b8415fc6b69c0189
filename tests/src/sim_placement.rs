//! The placement group inside the deterministic simulation: three placement members, each the
//! production state machine ([`MemberState`]: the placement Raft member over an in-memory log
//! and a temporary metadata store, and the placement core while it leads), driven by the
//! simulation's clock over a seeded network of their own (drops, delays, reordering).
//!
//! Only the serving leader (leading, with a valid lease, its core loaded) answers calls, as
//! the server does. A call's reply is released once every change a reply may rely on has been
//! applied in the term it was made in (the server's `wait_applied`), and lost if leadership
//! moved first. Faults: a member crashes (its raft state is reopened from its log and metadata
//! when it restarts), or is cut off from the other members. Checked here: at most one member
//! serves at any time (the leader lease), and — by the simulation's TSO probe — timestamps
//! never go back across a failover.

use raft::eraftpb::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv_placement::cluster::{MetaWrites, PlacementCore};
use ringkv_placement::member::{MemberRaft, MemberSpec, TICK_MS};
use ringkv_placement::member_state::MemberState;
use ringkv_placement::meta_store::MetaStore;
use ringkv_placement::PlacementConfig;
use ringkv_storage::MemLogEngine;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Placement members in the simulation.
pub const MEMBERS: usize = 3;
/// Placement time per simulation step (a placement tick is 100 ms: every 5 steps).
pub const MS_PER_STEP: u64 = 20;

/// The members' wall clocks read this at the start (ms), give or take their skew.
const WALL_EPOCH_MS: i64 = 1_000_000;
/// The most a member's wall clock is off (either way), in ms.
const WALL_SKEW_MS_MAX: i64 = 5_000;

/// A member fault in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberFault {
    /// The process is down; it restarts from its log and metadata when the fault ends.
    Crash,
    /// Its messages to and from the other members are lost.
    Isolate,
}

/// Where a call's reply waits: the member that answered, its term, and the log index every
/// change the reply may rely on was proposed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    member: usize,
    term: u64,
    index: u64,
}

/// What became of a reply's wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    Ready,
    Waiting,
    /// Leadership moved (or the member stopped) before the changes applied: the caller sees
    /// a failed call.
    Lost,
}

/// Counts for the run's outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct GroupStats {
    pub member_crashes: u64,
    pub member_isolations: u64,
    /// Distinct (term, member) pairs that served.
    pub serving_terms: u64,
    pub messages_delivered: u64,
}

struct SimMember {
    spec: MemberSpec,
    log: Arc<MemLogEngine>,
    meta: Arc<MetaStore>,
    /// None while crashed.
    state: Option<MemberState>,
    /// The step within each tick period at which this member ticks.
    tick_phase: u64,
    /// How far this member's wall clock (the core's: TSO, heartbeats) is off, in ms. A new
    /// leader whose clock is behind its predecessor's must still not hand out older
    /// timestamps: the TSO probe checks it.
    wall_skew_ms: i64,
}

/// The simulated placement group.
pub struct SimPlacement {
    seed: u64,
    members: Vec<SimMember>,
    config: PlacementConfig,
    rng: StdRng,
    step: u64,
    /// (due step, sequence) -> (to member index, message).
    net: BTreeMap<(u64, u64), (usize, Message)>,
    net_seq: u64,
    drop_per_mille: u32,
    delay_steps_max: u64,
    faults: bool,
    fault: Option<(usize, u64, MemberFault)>,
    /// The (term, member) that served last.
    last_serving: Option<(u64, usize)>,
    pub stats: GroupStats,
}

fn sim_cluster_id() -> u64 {
    1
}

impl SimPlacement {
    /// Three members with `config`'s scheduling settings, none leading yet.
    pub fn new(
        seed: u64,
        config: PlacementConfig,
        drop_per_mille: u32,
        delay_steps_max: u64,
        faults: bool,
    ) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x9d5e_ed9d);
        let specs: Vec<MemberSpec> = (1..=MEMBERS as u64)
            .map(|id| MemberSpec {
                id,
                name: format!("pd{id}"),
                endpoint: format!("sim-pd-{id}"),
            })
            .collect();
        let ticks_per_period = TICK_MS / MS_PER_STEP;
        let members = specs
            .iter()
            .map(|spec| SimMember {
                spec: spec.clone(),
                log: Arc::new(MemLogEngine::new()),
                meta: Arc::new(MetaStore::open_temporary().expect("a temporary metadata store")),
                state: None,
                tick_phase: rng.gen_range(0..ticks_per_period),
                wall_skew_ms: rng.gen_range(-WALL_SKEW_MS_MAX..=WALL_SKEW_MS_MAX),
            })
            .collect();
        let mut group = SimPlacement {
            seed,
            members,
            config,
            rng,
            step: 0,
            net: BTreeMap::new(),
            net_seq: 0,
            drop_per_mille,
            delay_steps_max: delay_steps_max.max(1),
            faults,
            fault: None,
            last_serving: None,
            stats: GroupStats::default(),
        };
        for i in 0..MEMBERS {
            group.start_member(i);
        }
        group
    }

    /// Placement time now, in ms: the members' monotonic clock, and their wall clocks less
    /// each one's skew.
    pub fn now_ms(&self) -> u64 {
        self.step * MS_PER_STEP
    }

    fn start_member(&mut self, i: usize) {
        let voters: Vec<u64> = self.members.iter().map(|m| m.spec.id).collect();
        let specs: Vec<MemberSpec> = self.members.iter().map(|m| m.spec.clone()).collect();
        let now = self.now_ms();
        let m = &mut self.members[i];
        let raft = MemberRaft::open_with_election_seed(
            m.spec.id,
            voters,
            m.log.clone(),
            m.meta.clone(),
            now,
            Some(self.seed),
        )
        .expect("a placement member reopens over its own log and metadata");
        m.state = Some(MemberState::new(
            raft,
            self.config.clone(),
            specs,
            m.spec.id,
            m.meta.clone(),
            sim_cluster_id,
        ));
    }

    /// One simulation step: faults start or end, due messages arrive, every running member
    /// runs a round (ticking on its phase), and what they send goes out.
    pub fn advance(&mut self, faulty: bool) {
        self.step += 1;
        if faulty && self.faults {
            self.inject_faults();
        }
        let now = self.now_ms();
        while let Some(entry) = self.net.first_entry() {
            if entry.key().0 > self.step {
                break;
            }
            let (to, msg) = entry.remove();
            let from = self.index_of(msg.from);
            if self.cut(from, Some(to)) {
                continue;
            }
            if let Some(state) = self.members[to].state.as_mut() {
                self.stats.messages_delivered += 1;
                if let Err(e) = state.raft.step(msg, now) {
                    tracing::debug!(error = %e, "sim: placement message refused");
                }
            }
        }
        let period = TICK_MS / MS_PER_STEP;
        let mut out = Vec::new();
        for i in 0..MEMBERS {
            let tick = self.step % period == self.members[i].tick_phase;
            let id = self.members[i].spec.id;
            let wall = WALL_EPOCH_MS + now as i64 + self.members[i].wall_skew_ms;
            if let Some(state) = self.members[i].state.as_mut() {
                let _span = tracing::info_span!("placement", id).entered();
                out.extend(state.round(tick, now, wall));
            }
        }
        for msg in out {
            let (from, to) = (self.index_of(msg.from), self.index_of(msg.to));
            let Some(to) = to else { continue };
            if self.cut(from, Some(to)) || self.rng.gen_range(0..1000) < self.drop_per_mille {
                if let (Some(f), true) = (from, self.members[to].state.is_none()) {
                    if let Some(s) = self.members[f].state.as_mut() {
                        s.raft.report_unreachable(msg.to, false);
                    }
                }
                continue;
            }
            let at = self.step + self.rng.gen_range(1..=self.delay_steps_max);
            self.net_seq += 1;
            self.net.insert((at, self.net_seq), (to, msg));
        }
        self.check_one_server();
    }

    fn index_of(&self, member_id: u64) -> Option<usize> {
        self.members.iter().position(|m| m.spec.id == member_id)
    }

    /// Whether traffic between two members is lost: one of them is cut off.
    fn cut(&self, from: Option<usize>, to: Option<usize>) -> bool {
        match self.fault {
            Some((i, _, MemberFault::Isolate)) => from == Some(i) || to == Some(i),
            _ => false,
        }
    }

    fn inject_faults(&mut self) {
        if let Some((i, until, kind)) = self.fault {
            if self.step >= until {
                self.end_fault(i, kind);
            }
            return;
        }
        // About one member fault per two thousand steps, each long enough for an election.
        if self.rng.gen_range(0..2000) != 0 {
            return;
        }
        let i = self.rng.gen_range(0..MEMBERS);
        let length = self.rng.gen_range(100..500);
        let kind = if self.rng.gen_bool(0.5) {
            MemberFault::Crash
        } else {
            MemberFault::Isolate
        };
        tracing::info!(
            member = i,
            step = self.step,
            ?kind,
            "sim: placement member fault"
        );
        match kind {
            MemberFault::Crash => {
                self.members[i].state = None;
                self.stats.member_crashes += 1;
            }
            MemberFault::Isolate => self.stats.member_isolations += 1,
        }
        self.fault = Some((i, self.step + length, kind));
    }

    fn end_fault(&mut self, i: usize, kind: MemberFault) {
        tracing::info!(
            member = i,
            step = self.step,
            ?kind,
            "sim: placement member fault over"
        );
        self.fault = None;
        if kind == MemberFault::Crash {
            self.start_member(i);
        }
    }

    /// Ends the fault in force.
    pub fn heal(&mut self) {
        if let Some((i, _, kind)) = self.fault {
            self.end_fault(i, kind);
        }
    }

    /// The members serving now; the lease makes it at most one.
    fn servers(&mut self) -> Vec<usize> {
        let now = self.now_ms();
        (0..MEMBERS)
            .filter(|&i| {
                self.members[i]
                    .state
                    .as_mut()
                    .is_some_and(|s| s.serving(now).is_ok())
            })
            .collect()
    }

    fn check_one_server(&mut self) {
        let servers = self.servers();
        assert!(
            servers.len() <= 1,
            "placement members {servers:?} serve at once at step {} (the leader lease failed)",
            self.step
        );
        if let Some(&i) = servers.first() {
            let term = self.members[i].state.as_ref().map_or(0, |s| s.raft.term());
            if self.last_serving != Some((term, i)) {
                tracing::info!(
                    member = i,
                    term,
                    step = self.step,
                    "sim: placement member serves"
                );
                self.last_serving = Some((term, i));
                self.stats.serving_terms += 1;
            }
        }
    }

    /// Whether some member serves now.
    pub fn serving(&mut self) -> bool {
        !self.servers().is_empty()
    }

    /// Runs `f` on the serving member's core, as a gRPC handler does, and proposes what it
    /// changed. None: no member serves, or the proposal failed (the caller sees an error).
    pub fn call<T>(
        &mut self,
        f: impl FnOnce(&mut PlacementCore, &mut MetaWrites, i64) -> T,
    ) -> Option<(T, Ticket)> {
        let i = *self.servers().first()?;
        let now = self.now_ms();
        let wall = WALL_EPOCH_MS + now as i64 + self.members[i].wall_skew_ms;
        let state = self.members[i].state.as_mut()?;
        let mut writes = MetaWrites::default();
        let value = f(state.serving(now).ok()?, &mut writes, wall);
        state.propose(&writes).ok()?;
        let ticket = Ticket {
            member: i,
            term: state.raft.term(),
            index: state.sync_index,
        };
        Some((value, ticket))
    }

    /// Whether a reply may go out now.
    pub fn release(&self, ticket: &Ticket) -> Release {
        let Some(state) = self.members[ticket.member].state.as_ref() else {
            return Release::Lost;
        };
        let p = state.progress();
        if p.term != ticket.term || !p.leader {
            Release::Lost
        } else if p.applied >= ticket.index {
            Release::Ready
        } else {
            Release::Waiting
        }
    }

    /// The placement core clients route with: the serving member's, else the newest loaded
    /// one (a partitioned former leader's: stale, as a client's cache would be).
    pub fn view(&self) -> Option<&PlacementCore> {
        let serving = self.last_serving.map(|(_, i)| i);
        serving
            .and_then(|i| self.members[i].state.as_ref()?.core.as_ref())
            .or_else(|| {
                self.members
                    .iter()
                    .filter_map(|m| m.state.as_ref())
                    .filter(|s| s.core.is_some())
                    .max_by_key(|s| s.raft.term())
                    .and_then(|s| s.core.as_ref())
            })
    }

    /// Each member's state (down, or its term, leader, applied index and core), for failure
    /// messages.
    pub fn describe(&self) -> String {
        self.members
            .iter()
            .map(|m| match &m.state {
                None => format!("{}: down", m.spec.name),
                Some(s) => {
                    let st = s.raft.status();
                    format!(
                        "{}: term {} leader {} applied {} core {}",
                        m.spec.name,
                        st.term,
                        st.leader_id,
                        st.applied_index,
                        s.core.is_some()
                    )
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}
