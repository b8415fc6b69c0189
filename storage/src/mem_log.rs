//! The in-memory twin of [`RaftEngineLog`](crate::RaftEngineLog), with the same semantics.

use crate::log::{RaftLogBatch, RaftLogEngine};
use crate::{Result, StorageError};
use parking_lot::Mutex;
use raft::eraftpb::{Entry, HardState};
use std::collections::{BTreeMap, VecDeque};

#[derive(Default, Clone)]
struct Group {
    first_index: u64,
    entries: VecDeque<Entry>,
    hard_state: Option<HardState>,
}

impl Group {
    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|e| e.index)
    }

    fn append(&mut self, region_id: u64, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        match self.last_index() {
            None => self.first_index = first.index,
            Some(last) => {
                assert!(
                    first.index >= self.first_index,
                    "attempt to overwrite compacted entries in region {region_id}"
                );
                assert!(
                    first.index <= last + 1,
                    "log of region {region_id} would have a hole"
                );
                let keep = (first.index - self.first_index) as usize;
                self.entries.truncate(keep);
            }
        }
        self.entries.extend(entries.iter().cloned());
    }
}

/// Raft logs in memory. Cloning shares nothing: use an `Arc` to share one.
#[derive(Default)]
pub struct MemLogEngine {
    groups: Mutex<BTreeMap<u64, Group>>,
    fail_next_write: std::sync::atomic::AtomicBool,
}

impl MemLogEngine {
    pub fn new() -> Self {
        Self::default()
    }

    /// With `fail`, the next write fails and writes nothing (a disk fault while writing the
    /// log, before the sync); a simulation uses it to crash a node mid-round.
    pub fn set_fail_next_write(&self, fail: bool) {
        self.fail_next_write
            .store(fail, std::sync::atomic::Ordering::SeqCst);
    }
}

impl RaftLogEngine for MemLogEngine {
    fn write(&self, batch: RaftLogBatch, _sync: bool) -> Result<()> {
        if self
            .fail_next_write
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(crate::StorageError::Injected(
                "log write failed before its sync",
            ));
        }
        let mut groups = self.groups.lock();
        for write in batch.groups {
            if write.clean {
                groups.remove(&write.region_id);
            }
            let group = groups.entry(write.region_id).or_default();
            group.append(write.region_id, &write.entries);
            if let Some(hs) = write.hard_state {
                group.hard_state = Some(hs);
            }
        }
        Ok(())
    }

    fn hard_state(&self, region_id: u64) -> Result<Option<HardState>> {
        Ok(self
            .groups
            .lock()
            .get(&region_id)
            .and_then(|g| g.hard_state.clone()))
    }

    fn entries(
        &self,
        region_id: u64,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>> {
        let groups = self.groups.lock();
        let unavailable = |first, last| StorageError::EntriesUnavailable {
            region_id,
            low,
            high,
            first,
            last,
        };
        let group = groups.get(&region_id).ok_or_else(|| unavailable(0, 0))?;
        let last = group.last_index().ok_or_else(|| unavailable(0, 0))?;
        if low < group.first_index || high > last + 1 || low > high {
            return Err(unavailable(group.first_index, last));
        }
        let mut out = Vec::new();
        let mut size = 0u64;
        for entry in group
            .entries
            .range((low - group.first_index) as usize..(high - group.first_index) as usize)
        {
            size += protobuf::Message::compute_size(entry) as u64;
            if !out.is_empty() && max_size.is_some_and(|m| size > m) {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn first_index(&self, region_id: u64) -> Option<u64> {
        let groups = self.groups.lock();
        let group = groups.get(&region_id)?;
        group.last_index().map(|_| group.first_index)
    }

    fn last_index(&self, region_id: u64) -> Option<u64> {
        self.groups.lock().get(&region_id)?.last_index()
    }

    fn compact_to(&self, region_id: u64, index: u64) -> Result<()> {
        let mut groups = self.groups.lock();
        if let Some(group) = groups.get_mut(&region_id) {
            while group.first_index < index && !group.entries.is_empty() {
                group.entries.pop_front();
                group.first_index += 1;
            }
        }
        Ok(())
    }

    fn clean(&self, region_id: u64) -> Result<()> {
        self.groups.lock().remove(&region_id);
        Ok(())
    }

    fn region_ids(&self) -> Vec<u64> {
        self.groups.lock().keys().copied().collect()
    }

    fn purge(&self) -> Result<()> {
        Ok(())
    }
}
