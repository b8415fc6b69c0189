use crate::timestamp::physical_ms;
use ringkv_proto::kvrpcpb::{LockInfo, Op};
use ringkv_proto::mvccpb::Lock;

/// A lock as the client sees it.
pub fn lock_info(key: &[u8], lock: &Lock) -> LockInfo {
    LockInfo {
        primary_lock: lock.primary.clone(),
        lock_version: lock.start_ts,
        key: key.to_vec(),
        lock_ttl: lock.ttl_ms,
        lock_type: lock.op,
        min_commit_ts: lock.min_commit_ts,
        txn_size: lock.txn_size,
    }
}

/// Whether `lock` has outlived its TTL at `current_ts`.
pub fn expired(lock: &Lock, current_ts: u64) -> bool {
    physical_ms(lock.start_ts).saturating_add(lock.ttl_ms) <= physical_ms(current_ts)
}

/// Whether a read at `read_ts` must wait for (resolve) `lock`: locks of `Lock` kind never
/// change a value, locks of later transactions are invisible, and a lock whose transaction can
/// only commit after `read_ts` (pushed by an earlier reader) cannot affect it either.
pub fn blocks_read(lock: &Lock, read_ts: u64, resolved: &[u64]) -> bool {
    lock.op != Op::Lock as i32
        && lock.start_ts <= read_ts
        && lock.min_commit_ts <= read_ts
        && !resolved.contains(&lock.start_ts)
}

/// The state of a transaction as seen on its primary key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockStatus {
    /// Still running: its lock, with the TTL and min_commit_ts now in force.
    Locked(Lock),
    Committed {
        commit_ts: u64,
    },
    RolledBack,
}
