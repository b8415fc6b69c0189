//! Merging a region (the source) into an adjacent one (the target) whose peers sit on the same
//! stores, after TiKV's prepare / commit / rollback merge:
//!
//! 1. *Prepare*, through the source's log at index p: the source records its merge state,
//!    bumps its epoch and serves nothing from then on ([`prepare_merge`]).
//! 2. *Commit*, through the target's log: once every source replica holds the log up to p, the
//!    source's leader asks the target's leader to propose a CommitMerge ([`commit_merge`]).
//!    Each target replica applies it only after its local source replica applied p (telling
//!    it p is committed if need be), widens itself over the source and writes the source's
//!    tombstone in the same batch; the source's peer is then destroyed.
//! 3. *Rollback*, through the source's log, only when the target refused the commit for good
//!    (its epoch moved first: [`after_commit_attempt`]), or its local replica shows it moved on
//!    (it split, or merged away itself: [`target_moved_on`]). A target that already merged the
//!    source answers a retry as done, so a late retry never rolls back a merge that happened.

use crate::admin::{self, AdminFailure};
use crate::apply::{merge_refusal, CmdResult};
use crate::region_error;
use crate::router::StoreRouter;
use ringkv_client::PdClient;
use ringkv_proto::errorpb::{region_error::Kind, RegionError};
use ringkv_proto::metapb::{Region, RegionEpoch};
use ringkv_proto::raftpb::raft_client::RaftClient;
use ringkv_proto::raftpb::{
    admin_request, AdminRequest, MergeState, PeerState, PrepareMergeRequest, ProposeMergeRequest,
    RaftCmdRequest, RollbackMergeRequest,
};
use ringkv_storage::{layout, KvEngine, StorageError};
use std::time::Duration;

/// How long the target's store may take to answer a forwarded CommitMerge.
const MERGE_WAIT: Duration = Duration::from_secs(10);

/// What a merging source does after an attempt to commit its merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeStep {
    /// The target applied the merge (now or before).
    Done,
    /// Unknown or temporary (no leader, busy, unreachable, timed out): ask again later.
    Retry,
    /// The target refused it for good: its epoch is past the one the source prepared for, so
    /// no CommitMerge of this prepare can ever apply. Roll back.
    RollBack,
}

/// Classifies the result of proposing the CommitMerge `cmd` to the target. Only a refusal that
/// no later attempt can change rolls back: the target's epoch (as the refusal reports it) is
/// past the one the merge was prepared for, in version or conf_ver. A target leader that is
/// merely behind (it has not applied up to the prepared epoch yet) refuses at its proposal
/// check too, but a CommitMerge may still be in its log: that is retried.
pub fn after_commit_attempt(result: &CmdResult, cmd: &RaftCmdRequest) -> MergeStep {
    match result {
        Ok(_) => MergeStep::Done,
        Err(RegionError {
            kind: Some(Kind::EpochNotMatch(e)),
            ..
        }) => {
            let asked = cmd.region_epoch.unwrap_or_default();
            let moved_past = e.current_regions.iter().any(|r| {
                let now = r.region_epoch.unwrap_or_default();
                r.id == cmd.region_id
                    && (now.version > asked.version || now.conf_ver > asked.conf_ver)
            });
            if moved_past {
                MergeStep::RollBack
            } else {
                MergeStep::Retry
            }
        }
        Err(_) => MergeStep::Retry,
    }
}

fn admin(region_id: u64, epoch: Option<RegionEpoch>, cmd: admin_request::Cmd) -> RaftCmdRequest {
    RaftCmdRequest {
        region_id,
        region_epoch: epoch,
        requests: Vec::new(),
        admin: Some(AdminRequest { cmd: Some(cmd) }),
        ..Default::default()
    }
}

/// The index of the source's prepare that a CommitMerge `cmd` completes.
pub fn prepared_commit(cmd: &RaftCmdRequest) -> Option<u64> {
    match cmd.admin.as_ref()?.cmd.as_ref()? {
        admin_request::Cmd::CommitMerge(c) => Some(c.commit),
        _ => None,
    }
}

