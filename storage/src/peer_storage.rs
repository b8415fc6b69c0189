//! raft-rs's `Storage` for one peer, over the node's shared [`RaftLogEngine`].

use crate::layout;
use crate::log::{RaftLogBatch, RaftLogEngine};
use crate::{KvEngine, KvWriteBatch, Result as StorageResult, StorageError};
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError as RaftStorageError};
use ringkv_proto::metapb::{PeerRole, Region};
use ringkv_proto::raftpb::{ApplyState, PeerState, RegionLocalState};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::Arc;

/// Index of the (virtual) entry every region created at bootstrap starts after. Peers created
/// with the same region metadata start from identical state, so no snapshot is needed to start
/// a fresh group (TiKV uses the same trick).
pub const RAFT_INIT_LOG_INDEX: u64 = 5;
/// Term of that entry.
pub const RAFT_INIT_LOG_TERM: u64 = 5;

/// Most recent entries whose terms are kept in memory, so `term()` rarely reads the log.
const TERM_CACHE_ENTRIES_MAX: usize = 4096;

/// The voters and learners of `region`, as raft-rs wants them.
pub fn conf_state_of(region: &Region) -> ConfState {
    let mut cs = ConfState::default();
    for peer in &region.peers {
        if peer.role == PeerRole::Learner as i32 {
            cs.learners.push(peer.id);
        } else {
            cs.voters.push(peer.id);
        }
    }
    cs
}

/// The log, hard state and apply state of one peer.
///
/// Invariants: `truncated_index <= applied_index <= commit <= last_index`; entries
/// `(truncated_index, last_index]` are in the log engine.
pub struct PeerStorage {
    region: Region,
    hard_state: HardState,
    apply_state: ApplyState,
    last_index: u64,
    last_term: u64,
    /// Terms of entries `term_cache_first ..`.
    term_cache: VecDeque<u64>,
    term_cache_first: u64,
    log: Arc<dyn RaftLogEngine>,
    /// The last snapshot generated for followers that need one.
    snapshot: RefCell<Option<Snapshot>>,
    /// Raft asked for a snapshot that is not generated yet (see [`PeerStorage::snapshot`]).
    snapshot_wanted: Cell<bool>,
}

impl PeerStorage {
    /// Writes the initial state of a peer of a region created at bootstrap into `kv_batch` and
    /// `log_batch`, and returns its storage. The caller writes both batches (log first).
    pub fn create_at_bootstrap(
        region: Region,
        log: Arc<dyn RaftLogEngine>,
        kv_batch: &mut KvWriteBatch,
        log_batch: &mut RaftLogBatch,
    ) -> PeerStorage {
        let storage = PeerStorage::initial(region, log);
        log_batch.set_hard_state(storage.region.id, &storage.hard_state);
        Self::write_initial_kv_state(&storage.region, kv_batch);
        storage
    }

    /// Writes the initial state of a peer of a region created by a split into `kv_batch`, the
    /// parent's apply batch, so the split and the new region's existence are one atomic write.
    /// No hard state is written: until raft first persists one, [`PeerStorage::load`] rebuilds
    /// the initial one (see there). The new peer's storage is then loaded like any other.
    /// `parent` is the splitting region's apply state: the new region inherits its session
    /// clock and horizon (node/src/session.rs).
    pub fn write_split_state(region: &Region, parent: &ApplyState, kv_batch: &mut KvWriteBatch) {
        Self::write_initial_kv_state(region, kv_batch);
        layout::write_apply_state(
            kv_batch,
            region.id,
            &ApplyState {
                session_clock_ms: parent.session_clock_ms,
                session_horizon_ms: parent.session_horizon_ms,
                ..Self::initial_apply_state()
            },
        );
    }

    /// Whether `state` is where a region created by a split starts (whatever session clock it
    /// inherited).
    fn is_initial(state: &ApplyState) -> bool {
        let initial = Self::initial_apply_state();
        (
            state.applied_index,
            state.truncated_index,
            state.truncated_term,
        ) == (
            initial.applied_index,
            initial.truncated_index,
            initial.truncated_term,
        )
    }

    fn initial_apply_state() -> ApplyState {
        ApplyState {
            applied_index: RAFT_INIT_LOG_INDEX,
            truncated_index: RAFT_INIT_LOG_INDEX,
            truncated_term: RAFT_INIT_LOG_TERM,
            ..Default::default()
        }
    }

