//! One replica of one region. Pure: it never touches a socket, file, thread or clock. The
//! raftstore feeds it ticks, messages and requests, and it hands back log writes (into the
//! round's [`RaftLogBatch`]), messages to send, and results to deliver after apply.

use crate::apply::{self, AdminResult, CmdResult, RegionView};
use crate::apply_pool::{ApplyDelegate, Proposal};
use crate::region_error;
use crate::safe_ts::SafeTs;
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb;
use raft::{RawNode, ReadState, StateRole};
use ringkv_proto::errorpb::RegionError;
use ringkv_proto::keys::in_range;
use ringkv_proto::metapb::{ConfChangeKind, Peer as PeerMeta, Region, RegionEpoch};
use ringkv_proto::raftpb::{
    admin_request, AdminRequest, CommitMergeRequest, MergeState, PeerState, RaftCmdRequest,
    RaftMessage, RegionLocalState,
};
use ringkv_storage::raft_logger::raft_logger;
use ringkv_storage::{KvEngine, KvWriteBatch, PeerStorage, RaftLogBatch, StorageError};
use std::collections::{HashMap, VecDeque};
use tokio::sync::oneshot;

/// Why a CommitMerge cannot rest on a source replica (see [`Peer::prepared_merge_into`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoPrepare {
    /// The replica's log does not reach the prepare yet: ask again later.
    Behind { last_index: u64 },
    /// No such prepare is there (or it was compacted away without being applied).
    Absent,
}

/// Where a command's result goes.
pub type CmdCallback = oneshot::Sender<CmdResult>;
/// Where a read's go-ahead goes: the region as it stood when the read became safe.
pub type ReadCallback = oneshot::Sender<Result<Region, RegionError>>;

/// Raft timing and flow settings of every peer.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub max_size_per_msg_bytes: u64,
    pub max_inflight_msgs: usize,
    /// Reads waiting longer than this many ticks for their ReadIndex are failed (the client
    /// retries).
    pub read_timeout_ticks: u32,
    /// Fixes each peer's election timeout to a value in `[election_ticks, 2 * election_ticks)`
    /// drawn from this seed and the peer id, instead of raft-rs's thread-local randomness: a
    /// simulation must replay exactly.
    pub election_seed: Option<u64>,
    /// **Broken on purpose; for tests only.** Every replica answers reads at once, without
    /// confirming it leads or waiting for apply, so reads can be stale. It exists so the fault
    /// suite can show that its linearizability checker catches stale reads; no configuration
    /// file can set it.
    pub unsafe_local_reads: bool,
    /// How long, in ms of this node's monotonic clock, a leader may serve reads from local
    /// state after sending a round that a quorum then acknowledged (0: no lease; every read
    /// takes a ReadIndex round). See [`Peer::lease_valid`].
    pub lease_ms: u64,
    /// **Broken on purpose; for tests only.** A leader serves lease reads after its lease has
    /// expired, as long as it believes it leads: the bug the fault suite must catch.
    pub unsafe_lease_ignores_expiry: bool,
}

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            election_ticks: 10,
            heartbeat_ticks: 2,
            max_size_per_msg_bytes: 1024 * 1024,
            max_inflight_msgs: 256,
            read_timeout_ticks: 50,
            election_seed: None,
            unsafe_local_reads: false,
            lease_ms: 0,
            unsafe_lease_ignores_expiry: false,
        }
    }
}

/// A read waiting for its go-ahead, with the region version its keys were checked against.
struct ReadWaiter {
    callback: ReadCallback,
    version: u64,
}

struct ReadBatch {
    id: u64,
    /// When its ReadIndex round went out: its confirmation renews the lease from then.
    sent_at_ms: u64,
    /// Set once the leader confirmed it: reads may proceed once this index is applied.
    read_index: Option<u64>,
    waiters: Vec<ReadWaiter>,
    ticks_waited: u32,
}

/// What the node knows of a region's size, for split decisions and the placement driver.
#[derive(Debug, Clone, Copy, Default)]
pub struct SizeStats {
    /// From the last split check; None until one ran.
    pub approximate_size_bytes: Option<u64>,
    pub approximate_keys: Option<u64>,
    /// Bytes written (keys and values, puts and deletes) since the last split check.
    pub written_since_check_bytes: u64,
    /// A split check should run soon regardless of writes (the region was just created by a
    /// split, or the last check wanted a split that did not happen).
    pub check_wanted: bool,
}

/// What changed about a peer that the placement driver should hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderView {
    pub leader_id: u64,
    pub term: u64,
    pub is_leader: bool,
}

/// One replica of one region.
pub struct Peer {
    meta: PeerMeta,
    raw: RawNode<PeerStorage>,
    proposals: VecDeque<Proposal>,
    /// Reads not yet sent as a ReadIndex round.
    reads_queued: Vec<ReadWaiter>,
    reads_in_flight: VecDeque<ReadBatch>,
    next_read_id: u64,
    /// The `Ready` whose log writes are in the round's batch, to be advanced after the write.
    unpersisted: Option<raft::Ready>,
    /// Committed entries not handed to the apply delegate yet.
    to_apply: Vec<eraftpb::Entry>,
    /// The region's apply side: here while idle, None while the apply pool has it.
    applier: Option<Box<ApplyDelegate>>,
    last_view: LeaderView,
    read_timeout_ticks: u32,
    unsafe_local_reads: bool,
    /// This node's monotonic clock, in ms, as of the current poll (set by the raftstore).
    now_ms: u64,
    lease_ms: u64,
    /// Reads may be served locally until then (0: no lease).
    lease_until_ms: u64,
    unsafe_lease_ignores_expiry: bool,
    /// (index, send time) of this leader's proposals in its current term: a commit reaching
    /// one proves a quorum heard from the leader after that time, which renews the lease.
    proposal_times: VecDeque<(u64, u64)>,
    /// The last split or merge command this leader proposed: lease reads wait until it is
    /// applied, since until then the region the peer checks keys against may be out of date.
    region_change_index: u64,
    /// Ticks left during which this peer grants no vote: after a restart it may have
    /// acknowledged a leader's lease round it no longer remembers.
    votes_withheld_ticks: u32,
    pub size: SizeStats,
    /// (bytes, keys) the last apply round wrote, for the store's flow counters.
    pub applied_writes: (u64, u64),
    /// Peers of this region learnt from incoming messages: an uninitialized peer does not know
    /// its region's peers, yet must answer the leader.
    peer_cache: HashMap<u64, PeerMeta>,
    /// A snapshot was installed in the current round: raft is told it is applied after the
    /// round's log write.
    snapshot_installed: Option<u64>,
    /// While the snapshot worker installs a snapshot here: the index applied before it. The
    /// region's data is only partly there meanwhile, so nothing is read from it.
    installing: Option<u64>,
    /// An install recorded in this round, for the raftstore to hand to the snapshot worker
    /// with the apply delegate.
    install_task: Option<RegionLocalState>,
    /// Set while this region is the source of a merge (prepared, not yet merged or rolled back).
    merge_state: Option<MergeState>,
    /// Regions merged into this one, most recent last.
    merged_sources: Vec<u64>,
    /// A CommitMerge this region (the target) cannot apply until the local source replica has
    /// applied up to the prepare; apply stopped before it and is retried on a tick or wake-up
    /// ([`Peer::retry_merge_apply`]).
    merge_wait: Option<CommitMergeRequest>,
    /// Stale reads at or below this replica's safe timestamp are served from local state.
    safe_ts: SafeTs,
}

