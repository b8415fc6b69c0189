//! Applying committed commands. Deterministic: every replica turns the same entry into the same
//! writes and the same result, which is what lets results go back to clients.

use crate::region_error;
use crate::session::{self, Admission, SessionTable};
use ringkv_proto::errorpb::RegionError;
use ringkv_proto::keys::{self, in_range};
use ringkv_proto::kvrpcpb::{Keyspace, KeyspaceMode};
use ringkv_proto::metapb::{ConfChangeKind, Peer as PeerMeta, PeerRole, Region, RegionEpoch};
use ringkv_proto::raftpb::{
    admin_request, request::Cmd, ApplyState, ChangePeerRequest, CommitMergeRequest,
    CompareAndSwapRequest, DeleteRequest, KeySpan, MergeState, PeerState, PutRequest,
    RaftCmdRequest, RegionLocalState, Request, SplitRequest,
};
use ringkv_proto::region;
use ringkv_storage::layout::{self, data_range, origin_key, Cf};
use ringkv_storage::{KvEngine, KvWriteBatch, PeerStorage, Result as StorageResult};

/// The outcome of one command. `Err` is a deterministic refusal (wrong epoch, key outside the
/// region): it is the applied result, the same on every replica.
pub type CmdResult = Result<CmdOutput, RegionError>;

/// Whether a command may be applied ([`check_command`]).
pub type Checked = Result<(), RegionError>;

/// What an applied command answers.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum CmdOutput {
    /// Applied (for a compare-and-swap: it swapped).
    #[default]
    Done,
    /// A compare-and-swap found `current` (None: no value) instead of what it expected, and
    /// changed nothing.
    CasMismatch { current: Option<Vec<u8>> },
}

/// What an applied admin command changed about regions, for the raftstore to act on after the
/// apply batch is written.
#[derive(Debug, Clone, PartialEq)]
pub enum AdminResult {
    /// The region is now `left`; `right` is new and its state is in the batch.
    Split { left: Region, right: Region },
    /// Entries up to `index` may go: the peer updates its truncated state (written with this
    /// apply batch) and the raftstore compacts the log engine once that state is durable.
    CompactLog { index: u64, term: u64 },
    /// This region is now the source of a merge: it serves nothing until merged or rolled back.
    PrepareMerge { region: Region, state: MergeState },
    /// This region (the target) now also covers `source`, whose state is `Tombstone` in the
    /// batch: the raftstore destroys the local source peer.
    CommitMerge {
        region: Region,
        source: Region,
        merged_sources: Vec<u64>,
    },
    /// The merge this region prepared is abandoned; it serves again at a new version.
    RollbackMerge { region: Region },
    /// The membership changed (conf_ver + 1): raft must apply `change`; the peer `removed`
    /// (if any) is no longer a member.
    ChangePeer {
        region: Region,
        change: ChangePeerRequest,
    },
}

impl AdminResult {
    /// The local region as this change leaves it (None for a log compaction).
    pub fn region_after(&self) -> Option<&Region> {
        match self {
            AdminResult::Split { left, .. } => Some(left),
            AdminResult::PrepareMerge { region, .. }
            | AdminResult::CommitMerge { region, .. }
            | AdminResult::RollbackMerge { region }
            | AdminResult::ChangePeer { region, .. } => Some(region),
            AdminResult::CompactLog { .. } => None,
        }
    }
}

/// For logs: what the change was.
impl std::fmt::Display for AdminResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminResult::Split { right, .. } => write!(f, "split applied; new region {}", right.id),
            AdminResult::CompactLog { index, .. } => write!(f, "log compacted to {index}"),
            AdminResult::PrepareMerge { state, .. } => write!(
                f,
                "merge into region {} prepared; the region serves nothing until it is merged or rolled back",
                state.target.as_ref().map(|t| t.id).unwrap_or_default()
            ),
            AdminResult::CommitMerge { source, .. } => {
                write!(f, "merge committed; region {} merged in", source.id)
            }
            AdminResult::RollbackMerge { .. } => write!(f, "merge rolled back"),
            AdminResult::ChangePeer { region, change } => write!(
                f,
                "membership changed ({:?} peer {:?}); conf_ver {}",
                ConfChangeKind::try_from(change.kind).unwrap_or(ConfChangeKind::AddVoter),
                change.peer.map(|p| (p.id, p.store_id)).unwrap_or_default(),
                region.region_epoch.unwrap_or_default().conf_ver
            ),
        }
    }
}

/// Whether `cmd` is checked only by [`check_command`]'s own epoch rules, not by the request
/// epoch check: a CommitMerge names the target's epoch as the source saw it, and a rollback is
/// the one command a merging region takes.
pub fn has_own_epoch_rules(cmd: &RaftCmdRequest) -> bool {
    matches!(
        cmd.admin.as_ref().and_then(|a| a.cmd.as_ref()),
        Some(admin_request::Cmd::CommitMerge(_)) | Some(admin_request::Cmd::RollbackMerge(_))
    )
}

/// A command's result and, for an admin command that succeeded, what it changed.
#[derive(Debug)]
pub struct Applied {
    pub result: CmdResult,
    pub admin: Option<AdminResult>,
}

impl Applied {
    fn refused(e: RegionError) -> Applied {
        Applied {
            result: Err(e),
            admin: None,
        }
    }

    fn done(admin: Option<AdminResult>) -> Applied {
        Applied {
            result: Ok(CmdOutput::Done),
            admin,
        }
    }
}

/// Regions merged into a region that are remembered (see `RegionLocalState.merged_sources`).
pub const MERGED_SOURCES_MAX: usize = 1024;

/// What apply knows of the local region besides its range: the merge it is the source of, if
/// any, and the regions merged into it.
#[derive(Debug, Clone, Copy)]
pub struct RegionView<'a> {
    pub region: &'a Region,
    pub merge_state: Option<&'a MergeState>,
    pub merged_sources: &'a [u64],
}

impl RegionView<'_> {
    /// The region's local state as stored, in `state`.
    pub fn local_state(&self, state: PeerState) -> RegionLocalState {
        RegionLocalState {
            state: state as i32,
            region: Some(self.region.clone()),
            merge_state: self.merge_state.cloned(),
            merged_sources: self.merged_sources.to_vec(),
        }
    }
}

/// Why `source` cannot merge into `target` as they stand, if it cannot.
pub fn merge_refusal(source: &Region, target: &Region) -> Option<String> {
    if source.id == target.id {
        return Some(format!("region {} cannot merge into itself", source.id));
    }
    if target.region_epoch.is_none() || target.peers.is_empty() {
        return Some(format!("target region {} has no epoch or peers", target.id));
    }
    if !region::adjacent(source, target) {
        return Some(format!(
            "regions {} and {} are not adjacent",
            source.id, target.id
        ));
    }
    if !region::same_stores(source, target) {
        return Some(format!(
            "regions {} and {} have peers on different stores ({:?} vs {:?}); move them together first",
            source.id,
            target.id,
            region::store_ids(source),
            region::store_ids(target)
        ));
    }
    None
}

/// The region a commit of the merge of `source` into `target` produces: the union of both
/// ranges, with a version above both.
pub fn merged_region(target: &Region, source: &Region) -> Region {
    let (t, s) = (
        target.region_epoch.unwrap_or_default(),
        source.region_epoch.unwrap_or_default(),
    );
    let (start_key, end_key) = if source.end_key == target.start_key && !source.end_key.is_empty() {
        (source.start_key.clone(), target.end_key.clone())
    } else {
        (target.start_key.clone(), source.end_key.clone())
    };
    Region {
        start_key,
        end_key,
        region_epoch: Some(RegionEpoch {
            conf_ver: t.conf_ver,
            version: t.version.max(s.version) + 1,
        }),
        ..target.clone()
    }
}

