//! The batch system's plumbing: one bounded mailbox per peer, a router from region id to
//! mailbox, and the queue of peers that have mail, which the poller threads drain.
//!
//! A peer FSM is either *parked* in its mailbox (idle) or *scheduled* (in the ready queue or in
//! a poller's hands). Sending a message to an idle mailbox moves its FSM to the ready queue;
//! a poller that is done with an FSM parks it again and re-schedules it if mail arrived
//! meanwhile. So no thread or task exists per region, and an FSM is only ever held by one
//! poller at a time.

use crate::apply_pool::{ApplyBatch, ApplyDelegate};
use crate::peer::{CmdCallback, ReadCallback};
use crate::raftstore::PeerFsm;
use crate::region_error;
use crossbeam::channel::{Receiver, Sender, TrySendError};
use parking_lot::{Mutex, RwLock};
use ringkv_proto::keys::ranges_overlap;
use ringkv_proto::metapb::{Region, RegionEpoch};
use ringkv_proto::raftpb::{RaftCmdRequest, RaftMessage, RegionInfoResponse};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;

use crate::split_check::SplitCheckOutcome;

/// Messages to one peer.
pub enum PeerMsg {
    /// A Raft message from another store.
    Raft(Box<RaftMessage>),
    /// A write to propose. Boxed, like the Raft message: see [`PEER_MSG_BYTES_MAX`].
    Command {
        cmd: Box<RaftCmdRequest>,
        callback: CmdCallback,
    },
    /// A linearizable read to clear; `keys` must be in the region. With `replica`, a follower
    /// may clear it too.
    Read {
        epoch: Option<RegionEpoch>,
        keys: Vec<Vec<u8>>,
        callback: ReadCallback,
        replica: bool,
    },
    /// A stale read to clear: any replica whose safe timestamp has reached it may.
    StaleRead(Box<StaleRead>),
    /// The local resolver's safe-timestamp claim for a region led here (see
    /// [`crate::resolved_ts`]): the leader takes it and sends it to the other replicas.
    PublishSafeTs { version: u64, index: u64, ts: u64 },
    /// The resolver's barrier (see [`crate::peer::Peer::lease_barrier`]); does not wake a
    /// quiet region nor count as activity.
    LeaseBarrier(ReadCallback),
    /// One Raft tick has passed.
    Tick,
    /// A split check finished.
    SplitCheckResult {
        /// The region version the check saw.
        version: u64,
        outcome: SplitCheckOutcome,
    },
    /// How sending a snapshot ended.
    SnapshotStatus { to_peer_id: u64, delivered: bool },
    /// Report this replica's state (None while it has no data yet).
    Status(oneshot::Sender<Option<RegionInfoResponse>>),
    /// Start an election at once.
    Campaign,
    /// Hand leadership to this peer (Raft's leader transfer); ignored by a non-leader.
    TransferLeader { to_peer_id: u64 },
    /// Leave quiet mode (a peer store may have failed).
    Wake,
    /// Split the region where its data halves (the placement driver's split order without a
    /// key); ignored by a non-leader.
    HalveSplit,
    /// The local target replica of this region's merge is waiting for this replica to apply
    /// the prepare at `commit` (see [`crate::peer::Peer::catch_up_merge`]).
    CatchUpMerge { commit: u64, commit_term: u64 },
    /// Whether this replica's log holds, at `commit` and of `commit_term`, the PrepareMerge
    /// into region `target` that a CommitMerge naming this region as its source rests on
    /// (see [`crate::peer::Peer::prepared_merge_into`]).
    CheckPreparedMerge {
        commit: u64,
        commit_term: u64,
        target: u64,
        reply: oneshot::Sender<Result<(), crate::peer::NoPrepare>>,
    },
    /// This replica is finished: its region was merged into another (whose apply already wrote
    /// this region's tombstone) or, with `tombstone`, a snapshot of the region that absorbed it
    /// needs its range.
    Destroy { tombstone: bool },
    /// A quiet leader reports to the placement driver, staying quiet.
    ReportQuiet,
    /// The region's apply delegate is back from the apply pool.
    Applied(Box<ApplyDelegate>),
    /// The snapshot worker is done with the region: the delegate it held comes back, with
    /// the snapshot it generated, or after installing one.
    SnapshotDone(Box<SnapshotDone>),
}

