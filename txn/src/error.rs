use ringkv_proto::kvrpcpb::{
    self, AlreadyCommitted, AlreadyExist, CommitTsExpired, KeyError, LockInfo, TxnLockNotFound,
    TxnNotFound, WriteConflict,
};
use ringkv_storage::StorageError;

/// Why a transaction action failed. The key errors are deterministic answers for the client
/// (they go back as `kvrpcpb::KeyError`); `Storage` and `Corruption` are the node's own trouble.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TxnError {
    /// Keys are locked by other transactions: the caller resolves the locks and retries.
    #[error("{} key(s) locked by other transactions (first by start_ts {})", .0.len(), .0.first().map(|l| l.lock_version).unwrap_or_default())]
    KeyIsLocked(Vec<LockInfo>),
    /// A version newer than the transaction's start_ts exists (or the transaction was rolled
    /// back): it must restart with a new start_ts.
    #[error("write conflict on key {key:?}: transaction {start_ts} met the write of {conflict_start_ts} committed at {conflict_commit_ts}")]
    WriteConflict {
        start_ts: u64,
        conflict_start_ts: u64,
        conflict_commit_ts: u64,
        key: Vec<u8>,
        primary: Vec<u8>,
    },
    #[error("key {key:?} already exists")]
    AlreadyExist { key: Vec<u8> },
    /// No lock, commit or rollback of the transaction on its primary.
    #[error("transaction {start_ts} not found on primary {primary_key:?}")]
    TxnNotFound { start_ts: u64, primary_key: Vec<u8> },
    /// Committing a key whose lock is gone and that the transaction did not commit: it was
    /// rolled back (by a reader that found it expired).
    #[error("lock of transaction {start_ts} on key {key:?} not found (rolled back)")]
    TxnLockNotFound { start_ts: u64, key: Vec<u8> },
    /// The commit timestamp is below the lock's min_commit_ts (a reader pushed it).
    #[error("commit of transaction {start_ts} at {attempted_commit_ts} below min_commit_ts {min_commit_ts} on key {key:?}")]
    CommitTsExpired {
        start_ts: u64,
        attempted_commit_ts: u64,
        key: Vec<u8>,
        min_commit_ts: u64,
    },
    /// Rolling back a transaction that committed.
    #[error("transaction {start_ts} already committed at {commit_ts} on key {key:?}")]
    AlreadyCommitted {
        start_ts: u64,
        commit_ts: u64,
        key: Vec<u8>,
    },
    /// A read below the GC safe point.
    #[error("read at {read_ts} is below the GC safe point {safe_point}")]
    GcSafePointPassed { read_ts: u64, safe_point: u64 },
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("corrupt MVCC record at {what}: {why}")]
    Corruption { what: String, why: String },
}

pub type Result<T> = std::result::Result<T, TxnError>;

impl TxnError {
    /// The error as the client sees it, one `KeyError` per key; None for the node's own
    /// failures (storage, corruption), which become an RPC error instead.
    pub fn key_errors(&self) -> Option<Vec<KeyError>> {
        let one = |e: KeyError| Some(vec![e]);
        match self {
            TxnError::KeyIsLocked(locks) => Some(
                locks
                    .iter()
                    .map(|l| KeyError {
                        locked: Some(l.clone()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            TxnError::WriteConflict {
                start_ts,
                conflict_start_ts,
                conflict_commit_ts,
                key,
                primary,
            } => one(KeyError {
                conflict: Some(WriteConflict {
                    start_ts: *start_ts,
                    conflict_start_ts: *conflict_start_ts,
                    conflict_commit_ts: *conflict_commit_ts,
                    key: key.clone(),
                    primary: primary.clone(),
                }),
                ..Default::default()
            }),
            TxnError::AlreadyExist { key } => one(KeyError {
                already_exist: Some(AlreadyExist { key: key.clone() }),
                ..Default::default()
            }),
            TxnError::TxnNotFound {
                start_ts,
                primary_key,
            } => one(KeyError {
                txn_not_found: Some(TxnNotFound {
                    start_ts: *start_ts,
                    primary_key: primary_key.clone(),
                }),
                ..Default::default()
            }),
            TxnError::TxnLockNotFound { start_ts, key } => one(KeyError {
                txn_lock_not_found: Some(TxnLockNotFound {
                    start_ts: *start_ts,
                    key: key.clone(),
                }),
                ..Default::default()
            }),
            TxnError::CommitTsExpired {
                start_ts,
                attempted_commit_ts,
                key,
                min_commit_ts,
            } => one(KeyError {
                commit_ts_expired: Some(CommitTsExpired {
                    start_ts: *start_ts,
                    attempted_commit_ts: *attempted_commit_ts,
                    key: key.clone(),
                    min_commit_ts: *min_commit_ts,
                }),
                ..Default::default()
            }),
            TxnError::AlreadyCommitted {
                start_ts,
                commit_ts,
                key,
            } => one(KeyError {
                already_committed: Some(AlreadyCommitted {
                    start_ts: *start_ts,
                    commit_ts: *commit_ts,
                    key: key.clone(),
                }),
                ..Default::default()
            }),
            TxnError::GcSafePointPassed { safe_point, .. } => one(KeyError {
                gc_safe_point_passed: *safe_point,
                ..Default::default()
            }),
            TxnError::Storage(_) | TxnError::Corruption { .. } => None,
        }
    }

    /// The first key error, for responses that carry one.
    pub fn key_error(&self) -> Option<kvrpcpb::KeyError> {
        self.key_errors().and_then(|v| v.into_iter().next())
    }
}
