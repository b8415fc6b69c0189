//! Commit: the second phase, per key. Committing the primary is the commit point of the whole
//! transaction; secondaries follow (or are resolved by readers later).

use crate::mvcc::{MvccReader, MvccTxn, TxnCommitRecord};
use crate::{Result, TxnError};
use ringkv_proto::mvccpb::Write;

/// Commits `key` of transaction `start_ts` at `commit_ts` into `txn`. Idempotent: a key this
/// transaction already committed is left alone. A key whose lock is gone without a commit was
/// rolled back: `TxnLockNotFound`.
pub fn commit(
    reader: &MvccReader<'_>,
    txn: &mut MvccTxn,
    key: &[u8],
    commit_ts: u64,
) -> Result<()> {
    let start_ts = txn.start_ts;
    assert!(
        commit_ts > start_ts,
        "the edge refuses commit_ts <= start_ts"
    );
    match reader.load_lock(key)? {
        Some(lock) if lock.start_ts == start_ts => {
            if commit_ts < lock.min_commit_ts {
                return Err(TxnError::CommitTsExpired {
                    start_ts,
                    attempted_commit_ts: commit_ts,
                    key: key.to_vec(),
                    min_commit_ts: lock.min_commit_ts,
                });
            }
            txn.put_write(
                key,
                commit_ts,
                &Write {
                    op: lock.op,
                    start_ts,
                    short_value: lock.short_value,
                },
            );
            txn.unlock(key);
            Ok(())
        }
        _ => match reader.txn_commit_record(key, start_ts)? {
            TxnCommitRecord::Committed { .. } => Ok(()),
            TxnCommitRecord::RolledBack | TxnCommitRecord::None => Err(TxnError::TxnLockNotFound {
                start_ts,
                key: key.to_vec(),
            }),
        },
    }
}

/// Commits every key of `keys`.
pub fn commit_keys(
    reader: &MvccReader<'_>,
    start_ts: u64,
    keys: &[Vec<u8>],
    commit_ts: u64,
) -> Result<MvccTxn> {
    let mut txn = MvccTxn::new(start_ts);
    for key in keys {
        commit(reader, &mut txn, key, commit_ts)?;
    }
    Ok(txn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::test_util::*;

    #[test]
    fn commit_makes_the_version_visible_from_commit_ts_on_and_a_retry_is_harmless() {
        let store = Store::new();
        store
            .prewrite(&[put(b"a", b"1"), put(b"b", b"2")], b"a", 10)
            .unwrap();
        store.apply(commit_keys(&store.reader(), 10, &[b"a".to_vec(), b"b".to_vec()], 15).unwrap());
        assert!(store.lock(b"a").is_none());
        assert_eq!(store.get(b"a", 14), None);
        assert_eq!(store.get(b"a", 15), Some(b"1".to_vec()));
        assert_eq!(store.get(b"b", 100), Some(b"2".to_vec()));
        let again = commit_keys(&store.reader(), 10, &[b"a".to_vec()], 15).unwrap();
        assert!(again.is_empty());
    }

    #[test]
    fn committing_a_rolled_back_key_fails_with_lock_not_found() {
        let store = Store::new();
        store.prewrite(&[put(b"a", b"1")], b"a", 10).unwrap();
        store.apply(crate::actions::rollback::rollback(&store.reader(), 10, b"a").unwrap());
        let err = commit_keys(&store.reader(), 10, &[b"a".to_vec()], 15).unwrap_err();
        assert!(
            matches!(err, TxnError::TxnLockNotFound { start_ts: 10, .. }),
            "{err:?}"
        );
        assert_eq!(store.get(b"a", 100), None);
    }

    #[test]
    fn commit_below_a_pushed_min_commit_ts_fails() {
        let store = Store::new();
        store.prewrite(&[put(b"a", b"1")], b"a", 10).unwrap();
        let (txn, _) = crate::actions::check_txn_status::check_txn_status(
            &store.reader(),
            &crate::actions::check_txn_status::CheckTxnStatus {
                primary: b"a",
                lock_ts: 10,
                caller_start_ts: 20,
                current_ts: 20,
                rollback_if_not_exist: false,
            },
        )
        .unwrap();
        store.apply(txn);
        let err = commit_keys(&store.reader(), 10, &[b"a".to_vec()], 18).unwrap_err();
        assert!(
            matches!(
                err,
                TxnError::CommitTsExpired {
                    min_commit_ts: 21,
                    ..
                }
            ),
            "{err:?}"
        );
        store.apply(commit_keys(&store.reader(), 10, &[b"a".to_vec()], 25).unwrap());
        assert_eq!(store.get(b"a", 25), Some(b"1".to_vec()));
    }
}
