use ringkv_proto::pdpb::ErrorType;
use thiserror::Error;

/// Errors of the placement driver, each mapped onto a wire `ErrorType`.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PlacementError {
    #[error("cluster is not bootstrapped yet: {registered} of {replicas} stores have registered")]
    NotBootstrapped { registered: usize, replicas: u32 },
    #[error("request is for cluster {got}, but this placement driver serves cluster {expected}")]
    ClusterMismatch { expected: u64, got: u64 },
    #[error("store {store_id} is not registered")]
    StoreNotFound { store_id: u64 },
    #[error("store {store_id} is a tombstone and may not rejoin")]
    StoreTombstone { store_id: u64 },
    #[error("region {region_id} is not known")]
    RegionNotFound { region_id: u64 },
    #[error("region {region_id} has changed since the request's view of it; refresh and retry")]
    StaleRegion { region_id: u64 },
    #[error("keyspace {name:?} does not exist; create it first")]
    KeyspaceNotFound { name: String },
    #[error("keyspace {name:?} exists already (id {id})")]
    KeyspaceExists { name: String, id: u32 },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("placement metadata store: {0}")]
    Storage(#[from] sled::Error),
    #[error("corrupted placement metadata at {key}: {detail}")]
    Corruption { key: String, detail: String },
    #[error("configuration: {0}")]
    Config(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("placement log storage: {0}")]
    Log(#[from] ringkv_storage::StorageError),
    #[error("placement Raft group: {0}")]
    Raft(#[from] raft::Error),
    /// This member does not serve now; `leader` names the member that does, if known.
    #[error("{}", not_leader_message(.leader, .reason))]
    NotLeader {
        leader: Option<String>,
        reason: &'static str,
    },
}

fn not_leader_message(leader: &Option<String>, reason: &str) -> String {
    match leader {
        Some(l) => format!("this placement member does not serve ({reason}); the leader is at {l}"),
        None => format!("this placement member does not serve ({reason}); no leader is known yet, retry shortly"),
    }
}

impl PlacementError {
    pub fn error_type(&self) -> ErrorType {
        match self {
            PlacementError::NotBootstrapped { .. } => ErrorType::NotBootstrapped,
            PlacementError::ClusterMismatch { .. } => ErrorType::ClusterMismatch,
            PlacementError::StoreNotFound { .. } => ErrorType::StoreNotFound,
            PlacementError::StoreTombstone { .. } => ErrorType::StoreTombstone,
            PlacementError::RegionNotFound { .. } => ErrorType::RegionNotFound,
            PlacementError::InvalidArgument(_) => ErrorType::InvalidArgument,
            PlacementError::StaleRegion { .. } => ErrorType::StaleRegion,
            PlacementError::KeyspaceNotFound { .. } => ErrorType::KeyspaceNotFound,
            PlacementError::KeyspaceExists { .. } => ErrorType::KeyspaceExists,
            _ => ErrorType::Unknown,
        }
    }
}
