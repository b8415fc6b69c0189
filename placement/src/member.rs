//! The placement Raft group: the members replicate their metadata through one raft-rs group.
//!
//! Every change the placement core makes to its metadata ([`MetaWrites`]) is proposed as one
//! log entry ([`MetaCommand`]); every member applies committed entries to its own metadata
//! store, so all members hold the same metadata at the same applied index. Only the leader
//! runs a [`crate::cluster::PlacementCore`], loaded from the metadata once it has applied
//! everything up to its own term's first entry.
//!
//! **Lease.** The leader serves only while it holds a lease: a round of heartbeats (a
//! ReadIndex) it sent at time t and that a quorum acknowledged lets it serve until
//! t + [`LEASE_MS`] on its monotonic clock. A member that acknowledged that round refuses to
//! vote for [`ELECTION_TICKS`] ticks after it (raft-rs `check_quorum`), which is longer than
//! the lease plus a tick of slack, and every quorum that could elect a new leader includes such
//! a member (a member that restarts also waits that long before voting: raft-rs forgets with the
//! process that it heard from a leader). So no two members serve at the same time, and the timestamp oracle never hands
//! out a timestamp below one a newer leader handed out. A leader handing over leadership gives
//! its lease up at once (the successor campaigns without waiting).
//!
//! Membership is fixed by the configuration (`initial_members`); ids are the members' ranks
//! in the sorted list of names.

use crate::cluster::MetaWrites;
use crate::meta_store::MetaStore;
use crate::PlacementError;
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfState, Entry, EntryType, HardState, Message, MessageType, Snapshot, SnapshotMetadata,
};
use raft::{GetEntriesContext, RaftState, RawNode, StateRole, Storage};
use ringkv_proto::pdpb::{MetaCommand, MetaKeyValue, MetaSnapshot};
use ringkv_storage::{RaftLogBatch, RaftLogEngine};
use std::collections::VecDeque;
use std::sync::Arc;

/// The placement group's id in the member's log engine (which holds nothing else).
pub const PLACEMENT_GROUP_ID: u64 = 1;
/// How often the group ticks, in ms.
pub const TICK_MS: u64 = 100;
/// Ticks without a leader before a follower campaigns (randomised up to twice this).
pub const ELECTION_TICKS: usize = 10;
/// Ticks between the leader's heartbeats.
pub const HEARTBEAT_TICKS: usize = 2;
/// How long a quorum's acknowledgement lets the leader serve, in ms: below the
/// `ELECTION_TICKS * TICK_MS` (1 s) a follower waits before voting, less a tick for the
/// follower's tick phase and a margin for clock-rate drift.
pub const LEASE_MS: u64 = 700;
/// Lease rounds awaiting a quorum at most; older ones are forgotten (a partitioned leader
/// sends one a tick).
const LEASE_ROUNDS_MAX: usize = 64;
/// The log is compacted once this many applied entries are kept…
const COMPACT_ENTRIES_MIN: u64 = 1000;
/// …down to this many, so a briefly lagging member still catches up from the log.
const COMPACT_KEEP_ENTRIES: u64 = 200;
/// Placement members at most.
pub const MEMBERS_MAX: usize = 7;

/// One placement member as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpec {
    /// Id in the Raft group: rank of `name` among the members' names, from 1.
    pub id: u64,
    pub name: String,
    /// Address clients, nodes and the other members use.
    pub endpoint: String,
}