/// Messages a round has produced, to send once the round's log write is done (or at once).
#[derive(Default)]
pub struct Outbox {
    pub messages: Vec<RaftMessage>,
    /// Messages carrying a snapshot: they travel in chunks on their own stream.
    pub snapshots: Vec<RaftMessage>,
}

impl Peer {
    /// Wraps `storage` (already loaded or created) into a running replica.
    pub fn new(store_id: u64, storage: PeerStorage, cfg: &PeerConfig) -> Result<Self, raft::Error> {
        let region = storage.region().clone();
        let meta = *region
            .peers
            .iter()
            .find(|p| p.store_id == store_id)
            .ok_or_else(|| {
                raft::Error::ConfigInvalid(format!(
                    "region {} has no peer on store {store_id}",
                    region.id
                ))
            })?;
        Self::with_meta(meta, storage, cfg)
    }

    /// A peer `meta` of a region this store knows nothing else about yet (see
    /// [`PeerStorage::uninitialized`]).
    pub fn uninitialized(
        meta: PeerMeta,
        storage: PeerStorage,
        cfg: &PeerConfig,
    ) -> Result<Self, raft::Error> {
        assert!(!storage.is_initialized());
        Self::with_meta(meta, storage, cfg)
    }

    fn with_meta(
        meta: PeerMeta,
        storage: PeerStorage,
        cfg: &PeerConfig,
    ) -> Result<Self, raft::Error> {
        let region = storage.region().clone();
        let raft_cfg = raft::Config {
            id: meta.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied: storage.applied_index(),
            max_size_per_msg: cfg.max_size_per_msg_bytes,
            max_inflight_msgs: cfg.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        let raft_cfg = match cfg.election_seed {
            Some(seed) => {
                let spread = cfg.election_ticks.max(1) as u64;
                let mixed = xxhash_rust::xxh3::xxh3_64_with_seed(&meta.id.to_be_bytes(), seed);
                let timeout = cfg.election_ticks + (mixed % spread) as usize;
                raft::Config {
                    min_election_tick: timeout,
                    max_election_tick: timeout + 1,
                    ..raft_cfg
                }
            }
            None => raft_cfg,
        };
        raft_cfg.validate()?;
        let logger = raft_logger(region.id, meta.id);
        let applier = ApplyDelegate::new(region.clone(), *storage.apply_state(), None, Vec::new());
        let raw = RawNode::new(&raft_cfg, storage, &logger)?;
        Ok(Peer {
            meta,
            raw,
            proposals: VecDeque::new(),
            reads_queued: Vec::new(),
            reads_in_flight: VecDeque::new(),
            next_read_id: 1,
            unpersisted: None,
            to_apply: Vec::new(),
            applier: Some(applier),
            last_view: LeaderView {
                leader_id: 0,
                term: 0,
                is_leader: false,
            },
            read_timeout_ticks: cfg.read_timeout_ticks,
            unsafe_local_reads: cfg.unsafe_local_reads,
            now_ms: 0,
            lease_ms: cfg.lease_ms,
            lease_until_ms: 0,
            unsafe_lease_ignores_expiry: cfg.unsafe_lease_ignores_expiry,
            proposal_times: VecDeque::new(),
            region_change_index: 0,
            votes_withheld_ticks: 0,
            size: SizeStats {
                check_wanted: true,
                ..Default::default()
            },
            applied_writes: (0, 0),
            peer_cache: HashMap::new(),
            snapshot_installed: None,
            installing: None,
            install_task: None,
            merge_state: None,
            merged_sources: Vec::new(),
            merge_wait: None,
            safe_ts: SafeTs::default(),
        })
    }

    /// Takes the merge part of the region's stored state (after a restart).
    pub fn set_local_state(&mut self, state: &RegionLocalState) {
        self.merge_state = if state.state == PeerState::Merging as i32 {
            state.merge_state.clone()
        } else {
            None
        };
        self.merged_sources = state.merged_sources.clone();
        self.reset_applier();
    }

    /// Gives the apply delegate the peer's state (at load, or after a snapshot).
    fn reset_applier(&mut self) {
        let region = self.region().clone();
        let apply_state = *self.raw.store().apply_state();
        let (merge_state, merged_sources) = (self.merge_state.clone(), self.merged_sources.clone());
        self.applier
            .as_mut()
            .expect("the apply delegate is home when the peer's state is reset")
            .reset(region, apply_state, merge_state, merged_sources);
    }

    /// The region with its merge state, as apply sees it.
    pub fn view(&self) -> RegionView<'_> {
        RegionView {
            region: self.region(),
            merge_state: self.merge_state.as_ref(),
            merged_sources: &self.merged_sources,
        }
    }

    /// The merge this region is the source of, while it is in progress.
    pub fn merge_state(&self) -> Option<&MergeState> {
        self.merge_state.as_ref()
    }

    /// The CommitMerge this region (the target) waits to apply, if any.
    pub fn merge_wait(&self) -> Option<&CommitMergeRequest> {
        self.merge_wait.as_ref()
    }

