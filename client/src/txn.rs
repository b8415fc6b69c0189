//! The transactional API: snapshot-isolated multi-key transactions over any keys in any
//! regions (Percolator; docs/design.md, "Transactions").
//!
//! A [`Transaction`] reads at its start_ts and buffers its writes. [`Transaction::commit`]
//! prewrites every key (grouped by region, in parallel) with the first key as the primary,
//! takes a commit_ts, commits the primary (the commit point) and then the others in the
//! background. All keys in one region: one-phase commit, one Raft write and no locks. Readers
//! and writers that meet a lock ask the lock's primary what became of its transaction, roll it
//! back if it expired, and resolve the lock. A transaction waiting to commit keeps its primary
//! lock alive with heartbeats.

use crate::pd::PdClient;
use crate::raw::{BoxFut, RawClient, RawConfig};
use crate::{ClientError, Result};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use ringkv_proto::keys;
use ringkv_proto::kvrpcpb::*;
use ringkv_proto::limits::{check_user_key, check_user_range, check_value};
use ringkv_proto::tso::{physical_ms, LOGICAL_BITS};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// Options of a [`TransactionClient`].
#[derive(Debug, Clone)]
pub struct TxnConfig {
    /// How long one call (a read, a commit) may take, retries and waiting on other
    /// transactions' locks included. Default 10 s.
    pub timeout: Duration,
    /// How long one attempt at one node may take. Default 3 s.
    pub attempt_timeout: Duration,
    /// The keyspace all keys belong to. Default: keyspace 0, hash-ordered.
    pub keyspace: Keyspace,
    /// How long a transaction's locks live without a heartbeat, counted from its start_ts
    /// (the time already spent before the commit is added). Readers roll back a transaction
    /// whose locks outlived it. Default 3000 ms.
    pub lock_ttl_ms: u64,
    /// How often a committing transaction extends its primary lock. Default 1 s.
    pub heartbeat_interval: Duration,
    /// Commit in one phase when every key is in one region. Default true.
    pub try_one_pc: bool,
    /// How often the client tells the placement driver the oldest start_ts it still reads
    /// at, so GC does not pass it. Default 10 s.
    pub gc_keepalive_interval: Duration,
    /// Attempts [`TransactionClient::run`] makes at most. Default 20.
    pub run_attempts_max: usize,
    /// Bytes (keys and values) one transaction may buffer; past it a write fails with
    /// `InvalidArgument` rather than exhausting memory here and on the nodes. Default 100 MiB.
    pub txn_size_bytes_max: usize,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(3),
            keyspace: keys::default_keyspace(),
            lock_ttl_ms: 3_000,
            heartbeat_interval: Duration::from_secs(1),
            try_one_pc: true,
            gc_keepalive_interval: Duration::from_secs(10),
            run_attempts_max: 20,
            txn_size_bytes_max: 100 * 1024 * 1024,
        }
    }
}

/// A client of the transactional API. Cheap to clone; clones share connections, caches and
/// the timestamp batcher.
#[derive(Clone)]
pub struct TransactionClient {
    inner: Arc<Inner>,
}

struct Inner {
    raw: RawClient,
    config: TxnConfig,
    tso: crate::TsoBatcher,
    /// start_ts of the transactions alive in this client, with their count.
    active: Mutex<BTreeMap<u64, usize>>,
    service_id: String,
}

/// A transaction's lock TTL: its age plus the configured TTL, so a live transaction's locks
/// outlast it, capped at what nodes accept (`LOCK_TTL_MS_MAX`): past that its locks can
/// expire and readers may roll it back.
fn lock_ttl_ms(started: Instant, ttl_ms: u64) -> u64 {
    (started.elapsed().as_millis() as u64)
        .saturating_add(ttl_ms)
        .min(ringkv_proto::limits::LOCK_TTL_MS_MAX)
}

fn rule(check: std::result::Result<(), String>) -> Result<()> {
    check.map_err(ClientError::InvalidArgument)
}

/// The locks of one transaction met by a read: its primary, the longest TTL, the keys.
type TxnLocks = (Vec<u8>, u64, Vec<Vec<u8>>);

/// What became of a transaction, as its primary says.
enum TxnStatus {
    Committed(u64),
    RolledBack,
    /// Alive; its min_commit_ts (pushed past the caller when it asked to).
    Alive {
        min_commit_ts: u64,
    },
    /// No trace yet (its primary's prewrite may still be on the way).
    Unknown,
}

impl TransactionClient {
    pub async fn connect(pd_endpoints: &[impl AsRef<str>]) -> Result<Self> {
        Self::connect_with_config(pd_endpoints, TxnConfig::default()).await
    }

    pub async fn connect_with_config(
        pd_endpoints: &[impl AsRef<str>],
        config: TxnConfig,
    ) -> Result<Self> {
        let pd = PdClient::connect(pd_endpoints).await?;
        Ok(Self::with_pd(pd, config))
    }