/// Parses `initial_members` (`name=host:port` each) into specs with ids by name.
pub fn member_specs(initial_members: &[String]) -> Result<Vec<MemberSpec>, PlacementError> {
    let bad = |m: &str, why: &str| {
        PlacementError::Config(format!(
            "initial_members entry {m:?}: {why}; write name=host:port, e.g. pd-1=10.0.0.1:2379"
        ))
    };
    let mut specs = Vec::with_capacity(initial_members.len());
    for m in initial_members {
        let (name, endpoint) = m.split_once('=').ok_or_else(|| bad(m, "no '='"))?;
        let (name, endpoint) = (name.trim(), endpoint.trim());
        if name.is_empty() {
            return Err(bad(m, "empty name"));
        }
        let (host, port) = endpoint
            .rsplit_once(':')
            .ok_or_else(|| bad(m, "the endpoint has no port"))?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad(m, "the endpoint needs a host and a port in 1..=65535"));
        }
        specs.push(MemberSpec {
            id: 0,
            name: name.to_string(),
            endpoint: endpoint.to_string(),
        });
    }
    if specs.is_empty() || specs.len() > MEMBERS_MAX {
        return Err(PlacementError::Config(format!(
            "initial_members names {} members; a placement group has 1..={MEMBERS_MAX} (3 or 5 survive failures)",
            specs.len()
        )));
    }
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    for pair in specs.windows(2) {
        if pair[0].name == pair[1].name {
            return Err(PlacementError::Config(format!(
                "initial_members names {:?} twice",
                pair[0].name
            )));
        }
        if pair[0].endpoint == pair[1].endpoint {
            return Err(PlacementError::Config(format!(
                "initial_members gives {} to both {:?} and {:?}",
                pair[0].endpoint, pair[0].name, pair[1].name
            )));
        }
    }
    for (i, s) in specs.iter_mut().enumerate() {
        s.id = i as u64 + 1;
    }
    Ok(specs)
}

fn storage_failed(e: impl std::error::Error + Send + Sync + 'static) -> raft::Error {
    raft::Error::Store(raft::StorageError::Other(Box::new(e)))
}

/// raft-rs storage of the placement group: the log and hard state in the member's log engine,
/// the applied state and snapshots in its metadata store.
pub struct MemberStorage {
    log: Arc<dyn RaftLogEngine>,
    meta: Arc<MetaStore>,
    voters: Vec<u64>,
    hard_state: HardState,
    /// The log holds no entry at or below this (index, term) that raft may ask for.
    truncated: (u64, u64),
    last: (u64, u64),
}

impl MemberStorage {
    /// Opens the stored state, repairing what a crash in the middle of installing a snapshot
    /// can leave: metadata already at the snapshot, the log still the old one.
    pub fn open(
        log: Arc<dyn RaftLogEngine>,
        meta: Arc<MetaStore>,
        voters: Vec<u64>,
    ) -> Result<Self, PlacementError> {
        let mut hard_state = log.hard_state(PLACEMENT_GROUP_ID)?.unwrap_or_default();
        let truncated = meta.truncated()?;
        let term_at = |index: u64| -> Result<Option<u64>, PlacementError> {
            let first = log.first_index(PLACEMENT_GROUP_ID);
            let last = log.last_index(PLACEMENT_GROUP_ID);
            match (first, last) {
                (Some(f), Some(l)) if (f..=l).contains(&index) => Ok(log
                    .entries(PLACEMENT_GROUP_ID, index, index + 1, None)?
                    .first()
                    .map(|e| e.term)),
                _ => Ok(None),
            }
        };
        let mut last = match log.last_index(PLACEMENT_GROUP_ID) {
            Some(l) if l > truncated.0 => (l, term_at(l)?.unwrap_or(0)),
            _ => truncated,
        };
        if truncated.0 > 0 && last.0 > truncated.0 && term_at(truncated.0)? != Some(truncated.1) {
            // A snapshot was installed but the log it replaced is still here: its entries past
            // the snapshot belong to another history (raft sends a snapshot only to a member
            // whose log is behind or diverges), so none of them can be committed.
            tracing::warn!(
                truncated = truncated.0,
                last = last.0,
                "placement log predates the installed snapshot; dropping it"
            );
            log.clean(PLACEMENT_GROUP_ID)?;
            last = truncated;
        }
        // The stored commit index may lag: raft reports commits it found after the hard
        // state was written (a group of one commits on persisting) only in memory. Whatever
        // was applied was committed.
        let applied = meta.applied()?;
        hard_state.commit = hard_state.commit.max(truncated.0).max(applied.0);
        assert!(
            hard_state.commit <= last.0,
            "placement log: commit index {} past the last entry {}",
            hard_state.commit,
            last.0
        );
        Ok(MemberStorage {
            log,
            meta,
            voters,
            hard_state,
            truncated,
            last,
        })
    }

