//! The bank workload inside the deterministic simulation: transactional clients move money
//! between accounts while the simulation crashes, partitions, pauses and disk-faults stores.
//!
//! Clients and the nodes' transactional request handling are `async` code run by a
//! single-threaded executor that the simulation polls once per step, so a run stays a pure
//! function of its seed. The node side mirrors `KvService`'s transactional path
//! (`node/src/service/txn.rs`): latches on the keys, the read barrier through the raftstore,
//! a `ringkv_txn` action over the store's engine, one Raft command, latches (and a one-phase
//! commit's memory locks) held until the proposal is answered. The client side mirrors the
//! SDK's protocol: reads at start_ts that resolve the locks they meet (check the primary, roll
//! back expired transactions, push live ones), prewrite (one phase when both keys share a
//! region), commit of the primary as the commit point, then the secondary.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv_node::resolved_ts;
use ringkv_node::router::StoreRouter;
use ringkv_placement::cluster::RegionInfo;
use ringkv_placement::tso::{compose_ts, Tso, LOGICAL_BITS};
use ringkv_proto::keys;
use ringkv_proto::kvrpcpb::{LockInfo, Mutation, Op};
use ringkv_proto::metapb::Region;
use ringkv_proto::raftpb::RaftCmdRequest;
use ringkv_storage::KvEngine;
use ringkv_txn::actions::{check_txn_status, commit, prewrite, read, resolve_lock, rollback};
use ringkv_txn::{LockStatus, MvccReader, MvccTxn, TxnError};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use tokio::sync::oneshot;

pub const ACCOUNTS: usize = 10;
pub const START_BALANCE: i64 = 100;
pub const TOTAL: i64 = START_BALANCE * ACCOUNTS as i64;

/// Steps a node waits for the read barrier or a proposal before answering "unknown".
const NODE_WAIT_STEPS: u64 = 300;
/// Steps a client call (a read with its lock resolution, a commit) may take.
const CALL_STEPS: u64 = 3_000;
/// A transaction's lock TTL, in ms of TSO time (a step is a millisecond).
const LOCK_TTL_MS: u64 = 400;
/// Steps between two rounds of the leaders' resolvers (`resolved_ts_interval_ms`).
const RESOLVE_EVERY_STEPS: u64 = 25;
/// How far back a stale snapshot reads at most, in steps (ms of TSO time).
const STALE_BY_MAX_STEPS: u64 = 200;

/// Deliberately broken nodes, for the checker's own tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct BankFaults {
    /// Transactional reads ignore locks (they miss transactions committing at their snapshot).
    pub reads_ignore_locks: bool,
    /// Leaders claim safe timestamps past live locks (stale reads miss those transactions).
    pub safe_ts_ignores_locks: bool,
}

pub fn account(i: usize) -> Vec<u8> {
    keys::encode(&keys::default_keyspace(), format!("acct{i:02}").as_bytes())
}

/// A running store as the transactional layer sees it: its router and engine, and the
/// in-memory state of its service (lost when the store crashes: a restart gets new ones).
#[derive(Clone)]
pub struct NodeHandle {
    pub store_id: u64,
    pub incarnation: u64,
    pub router: StoreRouter,
    pub kv: Arc<dyn KvEngine>,
    latches: Rc<RefCell<BTreeSet<Vec<u8>>>>,
    memory_locks: Rc<RefCell<BTreeMap<Vec<u8>, u64>>>,
}

impl NodeHandle {
    pub fn new(
        store_id: u64,
        incarnation: u64,
        router: StoreRouter,
        kv: Arc<dyn KvEngine>,
    ) -> Self {
        NodeHandle {
            store_id,
            incarnation,
            router,
            kv,
            latches: Default::default(),
            memory_locks: Default::default(),
        }
    }
}

/// What the bank saw; the simulation reports it and fails on a violation.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BankOutcome {
    pub transfers: u64,
    pub aborted: u64,
    pub one_phase: u64,
    pub snapshots: u64,
    /// Snapshots read by stale reads, and of their key reads those a replica served itself
    /// (the rest fell back to the leader).
    pub stale_snapshots: u64,
    pub stale_reads_served: u64,
    pub stale_reads_fallen_back: u64,
    pub locks_resolved: u64,
    /// Why transfers gave up, by kind.
    pub abort_reasons: BTreeMap<String, u64>,
    pub violations: Vec<String>,
}

/// The answer to a proposal, as the raftstore sends it.
type ProposalAnswer = oneshot::Receiver<ringkv_node::apply::CmdResult>;

/// A spawned task of the bank's executor.
type Task = Pin<Box<dyn Future<Output = ()>>>;

