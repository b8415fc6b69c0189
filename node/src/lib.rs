//! A ringkv storage node.
//!
//! - [`peer`]: one replica of one region: raft-rs `RawNode` plus proposals and reads waiting on
//!   it. Pure: ticks, messages and requests in; log writes, messages and applied results out.
//! - [`apply`]: turns committed commands into one atomic write batch (data + applied index).
//! - [`raftstore`]: the loop that drives every peer of the node, writes all their log entries in
//!   one synced batch per round (group commit), sends messages and applies.
//! - [`snapshot`]: generating a region snapshot and installing one.
//! - [`split_check`]: measuring regions and finding the key that halves one (worker thread).
//! - [`split`]: asking the placement driver for ids and proposing a split.
//! - [`transport`]: Raft messages to other nodes over one gRPC stream per destination.
//! - [`service`]: the raw KV, Raft and Debug gRPC services.
//! - [`server`]: joining the cluster through the placement driver and running all of the above.

pub mod apply;
pub mod cli;
pub mod config;
mod error;
mod logger;
pub mod peer;
pub mod playground;
pub mod raftstore;
pub mod region_error;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod split;
pub mod split_check;
pub mod transport;

pub use config::NodeConfig;
pub use error::NodeError;
pub use server::NodeServer;
pub use transport::NetFilter;