/// Work for the snapshot worker. It holds the region's apply delegate meanwhile, so nothing
/// writes the region's data while it reads or replaces it.
pub enum SnapshotTask {
    /// Write the region's data, at the delegate's applied index, to a snapshot file.
    Generate {
        task: crate::snapshot::GenerateTask,
        delegate: Box<ApplyDelegate>,
    },
    /// Replace the region's data with the snapshot recorded in `state` (`Applying`).
    Install {
        state: ringkv_proto::raftpb::RegionLocalState,
        delegate: Box<ApplyDelegate>,
    },
}

impl SnapshotTask {
    pub fn region_id(&self) -> u64 {
        match self {
            SnapshotTask::Generate { delegate, .. } | SnapshotTask::Install { delegate, .. } => {
                delegate.region_id()
            }
        }
    }
}

/// What the snapshot worker sends back to the peer.
pub struct SnapshotDone {
    pub delegate: Box<ApplyDelegate>,
    pub outcome: SnapshotOutcome,
}

pub enum SnapshotOutcome {
    /// A generated snapshot, or why none was.
    Generated(Result<raft::eraftpb::Snapshot, String>),
    /// The snapshot the peer recorded is installed.
    Installed,
}

/// A stale read at `read_ts` of `keys` (see [`crate::safe_ts`]).
pub struct StaleRead {
    pub epoch: Option<RegionEpoch>,
    pub keys: Vec<Vec<u8>>,
    pub read_ts: u64,
    pub callback: ReadCallback,
}

/// The largest a [`PeerMsg`] may be: queued messages cost this much each, for every region
/// with mail, so large payloads (commands, Raft messages) travel boxed.
pub const PEER_MSG_BYTES_MAX: usize = 64;
const _: () = assert!(std::mem::size_of::<PeerMsg>() <= PEER_MSG_BYTES_MAX);

/// Messages to the store as a whole (the control thread).
pub enum StoreMsg {
    /// A Raft message for a region that has no mailbox here.
    Raft(Box<RaftMessage>),
    /// Create the peer of a region at its bootstrap state, unless it exists.
    CreateBootstrapPeer(Region),
    /// A split was applied here: create the new region's peer.
    SplitApplied { right: Region, campaign: bool },
    /// A log compaction was applied: carry it out on the log engine once the KV engine is
    /// flushed.
    CompactLog { region_id: u64, index: u64 },
    /// Messages to this store could not be delivered: wake the regions that have a peer there.
    StoreUnreachable(u64),
    /// A destroyed peer's log can go once its tombstone is durable.
    CleanLog { region_id: u64 },
    /// Leave the control loop.
    Stop,
}

/// What the store knows about all its regions at once, kept by the pollers as regions change.
#[derive(Default)]
pub struct StoreMeta {
    /// Initialized regions, plus the new regions of applied splits whose peers are being
    /// created (so their range already counts as taken).
    pub regions: HashMap<u64, Region>,
    /// Regions this store leads.
    pub leaders: HashSet<u64>,
    /// Regions merged into another here whose peer is not destroyed yet: their range belongs
    /// to the target now, so they must not be published again.
    pub merged_away: HashSet<u64>,
}

impl StoreMeta {
    /// Whether a region other than `region_id` covers part of `[start, end)`.
    pub fn overlaps(&self, region_id: u64, start: &[u8], end: &[u8]) -> bool {
        self.others_overlapping(region_id, start, end)
            .next()
            .is_some()
    }

    /// The regions other than `region_id` that cover part of `[start, end)`.
    pub fn overlapping(&self, region_id: u64, start: &[u8], end: &[u8]) -> Vec<Region> {
        self.others_overlapping(region_id, start, end)
            .cloned()
            .collect()
    }