/// What the simulation and the tasks share.
pub struct World {
    now: Cell<u64>,
    timers: RefCell<Vec<(u64, Waker)>>,
    /// Store index → its handle while running.
    nodes: RefCell<Vec<Option<NodeHandle>>>,
    routes: RefCell<Vec<RegionInfo>>,
    tso: RefCell<Tso>,
    rng: RefCell<StdRng>,
    misroute_per_mille: u32,
    faults: BankFaults,
    /// A timestamp after every account was opened: snapshots are never older.
    opened_at: Cell<u64>,
    stop: Cell<bool>,
    workers_running: Cell<usize>,
    outcome: RefCell<BankOutcome>,
    /// Commands whose proposal outlived the node's wait: what they hold stays held until the
    /// proposal is answered (the node's rule), then goes.
    held_past_wait: RefCell<Vec<(Held, ProposalAnswer)>>,
}

/// A single-threaded executor whose poll order does not depend on wake order: tasks are
/// polled in spawn order, every pass, while any is woken. (Wakes come from oneshot channels,
/// and a crashed store drops its callbacks in hash-map order, which differs per process; a
/// poll order that followed wakes would make runs differ too.)
#[derive(Default)]
struct Executor {
    tasks: RefCell<Vec<Option<Task>>>,
    woken: RefCell<Vec<Arc<std::sync::atomic::AtomicBool>>>,
    /// Spawned while polling; joined after the pass.
    spawned: RefCell<Vec<Task>>,
}

struct Flag(Arc<std::sync::atomic::AtomicBool>);

impl std::task::Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Executor {
    fn spawn(&self, fut: impl Future<Output = ()> + 'static) {
        self.spawned.borrow_mut().push(Box::pin(fut));
    }

    fn join_spawned(&self) {
        for fut in self.spawned.borrow_mut().drain(..) {
            self.tasks.borrow_mut().push(Some(fut));
            self.woken
                .borrow_mut()
                .push(Arc::new(std::sync::atomic::AtomicBool::new(true)));
        }
    }

    /// Polls woken tasks in spawn order until none is woken.
    fn run_until_stalled(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        loop {
            self.join_spawned();
            let mut polled = false;
            let n = self.tasks.borrow().len();
            for i in 0..n {
                let flag = self.woken.borrow()[i].clone();
                if !flag.swap(false, Relaxed) {
                    continue;
                }
                let Some(mut task) = self.tasks.borrow_mut()[i].take() else {
                    continue;
                };
                polled = true;
                let waker = Waker::from(Arc::new(Flag(flag)));
                let mut cx = Context::from_waker(&waker);
                if task.as_mut().poll(&mut cx).is_pending() {
                    self.tasks.borrow_mut()[i] = Some(task);
                }
            }
            if !polled && self.spawned.borrow().is_empty() {
                return;
            }
        }
    }
}

/// The bank: its executor and the shared world.
pub struct Bank {
    executor: Rc<Executor>,
    world: Rc<World>,
}

impl Bank {
    pub fn new(seed: u64, stores: usize, misroute_per_mille: u32, faults: BankFaults) -> Bank {
        let world = Rc::new(World {
            now: Cell::new(0),
            timers: RefCell::new(Vec::new()),
            nodes: RefCell::new(vec![None; stores]),
            routes: RefCell::new(Vec::new()),
            tso: RefCell::new(Tso::new(0, 3000)),
            rng: RefCell::new(StdRng::seed_from_u64(seed ^ 0xba4c)),
            misroute_per_mille,
            faults,
            opened_at: Cell::new(0),
            stop: Cell::new(false),
            workers_running: Cell::new(0),
            outcome: RefCell::new(BankOutcome::default()),
            held_past_wait: RefCell::new(Vec::new()),
        });
        Bank {
            executor: Rc::new(Executor::default()),
            world,
        }
    }