/// Checks, before a CommitMerge `cmd` is proposed to its target, that the local replica of its
/// source holds the prepare it names ([`crate::peer::Peer::prepared_merge_into`]). Target
/// replicas apply a CommitMerge only after their source applied that prepare, so one resting
/// on no prepare would stall the target for good. Every replica of both regions sits on this
/// store's set of stores, so the local source replica can answer.
pub async fn check_source_prepared(
    router: &StoreRouter,
    cmd: &RaftCmdRequest,
) -> Result<(), SourceNotPrepared> {
    let Some(admin_request::Cmd::CommitMerge(commit)) =
        cmd.admin.as_ref().and_then(|a| a.cmd.as_ref())
    else {
        return Err(SourceNotPrepared::Refused("not a CommitMerge".into()));
    };
    let source = commit.source.as_ref().map_or(0, |s| s.id);
    if source == 0 || source == cmd.region_id {
        return Err(SourceNotPrepared::Refused(format!(
            "CommitMerge into region {} names source region {source}",
            cmd.region_id
        )));
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    let asked = crate::router::PeerMsg::CheckPreparedMerge {
        commit: commit.commit,
        commit_term: commit.commit_term,
        target: cmd.region_id,
        reply,
    };
    if router.send(source, asked).is_err() {
        return Err(SourceNotPrepared::Refused(format!(
            "this store has no replica of source region {source}"
        )));
    }
    match tokio::time::timeout(MERGE_WAIT, answer).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(crate::peer::NoPrepare::Absent))) => Err(SourceNotPrepared::Refused(format!(
            "source region {source} holds no PrepareMerge into region {} at index {} term {}",
            cmd.region_id, commit.commit, commit.commit_term
        ))),
        Ok(Ok(Err(crate::peer::NoPrepare::Behind { last_index }))) => {
            Err(SourceNotPrepared::Behind(format!(
                "the local replica of source region {source} has its log only up to {last_index}, before the prepare at {}",
                commit.commit
            )))
        }
        _ => Err(SourceNotPrepared::Behind(format!(
            "the local replica of source region {source} did not answer"
        ))),
    }
}

/// Why a CommitMerge was not proposed (see [`check_source_prepared`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceNotPrepared {
    /// Not yet: the local source replica has not got the prepare's log entry. Ask again.
    Behind(String),
    /// Never: the command names no prepare this store's source replica holds.
    Refused(String),
}

/// Proposes a CommitMerge `cmd` to the local replica of its target once the local source
/// replica shows the prepare it rests on (see [`check_source_prepared`]); a command that does
/// not rest on one is answered busy here, and the caller tells a forged one apart.
pub async fn propose_commit_merge(
    router: &StoreRouter,
    cmd: RaftCmdRequest,
) -> Result<CmdResult, SourceNotPrepared> {
    check_source_prepared(router, &cmd).await?;
    Ok(admin::propose_for_result(router, cmd).await)
}

/// The proposal that prepares merging `source` into `target`.
pub fn prepare_command(source: &Region, target: &Region) -> RaftCmdRequest {
    admin(
        source.id,
        source.region_epoch,
        admin_request::Cmd::PrepareMerge(PrepareMergeRequest {
            target: Some(target.clone()),
        }),
    )
}

/// The proposal that rolls back the merge `source` (as prepared) prepared at `commit`.
pub fn rollback_command(source: &Region, commit: u64) -> RaftCmdRequest {
    admin(
        source.id,
        source.region_epoch,
        admin_request::Cmd::RollbackMerge(RollbackMergeRequest { commit }),
    )
}

