//! One placement member's state machine, without threads or sockets: its Raft group member,
//! and the placement core it loads while it leads. The server ([`crate::server`]) drives it
//! from its tick timer, gRPC handlers and sender tasks; the deterministic simulation (in
//! `tests`) drives the same code from its own clock and network.
//!
//! Clocks come in as arguments: `mono_ms` (monotonic, the lease's clock) and `wall_ms` (the
//! core's clock: TSO, heartbeats).

use crate::cluster::{MetaWrites, PlacementCore};
use crate::member::{self, MemberRaft, MemberSpec};
use crate::meta_store::{keys, MetaStore};
use crate::{PlacementConfig, PlacementError};
use prost::Message as _;
use raft::eraftpb::Message;
use ringkv_proto::pdpb::{MetaKeyValue, MetaSnapshot};
use std::sync::Arc;

/// What the member publishes after every round, for replies waiting on a commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub applied: u64,
    pub term: u64,
    pub leader: bool,
}

/// A placement member: its Raft group member and, while it leads, the placement core.
pub struct MemberState {
    pub raft: MemberRaft,
    /// The placement core, loaded while this member leads and has applied its whole log.
    pub core: Option<PlacementCore>,
    /// The last log index of a change whose reply had to wait for its commit (ids, timestamp
    /// limits, …): every later reply waits for it too, so no reply relies on a change that a
    /// failover could lose.
    pub sync_index: u64,
    /// The term in which this member proposed the cluster's identity (0: not yet).
    init_proposed_term: u64,
    /// A storage failure stopped the member: it serves nothing until restarted.
    failed: bool,
    config: PlacementConfig,
    members: Vec<MemberSpec>,
    self_id: u64,
    meta: Arc<MetaStore>,
    /// Chooses the cluster's id when this member initialises the cluster.
    new_cluster_id: fn() -> u64,
}

impl MemberState {
    /// Member `self_id` of `members` over its opened Raft member and metadata store;
    /// `new_cluster_id` chooses the cluster id if this member is the first leader.
    pub fn new(
        raft: MemberRaft,
        config: PlacementConfig,
        members: Vec<MemberSpec>,
        self_id: u64,
        meta: Arc<MetaStore>,
        new_cluster_id: fn() -> u64,
    ) -> Self {
        assert!(
            members.iter().any(|m| m.id == self_id),
            "member {self_id} is not among the placement members"
        );
        MemberState {
            raft,
            core: None,
            sync_index: 0,
            init_proposed_term: 0,
            failed: false,
            config,
            members,
            self_id,
            meta,
            new_cluster_id,
        }
    }

    pub fn self_id(&self) -> u64 {
        self.self_id
    }

    /// Whether a storage failure stopped this member.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// The core, if this member serves now; else why not, with the leader's address if known.
    pub fn serving(&mut self, mono_ms: u64) -> Result<&mut PlacementCore, PlacementError> {
        self.raft.observe_clock(mono_ms);
        let leader_id = self.raft.leader_id();
        let leader = (leader_id != 0 && leader_id != self.self_id)
            .then(|| {
                self.members
                    .iter()
                    .find(|m| m.id == leader_id)
                    .map(|m| m.endpoint.clone())
            })
            .flatten();
        let elsewhere = |reason| PlacementError::NotLeader { leader, reason };
        if self.failed {
            return Err(elsewhere("this member stopped after a storage failure"));
        }
        if !self.raft.is_leader() {
            return Err(elsewhere("not the leader"));
        }
        if !self.raft.lease_valid() {
            return Err(elsewhere("the leader holds no lease now"));
        }
        self.core
            .as_mut()
            .ok_or_else(|| elsewhere("the new leader is still loading its state"))
    }

