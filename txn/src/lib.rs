//! Percolator transactions over a node's storage (docs/design.md, "Transactions").
//!
//! Everything here is a pure function of a storage snapshot and a request: an action reads the
//! `lock`, `write` and `default` column families through [`MvccReader`] and returns the writes
//! it wants ([`MvccTxn::into_modifies`]) or a typed [`TxnError`]. It never writes itself: the
//! node proposes the writes through Raft, holding latches on the keys from the read until the
//! writes are applied, so the snapshot an action saw is still true when its writes land.
//!
//! One file per verb, as in TiKV's `actions/`: [`prewrite`](actions::prewrite),
//! [`commit`](actions::commit), [`rollback`](actions::rollback),
//! [`check_txn_status`](actions::check_txn_status), [`resolve_lock`](actions::resolve_lock),
//! [`txn_heart_beat`](actions::txn_heart_beat), [`read`](actions::read) (get, batch get, scan
//! at a timestamp) and [`gc`](actions::gc).

pub mod actions;
mod error;
mod lock;
mod mvcc;
pub mod timestamp;

pub use error::{Result, TxnError};
pub use lock::{lock_info, LockStatus};
pub use mvcc::{
    raft_request, write_modifies, Modify, MvccReader, MvccTxn, SinceStart, TxnCommitRecord,
    SHORT_VALUE_MAX_BYTES,
};