    /// Opens the accounts, then starts `clients` workers that transfer money and check
    /// snapshots until [`Bank::stop`].
    pub fn start(&mut self, clients: usize, seed: u64) {
        let world = self.world.clone();
        world.workers_running.set(clients);
        let executor = self.executor.clone();
        self.executor.spawn(resolver(world.clone()));
        self.executor.spawn(async move {
            while open_accounts(&world).await.is_err() {
                sleep(&world, 50).await;
            }
            for c in 0..clients {
                let w = world.clone();
                let rng = StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(c as u64));
                executor.spawn(worker(w, rng));
            }
        });
    }

    /// Workers finish their transaction and stop.
    pub fn stop(&self) {
        self.world.stop.set(true);
    }

    /// Whether every worker stopped.
    pub fn idle(&self) -> bool {
        self.world.workers_running.get() == 0
    }

    pub fn node(&self, i: usize) -> Option<NodeHandle> {
        self.world.nodes.borrow()[i].clone()
    }

    /// Store `i` is running as `node`, or is down (None): a crashed store's service memory
    /// (latches, memory locks, what waited on late proposals) is gone with it.
    pub fn set_node(&self, i: usize, node: Option<NodeHandle>) {
        let mut nodes = self.world.nodes.borrow_mut();
        if let Some(old) = &nodes[i] {
            if node
                .as_ref()
                .is_none_or(|n| n.incarnation != old.incarnation)
            {
                let gone = old.store_id;
                self.world
                    .held_past_wait
                    .borrow_mut()
                    .retain(|(h, _)| h.node.store_id != gone);
            }
        }
        nodes[i] = node;
    }

    /// One simulation step: the time, the routes the placement driver knows, then every task
    /// that can make progress.
    pub fn step(&mut self, now: u64, routes: Vec<RegionInfo>) {
        self.world.now.set(now);
        *self.world.routes.borrow_mut() = routes;
        let due: Vec<Waker> = {
            let mut timers = self.world.timers.borrow_mut();
            let (due, later): (Vec<_>, Vec<_>) = timers.drain(..).partition(|(at, _)| *at <= now);
            *timers = later;
            due.into_iter().map(|(_, w)| w).collect()
        };
        for w in due {
            w.wake();
        }
        self.world
            .held_past_wait
            .borrow_mut()
            .retain_mut(|(_, rx)| {
                matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))
            });
        self.executor.run_until_stalled();
    }

    /// What the bank saw.
    pub fn outcome(&self) -> BankOutcome {
        self.world.outcome.borrow().clone()
    }

    /// Starts the final check: a snapshot of all accounts that must sum to the total.
    pub fn start_final_check(&mut self) -> Rc<Cell<Option<bool>>> {
        let done = Rc::new(Cell::new(None));
        let (world, d) = (self.world.clone(), done.clone());
        self.executor.spawn(async move {
            loop {
                let ts = world.tso();
                if let Ok(balances) = read_all(&world, ts).await {
                    let sum: i64 = balances.iter().sum();
                    if sum != TOTAL {
                        world.outcome.borrow_mut().violations.push(format!(
                            "final snapshot at {ts} sums to {sum}, not {TOTAL}: {balances:?}"
                        ));
                    }
                    d.set(Some(sum == TOTAL));
                    return;
                }
                sleep(&world, 20).await;
            }
        });
        done
    }
}

impl World {
    fn now(&self) -> u64 {
        self.now.get()
    }

    /// Whether `node` is still the running incarnation of its store. A task of a node's
    /// service that awaited across a crash must not go on: the process it ran in is gone
    /// (its engine object, which outlives the crash here, holds only what was durable).
    fn is_running(&self, node: &NodeHandle) -> bool {
        self.nodes
            .borrow()
            .iter()
            .flatten()
            .any(|n| n.store_id == node.store_id && n.incarnation == node.incarnation)
    }

    /// A timestamp: physical time is the step count.
    fn tso(&self) -> u64 {
        let (batch, _) = self.tso.borrow_mut().allocate(1, self.now() as i64);
        compose_ts(batch.physical_ms, batch.logical)
    }

    fn chance(&self, per_mille: u32) -> bool {
        self.rng.borrow_mut().gen_range(0..1000) < per_mille
    }

    /// The region holding `key` and a running store to send to: its leader, or (a client
    /// with a stale view, or no leader known) any replica.
    fn route(&self, key: &[u8]) -> Option<(Region, NodeHandle)> {
        let routes = self.routes.borrow();
        let info = routes
            .iter()
            .find(|r| keys::in_range(key, &r.region.start_key, &r.region.end_key))?;
        let peers = &info.region.peers;
        let store_id = match info.leader {
            Some(l) if !self.chance(self.misroute_per_mille) => l.store_id,
            _ if peers.is_empty() => return None,
            _ => peers[self.rng.borrow_mut().gen_range(0..peers.len())].store_id,
        };
        let node = self
            .nodes
            .borrow()
            .iter()
            .flatten()
            .find(|n| n.store_id == store_id)
            .cloned()?;
        Some((info.region.clone(), node))
    }
}

/// Waits `steps` simulation steps.
async fn sleep(world: &Rc<World>, steps: u64) {
    Sleep {
        world: world.clone(),
        until: world.now() + steps.max(1),
    }
    .await
}

struct Sleep {
    world: Rc<World>,
    until: u64,
}

impl Future for Sleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.world.now() >= self.until {
            return Poll::Ready(());
        }
        self.world
            .timers
            .borrow_mut()
            .push((self.until, cx.waker().clone()));
        Poll::Pending
    }
}

/// `fut`'s output, or None after `steps` steps.
async fn within<F: Future>(world: &Rc<World>, steps: u64, fut: F) -> Option<F::Output> {
    let fut = std::pin::pin!(fut);
    let timeout = std::pin::pin!(sleep(world, steps));
    match futures::future::select(fut, timeout).await {
        futures::future::Either::Left((out, _)) => Some(out),
        futures::future::Either::Right(_) => None,
    }
}

