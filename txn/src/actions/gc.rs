//! GC: drops the versions no read can see any more. Reads below the safe point are refused,
//! so of the versions committed at or before it only the newest put matters; everything older
//! (and a delete, rollback or lock record at or below it) goes.

use crate::mvcc::{MvccReader, MvccTxn};
use crate::Result;
use ringkv_proto::kvrpcpb::Op;

/// The writes that collect the garbage of `key` below `safe_point`.
pub fn gc_key(
    reader: &MvccReader<'_>,
    key: &[u8],
    safe_point: u64,
    txn: &mut MvccTxn,
) -> Result<usize> {
    let mut removed = 0;
    let mut keep_found = false;
    for (commit_ts, write) in reader.all_writes(key)? {
        if commit_ts > safe_point {
            continue;
        }
        if !keep_found && write.op == Op::Put as i32 {
            keep_found = true;
            continue;
        }
        if write.op == Op::Delete as i32 || write.op == Op::Put as i32 {
            // After the newest put or delete at or below the safe point, nothing older is
            // visible to any allowed read.
            keep_found = true;
        }
        txn.delete_write(key, commit_ts);
        if write.op == Op::Put as i32 && write.short_value.is_none() {
            txn.delete_value(key, write.start_ts);
        }
        removed += 1;
    }
    Ok(removed)
}

/// The GC writes for every key of `keys`.
pub fn gc_keys(
    reader: &MvccReader<'_>,
    keys: &[Vec<u8>],
    safe_point: u64,
) -> Result<(MvccTxn, usize)> {
    let mut txn = MvccTxn::new(0);
    let mut removed = 0;
    for key in keys {
        removed += gc_key(reader, key, safe_point, &mut txn)?;
    }
    Ok((txn, removed))
}

/// Where a scan for garbage got to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GcScan {
    /// Keys with garbage below the safe point.
    pub keys: Vec<Vec<u8>>,
    /// The encoded key to resume at; None when the range is done.
    pub next: Option<Vec<u8>>,
    /// The oldest commit_ts above the safe point among the records looked at: no new garbage
    /// appears there before the safe point reaches it (or something new is written).
    pub oldest_above: Option<u64>,
}

/// Finds up to `limit` keys in the encoded range `[start, end)` with garbage below
/// `safe_point`, looking at no more than `scan_max` write records: a key has garbage when more
/// than one version is at or below the safe point, or the newest of them is not a put.
pub fn keys_with_garbage(
    reader: &MvccReader<'_>,
    start: &[u8],
    end: &[u8],
    safe_point: u64,
    limit: usize,
    scan_max: usize,
) -> Result<GcScan> {
    let mut out = GcScan::default();
    let mut current: Vec<u8> = Vec::new();
    let mut below = 0usize;
    let mut newest_below_is_put = false;
    let mut seen = 0usize;
    let finish = |key: &[u8], below: usize, newest_put: bool, out: &mut GcScan| {
        if below > 1 || (below == 1 && !newest_put) {
            out.keys.push(key.to_vec());
        }
    };
    let mut stopped_at = None;
    reader.scan_writes(start, end, &mut |key, commit_ts, write| {
        if key != current.as_slice() {
            if !current.is_empty() {
                finish(&current, below, newest_below_is_put, &mut out);
            }
            if out.keys.len() >= limit || seen >= scan_max {
                stopped_at = Some(key.to_vec());
                current.clear();
                return false;
            }
            current.clear();
            current.extend_from_slice(key);
            below = 0;
        }
        seen += 1;
        if commit_ts > safe_point {
            out.oldest_above = Some(out.oldest_above.map_or(commit_ts, |o| o.min(commit_ts)));
        }
        if commit_ts <= safe_point {
            if below == 0 {
                newest_below_is_put = write.op == Op::Put as i32;
            }
            below += 1;
        }
        true
    })?;
    if !current.is_empty() {
        finish(&current, below, newest_below_is_put, &mut out);
    }
    out.next = stopped_at;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::test_util::*;
    use crate::SHORT_VALUE_MAX_BYTES;

    #[test]
    fn gc_keeps_the_newest_put_below_the_safe_point_and_everything_above() {
        let store = Store::new();
        let big = vec![3u8; SHORT_VALUE_MAX_BYTES + 1];
        store.put_committed(b"k", &big, 10, 11);
        store.put_committed(b"k", b"v2", 20, 21);
        store.put_committed(b"k", b"v3", 30, 31);
        store.put_committed(b"k", b"v4", 40, 41);
        let scan = keys_with_garbage(&store.reader(), b"", b"", 35, 10, 1000).unwrap();
        assert_eq!(scan.keys, vec![b"k".to_vec()]);
        let (txn, removed) = gc_keys(&store.reader(), &scan.keys, 35).unwrap();
        store.apply(txn);
        assert_eq!(removed, 2);
        assert_eq!(store.get(b"k", 35), Some(b"v3".to_vec()));
        assert_eq!(store.get(b"k", 41), Some(b"v4".to_vec()));
        assert_eq!(
            store.data_keys(ringkv_storage::layout::Cf::Default),
            0,
            "the big value went too"
        );
        assert_eq!(store.data_keys(ringkv_storage::layout::Cf::Write), 2);
        assert!(keys_with_garbage(&store.reader(), b"", b"", 35, 10, 1000)
            .unwrap()
            .keys
            .is_empty());
    }

    #[test]
    fn gc_drops_a_deleted_key_entirely() {
        let store = Store::new();
        store.put_committed(b"k", b"v1", 10, 11);
        store.delete_committed(b"k", 20, 21);
        let (txn, removed) = gc_keys(&store.reader(), &[b"k".to_vec()], 30).unwrap();
        store.apply(txn);
        assert_eq!(removed, 2);
        assert_eq!(store.data_keys(ringkv_storage::layout::Cf::Write), 0);
    }

    #[test]
    fn the_garbage_scan_is_bounded_and_resumes_where_it_stopped() {
        let store = Store::new();
        for k in [b"a", b"b", b"c"] {
            store.put_committed(k, b"1", 10, 11);
            store.put_committed(k, b"2", 20, 21);
        }
        store.put_committed(b"d", b"1", 10, 11);
        let first = keys_with_garbage(&store.reader(), b"", b"", 30, 2, 1000).unwrap();
        assert_eq!(first.keys, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(first.oldest_above, None);
        assert_eq!(
            keys_with_garbage(&store.reader(), b"", b"", 15, 10, 1000)
                .unwrap()
                .oldest_above,
            Some(21)
        );
        let next = first.next.clone().unwrap();
        let rest = keys_with_garbage(&store.reader(), &next, b"", 30, 2, 1000).unwrap();
        assert_eq!(rest.keys, vec![b"c".to_vec()]);
        assert_eq!(rest.next, None);
    }
}
