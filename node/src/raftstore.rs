//! The raftstore: one loop that drives every peer on the node.
//!
//! A round: take the messages that arrived (bounded), tick peers when a tick is due, gather
//! every peer's `Ready`, write all their entries and hard states in **one** log batch with one
//! sync (group commit), send messages, apply committed entries of all peers in one atomic KV
//! batch, then answer proposals and reads. The loop is the edge: it owns the clock and the
//! engines; the peers stay pure.

use crate::apply::{AdminResult, CmdResult};
use crate::peer::{CmdCallback, Outbox, Peer, PeerConfig, ReadCallback};
use crate::region_error;
use crate::split_check::{SplitCheckOutcome, SplitCheckTask, SplitChecker, SplitConfig};
use crate::transport::Transport;
use crossbeam::channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use protobuf::Message as _;
use ringkv_proto::keys::ranges_overlap;
use ringkv_proto::metapb::{Peer as PeerMeta, Region, RegionEpoch};
use ringkv_proto::pdpb::RegionHeartbeatRequest;
use ringkv_proto::raftpb::{
    admin_request, AdminRequest, CompactLogRequest, RaftCmdRequest, RaftMessage, RegionInfoResponse,
};
use ringkv_storage::{layout, KvEngine, KvWriteBatch, PeerStorage, RaftLogBatch, RaftLogEngine};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Messages into the raftstore.
pub enum StoreMsg {
    /// A Raft message from another node.
    Raft(Box<RaftMessage>),
    /// A write to propose.
    Command {
        cmd: RaftCmdRequest,
        callback: CmdCallback,
    },
    /// A linearizable read to clear (see [`Peer::read`]); `keys` must be in the region.
    Read {
        region_id: u64,
        epoch: Option<RegionEpoch>,
        keys: Vec<Vec<u8>>,
        callback: ReadCallback,
    },
    /// Create the peer of a region at its bootstrap state, unless it exists.
    CreateBootstrapPeer(Region),
    /// A split check finished.
    SplitCheckResult {
        region_id: u64,
        /// The region version the check saw.
        version: u64,
        outcome: SplitCheckOutcome,
    },
    /// How sending a snapshot ended.
    SnapshotStatus {
        region_id: u64,
        to_peer_id: u64,
        delivered: bool,
    },
    /// Report the state of one region (None: all).
    Status {
        region_id: Option<u64>,
        callback: oneshot::Sender<Vec<RegionInfoResponse>>,
    },
    /// Leave the loop.
    Stop,
}

/// Events the raftstore reports to the node's placement task.
#[derive(Debug)]
pub enum StoreEvent {
    RegionHeartbeat(RegionHeartbeatRequest),
    /// A leader's region should split at `split_key`: get ids from the placement driver and
    /// propose the split.
    AskSplit {
        region: Region,
        split_key: Vec<u8>,
    },
    /// A leader applied a split.
    ReportSplit {
        left: Region,
        right: Region,
    },
}

/// Settings of the raftstore loop.
#[derive(Debug, Clone)]
pub struct RaftStoreConfig {
    pub tick_interval: Duration,
    pub peer: PeerConfig,
    /// Sync the log before acknowledging. Turning it off loses acknowledged writes on power
    /// failure; it exists for benchmarks that say so.
    pub sync_log: bool,
    /// Leaders report to the placement driver every this many ticks (and at once on change).
    pub region_heartbeat_ticks: u32,
    /// Messages handled per round at most, so one round stays short.
    pub messages_per_round_max: usize,
    pub split: SplitConfig,
    /// Ticks between log GC decisions.
    pub raft_log_gc_ticks: u32,
    /// A leader compacts only once this many applied entries are in the log.
    pub raft_log_gc_threshold: u64,
    /// Past this many entries the log is compacted to the applied index even if a follower
    /// lags (it gets a snapshot).
    pub raft_log_gc_count_limit: u64,
}

impl Default for RaftStoreConfig {
    fn default() -> Self {
        RaftStoreConfig {
            tick_interval: Duration::from_millis(100),
            peer: PeerConfig::default(),
            sync_log: true,
            region_heartbeat_ticks: 10,
            messages_per_round_max: 4096,
            split: SplitConfig::default(),
            raft_log_gc_ticks: 30,
            raft_log_gc_threshold: 50,
            raft_log_gc_count_limit: 20_000,
        }
    }
}