/// Whether this store's replica of the target of `source_id`'s merge (prepared with `state`)
/// shows that no CommitMerge of this prepare can ever apply, so the merge must roll back:
/// - alive at a version above the one the merge was prepared for, without the source among
///   its merged sources: it applies its log in order and refuses a CommitMerge whose version
///   is not its own, so it changed before our commit, everywhere;
/// - a tombstone left by its own merge into another region: its replica here applied its log
///   up to that prepare, and a merging region refuses every CommitMerge.
///
/// Either way, had the target taken our merge before, the same write would have tombstoned
/// the local source; that is read after the target, so a write landing between the two reads
/// cannot mislead. A target removed here by a snapshot tells nothing: the merge waits.
pub fn target_moved_on(
    kv: &dyn KvEngine,
    source_id: u64,
    state: &MergeState,
) -> Result<bool, StorageError> {
    let Some(target) = state.target.as_ref() else {
        return Ok(false);
    };
    let prepared_for = target.region_epoch.unwrap_or_default().version;
    let Some(local_target) = layout::read_region_state(kv, target.id)? else {
        return Ok(false);
    };
    let moved_on = if local_target.state == PeerState::Tombstone as i32 {
        local_target.merge_state.is_some()
    } else {
        let local_version = local_target
            .region
            .as_ref()
            .and_then(|r| r.region_epoch)
            .unwrap_or_default()
            .version;
        local_version > prepared_for && !local_target.merged_sources.contains(&source_id)
    };
    if !moved_on {
        return Ok(false);
    }
    let source_gone = layout::read_region_state(kv, source_id)?
        .is_some_and(|s| s.state == PeerState::Tombstone as i32);
    Ok(!source_gone)
}

/// Prepares merging the local region `source_id` (which this store must lead, at `epoch`)
/// into `target_id`, whose local replica gives the target's range and epoch.
pub async fn prepare_merge(
    router: &StoreRouter,
    source_id: u64,
    epoch: Option<RegionEpoch>,
    target_id: u64,
) -> Result<(), AdminFailure> {
    let source = admin::local_leader(router, source_id, epoch).await?;
    let Some((target, _)) = admin::local_region(router, target_id).await else {
        return Err(AdminFailure::Region(RegionError {
            message: format!(
                "target region {target_id} has no replica on this store, so it cannot take region {source_id}"
            ),
            ..region_error::region_not_found(target_id)
        }));
    };
    if let Some(why) = merge_refusal(&source, &target) {
        return Err(AdminFailure::Region(region_error::invalid_command(
            source_id, &why,
        )));
    }
    admin::propose(router, prepare_command(&source, &target)).await?;
    tracing::info!(region = source_id, target = target_id, "merge prepared");
    Ok(())
}

/// Gets the CommitMerge `cmd` proposed by the target's leader: through the local replica if it
/// leads, else on the store it names as leader.
pub async fn propose_to_target(
    pd: &PdClient,
    router: &StoreRouter,
    store_id: u64,
    cmd: RaftCmdRequest,
) -> CmdResult {
    let local = match propose_commit_merge(router, cmd.clone()).await {
        Ok(result) => result,
        // The target's leader may be elsewhere: the local source replica answers the same
        // there, and this store's copy may be the one behind.
        Err(SourceNotPrepared::Behind(why) | SourceNotPrepared::Refused(why)) => {
            return Err(region_error::server_is_busy(&why));
        }
    };
    let leader_store = match &local {
        Err(RegionError {
            kind: Some(Kind::NotLeader(n)),
            ..
        }) => n.leader.map(|l| l.store_id).filter(|s| *s != store_id),
        _ => None,
    };
    let Some(leader_store) = leader_store else {
        return local;
    };
    let unreachable =
        |e: String| region_error::server_is_busy(&format!("store {leader_store} unreachable: {e}"));
    let store = pd
        .get_store(leader_store)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let channel =
        ringkv_client::pd::channel_to(&store.address).map_err(|e| unreachable(e.to_string()))?;
    let mut client = RaftClient::new(channel);
    let call = client.propose_merge(ProposeMergeRequest { cmd: Some(cmd) });
    match tokio::time::timeout(MERGE_WAIT, call).await {
        Ok(Ok(response)) => match response.into_inner().region_error {
            None => Ok(crate::apply::CmdOutput::Done),
            Some(e) => Err(e),
        },
        Ok(Err(status)) => Err(unreachable(status.message().to_string())),
        Err(_) => Err(unreachable("no answer in time".into())),
    }
}