    /// For the leader of a merging source that has applied its prepare, and whose followers
    /// all hold the log up to it: the CommitMerge to propose to the target. Until every
    /// follower has the prepare entry, a target replica could find its local source unable to
    /// catch up once the source's other replicas are gone, so the leader waits.
    pub fn commit_merge_command(&self) -> Option<RaftCmdRequest> {
        let state = self.merge_state.as_ref()?;
        let target = state.target.as_ref()?;
        if !self.is_leader() || self.applied_index() < state.commit {
            return None;
        }
        let everyone_has_it = self
            .raw
            .raft
            .prs()
            .iter()
            .all(|(_, pr)| pr.matched >= state.commit);
        if !everyone_has_it {
            return None;
        }
        let commit_term = self.raw.raft.raft_log.term(state.commit).ok()?;
        Some(RaftCmdRequest {
            region_id: target.id,
            region_epoch: target.region_epoch,
            requests: Vec::new(),
            admin: Some(AdminRequest {
                cmd: Some(admin_request::Cmd::CommitMerge(CommitMergeRequest {
                    source: Some(self.region().clone()),
                    commit: state.commit,
                    commit_term,
                    source_merged_sources: self.merged_sources.clone(),
                })),
            }),
            ..Default::default()
        })
    }

    /// A target replica applied (or is about to apply) the CommitMerge of this region's merge
    /// at `commit`: that proves the prepare entry committed. If this replica holds that very
    /// entry (same index and term) it may commit up to it without hearing from its leader,
    /// which may be gone already.
    pub fn catch_up_merge(&mut self, commit: u64, commit_term: u64) {
        let log = &self.raw.raft.raft_log;
        if log.committed >= commit || log.last_index() < commit {
            return;
        }
        if log.term(commit).ok() == Some(commit_term) {
            tracing::info!(
                region = self.region_id(),
                commit,
                "merge committed on the target; committing the prepare locally"
            );
            self.raw.raft.raft_log.commit_to(commit);
        }
    }

    pub fn region(&self) -> &Region {
        self.raw.store().region()
    }

    pub fn region_id(&self) -> u64 {
        self.region().id
    }

    pub fn peer_id(&self) -> u64 {
        self.meta.id
    }

    pub fn meta(&self) -> PeerMeta {
        self.meta
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub fn leader_id(&self) -> u64 {
        self.raw.raft.leader_id
    }

    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// The index whose state the region's data holds. While a snapshot is being installed
    /// that is still the index applied before it (the storage already names the snapshot).
    pub fn applied_index(&self) -> u64 {
        self.installing
            .unwrap_or_else(|| self.raw.store().applied_index())
    }

    pub fn last_index(&self) -> u64 {
        self.raw.store().last_index_fast()
    }

    /// The leader as a peer of this region, if known.
    pub fn leader(&self) -> Option<PeerMeta> {
        let id = self.leader_id();
        self.region().peers.iter().find(|p| p.id == id).copied()
    }

    fn peer_by_id(&self, id: u64) -> Option<PeerMeta> {
        self.region()
            .peers
            .iter()
            .find(|p| p.id == id)
            .copied()
            .or_else(|| self.peer_cache.get(&id).copied())
    }

    /// Whether this peer holds its region's data (see [`PeerStorage::is_initialized`]).
    pub fn is_initialized(&self) -> bool {
        self.raw.store().is_initialized()
    }

    pub fn truncated_index(&self) -> u64 {
        self.raw.store().apply_state().truncated_index
    }

    /// The storage, for generating snapshots between rounds.
    pub fn storage(&self) -> &PeerStorage {
        self.raw.store()
    }

    /// Tells raft how sending a snapshot to peer `to` ended.
    pub fn report_snapshot(&mut self, to: u64, delivered: bool) {
        let status = if delivered {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.raw.report_snapshot(to, status);
    }

    /// The index the log can be compacted to now, if compaction is due: behind every
    /// follower's match index, unless the log is longer than `count_limit` entries, in which
    /// case laggards will need a snapshot. Only a leader decides.
    pub fn compact_index_due(&self, threshold: u64, count_limit: u64) -> Option<(u64, u64)> {
        if !self.is_leader() {
            return None;
        }
        let applied = self.applied_index();
        let truncated = self.truncated_index();
        if applied < truncated + threshold {
            return None;
        }
        let slowest = self
            .raw
            .raft
            .prs()
            .iter()
            .map(|(_, pr)| pr.matched)
            .min()
            .unwrap_or(applied);
        let index = if applied - truncated > count_limit {
            applied
        } else {
            slowest.min(applied)
        };
        if index <= truncated {
            return None;
        }
        let term = self.raw.raft.raft_log.term(index).ok()?;
        Some((index, term))
    }

    /// Replicas still catching up (empty on a follower): those with nothing matched yet, or
    /// behind the leader's compacted log, or being sent a snapshot. A follower a few entries
    /// behind under load is not pending.
    pub fn pending_peers(&self) -> Vec<PeerMeta> {
        if !self.is_leader() {
            return Vec::new();
        }
        let truncated = self.truncated_index();
        self.raw
            .raft
            .prs()
            .iter()
            .filter(|(id, pr)| {
                **id != self.meta.id
                    && (pr.matched == 0
                        || pr.matched < truncated
                        || pr.state == raft::ProgressState::Snapshot)
            })
            .filter_map(|(id, _)| self.peer_by_id(*id))
            .collect()
    }

    /// Advances logical time by one tick. Returns whether raft has work.
    pub fn tick(&mut self) -> bool {
        self.votes_withheld_ticks = self.votes_withheld_ticks.saturating_sub(1);
        for batch in &mut self.reads_in_flight {
            batch.ticks_waited += 1;
        }
        self.expire_reads();
        self.raw.tick()
    }

    fn expire_reads(&mut self) {
        let region_id = self.region_id();
        let limit = self.read_timeout_ticks;
        while self
            .reads_in_flight
            .front()
            .is_some_and(|b| b.ticks_waited > limit && b.read_index.is_none())
        {
            let batch = self.reads_in_flight.pop_front().expect("checked");
            for w in batch.waiters {
                let _ = w
                    .callback
                    .send(Err(region_error::not_leader(region_id, None)));
            }
        }
    }

    /// Whether this replica's log holds a PrepareMerge into region `target` at index `commit`
    /// of term `commit_term` (or has applied it): what a CommitMerge naming this region as its
    /// source must rest on. A target that took a CommitMerge without one would wait for this
    /// source forever, so the target's leader asks before proposing it.
    pub fn prepared_merge_into(
        &self,
        commit: u64,
        commit_term: u64,
        target: u64,
    ) -> Result<(), NoPrepare> {
        if let Some(state) = &self.merge_state {
            if state.commit == commit && state.target.as_ref().is_some_and(|t| t.id == target) {
                return Ok(());
            }
        }
        let log = &self.raw.raft.raft_log;
        if commit > log.last_index() {
            return Err(NoPrepare::Behind {
                last_index: log.last_index(),
            });
        }
        let entry = log
            .entries(commit, 1, raft::GetEntriesContext::empty(false))
            .ok()
            .and_then(|mut e| (!e.is_empty()).then(|| e.swap_remove(0)));
        let prepare = entry.filter(|e| e.term == commit_term).and_then(|e| {
            let cmd = RaftCmdRequest::decode(e.get_data()).ok()?;
            match cmd.admin?.cmd? {
                ringkv_proto::raftpb::admin_request::Cmd::PrepareMerge(p) => p.target,
                _ => None,
            }
        });
        match prepare {
            Some(t) if t.id == target => Ok(()),
            _ => Err(NoPrepare::Absent),
        }
    }

    /// Feeds a Raft message from peer `from`.
    pub fn step(&mut self, from: Option<PeerMeta>, msg: eraftpb::Message) {
        if self.votes_withheld_ticks > 0
            && matches!(
                msg.get_msg_type(),
                eraftpb::MessageType::MsgRequestVote | eraftpb::MessageType::MsgRequestPreVote
            )
        {
            tracing::debug!(
                region = self.region_id(),
                from = msg.from,
                "vote request ignored: this peer restarted less than an election timeout ago"
            );
            return;
        }
        if let Some(from) = from {
            if from.id == msg.from && !self.region().peers.iter().any(|p| p.id == from.id) {
                self.peer_cache.insert(from.id, from);
            }
        }
        let mut msg = msg;
        let log = ringkv_storage::raft_guard::LogView::of(&self.raw.raft);
        if let Err(why) = ringkv_storage::raft_guard::admit(&mut msg, log) {
            tracing::warn!(region = self.region_id(), from = msg.from, %why, "raft message refused");
            return;
        }
        if let Err(e) = self.raw.step(msg) {
            tracing::debug!(region = self.region_id(), error = %e, "dropped raft message");
        }
    }

    /// Checks that a request addressed to this peer may be served here: leader, same epoch
    /// version, keys inside the region.
    pub fn check_request(
        &self,
        epoch: Option<ringkv_proto::metapb::RegionEpoch>,
        keys: &[&[u8]],
    ) -> Result<(), RegionError> {
        self.check_leader()?;
        self.check_region(epoch, keys)
    }

    /// The part of [`Peer::check_request`] any replica can answer: not merging, same epoch
    /// version, keys inside the region.
    fn check_region(
        &self,
        epoch: Option<ringkv_proto::metapb::RegionEpoch>,
        keys: &[&[u8]],
    ) -> Result<(), RegionError> {
        if !self.is_initialized() {
            return Err(region_error::region_not_found(self.region_id()));
        }
        let region = self.region();
        if let Some(state) = &self.merge_state {
            let target = state.target.as_ref().map(|t| t.id).unwrap_or_default();
            return Err(region_error::merging(region.id, target));
        }
        let current = region.region_epoch.unwrap_or_default();
        let asked = epoch.unwrap_or_default();
        if asked.version != current.version || asked.conf_ver != current.conf_ver {
            return Err(region_error::epoch_not_match(region, epoch));
        }
        for key in keys {
            if !in_range(key, &region.start_key, &region.end_key) {
                return Err(region_error::key_not_in_region(key, region));
            }
        }
        Ok(())
    }

    fn check_leader(&self) -> Result<(), RegionError> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(region_error::not_leader(self.region_id(), self.leader()))
        }
    }

