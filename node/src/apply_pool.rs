//! The apply side of every region, and the pool of threads that runs it.
//!
//! Each region's apply side is an [`ApplyDelegate`]: its own copy of the region, apply state
//! and merge state, the committed entries it is to apply and the proposals waiting on them.
//! The delegate is *owned*, never shared: it sits in its peer while idle; a poll round that
//! produced committed entries moves them (with their proposals) into the delegate and sends the
//! delegate to the pool; an apply thread applies a batch of delegates into one atomic KV write,
//! sends each delegate home in [`crate::router::PeerMsg::Applied`], where the peer takes over
//! what changed ([`crate::peer::Peer::on_applied`]), and then answers their proposals.
//!
//! So the pollers go on appending and replicating while the pool writes to the KV engine, and
//! at most one apply of a region is in flight, which keeps apply in log order. While a
//! region's delegate is away its peer installs no snapshot, generates none and is not destroyed:
//! those wait for the delegate to come home.

use crate::apply::{self, AdminResult, CmdResult, RegionView, SourceProgress};
use crate::peer::CmdCallback;
use crate::region_error;
use crate::router::StoreRouter;
use crate::session::SessionTable;
use crossbeam::channel::{Receiver, RecvTimeoutError};
use prost::Message as _;
use raft::eraftpb::{Entry, EntryType};
use ringkv_proto::metapb::Region;
use ringkv_proto::raftpb::{ApplyState, CommitMergeRequest, MergeState, RaftCmdRequest};
use ringkv_storage::{layout, KvEngine, KvWriteBatch, StorageError};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A proposed command waiting for the entry at `index` (of `term`) to be applied.
pub struct Proposal {
    pub index: u64,
    pub term: u64,
    pub callback: CmdCallback,
}

/// What one apply of a delegate changed, for its peer to take over.
#[derive(Default)]
pub struct ApplyOutcome {
    /// Region changes and log compactions, in log order.
    pub admin: Vec<AdminResult>,
    /// Bytes written by successful commands (for split checks).
    pub written_bytes: u64,
    /// Keys written (puts and deletes) by successful commands.
    pub written_keys: u64,
    /// A command may have emptied the region (a range delete): measure it again.
    pub check_wanted: bool,
    /// Apply stopped before this CommitMerge: the local source replica has not applied the
    /// prepare yet. The entries from it on stay in the delegate.
    pub merge_wait: Option<CommitMergeRequest>,
}

/// One region's apply side (see the module docs).
pub struct ApplyDelegate {
    region: Region,
    apply_state: ApplyState,
    merge_state: Option<MergeState>,
    merged_sources: Vec<u64>,
    /// What the region remembers of client sessions (its clock and horizon are saved into
    /// `apply_state` whenever that is written).
    sessions: SessionTable,
    /// Committed entries not applied yet, in log order.
    entries: Vec<Entry>,
    /// Proposals for indexes in `entries`, ordered by (index, term). Two may share an index
    /// (a leader's, and after it lost its tail, a later leader's); at most one is applied.
    proposals: VecDeque<Proposal>,
    outcome: ApplyOutcome,
}

impl ApplyDelegate {
    pub fn new(
        region: Region,
        apply_state: ApplyState,
        merge_state: Option<MergeState>,
        merged_sources: Vec<u64>,
    ) -> Box<Self> {
        Box::new(ApplyDelegate {
            sessions: SessionTable::new(region.id, &apply_state),
            region,
            apply_state,
            merge_state,
            merged_sources,
            entries: Vec::new(),
            proposals: VecDeque::new(),
            outcome: ApplyOutcome::default(),
        })
    }

    pub fn region_id(&self) -> u64 {
        self.region.id
    }

    pub fn region(&self) -> &Region {
        &self.region
    }

    pub fn applied_index(&self) -> u64 {
        self.apply_state.applied_index
    }

    /// Whether committed entries wait here (a CommitMerge held back, and what follows it).
    pub fn has_entries(&self) -> bool {
        !self.entries.is_empty()
    }

