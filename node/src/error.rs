use thiserror::Error;

/// Errors that stop a node from starting or running.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("storage: {0}")]
    Storage(#[from] ringkv_storage::StorageError),
    #[error("placement driver: {0}")]
    Placement(#[from] ringkv_client::ClientError),
    #[error("configuration: {0}")]
    Config(String),
    /// The stored state cannot be brought back to a consistent one; the node refuses to start.
    #[error("cannot recover the stored state: {0}")]
    Unrecoverable(String),
    #[error("data directory {dir} belongs to cluster {found}, but the placement driver serves cluster {expected}; refusing to start (point --data-dir at this cluster's directory, or remove it to join as a new store)")]
    ClusterMismatch {
        dir: String,
        found: u64,
        expected: u64,
    },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
}
