//! ResolveLock: settles the locks of a transaction whose fate is known (from its primary):
//! commits them at its commit_ts, or rolls them back (commit_ts 0). Keys without its lock are
//! left alone, so resolving twice is harmless.

use crate::mvcc::{MvccReader, MvccTxn};
use crate::Result;

pub fn resolve_lock(
    reader: &MvccReader<'_>,
    start_ts: u64,
    commit_ts: u64,
    keys: &[Vec<u8>],
) -> Result<MvccTxn> {
    let mut txn = MvccTxn::new(start_ts);
    for key in keys {
        let ours = reader
            .load_lock(key)?
            .is_some_and(|l| l.start_ts == start_ts);
        if !ours {
            continue;
        }
        if commit_ts > 0 {
            crate::actions::commit::commit(reader, &mut txn, key, commit_ts)?;
        } else {
            crate::actions::rollback::rollback_key(reader, &mut txn, key)?;
        }
    }
    Ok(txn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::test_util::*;

    #[test]
    fn resolve_commits_or_rolls_back_only_that_transactions_locks() {
        let store = Store::new();
        store
            .prewrite(&[put(b"a", b"1"), put(b"b", b"1")], b"a", 10)
            .unwrap();
        store.prewrite(&[put(b"c", b"2")], b"c", 11).unwrap();
        let keys = vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()];
        store.apply(resolve_lock(&store.reader(), 10, 15, &keys).unwrap());
        assert_eq!(store.get(b"a", 15), Some(b"1".to_vec()));
        assert_eq!(store.get(b"b", 15), Some(b"1".to_vec()));
        assert!(
            store.lock(b"c").is_some(),
            "another transaction's lock stays"
        );
        store.apply(resolve_lock(&store.reader(), 11, 0, &keys).unwrap());
        assert!(store.lock(b"c").is_none());
        assert_eq!(store.get(b"c", 100), None);
        assert!(resolve_lock(&store.reader(), 11, 0, &keys)
            .unwrap()
            .is_empty());
    }
}
