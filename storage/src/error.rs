use thiserror::Error;

/// Errors of the storage layer. All of them are non-deterministic (I/O, corruption): a node that
/// meets one while applying stops rather than let its replica diverge.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("raft log engine: {0}")]
    RaftEngine(#[from] raft_engine::Error),
    #[error("state store (fjall): {0}")]
    Fjall(#[from] fjall::Error),
    #[error("state store: {0}")]
    Io(#[from] std::io::Error),
    /// A fault a test asked an in-memory engine to produce.
    #[error("injected fault: {0}")]
    Injected(&'static str),
    #[error("corrupted {what}: {detail}")]
    Corruption { what: String, detail: String },
    #[error("raft log of region {region_id}: entries [{low}, {high}) are not available (log holds [{first}, {last}])")]
    EntriesUnavailable {
        region_id: u64,
        low: u64,
        high: u64,
        first: u64,
        last: u64,
    },
}

impl StorageError {
    pub fn corruption(what: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        StorageError::Corruption {
            what: what.into(),
            detail: detail.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, StorageError>;
