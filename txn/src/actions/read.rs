//! Reads at a timestamp: a read at `ts` sees exactly the versions committed at or before `ts`.
//! A lock that may commit at or before `ts` makes the read wait (`KeyIsLocked`): the reader
//! resolves it and tries again.

use crate::lock::{blocks_read, lock_info};
use crate::mvcc::MvccReader;
use crate::{Result, TxnError};
use ringkv_proto::kvrpcpb::{LockInfo, Op};
use ringkv_proto::mvccpb::Write;

/// Which locks a read waits for.
#[derive(Debug, Clone, Copy)]
pub enum Locks<'a> {
    /// Every lock whose transaction may commit at or before the read, except those of the
    /// transactions in the slice (the reader knows they do not affect it).
    Check(&'a [u64]),
    /// None: a stale read at or below the replica's safe timestamp, where no lock can still
    /// commit at or below the read (see the node's `resolved_ts`).
    Ignore,
}

/// Locks reported by one read at most.
pub const LOCKS_REPORTED_MAX: usize = 256;

fn check_lock(
    reader: &MvccReader<'_>,
    key: &[u8],
    ts: u64,
    locks: Locks<'_>,
) -> Result<Option<LockInfo>> {
    let Locks::Check(resolved) = locks else {
        return Ok(None);
    };
    Ok(reader
        .load_lock(key)?
        .filter(|l| blocks_read(l, ts, resolved))
        .map(|l| lock_info(key, &l)))
}

/// The value of `key` at `ts`.
pub fn get(
    reader: &MvccReader<'_>,
    key: &[u8],
    ts: u64,
    locks: Locks<'_>,
) -> Result<Option<Vec<u8>>> {
    if let Some(lock) = check_lock(reader, key, ts, locks)? {
        return Err(TxnError::KeyIsLocked(vec![lock]));
    }
    reader.get(key, ts)
}

/// The values of `keys` at `ts` that exist, in request order. Every lock met is reported.
pub fn batch_get(
    reader: &MvccReader<'_>,
    keys: &[Vec<u8>],
    ts: u64,
    rule: Locks<'_>,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut locks = Vec::new();
    let mut out = Vec::new();
    for key in keys {
        if let Some(lock) = check_lock(reader, key, ts, rule)? {
            locks.push(lock);
            continue;
        }
        if locks.is_empty() {
            if let Some(v) = reader.get(key, ts)? {
                out.push((key.clone(), v));
            }
        }
    }
    if !locks.is_empty() {
        return Err(TxnError::KeyIsLocked(locks));
    }
    Ok(out)
}