    /// Proposes `cmd`; `callback` gets its applied result, or an error if it cannot be proposed.
    pub fn propose(&mut self, cmd: RaftCmdRequest, callback: CmdCallback) {
        // Keys, and the epoch rules of merge commands, are checked by `apply::check_command`.
        let checked = if apply::has_own_epoch_rules(&cmd) {
            self.check_leader()
        } else {
            self.check_request(cmd.region_epoch, &[])
        };
        if let Err(e) = checked {
            let _ = callback.send(Err(e));
            return;
        }
        if let Err(e) = apply::check_command(self.view(), &cmd) {
            let _ = callback.send(Err(e));
            return;
        }
        let changes_region = matches!(
            cmd.admin.as_ref().and_then(|a| a.cmd.as_ref()),
            Some(
                admin_request::Cmd::Split(_)
                    | admin_request::Cmd::PrepareMerge(_)
                    | admin_request::Cmd::CommitMerge(_)
                    | admin_request::Cmd::RollbackMerge(_)
                    | admin_request::Cmd::ChangePeer(_)
            )
        );
        let data = cmd.encode_to_vec();
        let proposed = match cmd.admin.as_ref().and_then(|a| a.cmd.as_ref()) {
            Some(admin_request::Cmd::ChangePeer(change)) => {
                let removes_self = change.kind == ConfChangeKind::Remove as i32
                    && change.peer.is_some_and(|p| p.id == self.peer_id());
                if removes_self {
                    let _ = callback.send(Err(region_error::invalid_command(
                        self.region_id(),
                        "the leader cannot remove itself; transfer leadership first",
                    )));
                    return;
                }
                let mut cc = apply::raft_conf_change(change);
                cc.set_context(data.into());
                self.raw.propose_conf_change(Vec::new(), cc)
            }
            _ => self.raw.propose(Vec::new(), data),
        };
        match proposed {
            Ok(()) => {
                let index = self.raw.raft.raft_log.last_index();
                let term = self.raw.raft.term;
                // A leader that lost its uncommitted tail and leads again proposes at lower
                // indexes, in a higher term: (term, index) grows, the index alone need not.
                assert!(
                    self.proposals
                        .back()
                        .is_none_or(|p| (p.term, p.index) < (term, index)),
                    "region {}: proposals must grow in (term, index)",
                    self.region_id()
                );
                self.proposals.push_back(Proposal {
                    index,
                    term,
                    callback,
                });
                if self.lease_ms > 0 {
                    self.proposal_times.push_back((index, self.now_ms));
                }
                if changes_region {
                    self.region_change_index = index;
                }
            }
            Err(e) => {
                tracing::debug!(region = self.region_id(), error = %e, "proposal dropped");
                let _ = callback.send(Err(region_error::not_leader(
                    self.region_id(),
                    self.leader(),
                )));
            }
        }
    }