    /// Takes committed entries to apply, and the proposals waiting on them.
    pub fn push(&mut self, entries: Vec<Entry>, proposals: impl IntoIterator<Item = Proposal>) {
        if let (Some(last), Some(first)) = (self.entries.last(), entries.first()) {
            assert_eq!(
                last.index + 1,
                first.index,
                "region {}: committed entries must follow each other",
                self.region.id
            );
        }
        self.entries.extend(entries);
        let before = self.proposals.len();
        self.proposals.extend(proposals);
        if self.proposals.len() > before {
            self.proposals
                .make_contiguous()
                .sort_by_key(|p| (p.index, p.term));
        }
    }

    /// The index of the last entry waiting here, if any.
    pub fn last_entry_index(&self) -> Option<u64> {
        self.entries.last().map(|e| e.index)
    }

    /// Starts over from an installed snapshot: everything it covers is applied.
    pub fn reset(
        &mut self,
        region: Region,
        apply_state: ApplyState,
        merge_state: Option<MergeState>,
        merged_sources: Vec<u64>,
    ) {
        let index = apply_state.applied_index;
        self.entries.retain(|e| e.index > index);
        self.sessions = SessionTable::new(region.id, &apply_state);
        self.region = region;
        self.apply_state = apply_state;
        self.merge_state = merge_state;
        self.merged_sources = merged_sources;
    }

    /// What the last apply changed (taken once).
    pub fn take_outcome(&mut self) -> ApplyOutcome {
        std::mem::take(&mut self.outcome)
    }

    /// Fails every proposal still waiting here (the peer is being destroyed).
    pub fn fail_all(&mut self, error: &ringkv_proto::errorpb::RegionError) {
        for p in self.proposals.drain(..) {
            let _ = p.callback.send(Err(error.clone()));
        }
    }

    /// Applies the waiting entries into `batch` (writing `batch` early only when a command must
    /// see earlier writes). Answers for proposals go to `results`, to be sent once `batch` is
    /// written; what changed goes to the outcome. Stops before a CommitMerge whose local source
    /// replica is not ready. Storage errors are returned: they stop the node.
    pub fn apply(
        &mut self,
        kv: &dyn KvEngine,
        batch: &mut KvWriteBatch,
        results: &mut Vec<(CmdCallback, CmdResult)>,
    ) -> Result<(), StorageError> {
        let entries = std::mem::take(&mut self.entries);
        self.sessions.begin_batch();
        let applied_before = self.apply_state.applied_index;
        let mut last_applied = None;
        let mut stop_at = None;
        for (pos, entry) in entries.iter().enumerate() {
            assert!(
                entry.index > applied_before,
                "region {}: entry {} applied twice (applied {applied_before})",
                self.region.id,
                entry.index
            );
            let result = match entry.get_entry_type() {
                EntryType::EntryNormal if entry.get_data().is_empty() => None,
                EntryType::EntryNormal => {
                    let cmd = RaftCmdRequest::decode(entry.get_data()).map_err(|e| {
                        StorageError::Corruption {
                            what: format!(
                                "raft entry {} of region {}",
                                entry.index, self.region.id
                            ),
                            detail: e.to_string(),
                        }
                    })?;
                    if let Some(commit) = apply::merge_to_wait_for(self.view(), &cmd) {
                        let source_id = commit.source.as_ref().map(|s| s.id).unwrap_or_default();
                        if apply::source_progress(kv, source_id, commit.commit)?
                            == SourceProgress::Behind
                        {
                            self.outcome.merge_wait = Some(commit.clone());
                            stop_at = Some(pos);
                            break;
                        }
                    }
                    if apply::needs_flushed_state(&cmd) && !batch.is_empty() {
                        // The command reads the engine: write what came before it, with the
                        // applied index it reached, so the engine never holds data ahead of it.
                        if let Some(index) = last_applied {
                            self.apply_state.applied_index = index;
                            self.sessions.save_into(&mut self.apply_state);
                            layout::write_apply_state(batch, self.region.id, &self.apply_state);
                        }
                        kv.write(std::mem::take(batch))?;
                    }
                    Some(self.apply_command(entry.index, &cmd, kv, batch)?)
                }
                EntryType::EntryConfChangeV2 => {
                    let corrupt = |detail: String| StorageError::Corruption {
                        what: format!(
                            "membership change entry {} of region {}",
                            entry.index, self.region.id
                        ),
                        detail,
                    };
                    let mut cc = raft::eraftpb::ConfChangeV2::default();
                    protobuf::Message::merge_from_bytes(&mut cc, entry.get_data())
                        .map_err(|e| corrupt(e.to_string()))?;
                    let cmd = RaftCmdRequest::decode(cc.get_context())
                        .map_err(|e| corrupt(e.to_string()))?;
                    Some(self.apply_command(entry.index, &cmd, kv, batch)?)
                }
                EntryType::EntryConfChange => {
                    return Err(StorageError::Corruption {
                        what: format!("raft entry {} of region {}", entry.index, self.region.id),
                        detail: "a version-1 membership change, which ringkv never proposes".into(),
                    });
                }
            };
            self.match_proposal(entry.index, entry.term, result, results);
            last_applied = Some(entry.index);
        }
        if let Some(pos) = stop_at {
            self.entries = entries[pos..].to_vec();
        }
        let Some(last_index) = last_applied else {
            return Ok(());
        };
        self.apply_state.applied_index = last_index;
        self.sessions.save_into(&mut self.apply_state);
        layout::write_apply_state(batch, self.region.id, &self.apply_state);
        Ok(())
    }

