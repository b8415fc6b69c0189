use thiserror::Error;

/// Errors the SDK returns. Retryable conditions are retried inside the SDK until the deadline;
/// what reaches the caller is final for that call.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The request can never succeed as written (empty key, too large, inverted range, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The deadline passed while retrying; `last_error` says what kept failing.
    #[error("{operation} did not complete within {timeout_ms} ms; last error: {last_error}")]
    Timeout {
        operation: &'static str,
        timeout_ms: u64,
        last_error: String,
    },
    /// The placement driver refused the request.
    #[error("placement driver: {message}")]
    Placement { kind: i32, message: String },
    /// No placement member could be reached.
    #[error("cannot reach any placement member at {endpoints:?}: {detail}")]
    PlacementUnreachable {
        endpoints: Vec<String>,
        detail: String,
    },
    /// A raw write may or may not have been applied: a region no longer remembers the client
    /// session it was numbered in (the session idled past its time there, or the write was
    /// retried for longer than a session lives), so a retry could not be told apart from a new
    /// write and was refused. Read the data to find out.
    #[error(
        "{operation} may or may not have been applied (no answer: {detail}); read to find out"
    )]
    Ambiguous {
        operation: &'static str,
        detail: String,
    },
    /// The transaction met a write committed after it started (or was rolled back by a
    /// reader that found it dead): it must start over. [`TransactionClient::run`] does.
    ///
    /// [`TransactionClient::run`]: crate::TransactionClient::run
    #[error("transaction {start_ts} conflicts on key {key:?}: {reason}; start it over")]
    WriteConflict {
        start_ts: u64,
        key: Vec<u8>,
        reason: String,
    },
    /// `insert` of a key that has a value.
    #[error("key {key:?} already exists")]
    KeyExists { key: Vec<u8> },
    /// The transaction ended without committing (rolled back after its locks expired, or its
    /// commit was refused); nothing it wrote is visible.
    #[error("transaction {start_ts} aborted: {reason}")]
    TxnAborted { start_ts: u64, reason: String },
    /// The commit of the primary key got no answer before the deadline: the transaction may
    /// or may not have committed. Read its keys to find out.
    #[error("transaction {start_ts} may or may not have committed: {detail}")]
    TxnUndetermined { start_ts: u64, detail: String },
    /// The transaction's timestamp is below the GC safe point: versions it reads may be gone.
    #[error(
        "transaction {start_ts} is older than the GC safe point {safe_point}; start a new one"
    )]
    TxnTooOld { start_ts: u64, safe_point: u64 },
    /// The transaction was used after it committed or rolled back.
    #[error("transaction {start_ts} is already {state}")]
    TxnFinished { start_ts: u64, state: &'static str },
    /// A node or placement member answered with an error the SDK does not retry.
    #[error("server error: {0}")]
    Server(String),
}

impl ClientError {
    /// Whether trying the same call again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::Timeout { .. }
                | ClientError::PlacementUnreachable { .. }
                | ClientError::WriteConflict { .. }
                | ClientError::TxnAborted { .. }
                | ClientError::TxnTooOld { .. }
        ) || matches!(self, ClientError::Placement { kind, .. }
            if *kind == ringkv_proto::pdpb::ErrorType::NotBootstrapped as i32)
    }
}

impl ClientError {
    /// Whether the error ends a transaction in a way that starting it over (with a new
    /// start_ts) may fix: what [`TransactionClient::run`](crate::TransactionClient::run)
    /// retries.
    pub fn is_txn_conflict(&self) -> bool {
        matches!(
            self,
            ClientError::WriteConflict { .. }
                | ClientError::TxnAborted { .. }
                | ClientError::TxnTooOld { .. }
        )
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;