/// One attempt of a merging source's leader to get its merge committed (the raftstore asks
/// again on a timer until the source is gone or back to normal).
pub async fn commit_merge(
    pd: &PdClient,
    router: &StoreRouter,
    store_id: u64,
    source: Region,
    cmd: RaftCmdRequest,
) {
    let Some(commit) = prepared_commit(&cmd) else {
        return;
    };
    let target = cmd.region_id;
    let result = propose_to_target(pd, router, store_id, cmd.clone()).await;
    match after_commit_attempt(&result, &cmd) {
        MergeStep::Done => tracing::info!(region = source.id, target, "merge committed"),
        MergeStep::Retry => tracing::debug!(
            region = source.id,
            target,
            reason = %result.err().map(|e| e.message).unwrap_or_default(),
            "merge not committed yet; retrying later"
        ),
        MergeStep::RollBack => {
            tracing::info!(
                region = source.id,
                target,
                reason = %result.err().map(|e| e.message).unwrap_or_default(),
                "target refused the merge for good; rolling back"
            );
            if let Err(e) = admin::propose(router, rollback_command(&source, commit)).await {
                tracing::info!(region = source.id, reason = %e, "rollback not applied yet; retrying later");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::RegionView;
    use ringkv_storage::{KvWriteBatch, MemKv};

    fn region(id: u64, version: u64) -> Region {
        Region {
            id,
            region_epoch: Some(RegionEpoch {
                conf_ver: 1,
                version,
            }),
            ..Default::default()
        }
    }

    fn write_state(kv: &MemKv, region: &Region, state: PeerState, merged_sources: &[u64]) {
        let mut batch = KvWriteBatch::default();
        layout::write_region_state(
            &mut batch,
            &RegionView {
                region,
                merge_state: None,
                merged_sources,
            }
            .local_state(state),
        );
        kv.write(batch).unwrap();
    }

    fn tombstone(kv: &MemKv, region: &Region, merged_into: Option<MergeState>) {
        let mut batch = KvWriteBatch::default();
        layout::write_tombstone(&mut batch, region, merged_into);
        kv.write(batch).unwrap();
    }

    /// Source 2 prepared a merge into target 1 at version 5.
    fn prepared() -> MergeState {
        MergeState {
            target: Some(region(1, 5)),
            commit: 40,
        }
    }

    #[test]
    fn a_merge_rolls_back_only_when_the_local_target_proves_it_can_never_commit() {
        let kv = MemKv::new();
        let state = prepared();
        write_state(&kv, &region(2, 8), PeerState::Merging, &[]);
        // Unknown here, or at the prepared version (or behind it): keep asking.
        assert!(!target_moved_on(&kv, 2, &state).unwrap());
        write_state(&kv, &region(1, 4), PeerState::Normal, &[]);
        assert!(!target_moved_on(&kv, 2, &state).unwrap());
        write_state(&kv, &region(1, 5), PeerState::Normal, &[]);
        assert!(!target_moved_on(&kv, 2, &state).unwrap());
        // The target split first: it refuses this merge for good.
        write_state(&kv, &region(1, 6), PeerState::Normal, &[]);
        assert!(target_moved_on(&kv, 2, &state).unwrap());
        // ... unless its version moved because it took the merge.
        write_state(&kv, &region(1, 6), PeerState::Normal, &[2]);
        assert!(!target_moved_on(&kv, 2, &state).unwrap());
        // The target merged away itself: it applied its log up to that prepare.
        tombstone(
            &kv,
            &region(1, 5),
            Some(MergeState {
                target: Some(region(3, 9)),
                commit: 17,
            }),
        );
        assert!(target_moved_on(&kv, 2, &state).unwrap());
        // A target removed by a snapshot tells nothing.
        tombstone(&kv, &region(1, 7), None);
        assert!(!target_moved_on(&kv, 2, &state).unwrap());
        // Nor does anything once the source here is a tombstone: the merge happened.
        write_state(&kv, &region(1, 6), PeerState::Normal, &[]);
        tombstone(&kv, &region(2, 8), None);
        assert!(!target_moved_on(&kv, 2, &state).unwrap());
    }
}