/// For a CommitMerge that `view`'s region will apply (rather than refuse or answer as already
/// done), the source and the index its local replica must have applied first.
pub fn merge_to_wait_for<'c>(
    view: RegionView<'_>,
    cmd: &'c RaftCmdRequest,
) -> Option<&'c CommitMergeRequest> {
    let Some(admin_request::Cmd::CommitMerge(commit)) = cmd.admin.as_ref()?.cmd.as_ref() else {
        return None;
    };
    let source = commit.source.as_ref()?;
    if view.merged_sources.contains(&source.id) || check_command(view, cmd).is_err() {
        return None;
    }
    Some(commit)
}

/// Checks that a command still fits the region: same version (splits and merges change which keys
/// the region owns), every key inside it, and nothing but a rollback while it is merging away.
pub fn check_command(view: RegionView<'_>, cmd: &RaftCmdRequest) -> Checked {
    let region = view.region;
    let admin = cmd.admin.as_ref().and_then(|a| a.cmd.as_ref());
    if let Some(admin_request::Cmd::CommitMerge(c)) = admin {
        // A retry of a merge that happened: done, whatever the epoch became since.
        if c.source
            .as_ref()
            .is_some_and(|s| view.merged_sources.contains(&s.id))
        {
            return Ok(());
        }
    }
    let current = region.region_epoch.unwrap_or_default();
    let asked = cmd.region_epoch.unwrap_or_default();
    if asked.version != current.version {
        return Err(region_error::epoch_not_match(region, cmd.region_epoch));
    }
    if let Some(state) = view.merge_state {
        let target = state.target.as_ref().map(|t| t.id).unwrap_or_default();
        return match admin {
            Some(admin_request::Cmd::RollbackMerge(r)) if r.commit == state.commit => Ok(()),
            // A merging target can never take this merge: the source must roll back, so the
            // refusal is an epoch mismatch.
            Some(admin_request::Cmd::CommitMerge(_)) => {
                Err(region_error::epoch_not_match(region, cmd.region_epoch))
            }
            _ => Err(region_error::merging(region.id, target)),
        };
    }
    if cmd.admin.is_some() && !cmd.requests.is_empty() {
        return Err(region_error::invalid_command(
            region.id,
            "an admin command must be alone in its entry",
        ));
    }
    match admin {
        Some(admin_request::Cmd::Split(split)) => check_split(region, split)?,
        Some(admin_request::Cmd::CompactLog(_)) => {}
        Some(admin_request::Cmd::PrepareMerge(p)) => {
            let Some(target) = p.target.as_ref() else {
                return Err(region_error::invalid_command(
                    region.id,
                    "prepare merge names no target",
                ));
            };
            if let Some(why) = merge_refusal(region, target) {
                return Err(region_error::invalid_command(region.id, &why));
            }
        }
        Some(admin_request::Cmd::CommitMerge(c)) => {
            if asked.conf_ver != current.conf_ver {
                return Err(region_error::epoch_not_match(region, cmd.region_epoch));
            }
            let Some(source) = c.source.as_ref() else {
                return Err(region_error::invalid_command(
                    region.id,
                    "commit merge names no source",
                ));
            };
            if let Some(why) = merge_refusal(source, region) {
                return Err(region_error::invalid_command(region.id, &why));
            }
        }
        Some(admin_request::Cmd::RollbackMerge(_)) => {
            return Err(region_error::invalid_command(
                region.id,
                "rollback of a merge the region is not preparing",
            ))
        }
        Some(admin_request::Cmd::ChangePeer(c)) => {
            if asked.conf_ver != current.conf_ver {
                return Err(region_error::epoch_not_match(region, cmd.region_epoch));
            }
            if let Err(why) = changed_peers(region, c) {
                return Err(region_error::invalid_command(region.id, &why));
            }
        }
        None if cmd.admin.is_some() => {
            return Err(region_error::invalid_command(
                region.id,
                "admin command is empty",
            ))
        }
        None => {}
    }
    for req in &cmd.requests {
        match &req.cmd {
            Some(Cmd::Put(p)) if !in_range(&p.key, &region.start_key, &region.end_key) => {
                return Err(region_error::key_not_in_region(&p.key, region))
            }
            Some(Cmd::Delete(d)) if !in_range(&d.key, &region.start_key, &region.end_key) => {
                return Err(region_error::key_not_in_region(&d.key, region))
            }
            Some(Cmd::Put(PutRequest { cf, .. }) | Cmd::Delete(DeleteRequest { cf, .. }))
                if Cf::from_wire(*cf).is_none() =>
            {
                return Err(region_error::invalid_command(
                    region.id,
                    &format!("unknown column family {cf}"),
                ))
            }
            Some(Cmd::CompareAndSwap(c))
                if !in_range(&c.key, &region.start_key, &region.end_key) =>
            {
                return Err(region_error::key_not_in_region(&c.key, region))
            }
            Some(Cmd::CompareAndSwap(_)) if cmd.requests.len() != 1 => {
                return Err(region_error::invalid_command(
                    region.id,
                    "a compare-and-swap must be alone in its command",
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Bytes `cmd` writes (keys and values), the measure split checks are scheduled by.
pub fn written_bytes(cmd: &RaftCmdRequest) -> u64 {
    cmd.requests
        .iter()
        .map(|r| match &r.cmd {
            Some(Cmd::Put(p)) => (p.key.len() + p.value.len()) as u64,
            Some(Cmd::Delete(d)) => d.key.len() as u64,
            _ => 0,
        })
        .sum()
}

/// Keys `cmd` puts or deletes (a range delete counts as none: its size is not known here).
pub fn written_keys(cmd: &RaftCmdRequest) -> u64 {
    cmd.requests
        .iter()
        .filter(|r| matches!(r.cmd, Some(Cmd::Put(_)) | Some(Cmd::Delete(_))))
        .count() as u64
}

/// Whether applying `cmd` needs to see earlier writes of the same batch (it scans storage, or
/// compares a stored value).
pub fn needs_flushed_state(cmd: &RaftCmdRequest) -> bool {
    cmd.requests.iter().any(|r| {
        matches!(
            r.cmd,
            Some(Cmd::DeleteRange(_)) | Some(Cmd::CompareAndSwap(_))
        )
    })
}

/// Whether `cmd` deletes a range (after which the region's size must be measured again).
pub fn deletes_range(cmd: &RaftCmdRequest) -> bool {
    cmd.requests
        .iter()
        .any(|r| matches!(r.cmd, Some(Cmd::DeleteRange(_))))
}

fn check_split(region: &Region, split: &SplitRequest) -> Checked {
    let key = &split.split_key;
    let inside = !key.is_empty()
        && key.as_slice() > region.start_key.as_slice()
        && (region.end_key.is_empty() || key.as_slice() < region.end_key.as_slice());
    if !inside {
        return Err(region_error::key_not_in_region(key, region));
    }
    if split.new_region_id == 0 || split.new_peer_ids.len() != region.peers.len() {
        return Err(region_error::invalid_command(
            region.id,
            &format!(
                "split needs a new region id and {} new peer ids, got id {} and {} peer ids",
                region.peers.len(),
                split.new_region_id,
                split.new_peer_ids.len()
            ),
        ));
    }
    Ok(())
}

/// The two regions a checked split of `region` produces.
pub fn split_regions(region: &Region, split: &SplitRequest) -> (Region, Region) {
    let epoch = region.region_epoch.unwrap_or_default();
    let next = RegionEpoch {
        conf_ver: epoch.conf_ver,
        version: epoch.version + 1,
    };
    let left = Region {
        end_key: split.split_key.clone(),
        region_epoch: Some(next),
        ..region.clone()
    };
    let right = Region {
        id: split.new_region_id,
        start_key: split.split_key.clone(),
        end_key: region.end_key.clone(),
        region_epoch: Some(next),
        peers: region
            .peers
            .iter()
            .zip(&split.new_peer_ids)
            .map(|(p, id)| PeerMeta { id: *id, ..*p })
            .collect(),
    };
    (left, right)
}

/// The Raft configuration change that carries `change`.
pub fn raft_conf_change(change: &ChangePeerRequest) -> raft::eraftpb::ConfChangeV2 {
    use raft::eraftpb::{ConfChangeSingle, ConfChangeType};
    let change_type = match ConfChangeKind::try_from(change.kind) {
        Ok(ConfChangeKind::AddLearner) => ConfChangeType::AddLearnerNode,
        Ok(ConfChangeKind::Remove) => ConfChangeType::RemoveNode,
        _ => ConfChangeType::AddNode,
    };
    let mut single = ConfChangeSingle::default();
    single.set_change_type(change_type);
    single.node_id = change.peer.map(|p| p.id).unwrap_or_default();
    let mut cc = raft::eraftpb::ConfChangeV2::default();
    cc.mut_changes().push(single);
    cc
}

/// The peers of `region` after `change`, or why the change cannot be made.
pub fn changed_peers(region: &Region, change: &ChangePeerRequest) -> Result<Vec<PeerMeta>, String> {
    let Some(peer) = change.peer else {
        return Err("membership change names no peer".into());
    };
    if peer.id == 0 || peer.store_id == 0 {
        return Err(format!("peer {peer:?} needs an id and a store"));
    }
    let mut peers = region.peers.clone();
    let existing = peers.iter().position(|p| p.id == peer.id);
    let on_store = peers.iter().position(|p| p.store_id == peer.store_id);
    let kind = ConfChangeKind::try_from(change.kind)
        .map_err(|_| format!("unknown membership change kind {}", change.kind))?;
    match kind {
        ConfChangeKind::AddVoter | ConfChangeKind::AddLearner => {
            let role = if kind == ConfChangeKind::AddVoter {
                PeerRole::Voter
            } else {
                PeerRole::Learner
            };
            match (existing, on_store) {
                (Some(i), _) if peers[i].store_id != peer.store_id => {
                    return Err(format!(
                        "peer {} lives on store {}",
                        peer.id, peers[i].store_id
                    ))
                }
                (Some(i), _) if peers[i].role == role as i32 => {
                    return Err(format!("peer {} already has that role", peer.id))
                }
                (Some(i), _) if role == PeerRole::Learner => {
                    return Err(format!("voter {} cannot become a learner", peers[i].id))
                }
                (Some(i), _) => peers[i].role = role as i32,
                (None, Some(j)) => {
                    return Err(format!(
                        "store {} already holds peer {} of region {}",
                        peer.store_id, peers[j].id, region.id
                    ))
                }
                (None, None) => peers.push(PeerMeta {
                    role: role as i32,
                    ..peer
                }),
            }
        }
        ConfChangeKind::Remove => {
            let Some(i) = existing.filter(|&i| peers[i].store_id == peer.store_id) else {
                return Err(format!("peer {} is not a member", peer.id));
            };
            peers.remove(i);
            if !peers.iter().any(|p| p.role == PeerRole::Voter as i32) {
                return Err("the last voter cannot be removed".into());
            }
        }
    }
    Ok(peers)
}

/// Adds the writes of `cmd` (the entry at `index`) to `batch`. A delete range scans `kv`, so
/// the caller must have written every earlier write of the round first (see
/// [`needs_flushed_state`]). A CommitMerge must only get here once the local source replica has
/// applied the prepare (see [`merge_to_wait_for`]).
pub fn exec_command(
    view: RegionView<'_>,
    index: u64,
    cmd: &RaftCmdRequest,
    kv: &dyn KvEngine,
    sessions: &mut SessionTable,
    batch: &mut KvWriteBatch,
) -> StorageResult<Applied> {
    if let Err(e) = check_command(view, cmd) {
        return Ok(Applied::refused(e));
    }
    let region = view.region;
    if let Some(admin) = &cmd.admin {
        let admin = match &admin.cmd {
            Some(admin_request::Cmd::Split(split)) => {
                let (left, right) = split_regions(region, split);
                layout::write_region_state(
                    batch,
                    &RegionView {
                        region: &left,
                        ..view
                    }
                    .local_state(PeerState::Normal),
                );
                // A peer of the new region can only exist here already if it was created
                // from a snapshot, which is newer than this split: keep it.
                if layout::read_region_state(kv, right.id)?.is_none() {
                    let mut parent = ApplyState::default();
                    sessions.save_into(&mut parent);
                    PeerStorage::write_split_state(&right, &parent, batch);
                    sessions.copy_to(kv, right.id, batch)?;
                }
                Some(AdminResult::Split { left, right })
            }
            Some(admin_request::Cmd::ChangePeer(c)) => {
                let peers = changed_peers(region, c).expect("check_command checked the change");
                let epoch = region.region_epoch.unwrap_or_default();
                let changed = Region {
                    peers,
                    region_epoch: Some(RegionEpoch {
                        conf_ver: epoch.conf_ver + 1,
                        version: epoch.version,
                    }),
                    ..region.clone()
                };
                layout::write_region_state(
                    batch,
                    &RegionView {
                        region: &changed,
                        ..view
                    }
                    .local_state(PeerState::Normal),
                );
                Some(AdminResult::ChangePeer {
                    region: changed,
                    change: *c,
                })
            }
            Some(admin_request::Cmd::CompactLog(c)) => Some(AdminResult::CompactLog {
                index: c.compact_index,
                term: c.compact_term,
            }),
            Some(admin_request::Cmd::PrepareMerge(p)) => {
                let epoch = region.region_epoch.unwrap_or_default();
                let prepared = Region {
                    region_epoch: Some(RegionEpoch {
                        conf_ver: epoch.conf_ver + 1,
                        version: epoch.version + 1,
                    }),
                    ..region.clone()
                };
                let state = MergeState {
                    target: p.target.clone(),
                    commit: index,
                };
                layout::write_region_state(
                    batch,
                    &RegionView {
                        region: &prepared,
                        merge_state: Some(&state),
                        merged_sources: view.merged_sources,
                    }
                    .local_state(PeerState::Merging),
                );
                Some(AdminResult::PrepareMerge {
                    region: prepared,
                    state,
                })
            }
            Some(admin_request::Cmd::CommitMerge(c)) => {
                let source = c.source.clone().expect("check_command checked the source");
                if view.merged_sources.contains(&source.id) {
                    None
                } else {
                    let merged = merged_region(region, &source);
                    let source_state = layout::read_apply_state(kv, source.id)?.unwrap_or_default();
                    sessions.absorb(kv, source.id, &source_state, batch)?;
                    let mut sources = view.merged_sources.to_vec();
                    sources.extend(c.source_merged_sources.iter().copied());
                    sources.push(source.id);
                    let excess = sources.len().saturating_sub(MERGED_SOURCES_MAX);
                    sources.drain(..excess);
                    layout::write_region_state(
                        batch,
                        &RegionView {
                            region: &merged,
                            merge_state: None,
                            merged_sources: &sources,
                        }
                        .local_state(PeerState::Normal),
                    );
                    layout::write_tombstone(
                        batch,
                        &source,
                        Some(MergeState {
                            target: Some(merged.clone()),
                            commit: c.commit,
                        }),
                    );
                    Some(AdminResult::CommitMerge {
                        region: merged,
                        source,
                        merged_sources: sources,
                    })
                }
            }
            Some(admin_request::Cmd::RollbackMerge(_)) => {
                let epoch = region.region_epoch.unwrap_or_default();
                let rolled_back = Region {
                    region_epoch: Some(RegionEpoch {
                        conf_ver: epoch.conf_ver,
                        version: epoch.version + 1,
                    }),
                    ..region.clone()
                };
                layout::write_region_state(
                    batch,
                    &RegionView {
                        region: &rolled_back,
                        merge_state: None,
                        merged_sources: view.merged_sources,
                    }
                    .local_state(PeerState::Normal),
                );
                Some(AdminResult::RollbackMerge {
                    region: rolled_back,
                })
            }
            None => unreachable!("check_command refuses an empty admin command"),
        };
        return Ok(Applied::done(admin));
    }
    exec_writes(region, cmd, kv, sessions, batch)
}

/// Applies a command's data writes, at most once per write of a client session.
fn exec_writes(
    region: &Region,
    cmd: &RaftCmdRequest,
    kv: &dyn KvEngine,
    sessions: &mut SessionTable,
    batch: &mut KvWriteBatch,
) -> StorageResult<Applied> {
    // Spans of this write an earlier attempt covered here (a session's retry).
    let mut done = Vec::new();
    let mut record = None;
    if let Some(session) = &cmd.session {
        sessions.advance(cmd.proposed_ms, kv, batch)?;
        record = sessions.get(kv, session.id)?;
        let write = sessions.get_write(kv, session.id, session.seq)?;
        match session::admit(
            record.as_ref(),
            write.as_ref(),
            session,
            sessions.clock_ms(),
            sessions.horizon_ms(),
        ) {
            Admission::Write { done: spans } => done = spans,
            Admission::Expired { why, forget } => {
                if let (true, Some(stale)) = (forget, record.as_ref()) {
                    sessions.forget(kv, session.id, stale, batch)?;
                }
                return Ok(Applied::refused(region_error::session_expired(
                    region.id, session, &why,
                )));
            }
        }
    }
    let skipped = |key: &[u8]| done.iter().any(|span| session::in_span(key, span));
    let mut output = CmdOutput::Done;
    for Request { cmd } in &cmd.requests {
        match cmd {
            Some(Cmd::Put(p)) if !skipped(&p.key) => {
                batch.put(storage_key(p.cf, &p.key, p.ts), p.value.clone())
            }
            Some(Cmd::Delete(d)) if !skipped(&d.key) => {
                batch.delete(storage_key(d.cf, &d.key, d.ts))
            }
            Some(Cmd::DeleteRange(r)) => {
                let keyspace = r.keyspace.unwrap_or_else(keys::default_keyspace);
                for (start, end) in session::uncovered(&region.start_key, &region.end_key, &done) {
                    let part = Region {
                        start_key: start,
                        end_key: end,
                        ..region.clone()
                    };
                    delete_user_range(&part, &keyspace, &r.start_key, &r.end_key, kv, batch)?;
                }
            }
            Some(Cmd::CompareAndSwap(c)) if !skipped(&c.key) => {
                output = compare_and_swap(c, kv, batch)?;
            }
            Some(Cmd::Put(_) | Cmd::Delete(_) | Cmd::CompareAndSwap(_)) | None => {}
        }
    }
    if let (Some(session), CmdOutput::Done) = (&cmd.session, &output) {
        let span = written_span(region, cmd);
        let (updated, write) =
            session::record_write(record, done, session, span, sessions.clock_ms());
        sessions.put(kv, session.id, updated, session.seq, write, batch)?;
    }
    Ok(Applied {
        result: Ok(output),
        admin: None,
    })
}

/// The encoded keys a data command covers in `region`: the region's whole range when it
/// deletes a range, else its first to its last key.
fn written_span(region: &Region, cmd: &RaftCmdRequest) -> KeySpan {
    let whole = KeySpan {
        start: region.start_key.clone(),
        end: region.end_key.clone(),
    };
    if deletes_range(cmd) {
        return whole;
    }
    let keys = cmd.requests.iter().filter_map(|r| match &r.cmd {
        Some(Cmd::Put(p)) => Some(p.key.as_slice()),
        Some(Cmd::Delete(d)) => Some(d.key.as_slice()),
        Some(Cmd::CompareAndSwap(c)) => Some(c.key.as_slice()),
        Some(Cmd::DeleteRange(_)) | None => None,
    });
    session::point_span(keys).unwrap_or(whole)
}

/// Compares the raw value of `c.key` with what `c` expects and, on a match, writes. Reads the
/// engine: the apply batch was written before this command ([`needs_flushed_state`]).
fn compare_and_swap(
    c: &CompareAndSwapRequest,
    kv: &dyn KvEngine,
    batch: &mut KvWriteBatch,
) -> StorageResult<CmdOutput> {
    let key = storage_key(Cf::Raw.to_wire(), &c.key, 0);
    let current = kv.get(&key)?;
    let matches = match &current {
        None => !c.expect_exists,
        Some(v) => c.expect_exists && *v == c.expected_value,
    };
    if !matches {
        return Ok(CmdOutput::CasMismatch { current });
    }
    if c.delete {
        batch.delete(key);
    } else {
        batch.put(key, c.value.clone());
    }
    Ok(CmdOutput::Done)
}

/// The storage key of a write's key in its column family (`check_command` refused unknown
/// families).
fn storage_key(cf: u32, key: &[u8], ts: u64) -> Vec<u8> {
    let cf = Cf::from_wire(cf).expect("check_command refuses unknown column families");
    layout::cf_key(cf, key, ts)
}

/// How far the local replica of a merge source is, seen from its target's apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceProgress {
    /// Prepared at exactly the commit the target waits for, and applied at least that far.
    Ready,
    /// Not there yet: it has to apply its log up to the prepare.
    Behind,
}

/// Reads the local source replica's state for a target waiting on `commit`.
pub fn source_progress(
    kv: &dyn KvEngine,
    source_id: u64,
    commit: u64,
) -> StorageResult<SourceProgress> {
    let state = layout::read_region_state(kv, source_id)?;
    let applied = layout::read_apply_state(kv, source_id)?.map(|a| a.applied_index);
    let prepared = state.as_ref().is_some_and(|s| {
        s.state == PeerState::Merging as i32
            && s.merge_state.as_ref().is_some_and(|m| m.commit == commit)
    });
    Ok(if prepared && applied.is_some_and(|a| a >= commit) {
        SourceProgress::Ready
    } else {
        SourceProgress::Behind
    })
}

/// The storage-key span of `keyspace` that user range `[start, end)` can touch, clipped to the
/// region. In a hash keyspace that is the whole keyspace: user order is not storage order.
pub fn scan_span(
    region: &Region,
    keyspace: &Keyspace,
    start: &[u8],
    end: &[u8],
) -> Option<(Vec<u8>, Vec<u8>)> {
    scan_bounds(region, keyspace, start, end).map(|(lo, hi)| data_range(&lo, &hi))
}

/// The encoded-key span of `keyspace` that user range `[start, end)` can touch, clipped to the
/// region (see [`scan_span`]).
pub fn scan_bounds(
    region: &Region,
    keyspace: &Keyspace,
    start: &[u8],
    end: &[u8],
) -> Option<(Vec<u8>, Vec<u8>)> {
    let (mut lo, mut hi) = if keyspace.mode == KeyspaceMode::Range as i32 {
        let hi = if end.is_empty() {
            keys::keyspace_end(keyspace)
        } else {
            keys::encode(keyspace, end)
        };
        (keys::encode(keyspace, start), hi)
    } else {
        (
            keys::keyspace_prefix(keyspace),
            keys::keyspace_end(keyspace),
        )
    };
    if lo < region.start_key {
        lo = region.start_key.clone();
    }
    if !region.end_key.is_empty() && hi > region.end_key {
        hi = region.end_key.clone();
    }
    (lo < hi).then_some((lo, hi))
}

/// Whether user key `k` is in `[start, end)`, an empty `end` being unbounded.
pub fn user_in_range(k: &[u8], start: &[u8], end: &[u8]) -> bool {
    k >= start && (end.is_empty() || k < end)
}

/// Deletes the keys of user range `[start, end)` of `keyspace` in the region. A large range is
/// written page by page ([`layout::delete_paged`]), each page its own engine write: concurrent
/// reads may see the delete partly done (as with
/// TiKV's raw delete range), and replaying the entry after a crash between pages ends in the
/// same state, since every write it makes is a delete of a key it finds.
fn delete_user_range(
    region: &Region,
    keyspace: &Keyspace,
    start: &[u8],
    end: &[u8],
    kv: &dyn KvEngine,
    batch: &mut KvWriteBatch,
) -> StorageResult<()> {
    let Some((lo, hi)) = scan_span(region, keyspace, start, end) else {
        return Ok(());
    };
    let in_range = |k: &[u8]| {
        keys::user_key_unchecked(origin_key(k)).is_some_and(|u| user_in_range(u, start, end))
    };
    // Earlier writes of this command go first, so pages never run ahead of them.
    if !batch.is_empty() {
        kv.write(std::mem::take(batch))?;
    }
    layout::delete_paged(kv, &lo, &hi, &mut |k| in_range(k))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A region's session table as its apply delegate starts it (nothing remembered).
    fn sessions(region: &Region) -> SessionTable {
        SessionTable::new(region.id, &ApplyState::default())
    }

    fn change(kind: ConfChangeKind, id: u64, store_id: u64) -> ChangePeerRequest {
        ChangePeerRequest {
            kind: kind as i32,
            peer: Some(PeerMeta {
                id,
                store_id,
                role: 0,
            }),
        }
    }

    fn three_voters() -> Region {
        Region {
            id: 1,
            peers: (1..=3)
                .map(|i| PeerMeta {
                    id: i * 10,
                    store_id: i,
                    role: PeerRole::Voter as i32,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn membership_changes_add_promote_and_remove_and_refuse_what_cannot_be() {
        use ConfChangeKind::*;
        let r = three_voters();
        let with_learner = changed_peers(&r, &change(AddLearner, 40, 4)).unwrap();
        assert_eq!(with_learner.len(), 4);
        assert_eq!(with_learner[3].role, PeerRole::Learner as i32);
        let r2 = Region {
            peers: with_learner,
            ..r.clone()
        };
        let promoted = changed_peers(&r2, &change(AddVoter, 40, 4)).unwrap();
        assert_eq!(promoted[3].role, PeerRole::Voter as i32);
        let removed = changed_peers(&r, &change(Remove, 20, 2)).unwrap();
        assert_eq!(
            removed.iter().map(|p| p.id).collect::<Vec<_>>(),
            vec![10, 30]
        );

        let refusals = [
            (change(AddVoter, 50, 2), "already holds peer"),
            (
                change(AddLearner, 20, 2),
                "voter 20 cannot become a learner",
            ),
            (change(AddVoter, 20, 2), "already has that role"),
            (change(AddVoter, 20, 9), "lives on store 2"),
            (change(Remove, 99, 1), "not a member"),
            (change(Remove, 10, 2), "not a member"),
            (change(AddVoter, 0, 4), "needs an id and a store"),
        ];
        for (c, why) in refusals {
            let err = changed_peers(&r, &c).unwrap_err();
            assert!(err.contains(why), "{c:?}: {err}");
        }
        let alone = Region {
            peers: vec![r.peers[0]],
            ..r.clone()
        };
        assert!(changed_peers(&alone, &change(Remove, 10, 1))
            .unwrap_err()
            .contains("last voter"));
    }

    #[test]
    fn a_membership_change_needs_the_current_conf_ver_and_bumps_it() {
        let mut r = three_voters();
        r.region_epoch = Some(RegionEpoch {
            conf_ver: 3,
            version: 7,
        });
        let cmd = |conf_ver| RaftCmdRequest {
            region_id: 1,
            region_epoch: Some(RegionEpoch {
                conf_ver,
                version: 7,
            }),
            requests: vec![],
            admin: Some(ringkv_proto::raftpb::AdminRequest {
                cmd: Some(admin_request::Cmd::ChangePeer(change(
                    ConfChangeKind::AddLearner,
                    40,
                    4,
                ))),
            }),
            ..Default::default()
        };
        let view = RegionView {
            region: &r,
            merge_state: None,
            merged_sources: &[],
        };
        assert!(check_command(view, &cmd(2)).is_err(), "stale conf_ver");
        let kv = MemKv::new();
        let mut batch = KvWriteBatch::default();
        let applied = exec_command(view, 9, &cmd(3), &kv, &mut sessions(&r), &mut batch).unwrap();
        match applied.admin {
            Some(AdminResult::ChangePeer { region, .. }) => {
                assert_eq!(region.region_epoch.unwrap().conf_ver, 4);
                assert_eq!(region.region_epoch.unwrap().version, 7);
                assert_eq!(region.peers.len(), 4);
            }
            other => panic!("{other:?}"),
        }
    }
    use ringkv_proto::metapb::Peer as PeerMeta;
    use ringkv_proto::metapb::RegionEpoch;
    use ringkv_proto::raftpb::{DeleteRangeRequest, PutRequest};
    use ringkv_storage::MemKv;

    fn whole_region() -> Region {
        Region {
            id: 1,
            region_epoch: Some(RegionEpoch {
                conf_ver: 1,
                version: 1,
            }),
            ..Default::default()
        }
    }

    fn put(user: &[u8]) -> Request {
        Request {
            cmd: Some(Cmd::Put(PutRequest {
                key: keys::encode(&keys::default_keyspace(), user),
                value: user.to_vec(),
                ..Default::default()
            })),
        }
    }

    fn run(kv: &MemKv, region: &Region, requests: Vec<Request>, version: u64) -> CmdResult {
        let cmd = RaftCmdRequest {
            region_id: region.id,
            region_epoch: Some(RegionEpoch {
                conf_ver: 1,
                version,
            }),
            requests,
            admin: None,
            ..Default::default()
        };
        let mut batch = KvWriteBatch::default();
        let view = RegionView {
            region,
            merge_state: None,
            merged_sources: &[],
        };
        let applied = exec_command(view, 10, &cmd, kv, &mut sessions(region), &mut batch).unwrap();
        kv.write(batch).unwrap();
        applied.result
    }

    #[test]
    fn stale_epoch_is_refused_and_writes_nothing() {
        let kv = MemKv::new();
        let region = whole_region();
        assert!(run(&kv, &region, vec![put(b"a")], 0).is_err());
        assert!(kv.dump().is_empty());
        assert!(run(&kv, &region, vec![put(b"a")], 1).is_ok());
        assert_eq!(kv.dump().len(), 1);
    }

    /// A raw delete of user range `[start, end)` of the default keyspace.
    fn delete_range(start: &[u8], end: &[u8]) -> Request {
        Request {
            cmd: Some(Cmd::DeleteRange(DeleteRangeRequest {
                keyspace: Some(keys::default_keyspace()),
                start_key: start.to_vec(),
                end_key: end.to_vec(),
            })),
        }
    }

    /// The user keys `kv` holds, in order.
    fn user_keys_left(kv: &MemKv) -> Vec<Vec<u8>> {
        let mut left: Vec<Vec<u8>> = kv
            .dump()
            .keys()
            .map(|k| keys::user_key_unchecked(origin_key(k)).unwrap().to_vec())
            .collect();
        left.sort();
        left
    }

    #[test]
    fn delete_range_in_hash_keyspace_uses_user_order() {
        let kv = MemKv::new();
        let region = whole_region();
        let puts = [b"a".as_ref(), b"b", b"c", b"d", b"e"]
            .iter()
            .map(|k| put(k))
            .collect();
        run(&kv, &region, puts, 1).unwrap();
        let del = delete_range(b"b", b"d");
        run(&kv, &region, vec![del], 1).unwrap();
        let left = user_keys_left(&kv);
        assert_eq!(left, vec![b"a".to_vec(), b"d".to_vec(), b"e".to_vec()]);
    }

    #[test]
    fn a_delete_range_of_many_pages_deletes_all_of_it_and_a_put_before_it_in_the_command() {
        let kv = MemKv::new();
        let region = whole_region();
        let n = ringkv_storage::layout::DELETE_PAGE_KEYS * 2 + 7;
        let users: Vec<Vec<u8>> = (0..n).map(|i| format!("m{i:06}").into_bytes()).collect();
        run(&kv, &region, users.iter().map(|u| put(u)).collect(), 1).unwrap();
        run(&kv, &region, vec![put(b"a"), put(b"z")], 1).unwrap();
        let del = delete_range(b"m", b"n");
        // A put inside the range before the delete in one command is deleted too; one after
        // it stays.
        run(&kv, &region, vec![put(b"m-first"), del, put(b"m-last")], 1).unwrap();
        let left = user_keys_left(&kv);
        assert_eq!(left, vec![b"a".to_vec(), b"m-last".to_vec(), b"z".to_vec()]);
    }

    fn peers(first_id: u64) -> Vec<PeerMeta> {
        (0..3)
            .map(|i| PeerMeta {
                id: first_id + i,
                store_id: 1 + i,
                role: 0,
            })
            .collect()
    }

    fn admin_cmd(region: &Region, cmd: admin_request::Cmd) -> RaftCmdRequest {
        RaftCmdRequest {
            region_id: region.id,
            region_epoch: region.region_epoch,
            requests: Vec::new(),
            admin: Some(ringkv_proto::raftpb::AdminRequest { cmd: Some(cmd) }),
            ..Default::default()
        }
    }

    fn exec(kv: &MemKv, view: RegionView<'_>, index: u64, cmd: &RaftCmdRequest) -> Applied {
        let mut batch = KvWriteBatch::default();
        let applied =
            exec_command(view, index, cmd, kv, &mut sessions(view.region), &mut batch).unwrap();
        kv.write(batch).unwrap();
        applied
    }

    #[test]
    fn merge_prepares_commits_once_and_signals_rollback_only_on_a_final_refusal() {
        let kv = MemKv::new();
        let target = Region {
            id: 1,
            end_key: b"m".to_vec(),
            region_epoch: Some(RegionEpoch {
                conf_ver: 1,
                version: 2,
            }),
            peers: peers(10),
            ..Default::default()
        };
        let source = Region {
            id: 2,
            start_key: b"m".to_vec(),
            region_epoch: Some(RegionEpoch {
                conf_ver: 1,
                version: 3,
            }),
            peers: peers(20),
            ..Default::default()
        };
        let plain = |r| RegionView {
            region: r,
            merge_state: None,
            merged_sources: &[],
        };
        let prepare = admin_cmd(
            &source,
            admin_request::Cmd::PrepareMerge(ringkv_proto::raftpb::PrepareMergeRequest {
                target: Some(target.clone()),
            }),
        );
        let Some(AdminResult::PrepareMerge {
            region: prepared,
            state,
        }) = exec(&kv, plain(&source), 7, &prepare).admin
        else {
            panic!("prepare applies");
        };
        assert_eq!(state.commit, 7);
        assert_eq!(
            prepared.region_epoch,
            Some(RegionEpoch {
                conf_ver: 2,
                version: 4
            })
        );
        assert_eq!(source_progress(&kv, 2, 7).unwrap(), SourceProgress::Behind);
        // Once the source's apply state reaches the prepare, a waiting target may go on.
        let mut b = KvWriteBatch::default();
        layout::write_apply_state(
            &mut b,
            2,
            &ringkv_proto::raftpb::ApplyState {
                applied_index: 7,
                ..Default::default()
            },
        );
        kv.write(b).unwrap();
        assert_eq!(source_progress(&kv, 2, 7).unwrap(), SourceProgress::Ready);

        // The merging source refuses writes and splits, and takes only its own rollback.
        let merging = RegionView {
            region: &prepared,
            merge_state: Some(&state),
            merged_sources: &[],
        };
        let put = RaftCmdRequest {
            region_id: 2,
            region_epoch: prepared.region_epoch,
            requests: vec![put(b"x")],
            admin: None,
            ..Default::default()
        };
        assert!(check_command(merging, &put).is_err());
        let rollback = |commit| {
            admin_cmd(
                &prepared,
                admin_request::Cmd::RollbackMerge(ringkv_proto::raftpb::RollbackMergeRequest {
                    commit,
                }),
            )
        };
        assert!(check_command(merging, &rollback(6)).is_err());
        assert!(check_command(merging, &rollback(7)).is_ok());

        // The target widens once, over the source, above both versions.
        let commit = admin_cmd(
            &target,
            admin_request::Cmd::CommitMerge(CommitMergeRequest {
                source: Some(prepared.clone()),
                commit: 7,
                commit_term: 5,
                source_merged_sources: vec![9],
            }),
        );
        assert!(merge_to_wait_for(plain(&target), &commit).is_some());
        let Some(AdminResult::CommitMerge {
            region: merged,
            merged_sources,
            ..
        }) = exec(&kv, plain(&target), 30, &commit).admin
        else {
            panic!("commit applies");
        };
        assert_eq!(
            (merged.start_key.as_slice(), merged.end_key.as_slice()),
            (&b""[..], &b""[..])
        );
        assert_eq!(merged.region_epoch.unwrap().version, 5);
        assert_eq!(merged_sources, vec![9, 2]);
        let tomb = layout::read_region_state(&kv, 2).unwrap().unwrap();
        assert_eq!(tomb.state, PeerState::Tombstone as i32);

        // A retry after the merge is answered as done, whatever the epoch became...
        let after = RegionView {
            region: &merged,
            merge_state: None,
            merged_sources: &merged_sources,
        };
        assert!(merge_to_wait_for(after, &commit).is_none());
        let retried = exec(&kv, after, 31, &commit);
        assert!(retried.result.is_ok() && retried.admin.is_none());
        // ...while a target whose epoch moved without merging refuses with EpochNotMatch, the
        // one answer that rolls the source back.
        let at_version = |version| Region {
            region_epoch: Some(RegionEpoch {
                conf_ver: 1,
                version,
            }),
            ..target.clone()
        };
        let moved = at_version(3);
        let refused = check_command(plain(&moved), &commit).map(|()| CmdOutput::Done);
        assert_eq!(
            crate::merge::after_commit_attempt(&refused, &commit),
            crate::merge::MergeStep::RollBack
        );
        assert_eq!(
            crate::merge::after_commit_attempt(&Err(region_error::server_is_busy("x")), &commit),
            crate::merge::MergeStep::Retry
        );
        // A target leader behind the prepared epoch refuses too, but its log may still hold a
        // CommitMerge of this prepare: that is no reason to roll back.
        let behind = at_version(1);
        let refused = check_command(plain(&behind), &commit).map(|()| CmdOutput::Done);
        assert!(refused.is_err());
        assert_eq!(
            crate::merge::after_commit_attempt(&refused, &commit),
            crate::merge::MergeStep::Retry
        );
    }

    /// Session tests: a session that began at `start_ms` (minutes in these tests) writes.
    const MIN: u64 = 60_000;

    fn session_of(start_ms: u64, seq: u64) -> ringkv_proto::kvrpcpb::WriteSession {
        ringkv_proto::kvrpcpb::WriteSession {
            id: ringkv_proto::tso::compose(start_ms, 1),
            seq,
            lowest_unanswered: 1,
        }
    }

    fn enc(user: &[u8]) -> Vec<u8> {
        keys::encode(&keys::default_keyspace(), user)
    }

    fn put_value(user: &[u8], value: &[u8]) -> Request {
        Request {
            cmd: Some(Cmd::Put(PutRequest {
                key: enc(user),
                value: value.to_vec(),
                ..Default::default()
            })),
        }
    }

    fn cas(user: &[u8], expected: Option<&[u8]>, new: &[u8]) -> Request {
        Request {
            cmd: Some(Cmd::CompareAndSwap(CompareAndSwapRequest {
                key: enc(user),
                expect_exists: expected.is_some(),
                expected_value: expected.unwrap_or_default().to_vec(),
                value: new.to_vec(),
                delete: false,
            })),
        }
    }

    /// Applies `requests` to `region` as one command, of `session` if any, proposed at `ms`.
    fn run_in(
        kv: &MemKv,
        region: &Region,
        table: &mut SessionTable,
        requests: Vec<Request>,
        session: Option<ringkv_proto::kvrpcpb::WriteSession>,
        ms: u64,
    ) -> CmdResult {
        let cmd = RaftCmdRequest {
            region_id: region.id,
            region_epoch: region.region_epoch,
            requests,
            session,
            proposed_ms: ms,
            ..Default::default()
        };
        let view = RegionView {
            region,
            merge_state: None,
            merged_sources: &[],
        };
        let mut batch = KvWriteBatch::default();
        let applied = exec_command(view, 10, &cmd, kv, table, &mut batch).unwrap();
        let mut state = ApplyState::default();
        table.save_into(&mut state);
        layout::write_apply_state(&mut batch, region.id, &state);
        kv.write(batch).unwrap();
        applied.result
    }

    fn raw_value(kv: &MemKv, user: &[u8]) -> Option<Vec<u8>> {
        kv.get(&layout::data_key(&enc(user))).unwrap()
    }

    /// The table a region's delegate starts with after a restart: only what is stored.
    fn reloaded(kv: &MemKv, region_id: u64) -> SessionTable {
        let state = layout::read_apply_state(kv, region_id)
            .unwrap()
            .unwrap_or_default();
        SessionTable::new(region_id, &state)
    }

    #[test]
    fn a_retried_write_of_a_session_is_applied_once_even_after_another_clients_write() {
        let kv = MemKv::new();
        let region = whole_region();
        let mut table = sessions(&region);
        let first = Some(session_of(100 * MIN, 1));
        let put = || vec![put_value(b"k", b"first")];
        assert_eq!(
            run_in(&kv, &region, &mut table, put(), first, 100 * MIN),
            Ok(CmdOutput::Done)
        );
        assert!(run_in(
            &kv,
            &region,
            &mut table,
            vec![put_value(b"k", b"other")],
            None,
            0
        )
        .is_ok());
        // The first put arrives again (a retry, or the original late): answered, not applied.
        assert_eq!(
            run_in(&kv, &region, &mut table, put(), first, 100 * MIN + 1),
            Ok(CmdOutput::Done)
        );
        assert_eq!(raw_value(&kv, b"k"), Some(b"other".to_vec()));
        // The same after a restart, from what is stored.
        let mut table = reloaded(&kv, region.id);
        assert_eq!(
            run_in(&kv, &region, &mut table, put(), first, 100 * MIN + 2),
            Ok(CmdOutput::Done)
        );
        assert_eq!(raw_value(&kv, b"k"), Some(b"other".to_vec()));
        // Without a session, the same put applies again.
        assert!(run_in(&kv, &region, &mut table, put(), None, 0).is_ok());
        assert_eq!(raw_value(&kv, b"k"), Some(b"first".to_vec()));
    }

    #[test]
    fn a_split_copies_sessions_to_both_sides_and_a_merge_keeps_what_either_applied() {
        let kv = MemKv::new();
        let whole = whole_region();
        let mut table = sessions(&whole);
        let t = 100 * MIN;
        // Session write 1 puts a and z (one region then).
        let one = Some(session_of(t, 1));
        let write_one = || vec![put_value(b"a", b"one"), put_value(b"z", b"one")];
        assert!(run_in(&kv, &whole, &mut table, write_one(), one, t).is_ok());
        // Split between them.
        let split_key = enc(b"a").max(enc(b"z"));
        let split = admin_cmd(
            &whole,
            admin_request::Cmd::Split(SplitRequest {
                split_key: split_key.clone(),
                new_region_id: 2,
                new_peer_ids: vec![],
            }),
        );
        let mut batch = KvWriteBatch::default();
        let view = RegionView {
            region: &whole,
            merge_state: None,
            merged_sources: &[],
        };
        let Some(AdminResult::Split { left, right }) =
            exec_command(view, 11, &split, &kv, &mut table, &mut batch)
                .unwrap()
                .admin
        else {
            panic!("the split applies");
        };
        kv.write(batch).unwrap();
        // Others overwrite both keys; the retry of write 1 reaches each side: skipped on both.
        let mut right_table = reloaded(&kv, right.id);
        assert_eq!(
            right_table.clock_ms(),
            t,
            "the new region inherits the session clock"
        );
        for (region, table) in [(&left, &mut table), (&right, &mut right_table)] {
            let others = vec![put_value(b"a", b"other"), put_value(b"z", b"other")];
            let mine: Vec<Request> = others
                .into_iter()
                .filter(|r| match &r.cmd {
                    Some(Cmd::Put(p)) => in_range(&p.key, &region.start_key, &region.end_key),
                    _ => false,
                })
                .collect();
            let retry: Vec<Request> = write_one()
                .into_iter()
                .filter(|r| match &r.cmd {
                    Some(Cmd::Put(p)) => in_range(&p.key, &region.start_key, &region.end_key),
                    _ => false,
                })
                .collect();
            assert_eq!(mine.len(), 1);
            assert!(run_in(&kv, region, table, mine, None, 0).is_ok());
            assert!(run_in(&kv, region, table, retry, one, t + 1).is_ok());
        }
        assert_eq!(raw_value(&kv, b"a"), Some(b"other".to_vec()));
        assert_eq!(raw_value(&kv, b"z"), Some(b"other".to_vec()));

        // Write 2 is applied on the left only (c, on whichever side: sent where it belongs);
        // the right never got its part. The right merges into the left.
        let two = Some(session_of(t, 2));
        let side_of = |user: &[u8]| in_range(&enc(user), &left.start_key, &left.end_key);
        let (on_left, on_right): (Vec<&[u8]>, Vec<&[u8]>) =
            [b"c".as_slice(), b"x", b"q", b"g", b"r"]
                .into_iter()
                .partition(|u| side_of(u));
        assert!(
            !on_left.is_empty() && !on_right.is_empty(),
            "keys on both sides"
        );
        let left_part: Vec<Request> = on_left.iter().map(|u| put_value(u, b"two")).collect();
        assert!(run_in(&kv, &left, &mut table, left_part, two, t + 2).is_ok());
        for u in &on_left {
            assert!(run_in(
                &kv,
                &left,
                &mut table,
                vec![put_value(u, b"later")],
                None,
                0
            )
            .is_ok());
        }
        let right_state = layout::read_apply_state(&kv, right.id).unwrap().unwrap();
        let mut batch = KvWriteBatch::default();
        table
            .absorb(&kv, right.id, &right_state, &mut batch)
            .unwrap();
        kv.write(batch).unwrap();
        assert!(
            session::read_all(&kv, right.id).unwrap().is_empty(),
            "the source's records go"
        );
        // The retry of all of write 2 at the merged region: the left's keys are skipped (they
        // were applied, then overwritten), the right's are applied.
        let all: Vec<Request> = on_left
            .iter()
            .chain(on_right.iter())
            .map(|u| put_value(u, b"two"))
            .collect();
        assert!(run_in(&kv, &whole, &mut table, all, two, t + 3).is_ok());
        for u in &on_left {
            assert_eq!(raw_value(&kv, u), Some(b"later".to_vec()));
        }
        for u in &on_right {
            assert_eq!(raw_value(&kv, u), Some(b"two".to_vec()));
        }
    }

    #[test]
    fn a_session_the_region_forgot_is_refused_not_applied_as_new() {
        let kv = MemKv::new();
        let region = whole_region();
        let mut table = sessions(&region);
        let mut put = |user: &[u8], value: &[u8], session, ms| {
            run_in(
                &kv,
                &region,
                &mut table,
                vec![put_value(user, value)],
                session,
                ms,
            )
        };
        let t = 100 * MIN;
        let old = Some(session_of(t, 1));
        assert!(put(b"k", b"old", old, t).is_ok());
        assert!(put(b"k", b"other", None, 0).is_ok());
        // Much later (by the log's clock) another session writes: the old one is forgotten.
        let late = t + session::SESSION_IDLE_MS + MIN;
        assert!(put(b"n", b"v", Some(session_of(late, 1)), late).is_ok());
        assert!(
            session::read_all(&kv, region.id).unwrap().len() == 1,
            "swept"
        );
        let refused = put(b"k", b"old", old, late);
        assert!(
            matches!(
                refused.as_ref().unwrap_err().kind,
                Some(ringkv_proto::errorpb::region_error::Kind::SessionExpired(_))
            ),
            "{refused:?}"
        );
        assert_eq!(raw_value(&kv, b"k"), Some(b"other".to_vec()));
        // Its next number too: the session began before the horizon.
        assert!(put(b"k", b"old", Some(session_of(t, 2)), late).is_err());
        // A session that began after the horizon is new here.
        assert!(put(b"f", b"v", Some(session_of(t + 1, 1)), late).is_ok());
    }

    #[test]
    fn a_compare_and_swap_compares_at_apply_and_a_retry_of_a_swap_does_not_compare_again() {
        let kv = MemKv::new();
        let region = whole_region();
        let mut table = sessions(&region);
        let t = 100 * MIN;
        // One command: `seq` 0 is a write without a session.
        let mut apply = |requests: Vec<Request>, seq: u64, ms: u64| {
            let session = (seq > 0).then(|| session_of(t, seq));
            run_in(&kv, &region, &mut table, requests, session, ms)
        };
        // Put-if-absent, twice: the second finds the first's value.
        assert_eq!(
            apply(vec![cas(b"k", None, b"1")], 1, t),
            Ok(CmdOutput::Done)
        );
        assert_eq!(
            apply(vec![cas(b"k", None, b"x")], 2, t),
            Ok(CmdOutput::CasMismatch {
                current: Some(b"1".to_vec())
            })
        );
        // A mismatch records nothing: its retry compares again, and now swaps.
        assert!(apply(vec![put_value(b"k", b"0")], 0, 0).is_ok());
        assert_eq!(
            apply(vec![cas(b"k", Some(b"0"), b"2")], 3, t),
            Ok(CmdOutput::Done)
        );
        // Others move the value on; the swap's retry answers "swapped" and changes nothing.
        assert!(apply(vec![put_value(b"k", b"3")], 0, 0).is_ok());
        assert_eq!(
            apply(vec![cas(b"k", Some(b"0"), b"2")], 3, t + 1),
            Ok(CmdOutput::Done)
        );
        assert_eq!(raw_value(&kv, b"k"), Some(b"3".to_vec()));
        // Delete-if-equal.
        let delete = Request {
            cmd: Some(Cmd::CompareAndSwap(CompareAndSwapRequest {
                key: enc(b"k"),
                expect_exists: true,
                expected_value: b"3".to_vec(),
                delete: true,
                ..Default::default()
            })),
        };
        assert_eq!(apply(vec![delete], 4, t), Ok(CmdOutput::Done));
        // A CAS with other writes in its command is refused.
        let mixed = vec![cas(b"k", None, b"1"), put_value(b"j", b"v")];
        assert!(apply(mixed, 0, 0).is_err());
        assert_eq!(raw_value(&kv, b"k"), None);
        assert_eq!(raw_value(&kv, b"j"), None);
    }

    #[test]
    fn a_retried_range_delete_after_a_merge_deletes_only_the_part_not_deleted_before() {
        let kv = MemKv::new();
        let whole = whole_region();
        let users: Vec<Vec<u8>> = (0..40).map(|i| format!("u{i:02}").into_bytes()).collect();
        let mut encoded: Vec<Vec<u8>> = users.iter().map(|u| enc(u)).collect();
        encoded.sort();
        let mid = encoded[20].clone();
        let left = Region {
            end_key: mid.clone(),
            ..whole.clone()
        };
        let right = Region {
            id: 2,
            start_key: mid,
            ..whole.clone()
        };
        let mut left_table = sessions(&left);
        let mut right_table = sessions(&right);
        let puts = |value: &[u8]| {
            users
                .iter()
                .map(|u| put_value(u, value))
                .collect::<Vec<_>>()
        };
        assert!(run_in(&kv, &whole, &mut sessions(&whole), puts(b"old"), None, 0).is_ok());
        // Delete-range write 1 of the whole user range reaches the right only.
        let t = 100 * MIN;
        let one = Some(session_of(t, 1));
        assert!(run_in(
            &kv,
            &right,
            &mut right_table,
            vec![delete_range(b"", b"")],
            one,
            t
        )
        .is_ok());
        // Then the right's keys are written again by others.
        let right_users: Vec<&Vec<u8>> = users
            .iter()
            .filter(|u| in_range(&enc(u), &right.start_key, &right.end_key))
            .collect();
        let again: Vec<Request> = right_users.iter().map(|u| put_value(u, b"new")).collect();
        assert!(run_in(&kv, &right, &mut right_table, again, None, 0).is_ok());
        // Merged, the retry deletes the left's part only.
        let state = layout::read_apply_state(&kv, 2).unwrap().unwrap();
        let mut batch = KvWriteBatch::default();
        left_table.absorb(&kv, 2, &state, &mut batch).unwrap();
        kv.write(batch).unwrap();
        assert!(run_in(
            &kv,
            &whole,
            &mut left_table,
            vec![delete_range(b"", b"")],
            one,
            t
        )
        .is_ok());
        let mut left_now: Vec<Vec<u8>> = kv
            .dump()
            .keys()
            .filter(|k| k[0] == layout::DATA_PREFIX)
            .map(|k| keys::user_key_unchecked(origin_key(k)).unwrap().to_vec())
            .collect();
        left_now.sort();
        let mut want: Vec<Vec<u8>> = right_users.into_iter().cloned().collect();
        want.sort();
        assert_eq!(left_now, want);
    }
}