/// The handle other threads use to reach the raftstore.
#[derive(Clone)]
pub struct StoreRouter {
    tx: Sender<StoreMsg>,
}

impl StoreRouter {
    /// Sends without blocking; a full mailbox is reported, never waited on.
    pub fn send(&self, msg: StoreMsg) -> Result<(), StoreMsg> {
        self.tx.try_send(msg).map_err(|e| match e {
            TrySendError::Full(m) | TrySendError::Disconnected(m) => m,
        })
    }

    /// Sends a command, answering its callback with `ServerIsBusy` if the mailbox is full.
    pub fn send_command(&self, cmd: RaftCmdRequest, callback: CmdCallback) {
        if let Err(StoreMsg::Command { callback, .. }) =
            self.send(StoreMsg::Command { cmd, callback })
        {
            let _ = callback.send(Err(region_error::server_is_busy(
                "raftstore mailbox is full",
            )));
        }
    }

    pub fn send_read(
        &self,
        region_id: u64,
        epoch: Option<RegionEpoch>,
        keys: Vec<Vec<u8>>,
        callback: ReadCallback,
    ) {
        if let Err(StoreMsg::Read { callback, .. }) = self.send(StoreMsg::Read {
            region_id,
            epoch,
            keys,
            callback,
        }) {
            let _ = callback.send(Err(region_error::server_is_busy(
                "raftstore mailbox is full",
            )));
        }
    }
}

/// The bounded mailbox of the raftstore and its router.
pub fn mailbox(capacity: usize) -> (StoreRouter, Receiver<StoreMsg>) {
    let (tx, rx) = crossbeam::channel::bounded(capacity);
    (StoreRouter { tx }, rx)
}

/// The loop's state.
pub struct RaftStore {
    store_id: u64,
    peers: HashMap<u64, Peer>,
    log: Arc<dyn RaftLogEngine>,
    kv: Arc<dyn KvEngine>,
    transport: Transport,
    events: mpsc::UnboundedSender<StoreEvent>,
    cfg: RaftStoreConfig,
    rx: Receiver<StoreMsg>,
    ticks: u64,
    split_checker: SplitChecker,
    /// Regions with a split check running.
    split_checks_running: HashSet<u64>,
    /// Tick at which a split was last asked for, per region, so a slow placement driver is
    /// not asked again every check.
    split_asked_at: HashMap<u64, u64>,
    /// Raft messages for regions this store does not have yet, kept for a few ticks: the new
    /// region of a split starts campaigning on the parent leader's store while the other
    /// stores may still be applying the split.
    early_messages: HashMap<u64, Vec<(u64, RaftMessage)>>,
    early_message_count: usize,
    /// Log compactions applied but not yet carried out on the log engine: region -> index.
    compactions_pending: HashMap<u64, u64>,
    /// This raftstore's own mailbox, for reports from asynchronous work (snapshot sends).
    router: StoreRouter,
}

/// Messages for not-yet-created regions kept at most, and for how many ticks.
const EARLY_MESSAGES_MAX: usize = 4096;
const EARLY_MESSAGE_TICKS: u64 = 20;
/// Ticks before a split that was asked for but did not happen is asked for again.
const SPLIT_ASK_RETRY_TICKS: u64 = 30;

/// What the raftstore drives and talks to.
pub struct StoreParts {
    pub store_id: u64,
    pub log: Arc<dyn RaftLogEngine>,
    pub kv: Arc<dyn KvEngine>,
    pub transport: Transport,
    pub events: mpsc::UnboundedSender<StoreEvent>,
    pub cfg: RaftStoreConfig,
    pub split_checker: SplitChecker,
    pub router: StoreRouter,
}

