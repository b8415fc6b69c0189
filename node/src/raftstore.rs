//! The raftstore: the batch system that drives every peer of the node.
//!
//! - Each peer is a [`PeerFsm`] with a bounded mailbox ([`crate::router`]). A fixed pool of
//!   poller threads takes batches of FSMs that have mail. One poll round over a batch handles
//!   their messages, gathers every `Ready`, writes all their entries and hard states in **one**
//!   log batch with one sync (group commit), sends messages (the transport batches them per
//!   destination node), applies committed entries of the whole batch in one atomic KV batch,
//!   then answers proposals and reads.
//! - A control thread ([`StoreFsm`]) ticks awake peers, creates peers (bootstrap, split, a
//!   message for a region this store does not have yet), and carries out log compactions once
//!   the KV engine is flushed.
//! - Idle regions go quiet: they stop ticking and heartbeating and wake on any mail.
//!
//! The threads are the edge; peers stay pure, and a poll round is a plain function of the
//! FSMs it is given, so a simulation can drive it on one thread.

use crate::apply::AdminResult;
use crate::apply_pool::{self, ApplyDelegate};
use crate::peer::{Outbox, Peer, PeerConfig};
use crate::router::{
    PeerMsg, RouterReceivers, SnapshotDone, SnapshotOutcome, SnapshotTask, StoreMsg, StoreRouter,
};
use crate::split_check::{SplitCheckOutcome, SplitCheckTask, SplitChecker, SplitConfig};
use crate::transport::SnapshotReport;
use crossbeam::channel::{Receiver, RecvTimeoutError};
use protobuf::Message as _;
use ringkv_proto::metapb::{Peer as PeerMeta, Region};
use ringkv_proto::pdpb::RegionHeartbeatRequest;
use ringkv_proto::raftpb::{
    admin_request, AdminRequest, CompactLogRequest, PeerState, RaftCmdRequest, RaftMessage,
    RegionInfoResponse, RegionLocalState,
};
use ringkv_storage::{layout, KvEngine, KvWriteBatch, PeerStorage, RaftLogBatch, RaftLogEngine};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

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
    /// A follower has known no leader for `stale_peer_check_ticks`: it may have been removed
    /// from its region while cut off (the removal never reached it, and no member talks to it
    /// any more). The placement task asks the placement driver and destroys the replica if the
    /// region's membership moved on without it.
    CheckStalePeer {
        region: Region,
        peer: PeerMeta,
    },
    /// A leader applied a split.
    ReportSplit {
        left: Region,
        right: Region,
    },
    /// The leader of a merging source is ready for the merge to be committed: propose `cmd`
    /// (a CommitMerge) to the leader of the target, wherever it is, and roll the merge back
    /// if the target refuses it for good (see [`crate::merge::after_commit_attempt`]).
    ProposeCommitMerge {
        source: Region,
        cmd: RaftCmdRequest,
    },
}

/// Where the raftstore sends Raft messages. The gRPC [`crate::transport::Transport`] in a node;
/// an in-memory network in a simulation.
pub trait RaftTransport: Send + Sync + 'static {
    /// Queues messages for sending; never blocks. Lost messages are fine: Raft resends.
    fn send_all(&self, messages: Vec<RaftMessage>);
    /// Sends a message carrying a snapshot; `report` hears whether it arrived.
    fn send_snapshot(&self, message: RaftMessage, report: SnapshotReport);
}

/// Settings of the raftstore.
#[derive(Debug, Clone)]
pub struct RaftStoreConfig {
    pub tick_interval: Duration,
    pub peer: PeerConfig,
    /// Sync the log before acknowledging. Turning it off loses acknowledged writes on power
    /// failure; it exists for benchmarks that say so.
    pub sync_log: bool,
    /// Leaders report to the placement driver every this many ticks (and at once on change).
    pub region_heartbeat_ticks: u32,
    /// Poller threads of the batch system.
    pub pollers: usize,
    /// Threads of the apply pool, which writes committed entries to the KV engine.
    pub apply_pool_size: usize,
    /// Regions one apply batch (one KV write) takes at most.
    pub apply_batch_regions_max: usize,
    /// FSMs one poll round takes at most.
    pub batch_fsms_max: usize,
    /// Messages one FSM handles per poll round at most, so a busy region cannot starve others.
    pub messages_per_fsm_max: usize,
    pub split: SplitConfig,
    /// Ticks between log GC decisions.
    pub raft_log_gc_ticks: u32,
    /// A leader compacts only once this many applied entries are in the log.
    pub raft_log_gc_threshold: u64,
    /// Past this many entries the log is compacted to the applied index even if a follower
    /// lags (it gets a snapshot).
    pub raft_log_gc_count_limit: u64,
    /// Idle regions stop ticking (see [`PeerFsm::on_tick`]).
    pub quiet_regions: bool,
    /// Ticks a leader must be idle before it goes quiet.
    pub quiet_leader_ticks: u32,
    /// Ticks between reports of quiet leaders to the placement driver (without waking them).
    pub region_heartbeat_quiet_ticks: u32,
    /// Ticks a follower may go without knowing a leader before it asks the placement driver
    /// whether it is still a member of its region (see [`StoreEvent::CheckStalePeer`]).
    pub stale_peer_check_ticks: u32,
}

impl Default for RaftStoreConfig {
    fn default() -> Self {
        RaftStoreConfig {
            tick_interval: Duration::from_millis(100),
            peer: PeerConfig::default(),
            sync_log: true,
            region_heartbeat_ticks: 10,
            pollers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            apply_pool_size: 2,
            apply_batch_regions_max: 256,
            batch_fsms_max: 256,
            messages_per_fsm_max: 256,
            split: SplitConfig::default(),
            raft_log_gc_ticks: 30,
            raft_log_gc_threshold: 50,
            raft_log_gc_count_limit: 20_000,
            quiet_regions: true,
            quiet_leader_ticks: 20,
            region_heartbeat_quiet_ticks: 600,
            stale_peer_check_ticks: 3000,
        }
    }
}

/// Events the raftstore queues for the node's placement task, at most
/// [`STORE_EVENTS_MAX`]. Every event is periodic or retried (heartbeats, split asks, stale-peer
/// checks, split reports, merge commits), so a full queue drops the newest and counts it
/// instead of growing without bound while the placement driver is slow or away.
#[derive(Clone)]
pub struct StoreEvents {
    tx: mpsc::Sender<StoreEvent>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

/// Store events queued at most.
pub const STORE_EVENTS_MAX: usize = 16_384;

impl StoreEvents {
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<StoreEvent>) {
        let (tx, rx) = mpsc::channel(capacity);
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        (StoreEvents { tx, dropped }, rx)
    }

    /// Queues `event`; false if it was dropped (queue full, or the task is gone).
    pub fn send(&self, event: StoreEvent) -> bool {
        match self.tx.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                let dropped = self
                    .dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        dropped = dropped + 1,
                        "store event queue full: events dropped (they are sent again later)"
                    );
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Events dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// What every poller and the control thread share.
pub struct StoreContext {
    pub store_id: u64,
    pub log: Arc<dyn RaftLogEngine>,
    pub kv: Arc<dyn KvEngine>,
    /// Where snapshot files are generated, received and installed from.
    pub snapshots: crate::snapshot::SnapshotDir,
    pub transport: Arc<dyn RaftTransport>,
    pub events: StoreEvents,
    pub cfg: RaftStoreConfig,
    pub split_checker: SplitChecker,
    pub router: StoreRouter,
    /// What leader leases are measured with.
    pub clock: Arc<dyn crate::clock::Clock>,
}

/// Messages for not-yet-created regions kept at most, and for how many ticks.
const EARLY_MESSAGES_MAX: usize = 4096;
const EARLY_MESSAGE_TICKS: u64 = 20;
/// Ticks before a split that was asked for but did not happen is asked for again.
const SPLIT_ASK_RETRY_TICKS: u64 = 30;
/// Ticks between a merging source leader's attempts to get its merge committed.
const MERGE_RETRY_TICKS: u64 = 10;

/// One peer and what the batch system keeps beside it.
pub struct PeerFsm {
    pub(crate) peer: Peer,
    rx: Receiver<PeerMsg>,
    pub(crate) mailbox: Option<Arc<crate::router::Mailbox>>,
    ticks: u64,
    idle_ticks: u32,
    split_check_running: bool,
    split_asked_at: Option<u64>,
    /// The region as last published to the store meta.
    published: Option<Region>,
    /// The peer was destroyed (merged away): its poller drops it.
    destroyed: bool,
    /// Tick of the last request to commit this source's merge.
    merge_asked_at: Option<u64>,
    /// A destroy that came while apply was in flight (with its `tombstone` flag).
    destroy_pending: Option<bool>,
    /// Ticks in a row this peer knew no leader.
    leader_missing_ticks: u32,
    /// When a message for a newer peer of the region last made this replica ask the placement
    /// driver whether it was removed (store clock, ms).
    newer_peer_checked_ms: Option<u64>,
}

impl PeerFsm {
    fn new(peer: Peer, rx: Receiver<PeerMsg>) -> Box<Self> {
        Box::new(PeerFsm {
            peer,
            rx,
            mailbox: None,
            ticks: 0,
            idle_ticks: 0,
            split_check_running: false,
            split_asked_at: None,
            published: None,
            destroyed: false,
            merge_asked_at: None,
            destroy_pending: None,
            leader_missing_ticks: 0,
            newer_peer_checked_ms: None,
        })
    }

    pub fn region_id(&self) -> u64 {
        self.peer.region_id()
    }

    fn go_quiet(&mut self) {
        if let Some(m) = &self.mailbox {
            m.set_awake(false);
        }
    }