    fn others_overlapping<'a>(
        &'a self,
        region_id: u64,
        start: &'a [u8],
        end: &'a [u8],
    ) -> impl Iterator<Item = &'a Region> {
        self.regions.values().filter(move |r| {
            r.id != region_id && ranges_overlap(&r.start_key, &r.end_key, start, end)
        })
    }
}

const IDLE: u8 = 0;
const NOTIFIED: u8 = 1;

/// One peer's mailbox.
pub struct Mailbox {
    pub region_id: u64,
    /// An unbounded channel, which allocates as mail arrives (a bounded one would allocate
    /// every slot for every region up front), kept within `capacity` by [`Mailbox::push`].
    tx: Sender<PeerMsg>,
    capacity: usize,
    /// Payload bytes (Raft messages, commands, read keys) queued here, counted in
    /// `store_bytes` too, which keeps every mailbox of the store within `store_bytes_max`.
    bytes: AtomicUsize,
    store_bytes: Arc<AtomicUsize>,
    store_bytes_max: usize,
    state: AtomicU8,
    parked: Mutex<Option<Box<PeerFsm>>>,
    /// Ticks are delivered only while awake: a quiet region costs nothing until mail arrives.
    awake: AtomicBool,
}

/// The bytes a queued message holds beyond its fixed size: what the store's mailbox byte
/// budget counts.
fn payload_bytes(msg: &PeerMsg) -> usize {
    use prost::Message as _;
    match msg {
        PeerMsg::Raft(m) => m.message.len() + m.start_key.len() + m.end_key.len(),
        PeerMsg::Command { cmd, .. } => cmd.encoded_len(),
        PeerMsg::Read { keys, .. } => keys.iter().map(Vec::len).sum(),
        PeerMsg::StaleRead(r) => r.keys.iter().map(Vec::len).sum(),
        _ => 0,
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        // What was still queued goes with the channel.
        self.store_bytes
            .fetch_sub(*self.bytes.get_mut(), Ordering::Relaxed);
    }
}

impl Mailbox {
    /// Queues `msg` unless the mailbox holds `capacity` messages already. The bound is loose
    /// by the number of concurrent senders, which is all a bound on memory needs.
    /// Queues `msg` unless the mailbox holds `capacity` messages already, or the store's
    /// mailboxes hold `store_bytes_max` payload bytes (one message always fits an empty
    /// store). The bounds are loose by the number of concurrent senders, which is all a bound
    /// on memory needs.
    fn push(&self, msg: PeerMsg) -> Result<(), PeerMsg> {
        if self.tx.len() >= self.capacity {
            return Err(msg);
        }
        let n = payload_bytes(&msg);
        if n > 0 {
            let queued = self.store_bytes.load(Ordering::Relaxed);
            if queued > 0 && queued + n > self.store_bytes_max {
                return Err(msg);
            }
            self.store_bytes.fetch_add(n, Ordering::Relaxed);
            self.bytes.fetch_add(n, Ordering::Relaxed);
        }
        self.tx.send(msg).map_err(|e| {
            self.taken(&e.0);
            e.0
        })
    }