    /// Queues a linearizable read: `callback` gets the go-ahead at once within this leader's
    /// lease, else once the leader has confirmed its leadership after the read arrived
    /// (ReadIndex) and this replica has applied up to the leader's commit index then. With
    /// `replica`, a follower takes the read too: it asks the leader for that index.
    pub fn read(
        &mut self,
        epoch: Option<ringkv_proto::metapb::RegionEpoch>,
        keys: &[&[u8]],
        callback: ReadCallback,
        replica: bool,
    ) {
        if self.unsafe_local_reads && self.is_initialized() {
            let _ = callback.send(Ok(self.region().clone()));
            return;
        }
        let checked = if replica && !self.is_leader() {
            self.check_region(epoch, keys)
        } else {
            self.check_request(epoch, keys)
        };
        match checked {
            Ok(()) if self.lease_valid() => {
                tracing::trace!(
                    region = self.region_id(),
                    now = self.now_ms,
                    until = self.lease_until_ms,
                    "read served under the lease"
                );
                let _ = callback.send(Ok(self.region().clone()));
            }
            Ok(()) => self.reads_queued.push(ReadWaiter {
                callback,
                version: self.version(),
            }),
            Err(e) => {
                let _ = callback.send(Err(e));
            }
        }
    }

    /// A barrier that costs nothing and counts as no activity (for the resolver): the region
    /// when this peer leads under a valid lease — so its applied state holds every write
    /// acknowledged before — else an error. Never starts a ReadIndex round.
    pub fn lease_barrier(&self) -> Result<Region, RegionError> {
        if !self.is_initialized() {
            return Err(region_error::region_not_found(self.region_id()));
        }
        self.check_leader()?;
        if self.lease_valid() {
            Ok(self.region().clone())
        } else {
            Err(region_error::server_is_busy(
                "the leader holds no valid lease",
            ))
        }
    }

    /// Clears a stale read at `read_ts` of `keys`: any replica may serve it from its own state
    /// once its safe timestamp has reached `read_ts` (see [`crate::safe_ts`]).
    pub fn stale_read(
        &mut self,
        epoch: Option<ringkv_proto::metapb::RegionEpoch>,
        keys: &[&[u8]],
        read_ts: u64,
        callback: ReadCallback,
    ) {
        let answer = self.check_region(epoch, keys).and_then(|()| {
            let safe_ts = self.safe_ts();
            if read_ts <= safe_ts {
                Ok(self.region().clone())
            } else {
                Err(region_error::data_is_not_ready(
                    self.region_id(),
                    self.meta.id,
                    read_ts,
                    safe_ts,
                ))
            }
        });
        let _ = callback.send(answer);
    }

    /// The safe timestamp in force on this replica (0: none).
    pub fn safe_ts(&mut self) -> u64 {
        if self.is_installing() {
            // The data is only partly there: no stale read may see it.
            return 0;
        }
        let (version, applied) = (self.version(), self.applied_index());
        self.safe_ts.get(version, applied)
    }

    /// Whether the safe-timestamp claim in force was made about this replica's whole applied
    /// state (no write applied since). A leader waits for one before its region goes quiet:
    /// quiet regions make no claims, so they keep the last.
    pub fn safe_ts_is_current(&mut self) -> bool {
        let (version, applied) = (self.version(), self.applied_index());
        self.safe_ts.made_at_or_after(version, applied)
    }

    /// Takes a safe-timestamp claim (see [`crate::safe_ts`]), from the local resolver or from
    /// the leader that made it.
    pub fn take_safe_ts(&mut self, version: u64, index: u64, ts: u64) {
        let (current, applied) = (self.version(), self.applied_index());
        self.safe_ts.publish(current, version, index, ts, applied);
    }

    /// A leader's claim, taken here and sent to every other replica. Nothing if this peer no
    /// longer leads: the claim was still true when made, but its followers will hear the new
    /// leader's.
    pub fn publish_safe_ts(&mut self, version: u64, index: u64, ts: u64) -> Vec<RaftMessage> {
        if !self.is_leader() {
            return Vec::new();
        }
        self.take_safe_ts(version, index, ts);
        let epoch = RegionEpoch {
            version,
            ..self.region().region_epoch.unwrap_or_default()
        };
        self.notices(|m| {
            m.region_epoch = Some(epoch);
            m.safe_ts = ts;
            m.safe_ts_index = index;
        })
    }

    /// A leader's notice (a `RaftMessage` with no Raft payload) to every other replica, each
    /// filled in by `fill`.
    fn notices(&self, fill: impl Fn(&mut RaftMessage)) -> Vec<RaftMessage> {
        let region = self.region();
        region
            .peers
            .iter()
            .filter(|p| p.id != self.meta.id)
            .map(|to| {
                let mut m = RaftMessage {
                    region_id: region.id,
                    from_peer: Some(self.meta),
                    to_peer: Some(*to),
                    region_epoch: region.region_epoch,
                    start_key: region.start_key.clone(),
                    end_key: region.end_key.clone(),
                    ..Default::default()
                };
                fill(&mut m);
                m
            })
            .collect()
    }

    /// Sends every queued read as one ReadIndex round.
    pub fn flush_reads(&mut self) {
        if self.reads_queued.is_empty() {
            return;
        }
        let id = self.next_read_id;
        self.next_read_id += 1;
        self.raw.read_index(id.to_be_bytes().to_vec());
        self.reads_in_flight.push_back(ReadBatch {
            id,
            sent_at_ms: self.now_ms,
            read_index: None,
            waiters: std::mem::take(&mut self.reads_queued),
            ticks_waited: 0,
        });
    }

