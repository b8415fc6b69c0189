//! The Raft log store: logs and hard states of many Raft groups in one engine.

use crate::Result;
use raft::eraftpb::{Entry, HardState};

/// What one write puts into the log engine, for any number of regions. Applied atomically and,
/// when asked, synced once: this is the group commit of a poll round.
#[derive(Default, Debug)]
pub struct RaftLogBatch {
    pub(crate) groups: Vec<GroupWrite>,
}

#[derive(Debug)]
pub(crate) struct GroupWrite {
    pub region_id: u64,
    /// Entries to append; any stored entries at or after the first one's index are replaced.
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    /// Drop everything stored for the region before applying the rest of this write (a peer
    /// that applied a snapshot starts its log afresh).
    pub clean: bool,
}

impl RaftLogBatch {
    fn group(&mut self, region_id: u64) -> &mut GroupWrite {
        if let Some(pos) = self.groups.iter().position(|g| g.region_id == region_id) {
            return &mut self.groups[pos];
        }
        self.groups.push(GroupWrite {
            region_id,
            entries: Vec::new(),
            hard_state: None,
            clean: false,
        });
        self.groups.last_mut().expect("just pushed")
    }

    /// Appends `entries` to the log of `region_id`. They must be contiguous.
    pub fn append(&mut self, region_id: u64, entries: &[Entry]) {
        if entries.is_empty() {
            return;
        }
        let group = self.group(region_id);
        if let (Some(last), Some(first)) = (group.entries.last(), entries.first()) {
            // A later append in the same batch overwrites a suffix of an earlier one.
            if first.index <= last.index {
                let keep = group
                    .entries
                    .iter()
                    .position(|e| e.index >= first.index)
                    .unwrap_or(group.entries.len());
                group.entries.truncate(keep);
            }
            assert!(
                group
                    .entries
                    .last()
                    .is_none_or(|l| l.index + 1 == first.index),
                "log append for region {region_id} would leave a hole"
            );
        }
        group.entries.extend_from_slice(entries);
    }

    /// Drops every stored entry and the hard state of `region_id` first; entries and hard state
    /// added to this batch afterwards are kept.
    pub fn clean(&mut self, region_id: u64) {
        let group = self.group(region_id);
        group.clean = true;
        group.entries.clear();
        group.hard_state = None;
    }

    /// Records the hard state of `region_id`.
    pub fn set_hard_state(&mut self, region_id: u64, hard_state: &HardState) {
        self.group(region_id).hard_state = Some(hard_state.clone());
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Number of entries across all regions.
    pub fn entry_count(&self) -> usize {
        self.groups.iter().map(|g| g.entries.len()).sum()
    }
}

/// A store of Raft logs and hard states for many regions.
///
/// Invariants kept by every implementation: a region's entries are contiguous from
/// `first_index` to `last_index`; a write is atomic across all regions it touches; after
/// `write(_, true)` returns, the write survives a crash.
pub trait RaftLogEngine: Send + Sync + 'static {
    /// Writes `batch` atomically; syncs it to disk first when `sync` is set.
    fn write(&self, batch: RaftLogBatch, sync: bool) -> Result<()>;
    /// The last hard state written for `region_id`.
    fn hard_state(&self, region_id: u64) -> Result<Option<HardState>>;
    /// Entries with index in `[low, high)`, stopping after `max_size` bytes (at least one entry).
    fn entries(
        &self,
        region_id: u64,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>>;
    /// Index of the first stored entry of `region_id`, if it has any.
    fn first_index(&self, region_id: u64) -> Option<u64>;
    /// Index of the last stored entry of `region_id`, if it has any.
    fn last_index(&self, region_id: u64) -> Option<u64>;
    /// Drops entries with index below `index`.
    fn compact_to(&self, region_id: u64, index: u64) -> Result<()>;
    /// Removes everything of `region_id` (used when a peer is destroyed).
    fn clean(&self, region_id: u64) -> Result<()>;
    /// Reclaims disk space of compacted entries, where the engine does that in the background
    /// of its callers.
    fn purge(&self) -> Result<()>;
    /// Regions with anything stored.
    fn region_ids(&self) -> Vec<u64>;
}