/// Why a node did not carry out a request.
#[derive(Debug)]
enum NodeError {
    /// Refused by the region (not leader, epoch, ...): route again.
    Region,
    /// No answer (down, paused, partitioned, crashed meanwhile): it may or may not have been
    /// carried out.
    Unknown,
    /// The keys' latches stayed taken.
    Busy,
    /// The transaction rules refused it.
    Txn(TxnError),
}

/// Held keys of one command on one node; released on drop.
struct Held {
    node: NodeHandle,
    keys: Vec<Vec<u8>>,
    memory_locked: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        // Memory locks first, then latches (as the node's `Held`).
        if self.memory_locked {
            let mut locks = self.node.memory_locks.borrow_mut();
            for k in &self.keys {
                locks.remove(k);
            }
        }
        let mut latches = self.node.latches.borrow_mut();
        for k in &self.keys {
            latches.remove(k);
        }
    }
}

/// The read barrier: the region is led here and the snapshot is current.
async fn clear_read(
    world: &Rc<World>,
    node: &NodeHandle,
    region: &Region,
    keys: &[Vec<u8>],
) -> Result<(), NodeError> {
    let (tx, rx) = oneshot::channel();
    node.router
        .send_read(region.id, region.region_epoch, keys.to_vec(), tx, false);
    match within(world, NODE_WAIT_STEPS, rx).await {
        Some(Ok(Ok(_))) => Ok(()),
        Some(Ok(Err(_))) => Err(NodeError::Region),
        _ => Err(NodeError::Unknown),
    }
}

type Action<T> = Box<dyn FnOnce(&MvccReader<'_>, Option<u64>) -> Result<(MvccTxn, T), TxnError>>;

/// A transactional write command on `node`, as the node's service runs it.
async fn node_write<T: 'static>(
    world: &Rc<World>,
    node: NodeHandle,
    region: Region,
    keys: Vec<Vec<u8>>,
    one_pc_start: Option<u64>,
    action: Action<T>,
) -> Result<(T, Option<u64>), NodeError> {
    let mut waited = 0;
    while keys.iter().any(|k| node.latches.borrow().contains(k)) {
        if waited >= NODE_WAIT_STEPS {
            return Err(NodeError::Busy);
        }
        sleep(world, 1).await;
        waited += 1;
    }
    node.latches.borrow_mut().extend(keys.iter().cloned());
    let mut held = Held {
        node: node.clone(),
        keys: keys.clone(),
        memory_locked: false,
    };
    clear_read(world, &node, &region, &keys).await?;
    if !world.is_running(&node) {
        return Err(NodeError::Unknown);
    }
    let one_pc_ts = one_pc_start.map(|start_ts| {
        // Lock against readers first, then take the commit_ts (docs/design.md).
        node.memory_locks
            .borrow_mut()
            .extend(keys.iter().map(|k| (k.clone(), start_ts)));
        held.memory_locked = true;
        world.tso()
    });
    let reader = MvccReader::new(node.kv.as_ref());
    let (txn, value) = action(&reader, one_pc_ts).map_err(NodeError::Txn)?;
    let committed_at = txn.committed_at;
    if txn.is_empty() {
        return Ok((value, one_pc_ts.map(|ts| committed_at.unwrap_or(ts))));
    }
    let cmd = RaftCmdRequest {
        region_id: region.id,
        region_epoch: region.region_epoch,
        requests: txn
            .into_modifies()
            .into_iter()
            .map(ringkv_txn::raft_request)
            .collect(),
        admin: None,
        ..Default::default()
    };
    let (tx, mut rx) = oneshot::channel();
    node.router.send_command(cmd, tx);
    match within(world, NODE_WAIT_STEPS, &mut rx).await {
        Some(Ok(Ok(_))) => Ok((value, one_pc_ts)),
        Some(Ok(Err(_))) => Err(NodeError::Region),
        Some(Err(_)) => Err(NodeError::Unknown),
        None => {
            // Keep what guards the write until its fate is known (the node's rule).
            world.held_past_wait.borrow_mut().push((held, rx));
            Err(NodeError::Unknown)
        }
    }
}