    fn on_read_states(&mut self, states: Vec<ReadState>) {
        for state in states {
            let Ok(bytes) = <[u8; 8]>::try_from(state.request_ctx.as_slice()) else {
                continue;
            };
            let id = u64::from_be_bytes(bytes);
            if let Some(batch) = self.reads_in_flight.iter_mut().find(|b| b.id == id) {
                batch.read_index = Some(state.index);
                let sent_at = batch.sent_at_ms;
                self.renew_lease(sent_at);
            }
        }
    }

    /// Answers the reads whose read index is applied. A read whose keys were checked against
    /// an older version of the region (a split or merge applied meanwhile) may be for keys the
    /// region no longer owns: it gets `EpochNotMatch` and the client re-routes it.
    fn release_reads(&mut self) {
        if self.reads_in_flight.is_empty() || self.is_installing() {
            return;
        }
        let applied = self.applied_index();
        let region = self.region().clone();
        let version = self.version();
        while let Some(batch) = self.reads_in_flight.front() {
            match batch.read_index {
                Some(index) if index <= applied => {
                    let batch = self.reads_in_flight.pop_front().expect("checked");
                    for w in batch.waiters {
                        let answer = if w.version == version {
                            Ok(region.clone())
                        } else {
                            Err(region_error::epoch_not_match(
                                &region,
                                Some(ringkv_proto::metapb::RegionEpoch {
                                    version: w.version,
                                    ..region.region_epoch.unwrap_or_default()
                                }),
                            ))
                        };
                        let _ = w.callback.send(answer);
                    }
                }
                _ => break,
            }
        }
    }

    /// The clock as of this poll (the raftstore sets it before handing the peer anything).
    pub fn set_now(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
    }

    /// Grants no vote for the next `ticks` ticks (a peer loaded after a restart: it may have
    /// acknowledged a leader's lease round it no longer remembers, and a vote from it could
    /// elect a second leader while that lease lasts).
    pub fn withhold_votes(&mut self, ticks: u32) {
        self.votes_withheld_ticks = ticks;
    }

    /// Whether this leader may serve a read from local state now, without a ReadIndex round:
    /// - it holds a lease: a round it sent at time t was acknowledged by a quorum, each of
    ///   whose members then refuses to vote for anyone else for an election timeout (raft's
    ///   check-quorum), so no other leader can exist before t + election timeout on their
    ///   clocks; the lease ends `lease_ms` after t, which leaves room for clock drift;
    /// - it has applied an entry of its own term, so everything committed before it leads is
    ///   applied here;
    /// - no split or merge it proposed is still unapplied.
    pub fn lease_valid(&self) -> bool {
        if self.lease_ms == 0
            || self.lease_until_ms == 0
            || !self.is_leader()
            // A transferee may win at once (it campaigns without waiting out an election
            // timeout), so no lease holds while a transfer is under way.
            || self.raw.raft.lead_transferee.is_some()
            || self.applied_index() < self.region_change_index
            || self.is_installing()
        {
            return false;
        }
        if self.now_ms >= self.lease_until_ms && !self.unsafe_lease_ignores_expiry {
            return false;
        }
        self.raw.raft.raft_log.term(self.applied_index()).ok() == Some(self.term())
    }

    /// Hands leadership to voter `to_peer_id`, giving up the lease at once. Ignored unless
    /// this peer leads and `to_peer_id` is another voter of the region.
    pub fn transfer_leader(&mut self, to_peer_id: u64) {
        let voter =
            self.region().peers.iter().any(|p| {
                p.id == to_peer_id && p.role == ringkv_proto::metapb::PeerRole::Voter as i32
            });
        if !self.is_leader() || to_peer_id == self.peer_id() || !voter {
            return;
        }
        tracing::info!(
            region = self.region_id(),
            to = to_peer_id,
            "transferring leadership"
        );
        self.lease_until_ms = 0;
        self.raw.transfer_leader(to_peer_id);
    }

    fn renew_lease(&mut self, sent_at_ms: u64) {
        if self.lease_ms > 0 && self.is_leader() {
            self.lease_until_ms = self.lease_until_ms.max(sent_at_ms + self.lease_ms);
        }
    }

    /// A leader whose commit index passed some of its proposals renews its lease from the
    /// latest one's send time: a quorum appended it, so heard from this leader after then.
    pub fn renew_lease_from_commit(&mut self) {
        let commit = self.commit_index();
        let mut latest = None;
        while let Some(&(index, at)) = self.proposal_times.front() {
            if index > commit {
                break;
            }
            latest = Some(at);
            self.proposal_times.pop_front();
        }
        if let Some(at) = latest {
            self.renew_lease(at);
        }
    }

    fn fail_reads(&mut self, err: RegionError) {
        for w in self.reads_queued.drain(..) {
            let _ = w.callback.send(Err(err.clone()));
        }
        for batch in self.reads_in_flight.drain(..) {
            for w in batch.waiters {
                let _ = w.callback.send(Err(err.clone()));
            }
        }
    }

    /// Whether nothing is in flight: no proposal or read waiting, nothing to persist or apply,
    /// and, for a leader, every follower has the whole log. A region idle for a while goes
    /// quiet.
    pub fn is_idle(&self) -> bool {
        if !self.proposals.is_empty()
            || self.merge_state.is_some()
            || self.merge_wait.is_some()
            || !self.reads_queued.is_empty()
            || !self.reads_in_flight.is_empty()
            || !self.to_apply.is_empty()
            || self.applier.as_ref().is_none_or(|a| a.has_entries())
            || self.raw.has_ready()
        {
            return false;
        }
        let last = self.last_index();
        if self.applied_index() != last || self.commit_index() != last {
            return false;
        }
        if self.is_leader() {
            // Every follower, not only the active ones: a quiet leader sends nothing, so a
            // follower left behind (partitioned, down) would stay behind for good. A region
            // with a failed replica stays awake until the replica returns or is replaced.
            self.raw
                .raft
                .prs()
                .iter()
                .all(|(id, pr)| *id == self.meta.id || pr.matched == last)
        } else {
            self.leader_id() != 0
        }
    }

    /// A leader's notices to its followers that the region goes quiet.
    pub fn quiesce_messages(&self) -> Vec<RaftMessage> {
        let (term, index) = (self.term(), self.last_index());
        self.notices(|m| {
            m.quiesce_term = term;
            m.quiesce_index = index;
        })
    }