    fn wake(&mut self) {
        self.idle_ticks = 0;
        if let Some(m) = &self.mailbox {
            if !m.is_awake() {
                m.set_awake(true);
            }
        }
    }
}

/// Loads every region stored on this node and registers its peer.
fn load_peers(ctx: &StoreContext) -> Result<(), crate::NodeError> {
    let logs: std::collections::HashSet<u64> = ctx.log.region_ids().into_iter().collect();
    let mut live = Vec::new();
    for state in layout::all_region_states(ctx.kv.as_ref())? {
        let Some(region) = state.region.clone() else {
            continue;
        };
        if state.state == PeerState::Tombstone as i32 {
            // Destroyed; a crash may have come before its log was cleaned.
            if logs.contains(&region.id) {
                ctx.log.clean(region.id)?;
            }
            continue;
        }
        let state = if state.state == PeerState::Applying as i32 {
            // A crash came while a snapshot was being installed: finish it first.
            tracing::info!(region = region.id, "finishing a snapshot install cut short");
            let pairs =
                crate::snapshot::install(ctx.kv.as_ref(), &ctx.snapshots, &state).map_err(|e| {
                    crate::NodeError::Unrecoverable(format!(
                        "region {} was installing a snapshot when the node stopped, and the \
                         install cannot be finished: {e}. The snapshot file must be in {}",
                        region.id,
                        ctx.snapshots.path().display()
                    ))
                })?;
            tracing::info!(
                region = region.id,
                keys = pairs,
                "snapshot install finished"
            );
            layout::read_region_state(ctx.kv.as_ref(), region.id)?
                .expect("the install wrote the region state")
        } else {
            state
        };
        let storage = PeerStorage::load(region.clone(), ctx.kv.as_ref(), ctx.log.clone())?;
        let mut peer = Peer::new(ctx.store_id, storage, &ctx.cfg.peer)?;
        peer.set_local_state(&state);
        peer.withhold_votes(ctx.cfg.peer.election_ticks as u32);
        tracing::info!(
            region = region.id,
            peer = peer.peer_id(),
            applied = peer.applied_index(),
            "loaded region"
        );
        if peer.is_initialized() {
            live.push(region);
        }
        register_peer(ctx, peer);
    }
    // Every install cut short is finished; nothing else uses an `applying` file.
    ctx.snapshots.remove_applying_files();
    // Data of regions destroyed while a crash came (see `destroy_peer`).
    let leftover = layout::delete_data_outside(ctx.kv.as_ref(), &live)?
        + layout::delete_sessions_outside(ctx.kv.as_ref(), &live)?;
    if leftover > 0 {
        tracing::info!(keys = leftover, "deleted data left by destroyed regions");
    }
    Ok(())
}

fn register_peer(ctx: &StoreContext, peer: Peer) {
    let (tx, rx) = ctx.router.channel();
    let region = peer.region().clone();
    let initialized = peer.is_initialized();
    let mut fsm = PeerFsm::new(peer, rx);
    if initialized {
        ctx.router.meta().regions.insert(region.id, region.clone());
        fsm.published = Some(region);
    }
    ctx.router.register(tx, fsm);
}

/// The running threads of a raftstore.
pub struct RaftStore {
    stopping: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    router: StoreRouter,
    ready: Receiver<Box<PeerFsm>>,
    apply: Receiver<apply_pool::ApplyBatch>,
    snapshot: Receiver<SnapshotTask>,
}

impl RaftStore {
    /// Loads the regions and starts the pollers and the control thread.
    pub fn start(ctx: StoreContext, receivers: RouterReceivers) -> Result<Self, crate::NodeError> {
        let ctx = Arc::new(ctx);
        load_peers(&ctx)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for i in 0..ctx.cfg.pollers.max(1) {
            let (ctx, ready, stopping) = (ctx.clone(), receivers.ready.clone(), stopping.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("raft-poller-{i}"))
                    .spawn(move || run_poller(&ctx, &ready, &stopping))?,
            );
        }
        for i in 0..ctx.cfg.apply_pool_size.max(1) {
            let (ctx, queue, stopping) = (ctx.clone(), receivers.apply.clone(), stopping.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("raft-apply-{i}"))
                    .spawn(move || {
                        apply_pool::run_apply_thread(
                            ctx.kv.as_ref(),
                            &ctx.router,
                            &queue,
                            ctx.cfg.apply_batch_regions_max,
                            &stopping,
                        )
                    })?,
            );
        }
        {
            let (ctx, queue, stopping) =
                (ctx.clone(), receivers.snapshot.clone(), stopping.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("raft-snapshot".into())
                    .spawn(move || {
                        while !stopping.load(Ordering::SeqCst) {
                            if let Ok(task) = queue.recv_timeout(Duration::from_millis(100)) {
                                run_snapshot_task(&ctx, task);
                            }
                        }
                    })?,
            );
        }
        let control = StoreFsm::new(ctx.clone());
        let (rx, stop) = (receivers.control.clone(), stopping.clone());
        threads.push(
            std::thread::Builder::new()
                .name("raft-control".into())
                .spawn(move || control.run(rx, stop))?,
        );
        Ok(RaftStore {
            stopping,
            threads,
            router: ctx.router.clone(),
            ready: receivers.ready,
            apply: receivers.apply,
            snapshot: receivers.snapshot,
        })
    }

    /// Stops every thread and waits for them.
    pub fn stop(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.router.send_control(StoreMsg::Stop);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.router.clear();
        while self.ready.try_recv().is_ok() {}
        while self.apply.try_recv().is_ok() {}
        while self.snapshot.try_recv().is_ok() {}
    }
}

impl Drop for RaftStore {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// A raftstore driven step by step on the caller's thread, for deterministic simulation: no
/// threads, no clock. The caller delivers messages through the router, calls [`tick`] for
/// time and [`step`] to run everything that has mail.
///
/// [`tick`]: SteppedStore::tick
/// [`step`]: SteppedStore::step
pub struct SteppedStore {
    ctx: Arc<StoreContext>,
    control: StoreFsm,
    receivers: RouterReceivers,
}

impl SteppedStore {
    /// Loads the regions stored in `ctx`'s engines.
    pub fn open(ctx: StoreContext, receivers: RouterReceivers) -> Result<Self, crate::NodeError> {
        let ctx = Arc::new(ctx);
        load_peers(&ctx)?;
        Ok(SteppedStore {
            control: StoreFsm::new(ctx.clone()),
            ctx,
            receivers,
        })
    }

    pub fn router(&self) -> &StoreRouter {
        &self.ctx.router
    }

    /// One tick of time for the store and its awake peers.
    pub fn tick(&mut self) {
        self.control.tick();
    }

    /// Handles the control mailbox, then polls every peer with mail, in region id order, in
    /// one batch, then applies what that round handed to the apply pool, on this thread (the
    /// delegates come home as mail for the next step). Returns how many peers were polled.
    pub fn step(&mut self) -> usize {
        while let Ok(msg) = self.receivers.control.try_recv() {
            self.control.handle(msg);
        }
        let mut batch: Vec<Box<PeerFsm>> = self.receivers.ready.try_iter().collect();
        batch.sort_by_key(|f| f.region_id());
        let polled = batch.len();
        if polled > 0 {
            poll(&self.ctx, &mut batch);
            for fsm in batch {
                self.ctx.router.release(fsm);
            }
        }
        while let Ok(delegates) = self.receivers.apply.try_recv() {
            apply_pool::apply_batch(self.ctx.kv.as_ref(), &self.ctx.router, delegates);
        }
        while let Ok(task) = self.receivers.snapshot.try_recv() {
            run_snapshot_task(&self.ctx, task);
        }
        polled
    }