/// A read of `keys` at `ts` on `node`, as the node's service runs it.
async fn node_read(
    world: &Rc<World>,
    node: NodeHandle,
    region: Region,
    keys: Vec<Vec<u8>>,
    ts: u64,
    resolved: Vec<u64>,
) -> Result<Result<Vec<Option<Vec<u8>>>, Vec<LockInfo>>, NodeError> {
    clear_read(world, &node, &region, &keys).await?;
    let mut waited = 0;
    while keys.iter().any(|k| {
        node.memory_locks
            .borrow()
            .get(k)
            .is_some_and(|&start_ts| start_ts <= ts)
    }) {
        if waited >= NODE_WAIT_STEPS {
            return Err(NodeError::Busy);
        }
        sleep(world, 1).await;
        waited += 1;
    }
    if !world.is_running(&node) {
        return Err(NodeError::Unknown);
    }
    let reader = MvccReader::new(node.kv.as_ref());
    let mut values = Vec::new();
    let mut locks = Vec::new();
    for k in &keys {
        if world.faults.reads_ignore_locks {
            values.push(reader.get(k, ts).map_err(NodeError::Txn)?);
            continue;
        }
        match read::get(&reader, k, ts, read::Locks::Check(&resolved)) {
            Ok(v) => values.push(v),
            Err(TxnError::KeyIsLocked(l)) => locks.extend(l),
            Err(e) => return Err(NodeError::Txn(e)),
        }
    }
    Ok(if locks.is_empty() {
        Ok(values)
    } else {
        Err(locks)
    })
}

/// Why a client call failed.
#[derive(Debug)]
enum ClientError {
    /// The transaction must start over (conflict, rolled back by others, ...).
    Abort(String),
    /// The call ran out of time; a commit's outcome is unknown.
    Timeout,
    /// The keys of a one-region command no longer share a region (it split).
    Regroup,
}

/// Sends a write command for `keys` (all in the region of `keys[0]`) until a node carries it
/// out or the transaction rules refuse it. Region and busy errors retry; unknown outcomes
/// retry too (every command here is idempotent).
async fn write<T: 'static>(
    world: &Rc<World>,
    keys: Vec<Vec<u8>>,
    one_pc_start: Option<u64>,
    make: impl Fn() -> Action<T>,
) -> Result<Result<(T, Option<u64>), TxnError>, ClientError> {
    let deadline = world.now() + CALL_STEPS;
    while world.now() < deadline {
        let Some((region, node)) = world.route(&keys[0]) else {
            sleep(world, 10).await;
            continue;
        };
        if !keys
            .iter()
            .all(|k| keys::in_range(k, &region.start_key, &region.end_key))
        {
            return Err(ClientError::Regroup);
        }
        match node_write(world, node, region, keys.clone(), one_pc_start, make()).await {
            Ok(done) => return Ok(Ok(done)),
            Err(NodeError::Txn(e)) => return Ok(Err(e)),
            Err(_) => sleep(world, 5).await,
        }
    }
    Err(ClientError::Timeout)
}

/// The state of transaction `lock_ts` on its primary (pushing it past `caller_ts`, rolling it
/// back when its lock expired).
async fn check_status(
    world: &Rc<World>,
    lock: &LockInfo,
    caller_ts: u64,
) -> Result<Option<LockStatus>, ClientError> {
    let current_ts = world.tso();
    let expired = ringkv_txn::timestamp::physical_ms(lock.lock_version) + lock.lock_ttl
        <= ringkv_txn::timestamp::physical_ms(current_ts);
    let (primary, lock_ts) = (lock.primary_lock.clone(), lock.lock_version);
    let outcome = write(world, vec![primary.clone()], None, || {
        let primary = primary.clone();
        Box::new(move |reader: &MvccReader<'_>, _| {
            check_txn_status::check_txn_status(
                reader,
                &check_txn_status::CheckTxnStatus {
                    primary: &primary,
                    lock_ts,
                    caller_start_ts: caller_ts,
                    current_ts,
                    rollback_if_not_exist: expired,
                },
            )
            .map(|(txn, (status, _))| (txn, status))
        })
    })
    .await?;
    match outcome {
        Ok((status, _)) => Ok(Some(status)),
        Err(TxnError::TxnNotFound { .. }) => Ok(None),
        Err(e) => Err(ClientError::Abort(format!("check_txn_status: {e}"))),
    }
}

/// Deals with the locks a reader at `caller_ts` met; returns whether they are all out of the
/// way (resolved, or pushed past the reader and added to `bypass`).
async fn resolve(
    world: &Rc<World>,
    locks: Vec<LockInfo>,
    caller_ts: u64,
    bypass: &mut Vec<u64>,
) -> Result<bool, ClientError> {
    let mut clear = true;
    for lock in locks {
        if bypass.contains(&lock.lock_version) {
            continue;
        }
        let commit_ts = match check_status(world, &lock, caller_ts).await? {
            Some(LockStatus::Committed { commit_ts }) => commit_ts,
            Some(LockStatus::RolledBack) => 0,
            Some(LockStatus::Locked(l)) if caller_ts > 0 && l.min_commit_ts > caller_ts => {
                bypass.push(lock.lock_version);
                continue;
            }
            _ => {
                clear = false;
                continue;
            }
        };
        let (key, start_ts) = (lock.key.clone(), lock.lock_version);
        let done = write(world, vec![key.clone()], None, || {
            let key = key.clone();
            Box::new(move |reader: &MvccReader<'_>, _| {
                resolve_lock::resolve_lock(reader, start_ts, commit_ts, &[key]).map(|t| (t, ()))
            })
        })
        .await?;
        if let Err(e) = done {
            return Err(ClientError::Abort(format!("resolve_lock: {e}")));
        }
        world.outcome.borrow_mut().locks_resolved += 1;
    }
    Ok(clear)
}