    fn initial_hard_state() -> HardState {
        HardState {
            term: RAFT_INIT_LOG_TERM,
            commit: RAFT_INIT_LOG_INDEX,
            ..Default::default()
        }
    }

    fn write_initial_kv_state(region: &Region, kv_batch: &mut KvWriteBatch) {
        layout::write_region_state(
            kv_batch,
            &RegionLocalState {
                state: PeerState::Normal as i32,
                region: Some(region.clone()),
                ..Default::default()
            },
        );
        layout::write_apply_state(kv_batch, region.id, &Self::initial_apply_state());
    }

    fn initial(region: Region, log: Arc<dyn RaftLogEngine>) -> PeerStorage {
        PeerStorage {
            region,
            hard_state: Self::initial_hard_state(),
            apply_state: Self::initial_apply_state(),
            last_index: RAFT_INIT_LOG_INDEX,
            last_term: RAFT_INIT_LOG_TERM,
            term_cache: VecDeque::new(),
            term_cache_first: RAFT_INIT_LOG_INDEX + 1,
            log,
            snapshot: RefCell::new(None),
            snapshot_wanted: Cell::new(false),
        }
    }

    /// The storage of a peer this store learnt of from a Raft message, before it has any data:
    /// no range, no voters, an empty log. It becomes a real replica by applying a snapshot.
    /// Nothing is persisted for it until then.
    pub fn uninitialized(region_id: u64, log: Arc<dyn RaftLogEngine>) -> PeerStorage {
        PeerStorage {
            region: Region {
                id: region_id,
                ..Default::default()
            },
            hard_state: HardState::default(),
            apply_state: ApplyState::default(),
            last_index: 0,
            last_term: 0,
            term_cache: VecDeque::new(),
            term_cache_first: 1,
            log,
            snapshot: RefCell::new(None),
            snapshot_wanted: Cell::new(false),
        }
    }

    /// Whether this peer has its region's data (it was created with the region, by a split, or
    /// has applied a snapshot).
    pub fn is_initialized(&self) -> bool {
        !self.region.peers.is_empty()
    }

    /// Loads the storage of an existing peer after a restart.
    pub fn load(
        region: Region,
        kv: &dyn KvEngine,
        log: Arc<dyn RaftLogEngine>,
    ) -> StorageResult<PeerStorage> {
        let region_id = region.id;
        let apply_state = layout::read_apply_state(kv, region_id)?.ok_or_else(|| {
            StorageError::corruption(
                format!("region {region_id}"),
                "region state exists but apply state is missing",
            )
        })?;
        let hard_state = match log.hard_state(region_id)? {
            Some(hs) => hs,
            // A peer created by a split that crashed before raft persisted anything for it: it
            // never voted nor accepted an entry, so the initial state is exactly its state.
            None if Self::is_initial(&apply_state)
                && log.last_index(region_id).is_none() =>
            {
                Self::initial_hard_state()
            }
            None => {
                return Err(StorageError::corruption(
                    format!("region {region_id}"),
                    "region state exists but the raft log has no hard state (was the raft directory replaced?)",
                ))
            }
        };
        let (last_index, last_term) = match log.last_index(region_id) {
            Some(last) if last > apply_state.truncated_index => {
                let entry = log.entries(region_id, last, last + 1, None)?;
                (last, entry[0].term)
            }
            _ => (apply_state.truncated_index, apply_state.truncated_term),
        };
        // A snapshot's data and apply state are written before its log reset: a crash between
        // leaves a commit index behind the applied one, which the snapshot proves committed.
        let mut hard_state = hard_state;
        hard_state.commit = hard_state.commit.max(apply_state.applied_index);
        let storage = PeerStorage {
            region,
            hard_state,
            apply_state,
            last_index,
            last_term,
            term_cache: VecDeque::new(),
            term_cache_first: last_index + 1,
            log,
            snapshot: RefCell::new(None),
            snapshot_wanted: Cell::new(false),
        };
        storage.check_invariants()?;
        Ok(storage)
    }

    fn check_invariants(&self) -> StorageResult<()> {
        let a = &self.apply_state;
        let ok = a.truncated_index <= a.applied_index
            && a.applied_index <= self.hard_state.commit
            && self.hard_state.commit <= self.last_index;
        if ok {
            Ok(())
        } else {
            Err(StorageError::corruption(
                format!("region {}", self.region.id),
                format!(
                    "expected truncated {} <= applied {} <= commit {} <= last {}",
                    a.truncated_index, a.applied_index, self.hard_state.commit, self.last_index
                ),
            ))
        }
    }

