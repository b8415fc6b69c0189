//! The transactional half of the KV service: Percolator commands, validated at the edge, run
//! under per-key latches on the region's leader (read a snapshot, compute the action, propose
//! its writes as one Raft command, answer once applied), and MVCC reads at a timestamp.

use super::{check_context, check_key, check_keyspace, invalid, rule, storage_failed, KvService};
use crate::apply::{scan_bounds, user_in_range};
use crate::latch::{LatchGuard, Latches, LATCH_SLOTS};
use crate::memory_lock::{MemoryLockGuard, MemoryLocks};
use ringkv_proto::errorpb::RegionError;
use ringkv_proto::keys;
use ringkv_proto::kvrpcpb::*;
use ringkv_proto::limits::*;
use ringkv_proto::mvccpb::Write;
use ringkv_txn::actions::{
    check_txn_status, commit, gc, prewrite, read, resolve_lock, rollback, txn_heart_beat,
};
use ringkv_txn::{LockStatus, Modify, MvccReader, MvccTxn, TxnError};
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::Status;

/// The node's transactional state, shared by its services.
pub struct TxnContext {
    pub latches: Latches,
    pub memory_locks: Arc<MemoryLocks>,
    /// The GC safe point as last heard from the placement driver: reads below it are refused.
    pub gc_safe_point: AtomicU64,
    /// Region → the oldest commit_ts of a write record this node wrote to it since the GC
    /// worker last looked: where new garbage may appear.
    pub written: parking_lot::Mutex<std::collections::HashMap<u64, u64>>,
}

impl Default for TxnContext {
    fn default() -> Self {
        TxnContext {
            latches: Latches::new(LATCH_SLOTS),
            memory_locks: Arc::new(MemoryLocks::default()),
            gc_safe_point: AtomicU64::new(0),
            written: Default::default(),
        }
    }
}

/// What a command holds from before its snapshot until its writes are applied (or known to
/// be lost): its latches and, for a one-phase commit, its memory locks.
/// Fields drop in order: the memory locks go before the latches, so no other command can hold
/// the keys' latches while these memory locks are still in the table.
struct Held {
    _memory_locks: Option<MemoryLockGuard>,
    _latches: LatchGuard,
}

/// How long a command waits for the latches of its keys.
const LATCH_WAIT: Duration = Duration::from_secs(10);

/// How long a read waits for one-phase commits in flight on its keys before answering busy.
const MEMORY_LOCK_WAIT: Duration = Duration::from_secs(5);

/// The outcome of a transactional command: done, refused by the region (retry elsewhere), or
/// refused by the transaction rules (the client's business).
pub enum TxnOutcome<T> {
    Done(T),
    Region(RegionError),
    Txn(TxnError),
}

/// A node failure in an action (storage, corruption) is an RPC error; the rest is an answer.
fn node_failure(e: &TxnError) -> Option<Status> {
    e.key_errors().is_none().then(|| storage_failed(e))
}

/// The locks a read respects: none for a stale read (see [`read::Locks::Ignore`]).
fn lock_rule(stale: bool, resolved: &[u64]) -> read::Locks<'_> {
    if stale {
        read::Locks::Ignore
    } else {
        read::Locks::Check(resolved)
    }
}

/// A timestamp field of a request: set, and one the TSO can have issued by now (give or take
/// clock skew), so arithmetic on it cannot overflow.
fn check_ts(ts: u64, field: &str) -> Result<(), Status> {
    rule(check_timestamp(ts, field, super::wall_ms()))
}

/// The transactions a read names as resolved.
fn check_resolved(resolved: &[u64]) -> Result<(), Status> {
    if resolved.len() > RESOLVED_LOCKS_MAX {
        return Err(invalid(format!(
            "resolved_locks names {} transactions; the limit is {RESOLVED_LOCKS_MAX}",
            resolved.len()
        )));
    }
    Ok(())
}