impl RaftStore {
    /// Loads every region stored on this node.
    pub fn new(parts: StoreParts, rx: Receiver<StoreMsg>) -> Result<Self, crate::NodeError> {
        let StoreParts {
            store_id,
            log,
            kv,
            transport,
            events,
            cfg,
            split_checker,
            router,
        } = parts;
        let mut peers = HashMap::new();
        for state in layout::all_region_states(kv.as_ref())? {
            if state.state != ringkv_proto::raftpb::PeerState::Normal as i32 {
                continue;
            }
            let Some(region) = state.region else { continue };
            let storage = PeerStorage::load(region.clone(), kv.as_ref(), log.clone())?;
            let peer = Peer::new(store_id, storage, &cfg.peer)?;
            tracing::info!(
                region = region.id,
                peer = peer.peer_id(),
                applied = peer.applied_index(),
                "loaded region"
            );
            peers.insert(region.id, peer);
        }
        Ok(RaftStore {
            store_id,
            peers,
            log,
            kv,
            transport,
            events,
            cfg,
            rx,
            ticks: 0,
            split_checker,
            split_checks_running: HashSet::new(),
            split_asked_at: HashMap::new(),
            early_messages: HashMap::new(),
            early_message_count: 0,
            compactions_pending: HashMap::new(),
            router,
        })
    }