    fn view(&self) -> RegionView<'_> {
        RegionView {
            region: &self.region,
            merge_state: self.merge_state.as_ref(),
            merged_sources: &self.merged_sources,
        }
    }

    /// Applies one command; region changes take effect at once, for the entries after it.
    fn apply_command(
        &mut self,
        index: u64,
        cmd: &RaftCmdRequest,
        kv: &dyn KvEngine,
        batch: &mut KvWriteBatch,
    ) -> Result<CmdResult, StorageError> {
        let view = RegionView {
            region: &self.region,
            merge_state: self.merge_state.as_ref(),
            merged_sources: &self.merged_sources,
        };
        let applied = apply::exec_command(view, index, cmd, kv, &mut self.sessions, batch)?;
        if applied.result.is_ok() {
            self.outcome.written_bytes += apply::written_bytes(cmd);
            self.outcome.written_keys += apply::written_keys(cmd);
            self.outcome.check_wanted |= apply::deletes_range(cmd);
        }
        match applied.admin {
            Some(AdminResult::CompactLog { index, term })
                if index > self.apply_state.truncated_index =>
            {
                // Written with this batch's apply state; the peer's log follows on return.
                self.apply_state.truncated_index = index;
                self.apply_state.truncated_term = term;
                self.outcome
                    .admin
                    .push(AdminResult::CompactLog { index, term });
            }
            Some(AdminResult::CompactLog { .. }) | None => {}
            Some(admin) => {
                tracing::info!(region = self.region.id, index, "{admin}");
                match &admin {
                    AdminResult::PrepareMerge { state, .. } => {
                        self.merge_state = Some(state.clone())
                    }
                    AdminResult::CommitMerge { merged_sources, .. } => {
                        self.merged_sources = merged_sources.clone()
                    }
                    AdminResult::RollbackMerge { .. } => self.merge_state = None,
                    AdminResult::Split { .. }
                    | AdminResult::CompactLog { .. }
                    | AdminResult::ChangePeer { .. } => {}
                }
                self.region = admin
                    .region_after()
                    .expect("every admin result but CompactLog changes the region")
                    .clone();
                self.outcome.admin.push(admin);
            }
        }
        Ok(applied.result)
    }

    /// Pairs an applied entry with the proposal waiting on it, if any. A proposal is handed
    /// over no later than its index, so one left at a lower index, or at this index in another
    /// term, lost its index to another leader's entry: it was never committed.
    fn match_proposal(
        &mut self,
        index: u64,
        term: u64,
        result: Option<CmdResult>,
        results: &mut Vec<(CmdCallback, CmdResult)>,
    ) {
        while let Some(p) = self.proposals.front() {
            if p.index > index {
                break;
            }
            let p = self.proposals.pop_front().expect("checked");
            if p.index == index && p.term == term {
                // Every proposal carries a command; an empty entry in its place is raft's: a
                // membership change it refused (another one pending) becomes an empty entry.
                let answer = result
                    .clone()
                    .unwrap_or_else(|| Err(region_error::dropped_by_raft(self.region.id)));
                results.push((p.callback, answer));
            } else {
                results.push((p.callback, Err(region_error::stale_command(self.region.id))));
            }
        }
    }
}