    pub fn region(&self) -> &Region {
        &self.region
    }

    pub fn set_region(&mut self, region: Region) {
        self.region = region;
    }

    pub fn region_id(&self) -> u64 {
        self.region.id
    }

    pub fn applied_index(&self) -> u64 {
        self.apply_state.applied_index
    }

    pub fn apply_state(&self) -> &ApplyState {
        &self.apply_state
    }

    /// Records that entries up to `index` are applied (their apply batch is written).
    pub fn set_applied_index(&mut self, index: u64) {
        assert!(
            index >= self.apply_state.applied_index,
            "region {}: applied index goes back from {} to {index}",
            self.region.id,
            self.apply_state.applied_index
        );
        self.apply_state.applied_index = index;
    }

    pub fn commit_index(&self) -> u64 {
        self.hard_state.commit
    }

    pub fn last_index_fast(&self) -> u64 {
        self.last_index
    }

    /// Adds `entries` (from a `Ready`) to `batch` and updates the in-memory view. The entries
    /// must be written before raft-rs is told they are persisted.
    pub fn append(&mut self, entries: &[Entry], batch: &mut RaftLogBatch) {
        let Some(first) = entries.first() else { return };
        let last = entries.last().expect("non-empty");
        assert!(
            first.index > self.apply_state.truncated_index && first.index <= self.last_index + 1,
            "region {}: append at {} with log ({}, {}]",
            self.region.id,
            first.index,
            self.apply_state.truncated_index,
            self.last_index
        );
        batch.append(self.region.id, entries);
        // Keep the term cache contiguous and ending at the new last index.
        if first.index < self.term_cache_first
            || first.index > self.term_cache_first + self.term_cache.len() as u64
        {
            self.term_cache.clear();
            self.term_cache_first = first.index;
        } else {
            self.term_cache
                .truncate((first.index - self.term_cache_first) as usize);
        }
        self.term_cache.extend(entries.iter().map(|e| e.term));
        while self.term_cache.len() > TERM_CACHE_ENTRIES_MAX {
            self.term_cache.pop_front();
            self.term_cache_first += 1;
        }
        self.last_index = last.index;
        self.last_term = last.term;
    }

    /// Adds the new hard state (from a `Ready`) to `batch`.
    pub fn set_hard_state(&mut self, hard_state: &HardState, batch: &mut RaftLogBatch) {
        assert!(
            hard_state.term >= self.hard_state.term,
            "region {}: term goes back from {} to {}",
            self.region.id,
            self.hard_state.term,
            hard_state.term
        );
        batch.set_hard_state(self.region.id, hard_state);
        self.hard_state = hard_state.clone();
    }

    /// Drops entries up to `index` (of term `term`) from the in-memory view; the caller writes
    /// the new apply state and compacts the log engine once that state is durable.
    pub fn compact_to(&mut self, index: u64, term: u64) {
        assert!(
            index <= self.apply_state.applied_index,
            "region {}: compaction to {index} beyond applied {}",
            self.region.id,
            self.apply_state.applied_index
        );
        if index <= self.apply_state.truncated_index {
            return;
        }
        self.apply_state.truncated_index = index;
        self.apply_state.truncated_term = term;
        while self.term_cache_first <= index && !self.term_cache.is_empty() {
            self.term_cache.pop_front();
            self.term_cache_first += 1;
        }
    }

    /// Whether raft asked for a snapshot since the last call; the raftstore then generates one
    /// between rounds, where the applied state is exactly `applied_index`.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    /// Keeps a generated snapshot for [`Storage::snapshot`] to hand out.
    pub fn set_generated_snapshot(&self, snapshot: Snapshot) {
        *self.snapshot.borrow_mut() = Some(snapshot);
    }

    /// Takes the state of an applied snapshot of `region` at `index`/`term`: the log restarts
    /// after it. The log reset (clean + hard state) goes into `log_batch`; the caller has
    /// written the data and the region and apply states.
    /// `sessions` is the snapshot's session clock and horizon (node/src/session.rs).
    pub fn apply_snapshot(
        &mut self,
        region: Region,
        index: u64,
        term: u64,
        sessions: (u64, u64),
        log_batch: &mut RaftLogBatch,
    ) {
        assert!(
            index >= self.apply_state.applied_index,
            "region {}: snapshot at {index} behind applied {}",
            self.region.id,
            self.apply_state.applied_index
        );
        self.region = region;
        self.apply_state = ApplyState {
            applied_index: index,
            truncated_index: index,
            truncated_term: term,
            session_clock_ms: sessions.0,
            session_horizon_ms: sessions.1,
        };
        self.last_index = index;
        self.last_term = term;
        self.term_cache.clear();
        self.term_cache_first = index + 1;
        self.hard_state.commit = self.hard_state.commit.max(index);
        self.hard_state.term = self.hard_state.term.max(term);
        log_batch.clean(self.region.id);
        log_batch.set_hard_state(self.region.id, &self.hard_state);
        self.snapshot.borrow_mut().take();
    }