    /// A client over an existing placement client. Must be called inside a tokio runtime (it
    /// starts the timestamp batcher and the GC keepalive).
    pub fn with_pd(pd: PdClient, config: TxnConfig) -> Self {
        let raw = RawClient::with_pd(
            pd.clone(),
            RawConfig {
                timeout: config.timeout,
                attempt_timeout: config.attempt_timeout,
                keyspace: config.keyspace,
                replica_read: false,
            },
        );
        let service_id = format!("txn-client-{:016x}", rand::random::<u64>());
        let inner = Arc::new(Inner {
            raw,
            tso: crate::TsoBatcher::start(pd),
            config,
            active: Mutex::new(BTreeMap::new()),
            service_id,
        });
        tokio::spawn(gc_keepalive(Arc::downgrade(&inner)));
        TransactionClient { inner }
    }

    pub fn pd(&self) -> &PdClient {
        self.inner.raw.pd()
    }

    pub fn config(&self) -> &TxnConfig {
        &self.inner.config
    }

    /// A timestamp from the TSO (batched with concurrent requests).
    pub async fn current_ts(&self) -> Result<u64> {
        self.inner.tso.get().await
    }

    /// Starts a transaction: reads see the data committed before this moment.
    pub async fn begin(&self) -> Result<Transaction> {
        let start_ts = self.current_ts().await?;
        Ok(self.transaction(start_ts, false))
    }

    /// A read-only snapshot of the data committed at or before `ts`, read by *stale reads*:
    /// any replica (the nearest follower first) serves it from its own state with no leader
    /// contact, once it knows no transaction can still commit at or below `ts` (its safe
    /// timestamp, which leaders advance every `resolved_ts_interval_ms`); a region whose
    /// replicas are not there yet is read at its leader instead, with the same result. `ts`
    /// must not be in the future (a snapshot there could still change) nor below the GC safe
    /// point. Writing to it is refused.
    pub async fn stale_snapshot_at(&self, ts: u64) -> Result<Transaction> {
        let now = self.current_ts().await?;
        if ts == 0 || ts > now {
            return Err(ClientError::InvalidArgument(format!(
                "stale snapshot at {ts}: the timestamp must be between 1 and the present ({now}); a snapshot in the future could still change"
            )));
        }
        Ok(self.transaction(ts, true))
    }

    /// [`stale_snapshot_at`](Self::stale_snapshot_at) the data as it was `staleness` ago. The
    /// staler, the likelier every replica can serve it (a second or two is usually enough
    /// with the default `resolved_ts_interval_ms`).
    pub async fn stale_snapshot(&self, staleness: Duration) -> Result<Transaction> {
        let now = self.current_ts().await?;
        let back = u64::try_from(staleness.as_millis()).unwrap_or(u64::MAX);
        let physical = physical_ms(now)
            .checked_sub(back)
            .filter(|&p| p > 0)
            .ok_or_else(|| {
                ClientError::InvalidArgument(format!(
                    "stale snapshot {staleness:?} ago is before the cluster's clock began"
                ))
            })?;
        Ok(self.transaction(physical << LOGICAL_BITS, true))
    }

    fn transaction(&self, start_ts: u64, stale: bool) -> Transaction {
        *self.inner.active.lock().entry(start_ts).or_default() += 1;
        Transaction {
            client: self.clone(),
            start_ts,
            started: Instant::now(),
            buffer: BTreeMap::new(),
            state: TxnState::Active,
            bypass: HashSet::new(),
            buffered_bytes: 0,
            stale,
        }
    }