/// A poll round's delegates, applied together.
pub type ApplyBatch = Vec<Box<ApplyDelegate>>;

/// Applies `delegates` in one KV write, then answers their proposals and sends each home. A
/// storage failure panics: a node that cannot persist must stop rather than answer.
pub fn apply_batch(kv: &dyn KvEngine, router: &StoreRouter, delegates: ApplyBatch) {
    apply_all(kv, delegates, |d| router.send_applied(d));
}

/// Applies `delegates` in one KV write (more only where a command must read the engine), sends
/// each home with `send_home`, then answers their proposals. Home first: the peer's mailbox is
/// in order, so whoever hears an answer and then asks the peer (for the region after a
/// membership change, say) finds the applied result already there.
fn apply_all(
    kv: &dyn KvEngine,
    mut delegates: ApplyBatch,
    mut send_home: impl FnMut(Box<ApplyDelegate>),
) {
    let mut batch = KvWriteBatch::default();
    let mut results = Vec::new();
    for d in delegates.iter_mut() {
        d.apply(kv, &mut batch, &mut results)
            .unwrap_or_else(|e| panic!("apply failed; stopping the node: {e}"));
    }
    if !batch.is_empty() {
        kv.write(batch)
            .unwrap_or_else(|e| panic!("apply write failed; stopping the node: {e}"));
    }
    for d in delegates {
        send_home(d);
    }
    for (callback, result) in results {
        let _ = callback.send(result);
    }
}

