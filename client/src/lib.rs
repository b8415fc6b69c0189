//! The ringkv client SDK.
//!
//! - [`RawClient`]: the raw key-value API (put, get, delete, batch put/get, scan, delete range)
//!   over a keyspace. It routes each request to the leader of the key's region through a
//!   [`region_cache`], and retries `NotLeader`, `EpochNotMatch`, `RegionNotFound`, busy and
//!   unreachable nodes with backoff, within a deadline the caller sets.
//! - [`TransactionClient`]: snapshot-isolated transactions over any keys (Percolator):
//!   [`Transaction`] get / batch get / scan / put / insert / delete / lock keys / commit, and
//!   [`TransactionClient::run`], which retries a transaction that conflicts.
//! - [`PdClient`]: the placement driver client, used by the SDK and by nodes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ringkv_client::ClientError> {
//! let client = ringkv_client::RawClient::connect(&["127.0.0.1:2379"]).await?;
//! client.put(b"hello".to_vec(), b"world".to_vec()).await?;
//! assert_eq!(client.get(b"hello".to_vec()).await?, Some(b"world".to_vec()));
//! # Ok(()) }
//! ```

mod backoff;
mod error;
pub mod pd;
mod raw;
pub mod region_cache;
mod session;
mod tso;
mod txn;

pub use error::{ClientError, Result};
pub use pd::{PdClient, RegionRoute};
pub use raw::{CasOutcome, RawClient, RawConfig};
pub use ringkv_proto::kvrpcpb::{Keyspace, KeyspaceMode};
pub use tso::TsoBatcher;
pub use txn::{Transaction, TransactionClient, TxnConfig};