    /// Counts `msg` out of the queued bytes: its peer took it from the mailbox.
    pub(crate) fn taken(&self, msg: &PeerMsg) {
        let n = payload_bytes(msg);
        if n > 0 {
            self.bytes.fetch_sub(n, Ordering::Relaxed);
            self.store_bytes.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Queues `msg` whatever the mailbox holds: for messages that must not be lost and whose
    /// number is bounded elsewhere (one apply delegate per region).
    fn push_always(&self, msg: PeerMsg) -> Result<(), PeerMsg> {
        self.tx.send(msg).map_err(|e| e.0)
    }

    pub fn set_awake(&self, awake: bool) {
        self.awake.store(awake, Ordering::SeqCst);
    }

    pub fn is_awake(&self) -> bool {
        self.awake.load(Ordering::SeqCst)
    }
}

/// Payload bytes the mailboxes of one store may hold in all: past it, Raft messages are dropped
/// (Raft sends again) and requests answered busy.
pub const MAILBOX_BYTES_MAX: usize = 256 << 20;

/// Routes messages to peers and to the store. Cheap to clone.
#[derive(Clone)]
pub struct StoreRouter {
    inner: Arc<RouterInner>,
}

struct RouterInner {
    mailboxes: RwLock<HashMap<u64, Arc<Mailbox>>>,
    control: Sender<StoreMsg>,
    ready: Sender<Box<PeerFsm>>,
    apply: Sender<ApplyBatch>,
    snapshot: Sender<SnapshotTask>,
    meta: Mutex<StoreMeta>,
    flow: crate::flow::FlowRecorder,
    mailbox_capacity: usize,
    /// Payload bytes queued in every mailbox of the store, and their limit.
    mailbox_bytes: Arc<AtomicUsize>,
    mailbox_bytes_max: usize,
    /// Bumped before any region's data on this store is replaced or deleted outside its log
    /// (a snapshot install, a destroyed replica); see [`StoreRouter::data_epoch`].
    data_epoch: AtomicUsize,
}

/// The receiving ends the store's threads drain.
pub struct RouterReceivers {
    pub control: Receiver<StoreMsg>,
    pub ready: Receiver<Box<PeerFsm>>,
    /// Batches of apply delegates for the apply pool.
    pub apply: Receiver<ApplyBatch>,
    /// Snapshots to generate or install, for the snapshot worker.
    pub snapshot: Receiver<SnapshotTask>,
}

impl StoreRouter {
    /// A router whose control mailbox holds `control_capacity` messages and each peer mailbox
    /// `mailbox_capacity`.
    pub fn new(control_capacity: usize, mailbox_capacity: usize) -> (Self, RouterReceivers) {
        Self::with_mailbox_bytes(control_capacity, mailbox_capacity, MAILBOX_BYTES_MAX)
    }

    /// Like [`StoreRouter::new`], with the store's mailboxes holding at most
    /// `mailbox_bytes_max` payload bytes in all (see [`MAILBOX_BYTES_MAX`]).
    pub fn with_mailbox_bytes(
        control_capacity: usize,
        mailbox_capacity: usize,
        mailbox_bytes_max: usize,
    ) -> (Self, RouterReceivers) {
        let (control_tx, control_rx) = crossbeam::channel::bounded(control_capacity);
        let (ready_tx, ready_rx) = crossbeam::channel::unbounded();
        // Unbounded, yet bounded in fact: a region has one apply delegate.
        let (apply_tx, apply_rx) = crossbeam::channel::unbounded();
        // The same: a task holds its region's apply delegate.
        let (snapshot_tx, snapshot_rx) = crossbeam::channel::unbounded();
        (
            StoreRouter {
                inner: Arc::new(RouterInner {
                    mailboxes: RwLock::new(HashMap::new()),
                    control: control_tx,
                    ready: ready_tx,
                    apply: apply_tx,
                    snapshot: snapshot_tx,
                    meta: Mutex::new(StoreMeta::default()),
                    flow: Default::default(),
                    mailbox_capacity,
                    mailbox_bytes: Default::default(),
                    mailbox_bytes_max,
                    data_epoch: AtomicUsize::new(0),
                }),
            },
            RouterReceivers {
                control: control_rx,
                ready: ready_rx,
                apply: apply_rx,
                snapshot: snapshot_rx,
            },
        )
    }

    /// A count of the times some region's data here was replaced or deleted outside its log.
    /// A read taken before a replica cleared it and checked again after reading the engine
    /// knows the data it read was whole: installs and destroys work in pages, and a reader
    /// cleared just before one starts could otherwise see part of it.
    pub fn data_epoch(&self) -> usize {
        self.inner.data_epoch.load(Ordering::SeqCst)
    }

    /// Marks the start of a replacement or deletion of a region's data (before its first page).
    pub(crate) fn bump_data_epoch(&self) {
        self.inner.data_epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// The store-wide region table.
    pub fn meta(&self) -> parking_lot::MutexGuard<'_, StoreMeta> {
        self.inner.meta.lock()
    }

    /// The store's read and write flow counters.
    pub fn flow(&self) -> &crate::flow::FlowRecorder {
        &self.inner.flow
    }

    /// A fresh mailbox channel for a peer about to be registered.
    pub(crate) fn channel(&self) -> (Sender<PeerMsg>, Receiver<PeerMsg>) {
        crossbeam::channel::unbounded()
    }

    /// Registers `fsm` (whose receiver pairs with `tx`) and schedules it once. Returns false if
    /// the region already has a mailbox.
    pub(crate) fn register(&self, tx: Sender<PeerMsg>, mut fsm: Box<PeerFsm>) -> bool {
        let region_id = fsm.region_id();
        let mailbox = Arc::new(Mailbox {
            region_id,
            tx,
            capacity: self.inner.mailbox_capacity,
            bytes: AtomicUsize::new(0),
            store_bytes: self.inner.mailbox_bytes.clone(),
            store_bytes_max: self.inner.mailbox_bytes_max,
            state: AtomicU8::new(NOTIFIED),
            parked: Mutex::new(None),
            awake: AtomicBool::new(true),
        });
        {
            let mut boxes = self.inner.mailboxes.write();
            if boxes.contains_key(&region_id) {
                return false;
            }
            boxes.insert(region_id, mailbox.clone());
        }
        fsm.mailbox = Some(mailbox);
        let _ = self.inner.ready.send(fsm);
        true
    }

    /// Replaces the mailbox of `region_id` by a new FSM's (an uninitialized peer superseded by
    /// the split that creates the region). The old FSM is dropped when its poller releases it.
    pub(crate) fn replace(&self, tx: Sender<PeerMsg>, fsm: Box<PeerFsm>) {
        self.close(fsm.region_id());
        self.register(tx, fsm);
    }

    /// Drops every mailbox and the FSMs parked in them (at shutdown: the FSMs hold the
    /// engines, which must close before the node can be restarted in this process).
    pub(crate) fn clear(&self) {
        let boxes: Vec<Arc<Mailbox>> = self
            .inner
            .mailboxes
            .write()
            .drain()
            .map(|(_, m)| m)
            .collect();
        for m in boxes {
            m.parked.lock().take();
        }
        self.inner.meta.lock().regions.clear();
    }

    /// Removes the mailbox of `region_id` (its peer is destroyed); the FSM is dropped when its
    /// poller releases it.
    pub(crate) fn close(&self, region_id: u64) {
        if let Some(old) = self.inner.mailboxes.write().remove(&region_id) {
            old.parked.lock().take();
        }
    }

    /// Payload bytes queued in the store's mailboxes now.
    pub fn mailbox_bytes(&self) -> usize {
        self.inner.mailbox_bytes.load(Ordering::Relaxed)
    }

    /// Those of `region_ids` whose mailbox is quiet.
    pub fn quiet(&self, region_ids: &[u64]) -> Vec<u64> {
        let boxes = self.inner.mailboxes.read();
        region_ids
            .iter()
            .filter(|id| boxes.get(id).is_some_and(|m| !m.is_awake()))
            .copied()
            .collect()
    }

    pub fn region_ids(&self) -> Vec<u64> {
        self.inner.mailboxes.read().keys().copied().collect()
    }

    /// Whether the region's local peer is awake (not quiet); false if it is not here.
    pub fn is_awake(&self, region_id: u64) -> bool {
        self.mailbox(region_id).is_some_and(|m| m.is_awake())
    }

    pub fn has_region(&self, region_id: u64) -> bool {
        self.inner.mailboxes.read().contains_key(&region_id)
    }

    fn mailbox(&self, region_id: u64) -> Option<Arc<Mailbox>> {
        self.inner.mailboxes.read().get(&region_id).cloned()
    }

    /// Whether `fsm` is the peer its region's mailbox belongs to (false once replaced or
    /// closed).
    pub(crate) fn is_registered(&self, fsm: &PeerFsm) -> bool {
        match (&fsm.mailbox, self.mailbox(fsm.region_id())) {
            (Some(own), Some(current)) => Arc::ptr_eq(own, &current),
            (Some(_), None) => false,
            // Not registered through the router at all (unit tests drive such FSMs).
            (None, _) => true,
        }
    }

    /// Sends to a peer without blocking. Fails if the region has no mailbox here or it is full.
    pub fn send(&self, region_id: u64, msg: PeerMsg) -> Result<(), PeerMsg> {
        let Some(mailbox) = self.mailbox(region_id) else {
            return Err(msg);
        };
        mailbox.push(msg)?;
        self.notify(&mailbox);
        Ok(())
    }

    /// Hands a poll round's apply delegates to the apply pool.
    pub(crate) fn schedule_apply(&self, batch: ApplyBatch) {
        if !batch.is_empty() && self.inner.apply.send(batch).is_err() {
            tracing::debug!("apply pool gone (shutdown); the entries are applied at restart");
        }
    }

    /// Hands a snapshot task to the snapshot worker.
    pub(crate) fn schedule_snapshot(&self, task: SnapshotTask) {
        if self.inner.snapshot.send(task).is_err() {
            tracing::debug!("snapshot worker gone (shutdown); an install resumes at restart");
        }
    }

    /// Sends the snapshot worker's result home (see [`Self::send_applied`]).
    pub(crate) fn send_snapshot_done(&self, done: Box<SnapshotDone>) {
        let region_id = done.delegate.region_id();
        let Some(mailbox) = self.mailbox(region_id) else {
            tracing::debug!(region = region_id, "snapshot task's peer is gone");
            return;
        };
        if mailbox.push_always(PeerMsg::SnapshotDone(done)).is_ok() {
            self.notify(&mailbox);
        }
    }

    /// Sends an apply delegate home. Dropped only if its peer is gone (shutdown): what it
    /// applied is written, and the rest is applied again from the log at restart.
    pub(crate) fn send_applied(&self, delegate: Box<ApplyDelegate>) {
        let region_id = delegate.region_id();
        let Some(mailbox) = self.mailbox(region_id) else {
            tracing::debug!(region = region_id, "apply delegate's peer is gone");
            return;
        };
        if mailbox.push_always(PeerMsg::Applied(delegate)).is_ok() {
            self.notify(&mailbox);
        }
    }

    /// Sends to the control thread without blocking.
    pub fn send_control(&self, msg: StoreMsg) -> Result<(), StoreMsg> {
        self.inner.control.try_send(msg).map_err(|e| match e {
            TrySendError::Full(m) | TrySendError::Disconnected(m) => m,
        })
    }

    /// Sends to the control thread, waiting for room: for messages that must not be lost (a
    /// split's new region). Gives up only if the control thread is gone (shutdown).
    pub fn send_control_wait(&self, msg: StoreMsg) -> bool {
        self.inner.control.send(msg).is_ok()
    }

    /// Delivers a Raft message to its peer, or to the control thread if the region has no
    /// peer here (it may create one). A full mailbox drops it: Raft resends.
    pub fn send_raft(&self, msg: RaftMessage) {
        let region_id = msg.region_id;
        match self.send(region_id, PeerMsg::Raft(Box::new(msg))) {
            Ok(()) => {}
            Err(PeerMsg::Raft(msg)) if !self.has_region(region_id) => {
                let _ = self.send_control(StoreMsg::Raft(msg));
            }
            Err(_) => tracing::debug!(region = region_id, "mailbox full; raft message dropped"),
        }
    }

    /// Sends a command, answering `RegionNotFound` or `ServerIsBusy` at once if it cannot be
    /// queued.
    pub fn send_command(&self, cmd: RaftCmdRequest, callback: CmdCallback) {
        let region_id = cmd.region_id;
        if let Err(PeerMsg::Command { callback, .. }) = self.send(
            region_id,
            PeerMsg::Command {
                cmd: Box::new(cmd),
                callback,
            },
        ) {
            let _ = callback.send(Err(self.unavailable(region_id)));
        }
    }

    /// Sends a read to clear; with `replica`, a follower may clear it (see [`PeerMsg::Read`]).
    pub fn send_read(
        &self,
        region_id: u64,
        epoch: Option<RegionEpoch>,
        keys: Vec<Vec<u8>>,
        callback: ReadCallback,
        replica: bool,
    ) {
        if let Err(PeerMsg::Read { callback, .. }) = self.send(
            region_id,
            PeerMsg::Read {
                epoch,
                keys,
                callback,
                replica,
            },
        ) {
            let _ = callback.send(Err(self.unavailable(region_id)));
        }
    }

    /// Sends a stale read at `read_ts` to clear (see [`PeerMsg::StaleRead`]).
    pub fn send_stale_read(
        &self,
        region_id: u64,
        epoch: Option<RegionEpoch>,
        keys: Vec<Vec<u8>>,
        read_ts: u64,
        callback: ReadCallback,
    ) {
        let read = StaleRead {
            epoch,
            keys,
            read_ts,
            callback,
        };
        if let Err(PeerMsg::StaleRead(read)) =
            self.send(region_id, PeerMsg::StaleRead(Box::new(read)))
        {
            let _ = read.callback.send(Err(self.unavailable(region_id)));
        }
    }

    fn unavailable(&self, region_id: u64) -> ringkv_proto::errorpb::RegionError {
        if self.has_region(region_id) {
            region_error::server_is_busy("the region's mailbox is full")
        } else {
            region_error::region_not_found(region_id)
        }
    }

    /// The state of the local replica of `region_id`, if it is here and initialized. Waits at
    /// most `wait`.
    pub async fn region_status(
        &self,
        region_id: u64,
        wait: std::time::Duration,
    ) -> Option<RegionInfoResponse> {
        let (tx, rx) = oneshot::channel();
        self.send(region_id, PeerMsg::Status(tx)).ok()?;
        tokio::time::timeout(wait, rx).await.ok()?.ok()?
    }

    /// The state of every initialized local replica (diagnostics: it asks every peer).
    pub async fn all_status(&self, wait: std::time::Duration) -> Vec<RegionInfoResponse> {
        let ids = self.region_ids();
        let asks = ids.into_iter().map(|id| self.region_status(id, wait));
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Delivers a tick to every awake peer (quiet ones sleep through).
    pub(crate) fn tick_awake(&self) {
        let boxes: Vec<Arc<Mailbox>> = self
            .inner
            .mailboxes
            .read()
            .values()
            .filter(|m| m.is_awake())
            .cloned()
            .collect();
        for mailbox in boxes {
            if mailbox.push(PeerMsg::Tick).is_ok() {
                self.notify(&mailbox);
            }
        }
    }

    /// Moves a parked FSM to the ready queue.
    fn notify(&self, mailbox: &Mailbox) {
        if mailbox
            .state
            .compare_exchange(IDLE, NOTIFIED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            if let Some(fsm) = mailbox.parked.lock().take() {
                let _ = self.inner.ready.send(fsm);
            }
        }
    }

    /// Parks an FSM a poller is done with, and schedules it again if mail came meanwhile.
    pub(crate) fn release(&self, fsm: Box<PeerFsm>) {
        let Some(mailbox) = fsm.mailbox.clone() else {
            return;
        };
        // A replaced or removed mailbox is no longer routed to: drop the FSM.
        let current = self
            .mailbox(mailbox.region_id)
            .is_some_and(|m| Arc::ptr_eq(&m, &mailbox));
        if !current {
            return;
        }
        *mailbox.parked.lock() = Some(fsm);
        mailbox.state.store(IDLE, Ordering::SeqCst);
        if !mailbox.tx.is_empty() {
            self.notify(&mailbox);
        }
    }
}
