//! Prewrite: the first phase. Locks every key of the transaction (or, in a one-phase commit,
//! writes them committed), after checking that no other transaction locked or wrote them since
//! `start_ts`.

use crate::lock::lock_info;
use crate::mvcc::{MvccReader, MvccTxn, SinceStart, SHORT_VALUE_MAX_BYTES};
use crate::{Result, TxnError};
use ringkv_proto::kvrpcpb::{Mutation, Op};
use ringkv_proto::mvccpb::{Lock, Write};

/// One prewrite request: the keys of one region of transaction `start_ts`.
#[derive(Debug, Clone)]
pub struct Prewrite<'a> {
    pub mutations: &'a [Mutation],
    pub primary: &'a [u8],
    pub start_ts: u64,
    pub lock_ttl_ms: u64,
    pub txn_size: u64,
    /// One-phase commit at this timestamp: write the versions, leave no lock.
    pub one_pc_commit_ts: Option<u64>,
}

/// Prewrites `req`. All or nothing: on any error no key is written. Every lock met is
/// reported at once (`KeyIsLocked`), so the client resolves them together; a conflict or an
/// existing key ends the check at once. A key this transaction already prewrote or committed
/// is skipped, so a retried prewrite is harmless.
pub fn prewrite(reader: &MvccReader<'_>, req: &Prewrite<'_>) -> Result<MvccTxn> {
    let start_ts = req.start_ts;
    let mut txn = MvccTxn::new(start_ts);
    let mut locked = Vec::new();
    for m in req.mutations {
        let op = Op::try_from(m.op).unwrap_or(Op::Put);
        if let Some(lock) = reader.load_lock(&m.key)? {
            if lock.start_ts != start_ts {
                locked.push(lock_info(&m.key, &lock));
            }
            // Our own lock: this key is prewritten already.
            continue;
        }
        match reader.since_start(&m.key, start_ts)? {
            SinceStart::Nothing => {}
            SinceStart::OwnCommit { commit_ts } => {
                // Committed already (a retry after the commit): nothing to do.
                txn.committed_at = Some(commit_ts);
                continue;
            }
            SinceStart::OwnRollback => {
                // Someone rolled this transaction back (it looked dead): it must not lock now.
                return Err(TxnError::WriteConflict {
                    start_ts,
                    conflict_start_ts: 0,
                    conflict_commit_ts: 0,
                    key: m.key.clone(),
                    primary: req.primary.to_vec(),
                });
            }
            SinceStart::Conflict {
                commit_ts,
                start_ts: conflict_start_ts,
            } => {
                return Err(TxnError::WriteConflict {
                    start_ts,
                    conflict_start_ts,
                    conflict_commit_ts: commit_ts,
                    key: m.key.clone(),
                    primary: req.primary.to_vec(),
                });
            }
        }
        if op == Op::Insert && reader.get(&m.key, start_ts)?.is_some() {
            return Err(TxnError::AlreadyExist { key: m.key.clone() });
        }
        if !locked.is_empty() {
            // Only collecting locks from here on.
            continue;
        }
        let stored_op = match op {
            Op::Insert => Op::Put,
            other => other,
        };
        let short_value = match stored_op {
            Op::Put if m.value.len() <= SHORT_VALUE_MAX_BYTES => Some(m.value.clone()),
            Op::Put => {
                txn.put_value(&m.key, m.value.clone());
                None
            }
            _ => None,
        };
        match req.one_pc_commit_ts {
            Some(commit_ts) => txn.put_write(
                &m.key,
                commit_ts,
                &Write {
                    op: stored_op as i32,
                    start_ts,
                    short_value,
                },
            ),
            None => txn.put_lock(
                &m.key,
                &Lock {
                    op: stored_op as i32,
                    primary: req.primary.to_vec(),
                    start_ts,
                    ttl_ms: req.lock_ttl_ms,
                    // Saturating: the edge refuses timestamps near the end of the range.
                    min_commit_ts: start_ts.saturating_add(1),
                    txn_size: req.txn_size,
                    short_value,
                },
            ),
        }
    }
    if !locked.is_empty() {
        return Err(TxnError::KeyIsLocked(locked));
    }
    Ok(txn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::test_util::*;

    #[test]
    fn prewrite_locks_every_key_and_a_retry_changes_nothing() {
        let store = Store::new();
        store
            .prewrite(&[put(b"a", b"1"), put(b"b", b"2")], b"a", 10)
            .unwrap();
        let lock = store.lock(b"b").unwrap();
        assert_eq!((lock.start_ts, lock.primary.as_slice()), (10, &b"a"[..]));
        assert_eq!(lock.short_value.as_deref(), Some(&b"2"[..]));
        let retry = prewrite(&store.reader(), &store.req(&[put(b"a", b"1")], b"a", 10)).unwrap();
        assert!(retry.is_empty(), "a retried prewrite writes nothing");
    }

    #[test]
    fn prewrite_reports_every_lock_of_other_transactions_and_writes_nothing() {
        let store = Store::new();
        store.prewrite(&[put(b"a", b"1")], b"a", 10).unwrap();
        store.prewrite(&[put(b"c", b"1")], b"c", 11).unwrap();
        let err = prewrite(
            &store.reader(),
            &store.req(
                &[put(b"a", b"x"), put(b"b", b"x"), put(b"c", b"x")],
                b"a",
                12,
            ),
        )
        .unwrap_err();
        match err {
            TxnError::KeyIsLocked(locks) => {
                let ts: Vec<u64> = locks.iter().map(|l| l.lock_version).collect();
                assert_eq!(ts, vec![10, 11]);
            }
            other => panic!("expected KeyIsLocked, got {other:?}"),
        }
        assert!(store.lock(b"b").is_none());
    }

    #[test]
    fn a_write_committed_after_start_ts_is_a_conflict_and_one_before_is_not() {
        let store = Store::new();
        store.put_committed(b"k", b"v1", 10, 20);
        let err = prewrite(&store.reader(), &store.req(&[put(b"k", b"x")], b"k", 15)).unwrap_err();
        assert!(
            matches!(
                err,
                TxnError::WriteConflict {
                    conflict_start_ts: 10,
                    conflict_commit_ts: 20,
                    ..
                }
            ),
            "{err:?}"
        );
        store.prewrite(&[put(b"k", b"x")], b"k", 25).unwrap();
    }

    #[test]
    fn a_rolled_back_transaction_cannot_prewrite_later() {
        let store = Store::new();
        store.apply(crate::actions::rollback::rollback(&store.reader(), 30, b"k").unwrap());
        let err = prewrite(&store.reader(), &store.req(&[put(b"k", b"x")], b"k", 30)).unwrap_err();
        assert!(
            matches!(
                err,
                TxnError::WriteConflict {
                    conflict_start_ts: 0,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn insert_fails_on_a_visible_value_and_succeeds_after_a_delete() {
        let store = Store::new();
        store.put_committed(b"k", b"v", 10, 11);
        let insert = Mutation {
            op: Op::Insert as i32,
            key: b"k".to_vec(),
            value: b"n".to_vec(),
        };
        let err = prewrite(
            &store.reader(),
            &store.req(std::slice::from_ref(&insert), b"k", 20),
        )
        .unwrap_err();
        assert!(matches!(err, TxnError::AlreadyExist { .. }));
        store.delete_committed(b"k", 30, 31);
        store.prewrite(&[insert], b"k", 40).unwrap();
        assert_eq!(store.lock(b"k").unwrap().op, Op::Put as i32);
    }

    #[test]
    fn one_phase_commit_writes_versions_and_no_lock() {
        let store = Store::new();
        let big = vec![7u8; SHORT_VALUE_MAX_BYTES + 1];
        let muts = [put(b"a", b"1"), put(b"b", &big)];
        let mut req = store.req(&muts, b"a", 10);
        req.one_pc_commit_ts = Some(12);
        store.apply(prewrite(&store.reader(), &req).unwrap());
        assert!(store.lock(b"a").is_none() && store.lock(b"b").is_none());
        assert_eq!(store.get(b"a", 11), None);
        assert_eq!(store.get(b"a", 12), Some(b"1".to_vec()));
        assert_eq!(store.get(b"b", 12), Some(big));
        // A retry of the same one-phase commit (its answer was lost) writes nothing and learns
        // the commit_ts, even after a later transaction wrote the keys.
        store.put_committed(b"a", b"later", 20, 21);
        let retry = prewrite(&store.reader(), &req).unwrap();
        assert!(retry.is_empty());
        assert_eq!(retry.committed_at, Some(12));
    }
}
