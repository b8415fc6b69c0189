//! Storage of a ringkv node, behind two narrow traits with in-memory twins:
//!
//! - [`RaftLogEngine`]: the Raft logs and hard states of every region on the node, in one engine
//!   ([`RaftEngineLog`] on `raft-engine`, [`MemLogEngine`] for tests). Writes from many regions go
//!   in one [`RaftLogBatch`] with one sync.
//! - [`KvEngine`]: the applied state — region metadata, apply state and data — in one ordered
//!   key-value store ([`FjallKv`] on `fjall`, [`MemKv`] for tests). A [`KvWriteBatch`] is atomic,
//!   so a region's data and its applied index always change together.
//!
//! [`PeerStorage`] puts the two together as raft-rs's `Storage` for one peer, and
//! [`raft_guard`] checks Raft messages from the network before raft-rs sees them.

mod error;
mod fjall_kv;
pub mod kv;
pub mod layout;
pub mod log;
mod mem_kv;
mod mem_log;
mod peer_storage;
mod raft_engine_log;
pub mod raft_guard;
pub mod raft_logger;

pub use error::{Result, StorageError};
pub use fjall_kv::FjallKv;
pub use kv::{KvEngine, KvWriteBatch};
pub use log::{RaftLogBatch, RaftLogEngine};
pub use mem_kv::MemKv;
pub use mem_log::MemLogEngine;
pub use peer_storage::{conf_state_of, PeerStorage, RAFT_INIT_LOG_INDEX, RAFT_INIT_LOG_TERM};
pub use raft_engine_log::RaftEngineLog;