/// The value of `key` at `ts`, resolving the locks met.
async fn get(world: &Rc<World>, key: &[u8], ts: u64) -> Result<Option<Vec<u8>>, ClientError> {
    let deadline = world.now() + CALL_STEPS;
    let mut bypass = Vec::new();
    while world.now() < deadline {
        let Some((region, node)) = world.route(key) else {
            sleep(world, 10).await;
            continue;
        };
        match node_read(world, node, region, vec![key.to_vec()], ts, bypass.clone()).await {
            Ok(Ok(mut values)) => return Ok(values.pop().flatten()),
            Ok(Err(locks)) => {
                if !resolve(world, locks, ts, &mut bypass).await? {
                    sleep(world, 10).await;
                }
            }
            Err(NodeError::Txn(e)) => return Err(ClientError::Abort(format!("read: {e}"))),
            Err(_) => sleep(world, 5).await,
        }
    }
    Err(ClientError::Timeout)
}

fn balance(v: Option<Vec<u8>>) -> i64 {
    v.and_then(|v| String::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0)
}

async fn read_all(world: &Rc<World>, ts: u64) -> Result<Vec<i64>, ClientError> {
    let mut out = Vec::new();
    for i in 0..ACCOUNTS {
        out.push(balance(get(world, &account(i), ts).await?));
    }
    Ok(out)
}

/// The leaders' resolvers (node/src/resolved_ts.rs), until the workers stop: every
/// [`RESOLVE_EVERY_STEPS`], each running store takes a timestamp and, for each region it
/// leads, clears a read barrier, looks at its memory locks and publishes the claim.
async fn resolver(world: Rc<World>) {
    while !(world.stop.get() && world.workers_running.get() == 0) {
        sleep(&world, RESOLVE_EVERY_STEPS).await;
        let nodes: Vec<NodeHandle> = world.nodes.borrow().iter().flatten().cloned().collect();
        for node in nodes {
            let mut led: Vec<Region> = {
                let meta = node.router.meta();
                meta.leaders
                    .iter()
                    .filter(|id| node.router.is_awake(**id))
                    .filter_map(|id| meta.regions.get(id).cloned())
                    .collect()
            };
            // In id order: the leader set's own order differs between runs.
            led.sort_by_key(|r| r.id);
            for region in led {
                let tso_ts = world.tso();
                let (tx, rx) = oneshot::channel();
                if node
                    .router
                    .send(region.id, ringkv_node::router::PeerMsg::LeaseBarrier(tx))
                    .is_err()
                {
                    continue;
                }
                let cleared = within(&world, NODE_WAIT_STEPS, rx).await;
                let Some(Ok(Ok(region))) = cleared else {
                    continue;
                };
                if !world.is_running(&node) {
                    continue;
                }
                let memory = node
                    .memory_locks
                    .borrow()
                    .iter()
                    .filter(|(k, _)| keys::in_range(k, &region.start_key, &region.end_key))
                    .map(|(_, &start_ts)| start_ts)
                    .min();
                let claim = if world.faults.safe_ts_ignores_locks {
                    resolved_ts::claim(node.kv.as_ref(), &region, tso_ts, None)
                        .map(|c| c.map(|c| resolved_ts::Claim { ts: tso_ts, ..c }))
                } else {
                    resolved_ts::claim(node.kv.as_ref(), &region, tso_ts, memory)
                };
                if let Ok(Some(claim)) = claim {
                    claim.publish(&node.router, region.id);
                }
            }
        }
    }
}

