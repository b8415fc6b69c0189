//! TxnHeartBeat: a long transaction extends its primary lock's TTL so readers do not roll it
//! back as dead.

use crate::mvcc::{MvccReader, MvccTxn};
use crate::{Result, TxnError};

/// Raises the TTL of the primary lock of `start_ts` to `advise_ttl_ms` (never lowers it).
/// Returns the TTL in force.
pub fn txn_heart_beat(
    reader: &MvccReader<'_>,
    primary: &[u8],
    start_ts: u64,
    advise_ttl_ms: u64,
) -> Result<(MvccTxn, u64)> {
    let mut txn = MvccTxn::new(start_ts);
    match reader.load_lock(primary)? {
        Some(mut lock) if lock.start_ts == start_ts => {
            if advise_ttl_ms > lock.ttl_ms {
                lock.ttl_ms = advise_ttl_ms;
                txn.put_lock(primary, &lock);
            }
            Ok((txn, lock.ttl_ms))
        }
        _ => Err(TxnError::TxnLockNotFound {
            start_ts,
            key: primary.to_vec(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::test_util::*;

    #[test]
    fn heart_beat_only_raises_the_ttl_of_a_live_lock() {
        let store = Store::new();
        store
            .prewrite_ttl(&[put(b"p", b"1")], b"p", 10, 3_000)
            .unwrap();
        let (txn, ttl) = txn_heart_beat(&store.reader(), b"p", 10, 10_000).unwrap();
        store.apply(txn);
        assert_eq!((ttl, store.lock(b"p").unwrap().ttl_ms), (10_000, 10_000));
        let (txn, ttl) = txn_heart_beat(&store.reader(), b"p", 10, 5_000).unwrap();
        assert!(txn.is_empty());
        assert_eq!(ttl, 10_000);
        assert!(matches!(
            txn_heart_beat(&store.reader(), b"p", 99, 5_000),
            Err(TxnError::TxnLockNotFound { .. })
        ));
    }
}