/// Visits the versions visible at `ts` of the keys in the encoded range `[start, end)` that
/// `wanted` accepts, in encoded-key order, until `visit` returns false. Deleted keys are not
/// visited. Locks are checked first, over the whole range: one blocking lock and nothing is
/// visited (`KeyIsLocked` with up to [`LOCKS_REPORTED_MAX`] locks). The visitor gets the
/// write record; [`MvccReader::value_of`] gives its value.
pub fn scan(
    reader: &MvccReader<'_>,
    start: &[u8],
    end: &[u8],
    ts: u64,
    rule: Locks<'_>,
    wanted: &dyn Fn(&[u8]) -> bool,
    visit: &mut dyn FnMut(&[u8], &Write) -> bool,
) -> Result<()> {
    let mut locks = Vec::new();
    let mut from = start.to_vec();
    while let Locks::Check(resolved) = rule {
        let batch = reader.scan_locks(&from, end, 1024)?;
        let done = batch.len() < 1024;
        for (key, lock) in &batch {
            if wanted(key) && blocks_read(lock, ts, resolved) && locks.len() < LOCKS_REPORTED_MAX {
                locks.push(lock_info(key, lock));
            }
        }
        match batch.last() {
            Some((last, _)) if !done => {
                from = last.clone();
                from.push(0);
            }
            _ => break,
        }
    }
    if !locks.is_empty() {
        return Err(TxnError::KeyIsLocked(locks));
    }
    let mut current: Vec<u8> = Vec::new();
    let mut decided = true;
    reader.scan_writes(start, end, &mut |key, commit_ts, write| {
        if key != current.as_slice() {
            current.clear();
            current.extend_from_slice(key);
            decided = !wanted(key);
        }
        if decided || commit_ts > ts {
            return true;
        }
        if write.op == Op::Put as i32 {
            decided = true;
            return visit(key, &write);
        }
        if write.op == Op::Delete as i32 {
            decided = true;
        }
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::test_util::*;

    #[test]
    fn a_read_sees_exactly_the_versions_committed_at_or_before_its_ts() {
        let store = Store::new();
        store.put_committed(b"k", b"v1", 10, 11);
        store.put_committed(b"k", b"v2", 20, 21);
        store.delete_committed(b"k", 30, 31);
        store.put_committed(b"k", b"v4", 40, 41);
        let r = store.reader();
        assert_eq!(get(&r, b"k", 10, Locks::Check(&[])).unwrap(), None);
        assert_eq!(
            get(&r, b"k", 11, Locks::Check(&[])).unwrap(),
            Some(b"v1".to_vec())
        );
        assert_eq!(
            get(&r, b"k", 25, Locks::Check(&[])).unwrap(),
            Some(b"v2".to_vec())
        );
        assert_eq!(get(&r, b"k", 31, Locks::Check(&[])).unwrap(), None);
        assert_eq!(
            get(&r, b"k", 41, Locks::Check(&[])).unwrap(),
            Some(b"v4".to_vec())
        );
        // Rollback and lock records change nothing.
        store.apply(crate::actions::rollback::rollback(&store.reader(), 50, b"k").unwrap());
        assert_eq!(
            get(&store.reader(), b"k", 60, Locks::Check(&[])).unwrap(),
            Some(b"v4".to_vec())
        );
    }

    #[test]
    fn a_lock_blocks_reads_at_or_after_its_start_ts_until_pushed_or_resolved() {
        let store = Store::new();
        store.put_committed(b"k", b"old", 5, 6);
        store.prewrite(&[put(b"k", b"new")], b"k", 10).unwrap();
        let r = store.reader();
        assert_eq!(
            get(&r, b"k", 9, Locks::Check(&[])).unwrap(),
            Some(b"old".to_vec())
        );
        assert!(matches!(
            get(&r, b"k", 12, Locks::Check(&[])),
            Err(TxnError::KeyIsLocked(_))
        ));
        assert_eq!(
            get(&r, b"k", 12, Locks::Check(&[10])).unwrap(),
            Some(b"old".to_vec())
        );
        // A stale read (below the safe timestamp) passes every lock.
        assert_eq!(
            get(&r, b"k", 12, Locks::Ignore).unwrap(),
            Some(b"old".to_vec())
        );
        let mut seen = Vec::new();
        scan(&r, b"a", b"z", 12, Locks::Ignore, &|_| true, &mut |k, _| {
            seen.push(k.to_vec());
            true
        })
        .unwrap();
        assert_eq!(seen, [b"k".to_vec()]);
        // Lock-only locks (lock_keys) never block reads.
        let lock_only = ringkv_proto::kvrpcpb::Mutation {
            op: Op::Lock as i32,
            key: b"m".to_vec(),
            value: vec![],
        };
        store.prewrite(&[lock_only], b"m", 10).unwrap();
        assert_eq!(
            get(&store.reader(), b"m", 12, Locks::Check(&[])).unwrap(),
            None
        );
    }

    #[test]
    fn batch_get_reports_every_lock() {
        let store = Store::new();
        store.put_committed(b"a", b"1", 5, 6);
        store.prewrite(&[put(b"b", b"2")], b"b", 10).unwrap();
        store.prewrite(&[put(b"c", b"3")], b"c", 11).unwrap();
        let keys = vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()];
        match batch_get(&store.reader(), &keys, 20, Locks::Check(&[])) {
            Err(TxnError::KeyIsLocked(l)) => assert_eq!(l.len(), 2),
            other => panic!("{other:?}"),
        }
        let got = batch_get(&store.reader(), &keys, 20, Locks::Check(&[10, 11])).unwrap();
        assert_eq!(got, vec![(b"a".to_vec(), b"1".to_vec())]);
    }

    #[test]
    fn scan_returns_the_newest_visible_version_of_each_key_and_skips_deleted_ones() {
        let store = Store::new();
        store.put_committed(b"a", b"a1", 5, 6);
        store.put_committed(b"a", b"a2", 7, 8);
        store.put_committed(b"b", b"b1", 5, 6);
        store.delete_committed(b"b", 7, 8);
        store.put_committed(b"c", b"c1", 9, 10);
        store.put_committed(b"d", b"d1", 5, 6);
        let collect = |ts: u64, wanted: &dyn Fn(&[u8]) -> bool| {
            let r = store.reader();
            let mut out = Vec::new();
            scan(
                &r,
                b"a",
                b"z",
                ts,
                Locks::Check(&[]),
                wanted,
                &mut |k, w| {
                    out.push((k.to_vec(), r.value_of(k, w).unwrap()));
                    true
                },
            )
            .unwrap();
            out
        };
        let pairs = |v: &[(&[u8], &[u8])]| -> Vec<(Vec<u8>, Vec<u8>)> {
            v.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
        };
        assert_eq!(
            collect(8, &|_| true),
            pairs(&[(b"a", b"a2"), (b"d", b"d1")])
        );
        assert_eq!(
            collect(7, &|_| true),
            pairs(&[(b"a", b"a1"), (b"b", b"b1"), (b"d", b"d1")])
        );
        assert_eq!(
            collect(20, &|k| k != b"a"),
            pairs(&[(b"c", b"c1"), (b"d", b"d1")])
        );
        store.prewrite(&[put(b"c", b"x")], b"c", 15).unwrap();
        let r = store.reader();
        assert!(matches!(
            scan(
                &r,
                b"a",
                b"z",
                20,
                Locks::Check(&[]),
                &|_| true,
                &mut |_, _| true
            ),
            Err(TxnError::KeyIsLocked(_))
        ));
        // A lock outside what the scan wants does not block it.
        scan(
            &r,
            b"a",
            b"z",
            20,
            Locks::Check(&[]),
            &|k| k != b"c",
            &mut |_, _| true,
        )
        .unwrap();
    }
}
