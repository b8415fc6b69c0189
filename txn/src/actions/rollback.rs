//! Rollback (also what cleanup of a dead transaction does): removes the transaction's lock and
//! value on a key and leaves a rollback record, so a prewrite that arrives late fails.

use crate::mvcc::{MvccReader, MvccTxn, TxnCommitRecord};
use crate::{Result, TxnError};
use ringkv_proto::kvrpcpb::Op;

/// Rolls back `key` of transaction `txn.start_ts` into `txn`. Idempotent; refuses
/// (`AlreadyCommitted`) when the transaction committed the key.
pub fn rollback_key(reader: &MvccReader<'_>, txn: &mut MvccTxn, key: &[u8]) -> Result<()> {
    let start_ts = txn.start_ts;
    match reader.load_lock(key)? {
        Some(lock) if lock.start_ts == start_ts => {
            if lock.op == Op::Put as i32 && lock.short_value.is_none() {
                txn.delete_value(key, start_ts);
            }
            txn.unlock(key);
            txn.put_rollback(key);
            Ok(())
        }
        _ => match reader.txn_commit_record(key, start_ts)? {
            TxnCommitRecord::Committed { commit_ts, .. } => Err(TxnError::AlreadyCommitted {
                start_ts,
                commit_ts,
                key: key.to_vec(),
            }),
            TxnCommitRecord::RolledBack => Ok(()),
            TxnCommitRecord::None => {
                txn.put_rollback(key);
                Ok(())
            }
        },
    }
}

/// Rolls back one key.
pub fn rollback(reader: &MvccReader<'_>, start_ts: u64, key: &[u8]) -> Result<MvccTxn> {
    rollback_keys(reader, start_ts, &[key.to_vec()])
}

/// Rolls back every key of `keys`.
pub fn rollback_keys(reader: &MvccReader<'_>, start_ts: u64, keys: &[Vec<u8>]) -> Result<MvccTxn> {
    let mut txn = MvccTxn::new(start_ts);
    for key in keys {
        rollback_key(reader, &mut txn, key)?;
    }
    Ok(txn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::test_util::*;
    use crate::SHORT_VALUE_MAX_BYTES;

    #[test]
    fn rollback_removes_lock_and_value_and_is_idempotent() {
        let store = Store::new();
        let big = vec![1u8; SHORT_VALUE_MAX_BYTES + 10];
        store.prewrite(&[put(b"a", &big)], b"a", 10).unwrap();
        store.apply(rollback(&store.reader(), 10, b"a").unwrap());
        assert!(store.lock(b"a").is_none());
        assert_eq!(store.get(b"a", 100), None);
        assert_eq!(
            store.data_keys(ringkv_storage::layout::Cf::Default),
            0,
            "value removed"
        );
        assert!(rollback(&store.reader(), 10, b"a").unwrap().is_empty());
    }

    #[test]
    fn rollback_of_a_committed_key_is_refused() {
        let store = Store::new();
        store.put_committed(b"a", b"1", 10, 12);
        let err = rollback(&store.reader(), 10, b"a").unwrap_err();
        assert!(
            matches!(err, TxnError::AlreadyCommitted { commit_ts: 12, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn rollback_without_a_lock_leaves_a_record_that_stops_a_late_prewrite() {
        let store = Store::new();
        store.apply(rollback(&store.reader(), 10, b"a").unwrap());
        assert!(store.prewrite(&[put(b"a", b"1")], b"a", 10).is_err());
        // Another transaction's rollback record is no conflict.
        store.prewrite(&[put(b"a", b"1")], b"a", 11).unwrap();
    }
}