/// A stale read of `key` at `ts`: a random running replica serves it from its own state if
/// its safe timestamp allows, else the client reads at the leader ([`get`]). Returns the value
/// and whether a replica served it.
async fn stale_get(
    world: &Rc<World>,
    key: &[u8],
    ts: u64,
) -> Result<(Option<Vec<u8>>, bool), ClientError> {
    let replica = {
        let routes = world.routes.borrow();
        routes
            .iter()
            .find(|r| keys::in_range(key, &r.region.start_key, &r.region.end_key))
            .and_then(|info| {
                let running: Vec<NodeHandle> = world
                    .nodes
                    .borrow()
                    .iter()
                    .flatten()
                    .filter(|n| info.region.peers.iter().any(|p| p.store_id == n.store_id))
                    .cloned()
                    .collect();
                (!running.is_empty()).then(|| {
                    let i = world.rng.borrow_mut().gen_range(0..running.len());
                    (info.region.clone(), running[i].clone())
                })
            })
    };
    if let Some((region, node)) = replica {
        let (tx, rx) = oneshot::channel();
        node.router
            .send_stale_read(region.id, region.region_epoch, vec![key.to_vec()], ts, tx);
        if let (Some(Ok(Ok(_))), true) = (
            within(world, NODE_WAIT_STEPS, rx).await,
            world.is_running(&node),
        ) {
            let reader = MvccReader::new(node.kv.as_ref());
            match read::get(&reader, key, ts, read::Locks::Ignore) {
                Ok(v) => return Ok((v, true)),
                Err(e) => return Err(ClientError::Abort(format!("stale read: {e}"))),
            }
        }
    }
    Ok((get(world, key, ts).await?, false))
}

/// A stale snapshot of every account at `ts` (some steps back).
async fn stale_read_all(world: &Rc<World>, ts: u64) -> Result<Vec<i64>, ClientError> {
    let mut out = Vec::new();
    for i in 0..ACCOUNTS {
        let (value, served) = stale_get(world, &account(i), ts).await?;
        let mut o = world.outcome.borrow_mut();
        if served {
            o.stale_reads_served += 1;
        } else {
            o.stale_reads_fallen_back += 1;
        }
        drop(o);
        out.push(balance(value));
    }
    Ok(out)
}

/// Writes `pairs` in one transaction at `start_ts` (primary: the first). Returns whether it
/// committed in one phase.
async fn commit_txn(
    world: &Rc<World>,
    start_ts: u64,
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<bool, ClientError> {
    let primary = pairs[0].0.clone();
    let keys: Vec<Vec<u8>> = pairs.iter().map(|(k, _)| k.clone()).collect();
    let mutations: Vec<Mutation> = pairs
        .iter()
        .map(|(k, v)| Mutation {
            op: Op::Put as i32,
            key: k.clone(),
            value: v.clone(),
        })
        .collect();
    // One phase when every key is in one region (as the SDK decides).
    let same_region = world.route(&primary).is_some_and(|(r, _)| {
        keys.iter()
            .all(|k| keys::in_range(k, &r.start_key, &r.end_key))
    });
    let groups: Vec<Vec<Mutation>> = if same_region {
        vec![mutations.clone()]
    } else {
        mutations.iter().map(|m| vec![m.clone()]).collect()
    };
    let mut one_pc_committed = false;
    for group in &groups {
        let one_pc = same_region.then_some(start_ts);
        let deadline = world.now() + CALL_STEPS;
        loop {
            if world.now() >= deadline {
                rollback_keys(world, start_ts, &keys).await;
                return Err(ClientError::Timeout);
            }
            let group_keys: Vec<Vec<u8>> = group.iter().map(|m| m.key.clone()).collect();
            let (g, p) = (group.clone(), primary.clone());
            let ttl = LOCK_TTL_MS
                + world
                    .now()
                    .saturating_sub(ringkv_txn::timestamp::physical_ms(start_ts));
            let outcome = write(world, group_keys, one_pc, move || {
                let (g, p) = (g.clone(), p.clone());
                Box::new(move |reader: &MvccReader<'_>, one_pc_ts| {
                    prewrite::prewrite(
                        reader,
                        &prewrite::Prewrite {
                            mutations: &g,
                            primary: &p,
                            start_ts,
                            lock_ttl_ms: ttl,
                            txn_size: 2,
                            one_pc_commit_ts: one_pc_ts,
                        },
                    )
                    .map(|t| (t, ()))
                })
            })
            .await;
            match outcome {
                Ok(Ok((_, Some(_)))) => {
                    one_pc_committed = true;
                    break;
                }
                Ok(Ok((_, None))) => break,
                Ok(Err(TxnError::KeyIsLocked(locks))) => {
                    let mut bypass = Vec::new();
                    if !resolve(world, locks, 0, &mut bypass).await? {
                        sleep(world, 10).await;
                    }
                }
                Ok(Err(e)) => {
                    rollback_keys(world, start_ts, &keys).await;
                    return Err(ClientError::Abort(format!("prewrite: {e}")));
                }
                Err(e) => {
                    // Timed out, or the region split under a one-phase attempt: give up;
                    // whatever got locked is rolled back (or left to readers to resolve).
                    rollback_keys(world, start_ts, &keys).await;
                    return Err(e);
                }
            }
        }
    }
    if one_pc_committed {
        return Ok(true);
    }
    // The commit point: the primary.
    let deadline = world.now() + CALL_STEPS;
    let commit_ts = loop {
        if world.now() >= deadline {
            return Err(ClientError::Timeout);
        }
        let commit_ts = world.tso();
        let p = primary.clone();
        let outcome = write(world, vec![p.clone()], None, move || {
            let p = p.clone();
            Box::new(move |reader: &MvccReader<'_>, _| {
                commit::commit_keys(reader, start_ts, &[p], commit_ts).map(|t| (t, ()))
            })
        })
        .await?;
        match outcome {
            Ok(_) => break commit_ts,
            Err(TxnError::CommitTsExpired { .. }) => continue,
            Err(e) => return Err(ClientError::Abort(format!("commit: {e}"))),
        }
    };
    // Secondaries: one attempt each; readers resolve what is left.
    for key in keys.iter().filter(|k| **k != primary) {
        let k = key.clone();
        let _ = within(
            world,
            NODE_WAIT_STEPS,
            write(world, vec![k.clone()], None, move || {
                let k = k.clone();
                Box::new(move |reader: &MvccReader<'_>, _| {
                    commit::commit_keys(reader, start_ts, &[k], commit_ts).map(|t| (t, ()))
                })
            }),
        )
        .await;
    }
    Ok(false)
}