    /// Runs until `Stop` or until every router is dropped. A storage failure panics: a node
    /// that cannot persist must stop rather than answer.
    pub fn run(mut self) {
        let mut next_tick = Instant::now() + self.cfg.tick_interval;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(StoreMsg::Stop) => break,
                Ok(msg) => {
                    if !self.handle(msg) {
                        break;
                    }
                    let mut stop = false;
                    for _ in 1..self.cfg.messages_per_round_max {
                        match self.rx.try_recv() {
                            Ok(StoreMsg::Stop) => {
                                stop = true;
                                break;
                            }
                            Ok(msg) => {
                                self.handle(msg);
                            }
                            Err(_) => break,
                        }
                    }
                    if stop {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next_tick {
                self.tick();
                next_tick = Instant::now() + self.cfg.tick_interval;
            }
            self.round();
            self.generate_snapshots();
        }
        tracing::info!(store = self.store_id, "raftstore stopped");
    }

    fn handle(&mut self, msg: StoreMsg) -> bool {
        match msg {
            StoreMsg::Raft(m) => self.on_raft_message(*m),
            StoreMsg::Command { cmd, callback } => match self.peers.get_mut(&cmd.region_id) {
                Some(peer) => peer.propose(cmd, callback),
                None => {
                    let _ = callback.send(Err(region_error::region_not_found(cmd.region_id)));
                }
            },
            StoreMsg::Read {
                region_id,
                epoch,
                keys,
                callback,
            } => match self.peers.get_mut(&region_id) {
                Some(peer) => {
                    let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
                    peer.read(epoch, &keys, callback);
                }
                None => {
                    let _ = callback.send(Err(region_error::region_not_found(region_id)));
                }
            },
            StoreMsg::CreateBootstrapPeer(region) => self.create_bootstrap_peer(region),
            StoreMsg::SnapshotStatus {
                region_id,
                to_peer_id,
                delivered,
            } => {
                if let Some(peer) = self.peers.get_mut(&region_id) {
                    peer.report_snapshot(to_peer_id, delivered);
                }
            }
            StoreMsg::SplitCheckResult {
                region_id,
                version,
                outcome,
            } => self.on_split_check_result(region_id, version, outcome),
            StoreMsg::Status {
                region_id,
                callback,
            } => {
                let infos = self
                    .peers
                    .values()
                    .filter(|p| {
                        p.is_initialized() && region_id.is_none_or(|id| id == p.region_id())
                    })
                    .map(|p| RegionInfoResponse {
                        found: true,
                        region: Some(p.region().clone()),
                        term: p.term(),
                        commit_index: p.commit_index(),
                        applied_index: p.applied_index(),
                        last_index: p.last_index(),
                        leader_id: p.leader_id(),
                        is_leader: p.is_leader(),
                        truncated_index: p.truncated_index(),
                    })
                    .collect();
                let _ = callback.send(infos);
            }
            StoreMsg::Stop => return false,
        }
        true
    }

    fn on_raft_message(&mut self, msg: RaftMessage) {
        let Some(to) = msg.to_peer.filter(|p| p.store_id == self.store_id) else {
            tracing::warn!(
                region = msg.region_id,
                "raft message for another store dropped"
            );
            return;
        };
        let mut inner = raft::eraftpb::Message::default();
        if let Err(e) = inner.merge_from_bytes(&msg.message) {
            tracing::warn!(region = msg.region_id, error = %e, "malformed raft message dropped");
            return;
        }
        if !self.peers.contains_key(&msg.region_id) && !self.maybe_create_uninitialized(&msg, to) {
            self.keep_early_message(msg);
            return;
        }
        if inner.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot
            && !self.snapshot_fits(msg.region_id, inner.get_snapshot())
        {
            return;
        }
        let peer = self
            .peers
            .get_mut(&msg.region_id)
            .expect("checked or created");
        if peer.peer_id() != to.id {
            tracing::debug!(
                region = msg.region_id,
                to = to.id,
                local = peer.peer_id(),
                "raft message for another peer of the region dropped"
            );
            return;
        }
        peer.step(msg.from_peer, inner);
    }

    /// Keeps a message for a region that does not exist here yet, for a few ticks.
    fn keep_early_message(&mut self, msg: RaftMessage) {
        if self.early_message_count < EARLY_MESSAGES_MAX {
            self.early_message_count += 1;
            self.early_messages
                .entry(msg.region_id)
                .or_default()
                .push((self.ticks, msg));
        } else {
            tracing::debug!(
                region = msg.region_id,
                "raft message for a region not on this store dropped"
            );
        }
    }

    /// Whether an initialized local region other than `region_id` overlaps `[start, end)`.
    fn overlaps_local(&self, region_id: u64, start: &[u8], end: &[u8]) -> bool {
        self.peers.values().any(|p| {
            p.region_id() != region_id
                && p.is_initialized()
                && ranges_overlap(&p.region().start_key, &p.region().end_key, start, end)
        })
    }

    /// Creates an uninitialized peer for a message to a region this store does not have,
    /// unless a local region still covers part of its range: then a split that creates it
    /// here is pending, or a stale local region must catch up first.
    fn maybe_create_uninitialized(&mut self, msg: &RaftMessage, to: PeerMeta) -> bool {
        if to.id == 0 || self.overlaps_local(msg.region_id, &msg.start_key, &msg.end_key) {
            return false;
        }
        match layout::read_region_state(self.kv.as_ref(), msg.region_id) {
            Ok(None) => {}
            Ok(Some(_)) => return false,
            Err(e) => panic!("cannot read region state of region {}: {e}", msg.region_id),
        }
        let storage = PeerStorage::uninitialized(msg.region_id, self.log.clone());
        match Peer::uninitialized(to, storage, &self.cfg.peer) {
            Ok(peer) => {
                tracing::info!(
                    region = msg.region_id,
                    peer = to.id,
                    "created uninitialized peer; waiting for a snapshot"
                );
                self.peers.insert(msg.region_id, peer);
                true
            }
            Err(e) => {
                tracing::warn!(region = msg.region_id, error = %e, "cannot create peer");
                false
            }
        }
    }

    /// A snapshot may be installed only if its range overlaps no other local region (one that
    /// is stale must catch up first; the leader retries the snapshot).
    fn snapshot_fits(&self, region_id: u64, snap: &raft::eraftpb::Snapshot) -> bool {
        let Some(region) = crate::snapshot::decode(snap).and_then(|d| d.region) else {
            tracing::warn!(region = region_id, "undecodable snapshot dropped");
            return false;
        };
        if region.id != region_id {
            tracing::warn!(region = region_id, "snapshot of another region dropped");
            return false;
        }
        if self.overlaps_local(region_id, &region.start_key, &region.end_key) {
            tracing::info!(
                region = region_id,
                "snapshot overlaps a local region that is behind; dropped for now"
            );
            return false;
        }
        true
    }

    fn create_bootstrap_peer(&mut self, region: Region) {
        if self.peers.contains_key(&region.id) {
            return;
        }
        // A region state means this store had the region before (maybe removed): never recreate.
        match layout::read_region_state(self.kv.as_ref(), region.id) {
            Ok(None) => {}
            Ok(Some(_)) => return,
            Err(e) => panic!("cannot read region state of region {}: {e}", region.id),
        }
        let mut kv_batch = KvWriteBatch::default();
        let mut log_batch = RaftLogBatch::default();
        let storage = PeerStorage::create_at_bootstrap(
            region.clone(),
            self.log.clone(),
            &mut kv_batch,
            &mut log_batch,
        );
        // Log first: a region state without a hard state would be refused at restart.
        self.log
            .write(log_batch, true)
            .unwrap_or_else(|e| panic!("cannot write bootstrap raft state: {e}"));
        self.kv
            .write(kv_batch)
            .unwrap_or_else(|e| panic!("cannot write bootstrap region state: {e}"));
        self.kv
            .flush()
            .unwrap_or_else(|e| panic!("cannot flush bootstrap region state: {e}"));
        match Peer::new(self.store_id, storage, &self.cfg.peer) {
            Ok(peer) => {
                tracing::info!(
                    region = region.id,
                    peer = peer.peer_id(),
                    "created peer at bootstrap state"
                );
                self.peers.insert(region.id, peer);
            }
            Err(e) => {
                tracing::error!(region = region.id, error = %e, "cannot create bootstrap peer")
            }
        }
    }

    fn on_split_check_result(&mut self, region_id: u64, version: u64, outcome: SplitCheckOutcome) {
        self.split_checks_running.remove(&region_id);
        let Some(peer) = self.peers.get_mut(&region_id) else {
            return;
        };
        if peer.version() != version {
            // Split or merged meanwhile: the figures describe another range.
            peer.size.check_wanted = true;
            return;
        }
        peer.size.approximate_size_bytes = Some(outcome.size_bytes);
        peer.size.approximate_keys = Some(outcome.keys);
        let Some(split_key) = outcome.split_key else {
            return;
        };
        if !peer.is_leader() {
            return;
        }
        tracing::info!(
            region = region_id,
            size_bytes = outcome.size_bytes,
            keys = outcome.keys,
            "region over the split threshold; asking for a split"
        );
        self.split_asked_at.insert(region_id, self.ticks);
        let _ = self.events.send(StoreEvent::AskSplit {
            region: peer.region().clone(),
            split_key,
        });
    }

    /// Schedules split checks of leaders that were written to enough, or want one.
    fn schedule_split_checks(&mut self) {
        let cfg = self.cfg.split;
        for (id, peer) in self.peers.iter_mut() {
            if !peer.is_leader() || self.split_checks_running.contains(id) {
                continue;
            }
            if self
                .split_asked_at
                .get(id)
                .is_some_and(|t| self.ticks < t + SPLIT_ASK_RETRY_TICKS)
            {
                continue;
            }
            let size = peer.size;
            let over = size
                .approximate_size_bytes
                .is_some_and(|s| s > cfg.region_split_size_bytes)
                || size
                    .approximate_keys
                    .is_some_and(|k| k > cfg.region_split_keys);
            if !(size.check_wanted
                || over
                || size.written_since_check_bytes >= cfg.split_check_diff_bytes)
            {
                continue;
            }
            if self.split_checker.schedule(SplitCheckTask {
                region: peer.region().clone(),
            }) {
                peer.size.check_wanted = false;
                peer.size.written_since_check_bytes = 0;
                self.split_checks_running.insert(*id);
            }
        }
    }

    /// Creates the peer of the new region of an applied split, and hands it the messages that
    /// arrived for it before it existed.
    fn on_split_applied(&mut self, parent_id: u64, left: Region, right: Region) {
        self.split_asked_at.remove(&parent_id);
        let parent_leader = self.peers.get(&parent_id).is_some_and(|p| p.is_leader());
        if parent_leader {
            let _ = self.events.send(StoreEvent::ReportSplit {
                left,
                right: right.clone(),
            });
        }
        let right_id = right.id;
        if self
            .peers
            .get(&right_id)
            .is_some_and(|p| p.is_initialized())
        {
            // Installed from a snapshot, which is newer than this split (see apply).
            return;
        }
        let storage = PeerStorage::created_by_split(right, self.log.clone());
        let mut peer = match Peer::new(self.store_id, storage, &self.cfg.peer) {
            Ok(p) => p,
            Err(e) => panic!("cannot create peer of region {right_id} from a split: {e}"),
        };
        if parent_leader {
            peer.campaign();
        }
        // An uninitialized peer of the region (created from an early message) is replaced.
        self.peers.insert(right_id, peer);
        if let Some(early) = self.early_messages.remove(&right_id) {
            self.early_message_count -= early.len();
            for (_, msg) in early {
                self.on_raft_message(msg);
            }
        }
    }

    fn expire_early_messages(&mut self) {
        let now = self.ticks;
        let mut dropped = 0;
        self.early_messages.retain(|_, msgs| {
            let before = msgs.len();
            msgs.retain(|(t, _)| now < t + EARLY_MESSAGE_TICKS);
            dropped += before - msgs.len();
            !msgs.is_empty()
        });
        self.early_message_count -= dropped;
    }

    fn tick(&mut self) {
        self.ticks += 1;
        self.expire_early_messages();
        if self
            .ticks
            .is_multiple_of(u64::from(self.cfg.raft_log_gc_ticks.max(1)))
        {
            self.gc_raft_logs();
        }
        if self
            .ticks
            .is_multiple_of(u64::from(self.cfg.split.split_check_ticks.max(1)))
        {
            self.schedule_split_checks();
        }
        let heartbeat_due = self
            .ticks
            .is_multiple_of(u64::from(self.cfg.region_heartbeat_ticks.max(1)));
        let ids: Vec<u64> = self.peers.keys().copied().collect();
        for id in ids {
            let peer = self.peers.get_mut(&id).expect("listed");
            peer.tick();
            if heartbeat_due && peer.is_leader() {
                let hb = heartbeat_of(peer);
                let _ = self.events.send(StoreEvent::RegionHeartbeat(hb));
            }
        }
    }

    /// Streams snapshot messages; each peer hears back whether its snapshot was delivered.
    fn send_snapshots(&self, snapshots: Vec<RaftMessage>) {
        for msg in snapshots {
            let (region_id, to) = (msg.region_id, msg.to_peer.map(|p| p.id).unwrap_or(0));
            let router = self.router.clone();
            self.transport.send_snapshot(
                msg,
                Box::new(move |delivered| {
                    let _ = router.send(StoreMsg::SnapshotStatus {
                        region_id,
                        to_peer_id: to,
                        delivered,
                    });
                }),
            );
        }
    }

    /// Builds the snapshots raft asked for during the round. Runs between rounds, where every
    /// region's data is exactly its applied state.
    fn generate_snapshots(&mut self) {
        for peer in self.peers.values() {
            if !peer.storage().take_snapshot_wanted() {
                continue;
            }
            match crate::snapshot::generate(peer.storage(), self.kv.as_ref()) {
                Ok(snap) => {
                    tracing::info!(
                        region = peer.region_id(),
                        index = snap.get_metadata().index,
                        bytes = snap.get_data().len(),
                        "snapshot generated"
                    );
                    peer.storage().set_generated_snapshot(snap);
                }
                Err(e) => {
                    tracing::error!(region = peer.region_id(), error = %e, "snapshot generation failed")
                }
            }
        }
    }

    /// Leaders propose log compaction where due; compactions already applied are carried out
    /// on the log engine once the KV engine has made their apply state durable.
    fn gc_raft_logs(&mut self) {
        let (threshold, limit) = (
            self.cfg.raft_log_gc_threshold,
            self.cfg.raft_log_gc_count_limit,
        );
        for peer in self.peers.values_mut() {
            let Some((index, term)) = peer.compact_index_due(threshold, limit) else {
                continue;
            };
            let cmd = RaftCmdRequest {
                region_id: peer.region_id(),
                region_epoch: peer.region().region_epoch,
                requests: Vec::new(),
                admin: Some(AdminRequest {
                    cmd: Some(admin_request::Cmd::CompactLog(CompactLogRequest {
                        compact_index: index,
                        compact_term: term,
                    })),
                }),
            };
            let (tx, _rx) = oneshot::channel();
            peer.propose(cmd, tx);
        }
        if self.compactions_pending.is_empty() {
            return;
        }
        // The truncated state must be durable before the entries go: after a crash the node
        // replays from the last durable applied index.
        self.kv
            .flush()
            .unwrap_or_else(|e| panic!("kv flush failed; stopping the node: {e}"));
        for (region_id, index) in self.compactions_pending.drain() {
            self.log
                .compact_to(region_id, index + 1)
                .unwrap_or_else(|e| panic!("raft log compaction failed; stopping the node: {e}"));
        }
        if let Err(e) = self.log.purge() {
            tracing::warn!(error = %e, "raft log purge failed");
        }
    }

    /// One round of group commit, send and apply.
    fn round(&mut self) {
        let mut log_batch = RaftLogBatch::default();
        let mut early = Outbox::default();
        let mut ready_peers = Vec::new();
        for (id, peer) in self.peers.iter_mut() {
            peer.flush_reads();
            if peer.has_ready() {
                peer.collect_ready(self.kv.as_ref(), &mut log_batch, &mut early)
                    .unwrap_or_else(|e| panic!("snapshot install failed; stopping the node: {e}"));
                ready_peers.push(*id);
            }
        }
        self.transport.send_all(early.messages);
        self.send_snapshots(early.snapshots);
        if ready_peers.is_empty() {
            return;
        }
        if !log_batch.is_empty() {
            self.log
                .write(log_batch, self.cfg.sync_log)
                .unwrap_or_else(|e| panic!("raft log write failed; stopping the node: {e}"));
        }
        let mut late = Outbox::default();
        for id in &ready_peers {
            self.peers
                .get_mut(id)
                .expect("listed")
                .after_write(&mut late);
        }
        self.transport.send_all(late.messages);
        self.send_snapshots(late.snapshots);

        let mut kv_batch = KvWriteBatch::default();
        let mut results: Vec<(CmdCallback, CmdResult)> = Vec::new();
        let mut applied = Vec::new();
        let mut admin_results = Vec::new();
        for id in &ready_peers {
            let peer = self.peers.get_mut(id).expect("listed");
            if peer.has_entries_to_apply() {
                let admin = peer
                    .apply(self.kv.as_ref(), &mut kv_batch, &mut results)
                    .unwrap_or_else(|e| panic!("apply failed; stopping the node: {e}"));
                admin_results.extend(admin.into_iter().map(|a| (*id, a)));
                applied.push(*id);
            }
        }
        if !kv_batch.is_empty() {
            self.kv
                .write(kv_batch)
                .unwrap_or_else(|e| panic!("apply write failed; stopping the node: {e}"));
        }
        for (id, admin) in admin_results {
            match admin {
                AdminResult::Split { left, right } => self.on_split_applied(id, left, right),
                AdminResult::CompactLog { index, .. } => {
                    let pending = self.compactions_pending.entry(id).or_insert(index);
                    *pending = (*pending).max(index);
                }
            }
        }
        for (callback, result) in results {
            let _ = callback.send(result);
        }
        for id in &applied {
            self.peers.get_mut(id).expect("listed").after_apply();
        }
        for id in &ready_peers {
            let peer = self.peers.get_mut(id).expect("listed");
            peer.after_round();
            if let Some(view) = peer.leader_view_changed() {
                tracing::info!(
                    region = id,
                    leader = view.leader_id,
                    term = view.term,
                    is_leader = view.is_leader,
                    "leader changed"
                );
                if view.is_leader {
                    let _ = self
                        .events
                        .send(StoreEvent::RegionHeartbeat(heartbeat_of(peer)));
                }
            }
        }
    }
}

fn heartbeat_of(peer: &Peer) -> RegionHeartbeatRequest {
    RegionHeartbeatRequest {
        header: None,
        region: Some(peer.region().clone()),
        leader: Some(peer.meta()),
        term: peer.term(),
        approximate_keys: peer.size.approximate_keys.unwrap_or(0),
        approximate_size_bytes: peer.size.approximate_size_bytes.unwrap_or(0),
    }
}