    /// Runs `body` in a transaction and commits it, starting over with a new transaction when
    /// it conflicts with another one (up to [`TxnConfig::run_attempts_max`] times, with
    /// backoff). `body` may run more than once: keep side effects out of it.
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv_client::TransactionClient) -> ringkv_client::Result<()> {
    /// client
    ///     .run(|txn| {
    ///         Box::pin(async move {
    ///             let n: u64 = txn.get(b"counter".to_vec()).await?
    ///                 .map(|v| String::from_utf8_lossy(&v).parse().unwrap_or(0))
    ///                 .unwrap_or(0);
    ///             txn.put(b"counter".to_vec(), (n + 1).to_string())?;
    ///             Ok(())
    ///         })
    ///     })
    ///     .await
    /// # }
    /// ```
    pub async fn run<T, F>(&self, mut body: F) -> Result<T>
    where
        F: for<'a> FnMut(&'a mut Transaction) -> BoxFuture<'a, Result<T>>,
    {
        let mut last = None;
        let mut pause = Duration::from_millis(2);
        for _ in 0..self.inner.config.run_attempts_max.max(1) {
            let mut txn = self.begin().await?;
            let outcome = match body(&mut txn).await {
                Ok(value) => txn.commit().await.map(|_| value),
                Err(e) => {
                    txn.rollback();
                    Err(e)
                }
            };
            match outcome {
                Err(e) if e.is_txn_conflict() => last = Some(e),
                other => return other,
            }
            let jitter = rand::random::<f64>() * 0.5 + 0.5;
            tokio::time::sleep(pause.mul_f64(jitter)).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
        Err(last.expect("at least one attempt"))
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.inner.config.timeout
    }

    /// The status of transaction `lock_ts` on its primary as of `current_ts`, pushing its
    /// min_commit_ts past `caller_start_ts` (0: no push) and rolling it back when its lock
    /// (`lock_ttl_ms`) has expired.
    async fn check_txn_status(
        &self,
        primary: &[u8],
        lock_ts: u64,
        lock_ttl_ms: u64,
        caller_start_ts: u64,
        current_ts: u64,
    ) -> Result<TxnStatus> {
        let expired = physical_ms(lock_ts).saturating_add(lock_ttl_ms) <= physical_ms(current_ts);
        let primary_key = primary.to_vec();
        let responses = self
            .inner
            .raw
            .run_batch(
                "txn_check_status",
                vec![primary_key.clone()],
                |k| k,
                move |mut c, context, keys| -> BoxFut<'static, _> {
                    Box::pin(async move {
                        let r = c
                            .kv_check_txn_status(KvCheckTxnStatusRequest {
                                context: Some(context),
                                primary_key: keys[0].clone(),
                                lock_ts,
                                caller_start_ts,
                                current_ts,
                                rollback_if_not_exist: expired,
                            })
                            .await?
                            .into_inner();
                        Ok((r.region_error.clone(), r))
                    })
                },
            )
            .await?;
        let r = responses
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Server("check_txn_status returned no answer".into()))?;
        if let Some(e) = r.error {
            if e.txn_not_found.is_some() {
                return Ok(TxnStatus::Unknown);
            }
            return Err(ClientError::Server(format!(
                "check_txn_status of {lock_ts}: {e:?}"
            )));
        }
        Ok(if r.commit_version > 0 {
            TxnStatus::Committed(r.commit_version)
        } else if r.rolled_back {
            TxnStatus::RolledBack
        } else {
            TxnStatus::Alive {
                min_commit_ts: r.lock_info.map(|l| l.min_commit_ts).unwrap_or_default(),
            }
        })
    }

    /// Commits (commit_ts > 0) or rolls back the locks of `start_ts` on `keys`.
    async fn resolve(&self, start_ts: u64, commit_ts: u64, keys: Vec<Vec<u8>>) -> Result<()> {
        let responses = self
            .inner
            .raw
            .run_batch(
                "txn_resolve_lock",
                keys,
                |k| k,
                move |mut c, context, keys| -> BoxFut<'static, _> {
                    Box::pin(async move {
                        let r = c
                            .kv_resolve_lock(KvResolveLockRequest {
                                context: Some(context),
                                start_version: start_ts,
                                commit_version: commit_ts,
                                keys,
                            })
                            .await?
                            .into_inner();
                        Ok((r.region_error.clone(), r))
                    })
                },
            )
            .await?;
        for r in responses {
            if let Some(e) = r.error {
                return Err(ClientError::Server(format!(
                    "resolving locks of {start_ts}: {e:?}"
                )));
            }
        }
        Ok(())
    }

    /// Deals with `locks` met by a reader at `caller_start_ts` (0: a writer, which pushes
    /// nothing): resolves those of finished transactions, rolls back expired ones, and adds
    /// to `bypass` the live ones pushed past the reader. Returns whether every lock is out of
    /// the way (else the caller waits a little and tries again).
    async fn resolve_locks(
        &self,
        locks: Vec<LockInfo>,
        caller_start_ts: u64,
        bypass: &mut HashSet<u64>,
    ) -> Result<bool> {
        // start_ts → (primary, longest TTL seen, locked keys)
        let mut by_txn: BTreeMap<u64, TxnLocks> = BTreeMap::new();
        for lock in locks {
            if bypass.contains(&lock.lock_version) {
                continue;
            }
            let entry = by_txn
                .entry(lock.lock_version)
                .or_insert_with(|| (lock.primary_lock.clone(), lock.lock_ttl, Vec::new()));
            entry.1 = entry.1.max(lock.lock_ttl);
            entry.2.push(lock.key);
        }
        let mut clear = true;
        for (start_ts, (primary, ttl, keys)) in by_txn {
            let now = self.current_ts().await?;
            match self
                .check_txn_status(&primary, start_ts, ttl, caller_start_ts, now)
                .await?
            {
                TxnStatus::Committed(commit_ts) => self.resolve(start_ts, commit_ts, keys).await?,
                TxnStatus::RolledBack => self.resolve(start_ts, 0, keys).await?,
                TxnStatus::Alive { min_commit_ts }
                    if caller_start_ts > 0 && min_commit_ts > caller_start_ts =>
                {
                    bypass.insert(start_ts);
                }
                TxnStatus::Alive { .. } | TxnStatus::Unknown => clear = false,
            }
        }
        Ok(clear)
    }

    /// Runs a read (`attempt`, given the locks to bypass) until it meets no lock, resolving
    /// what it meets, within the deadline.
    async fn read_resolving<T>(
        &self,
        operation: &'static str,
        read_ts: u64,
        bypass: &mut HashSet<u64>,
        mut attempt: impl FnMut(Vec<u64>) -> BoxFuture<'static, Result<(Vec<KeyError>, T)>>,
    ) -> Result<T> {
        let deadline = self.deadline();
        let mut pause = Duration::from_millis(5);
        loop {
            let (errors, value) = attempt(bypass.iter().copied().collect()).await?;
            if errors.is_empty() {
                return Ok(value);
            }
            let mut locks = Vec::new();
            for e in errors {
                if let Some(lock) = e.locked {
                    locks.push(lock);
                } else if e.gc_safe_point_passed > 0 {
                    return Err(ClientError::TxnTooOld {
                        start_ts: read_ts,
                        safe_point: e.gc_safe_point_passed,
                    });
                } else {
                    return Err(ClientError::Server(format!("{operation}: {e:?}")));
                }
            }
            let clear = self.resolve_locks(locks, read_ts, bypass).await?;
            if !clear {
                if Instant::now() + pause >= deadline {
                    return Err(self
                        .inner
                        .raw
                        .timeout(operation, "keys stay locked by a live transaction".into()));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
        }
    }
}

/// Tells the placement driver, while this client has transactions, the oldest start_ts it
/// still reads at; stops when the client is dropped.
async fn gc_keepalive(inner: Weak<Inner>) {
    let mut registered = false;
    loop {
        let interval = match inner.upgrade() {
            Some(i) => i.config.gc_keepalive_interval,
            None => return,
        };
        tokio::time::sleep(interval).await;
        let Some(inner) = inner.upgrade() else { return };
        let oldest = inner.active.lock().keys().next().copied();
        let ttl_ms = (interval.as_millis() as i64).saturating_mul(3);
        let result = match oldest {
            Some(ts) => {
                registered = true;
                inner
                    .raw
                    .pd()
                    .update_service_gc_safe_point(&inner.service_id, ts, ttl_ms)
                    .await
            }
            None if registered => {
                registered = false;
                inner
                    .raw
                    .pd()
                    .update_service_gc_safe_point(&inner.service_id, 0, 0)
                    .await
            }
            None => continue,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not register the client's oldest transaction with GC");
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxnState {
    Active,
    Committed(u64),
    RolledBack,
}

/// A transaction. Reads see the data committed before it began, plus its own writes; writes
/// are buffered until [`commit`](Transaction::commit). Dropping it without committing rolls
/// it back (nothing was written).
pub struct Transaction {
    client: TransactionClient,
    start_ts: u64,
    started: Instant,
    /// Encoded key → the buffered mutation.
    buffer: BTreeMap<Vec<u8>, (Op, Vec<u8>)>,
    state: TxnState,
    /// Transactions whose locks do not affect this one's reads (pushed past it, or known).
    bypass: HashSet<u64>,
    /// Bytes of keys and values in `buffer`.
    buffered_bytes: usize,
    /// A read-only stale snapshot ([`TransactionClient::stale_snapshot_at`]).
    stale: bool,
}

impl Drop for Transaction {
    fn drop(&mut self) {
        let mut active = self.client.inner.active.lock();
        if let Some(n) = active.get_mut(&self.start_ts) {
            *n -= 1;
            if *n == 0 {
                active.remove(&self.start_ts);
            }
        }
    }
}

impl Transaction {
    pub fn start_ts(&self) -> u64 {
        self.start_ts
    }

    fn check_active(&self) -> Result<()> {
        match self.state {
            TxnState::Active => Ok(()),
            TxnState::Committed(_) => Err(ClientError::TxnFinished {
                start_ts: self.start_ts,
                state: "committed",
            }),
            TxnState::RolledBack => Err(ClientError::TxnFinished {
                start_ts: self.start_ts,
                state: "rolled back",
            }),
        }
    }

    /// The raw client this transaction reads through: stale reads for a stale snapshot.
    fn reader(&self) -> RawClient {
        if self.stale {
            self.client.inner.raw.with_stale_reads()
        } else {
            self.client.inner.raw.clone()
        }
    }

    /// Whether this is a read-only stale snapshot.
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    fn encode(&self, key: &[u8]) -> Vec<u8> {
        self.client.inner.raw.encode(key)
    }

    /// Buffers a mutation of `encoded`, within the transaction's size limit.
    fn buffer(&mut self, encoded: Vec<u8>, op: Op, value: Vec<u8>) -> Result<()> {
        if self.stale {
            return Err(ClientError::InvalidArgument(format!(
                "the stale snapshot at {} is read-only; begin() a transaction to write",
                self.start_ts
            )));
        }
        let added = encoded.len() + value.len();
        let removed = self
            .buffer
            .get(&encoded)
            .map_or(0, |(_, v)| encoded.len() + v.len());
        let size = self.buffered_bytes - removed + added;
        let max = self.client.inner.config.txn_size_bytes_max;
        if size > max {
            return Err(ClientError::InvalidArgument(format!(
                "transaction {} would hold {size} bytes, over txn_size_bytes_max = {max}; split it into smaller transactions",
                self.start_ts
            )));
        }
        self.buffered_bytes = size;
        self.buffer.insert(encoded, (op, value));
        Ok(())
    }

    /// The value of `key` as this transaction sees it.
    pub async fn get(&mut self, key: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>> {
        self.check_active()?;
        let key = key.into();
        rule(check_user_key(&key))?;
        let encoded = self.encode(&key);
        match self.buffer.get(&encoded) {
            Some((Op::Put | Op::Insert, v)) => return Ok(Some(v.clone())),
            Some((Op::Delete, _)) => return Ok(None),
            _ => {}
        }
        let mut found = self.read_batch(vec![encoded]).await?;
        Ok(found.pop().map(|(_, v)| v))
    }

    /// The values of the keys that exist, in key order of `keys` as given.
    pub async fn batch_get(&mut self, keys: Vec<Vec<u8>>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.check_active()?;
        let mut out: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        let mut to_read = Vec::new();
        for key in &keys {
            rule(check_user_key(key))?;
            let encoded = self.encode(key);
            match self.buffer.get(&encoded) {
                Some((Op::Put | Op::Insert, v)) => {
                    out.insert(key.clone(), Some(v.clone()));
                }
                Some((Op::Delete, _)) => {
                    out.insert(key.clone(), None);
                }
                _ => to_read.push(encoded),
            }
        }
        to_read.sort();
        to_read.dedup();
        if !to_read.is_empty() {
            for (encoded, value) in self.read_batch(to_read).await? {
                let user = keys::decode(&encoded)
                    .map(|(_, u)| u.to_vec())
                    .map_err(|e| ClientError::Server(format!("node returned a bad key: {e}")))?;
                out.insert(user, Some(value));
            }
        }
        Ok(keys
            .into_iter()
            .filter_map(|k| out.get(&k).cloned().flatten().map(|v| (k, v)))
            .collect())
    }

    /// Reads encoded `keys` at start_ts: (encoded key, value) of those that exist.
    async fn read_batch(&mut self, keys: Vec<Vec<u8>>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let client = self.client.clone();
        let version = self.start_ts;
        let raw = self.reader();
        let mut bypass = std::mem::take(&mut self.bypass);
        let outcome = client
            .read_resolving("txn_get", version, &mut bypass, move |resolved| {
                let raw = raw.clone();
                let keys = keys.clone();
                Box::pin(async move {
                    let responses = raw
                        .run_batch(
                            "txn_get",
                            keys,
                            |k| k,
                            move |mut c, context, keys| -> BoxFut<'static, _> {
                                let resolved = resolved.clone();
                                Box::pin(async move {
                                    let r = c
                                        .kv_batch_get(KvBatchGetRequest {
                                            context: Some(context),
                                            keys,
                                            version,
                                            resolved_locks: resolved,
                                        })
                                        .await?
                                        .into_inner();
                                    Ok((r.region_error.clone(), r))
                                })
                            },
                        )
                        .await?;
                    let mut errors = Vec::new();
                    let mut pairs = Vec::new();
                    for r in responses {
                        errors.extend(r.errors);
                        pairs.extend(r.pairs.into_iter().map(|p| (p.key, p.value)));
                    }
                    Ok((errors, pairs))
                })
            })
            .await;
        self.bypass = bypass;
        outcome
    }

    /// Up to `limit` keys in `[start, end)` (user keys; empty end: unbounded) as this
    /// transaction sees them, in key order.
    pub async fn scan(
        &mut self,
        start: impl Into<Vec<u8>>,
        end: impl Into<Vec<u8>>,
        limit: u32,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.check_active()?;
        let (start, end) = (start.into(), end.into());
        rule(check_user_range(&start, &end))?;
        rule(ringkv_proto::limits::check_scan_limit(limit))?;
        let in_range = |u: &[u8]| u >= start.as_slice() && (end.is_empty() || u < end.as_slice());
        // Buffered deletes may hide keys the nodes return: ask for that many more.
        let mine: Vec<(Vec<u8>, Op, Vec<u8>)> = self
            .buffer
            .iter()
            .filter_map(|(enc, (op, v))| {
                let user = keys::decode(enc).ok()?.1.to_vec();
                in_range(&user).then_some((user, *op, v.clone()))
            })
            .collect();
        let extra = mine.iter().filter(|(_, op, _)| *op == Op::Delete).count() as u32;
        let fetch = limit
            .saturating_add(extra)
            .min(ringkv_proto::limits::SCAN_LIMIT_MAX);
        let client = self.client.clone();
        let raw = self.reader();
        let version = self.start_ts;
        let keyspace = client.inner.config.keyspace;
        let mut bypass = std::mem::take(&mut self.bypass);
        let (s, e) = (start.clone(), end.clone());
        let outcome = client
            .read_resolving("txn_scan", version, &mut bypass, move |resolved| {
                let raw = raw.clone();
                let (s, e) = (s.clone(), e.clone());
                Box::pin(async move {
                    let responses = raw
                        .for_each_region(
                            "txn_scan",
                            &s.clone(),
                            &e.clone(),
                            move |mut c, context| {
                                let req = KvScanRequest {
                                    context: Some(context),
                                    keyspace: Some(keyspace),
                                    start_key: s.clone(),
                                    end_key: e.clone(),
                                    limit: fetch,
                                    version,
                                    key_only: false,
                                    resolved_locks: resolved.clone(),
                                };
                                Box::pin(async move {
                                    let r = c.kv_scan(req).await?.into_inner();
                                    Ok((r.region_error.clone(), r))
                                })
                            },
                        )
                        .await?;
                    let mut errors = Vec::new();
                    let mut pairs = Vec::new();
                    for r in responses {
                        errors.extend(r.errors);
                        pairs.extend(r.pairs.into_iter().map(|p| (p.key, p.value)));
                    }
                    Ok((errors, pairs))
                })
            })
            .await;
        self.bypass = bypass;
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = outcome?.into_iter().collect();
        for (user, op, value) in mine {
            match op {
                Op::Put | Op::Insert => {
                    merged.insert(user, value);
                }
                Op::Delete => {
                    merged.remove(&user);
                }
                _ => {}
            }
        }
        Ok(merged.into_iter().take(limit as usize).collect())
    }

    /// Writes `value` at `key` when the transaction commits.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<()> {
        self.check_active()?;
        let (key, value) = (key.into(), value.into());
        rule(check_user_key(&key))?;
        rule(check_value(&value))?;
        let encoded = self.encode(&key);
        // An insert stays an insert: the key must still not exist at commit.
        let op = match self.buffer.get(&encoded) {
            Some((Op::Insert, _)) => Op::Insert,
            _ => Op::Put,
        };
        self.buffer(encoded, op, value)
    }

    /// Writes `value` at `key` when the transaction commits, which then fails with
    /// [`ClientError::KeyExists`] if the key has a value.
    pub fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<()> {
        self.check_active()?;
        let (key, value) = (key.into(), value.into());
        rule(check_user_key(&key))?;
        rule(check_value(&value))?;
        let encoded = self.encode(&key);
        let op = match self.buffer.get(&encoded) {
            Some((Op::Put | Op::Insert, _)) => return Err(ClientError::KeyExists { key }),
            // Deleted earlier in this transaction: the key is free, whatever was before.
            Some((Op::Delete, _)) => Op::Put,
            _ => Op::Insert,
        };
        self.buffer(encoded, op, value)
    }

    /// Deletes `key` when the transaction commits.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> Result<()> {
        self.check_active()?;
        let key = key.into();
        rule(check_user_key(&key))?;
        let encoded = self.encode(&key);
        self.buffer(encoded, Op::Delete, Vec::new())
    }

    /// Makes the commit conflict with any other transaction that writes these keys meanwhile,
    /// without changing them (guards what this transaction read).
    pub fn lock_keys(&mut self, keys: impl IntoIterator<Item = Vec<u8>>) -> Result<()> {
        self.check_active()?;
        for key in keys {
            rule(check_user_key(&key))?;
            let encoded = self.encode(&key);
            if !self.buffer.contains_key(&encoded) {
                self.buffer(encoded, Op::Lock, Vec::new())?;
            }
        }
        Ok(())
    }

    /// Drops the buffered writes; the transaction is over.
    pub fn rollback(&mut self) {
        if self.state == TxnState::Active {
            self.buffer.clear();
            self.buffered_bytes = 0;
            self.state = TxnState::RolledBack;
        }
    }

    /// Commits: every write becomes visible at once, at the returned commit_ts. A read-only
    /// transaction commits at its start_ts.
    pub async fn commit(&mut self) -> Result<u64> {
        self.check_active()?;
        if self.buffer.is_empty() {
            self.state = TxnState::Committed(self.start_ts);
            return Ok(self.start_ts);
        }
        let mutations: Vec<Mutation> = std::mem::take(&mut self.buffer)
            .into_iter()
            .map(|(key, (op, value))| Mutation {
                op: op as i32,
                key,
                value,
            })
            .collect();
        let outcome = self.commit_mutations(mutations).await;
        self.state = match outcome {
            Ok(commit_ts) => TxnState::Committed(commit_ts),
            Err(_) => TxnState::RolledBack,
        };
        outcome
    }

    async fn commit_mutations(&mut self, mutations: Vec<Mutation>) -> Result<u64> {
        let client = self.client.clone();
        let primary = mutations[0].key.clone();
        let keys: Vec<Vec<u8>> = mutations.iter().map(|m| m.key.clone()).collect();
        match self.prewrite(&client, &primary, mutations).await {
            Ok(Some(one_pc_commit_ts)) => return Ok(one_pc_commit_ts),
            Ok(None) => {}
            Err(e) => {
                // Clean up whatever got locked, in the background; readers would otherwise
                // wait for the locks to expire.
                let (c, start_ts) = (client.clone(), self.start_ts);
                tokio::spawn(async move {
                    if let Err(e) = c.rollback_keys(start_ts, keys).await {
                        tracing::debug!(start_ts, error = %e, "rollback after a failed prewrite");
                    }
                });
                return Err(e);
            }
        }
        let heartbeat = tokio::spawn(heartbeat(
            client.clone(),
            primary.clone(),
            self.start_ts,
            self.started,
        ));
        let committed = self.commit_primary(&client, &primary).await;
        heartbeat.abort();
        let commit_ts = committed?;
        let secondaries: Vec<Vec<u8>> = keys.into_iter().filter(|k| *k != primary).collect();
        if !secondaries.is_empty() {
            let (c, start_ts) = (client.clone(), self.start_ts);
            tokio::spawn(async move {
                if let Err(e) = c.commit_keys(start_ts, commit_ts, secondaries).await {
                    tracing::debug!(start_ts, error = %e, "committing secondaries; readers will resolve them");
                }
            });
        }
        Ok(commit_ts)
    }

    /// Prewrites every mutation, resolving other transactions' locks on the way. Returns the
    /// commit_ts when it was a one-phase commit.
    async fn prewrite(
        &mut self,
        client: &TransactionClient,
        primary: &[u8],
        mutations: Vec<Mutation>,
    ) -> Result<Option<u64>> {
        let start_ts = self.start_ts;
        let total = mutations.len();
        let try_one_pc = client.inner.config.try_one_pc;
        let deadline = client.deadline();
        let mut pending = mutations;
        let mut pause = Duration::from_millis(5);
        let mut bypass = HashSet::new();
        loop {
            let lock_ttl = lock_ttl_ms(self.started, client.inner.config.lock_ttl_ms);
            let primary_lock = primary.to_vec();
            let responses = client
                .inner
                .raw
                .run_batch_weighted(
                    "txn_prewrite",
                    pending.clone(),
                    |m| &m.key,
                    |m| m.key.len() + m.value.len(),
                    move |mut c, context, group| -> BoxFut<'static, _> {
                        let primary_lock = primary_lock.clone();
                        Box::pin(async move {
                            // A group holding every key is all in one region.
                            let one_pc = try_one_pc && group.len() == total;
                            let r = c
                                .kv_prewrite(KvPrewriteRequest {
                                    context: Some(context),
                                    mutations: group.clone(),
                                    primary_lock,
                                    start_version: start_ts,
                                    lock_ttl,
                                    txn_size: total as u64,
                                    try_one_pc: one_pc,
                                })
                                .await?
                                .into_inner();
                            Ok((r.region_error.clone(), (group, r)))
                        })
                    },
                )
                .await?;
            let mut retry = Vec::new();
            let mut locks = Vec::new();
            for (group, r) in responses {
                if r.one_pc_commit_ts > 0 {
                    return Ok(Some(r.one_pc_commit_ts));
                }
                if r.errors.is_empty() {
                    continue;
                }
                for e in r.errors {
                    if let Some(lock) = e.locked {
                        locks.push(lock);
                    } else if let Some(c) = e.conflict {
                        return Err(ClientError::WriteConflict {
                            start_ts,
                            key: user_key(&c.key),
                            reason: if c.conflict_start_ts == 0 {
                                "it was rolled back by another client (its locks expired)".into()
                            } else {
                                format!(
                                    "transaction {} committed it at {}",
                                    c.conflict_start_ts, c.conflict_commit_ts
                                )
                            },
                        });
                    } else if let Some(a) = e.already_exist {
                        return Err(ClientError::KeyExists {
                            key: user_key(&a.key),
                        });
                    } else {
                        return Err(ClientError::Server(format!("prewrite: {e:?}")));
                    }
                }
                retry.extend(group);
            }
            if retry.is_empty() {
                return Ok(None);
            }
            let clear = client.resolve_locks(locks, 0, &mut bypass).await?;
            pending = retry;
            if !clear {
                if Instant::now() + pause >= deadline {
                    return Err(client.inner.raw.timeout(
                        "txn_prewrite",
                        "keys stay locked by a live transaction".into(),
                    ));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
        }
    }

    /// Commits the primary key: the commit point. Retries with a later commit_ts when a
    /// reader pushed the transaction's min_commit_ts.
    async fn commit_primary(&self, client: &TransactionClient, primary: &[u8]) -> Result<u64> {
        let start_ts = self.start_ts;
        loop {
            let commit_ts = client.current_ts().await?;
            let responses = match client
                .inner
                .raw
                .run_batch(
                    "txn_commit",
                    vec![primary.to_vec()],
                    |k| k,
                    move |mut c, context, keys| -> BoxFut<'static, _> {
                        Box::pin(async move {
                            let r = c
                                .kv_commit(KvCommitRequest {
                                    context: Some(context),
                                    start_version: start_ts,
                                    keys,
                                    commit_version: commit_ts,
                                })
                                .await?
                                .into_inner();
                            Ok((r.region_error.clone(), r))
                        })
                    },
                )
                .await
            {
                Ok(r) => r,
                Err(ClientError::Timeout { last_error, .. }) => {
                    return Err(ClientError::TxnUndetermined {
                        start_ts,
                        detail: last_error,
                    })
                }
                Err(e) => return Err(e),
            };
            let Some(error) = responses.into_iter().find_map(|r| r.error) else {
                return Ok(commit_ts);
            };
            if error.commit_ts_expired.is_some() {
                continue;
            }
            if error.txn_lock_not_found.is_some() {
                return Err(ClientError::TxnAborted {
                    start_ts,
                    reason: "its locks expired and another client rolled it back".into(),
                });
            }
            return Err(ClientError::Server(format!(
                "commit of transaction {start_ts}: {error:?}"
            )));
        }
    }
}

fn user_key(encoded: &[u8]) -> Vec<u8> {
    keys::decode(encoded)
        .map(|(_, u)| u.to_vec())
        .unwrap_or_else(|_| encoded.to_vec())
}

impl TransactionClient {
    async fn commit_keys(&self, start_ts: u64, commit_ts: u64, keys: Vec<Vec<u8>>) -> Result<()> {
        self.inner
            .raw
            .run_batch(
                "txn_commit_secondaries",
                keys,
                |k| k,
                move |mut c, context, keys| -> BoxFut<'static, _> {
                    Box::pin(async move {
                        let r = c
                            .kv_commit(KvCommitRequest {
                                context: Some(context),
                                start_version: start_ts,
                                keys,
                                commit_version: commit_ts,
                            })
                            .await?
                            .into_inner();
                        Ok((r.region_error.clone(), r))
                    })
                },
            )
            .await?;
        Ok(())
    }

    async fn rollback_keys(&self, start_ts: u64, keys: Vec<Vec<u8>>) -> Result<()> {
        self.inner
            .raw
            .run_batch(
                "txn_rollback",
                keys,
                |k| k,
                move |mut c, context, keys| -> BoxFut<'static, _> {
                    Box::pin(async move {
                        let r = c
                            .kv_batch_rollback(KvBatchRollbackRequest {
                                context: Some(context),
                                start_version: start_ts,
                                keys,
                            })
                            .await?
                            .into_inner();
                        Ok((r.region_error.clone(), r))
                    })
                },
            )
            .await?;
        Ok(())
    }
}