async fn rollback_keys(world: &Rc<World>, start_ts: u64, keys: &[Vec<u8>]) {
    for key in keys {
        let k = key.clone();
        let _ = within(
            world,
            CALL_STEPS,
            write(world, vec![k.clone()], None, move || {
                let k = k.clone();
                Box::new(move |reader: &MvccReader<'_>, _| {
                    rollback::rollback_keys(reader, start_ts, &[k]).map(|t| (t, ()))
                })
            }),
        )
        .await;
    }
}

async fn open_accounts(world: &Rc<World>) -> Result<(), ClientError> {
    for i in 0..ACCOUNTS {
        let ts = world.tso();
        commit_txn(
            world,
            ts,
            vec![(account(i), START_BALANCE.to_string().into_bytes())],
        )
        .await?;
    }
    world.opened_at.set(world.tso());
    Ok(())
}

/// One bank client: four in five operations a transfer, one a snapshot check.
async fn worker(world: Rc<World>, mut rng: StdRng) {
    while !world.stop.get() {
        if rng.gen_range(0..5) == 0 {
            // Half the snapshots are stale: some steps back, read from any replica.
            let stale_by = (rng.gen_range(0..2) == 0).then(|| rng.gen_range(1..STALE_BY_MAX_STEPS));
            let (ts, balances) = match stale_by {
                None => {
                    let ts = world.tso();
                    (ts, read_all(&world, ts).await)
                }
                Some(by) => {
                    let now = world.tso() >> LOGICAL_BITS;
                    let ts =
                        compose_ts(now.saturating_sub(by) as i64, 0).max(world.opened_at.get());
                    (ts, stale_read_all(&world, ts).await)
                }
            };
            if let Ok(balances) = balances {
                let sum: i64 = balances.iter().sum();
                let mut outcome = world.outcome.borrow_mut();
                outcome.snapshots += 1;
                outcome.stale_snapshots += u64::from(stale_by.is_some());
                if sum != TOTAL {
                    let kind = if stale_by.is_some() {
                        "stale snapshot"
                    } else {
                        "snapshot"
                    };
                    outcome.violations.push(format!(
                        "{kind} at {ts} (step {}) sums to {sum}, not {TOTAL}: {balances:?}",
                        world.now()
                    ));
                }
            }
            continue;
        }
        let from = rng.gen_range(0..ACCOUNTS);
        let to = (from + rng.gen_range(1..ACCOUNTS)) % ACCOUNTS;
        let amount = rng.gen_range(1..20);
        let start_ts = world.tso();
        let transfer = async {
            let a = balance(get(&world, &account(from), start_ts).await?);
            let b = balance(get(&world, &account(to), start_ts).await?);
            commit_txn(
                &world,
                start_ts,
                vec![
                    (account(from), (a - amount).to_string().into_bytes()),
                    (account(to), (b + amount).to_string().into_bytes()),
                ],
            )
            .await
        };
        match transfer.await {
            Ok(one_pc) => {
                let mut o = world.outcome.borrow_mut();
                o.transfers += 1;
                o.one_phase += u64::from(one_pc);
            }
            Err(e) => {
                let kind = match e {
                    ClientError::Abort(reason) => {
                        reason.split(':').next().unwrap_or_default().to_string()
                    }
                    ClientError::Timeout => "timeout".into(),
                    ClientError::Regroup => "regions changed".into(),
                };
                let mut o = world.outcome.borrow_mut();
                o.aborted += 1;
                *o.abort_reasons.entry(kind).or_default() += 1;
            }
        }
        sleep(&world, rng.gen_range(1..20)).await;
    }
    world.workers_running.set(world.workers_running.get() - 1);
}