fn check_keys(keys: &[Vec<u8>], what: &str) -> Result<(), Status> {
    if keys.is_empty() {
        return Err(invalid(format!("{what} with no keys")));
    }
    rule(check_batch(
        keys.len(),
        "keys",
        keys.iter().map(|k| k.len()).sum(),
    ))?;
    for k in keys {
        check_key(k)?;
    }
    Ok(())
}

impl KvService {
    fn txn_ctx(&self) -> &TxnContext {
        &self.ctx.txn
    }

    /// Runs a transactional write command on `keys`: latches, a linearizable snapshot on the
    /// leader, the action, its writes through Raft. The latches are held until the writes are
    /// applied, so no other command on these keys computes from a snapshot without them.
    async fn txn_write<T>(
        &self,
        context: Context,
        keys: Vec<Vec<u8>>,
        action: impl FnOnce(&MvccReader<'_>) -> Result<(MvccTxn, T), TxnError>,
    ) -> Result<TxnOutcome<T>, Status> {
        let held = Held {
            _latches: self.acquire_latches(&keys).await?,
            _memory_locks: None,
        };
        self.txn_write_latched(context, keys, held, action).await
    }

    async fn acquire_latches(&self, keys: &[Vec<u8>]) -> Result<LatchGuard, Status> {
        tokio::time::timeout(LATCH_WAIT, self.txn_ctx().latches.acquire(keys))
            .await
            .map_err(|_| {
                Status::unavailable(format!(
                    "keys busy: an earlier command on them has not finished within {LATCH_WAIT:?}; retry"
                ))
            })
    }

    async fn txn_write_latched<T>(
        &self,
        context: Context,
        keys: Vec<Vec<u8>>,
        held: Held,
        action: impl FnOnce(&MvccReader<'_>) -> Result<(MvccTxn, T), TxnError>,
    ) -> Result<TxnOutcome<T>, Status> {
        if let Err(region_error) = self.txn_barrier(context, keys).await? {
            return Ok(TxnOutcome::Region(region_error));
        }
        let reader = MvccReader::new(self.ctx.kv.as_ref());
        let (txn, value) = match action(&reader) {
            Ok(done) => done,
            Err(e) => match node_failure(&e) {
                Some(status) => return Err(status),
                None => return Ok(TxnOutcome::Txn(e)),
            },
        };
        if txn.is_empty() {
            return Ok(TxnOutcome::Done(value));
        }
        let modifies = txn.into_modifies();
        let oldest_version = modifies
            .iter()
            .filter_map(|m| match m {
                Modify::Put {
                    cf: ringkv_storage::layout::Cf::Write,
                    ts,
                    ..
                } => Some(*ts),
                _ => None,
            })
            .min();
        let region_id = context.region_id;
        let requests = modifies.into_iter().map(ringkv_txn::raft_request).collect();
        Ok(match self.propose_holding(context, requests, held).await? {
            None => {
                if let Some(ts) = oldest_version {
                    let mut written = self.txn_ctx().written.lock();
                    let entry = written.entry(region_id).or_insert(ts);
                    *entry = (*entry).min(ts);
                }
                TxnOutcome::Done(value)
            }
            Some(region_error) => TxnOutcome::Region(region_error),
        })
    }

    /// The read barrier of a transactional read: the region is led here and the snapshot is
    /// current. Leader only, even when the client asked for a replica read: the one-phase
    /// commit's memory locks, which readers must see, live on the leader.
    async fn txn_barrier(
        &self,
        mut context: Context,
        keys: Vec<Vec<u8>>,
    ) -> Result<Result<ringkv_proto::metapb::Region, RegionError>, Status> {
        context.replica_read = false;
        self.clear_read(context, keys).await
    }

    /// The barrier of a transactional read and the locks it must respect: the leader's
    /// ([`Self::txn_barrier`]; the caller then waits out one-phase commits on its keys) or, for
    /// a stale read, this replica's safe timestamp, at or below which no lock matters.
    async fn read_barrier(
        &self,
        context: Context,
        keys: Vec<Vec<u8>>,
        read_ts: u64,
    ) -> Result<Result<ringkv_proto::metapb::Region, RegionError>, Status> {
        if context.stale_read {
            self.clear_stale_read(context, keys, read_ts).await
        } else {
            self.txn_barrier(context, keys).await
        }
    }

    /// Waits until no one-phase commit in flight that `blocks` names could still land below
    /// the read (see memory_lock.rs).
    async fn wait_memory_locks(&self, blocks: impl Fn(&MemoryLocks) -> bool) -> Result<(), Status> {
        let locks = &self.txn_ctx().memory_locks;
        let deadline = tokio::time::Instant::now() + MEMORY_LOCK_WAIT;
        while blocks(locks) {
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::unavailable(
                    "a one-phase commit on these keys is still being applied; retry",
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    fn below_safe_point(&self, read_ts: u64) -> Option<KeyError> {
        let safe_point = self.txn_ctx().gc_safe_point.load(Ordering::Acquire);
        (read_ts < safe_point).then(|| {
            TxnError::GcSafePointPassed {
                read_ts,
                safe_point,
            }
            .key_error()
            .expect("a key error")
        })
    }

    pub(super) async fn txn_get(&self, req: KvGetRequest) -> Result<KvGetResponse, Status> {
        let context = check_context(req.context)?;
        check_key(&req.key)?;
        check_ts(req.version, "version")?;
        check_resolved(&req.resolved_locks)?;
        if let Some(error) = self.below_safe_point(req.version) {
            return Ok(KvGetResponse {
                error: Some(error),
                ..Default::default()
            });
        }
        let keys = vec![req.key.clone()];
        let stale = context.stale_read;
        if let Err(e) = self
            .read_barrier(context, keys.clone(), req.version)
            .await?
        {
            return Ok(KvGetResponse {
                region_error: Some(e),
                ..Default::default()
            });
        }
        if !stale {
            self.wait_memory_locks(|l| l.blocks_keys(&keys, req.version))
                .await?;
        }
        let reader = MvccReader::new(self.ctx.kv.as_ref());
        Ok(
            match read::get(
                &reader,
                &req.key,
                req.version,
                lock_rule(stale, &req.resolved_locks),
            ) {
                Ok(Some(value)) => KvGetResponse {
                    value,
                    ..Default::default()
                },
                Ok(None) => KvGetResponse {
                    not_found: true,
                    ..Default::default()
                },
                Err(e) => {
                    if let Some(status) = node_failure(&e) {
                        return Err(status);
                    }
                    KvGetResponse {
                        error: e.key_error(),
                        ..Default::default()
                    }
                }
            },
        )
    }

    pub(super) async fn txn_batch_get(
        &self,
        req: KvBatchGetRequest,
    ) -> Result<KvBatchGetResponse, Status> {
        let context = check_context(req.context)?;
        check_keys(&req.keys, "batch get")?;
        check_ts(req.version, "version")?;
        check_resolved(&req.resolved_locks)?;
        if let Some(error) = self.below_safe_point(req.version) {
            return Ok(KvBatchGetResponse {
                errors: vec![error],
                ..Default::default()
            });
        }
        let stale = context.stale_read;
        if let Err(e) = self
            .read_barrier(context, req.keys.clone(), req.version)
            .await?
        {
            return Ok(KvBatchGetResponse {
                region_error: Some(e),
                ..Default::default()
            });
        }
        if !stale {
            self.wait_memory_locks(|l| l.blocks_keys(&req.keys, req.version))
                .await?;
        }
        let reader = MvccReader::new(self.ctx.kv.as_ref());
        let locks = lock_rule(stale, &req.resolved_locks);
        Ok(
            match read::batch_get(&reader, &req.keys, req.version, locks) {
                Ok(pairs) => KvBatchGetResponse {
                    pairs: pairs
                        .into_iter()
                        .map(|(key, value)| KvPair { key, value })
                        .collect(),
                    ..Default::default()
                },
                Err(e) => {
                    if let Some(status) = node_failure(&e) {
                        return Err(status);
                    }
                    KvBatchGetResponse {
                        errors: e.key_errors().unwrap_or_default(),
                        ..Default::default()
                    }
                }
            },
        )
    }

    pub(super) async fn txn_scan(&self, req: KvScanRequest) -> Result<KvScanResponse, Status> {
        let context = check_context(req.context)?;
        let keyspace = check_keyspace(req.keyspace)?;
        rule(check_user_range(&req.start_key, &req.end_key))?;
        rule(check_scan_limit(req.limit))?;
        check_ts(req.version, "version")?;
        check_resolved(&req.resolved_locks)?;
        if let Some(error) = self.below_safe_point(req.version) {
            return Ok(KvScanResponse {
                errors: vec![error],
                ..Default::default()
            });
        }
        let region_id = context.region_id;
        let stale = context.stale_read;
        let region = match self.read_barrier(context, vec![], req.version).await? {
            Ok(region) => region,
            Err(e) => {
                return Ok(KvScanResponse {
                    region_error: Some(e),
                    ..Default::default()
                })
            }
        };
        let Some((lo, hi)) = scan_bounds(&region, &keyspace, &req.start_key, &req.end_key) else {
            return Ok(KvScanResponse::default());
        };
        if !stale {
            self.wait_memory_locks(|l| l.blocks_range(&lo, &hi, req.version))
                .await?;
        }
        let ordered = keyspace.mode == KeyspaceMode::Range as i32;
        let kv = self.ctx.kv.clone();
        self.ctx
            .reads
            .run(move || mvcc_scan(kv.as_ref(), &req, (&lo, &hi), stale, ordered, region_id))
            .await?
    }

    pub(super) async fn txn_prewrite(
        &self,
        req: KvPrewriteRequest,
    ) -> Result<KvPrewriteResponse, Status> {
        let context = check_context(req.context)?;
        check_ts(req.start_version, "start_version")?;
        rule(check_lock_ttl(req.lock_ttl, "lock_ttl"))?;
        if req.mutations.is_empty() {
            return Err(invalid("prewrite with no mutations"));
        }
        if req.primary_lock.is_empty() {
            return Err(invalid("prewrite names no primary key"));
        }
        check_key(&req.primary_lock)?;
        let mut bytes = 0;
        for m in &req.mutations {
            check_key(&m.key)?;
            rule(check_value(&m.value))?;
            let op =
                Op::try_from(m.op).map_err(|_| invalid(format!("unknown mutation op {}", m.op)))?;
            if op == Op::Rollback {
                return Err(invalid("a mutation cannot be a rollback"));
            }
            bytes += m.key.len() + m.value.len();
        }
        rule(check_batch(req.mutations.len(), "mutations", bytes))?;
        let keys: Vec<Vec<u8>> = req.mutations.iter().map(|m| m.key.clone()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid("prewrite names a key twice"));
        }
        let latches = self.acquire_latches(&keys).await?;
        let mut one_pc_commit_ts = None;
        let memory_locks =
            if req.try_one_pc {
                let guard = self.txn_ctx().memory_locks.lock(&keys, req.start_version);
                // The commit_ts is taken after the keys are locked against readers: see
                // memory_lock.rs for why that makes a one-phase commit safe for them.
                let commit_ts =
                    self.ctx.tso.get().await.map_err(|e| {
                        Status::unavailable(format!("TSO for a one-phase commit: {e}"))
                    })?;
                if commit_ts <= req.start_version {
                    return Err(invalid(format!(
                        "start version {} is from the future (TSO is at {commit_ts})",
                        req.start_version
                    )));
                }
                one_pc_commit_ts = Some(commit_ts);
                Some(guard)
            } else {
                None
            };
        let outcome = self
            .txn_write_latched(
                context,
                keys,
                Held {
                    _latches: latches,
                    _memory_locks: memory_locks,
                },
                |reader| {
                    let txn = prewrite::prewrite(
                        reader,
                        &prewrite::Prewrite {
                            mutations: &req.mutations,
                            primary: &req.primary_lock,
                            start_ts: req.start_version,
                            lock_ttl_ms: req.lock_ttl,
                            txn_size: req.txn_size,
                            one_pc_commit_ts,
                        },
                    )?;
                    // A retried one-phase commit that committed before reports when.
                    let committed_at = txn.committed_at;
                    Ok((txn, committed_at))
                },
            )
            .await?;
        Ok(match outcome {
            TxnOutcome::Done(committed_at) => KvPrewriteResponse {
                one_pc_commit_ts: one_pc_commit_ts
                    .map(|ts| committed_at.unwrap_or(ts))
                    .unwrap_or_default(),
                ..Default::default()
            },
            TxnOutcome::Region(e) => KvPrewriteResponse {
                region_error: Some(e),
                ..Default::default()
            },
            TxnOutcome::Txn(e) => KvPrewriteResponse {
                errors: e.key_errors().unwrap_or_default(),
                ..Default::default()
            },
        })
    }

    pub(super) async fn txn_commit(
        &self,
        req: KvCommitRequest,
    ) -> Result<KvCommitResponse, Status> {
        let context = check_context(req.context)?;
        check_ts(req.start_version, "start_version")?;
        check_ts(req.commit_version, "commit_version")?;
        check_keys(&req.keys, "commit")?;
        if req.commit_version <= req.start_version {
            return Err(invalid(format!(
                "commit version {} is not after start version {}",
                req.commit_version, req.start_version
            )));
        }
        let outcome = self
            .txn_write(context, req.keys.clone(), |reader| {
                let txn =
                    commit::commit_keys(reader, req.start_version, &req.keys, req.commit_version)?;
                Ok((txn, ()))
            })
            .await?;
        let (region_error, error) = split_outcome(outcome);
        Ok(KvCommitResponse {
            region_error,
            error,
        })
    }

    pub(super) async fn txn_batch_rollback(
        &self,
        req: KvBatchRollbackRequest,
    ) -> Result<KvBatchRollbackResponse, Status> {
        let context = check_context(req.context)?;
        check_ts(req.start_version, "start_version")?;
        check_keys(&req.keys, "rollback")?;
        let outcome = self
            .txn_write(context, req.keys.clone(), |reader| {
                let txn = rollback::rollback_keys(reader, req.start_version, &req.keys)?;
                Ok((txn, ()))
            })
            .await?;
        let (region_error, error) = split_outcome(outcome);
        Ok(KvBatchRollbackResponse {
            region_error,
            error,
        })
    }

    pub(super) async fn txn_check_txn_status(
        &self,
        req: KvCheckTxnStatusRequest,
    ) -> Result<KvCheckTxnStatusResponse, Status> {
        let context = check_context(req.context)?;
        check_key(&req.primary_key)?;
        check_ts(req.lock_ts, "lock_ts")?;
        check_ts(req.current_ts, "current_ts")?;
        if req.caller_start_ts != 0 {
            check_ts(req.caller_start_ts, "caller_start_ts")?;
        }
        let outcome = self
            .txn_write(context, vec![req.primary_key.clone()], |reader| {
                check_txn_status::check_txn_status(
                    reader,
                    &check_txn_status::CheckTxnStatus {
                        primary: &req.primary_key,
                        lock_ts: req.lock_ts,
                        caller_start_ts: req.caller_start_ts,
                        current_ts: req.current_ts,
                        rollback_if_not_exist: req.rollback_if_not_exist,
                    },
                )
            })
            .await?;
        Ok(match outcome {
            TxnOutcome::Done((status, action)) => {
                let mut resp = KvCheckTxnStatusResponse {
                    action: action as i32,
                    ..Default::default()
                };
                match status {
                    LockStatus::Locked(lock) => {
                        resp.lock_info = Some(ringkv_txn::lock_info(&req.primary_key, &lock))
                    }
                    LockStatus::Committed { commit_ts } => resp.commit_version = commit_ts,
                    LockStatus::RolledBack => resp.rolled_back = true,
                }
                resp
            }
            TxnOutcome::Region(e) => KvCheckTxnStatusResponse {
                region_error: Some(e),
                ..Default::default()
            },
            TxnOutcome::Txn(e) => KvCheckTxnStatusResponse {
                error: e.key_error(),
                ..Default::default()
            },
        })
    }

    pub(super) async fn txn_resolve_lock(
        &self,
        req: KvResolveLockRequest,
    ) -> Result<KvResolveLockResponse, Status> {
        let context = check_context(req.context)?;
        check_ts(req.start_version, "start_version")?;
        check_keys(&req.keys, "resolve lock")?;
        if req.commit_version != 0 {
            check_ts(req.commit_version, "commit_version")?;
        }
        if req.commit_version != 0 && req.commit_version <= req.start_version {
            return Err(invalid(format!(
                "commit version {} is not after start version {}",
                req.commit_version, req.start_version
            )));
        }
        let outcome = self
            .txn_write(context, req.keys.clone(), |reader| {
                let txn = resolve_lock::resolve_lock(
                    reader,
                    req.start_version,
                    req.commit_version,
                    &req.keys,
                )?;
                Ok((txn, ()))
            })
            .await?;
        let (region_error, error) = split_outcome(outcome);
        Ok(KvResolveLockResponse {
            region_error,
            error,
        })
    }

    pub(super) async fn txn_heart_beat(
        &self,
        req: KvTxnHeartBeatRequest,
    ) -> Result<KvTxnHeartBeatResponse, Status> {
        let context = check_context(req.context)?;
        check_key(&req.primary_lock)?;
        check_ts(req.start_version, "start_version")?;
        rule(check_lock_ttl(req.advise_lock_ttl, "advise_lock_ttl"))?;
        let outcome = self
            .txn_write(context, vec![req.primary_lock.clone()], |reader| {
                txn_heart_beat::txn_heart_beat(
                    reader,
                    &req.primary_lock,
                    req.start_version,
                    req.advise_lock_ttl,
                )
            })
            .await?;
        Ok(match outcome {
            TxnOutcome::Done(ttl) => KvTxnHeartBeatResponse {
                lock_ttl: ttl,
                ..Default::default()
            },
            TxnOutcome::Region(e) => KvTxnHeartBeatResponse {
                region_error: Some(e),
                ..Default::default()
            },
            TxnOutcome::Txn(e) => KvTxnHeartBeatResponse {
                error: e.key_error(),
                ..Default::default()
            },
        })
    }

    /// Collects garbage below `safe_point` in one batch of keys of the region from `start`
    /// (encoded), through Raft under the keys' latches, if this store leads the region.
    pub async fn gc_batch(
        &self,
        context: Context,
        start: Vec<u8>,
        end: &[u8],
        safe_point: u64,
    ) -> Result<TxnOutcome<GcProgress>, Status> {
        if let Err(e) = self.clear_read(context, vec![]).await? {
            return Ok(TxnOutcome::Region(e));
        }
        let reader = MvccReader::new(self.ctx.kv.as_ref());
        let scan = gc::keys_with_garbage(
            &reader,
            &start,
            end,
            safe_point,
            GC_KEYS_PER_BATCH,
            GC_SCAN_MAX,
        )
        .map_err(|e| storage_failed(format!("GC scan: {e}")))?;
        let mut progress = GcProgress {
            next: scan.next.clone(),
            removed: 0,
            oldest_above: scan.oldest_above,
        };
        if scan.keys.is_empty() {
            return Ok(TxnOutcome::Done(progress));
        }
        let keys = scan.keys;
        let outcome = self
            .txn_write(context, keys.clone(), |reader| {
                let (txn, removed) = gc::gc_keys(reader, &keys, safe_point)?;
                Ok((txn, removed))
            })
            .await?;
        Ok(match outcome {
            TxnOutcome::Done(removed) => {
                progress.removed = removed;
                TxnOutcome::Done(progress)
            }
            TxnOutcome::Region(e) => TxnOutcome::Region(e),
            TxnOutcome::Txn(e) => TxnOutcome::Txn(e),
        })
    }
}

/// The MVCC part of a transactional scan, on the read pool: up to `req.limit` user keys of
/// `[lo, hi)` (encoded bounds) visible at `req.version`, in user-key order.
fn mvcc_scan(
    kv: &dyn ringkv_storage::KvEngine,
    req: &KvScanRequest,
    (lo, hi): (&[u8], &[u8]),
    stale: bool,
    ordered: bool,
    region_id: u64,
) -> Result<KvScanResponse, Status> {
    let (start, end) = (req.start_key.as_slice(), req.end_key.as_slice());
    let wanted = |encoded: &[u8]| {
        keys::user_key_unchecked(encoded).is_some_and(|u| user_in_range(u, start, end))
    };
    let limit = req.limit as usize;
    // (user key, encoded key, the version's start_ts, its inlined value)
    type Found = (Vec<u8>, Vec<u8>, u64, Option<Vec<u8>>);
    let mut heap: BinaryHeap<Found> = BinaryHeap::with_capacity(limit + 1);
    let reader = MvccReader::new(kv);
    let scanned = read::scan(
        &reader,
        lo,
        hi,
        req.version,
        lock_rule(stale, &req.resolved_locks),
        &wanted,
        &mut |encoded, write| {
            let Some(user) = keys::user_key_unchecked(encoded) else {
                return true;
            };
            heap.push((
                user.to_vec(),
                encoded.to_vec(),
                write.start_ts,
                write.short_value.clone(),
            ));
            if heap.len() > limit {
                heap.pop();
            }
            !(ordered && heap.len() == limit)
        },
    );
    if let Err(e) = scanned {
        if let Some(status) = node_failure(&e) {
            return Err(status);
        }
        return Ok(KvScanResponse {
            errors: e.key_errors().unwrap_or_default(),
            ..Default::default()
        });
    }
    let mut pairs = Vec::with_capacity(heap.len());
    for (user, encoded, start_ts, short_value) in heap.into_sorted_vec() {
        let value = if req.key_only {
            Vec::new()
        } else {
            let write = Write {
                op: Op::Put as i32,
                start_ts,
                short_value,
            };
            reader
                .value_of(&encoded, &write)
                .map_err(|e| storage_failed(format!("region {region_id} scan: {e}")))?
        };
        pairs.push(KvPair { key: user, value });
    }
    Ok(KvScanResponse {
        pairs,
        ..Default::default()
    })
}

/// How far one GC batch got.
#[derive(Debug, Default)]
pub struct GcProgress {
    /// Where the next batch starts; None: the region is done.
    pub next: Option<Vec<u8>>,
    /// Versions dropped.
    pub removed: usize,
    /// The oldest commit_ts above the safe point the batch looked at.
    pub oldest_above: Option<u64>,
}

/// Keys GC'd in one Raft command at most.
const GC_KEYS_PER_BATCH: usize = 256;
/// Write records one GC scan looks at, at most, so a batch never stalls on a huge region.
const GC_SCAN_MAX: usize = 16_384;

fn split_outcome(outcome: TxnOutcome<()>) -> (Option<RegionError>, Option<KeyError>) {
    match outcome {
        TxnOutcome::Done(()) => (None, None),
        TxnOutcome::Region(e) => (Some(e), None),
        TxnOutcome::Txn(e) => (None, e.key_error()),
    }
}