/// Keeps the primary lock of a committing transaction alive until aborted.
async fn heartbeat(client: TransactionClient, primary: Vec<u8>, start_ts: u64, started: Instant) {
    let interval = client.inner.config.heartbeat_interval;
    loop {
        tokio::time::sleep(interval).await;
        let advise = lock_ttl_ms(started, client.inner.config.lock_ttl_ms);
        let primary_lock = primary.clone();
        let outcome = client
            .inner
            .raw
            .run_batch(
                "txn_heart_beat",
                vec![primary_lock],
                |k| k,
                move |mut c, context, keys| -> BoxFut<'static, _> {
                    Box::pin(async move {
                        let r = c
                            .kv_txn_heart_beat(KvTxnHeartBeatRequest {
                                context: Some(context),
                                primary_lock: keys[0].clone(),
                                start_version: start_ts,
                                advise_lock_ttl: advise,
                            })
                            .await?
                            .into_inner();
                        Ok((r.region_error.clone(), r))
                    })
                },
            )
            .await;
        match outcome {
            Ok(r) if r.iter().all(|r| r.error.is_none()) => {}
            // The lock is gone (committed or rolled back): nothing more to keep alive.
            Ok(_) => return,
            Err(e) => tracing::debug!(start_ts, error = %e, "transaction heartbeat failed"),
        }
    }
}