    /// Whether a follower may go quiet on its leader's notice: same term and leader, and it
    /// has applied exactly the leader's log.
    pub fn accepts_quiesce(&self, from: u64, term: u64, index: u64) -> bool {
        !self.is_leader()
            && self.leader_id() == from
            && self.term() == term
            && self.last_index() == index
            && self.is_idle()
    }

    /// The region's epoch version: grows with every split and merge.
    pub fn version(&self) -> u64 {
        self.region().region_epoch.unwrap_or_default().version
    }

    /// Starts an election now, rather than after an election timeout. Used for the new region
    /// of a split on the store that led the parent, so the new region has a leader at once.
    pub fn campaign(&mut self) {
        if let Err(e) = self.raw.campaign() {
            tracing::debug!(region = self.region_id(), error = %e, "campaign failed");
        }
    }

    fn wrap_messages(&self, msgs: Vec<eraftpb::Message>, outbox: &mut Outbox) {
        let region = self.region();
        for msg in msgs {
            let Some(to) = self.peer_by_id(msg.get_to()) else {
                tracing::warn!(
                    region = region.id,
                    to = msg.get_to(),
                    "message to unknown peer dropped"
                );
                continue;
            };
            let bytes = match msg.write_to_bytes() {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(region = region.id, error = %e, "cannot encode raft message");
                    continue;
                }
            };
            let wrapped = RaftMessage {
                region_id: region.id,
                from_peer: Some(self.meta),
                to_peer: Some(to),
                region_epoch: region.region_epoch,
                message: bytes,
                start_key: region.start_key.clone(),
                end_key: region.end_key.clone(),
                ..Default::default()
            };
            if msg.get_msg_type() == eraftpb::MessageType::MsgSnapshot {
                outbox.snapshots.push(wrapped);
            } else {
                outbox.messages.push(wrapped);
            }
        }
    }

    pub fn has_ready(&self) -> bool {
        self.raw.has_ready()
    }

    /// First half of a round: takes raft's `Ready`, puts its entries and hard state into
    /// `log_batch`, and sends what may go before the write (a leader's appends).
    pub fn collect_ready(
        &mut self,
        kv: &dyn KvEngine,
        snapshots: &crate::snapshot::SnapshotDir,
        log_batch: &mut RaftLogBatch,
        early: &mut Outbox,
    ) -> Result<(), StorageError> {
        assert!(
            self.unpersisted.is_none(),
            "region {}: ready collected twice",
            self.region_id()
        );
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        self.wrap_messages(ready.take_messages(), early);
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot(), kv, snapshots, log_batch)?;
        }
        self.on_read_states(ready.take_read_states());
        let committed = ready.take_committed_entries();
        self.to_apply.extend(committed);
        let entries = ready.entries().clone();
        let hard_state = ready.hs().cloned();
        {
            let store = self.raw.mut_store();
            store.append(&entries, log_batch);
            if let Some(hs) = hard_state {
                store.set_hard_state(&hs, log_batch);
            }
        }
        self.unpersisted = Some(ready);
        Ok(())
    }

    /// Takes a snapshot from the leader: records the install (the region state says
    /// `Applying`, the apply state names the snapshot; written and flushed now), restarts the
    /// log after it in the round's log batch, and leaves the data for the snapshot worker
    /// ([`Peer::take_install_task`]). Until it is done the peer reads nothing from the region.
    fn install_snapshot(
        &mut self,
        snap: &eraftpb::Snapshot,
        kv: &dyn KvEngine,
        snapshots: &crate::snapshot::SnapshotDir,
        log_batch: &mut RaftLogBatch,
    ) -> Result<(), StorageError> {
        let (index, term) = (snap.get_metadata().index, snap.get_metadata().term);
        let header = crate::snapshot::header(snap).ok_or_else(|| StorageError::Corruption {
            what: format!("snapshot of region {} at {index}", self.region_id()),
            detail: "undecodable snapshot header".into(),
        })?;
        let region = header.region.clone().expect("header checks the region");
        assert_eq!(region.id, self.region_id(), "snapshot for another region");
        let before = self.applied_index();
        let mut batch = KvWriteBatch::default();
        crate::snapshot::begin_install(snapshots, snap, &header, &mut batch)?;
        kv.write(batch)?;
        // The log reset below is synced with the round; the install's record must be durable
        // first, or a crash would leave neither the old log nor a way to the new data.
        kv.flush()?;
        self.merge_state = header.merge_state.clone();
        self.merged_sources = header.merged_sources.clone();
        self.merge_wait = None;
        tracing::info!(
            region = region.id,
            index,
            term,
            keys = header.kv_count,
            bytes = header.file_bytes,
            "snapshot install begins"
        );
        let sessions = (header.session_clock_ms, header.session_horizon_ms);
        self.raw
            .mut_store()
            .apply_snapshot(region, index, term, sessions, log_batch);
        // Anything committed below the snapshot is in it; nothing of ours waits on it.
        self.to_apply.retain(|e| e.index > index);
        self.reset_applier();
        self.size = SizeStats {
            check_wanted: true,
            ..Default::default()
        };
        self.snapshot_installed = Some(index);
        self.installing = Some(before);
        self.install_task = Some(crate::snapshot::applying_state(&header));
        Ok(())
    }

    /// The install recorded this round, with the apply delegate the snapshot worker holds
    /// while it replaces the region's data.
    pub fn take_install_task(&mut self) -> Option<(RegionLocalState, Box<ApplyDelegate>)> {
        let state = self.install_task.take()?;
        let delegate = self
            .applier
            .take()
            .expect("a snapshot is installed only while the apply delegate is home");
        Some((state, delegate))
    }

    /// Lends the apply delegate to the snapshot worker for generating a snapshot (None if it
    /// is away).
    pub fn lend_applier(&mut self) -> Option<Box<ApplyDelegate>> {
        self.applier.take()
    }

    /// The snapshot worker is done with the apply delegate; with `installed`, the install it
    /// carried out is complete and the region's data is the snapshot's.
    pub fn on_snapshot_done(&mut self, delegate: Box<ApplyDelegate>, installed: bool) {
        assert!(
            self.applier.is_none(),
            "region {}: two apply delegates",
            self.region_id()
        );
        self.applier = Some(delegate);
        if installed {
            let before = self.installing.take();
            assert!(
                before.is_some(),
                "region {}: no install under way",
                self.region_id()
            );
            tracing::info!(
                region = self.region_id(),
                index = self.applied_index(),
                "snapshot installed"
            );
        }
    }

    /// Whether a snapshot is being installed here.
    pub fn is_installing(&self) -> bool {
        self.installing.is_some()
    }

    /// Second half of a round, after the log write is durable: sends messages that had to wait
    /// for it and tells raft the entries are persisted.
    pub fn after_write(&mut self, late: &mut Outbox) {
        let Some(mut ready) = self.unpersisted.take() else {
            return;
        };
        self.wrap_messages(ready.take_persisted_messages(), late);
        let mut light = self.raw.advance(ready);
        if let Some(index) = self.snapshot_installed.take() {
            self.raw.advance_apply_to(index);
        }
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit_index(commit);
        }
        self.wrap_messages(light.take_messages(), late);
        self.to_apply.extend(light.take_committed_entries());
    }

    /// Whether the apply delegate is with the apply pool.
    pub fn apply_in_flight(&self) -> bool {
        self.applier.is_none()
    }

    /// Whether raft holds a snapshot to install. It waits while apply is in flight: the pool
    /// must not write the region while a snapshot replaces it.
    pub fn has_pending_snapshot(&self) -> bool {
        self.raw.raft.snap().is_some()
    }

    /// Hands the committed entries, with the proposals waiting on them, to the apply delegate
    /// and returns the delegate for the apply pool, if it is home, has work, and is not held
    /// back by a merge ([`Peer::retry_merge_apply`]).
    pub fn take_apply_work(&mut self) -> Option<Box<ApplyDelegate>> {
        if self.merge_wait.is_some() {
            return None;
        }
        let applier = self.applier.as_mut()?;
        let last = self
            .to_apply
            .last()
            .map(|e| e.index)
            .or_else(|| applier.last_entry_index())?;
        let entries = std::mem::take(&mut self.to_apply);
        if self.proposals.iter().is_sorted_by_key(|p| p.index) {
            // The usual case: hand over a prefix, without moving the rest.
            let handed = self.proposals.partition_point(|p| p.index <= last);
            applier.push(entries, self.proposals.drain(..handed));
        } else {
            // After a lost tail, a later term's proposals sit at lower indexes.
            let (handed, kept): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.proposals)
                .into_iter()
                .partition(|p| p.index <= last);
            self.proposals = kept;
            applier.push(entries, handed);
        }
        self.applier.take()
    }

    /// The apply delegate is back from the pool: takes over what it applied (region, merge
    /// state, applied index, log compaction, size) and returns the region changes and
    /// compactions for the raftstore to act on.
    pub fn on_applied(&mut self, mut applier: Box<ApplyDelegate>) -> Vec<AdminResult> {
        assert!(
            self.applier.is_none(),
            "region {}: two apply delegates",
            self.region_id()
        );
        let outcome = applier.take_outcome();
        self.applied_writes = (outcome.written_bytes, outcome.written_keys);
        self.merge_wait = outcome.merge_wait;
        for admin in &outcome.admin {
            match admin {
                AdminResult::PrepareMerge { state, .. } => self.merge_state = Some(state.clone()),
                AdminResult::CommitMerge { merged_sources, .. } => {
                    self.merged_sources = merged_sources.clone()
                }
                AdminResult::RollbackMerge { .. } => self.merge_state = None,
                AdminResult::ChangePeer { change, .. } => {
                    // Raft's own view of the members follows the applied change.
                    if let Err(e) = self.raw.apply_conf_change(&apply::raft_conf_change(change)) {
                        panic!(
                            "region {}: raft refused an applied membership change: {e}",
                            self.region_id()
                        );
                    }
                }
                AdminResult::Split { .. } | AdminResult::CompactLog { .. } => {}
            }
            if let Some(region) = admin.region_after() {
                self.raw.mut_store().set_region(region.clone());
                self.size = SizeStats {
                    check_wanted: true,
                    ..Default::default()
                };
            }
        }
        self.size.written_since_check_bytes += outcome.written_bytes;
        self.size.check_wanted |= outcome.check_wanted;
        assert_eq!(
            applier.region(),
            self.region(),
            "the apply delegate and its peer disagree on the region"
        );
        let applied = applier.applied_index();
        if applied > self.applied_index() {
            self.raw.mut_store().set_applied_index(applied);
        }
        // Compactions take effect only now: everything they drop is applied and written.
        for admin in &outcome.admin {
            if let AdminResult::CompactLog { index, term } = admin {
                self.raw.mut_store().compact_to(*index, *term);
            }
        }
        // Raft may believe more is applied: it counts entries handed out as applied, and a
        // target waiting on a merge holds some back.
        if applied > self.raw.raft.raft_log.applied() {
            self.raw.advance_apply_to(applied);
        }
        self.applier = Some(applier);
        outcome.admin
    }

    /// Lets apply try again a CommitMerge it stopped before (on a tick, or when the local
    /// source replica says it has caught up).
    pub fn retry_merge_apply(&mut self) {
        self.merge_wait = None;
    }

    /// Drops every proposal and read in flight with `error` (the peer is being destroyed).
    pub fn fail_all(&mut self, error: RegionError) {
        for p in self.proposals.drain(..) {
            let _ = p.callback.send(Err(error.clone()));
        }
        if let Some(applier) = &mut self.applier {
            applier.fail_all(&error);
        }
        self.fail_reads(error);
    }

    /// Releases the reads that became safe this round (confirmed and applied).
    pub fn after_round(&mut self) {
        self.release_reads();
    }

    /// Notes role changes; returns the new view when it changed.
    pub fn leader_view_changed(&mut self) -> Option<LeaderView> {
        let view = LeaderView {
            leader_id: self.leader_id(),
            term: self.term(),
            is_leader: self.is_leader(),
        };
        if view == self.last_view {
            return None;
        }
        // A lease belongs to one term of one leader.
        self.lease_until_ms = 0;
        self.proposal_times.clear();
        if self.last_view.is_leader && !view.is_leader {
            // Reads were promised by a leader that no longer is one.
            self.fail_reads(region_error::not_leader(self.region_id(), self.leader()));
        }
        self.last_view = view;
        Some(view)
    }
}