    /// Records a commit index learnt from a light ready, persisted with the next hard state.
    pub fn set_commit_index(&mut self, commit: u64) {
        if commit > self.hard_state.commit {
            self.hard_state.commit = commit;
        }
    }
}

fn storage_failed(e: StorageError) -> raft::Error {
    raft::Error::Store(RaftStorageError::Other(Box::new(e)))
}

impl Storage for PeerStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            conf_state_of(&self.region),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.apply_state.truncated_index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        assert!(
            high <= self.last_index + 1,
            "region {}: entries [{low}, {high}) past last index {}",
            self.region.id,
            self.last_index
        );
        if low >= high {
            return Ok(Vec::new());
        }
        self.log
            .entries(self.region.id, low, high, max_size.into())
            .map_err(storage_failed)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.apply_state.truncated_index {
            return Ok(self.apply_state.truncated_term);
        }
        if idx < self.apply_state.truncated_index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        if idx == self.last_index {
            return Ok(self.last_term);
        }
        if idx >= self.term_cache_first {
            if let Some(term) = self.term_cache.get((idx - self.term_cache_first) as usize) {
                return Ok(*term);
            }
        }
        let entries = self
            .log
            .entries(self.region.id, idx, idx + 1, None)
            .map_err(storage_failed)?;
        Ok(entries[0].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.apply_state.truncated_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // Generating one scans the region, which raft must not wait for inside a step: the
        // first call asks for one, and raft retries after the raftstore has made it.
        if let Some(snap) = self.snapshot.borrow().as_ref() {
            let meta = snap.get_metadata();
            let conf = meta.get_conf_state();
            // A snapshot made before `to` joined the region does not name it: `to` would
            // refuse it, and raft would send the same one again forever. Make a new one.
            let names_to = conf.voters.contains(&to) || conf.learners.contains(&to);
            if meta.index >= request_index
                && meta.index >= self.apply_state.truncated_index
                && names_to
            {
                return Ok(snap.clone());
            }
        }
        self.snapshot_wanted.set(true);
        Err(raft::Error::Store(
            RaftStorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KvWriteBatch, MemLogEngine};
    use raft::eraftpb::{ConfState, SnapshotMetadata};
    use raft::Storage;

    fn snapshot_naming(index: u64, voters: Vec<u64>, learners: Vec<u64>) -> Snapshot {
        let conf = ConfState {
            voters,
            learners,
            ..Default::default()
        };
        let mut meta = SnapshotMetadata {
            index,
            term: 6,
            ..Default::default()
        };
        meta.set_conf_state(conf);
        let mut snap = Snapshot::default();
        snap.set_metadata(meta);
        snap
    }

    #[test]
    fn a_kept_snapshot_goes_only_to_peers_it_names_others_get_a_new_one() {
        let region = Region {
            id: 1,
            peers: vec![ringkv_proto::metapb::Peer {
                id: 1,
                store_id: 1,
                role: 0,
            }],
            ..Default::default()
        };
        let log: Arc<dyn RaftLogEngine> = Arc::new(MemLogEngine::new());
        let (mut kvb, mut logb) = (KvWriteBatch::default(), RaftLogBatch::default());
        let ps = PeerStorage::create_at_bootstrap(region, log, &mut kvb, &mut logb);
        ps.set_generated_snapshot(snapshot_naming(20, vec![1, 2, 3], vec![]));
        assert_eq!(ps.snapshot(0, 3).unwrap().get_metadata().index, 20);
        assert!(!ps.take_snapshot_wanted());
        // Peer 4 joined after the snapshot was made: it would refuse it.
        assert!(ps.snapshot(0, 4).is_err());
        assert!(ps.take_snapshot_wanted(), "a new snapshot is asked for");
        ps.set_generated_snapshot(snapshot_naming(25, vec![1, 2, 3], vec![4]));
        assert_eq!(ps.snapshot(0, 4).unwrap().get_metadata().index, 25);
    }
}