/// One apply thread: takes batches from the pollers, merging those that queued up into one
/// write (at most `delegates_max` delegates), until `stopping`.
pub fn run_apply_thread(
    kv: &dyn KvEngine,
    router: &StoreRouter,
    queue: &Receiver<ApplyBatch>,
    delegates_max: usize,
    stopping: &AtomicBool,
) {
    while !stopping.load(Ordering::SeqCst) {
        let mut delegates = match queue.recv_timeout(Duration::from_millis(100)) {
            Ok(b) => b,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        while delegates.len() < delegates_max {
            match queue.try_recv() {
                Ok(more) => delegates.extend(more),
                Err(_) => break,
            }
        }
        apply_batch(kv, router, delegates);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::CmdOutput;
    use ringkv_proto::metapb::{Peer as PeerMeta, RegionEpoch};
    use ringkv_proto::raftpb::{
        admin_request, request::Cmd, AdminRequest, PeerState, PutRequest, Request,
    };
    use ringkv_storage::MemKv;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::oneshot;

    /// Counts writes, to show one batch is one write.
    #[derive(Default)]
    struct CountingKv {
        inner: MemKv,
        writes: AtomicUsize,
    }

    impl KvEngine for CountingKv {
        fn get(&self, key: &[u8]) -> ringkv_storage::Result<Option<Vec<u8>>> {
            self.inner.get(key)
        }
        fn scan(
            &self,
            start: &[u8],
            end: &[u8],
            visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
        ) -> ringkv_storage::Result<()> {
            self.inner.scan(start, end, visit)
        }
        fn write(&self, batch: KvWriteBatch) -> ringkv_storage::Result<()> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            self.inner.write(batch)
        }
        fn flush(&self) -> ringkv_storage::Result<()> {
            self.inner.flush()
        }
    }

    fn region(id: u64, start: &[u8], end: &[u8]) -> Region {
        Region {
            id,
            start_key: start.to_vec(),
            end_key: end.to_vec(),
            region_epoch: Some(RegionEpoch {
                conf_ver: 1,
                version: 1,
            }),
            peers: (1..=3)
                .map(|store_id| PeerMeta {
                    id: id * 10 + store_id,
                    store_id,
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn delegate(region: &Region, applied: u64) -> Box<ApplyDelegate> {
        let state = ApplyState {
            applied_index: applied,
            truncated_index: applied,
            truncated_term: 5,
            ..Default::default()
        };
        ApplyDelegate::new(region.clone(), state, None, Vec::new())
    }

    fn entry(index: u64, term: u64, cmd: &RaftCmdRequest) -> Entry {
        Entry {
            index,
            term,
            data: cmd.encode_to_vec().into(),
            ..Default::default()
        }
    }

    fn put(region: &Region, key: &[u8]) -> RaftCmdRequest {
        RaftCmdRequest {
            region_id: region.id,
            region_epoch: region.region_epoch,
            requests: vec![Request {
                cmd: Some(Cmd::Put(PutRequest {
                    key: key.to_vec(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        }
    }

    fn proposal(index: u64, term: u64) -> (Proposal, oneshot::Receiver<CmdResult>) {
        let (callback, rx) = oneshot::channel();
        (
            Proposal {
                index,
                term,
                callback,
            },
            rx,
        )
    }

    /// Applies `delegates` and returns them as they would go home.
    fn applied(kv: &dyn KvEngine, delegates: ApplyBatch) -> ApplyBatch {
        let mut home = Vec::new();
        apply_all(kv, delegates, |d| home.push(d));
        home
    }

    fn applied_index(kv: &dyn KvEngine, region_id: u64) -> u64 {
        layout::read_apply_state(kv, region_id)
            .unwrap()
            .map(|a| a.applied_index)
            .unwrap_or_default()
    }

    #[test]
    fn one_batch_applies_many_regions_in_one_write_and_answers_their_proposals() {
        let kv = CountingKv::default();
        let (left, right) = (region(1, b"", b"m"), region(2, b"m", b""));
        let mut a = delegate(&left, 5);
        let (ours, mut ours_rx) = proposal(6, 5);
        // A proposal of an older term at index 7: another leader's entry took the index.
        let (lost, mut lost_rx) = proposal(7, 4);
        a.push(
            vec![
                entry(6, 5, &put(&left, b"a")),
                entry(7, 5, &put(&left, b"b")),
            ],
            [ours, lost],
        );
        let mut b = delegate(&right, 8);
        b.push(vec![entry(9, 6, &put(&right, b"q"))], []);

        let back = applied(&kv, vec![a, b]);

        assert_eq!(
            kv.writes.load(Ordering::SeqCst),
            1,
            "one write for the batch"
        );
        assert_eq!(ours_rx.try_recv().unwrap(), Ok(CmdOutput::Done));
        let lost = lost_rx.try_recv().unwrap().unwrap_err();
        assert!(
            matches!(
                lost.kind,
                Some(ringkv_proto::errorpb::region_error::Kind::StaleCommand(_))
            ),
            "{lost:?}"
        );
        assert_eq!((applied_index(&kv, 1), applied_index(&kv, 2)), (7, 9));
        assert_eq!(
            back.iter().map(|d| d.applied_index()).collect::<Vec<_>>(),
            [7, 9]
        );
        assert!(back.iter().all(|d| !d.has_entries()));
        assert!(back[0].outcome.written_bytes > 0);
    }

    #[test]
    fn a_later_leaders_proposal_at_a_lower_index_is_answered_and_the_lost_one_is_stale() {
        // A leader proposed at 10 in term 5, lost its tail, and leading again in term 6
        // proposed at 9: entries 9 and 10 are both term 6's.
        let kv = CountingKv::default();
        let left = region(1, b"", b"m");
        let mut d = delegate(&left, 8);
        let (lost, mut lost_rx) = proposal(10, 5);
        let (ours, mut ours_rx) = proposal(9, 6);
        d.push(
            vec![
                entry(9, 6, &put(&left, b"a")),
                entry(10, 6, &put(&left, b"b")),
            ],
            [lost, ours],
        );
        applied(&kv, vec![d]);
        assert_eq!(ours_rx.try_recv().unwrap(), Ok(CmdOutput::Done));
        assert!(matches!(
            lost_rx.try_recv().unwrap().unwrap_err().kind,
            Some(ringkv_proto::errorpb::region_error::Kind::StaleCommand(_))
        ));
    }

    #[test]
    fn a_proposal_raft_replaced_with_an_empty_entry_is_answered_not_applied() {
        // raft-rs turns a membership change proposed while another is unapplied into an empty
        // entry at the proposal's index: the change was not made.
        let kv = CountingKv::default();
        let left = region(1, b"", b"m");
        let mut d = delegate(&left, 8);
        let (refused, mut refused_rx) = proposal(9, 6);
        let (ours, mut ours_rx) = proposal(10, 6);
        let empty = Entry {
            index: 9,
            term: 6,
            ..Default::default()
        };
        d.push(
            vec![empty, entry(10, 6, &put(&left, b"b"))],
            [refused, ours],
        );
        applied(&kv, vec![d]);
        let answer = refused_rx.try_recv().unwrap();
        assert!(
            matches!(
                answer.as_ref().unwrap_err().kind,
                Some(ringkv_proto::errorpb::region_error::Kind::StaleCommand(_))
            ),
            "{answer:?}"
        );
        assert_eq!(ours_rx.try_recv().unwrap(), Ok(CmdOutput::Done));
    }

    #[test]
    fn a_commit_merge_waits_for_its_local_source_and_keeps_what_follows() {
        let kv = CountingKv::default();
        let target = region(1, b"", b"m");
        let source = Region {
            region_epoch: Some(RegionEpoch {
                conf_ver: 2,
                version: 2,
            }),
            ..region(2, b"m", b"")
        };
        let commit = RaftCmdRequest {
            region_id: 1,
            region_epoch: target.region_epoch,
            requests: Vec::new(),
            admin: Some(AdminRequest {
                cmd: Some(admin_request::Cmd::CommitMerge(CommitMergeRequest {
                    source: Some(source.clone()),
                    commit: 9,
                    commit_term: 6,
                    source_merged_sources: Vec::new(),
                })),
            }),
            ..Default::default()
        };
        let mut d = delegate(&target, 5);
        let (merge, mut merge_rx) = proposal(6, 5);
        d.push(
            vec![entry(6, 5, &commit), entry(7, 5, &put(&target, b"a"))],
            [merge],
        );

        // The local source has not applied its prepare: apply stops before the commit.
        let mut d = applied(&kv, vec![d]).pop().unwrap();
        let outcome = d.take_outcome();
        assert_eq!(outcome.merge_wait.map(|w| w.commit), Some(9));
        assert_eq!(d.applied_index(), 5);
        assert!(d.has_entries());
        assert!(merge_rx.try_recv().is_err(), "no answer before the merge");

        // Once it has, the commit applies, and so does what follows it, over the wider range.
        let mut batch = KvWriteBatch::default();
        layout::write_region_state(
            &mut batch,
            &RegionView {
                region: &source,
                merge_state: Some(&MergeState {
                    target: Some(target.clone()),
                    commit: 9,
                }),
                merged_sources: &[],
            }
            .local_state(PeerState::Merging),
        );
        layout::write_apply_state(
            &mut batch,
            2,
            &ApplyState {
                applied_index: 9,
                truncated_index: 5,
                truncated_term: 5,
                ..Default::default()
            },
        );
        kv.write(batch).unwrap();
        let mut d = applied(&kv, vec![d]).pop().unwrap();
        let outcome = d.take_outcome();
        assert!(outcome.merge_wait.is_none());
        assert!(matches!(
            outcome.admin.as_slice(),
            [AdminResult::CommitMerge { .. }]
        ));
        assert_eq!(
            (d.applied_index(), d.region().end_key.as_slice()),
            (7, &b""[..])
        );
        assert_eq!(merge_rx.try_recv().unwrap(), Ok(CmdOutput::Done));
        let source_state = layout::read_region_state(&kv, 2).unwrap().unwrap();
        assert_eq!(source_state.state, PeerState::Tombstone as i32);
        assert!(
            source_state.merge_state.is_some(),
            "a merge's tombstone says so"
        );
    }
}