    /// Proposes the core's writes; a proposal that fails drops the core (its memory is now
    /// ahead of the log), to be loaded again once the log is applied.
    pub fn propose(&mut self, writes: &MetaWrites) -> Result<(), PlacementError> {
        if writes.is_empty() {
            return Ok(());
        }
        match self.raft.propose(member::encode_command(writes)) {
            Ok(index) => {
                if writes.sync {
                    self.sync_index = self.sync_index.max(index);
                }
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "placement proposal failed; reloading the core");
                self.core = None;
                Err(PlacementError::NotLeader {
                    leader: None,
                    reason: "the leader could not propose (leadership moving)",
                })
            }
        }
    }

    /// One round: a tick if `tick`, then whatever raft has ready (persist, apply, messages),
    /// then load or drop the core. Returns the messages for the other members. A storage
    /// failure stops the member for good (until restarted) rather than let its metadata
    /// diverge.
    pub fn round(&mut self, tick: bool, mono_ms: u64, wall_ms: i64) -> Vec<Message> {
        if self.failed {
            return Vec::new();
        }
        if tick {
            self.raft.tick(mono_ms);
        }
        let round = self
            .raft
            .handle_ready()
            .and_then(|ready| self.after_round(wall_ms).map(|()| ready));
        match round {
            Ok(ready) => ready.messages,
            Err(e) => {
                tracing::error!(error = %e, "placement member stops serving after a storage failure; restart it once the cause is fixed");
                self.failed = true;
                self.core = None;
                Vec::new()
            }
        }
    }

    /// What replies waiting on a commit look at.
    pub fn progress(&self) -> Progress {
        Progress {
            applied: self.raft.applied().0,
            term: self.raft.term(),
            leader: self.raft.is_leader() && !self.failed,
        }
    }

    /// After a round: a member that no longer leads drops its core; a leader that has applied
    /// its whole log loads it (choosing the cluster's identity first if nobody has).
    fn after_round(&mut self, wall_ms: i64) -> Result<(), PlacementError> {
        if !self.raft.is_leader() {
            if self.core.take().is_some() {
                tracing::info!(term = self.raft.term(), "placement member no longer leads");
            }
            return Ok(());
        }
        if self.core.is_some() || !self.raft.caught_up_as_leader() {
            return Ok(());
        }
        let cluster_id = self.meta.cluster_id()?;
        if cluster_id == 0 {
            let term = self.raft.term();
            if self.init_proposed_term != term {
                self.init_proposed_term = term;
                let mut writes = MetaWrites::default();
                writes.put(
                    keys::CLUSTER_ID.to_vec(),
                    (self.new_cluster_id)().to_be_bytes().to_vec(),
                );
                writes.put(keys::MEMBERS.to_vec(), encode_members(&self.members));
                self.raft.propose(member::encode_command(&writes))?;
                tracing::info!(term, "placement leader initialises the cluster");
            }
            return Ok(());
        }
        let cfg = &self.config;
        let mut core = PlacementCore::new(
            cluster_id,
            cfg.replicas,
            cfg.tso_save_window_ms,
            self.meta.load()?,
        );
        core.set_loaded_at(wall_ms);
        core.set_merge_config(cfg.merge_config());
        core.set_gc_life_time_ms(cfg.gc_life_time_ms);
        core.set_replica_timing(cfg.max_store_down_time_ms, cfg.operator_timeout_ms);
        core.set_balance_config(cfg.balance_config());
        core.set_location_labels(cfg.location_labels.clone());
        core.apply_persisted_schedule();
        tracing::info!(
            term = self.raft.term(),
            applied = self.raft.applied().0,
            cluster_id,
            stores = core.store_count(),
            regions = core.region_count(),
            "placement leader serving"
        );
        self.core = Some(core);
        // Everything applied is committed; an index proposed in an older term may never be
        // reached (its entry truncated), and replies must not wait for it.
        self.sync_index = self.raft.applied().0;
        Ok(())
    }
}

/// The member list as stored under `members` (name -> endpoint).
pub fn encode_members(members: &[MemberSpec]) -> Vec<u8> {
    MetaSnapshot {
        kvs: members
            .iter()
            .map(|m| MetaKeyValue {
                key: m.name.clone().into_bytes(),
                value: m.endpoint.clone().into_bytes(),
            })
            .collect(),
    }
    .encode_to_vec()
}
