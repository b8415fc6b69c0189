//! A ringkv storage node.
//!
//! - [`peer`]: one replica of one region: raft-rs `RawNode` plus proposals and reads waiting on
//!   it. Pure: ticks, messages and requests in; log writes, messages and applied results out.
//! - [`admin`]: what split and merge share: the local leader check, proposing and waiting.
//! - [`apply`]: turns committed commands into one atomic write batch (data + applied index).
//! - [`apply_pool`]: each region's apply delegate, and the threads that apply batches of them.
//! - [`clock`]: the monotonic clock leader leases are measured with (injectable).
//! - [`router`]: per-peer mailboxes, the router from region id to mailbox, the ready queue.
//! - [`raftstore`]: the batch system: poller threads that drive batches of peers, writing all
//!   their log entries in one synced batch per round (group commit), sending, and handing
//!   committed entries to the apply pool; a control thread for ticks, peer creation and log compaction.
//! - [`snapshot`]: generating a region snapshot and installing one.
//! - [`split_check`]: measuring regions and finding the key that halves one (worker thread).
//! - [`split`]: asking the placement driver for ids and proposing a split.
//! - [`merge`]: preparing, committing and rolling back the merge of two adjacent regions.
//! - [`transport`]: Raft messages to other nodes over one gRPC stream per destination.
//! - [`service`]: the KV (raw and transactional), Raft and Debug gRPC services.
//! - [`gc_worker`]: drops MVCC versions below the GC safe point, region by region.
//! - [`flow`]: bytes and keys read and written per region and per store, for heartbeats.
//! - [`latch`]: per-key latches that serialize transactional commands on the same keys.
//! - [`memory_lock`]: keys of one-phase commits in flight, which readers wait for.
//! - [`read_pool`]: scans and other long reads, on blocking threads off the async runtime.
//! - [`server`]: joining the cluster through the placement driver and running all of the above.

pub mod admin;
pub mod apply;
pub mod apply_pool;
pub mod cli;
pub mod clock;
pub mod config;
mod error;
pub mod flow;
pub mod gc_worker;
pub mod latch;
pub mod memory_lock;
pub mod merge;
pub mod peer;
pub mod playground;
pub mod raftstore;
pub mod read_pool;
pub mod region_error;
pub mod resolved_ts;
pub mod router;
pub mod safe_ts;
pub mod server;
pub mod service;
pub mod session;
pub mod snapshot;
pub mod split;
pub mod split_check;
pub mod transport;

pub use config::NodeConfig;
pub use error::NodeError;
pub use server::NodeServer;
pub use transport::NetFilter;
