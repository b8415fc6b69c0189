//! The Percolator actions, one verb per file. Each reads through an [`MvccReader`] and returns
//! its writes in an [`MvccTxn`] (or a [`TxnError`]); none writes storage itself.
//!
//! [`MvccReader`]: crate::MvccReader
//! [`MvccTxn`]: crate::MvccTxn
//! [`TxnError`]: crate::TxnError

pub mod check_txn_status;
pub mod commit;
pub mod gc;
pub mod prewrite;
pub mod read;
pub mod resolve_lock;
pub mod rollback;
pub mod txn_heart_beat;

#[cfg(test)]
pub(crate) mod test_util;