    /// Drops every peer (a crash); the engines stay with their owner.
    pub fn crash(self) {
        self.ctx.router.clear();
        while self.receivers.ready.try_recv().is_ok() {}
        while self.receivers.apply.try_recv().is_ok() {}
        while self.receivers.snapshot.try_recv().is_ok() {}
    }
}

fn run_poller(ctx: &StoreContext, ready: &Receiver<Box<PeerFsm>>, stopping: &AtomicBool) {
    while !stopping.load(Ordering::SeqCst) {
        let first = match ready.recv_timeout(Duration::from_millis(100)) {
            Ok(f) => f,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut batch = vec![first];
        while batch.len() < ctx.cfg.batch_fsms_max {
            match ready.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        poll(ctx, &mut batch);
        for fsm in batch {
            ctx.router.release(fsm);
        }
    }
}

/// One poll round over `batch`: handle mail, then group commit, send, apply, answer.
/// A storage failure panics: a node that cannot persist must stop rather than answer.
pub fn poll(ctx: &StoreContext, batch: &mut [Box<PeerFsm>]) {
    let now_ms = ctx.clock.now_ms();
    for fsm in batch.iter_mut() {
        if !fsm.destroyed && !ctx.router.is_registered(fsm) {
            // Superseded (a split created the region's peer in its place) while it waited to
            // be polled: it must not act on the region any more.
            fsm.destroyed = true;
        }
        fsm.peer.set_now(now_ms);
        for _ in 0..ctx.cfg.messages_per_fsm_max {
            if fsm.destroyed {
                break;
            }
            match fsm.rx.try_recv() {
                Ok(msg) => {
                    if let Some(mailbox) = &fsm.mailbox {
                        mailbox.taken(&msg);
                    }
                    handle_peer_msg(ctx, fsm, msg)
                }
                Err(_) => break,
            }
        }
    }
    round(ctx, batch);
    for fsm in batch.iter_mut().filter(|f| !f.destroyed) {
        publish_region(ctx, fsm);
        generate_snapshot(ctx, fsm);
    }
}

fn handle_peer_msg(ctx: &StoreContext, fsm: &mut PeerFsm, msg: PeerMsg) {
    match msg {
        PeerMsg::Raft(m) if m.quiesce_term != 0 => {
            let from = m.from_peer.map(|p| p.id).unwrap_or(0);
            if fsm
                .peer
                .accepts_quiesce(from, m.quiesce_term, m.quiesce_index)
            {
                fsm.go_quiet();
            }
        }
        PeerMsg::Raft(m) if m.safe_ts != 0 => {
            let version = m.region_epoch.unwrap_or_default().version;
            fsm.peer.take_safe_ts(version, m.safe_ts_index, m.safe_ts);
        }
        PeerMsg::Raft(m) => on_raft_message(ctx, fsm, *m),
        PeerMsg::StaleRead(read) => {
            let keys: Vec<&[u8]> = read.keys.iter().map(Vec::as_slice).collect();
            fsm.peer
                .stale_read(read.epoch, &keys, read.read_ts, read.callback);
        }
        PeerMsg::LeaseBarrier(callback) => {
            let _ = callback.send(fsm.peer.lease_barrier());
        }
        PeerMsg::PublishSafeTs { version, index, ts } => {
            ctx.transport
                .send_all(fsm.peer.publish_safe_ts(version, index, ts));
        }
        PeerMsg::Command { cmd, callback } => {
            fsm.wake();
            fsm.peer.propose(*cmd, callback);
        }
        PeerMsg::Read {
            epoch,
            keys,
            callback,
            replica,
        } => {
            fsm.wake();
            let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            fsm.peer.read(epoch, &keys, callback, replica);
        }
        PeerMsg::Tick => {
            fsm.peer.retry_merge_apply();
            on_tick(ctx, fsm)
        }
        PeerMsg::SplitCheckResult { version, outcome } => {
            on_split_check_result(ctx, fsm, version, outcome)
        }
        PeerMsg::SnapshotStatus {
            to_peer_id,
            delivered,
        } => fsm.peer.report_snapshot(to_peer_id, delivered),
        PeerMsg::Status(callback) => {
            let safe_ts = fsm.peer.safe_ts();
            let p = &fsm.peer;
            let info = p.is_initialized().then(|| RegionInfoResponse {
                found: true,
                region: Some(p.region().clone()),
                term: p.term(),
                commit_index: p.commit_index(),
                applied_index: p.applied_index(),
                last_index: p.last_index(),
                leader_id: p.leader_id(),
                is_leader: p.is_leader(),
                truncated_index: p.truncated_index(),
                quiet: fsm.mailbox.as_ref().is_some_and(|m| !m.is_awake()),
                safe_ts,
            });
            let _ = callback.send(info);
        }
        PeerMsg::Campaign => {
            fsm.wake();
            fsm.peer.campaign();
        }
        PeerMsg::TransferLeader { to_peer_id } => {
            fsm.wake();
            fsm.peer.transfer_leader(to_peer_id);
        }
        PeerMsg::Wake => {
            fsm.wake();
            fsm.peer.retry_merge_apply();
        }
        PeerMsg::HalveSplit => {
            // A check already running measures at the same version; the order comes again
            // with the next heartbeat until the split shows.
            let asked_lately = fsm
                .split_asked_at
                .is_some_and(|t| fsm.ticks < t + SPLIT_ASK_RETRY_TICKS);
            if fsm.peer.is_leader()
                && !fsm.split_check_running
                && !asked_lately
                && ctx.split_checker.schedule(SplitCheckTask {
                    region: fsm.peer.region().clone(),
                    halve: true,
                })
            {
                fsm.split_check_running = true;
            }
        }
        PeerMsg::CatchUpMerge {
            commit,
            commit_term,
        } => {
            fsm.wake();
            fsm.peer.catch_up_merge(commit, commit_term);
        }
        PeerMsg::CheckPreparedMerge {
            commit,
            commit_term,
            target,
            reply,
        } => {
            let _ = reply.send(fsm.peer.prepared_merge_into(commit, commit_term, target));
        }
        PeerMsg::Destroy { tombstone } if fsm.peer.apply_in_flight() => {
            // Carried out when the apply delegate is home: the pool must not write the region
            // while it is being destroyed.
            fsm.destroy_pending = Some(tombstone);
        }
        PeerMsg::Destroy { tombstone } => destroy_peer(ctx, fsm, tombstone),
        PeerMsg::Applied(delegate) => on_applied(ctx, fsm, delegate),
        PeerMsg::SnapshotDone(done) => on_snapshot_done(ctx, fsm, *done),
        PeerMsg::ReportQuiet => {
            // Without waking: the placement driver hears of the region (and may order a
            // merge), and a region that went quiet before it was measured gets measured.
            report_region(ctx, &fsm.peer);
            maybe_schedule_split_check(ctx, fsm);
        }
    }
}

/// Destroys the local peer of a region that was merged away. With `tombstone`, writes the
/// tombstone itself and drops the region's data (a snapshot of the region that absorbed it
/// refills what it covers); otherwise the target's apply wrote the tombstone and the data now
/// belongs to the target.
fn destroy_peer(ctx: &StoreContext, fsm: &mut PeerFsm, tombstone: bool) {
    let region = fsm.peer.region().clone();
    if !fsm.peer.is_initialized() {
        return;
    }
    if tombstone {
        // The tombstone first: from then on the peer is never loaded again, and its data,
        // deleted page by page, is nobody's. A crash in between leaves pages of it outside
        // every live region, which the next start deletes (see `load_peers`).
        let mut batch = KvWriteBatch::default();
        layout::write_tombstone(&mut batch, &region, None);
        ctx.kv
            .write(batch)
            .unwrap_or_else(|e| panic!("cannot write tombstone of region {}: {e}", region.id));
        ctx.router.bump_data_epoch();
        let (sessions_lo, sessions_hi) = layout::session_range(region.id);
        let deleted =
            layout::delete_paged(ctx.kv.as_ref(), &sessions_lo, &sessions_hi, &mut |_| true)
                .and_then(|sessions| {
                    layout::delete_data(ctx.kv.as_ref(), &region.start_key, &region.end_key)
                        .map(|data| data + sessions)
                })
                .unwrap_or_else(|e| panic!("cannot delete the data of region {}: {e}", region.id));
        tracing::debug!(region = region.id, keys = deleted, "region data deleted");
    }
    ctx.snapshots.remove_region_files(region.id, None);
    tracing::info!(region = region.id, tombstone, "peer destroyed");
    fsm.peer
        .fail_all(crate::region_error::region_not_found(region.id));
    {
        let mut meta = ctx.router.meta();
        if !meta.merged_away.remove(&region.id) {
            meta.regions.remove(&region.id);
        }
        meta.leaders.remove(&region.id);
    }
    ctx.router.flow().forget_region(region.id);
    fsm.destroyed = true;
    ctx.router.close(region.id);
    if !ctx.router.send_control_wait(StoreMsg::CleanLog {
        region_id: region.id,
    }) {
        tracing::debug!(
            region = region.id,
            "control thread gone; log cleaned at restart"
        );
    }
}

/// Drops an uninitialized peer: it holds no data and wrote no region state (the hard state it
/// may have written is not read by the next peer of the region, which starts afresh), so its
/// mailbox just closes and the next message for the region creates the peer it names. Any
/// tombstone the store holds stays as it was.
fn drop_uninitialized(ctx: &StoreContext, fsm: &mut PeerFsm) {
    assert!(
        !fsm.peer.is_initialized(),
        "region {}: only an uninitialized peer is dropped without a tombstone",
        fsm.region_id()
    );
    let region_id = fsm.region_id();
    tracing::info!(
        region = region_id,
        peer = fsm.peer.peer_id(),
        "uninitialized peer dropped"
    );
    fsm.peer
        .fail_all(crate::region_error::region_not_found(region_id));
    fsm.destroyed = true;
    ctx.router.close(region_id);
}

/// How often a replica asks the placement driver whether messages naming a newer peer mean
/// it was removed (store clock, ms).
const NEWER_PEER_CHECK_INTERVAL_MS: u64 = 1_000;

fn on_raft_message(ctx: &StoreContext, fsm: &mut PeerFsm, msg: RaftMessage) {
    let Some(to) = msg.to_peer.filter(|p| p.store_id == ctx.store_id) else {
        return;
    };
    if to.id != fsm.peer.peer_id() {
        if to.id > fsm.peer.peer_id() {
            // Peer ids only grow and a region has one peer per store: a newer peer here
            // means the local one was removed (its removal never reached it, or it never
            // got its first snapshot), if the message is true. Once that is confirmed it
            // goes, leaving a tombstone; the leader's next message creates the new peer.
            if !fsm.peer.is_initialized() {
                drop_uninitialized(ctx, fsm);
                return;
            }
            // An initialized replica holds data: destroying it on one message's word would let
            // a single forged message delete a replica (three, a region). The placement driver
            // decides, as for a replica cut off too long: it is destroyed only if the region's
            // membership moved on without it.
            let now = ctx.clock.now_ms();
            let due = fsm
                .newer_peer_checked_ms
                .is_none_or(|at| now.saturating_sub(at) >= NEWER_PEER_CHECK_INTERVAL_MS);
            if due && fsm.peer.merge_state().is_none() {
                // Logged once per check, not per message: forged messages must not flood it.
                tracing::info!(
                    region = msg.region_id,
                    local = fsm.peer.peer_id(),
                    newer = to.id,
                    "a message names a newer peer of the region on this store; asking the placement driver whether the local one was removed"
                );
                fsm.newer_peer_checked_ms = Some(now);
                let _ = ctx.events.send(StoreEvent::CheckStalePeer {
                    region: fsm.peer.region().clone(),
                    peer: fsm.peer.meta(),
                });
            }
            return;
        }
        tracing::debug!(
            region = msg.region_id,
            to = to.id,
            local = fsm.peer.peer_id(),
            "raft message for an older peer of the region dropped"
        );
        return;
    }
    let mut inner = raft::eraftpb::Message::default();
    if let Err(e) = inner.merge_from_bytes(&msg.message) {
        tracing::warn!(region = msg.region_id, error = %e, "malformed raft message dropped");
        return;
    }
    use raft::eraftpb::MessageType;
    let kind = inner.get_msg_type();
    if kind == MessageType::MsgSnapshot
        && !fsm.peer.is_initialized()
        && ctx.router.meta().regions.contains_key(&msg.region_id)
    {
        // A split applied here is creating this region's peer from the parent's data: this
        // uninitialized peer is about to be superseded, and a snapshot installed now would
        // race with it. The leader sends the snapshot again, to the peer the split created.
        return;
    }
    if kind == MessageType::MsgSnapshot && !snapshot_fits(ctx, msg.region_id, inner.get_snapshot())
    {
        return;
    }
    // Heartbeats and their answers only say that things are as they were: a quiet region
    // stays quiet (a late answer to the leader's last heartbeat must not wake it). Anything
    // else is activity.
    if !matches!(
        kind,
        MessageType::MsgHeartbeat | MessageType::MsgHeartbeatResponse
    ) {
        fsm.wake();
    }
    fsm.peer.step(msg.from_peer, inner);
}

/// Whether a message for peer `to` may create a replica of a region whose tombstone this store
/// holds: the replica here was removed by a membership change (not merged away), and the
/// region has since added `to` — a new peer, at a newer membership (`conf_ver`) than the
/// tombstone's. A message to the removed peer itself (late, or from an old leader) carries the
/// old peer id or an epoch no newer, and is refused, so a removed replica never comes back.
fn readded_over_tombstone(state: &RegionLocalState, msg: &RaftMessage, to: PeerMeta) -> bool {
    state.state == PeerState::Tombstone as i32
        && state.merge_state.is_none()
        && state.region.as_ref().is_some_and(|old| {
            let old_conf = old.region_epoch.unwrap_or_default().conf_ver;
            let new_conf = msg.region_epoch.unwrap_or_default().conf_ver;
            new_conf > old_conf && !old.peers.iter().any(|p| p.id == to.id)
        })
}

/// A snapshot may be installed only if its range overlaps no other local region (one that is
/// stale must catch up first; the leader retries the snapshot). A local region the snapshot's
/// region absorbed by a merge is destroyed, so a later try fits.
fn snapshot_fits(ctx: &StoreContext, region_id: u64, snap: &raft::eraftpb::Snapshot) -> bool {
    let Some(data) = crate::snapshot::header(snap) else {
        tracing::warn!(region = region_id, "undecodable snapshot dropped");
        return false;
    };
    if !crate::snapshot::received(&ctx.snapshots, region_id, snap) {
        // The message came without its file (or the file was refused): the leader sends
        // the snapshot again.
        tracing::warn!(
            region = region_id,
            "snapshot without its received file dropped"
        );
        return false;
    }
    let region = data.region.as_ref().expect("decode checks the region");
    if region.id != region_id {
        tracing::warn!(region = region_id, "snapshot of another region dropped");
        return false;
    }
    let overlapping = ctx
        .router
        .meta()
        .overlapping(region_id, &region.start_key, &region.end_key);
    let version = region.region_epoch.unwrap_or_default().version;
    for local in &overlapping {
        if merged_into(ctx, local, region_id, version, &data.merged_sources) {
            // A source the snapshot's region absorbed, whose replica here never caught up
            // with the merge: it goes, and the snapshot fits once it is gone.
            tracing::info!(
                region = local.id,
                target = region_id,
                "local replica was merged away; destroying it for the target's snapshot"
            );
            let _ = ctx
                .router
                .send(local.id, PeerMsg::Destroy { tombstone: true });
        } else {
            tracing::info!(
                region = region_id,
                overlapping = local.id,
                "snapshot overlaps a local region that is behind; dropped for now"
            );
        }
    }
    // A source the snapshot's region absorbed whose range has since moved to other regions
    // (the target split after the merge) overlaps nothing here, yet would wait for ever for
    // a CommitMerge the target's replica here will never apply (it skips past it with this
    // snapshot), blocking the regions that now hold its range. It goes too.
    for source in &data.merged_sources {
        if overlapping.iter().any(|l| l.id == *source) {
            continue;
        }
        let Some(local) = ctx.router.meta().regions.get(source).cloned() else {
            continue;
        };
        if merged_into(ctx, &local, region_id, version, &data.merged_sources) {
            tracing::info!(
                region = *source,
                target = region_id,
                "local replica was merged away and its range moved on; destroying it"
            );
            let _ = ctx
                .router
                .send(*source, PeerMsg::Destroy { tombstone: true });
        }
    }
    overlapping.is_empty()
}

/// Whether local region `local` was merged into region `target_id` (at `version`), as a
/// snapshot of the target shows: the snapshot is newer than the local replica and lists it as
/// merged, or the local replica itself was preparing that very merge.
fn merged_into(
    ctx: &StoreContext,
    local: &Region,
    target_id: u64,
    version: u64,
    merged_sources: &[u64],
) -> bool {
    if local.region_epoch.unwrap_or_default().version >= version {
        return false;
    }
    if merged_sources.contains(&local.id) {
        return true;
    }
    layout::read_region_state(ctx.kv.as_ref(), local.id)
        .ok()
        .flatten()
        .and_then(|s| s.merge_state)
        .and_then(|m| m.target)
        .is_some_and(|t| t.id == target_id)
}

/// Idle leaders wait this many times `quiet_leader_ticks` at most for a safe-timestamp claim
/// about their final state before going quiet without one (the TSO may be unreachable).
const QUIET_CLAIM_WAIT: u32 = 5;

/// Whether an idle leader goes quiet now: idle long enough, and its resolver has made a claim
/// about its final state (quiet regions make no claims, so a region that went quiet before it
/// would keep an older safe timestamp, one below its last writes, until woken) — or it waited
/// `QUIET_CLAIM_WAIT` times as long for one.
fn ready_to_go_quiet(cfg: &RaftStoreConfig, fsm: &mut PeerFsm) -> bool {
    cfg.quiet_regions
        && fsm.idle_ticks >= cfg.quiet_leader_ticks
        && (fsm.peer.safe_ts_is_current()
            || fsm.idle_ticks >= cfg.quiet_leader_ticks.saturating_mul(QUIET_CLAIM_WAIT))
}

/// A tick: Raft time, and the periodic duties of a leader (heartbeat to the placement driver,
/// split checks, log GC). A leader whose region was idle for `quiet_leader_ticks` (every
/// follower has the whole log, nothing in flight) goes quiet and tells its followers, which go
/// quiet too if they have exactly its log. A quiet peer does not tick; any mail, or news that
/// a peer's store is unreachable, wakes it. A follower never goes quiet on its own, so a
/// leader that fails while the region is active is noticed by the usual election timeout.
fn on_tick(ctx: &StoreContext, fsm: &mut PeerFsm) {
    let cfg = &ctx.cfg;
    fsm.ticks += 1;
    let idle = fsm.peer.is_leader() && fsm.peer.is_idle();
    fsm.idle_ticks = if idle { fsm.idle_ticks + 1 } else { 0 };
    let leader = fsm.peer.is_leader();
    if leader && ready_to_go_quiet(cfg, fsm) {
        // Quiet from this tick on: no heartbeat goes out whose answers would wake it again.
        fsm.go_quiet();
        ctx.transport.send_all(fsm.peer.quiesce_messages());
        return;
    }
    fsm.peer.tick();
    check_leader_missing(ctx, fsm);
    if leader
        && fsm.peer.merge_state().is_some()
        && fsm
            .merge_asked_at
            .is_none_or(|t| fsm.ticks >= t + MERGE_RETRY_TICKS)
    {
        if merge_target_moved_on(ctx, &fsm.peer) {
            roll_back_merge(fsm);
        } else {
            ask_commit_merge(ctx, fsm);
        }
    }
    if leader
        && fsm
            .ticks
            .is_multiple_of(u64::from(cfg.region_heartbeat_ticks.max(1)))
    {
        let _ = ctx
            .events
            .send(StoreEvent::RegionHeartbeat(heartbeat_of(ctx, &fsm.peer)));
    }
    if fsm
        .ticks
        .is_multiple_of(u64::from(cfg.split.split_check_ticks.max(1)))
    {
        maybe_schedule_split_check(ctx, fsm);
    }
    if fsm
        .ticks
        .is_multiple_of(u64::from(cfg.raft_log_gc_ticks.max(1)))
    {
        maybe_compact_log(ctx, fsm);
    }
    if leader && ready_to_go_quiet(cfg, fsm) {
        fsm.go_quiet();
        ctx.transport.send_all(fsm.peer.quiesce_messages());
    }
}

/// Counts ticks without a known leader; past `stale_peer_check_ticks` (and every as many
/// ticks after) an initialized replica not in a merge asks whether it is still a member.
fn check_leader_missing(ctx: &StoreContext, fsm: &mut PeerFsm) {
    if fsm.peer.leader_id() != raft::INVALID_ID {
        fsm.leader_missing_ticks = 0;
        return;
    }
    fsm.leader_missing_ticks += 1;
    if fsm.leader_missing_ticks < ctx.cfg.stale_peer_check_ticks.max(1) {
        return;
    }
    fsm.leader_missing_ticks = 0;
    if fsm.peer.is_initialized() && fsm.peer.merge_state().is_none() {
        tracing::info!(
            region = fsm.region_id(),
            "no leader for a long time; asking the placement driver whether this replica is still a member"
        );
        let _ = ctx.events.send(StoreEvent::CheckStalePeer {
            region: fsm.peer.region().clone(),
            peer: fsm.peer.meta(),
        });
    }
}

/// Whether the local replica of this merging source's target shows the merge can never
/// commit (see [`crate::merge::target_moved_on`]).
fn merge_target_moved_on(ctx: &StoreContext, peer: &Peer) -> bool {
    let Some(state) = peer.merge_state() else {
        return false;
    };
    crate::merge::target_moved_on(ctx.kv.as_ref(), peer.region_id(), state)
        .unwrap_or_else(|e| panic!("cannot read region states; stopping the node: {e}"))
}

/// The leader of a merging source proposes the rollback of its merge (again every
/// `MERGE_RETRY_TICKS` until it applies).
fn roll_back_merge(fsm: &mut PeerFsm) {
    let Some(state) = fsm.peer.merge_state() else {
        return;
    };
    let target = state.target.as_ref().map(|t| t.id).unwrap_or_default();
    tracing::info!(
        region = fsm.region_id(),
        target,
        "the merge target moved on before committing the merge; rolling back"
    );
    let cmd = crate::merge::rollback_command(fsm.peer.region(), state.commit);
    fsm.merge_asked_at = Some(fsm.ticks);
    let (tx, _rx) = oneshot::channel();
    fsm.peer.propose(cmd, tx);
}

/// Hands the leader of a merging source's CommitMerge to the node, once the merge can commit.
fn ask_commit_merge(ctx: &StoreContext, fsm: &mut PeerFsm) {
    if let Some(cmd) = fsm.peer.commit_merge_command() {
        fsm.merge_asked_at = Some(fsm.ticks);
        let _ = ctx.events.send(StoreEvent::ProposeCommitMerge {
            source: fsm.peer.region().clone(),
            cmd,
        });
    }
}

fn on_split_check_result(
    ctx: &StoreContext,
    fsm: &mut PeerFsm,
    version: u64,
    outcome: SplitCheckOutcome,
) {
    fsm.split_check_running = false;
    let peer = &mut fsm.peer;
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
        region = peer.region_id(),
        size_bytes = outcome.size_bytes,
        keys = outcome.keys,
        "split key found; asking for a split"
    );
    fsm.split_asked_at = Some(fsm.ticks);
    let _ = ctx.events.send(StoreEvent::AskSplit {
        region: peer.region().clone(),
        split_key,
    });
}

/// Schedules a split check of a leader that was written to enough, or wants one.
fn maybe_schedule_split_check(ctx: &StoreContext, fsm: &mut PeerFsm) {
    let cfg = ctx.cfg.split;
    if !fsm.peer.is_leader() || fsm.split_check_running {
        return;
    }
    if fsm
        .split_asked_at
        .is_some_and(|t| fsm.ticks < t + SPLIT_ASK_RETRY_TICKS)
    {
        return;
    }
    let size = fsm.peer.size;
    let over = size
        .approximate_size_bytes
        .is_some_and(|s| s > cfg.region_split_size_bytes)
        || size
            .approximate_keys
            .is_some_and(|k| k > cfg.region_split_keys);
    if !(size.check_wanted || over || size.written_since_check_bytes >= cfg.split_check_diff_bytes)
    {
        return;
    }
    if ctx.split_checker.schedule(SplitCheckTask {
        region: fsm.peer.region().clone(),
        halve: false,
    }) {
        fsm.peer.size.check_wanted = false;
        fsm.peer.size.written_since_check_bytes = 0;
        fsm.split_check_running = true;
    }
}

/// A leader proposes log compaction where due.
fn maybe_compact_log(ctx: &StoreContext, fsm: &mut PeerFsm) {
    let (threshold, limit) = (
        ctx.cfg.raft_log_gc_threshold,
        ctx.cfg.raft_log_gc_count_limit,
    );
    let Some((index, term)) = fsm.peer.compact_index_due(threshold, limit) else {
        return;
    };
    let cmd = RaftCmdRequest {
        region_id: fsm.peer.region_id(),
        region_epoch: fsm.peer.region().region_epoch,
        requests: Vec::new(),
        admin: Some(AdminRequest {
            cmd: Some(admin_request::Cmd::CompactLog(CompactLogRequest {
                compact_index: index,
                compact_term: term,
            })),
        }),
        ..Default::default()
    };
    let (tx, _rx) = oneshot::channel();
    fsm.peer.propose(cmd, tx);
}

/// Streams snapshot messages; each peer hears back whether its snapshot was delivered.
fn send_snapshots(ctx: &StoreContext, snapshots: Vec<RaftMessage>) {
    for msg in snapshots {
        let (region_id, to) = (msg.region_id, msg.to_peer.map(|p| p.id).unwrap_or(0));
        let router = ctx.router.clone();
        ctx.transport.send_snapshot(
            msg,
            Box::new(move |delivered| {
                let _ = router.send(
                    region_id,
                    PeerMsg::SnapshotStatus {
                        to_peer_id: to,
                        delivered,
                    },
                );
            }),
        );
    }
}

/// Starts generating the snapshot raft asked for during the round: the snapshot worker takes
/// the apply delegate (so the region's data stays at its applied state while it is read) and
/// writes the region to a file. Waits while the delegate is away.
fn generate_snapshot(ctx: &StoreContext, fsm: &mut PeerFsm) {
    if fsm.peer.apply_in_flight() {
        return;
    }
    let storage = fsm.peer.storage();
    if !storage.take_snapshot_wanted() {
        return;
    }
    let region = storage.region().clone();
    let index = storage.applied_index();
    let term = match raft::Storage::term(storage, index) {
        Ok(term) => term,
        Err(e) => {
            // Raft asks again; by then the applied entry's term may be readable.
            tracing::error!(region = region.id, index, error = %e, "no term for the applied index; no snapshot");
            return;
        }
    };
    // The merge part of the region's state is the applied state too (written by the same
    // apply batches as the data).
    let local = match layout::read_region_state(ctx.kv.as_ref(), region.id) {
        Ok(local) => local.unwrap_or_default(),
        Err(e) => {
            tracing::error!(region = region.id, error = %e, "cannot read the region state; no snapshot");
            return;
        }
    };
    let merge_state = if local.state == PeerState::Merging as i32 {
        local.merge_state
    } else {
        None
    };
    let delegate = fsm
        .peer
        .lend_applier()
        .expect("checked: the apply delegate is home");
    ctx.router.schedule_snapshot(SnapshotTask::Generate {
        task: crate::snapshot::GenerateTask {
            region,
            index,
            term,
            merge_state,
            merged_sources: local.merged_sources,
        },
        delegate,
    });
}

/// Carries out one snapshot task on the snapshot worker (or the stepped store's thread) and
/// sends the apply delegate home with the outcome.
pub(crate) fn run_snapshot_task(ctx: &StoreContext, task: SnapshotTask) {
    let region_id = task.region_id();
    let done = match task {
        SnapshotTask::Generate { task, delegate } => {
            let outcome = crate::snapshot::generate(ctx.kv.as_ref(), &ctx.snapshots, &task)
                .map_err(|e| e.to_string());
            match &outcome {
                Ok(snap) => {
                    let path = ctx.snapshots.generated(region_id, task.term, task.index);
                    ctx.snapshots.remove_region_files(region_id, Some(&path));
                    let header = crate::snapshot::header(snap).unwrap_or_default();
                    tracing::info!(
                        region = region_id,
                        index = task.index,
                        keys = header.kv_count,
                        bytes = header.file_bytes,
                        "snapshot generated"
                    );
                }
                Err(e) => {
                    tracing::error!(region = region_id, error = %e, "snapshot generation failed")
                }
            }
            SnapshotDone {
                delegate,
                outcome: SnapshotOutcome::Generated(outcome),
            }
        }
        SnapshotTask::Install { state, delegate } => {
            let pairs = crate::snapshot::install(ctx.kv.as_ref(), &ctx.snapshots, &state)
                .unwrap_or_else(|e| {
                    panic!("snapshot install of region {region_id} failed; stopping the node: {e}")
                });
            tracing::debug!(region = region_id, keys = pairs, "snapshot data written");
            SnapshotDone {
                delegate,
                outcome: SnapshotOutcome::Installed,
            }
        }
    };
    ctx.router.send_snapshot_done(Box::new(done));
}

/// The snapshot worker is done with the region's apply delegate.
fn on_snapshot_done(ctx: &StoreContext, fsm: &mut PeerFsm, done: SnapshotDone) {
    let SnapshotDone { delegate, outcome } = done;
    match outcome {
        SnapshotOutcome::Generated(generated) => {
            fsm.peer.on_snapshot_done(delegate, false);
            if let Ok(snap) = generated {
                fsm.peer.storage().set_generated_snapshot(snap);
                // Raft retries the send at its next heartbeat; make sure one comes.
                fsm.wake();
            }
        }
        SnapshotOutcome::Installed => {
            fsm.peer.on_snapshot_done(delegate, true);
            fsm.wake();
            report_region(ctx, &fsm.peer);
        }
    }
    if let Some(tombstone) = fsm.destroy_pending.take() {
        destroy_peer(ctx, fsm, tombstone);
    }
}

/// Keeps the store meta's copy of the region current (created, split, snapshot installed).
fn publish_region(ctx: &StoreContext, fsm: &mut PeerFsm) {
    if !fsm.peer.is_initialized() || fsm.published.as_ref() == Some(fsm.peer.region()) {
        return;
    }
    let region = fsm.peer.region().clone();
    {
        let mut meta = ctx.router.meta();
        if meta.merged_away.contains(&region.id) {
            return;
        }
        meta.regions.insert(region.id, region.clone());
    }
    fsm.published = Some(region);
}

fn round(ctx: &StoreContext, batch: &mut [Box<PeerFsm>]) {
    let mut log_batch = RaftLogBatch::default();
    let mut early = Outbox::default();
    let mut ready = Vec::new();
    for (i, fsm) in batch.iter_mut().enumerate() {
        if fsm.destroyed {
            continue;
        }
        fsm.peer.flush_reads();
        if fsm.peer.has_pending_snapshot() && fsm.peer.apply_in_flight() {
            // Installed once the apply delegate is home (its return polls the peer again).
            continue;
        }
        if fsm.peer.has_ready() {
            fsm.peer
                .collect_ready(ctx.kv.as_ref(), &ctx.snapshots, &mut log_batch, &mut early)
                .unwrap_or_else(|e| panic!("snapshot install failed; stopping the node: {e}"));
            ready.push(i);
        }
    }
    ctx.transport.send_all(early.messages);
    send_snapshots(ctx, early.snapshots);
    if !log_batch.is_empty() {
        ctx.log
            .write(log_batch, ctx.cfg.sync_log)
            .unwrap_or_else(|e| panic!("raft log write failed; stopping the node: {e}"));
    }
    let mut late = Outbox::default();
    for &i in &ready {
        let peer = &mut batch[i].peer;
        peer.after_write(&mut late);
        peer.renew_lease_from_commit();
    }
    ctx.transport.send_all(late.messages);
    send_snapshots(ctx, late.snapshots);
    // Installs recorded this round go to the snapshot worker (the log reset is durable).
    for fsm in batch.iter_mut().filter(|f| !f.destroyed) {
        if let Some((state, delegate)) = fsm.peer.take_install_task() {
            ctx.router.bump_data_epoch();
            ctx.router
                .schedule_snapshot(SnapshotTask::Install { state, delegate });
        }
    }
    // Every peer of the batch, not only those with a Ready: entries committed while a
    // delegate was away go when it is back, and a held-back merge goes when retried.
    let apply = batch
        .iter_mut()
        .filter(|f| !f.destroyed)
        .filter_map(|f| f.peer.take_apply_work())
        .collect();
    ctx.router.schedule_apply(apply);
    for fsm in batch.iter_mut().filter(|f| !f.destroyed) {
        fsm.peer.after_round();
    }
    for &i in &ready {
        let fsm = &mut batch[i];
        if let Some(view) = fsm.peer.leader_view_changed() {
            let region_id = fsm.region_id();
            tracing::info!(
                region = region_id,
                leader = view.leader_id,
                term = view.term,
                is_leader = view.is_leader,
                "leader changed"
            );
            {
                let mut meta = ctx.router.meta();
                if view.is_leader {
                    meta.leaders.insert(region_id);
                } else {
                    meta.leaders.remove(&region_id);
                }
            }
            if view.is_leader {
                let _ = ctx
                    .events
                    .send(StoreEvent::RegionHeartbeat(heartbeat_of(ctx, &fsm.peer)));
            }
        }
    }
}

/// The apply delegate is back: the peer takes over what it applied, and the raftstore acts on
/// region changes and compactions, and on merges waiting on either side.
fn on_applied(ctx: &StoreContext, fsm: &mut PeerFsm, delegate: Box<ApplyDelegate>) {
    let admins = fsm.peer.on_applied(delegate);
    let (bytes, keys) = std::mem::take(&mut fsm.peer.applied_writes);
    if fsm.peer.is_leader() {
        ctx.router.flow().record_write(fsm.region_id(), bytes, keys);
    }
    for admin in admins {
        match admin {
            AdminResult::Split { left, right } => on_split_applied(ctx, fsm, left, right),
            AdminResult::PrepareMerge { .. } => {
                report_region(ctx, &fsm.peer);
                ask_commit_merge(ctx, fsm);
            }
            AdminResult::CommitMerge { region, source, .. } => {
                on_merge_applied(ctx, fsm, region, source)
            }
            AdminResult::RollbackMerge { .. } => {
                fsm.merge_asked_at = None;
                report_region(ctx, &fsm.peer);
            }
            AdminResult::ChangePeer { region, change } => {
                let removed = change.kind == ringkv_proto::metapb::ConfChangeKind::Remove as i32
                    && change.peer.is_some_and(|p| p.id == fsm.peer.peer_id());
                if removed {
                    // No longer a member: the region's data here goes with the peer.
                    tracing::info!(
                        region = region.id,
                        peer = fsm.peer.peer_id(),
                        "removed from the region; destroying the peer"
                    );
                    destroy_peer(ctx, fsm, true);
                    return;
                }
                publish_region(ctx, fsm);
                report_region(ctx, &fsm.peer);
            }
            AdminResult::CompactLog { index, .. } => {
                let region_id = fsm.region_id();
                if ctx
                    .router
                    .send_control(StoreMsg::CompactLog { region_id, index })
                    .is_err()
                {
                    // The next compaction of the region covers this one.
                    tracing::debug!(
                        region = region_id,
                        "control mailbox full; compaction deferred"
                    );
                }
            }
        }
    }
    let peer = &fsm.peer;
    if let Some(wait) = peer.merge_wait() {
        // Tell the local source the prepare is committed; it answers with a wake-up once it
        // has applied it.
        let source = wait.source.as_ref().map(|s| s.id).unwrap_or_default();
        let _ = ctx.router.send(
            source,
            PeerMsg::CatchUpMerge {
                commit: wait.commit,
                commit_term: wait.commit_term,
            },
        );
    }
    if let Some(state) = peer.merge_state() {
        if peer.applied_index() >= state.commit {
            let target = state.target.as_ref().map(|t| t.id).unwrap_or_default();
            let _ = ctx.router.send(target, PeerMsg::Wake);
        }
    }
    if let Some(tombstone) = fsm.destroy_pending.take() {
        destroy_peer(ctx, fsm, tombstone);
    }
}

/// The parent's side of an applied split: the store meta takes both ranges at once (so a
/// message for the new region is not mistaken for one of an unknown region), the control
/// thread creates the new region's peer.
fn on_split_applied(ctx: &StoreContext, fsm: &mut PeerFsm, left: Region, right: Region) {
    fsm.split_asked_at = None;
    let parent_leader = fsm.peer.is_leader();
    if parent_leader {
        let _ = ctx.events.send(StoreEvent::ReportSplit {
            left: left.clone(),
            right: right.clone(),
        });
    }
    let wanted = split_peer_wanted(ctx, right.id);
    {
        let mut meta = ctx.router.meta();
        meta.regions.insert(left.id, left.clone());
        if wanted {
            meta.regions.insert(right.id, right.clone());
        }
    }
    fsm.published = Some(left);
    if !wanted {
        return;
    }
    let msg = StoreMsg::SplitApplied {
        right,
        campaign: parent_leader,
    };
    // The control mailbox is bounded; a split must not be lost, so wait for room (the control
    // thread never waits on pollers, so this cannot deadlock).
    if !ctx.router.send_control_wait(msg) {
        tracing::warn!("control thread gone; the new region's peer is created at restart");
    }
}

/// Whether a split applied here should create the new region's peer from the parent's data.
/// Not if the store already went past that state: a peer initialized from a snapshot of the
/// new region (installed while the parent here was behind) is newer and stays, and a
/// tombstone means the store's replica of the new region was already removed. In both cases
/// the split's apply left the new region's state alone (see `apply.rs`).
fn split_peer_wanted(ctx: &StoreContext, right_id: u64) -> bool {
    let state = layout::read_region_state(ctx.kv.as_ref(), right_id)
        .unwrap_or_else(|e| panic!("cannot read region state of region {right_id}: {e}"));
    if state
        .as_ref()
        .is_some_and(|s| s.state == PeerState::Tombstone as i32)
    {
        tracing::info!(
            region = right_id,
            "new region of a split was removed from this store before; not creating it"
        );
        return false;
    }
    let applied = layout::read_apply_state(ctx.kv.as_ref(), right_id)
        .unwrap_or_else(|e| panic!("cannot read apply state of region {right_id}: {e}"))
        .map_or(0, |a| a.applied_index);
    if applied > ringkv_storage::RAFT_INIT_LOG_INDEX {
        tracing::info!(
            region = right_id,
            applied,
            "new region of a split already here from a snapshot; keeping that peer"
        );
        return false;
    }
    true
}

/// The target's side of an applied merge: the store meta takes the widened region and drops
/// the source at once, and the source's peer is destroyed (its tombstone is in the batch just
/// written).
fn on_merge_applied(ctx: &StoreContext, fsm: &mut PeerFsm, region: Region, source: Region) {
    {
        let mut meta = ctx.router.meta();
        meta.regions.remove(&source.id);
        meta.leaders.remove(&source.id);
        meta.merged_away.insert(source.id);
        meta.regions.insert(region.id, region.clone());
    }
    fsm.published = Some(region);
    if ctx
        .router
        .send(source.id, PeerMsg::Destroy { tombstone: false })
        .is_err()
    {
        // No mailbox (already gone) or full: the tombstone is written, so a restart finishes
        // the job; until then the peer refuses everything as a merging source does.
        ctx.router.meta().merged_away.remove(&source.id);
        tracing::warn!(
            region = source.id,
            "could not tell the merged-away peer to go; it is removed at restart"
        );
    }
    report_region(ctx, &fsm.peer);
}

/// A leader reports its region to the placement driver (a follower has nothing to report).
fn report_region(ctx: &StoreContext, peer: &Peer) {
    if peer.is_leader() {
        let _ = ctx
            .events
            .send(StoreEvent::RegionHeartbeat(heartbeat_of(ctx, peer)));
    }
}

/// A leader's report of its region, with the flow counted since its previous report.
fn heartbeat_of(ctx: &StoreContext, peer: &Peer) -> RegionHeartbeatRequest {
    let (flow, interval_ms) = ctx
        .router
        .flow()
        .drain_region(peer.region_id(), ctx.clock.now_ms());
    RegionHeartbeatRequest {
        flow: Some(ringkv_proto::pdpb::RegionFlow {
            read_bytes: flow.read_bytes,
            read_keys: flow.read_keys,
            written_bytes: flow.written_bytes,
            written_keys: flow.written_keys,
            interval_ms,
        }),
        header: None,
        region: Some(peer.region().clone()),
        leader: Some(peer.meta()),
        term: peer.term(),
        approximate_keys: peer.size.approximate_keys.unwrap_or(0),
        approximate_size_bytes: peer.size.approximate_size_bytes.unwrap_or(0),
        stats_known: peer.size.approximate_size_bytes.is_some(),
        pending_peers: peer.pending_peers(),
    }
}

/// The control thread: ticks, peer creation, log compaction on the engine.
pub struct StoreFsm {
    ctx: Arc<StoreContext>,
    ticks: u64,
    /// Raft messages for regions this store does not have yet, kept for a few ticks: the new
    /// region of a split starts campaigning on the parent leader's store while the other
    /// stores may still be applying the split.
    early_messages: HashMap<u64, Vec<(u64, RaftMessage)>>,
    early_message_count: usize,
    /// Log compactions applied but not yet carried out on the log engine: region -> index.
    compactions_pending: HashMap<u64, u64>,
    /// The last region the sweep of quiet followers checked (the next sweep goes on after it).
    stale_sweep_after: u64,
}

/// Quiet followers one sweep checks at most (see [`StoreFsm::sweep_quiet_followers`]).
const STALE_SWEEP_REGIONS_MAX: usize = 256;

impl StoreFsm {
    pub fn new(ctx: Arc<StoreContext>) -> Self {
        StoreFsm {
            ctx,
            ticks: 0,
            early_messages: HashMap::new(),
            early_message_count: 0,
            compactions_pending: HashMap::new(),
            stale_sweep_after: 0,
        }
    }

    fn run(mut self, rx: Receiver<StoreMsg>, stopping: Arc<AtomicBool>) {
        let interval = self.ctx.cfg.tick_interval;
        let mut next_tick = Instant::now() + interval;
        while !stopping.load(Ordering::SeqCst) {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(StoreMsg::Stop) => break,
                Ok(msg) => self.handle(msg),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next_tick {
                self.tick();
                next_tick = Instant::now() + interval;
            }
        }
        tracing::info!(store = self.ctx.store_id, "raftstore stopped");
    }

    /// Handles one message (also the simulation's entry point).
    pub fn handle(&mut self, msg: StoreMsg) {
        match msg {
            StoreMsg::Raft(m) => self.on_unknown_region_message(*m),
            StoreMsg::CreateBootstrapPeer(region) => self.create_bootstrap_peer(region),
            StoreMsg::SplitApplied { right, campaign } => self.create_split_peer(right, campaign),
            StoreMsg::CompactLog { region_id, index } => {
                let pending = self.compactions_pending.entry(region_id).or_insert(index);
                *pending = (*pending).max(index);
            }
            StoreMsg::StoreUnreachable(store_id) => self.wake_regions_with_peer_on(store_id),
            StoreMsg::CleanLog { region_id } => self.clean_log(region_id),
            StoreMsg::Stop => {}
        }
    }

    /// One tick of the store (also the simulation's entry point).
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.ctx.router.tick_awake();
        self.expire_early_messages();
        if self
            .ticks
            .is_multiple_of(u64::from(self.ctx.cfg.raft_log_gc_ticks.max(1)))
        {
            self.compact_logs();
        }
        if self
            .ticks
            .is_multiple_of(u64::from(self.ctx.cfg.region_heartbeat_quiet_ticks.max(1)))
        {
            let leaders: Vec<u64> = self.ctx.router.meta().leaders.iter().copied().collect();
            for id in self.ctx.router.quiet(&leaders) {
                let _ = self.ctx.router.send(id, PeerMsg::ReportQuiet);
            }
        }
        if self
            .ticks
            .is_multiple_of(u64::from(self.ctx.cfg.stale_peer_check_ticks.max(1)))
        {
            self.sweep_quiet_followers();
        }
    }

    /// A quiet follower does not tick, so it never notices that it has no leader: a replica
    /// removed from its region while its store was cut off, and quiet since, would stay for
    /// ever. Every `stale_peer_check_ticks` the next few quiet followers (in region id order,
    /// wrapping) are checked with the placement driver like a follower missing its leader.
    fn sweep_quiet_followers(&mut self) {
        let store_id = self.ctx.store_id;
        let mut followers: Vec<(u64, Region)> = {
            let meta = self.ctx.router.meta();
            meta.regions
                .iter()
                .filter(|(id, _)| !meta.leaders.contains(id) && !meta.merged_away.contains(id))
                .map(|(id, r)| (*id, r.clone()))
                .collect()
        };
        followers.sort_unstable_by_key(|(id, _)| *id);
        let ids: Vec<u64> = followers.iter().map(|(id, _)| *id).collect();
        let quiet: std::collections::HashSet<u64> =
            self.ctx.router.quiet(&ids).into_iter().collect();
        let after = self.stale_sweep_after;
        let (later, earlier): (Vec<_>, Vec<_>) = followers
            .into_iter()
            .filter(|(id, _)| quiet.contains(id))
            .partition(|(id, _)| *id > after);
        for (id, region) in later
            .into_iter()
            .chain(earlier)
            .take(STALE_SWEEP_REGIONS_MAX)
        {
            self.stale_sweep_after = id;
            let Some(peer) = region
                .peers
                .iter()
                .find(|p| p.store_id == store_id)
                .copied()
            else {
                continue;
            };
            let _ = self
                .ctx
                .events
                .send(StoreEvent::CheckStalePeer { region, peer });
        }
    }

    /// Carries out applied compactions once the KV engine has made their truncated state
    /// durable: after a crash the node replays from the last durable applied index.
    fn compact_logs(&mut self) {
        if self.compactions_pending.is_empty() {
            return;
        }
        self.ctx
            .kv
            .flush()
            .unwrap_or_else(|e| panic!("kv flush failed; stopping the node: {e}"));
        for (region_id, index) in self.compactions_pending.drain() {
            self.ctx
                .log
                .compact_to(region_id, index + 1)
                .unwrap_or_else(|e| panic!("raft log compaction failed; stopping the node: {e}"));
        }
        if let Err(e) = self.ctx.log.purge() {
            tracing::warn!(error = %e, "raft log purge failed");
        }
    }

    /// Drops a destroyed peer's log once its tombstone is durable (before that, a crash must
    /// still find the log of a peer it will load).
    fn clean_log(&self, region_id: u64) {
        self.ctx
            .kv
            .flush()
            .unwrap_or_else(|e| panic!("kv flush failed; stopping the node: {e}"));
        self.ctx
            .log
            .clean(region_id)
            .unwrap_or_else(|e| panic!("raft log clean failed; stopping the node: {e}"));
    }

    fn wake_regions_with_peer_on(&self, store_id: u64) {
        let regions: Vec<u64> = self
            .ctx
            .router
            .meta()
            .regions
            .values()
            .filter(|r| r.peers.iter().any(|p| p.store_id == store_id))
            .map(|r| r.id)
            .collect();
        for id in regions {
            let _ = self.ctx.router.send(id, PeerMsg::Wake);
        }
    }

    fn on_unknown_region_message(&mut self, msg: RaftMessage) {
        if self.ctx.router.has_region(msg.region_id) {
            // Created meanwhile.
            self.ctx.router.send_raft(msg);
            return;
        }
        let Some(to) = msg.to_peer.filter(|p| p.store_id == self.ctx.store_id) else {
            return;
        };
        if msg.message.is_empty() {
            // A notice (quiet, safe timestamp) for a replica that is not here: nothing to do.
            return;
        }
        if self.maybe_create_uninitialized(&msg, to) {
            self.ctx.router.send_raft(msg);
        } else {
            self.keep_early_message(msg);
        }
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

    /// Creates an uninitialized peer for a message to a region this store does not have,
    /// unless a local region still covers part of its range: then a split that creates it
    /// here is pending, or a stale local region must catch up first.
    fn maybe_create_uninitialized(&mut self, msg: &RaftMessage, to: PeerMeta) -> bool {
        let ctx = &self.ctx;
        if to.id == 0
            || ctx
                .router
                .meta()
                .overlaps(msg.region_id, &msg.start_key, &msg.end_key)
        {
            return false;
        }
        match layout::read_region_state(ctx.kv.as_ref(), msg.region_id) {
            Ok(None) => {}
            Ok(Some(state)) if readded_over_tombstone(&state, msg, to) => {
                tracing::info!(
                    region = msg.region_id,
                    peer = to.id,
                    "replica added again to a store that held one before; replacing its tombstone"
                );
            }
            Ok(Some(_)) => return false,
            Err(e) => panic!("cannot read region state of region {}: {e}", msg.region_id),
        }
        let storage = PeerStorage::uninitialized(msg.region_id, ctx.log.clone());
        match Peer::uninitialized(to, storage, &ctx.cfg.peer) {
            Ok(peer) => {
                tracing::info!(
                    region = msg.region_id,
                    peer = to.id,
                    "created uninitialized peer; waiting for a snapshot"
                );
                register_peer(ctx, peer);
                true
            }
            Err(e) => {
                tracing::warn!(region = msg.region_id, error = %e, "cannot create peer");
                false
            }
        }
    }

    fn create_bootstrap_peer(&mut self, region: Region) {
        let ctx = &self.ctx;
        if ctx.router.has_region(region.id) {
            return;
        }
        // A region state means this store had the region before (maybe removed): never recreate.
        match layout::read_region_state(ctx.kv.as_ref(), region.id) {
            Ok(None) => {}
            Ok(Some(_)) => return,
            Err(e) => panic!("cannot read region state of region {}: {e}", region.id),
        }
        let mut kv_batch = KvWriteBatch::default();
        let mut log_batch = RaftLogBatch::default();
        let storage = PeerStorage::create_at_bootstrap(
            region.clone(),
            ctx.log.clone(),
            &mut kv_batch,
            &mut log_batch,
        );
        // Log first: a region state without a hard state would be refused at restart.
        ctx.log
            .write(log_batch, true)
            .unwrap_or_else(|e| panic!("cannot write bootstrap raft state: {e}"));
        ctx.kv
            .write(kv_batch)
            .unwrap_or_else(|e| panic!("cannot write bootstrap region state: {e}"));
        ctx.kv
            .flush()
            .unwrap_or_else(|e| panic!("cannot flush bootstrap region state: {e}"));
        match Peer::new(ctx.store_id, storage, &ctx.cfg.peer) {
            Ok(peer) => {
                tracing::info!(
                    region = region.id,
                    peer = peer.peer_id(),
                    "created peer at bootstrap state"
                );
                register_peer(ctx, peer);
            }
            Err(e) => {
                tracing::error!(region = region.id, error = %e, "cannot create bootstrap peer")
            }
        }
    }

    /// Creates the peer of the new region of an applied split, and hands it the messages that
    /// arrived for it before it existed.
    fn create_split_peer(&mut self, right: Region, campaign: bool) {
        let ctx = self.ctx.clone();
        let right_id = right.id;
        if !split_peer_wanted(&ctx, right_id) {
            return;
        }
        // Load rather than start from the initial state: after a crash that lost the parent's
        // unflushed apply of this split, the split is applied again, but the new region's
        // Raft state (its vote, its log) may already be durable in the log engine and must
        // not be forgotten.
        let storage = PeerStorage::load(right.clone(), ctx.kv.as_ref(), ctx.log.clone())
            .unwrap_or_else(|e| panic!("cannot load the state of new region {right_id}: {e}"));
        let peer = match Peer::new(ctx.store_id, storage, &ctx.cfg.peer) {
            Ok(p) => p,
            Err(e) => panic!("cannot create peer of region {right_id} from a split: {e}"),
        };
        let (tx, rx) = ctx.router.channel();
        let mut fsm = PeerFsm::new(peer, rx);
        fsm.published = Some(right);
        if ctx.router.has_region(right_id) {
            // An uninitialized peer created from an early message: the split supersedes it.
            // (One initialized from a snapshot cannot exist: its range overlapped the parent
            // until now, so no snapshot could be installed.)
            ctx.router.replace(tx.clone(), fsm);
        } else {
            ctx.router.register(tx.clone(), fsm);
        }
        if campaign {
            let _ = ctx.router.send(right_id, PeerMsg::Campaign);
        }
        if let Some(early) = self.early_messages.remove(&right_id) {
            self.early_message_count -= early.len();
            for (_, msg) in early {
                ctx.router.send_raft(msg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_proto::metapb::{Peer as PeerMeta, RegionEpoch};
    use ringkv_storage::MemLogEngine;
    use std::sync::atomic::AtomicUsize;

    fn peer_of(region_id: u64, log: &Arc<dyn RaftLogEngine>) -> Peer {
        let region = Region {
            id: region_id,
            region_epoch: Some(RegionEpoch {
                conf_ver: 1,
                version: 1,
            }),
            peers: vec![PeerMeta {
                id: region_id + 1000,
                store_id: 1,
                role: 0,
            }],
            ..Default::default()
        };
        let mut kv_batch = KvWriteBatch::default();
        let mut log_batch = RaftLogBatch::default();
        let storage =
            PeerStorage::create_at_bootstrap(region, log.clone(), &mut kv_batch, &mut log_batch);
        Peer::new(1, storage, &PeerConfig::default()).expect("peer")
    }

    #[test]
    fn the_stores_mailboxes_refuse_payload_past_their_byte_budget_until_it_is_taken() {
        let (router, receivers) = StoreRouter::with_mailbox_bytes(16, 1 << 10, 10_000);
        let log: Arc<dyn RaftLogEngine> = Arc::new(MemLogEngine::new());
        let mut fsms = Vec::new();
        for id in 1..=2 {
            let (tx, rx) = router.channel();
            assert!(router.register(tx, PeerFsm::new(peer_of(id, &log), rx)));
        }
        let raft = |region_id: u64, bytes: usize| {
            PeerMsg::Raft(Box::new(RaftMessage {
                region_id,
                message: vec![0; bytes],
                ..Default::default()
            }))
        };
        assert!(router.send(1, raft(1, 6_000)).is_ok());
        assert!(router.send(2, raft(2, 3_000)).is_ok());
        assert_eq!(router.mailbox_bytes(), 9_000);
        // Past the budget of the store as a whole, whichever region it is for.
        assert!(router.send(2, raft(2, 2_000)).is_err());
        assert!(router.send(1, raft(1, 2_000)).is_err());
        // Messages without payload still pass.
        assert!(router.send(1, PeerMsg::Wake).is_ok());
        // Region 1's peer takes its mail: the bytes are free again.
        let ready = receivers.ready.try_iter().collect::<Vec<_>>();
        for fsm in ready {
            while let Ok(msg) = fsm.rx.try_recv() {
                fsm.mailbox.as_ref().expect("registered").taken(&msg);
            }
            fsms.push(fsm);
        }
        assert_eq!(router.mailbox_bytes(), 0);
        assert!(router.send(2, raft(2, 9_000)).is_ok());
        // A closed mailbox gives back what it still held.
        router.close(2);
        drop(fsms);
        assert_eq!(router.mailbox_bytes(), 0);
    }

    /// Many senders and two pollers: every message is taken exactly once, by whichever poller
    /// holds its FSM, and every FSM ends parked. The mailbox protocol (park, notify, release,
    /// re-schedule if mail came meanwhile) must not lose a wake-up under contention.
    #[test]
    fn mailboxes_lose_no_message_and_no_fsm_under_contention() {
        const REGIONS: u64 = 64;
        const SENDERS: usize = 4;
        const PER_SENDER: usize = 5_000;
        let (router, receivers) = StoreRouter::new(1024, 1 << 16);
        let log: Arc<dyn RaftLogEngine> = Arc::new(MemLogEngine::new());
        for id in 1..=REGIONS {
            let (tx, rx) = router.channel();
            assert!(router.register(tx, PeerFsm::new(peer_of(id, &log), rx)));
        }
        let taken = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let pollers: Vec<_> = (0..2)
            .map(|_| {
                let (router, ready, taken, stop) = (
                    router.clone(),
                    receivers.ready.clone(),
                    taken.clone(),
                    stop.clone(),
                );
                std::thread::spawn(move || {
                    let mut held = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let Ok(fsm) = ready.recv_timeout(Duration::from_millis(10)) else {
                            continue;
                        };
                        held += 1;
                        while fsm.rx.try_recv().is_ok() {
                            taken.fetch_add(1, Ordering::SeqCst);
                        }
                        // Widen the window in which mail arrives for an FSM being released.
                        std::thread::sleep(Duration::from_micros(50));
                        router.release(fsm);
                    }
                    held
                })
            })
            .collect();
        let senders: Vec<_> = (0..SENDERS)
            .map(|s| {
                let router = router.clone();
                std::thread::spawn(move || {
                    for i in 0..PER_SENDER {
                        let region = 1 + ((i * 7 + s * 13) as u64 % REGIONS);
                        while router.send(region, PeerMsg::Wake).is_err() {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        for s in senders {
            s.join().unwrap();
        }
        let total = SENDERS * PER_SENDER;
        let deadline = Instant::now() + Duration::from_secs(20);
        while taken.load(Ordering::SeqCst) < total && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::SeqCst);
        let polled: u64 = pollers.into_iter().map(|p| p.join().unwrap()).sum();
        assert_eq!(
            taken.load(Ordering::SeqCst),
            total,
            "every message taken once"
        );
        assert!(polled >= REGIONS, "every FSM was scheduled");
        // Every FSM is parked again: sending wakes each exactly once into the ready queue.
        while receivers.ready.try_recv().is_ok() {}
        for id in 1..=REGIONS {
            assert!(router.send(id, PeerMsg::Wake).is_ok());
        }
        let mut woken: Vec<u64> = receivers.ready.try_iter().map(|f| f.region_id()).collect();
        woken.sort();
        assert_eq!(woken, (1..=REGIONS).collect::<Vec<_>>());
    }

    struct NoTransport;

    impl RaftTransport for NoTransport {
        fn send_all(&self, _: Vec<RaftMessage>) {}
        fn send_snapshot(&self, _: RaftMessage, report: SnapshotReport) {
            report(false);
        }
    }

    fn stepped_store(
        kv: &Arc<ringkv_storage::MemKv>,
        log: &Arc<MemLogEngine>,
        snapshots: &crate::snapshot::SnapshotDir,
    ) -> Result<SteppedStore, crate::NodeError> {
        let (router, receivers) = StoreRouter::new(1 << 10, 1 << 10);
        let (events, _) = StoreEvents::channel(STORE_EVENTS_MAX);
        let kv_dyn: Arc<dyn KvEngine> = kv.clone();
        let cfg = RaftStoreConfig::default();
        SteppedStore::open(
            StoreContext {
                store_id: 1,
                log: log.clone(),
                kv: kv_dyn.clone(),
                snapshots: crate::snapshot::SnapshotDir::open(snapshots.path())?,
                transport: Arc::new(NoTransport),
                events,
                split_checker: SplitChecker::inline(kv_dyn, cfg.split, router.clone()),
                clock: Arc::new(crate::clock::ManualClock::default()),
                cfg,
                router,
            },
            receivers,
        )
    }

    fn raw_put(kv: &dyn KvEngine, user: &[u8], value: &[u8]) {
        let mut batch = KvWriteBatch::default();
        batch.put(
            layout::cf_key(layout::Cf::Raw, &layout::encode_bytes(user), 0),
            value.to_vec(),
        );
        kv.write(batch).unwrap();
    }

    fn raw_data(kv: &ringkv_storage::MemKv) -> Vec<(Vec<u8>, Vec<u8>)> {
        kv.dump()
            .into_iter()
            .filter(|(k, _)| k[0] == layout::Cf::Raw.prefix())
            .map(|(k, v)| (layout::decode_bytes(&k[1..]).unwrap().0, v))
            .collect()
    }

    #[test]
    fn a_store_that_stopped_in_the_middle_of_a_snapshot_install_finishes_it_when_it_starts() {
        let tmp = tempfile::tempdir().unwrap();
        let (kv, log) = (
            Arc::new(ringkv_storage::MemKv::new()),
            Arc::new(MemLogEngine::new()),
        );
        let dir = crate::snapshot::SnapshotDir::open(&tmp.path().join("snap")).unwrap();
        // A store with one region (the whole key space) and some data of its own.
        let log_dyn: Arc<dyn RaftLogEngine> = log.clone();
        let peer = peer_of(1, &log_dyn);
        let region = peer.region().clone();
        let mut kv_batch = KvWriteBatch::default();
        let mut log_batch = RaftLogBatch::default();
        PeerStorage::create_at_bootstrap(
            region.clone(),
            log_dyn.clone(),
            &mut kv_batch,
            &mut log_batch,
        );
        kv.write(kv_batch).unwrap();
        log.write(log_batch, true).unwrap();
        drop(stepped_store(&kv, &log, &dir).unwrap());
        raw_put(kv.as_ref(), b"old-1", b"old");
        raw_put(kv.as_ref(), b"old-2", b"old");
        let applied = layout::read_apply_state(kv.as_ref(), 1).unwrap().unwrap();

        // A snapshot of the same region from elsewhere, received and checked here.
        let source = ringkv_storage::MemKv::new();
        for i in 0..100 {
            raw_put(&source, format!("new-{i:03}").as_bytes(), b"new");
        }
        let source_dir = crate::snapshot::SnapshotDir::open(&tmp.path().join("source")).unwrap();
        let task = crate::snapshot::GenerateTask {
            region: region.clone(),
            index: applied.applied_index,
            term: applied.truncated_term,
            merge_state: None,
            merged_sources: Vec::new(),
        };
        let snap = crate::snapshot::generate(&source, &source_dir, &task).unwrap();
        let mut inner = raft::eraftpb::Message::default();
        inner.set_snapshot(snap.clone());
        let msg = RaftMessage {
            region_id: 1,
            message: protobuf::Message::write_to_bytes(&inner).unwrap(),
            ..Default::default()
        };
        let mut incoming = crate::snapshot::Incoming::begin(&dir, &msg).unwrap();
        incoming
            .write(&std::fs::read(source_dir.generated(1, task.term, task.index)).unwrap())
            .unwrap();
        incoming.finish().unwrap();
        // The round recorded the install, the worker wrote part of it, then the node stopped.
        let header = crate::snapshot::header(&snap).unwrap();
        let mut batch = KvWriteBatch::default();
        crate::snapshot::begin_install(&dir, &snap, &header, &mut batch).unwrap();
        kv.write(batch).unwrap();
        raw_put(kv.as_ref(), b"new-000", b"new");

        let store = stepped_store(&kv, &log, &dir).unwrap();
        let data = raw_data(&kv);
        assert_eq!(
            data.len(),
            100,
            "exactly the snapshot's data: {:?}",
            &data[..3]
        );
        assert!(data
            .iter()
            .all(|(k, v)| k.starts_with(b"new-") && v == b"new"));
        let state = layout::read_region_state(kv.as_ref(), 1).unwrap().unwrap();
        assert_eq!(state.state, PeerState::Normal as i32);
        assert!(!dir.applying(1).exists(), "the install's file is gone");
        assert!(
            store.router().meta().regions.contains_key(&1),
            "the region is loaded"
        );
        drop(store);

        // Without its file the install cannot be finished: the node refuses to start and
        // says why.
        let mut batch = KvWriteBatch::default();
        layout::write_region_state(&mut batch, &crate::snapshot::applying_state(&header));
        kv.write(batch).unwrap();
        let err = stepped_store(&kv, &log, &dir).err().expect("refused");
        assert!(err.to_string().contains("installing a snapshot"), "{err}");
    }
}
