//! In-memory locks of one-phase commits in flight.
//!
//! A one-phase commit writes its keys committed with no lock in storage, at a commit_ts the node
//! takes from the TSO after it is sure it leads the region. Between taking that timestamp and
//! applying the writes, a reader with a later timestamp must not read the keys (it would miss
//! a version committed before its snapshot). So the keys are locked here first, then the
//! timestamp is taken; a reader that starts after the commit's start_ts waits until they are
//! unlocked. A reader that checked before the lock was taken got its timestamp before the
//! commit_ts existed, so the commit is invisible to it anyway.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

#[derive(Default)]
pub struct MemoryLocks {
    /// Encoded key → start_ts of the one-phase commit holding it. Latches keep two commits
    /// from holding one key.
    locks: Mutex<BTreeMap<Vec<u8>, u64>>,
}

/// The locks of one commit; dropping it unlocks them.
pub struct MemoryLockGuard {
    table: Arc<MemoryLocks>,
    keys: Vec<Vec<u8>>,
}

impl Drop for MemoryLockGuard {
    fn drop(&mut self) {
        let mut locks = self.table.locks.lock();
        for key in &self.keys {
            locks.remove(key);
        }
    }
}

impl MemoryLocks {
    pub fn lock(self: &Arc<Self>, keys: &[Vec<u8>], start_ts: u64) -> MemoryLockGuard {
        let mut locks = self.locks.lock();
        assert!(
            keys.iter().all(|k| !locks.contains_key(k)),
            "latches keep one commit per key"
        );
        for key in keys {
            locks.insert(key.clone(), start_ts);
        }
        MemoryLockGuard {
            table: self.clone(),
            keys: keys.to_vec(),
        }
    }

    /// Whether a read at `read_ts` of any of `keys` must wait.
    pub fn blocks_keys(&self, keys: &[Vec<u8>], read_ts: u64) -> bool {
        let locks = self.locks.lock();
        !locks.is_empty()
            && keys
                .iter()
                .any(|k| locks.get(k).is_some_and(|&start_ts| start_ts <= read_ts))
    }

    /// The oldest start_ts of a commit holding a key in the encoded range `[start, end)`.
    pub fn oldest_in(&self, start: &[u8], end: &[u8]) -> Option<u64> {
        let locks = self.locks.lock();
        let upper = if end.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(end.to_vec())
        };
        locks
            .range((Bound::Included(start.to_vec()), upper))
            .map(|(_, &start_ts)| start_ts)
            .min()
    }

    /// Whether a read at `read_ts` of the encoded range `[start, end)` must wait.
    pub fn blocks_range(&self, start: &[u8], end: &[u8], read_ts: u64) -> bool {
        let locks = self.locks.lock();
        let upper = if end.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(end.to_vec())
        };
        locks
            .range((Bound::Included(start.to_vec()), upper))
            .any(|(_, &start_ts)| start_ts <= read_ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_blocks_reads_from_its_start_ts_on_until_dropped() {
        let table = Arc::new(MemoryLocks::default());
        let guard = table.lock(&[b"k".to_vec()], 10);
        assert!(!table.blocks_keys(&[b"k".to_vec()], 9));
        assert!(table.blocks_keys(&[b"j".to_vec(), b"k".to_vec()], 10));
        assert!(table.blocks_range(b"a", b"z", 11));
        assert!(!table.blocks_range(b"l", b"", 11));
        let other = table.lock(&[b"m".to_vec()], 7);
        assert_eq!(table.oldest_in(b"a", b""), Some(7));
        assert_eq!(table.oldest_in(b"a", b"l"), Some(10));
        assert_eq!(table.oldest_in(b"n", b""), None);
        drop((guard, other));
        assert!(!table.blocks_keys(&[b"k".to_vec()], 11));
        assert_eq!(table.oldest_in(b"", b""), None);
    }
}
