//! CheckTxnStatus: what a transaction met through one of its locks is doing, decided on its
//! primary key. An expired primary lock is rolled back here (the transaction is dead); a live
//! one may have its min_commit_ts pushed past a reader so the reader need not wait.

use crate::lock::{expired, LockStatus};
use crate::mvcc::{MvccReader, MvccTxn, TxnCommitRecord};
use crate::{Result, TxnError};
use ringkv_proto::kvrpcpb::{Op, TxnAction};

#[derive(Debug, Clone)]
pub struct CheckTxnStatus<'a> {
    pub primary: &'a [u8],
    pub lock_ts: u64,
    /// The reader's start_ts to push min_commit_ts past; 0: do not push.
    pub caller_start_ts: u64,
    pub current_ts: u64,
    pub rollback_if_not_exist: bool,
}

pub fn check_txn_status(
    reader: &MvccReader<'_>,
    req: &CheckTxnStatus<'_>,
) -> Result<(MvccTxn, (LockStatus, TxnAction))> {
    let mut txn = MvccTxn::new(req.lock_ts);
    match reader.load_lock(req.primary)? {
        Some(lock) if lock.start_ts == req.lock_ts => {
            if expired(&lock, req.current_ts) {
                crate::actions::rollback::rollback_key(reader, &mut txn, req.primary)?;
                return Ok((txn, (LockStatus::RolledBack, TxnAction::TtlExpireRollback)));
            }
            let mut lock = lock;
            let mut action = TxnAction::None;
            if req.caller_start_ts > 0
                && lock.op != Op::Lock as i32
                && lock.min_commit_ts <= req.caller_start_ts
            {
                lock.min_commit_ts = req.caller_start_ts.saturating_add(1);
                txn.put_lock(req.primary, &lock);
                action = TxnAction::MinCommitTsPushed;
            }
            Ok((txn, (LockStatus::Locked(lock), action)))
        }
        _ => match reader.txn_commit_record(req.primary, req.lock_ts)? {
            TxnCommitRecord::Committed { commit_ts, .. } => {
                Ok((txn, (LockStatus::Committed { commit_ts }, TxnAction::None)))
            }
            TxnCommitRecord::RolledBack => Ok((txn, (LockStatus::RolledBack, TxnAction::None))),
            TxnCommitRecord::None if req.rollback_if_not_exist => {
                txn.put_rollback(req.primary);
                Ok((
                    txn,
                    (LockStatus::RolledBack, TxnAction::LockNotExistRollback),
                ))
            }
            TxnCommitRecord::None => Err(TxnError::TxnNotFound {
                start_ts: req.lock_ts,
                primary_key: req.primary.to_vec(),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::test_util::*;
    use crate::timestamp::from_physical_ms;

    fn check(
        store: &Store,
        lock_ts: u64,
        caller: u64,
        now: u64,
        rollback: bool,
    ) -> Result<(LockStatus, TxnAction)> {
        let (txn, status) = check_txn_status(
            &store.reader(),
            &CheckTxnStatus {
                primary: b"p",
                lock_ts,
                caller_start_ts: caller,
                current_ts: now,
                rollback_if_not_exist: rollback,
            },
        )?;
        store.apply(txn);
        Ok(status)
    }

    #[test]
    fn a_live_lock_is_reported_and_pushed_past_the_reader() {
        let store = Store::new();
        let start = from_physical_ms(1_000);
        store
            .prewrite_ttl(&[put(b"p", b"1")], b"p", start, 3_000)
            .unwrap();
        let (status, action) =
            check(&store, start, start + 50, from_physical_ms(2_000), false).unwrap();
        assert!(matches!(status, LockStatus::Locked(ref l) if l.min_commit_ts == start + 51));
        assert_eq!(action, TxnAction::MinCommitTsPushed);
        assert_eq!(store.lock(b"p").unwrap().min_commit_ts, start + 51);
        // A reader further in the past pushes nothing.
        let (_, action) = check(&store, start, start + 10, from_physical_ms(2_000), false).unwrap();
        assert_eq!(action, TxnAction::None);
    }

    #[test]
    fn an_expired_lock_is_rolled_back_and_stays_rolled_back() {
        let store = Store::new();
        let start = from_physical_ms(1_000);
        store
            .prewrite_ttl(&[put(b"p", b"1")], b"p", start, 3_000)
            .unwrap();
        let (status, action) = check(&store, start, 0, from_physical_ms(4_000), false).unwrap();
        assert_eq!(
            (status, action),
            (LockStatus::RolledBack, TxnAction::TtlExpireRollback)
        );
        assert!(store.lock(b"p").is_none());
        let (status, _) = check(&store, start, 0, from_physical_ms(4_000), false).unwrap();
        assert_eq!(status, LockStatus::RolledBack);
    }

    #[test]
    fn a_committed_transaction_reports_its_commit_ts() {
        let store = Store::new();
        store.put_committed(b"p", b"1", 10, 20);
        assert_eq!(
            check(&store, 10, 0, 30, true).unwrap().0,
            LockStatus::Committed { commit_ts: 20 }
        );
    }

    #[test]
    fn a_missing_transaction_is_an_error_or_rolled_back_on_request() {
        let store = Store::new();
        assert!(matches!(
            check(&store, 10, 0, 30, false),
            Err(TxnError::TxnNotFound { .. })
        ));
        let (status, action) = check(&store, 10, 0, 30, true).unwrap();
        assert_eq!(
            (status, action),
            (LockStatus::RolledBack, TxnAction::LockNotExistRollback)
        );
        // Its prewrite can no longer succeed.
        assert!(store.prewrite(&[put(b"p", b"1")], b"p", 10).is_err());
    }
}