    fn conf_state(&self) -> ConfState {
        ConfState {
            voters: self.voters.clone(),
            ..Default::default()
        }
    }

    fn append(&mut self, entries: &[Entry], batch: &mut RaftLogBatch) {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return;
        };
        assert!(
            first.index > self.truncated.0 && first.index <= self.last.0 + 1,
            "placement log: appending at {} to a log ({}, {}]",
            first.index,
            self.truncated.0,
            self.last.0
        );
        batch.append(PLACEMENT_GROUP_ID, entries);
        self.last = (last.index, last.term);
    }

    fn set_hard_state(&mut self, hs: &HardState, batch: &mut RaftLogBatch) {
        self.hard_state = hs.clone();
        batch.set_hard_state(PLACEMENT_GROUP_ID, hs);
    }
}

impl Storage for MemberStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated.0 {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        assert!(
            high <= self.last.0 + 1,
            "placement log: entries [{low}, {high}) past {}",
            self.last.0
        );
        if low >= high {
            return Ok(Vec::new());
        }
        self.log
            .entries(PLACEMENT_GROUP_ID, low, high, max_size.into())
            .map_err(storage_failed)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.truncated.0 {
            return Ok(self.truncated.1);
        }
        if idx < self.truncated.0 {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if idx > self.last.0 {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        if idx == self.last.0 {
            return Ok(self.last.1);
        }
        let entries = self
            .log
            .entries(PLACEMENT_GROUP_ID, idx, idx + 1, None)
            .map_err(storage_failed)?;
        entries
            .first()
            .map(|e| e.term)
            .ok_or(raft::Error::Store(raft::StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.truncated.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last.0)
    }

    /// The whole metadata as of the applied index: small (a few hundred bytes per region), so
    /// it is made at once.
    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let (index, term) = self.meta.applied().map_err(storage_failed)?;
        let kvs = self.meta.dump().map_err(storage_failed)?;
        let data = MetaSnapshot {
            kvs: kvs
                .into_iter()
                .map(|(key, value)| MetaKeyValue { key, value })
                .collect(),
        };
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.set_conf_state(self.conf_state());
        let mut snap = Snapshot::default();
        snap.set_metadata(meta);
        snap.data = data.encode_to_vec().into();
        tracing::info!(index, term, "placement snapshot made");
        Ok(snap)
    }
}

/// Encodes the core's writes as one log entry.
pub fn encode_command(writes: &MetaWrites) -> Vec<u8> {
    MetaCommand {
        puts: writes
            .puts
            .iter()
            .map(|(k, v)| MetaKeyValue {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        deletes: writes.deletes.clone(),
    }
    .encode_to_vec()
}

fn decode_command(index: u64, data: &[u8]) -> Result<MetaWrites, PlacementError> {
    let cmd = MetaCommand::decode(data).map_err(|e| PlacementError::Corruption {
        key: format!("placement log entry {index}"),
        detail: e.to_string(),
    })?;
    Ok(MetaWrites {
        puts: cmd.puts.into_iter().map(|kv| (kv.key, kv.value)).collect(),
        deletes: cmd.deletes,
        sync: false,
    })
}

/// What one round of the group produced for the edge.
#[derive(Default)]
pub struct MemberReady {
    /// Messages to send to the other members (the log is durable when they are handed out).
    pub messages: Vec<Message>,
    /// A snapshot replaced this member's metadata.
    pub snapshot_installed: bool,
}

/// This member's view of the group, for listings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStatus {
    pub leader_id: u64,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
}

/// One member of the placement group: raft-rs plus the lease and the applied state.
pub struct MemberRaft {
    raw: RawNode<MemberStorage>,
    log: Arc<dyn RaftLogEngine>,
    meta: Arc<MetaStore>,
    /// The monotonic clock's reading at the last tick or step, in ms.
    now_ms: u64,
    /// The leader serves until then (0: no lease).
    lease_until_ms: u64,
    /// Lease rounds sent and not yet acknowledged: (round id, sent at).
    lease_rounds: VecDeque<(u64, u64)>,
    next_round_id: u64,
    /// The last entry applied to the metadata store: (index, term).
    applied: (u64, u64),
    /// Ticks left during which vote requests are ignored: a member that restarts may have
    /// acknowledged a leader's lease round just before, and raft-rs forgets that with the
    /// process (its check-quorum refusal lives in memory), so it waits an election timeout
    /// before voting, as it would have.
    votes_withheld_ticks: usize,
}

impl MemberRaft {
    /// Opens member `id` of the group `voters` over its stored state.
    pub fn open(
        id: u64,
        voters: Vec<u64>,
        log: Arc<dyn RaftLogEngine>,
        meta: Arc<MetaStore>,
        now_ms: u64,
    ) -> Result<Self, PlacementError> {
        Self::open_with_election_seed(id, voters, log, meta, now_ms, None)
    }

    /// As [`MemberRaft::open`]; with `election_seed`, the member's election timeout is fixed
    /// to a value in `[ELECTION_TICKS, 2 * ELECTION_TICKS)` drawn from the seed and its id,
    /// instead of raft-rs's thread-local randomness (a simulation must replay exactly). The
    /// lease's reasoning holds either way: no follower votes before `ELECTION_TICKS`.
    pub fn open_with_election_seed(
        id: u64,
        voters: Vec<u64>,
        log: Arc<dyn RaftLogEngine>,
        meta: Arc<MetaStore>,
        now_ms: u64,
        election_seed: Option<u64>,
    ) -> Result<Self, PlacementError> {
        assert!(voters.contains(&id), "member {id} is not among {voters:?}");
        let storage = MemberStorage::open(log.clone(), meta.clone(), voters)?;
        let applied = meta.applied()?;
        assert!(
            applied.0 >= storage.truncated.0,
            "placement: applied index {} below the compacted log {}",
            applied.0,
            storage.truncated.0
        );
        let cfg = raft::Config {
            id,
            election_tick: ELECTION_TICKS,
            heartbeat_tick: HEARTBEAT_TICKS,
            applied: applied.0,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        let cfg = match election_seed {
            Some(seed) => {
                let mixed = seed
                    .wrapping_add(id)
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    .rotate_left(29);
                let timeout = ELECTION_TICKS + (mixed % ELECTION_TICKS as u64) as usize;
                raft::Config {
                    min_election_tick: timeout,
                    max_election_tick: timeout + 1,
                    ..cfg
                }
            }
            None => cfg,
        };
        cfg.validate()?;
        let logger = ringkv_storage::raft_logger::raft_logger(0, id);
        let raw = RawNode::new(&cfg, storage, &logger)?;
        Ok(MemberRaft {
            raw,
            log,
            meta,
            now_ms,
            lease_until_ms: 0,
            lease_rounds: VecDeque::new(),
            next_round_id: 1,
            applied,
            votes_withheld_ticks: ELECTION_TICKS,
        })
    }

    pub fn id(&self) -> u64 {
        self.raw.raft.id
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The leader this member knows of (0: none).
    pub fn leader_id(&self) -> u64 {
        self.raw.raft.leader_id
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub fn applied(&self) -> (u64, u64) {
        self.applied
    }

    pub fn status(&self) -> GroupStatus {
        GroupStatus {
            leader_id: self.leader_id(),
            term: self.term(),
            commit_index: self.raw.raft.raft_log.committed,
            applied_index: self.applied.0,
        }
    }

    /// Whether this member leads and has applied every entry of its log, the last one of its
    /// own term: its metadata then holds everything ever committed.
    pub fn caught_up_as_leader(&self) -> bool {
        self.is_leader()
            && self.applied.1 == self.term()
            && self.applied.0 == self.raw.raft.raft_log.last_index()
    }

    /// Whether this member may serve now (see the module doc).
    pub fn lease_valid(&self) -> bool {
        self.is_leader()
            && self.raw.raft.lead_transferee.is_none()
            && self.now_ms < self.lease_until_ms
    }

    /// Moves this member's clock to `now_ms` (monotonic; it never goes back).
    pub fn observe_clock(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// Whether a round has work (messages, entries to persist or apply).
    pub fn has_ready(&self) -> bool {
        self.raw.has_ready()
    }

    /// Starts an election now (a group of one elects itself without waiting a timeout).
    pub fn campaign(&mut self) -> Result<(), PlacementError> {
        Ok(self.raw.campaign()?)
    }

    /// The member a leadership transfer is handing over to, if one is under way.
    pub fn transferring_to(&self) -> Option<u64> {
        self.raw.raft.lead_transferee
    }

    /// Advances the clock by one tick and, as leader, sends a lease round.
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        self.votes_withheld_ticks = self.votes_withheld_ticks.saturating_sub(1);
        self.raw.tick();
        if self.is_leader() && self.raw.raft.lead_transferee.is_none() {
            let id = self.next_round_id;
            self.next_round_id += 1;
            self.raw.read_index(id.to_be_bytes().to_vec());
            self.lease_rounds.push_back((id, self.now_ms));
            if self.lease_rounds.len() > LEASE_ROUNDS_MAX {
                self.lease_rounds.pop_front();
            }
        } else {
            self.lose_lease();
        }
    }

    fn lose_lease(&mut self) {
        self.lease_until_ms = 0;
        self.lease_rounds.clear();
    }

    /// Takes a message from another member.
    pub fn step(&mut self, msg: Message, now_ms: u64) -> Result<(), PlacementError> {
        self.now_ms = self.now_ms.max(now_ms);
        let mut msg = msg;
        let log = ringkv_storage::raft_guard::LogView::of(&self.raw.raft);
        if let Err(why) = ringkv_storage::raft_guard::admit(&mut msg, log) {
            return Err(PlacementError::InvalidArgument(format!(
                "placement raft message refused: {why}"
            )));
        }
        if self.votes_withheld_ticks > 0
            && matches!(
                msg.get_msg_type(),
                MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
            )
        {
            tracing::debug!(
                member = self.id(),
                from = msg.from,
                "vote request ignored: this member started less than an election timeout ago"
            );
            return Ok(());
        }
        match self.raw.step(msg) {
            // Messages of other groups or from unknown members are dropped, as raft-rs says.
            Ok(()) | Err(raft::Error::StepPeerNotFound) | Err(raft::Error::StepLocalMsg) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Proposes one command; returns the log index it will have.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<u64, PlacementError> {
        if !self.is_leader() {
            return Err(PlacementError::NotLeader {
                leader: None,
                reason: "not the leader",
            });
        }
        self.raw.propose(Vec::new(), data)?;
        Ok(self.raw.raft.raft_log.last_index())
    }

    /// Hands leadership to member `to`, giving the lease up at once.
    pub fn transfer_leader(&mut self, to: u64) {
        self.lose_lease();
        self.raw.transfer_leader(to);
    }

    /// Tells raft a message to `to` was not delivered.
    pub fn report_unreachable(&mut self, to: u64, was_snapshot: bool) {
        self.raw.report_unreachable(to);
        if was_snapshot {
            self.raw.report_snapshot(to, raft::SnapshotStatus::Failure);
        }
    }

    /// One round: persists new entries and the hard state (synced), installs a snapshot,
    /// applies committed entries to the metadata store, and returns the messages to send.
    /// An error is a storage failure: the member must stop serving.
    pub fn handle_ready(&mut self) -> Result<MemberReady, PlacementError> {
        let mut out = MemberReady::default();
        if !self.raw.has_ready() {
            return Ok(out);
        }
        let was_leader = self.is_leader();
        let mut ready = self.raw.ready();
        out.messages.extend(ready.take_messages());
        let mut batch = RaftLogBatch::default();
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot(), &mut batch)?;
            out.snapshot_installed = true;
        }
        self.on_read_states(ready.take_read_states());
        self.apply(ready.take_committed_entries())?;
        let entries = ready.entries().clone();
        let hard_state = ready.hs().cloned();
        {
            let store = self.raw.mut_store();
            store.append(&entries, &mut batch);
            if let Some(hs) = hard_state {
                store.set_hard_state(&hs, &mut batch);
            }
        }
        if !batch.is_empty() {
            self.log.write(batch, true)?;
        }
        out.messages.extend(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().hard_state.commit = commit;
        }
        out.messages.extend(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply_to(self.applied.0);
        if was_leader && !self.is_leader() {
            self.lose_lease();
        }
        self.maybe_compact()?;
        Ok(out)
    }

    fn on_read_states(&mut self, states: Vec<raft::ReadState>) {
        for state in states {
            let Ok(bytes) = <[u8; 8]>::try_from(state.request_ctx.as_slice()) else {
                continue;
            };
            let id = u64::from_be_bytes(bytes);
            while let Some(&(round, sent_at)) = self.lease_rounds.front() {
                if round > id {
                    break;
                }
                self.lease_rounds.pop_front();
                if round == id && self.is_leader() {
                    // A quorum heard from this leader after `sent_at`: none of them votes
                    // before a full election timeout from then.
                    self.lease_until_ms = self.lease_until_ms.max(sent_at + LEASE_MS);
                }
            }
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), PlacementError> {
        for e in entries {
            if e.index <= self.applied.0 {
                continue;
            }
            assert_eq!(
                e.index,
                self.applied.0 + 1,
                "placement: applying entry {} after {}",
                e.index,
                self.applied.0
            );
            let writes = match e.get_entry_type() {
                EntryType::EntryNormal if !e.data.is_empty() => decode_command(e.index, &e.data)?,
                EntryType::EntryNormal => MetaWrites::default(),
                other => {
                    // Membership is fixed by configuration; nothing proposes changes.
                    tracing::warn!(index = e.index, kind = ?other, "placement log: unexpected entry kind ignored");
                    MetaWrites::default()
                }
            };
            self.meta.apply_entry(&writes, e.index, e.term)?;
            self.applied = (e.index, e.term);
        }
        Ok(())
    }

    fn install_snapshot(
        &mut self,
        snap: &Snapshot,
        batch: &mut RaftLogBatch,
    ) -> Result<(), PlacementError> {
        let (index, term) = (snap.get_metadata().index, snap.get_metadata().term);
        let data =
            MetaSnapshot::decode(snap.data.as_ref()).map_err(|e| PlacementError::Corruption {
                key: format!("placement snapshot at {index}"),
                detail: e.to_string(),
            })?;
        let kvs = data.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
        // The metadata first, durably; a crash before the log reset below is repaired on open.
        self.meta.install_snapshot(kvs, index, term)?;
        batch.clean(PLACEMENT_GROUP_ID);
        let store = self.raw.mut_store();
        store.truncated = (index, term);
        store.last = (index, term);
        if store.hard_state.commit < index {
            store.hard_state.commit = index;
        }
        let hs = store.hard_state.clone();
        batch.set_hard_state(PLACEMENT_GROUP_ID, &hs);
        self.applied = (index, term);
        tracing::info!(index, term, "placement snapshot installed");
        Ok(())
    }

    fn maybe_compact(&mut self) -> Result<(), PlacementError> {
        let truncated = self.raw.store().truncated.0;
        if self.applied.0 < truncated + COMPACT_ENTRIES_MIN {
            return Ok(());
        }
        let to = self.applied.0 - COMPACT_KEEP_ENTRIES;
        let term = self.raw.store().term(to)?;
        // Durable first: a restart must not look for entries the log no longer has.
        self.meta.set_truncated(to, term)?;
        // The entry at `to` itself stays, so a restart can tell this log matches the metadata.
        self.log.compact_to(PLACEMENT_GROUP_ID, to)?;
        self.raw.mut_store().truncated = (to, term);
        Ok(())
    }
}

/// Encodes raft messages for the wire.
pub fn encode_messages(msgs: &[Message]) -> Vec<Vec<u8>> {
    msgs.iter()
        .map(|m| m.write_to_bytes().expect("a raft message encodes"))
        .collect()
}

/// Decodes raft messages from the wire, dropping undecodable ones.
pub fn decode_messages(bytes: &[Vec<u8>]) -> Vec<Message> {
    bytes
        .iter()
        .filter_map(|b| match Message::parse_from_bytes(b) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(error = %e, "undecodable placement raft message dropped");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_storage::MemLogEngine;

    #[test]
    fn members_are_parsed_sorted_and_checked() {
        let specs = member_specs(&["pd-b=127.0.0.1:2380".into(), "pd-a=127.0.0.1:2379".into()])
            .expect("valid");
        assert_eq!(
            specs
                .iter()
                .map(|s| (s.id, s.name.as_str()))
                .collect::<Vec<_>>(),
            vec![(1, "pd-a"), (2, "pd-b")]
        );
        for bad in [
            vec!["pd-a".to_string()],
            vec!["=127.0.0.1:1".into()],
            vec!["a=127.0.0.1".into()],
            vec!["a=127.0.0.1:0".into()],
            vec!["a=1.1.1.1:1".into(), "a=1.1.1.1:2".into()],
            vec!["a=1.1.1.1:1".into(), "b=1.1.1.1:1".into()],
            vec![],
        ] {
            assert!(member_specs(&bad).is_err(), "{bad:?} accepted");
        }
    }

    struct Group {
        members: Vec<MemberRaft>,
        now_ms: u64,
        /// Members whose messages are dropped, both ways.
        cut: Vec<u64>,
    }

    impl Group {
        fn new(n: u64) -> (Self, Vec<tempfile::TempDir>) {
            let voters: Vec<u64> = (1..=n).collect();
            let mut dirs = Vec::new();
            let mut members = Vec::new();
            for id in 1..=n {
                let dir = tempfile::tempdir().expect("temp dir");
                let meta = Arc::new(MetaStore::open(dir.path()).expect("meta"));
                members.push(
                    MemberRaft::open(id, voters.clone(), Arc::new(MemLogEngine::new()), meta, 0)
                        .expect("open"),
                );
                dirs.push(dir);
            }
            (
                Group {
                    members,
                    now_ms: 0,
                    cut: Vec::new(),
                },
                dirs,
            )
        }

        /// Delivers messages until none are left.
        fn settle(&mut self) {
            for _ in 0..100 {
                let mut msgs = Vec::new();
                for m in &mut self.members {
                    msgs.extend(m.handle_ready().expect("ready").messages);
                }
                if msgs.is_empty() {
                    return;
                }
                for msg in msgs {
                    if self.cut.contains(&msg.from) || self.cut.contains(&msg.to) {
                        continue;
                    }
                    let to = msg.to as usize - 1;
                    let now = self.now_ms;
                    self.members[to].step(msg, now).expect("step");
                }
            }
            panic!("messages never settled");
        }

        fn tick(&mut self, ticks: usize) {
            for _ in 0..ticks {
                self.now_ms += TICK_MS;
                let now = self.now_ms;
                for m in &mut self.members {
                    m.tick(now);
                }
                self.settle();
            }
        }

        fn leader(&self) -> Option<usize> {
            let leaders: Vec<usize> = (0..self.members.len())
                .filter(|&i| self.members[i].lease_valid())
                .collect();
            assert!(leaders.len() <= 1, "two members serve at once: {leaders:?}");
            leaders.first().copied()
        }
    }

    fn put(key: &str, value: &str) -> Vec<u8> {
        let mut w = MetaWrites::default();
        w.put(key.as_bytes().to_vec(), value.as_bytes().to_vec());
        encode_command(&w)
    }

    #[test]
    fn a_leader_is_elected_replicates_and_a_cut_off_leader_stops_serving_before_another_starts() {
        // The cut falls at every phase of the leader's heartbeat and quorum-check cycles.
        for phase in 0..(2 * ELECTION_TICKS) {
            let (mut g, _dirs) = Group::new(3);
            g.tick(40 + phase);
            let leader = g.leader().expect("a leader serves");
            let index = g.members[leader].propose(put("k", "v1")).expect("propose");
            g.settle();
            for m in &g.members {
                assert!(m.applied().0 >= index);
                assert_eq!(m.meta.get(b"k").expect("read"), Some(b"v1".to_vec()));
            }
            // Cut the leader off. Every tick, at most one member serves (asserted in
            // leader()), and a new one takes over.
            let old = leader;
            g.cut.push(old as u64 + 1);
            let mut new_leader = None;
            for _ in 0..60 {
                g.tick(1);
                if let Some(l) = g.leader() {
                    if l != old {
                        new_leader = Some(l);
                    }
                }
            }
            let new_leader = new_leader.expect("another member takes over");
            assert!(!g.members[old].lease_valid());
            let index = g.members[new_leader]
                .propose(put("k", "v2"))
                .expect("propose");
            g.settle();
            assert!(g.members[new_leader].applied().0 >= index);
            // The old leader rejoins and catches up.
            g.cut.clear();
            g.tick(5);
            assert_eq!(
                g.members[old].meta.get(b"k").expect("read"),
                Some(b"v2".to_vec())
            );
        }
    }

    #[test]
    fn a_restarted_member_does_not_vote_while_the_leader_it_acknowledged_may_still_serve() {
        let (mut g, dirs) = Group::new(3);
        g.tick(40);
        let leader = g.leader().expect("a leader serves");
        let (restarted, other) = ((leader + 1) % 3, (leader + 2) % 3);
        // A follower restarts right after acknowledging the leader's lease round...
        let log = g.members[restarted].log.clone();
        drop(g.members.remove(restarted));
        let meta = Arc::new(MetaStore::open(dirs[restarted].path()).expect("meta"));
        g.members.insert(
            restarted,
            MemberRaft::open(restarted as u64 + 1, vec![1, 2, 3], log, meta, g.now_ms)
                .expect("reopens"),
        );
        // ...and the leader is cut off while the other follower campaigns at once. The
        // restarted member must not help elect it while the old leader's lease may run:
        // leader() asserts at every tick that at most one member serves.
        g.cut.push(leader as u64 + 1);
        g.members[other].campaign().expect("campaign");
        g.settle();
        let mut took_over = false;
        for _ in 0..60 {
            g.tick(1);
            took_over |= g.leader().is_some_and(|l| l != leader);
        }
        assert!(took_over, "a new leader serves once the old lease is over");
    }

    #[test]
    fn a_member_behind_the_compacted_log_catches_up_from_a_snapshot_and_restarts_cleanly() {
        let (mut g, dirs) = Group::new(3);
        g.tick(40);
        let leader = g.leader().expect("a leader serves");
        let lagging = (leader + 1) % 3;
        g.cut.push(lagging as u64 + 1);
        for i in 0..(COMPACT_ENTRIES_MIN + 50) {
            g.members[leader]
                .propose(put(&format!("k{i}"), "v"))
                .expect("propose");
            g.settle();
        }
        assert!(
            g.members[leader].raw.store().truncated.0 > 0,
            "the log was compacted"
        );
        g.cut.clear();
        g.tick(10);
        let m = &g.members[lagging];
        assert_eq!(m.applied(), g.members[leader].applied());
        assert_eq!(m.meta.get(b"k0").expect("read"), Some(b"v".to_vec()));
        assert_eq!(
            m.meta.dump().expect("dump"),
            g.members[leader].meta.dump().expect("dump")
        );
        // Reopen the caught-up member over its stores: same applied state, log consistent.
        let applied = m.applied();
        let log = m.log.clone();
        let meta_dir = &dirs[lagging];
        drop(g.members.remove(lagging));
        let meta = Arc::new(MetaStore::open(meta_dir.path()).expect("meta"));
        let reopened =
            MemberRaft::open(lagging as u64 + 1, vec![1, 2, 3], log, meta, 0).expect("reopens");
        assert_eq!(reopened.applied(), applied);
    }
}
