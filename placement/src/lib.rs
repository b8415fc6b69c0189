//! The ringkv placement driver: cluster bootstrap, store registration, id allocation, the
//! timestamp oracle (TSO), routing, and store and region heartbeats.
//!
//! The logic lives in pure cores that take time as an input and return what must be persisted
//! ([`cluster::PlacementCore`], [`tso::Tso`], [`id::IdAllocator`]); [`server`] is the thin edge
//! that persists to sled and serves gRPC.

pub mod balance;
pub mod cli;
pub mod cluster;
pub mod config;
mod error;
pub mod gc_safe_point;
pub mod hot_region;
pub mod id;
pub mod location;
pub mod member;
pub mod member_state;
pub mod merge_checker;
pub mod meta_store;
pub mod replica_checker;
pub mod scheduling_sim;
pub mod server;
mod service;
pub mod tso;

pub use config::PlacementConfig;
pub use error::PlacementError;
pub use server::PlacementServer;
