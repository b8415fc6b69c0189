//! What the admin operations on a region (split, merge) share: finding the local replica,
//! checking that this store leads it at the epoch the caller named, and proposing a command
//! and waiting for its applied result.

use crate::apply::CmdResult;
use crate::region_error;
use crate::router::StoreRouter;
use ringkv_proto::errorpb::RegionError;
use ringkv_proto::metapb::{Region, RegionEpoch};
use ringkv_proto::raftpb::RaftCmdRequest;
use std::time::Duration;
use tokio::sync::oneshot;

/// How long an admin proposal may take before its caller is told the outcome is unknown.
const ADMIN_WAIT: Duration = Duration::from_secs(10);

/// Why an admin operation did not happen.
#[derive(Debug)]
pub enum AdminFailure {
    /// The region refused it (not leader, epoch changed, not possible as asked): the error
    /// says why; retry with fresh routing if it is retryable.
    Region(RegionError),
    /// The placement driver or the raftstore could not be reached, or the proposal did not
    /// apply in time.
    Unavailable(String),
}

impl std::fmt::Display for AdminFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminFailure::Region(e) => write!(f, "{}", e.message),
            AdminFailure::Unavailable(m) => write!(f, "{m}"),
        }
    }
}

impl AdminFailure {
    /// As a region error, for answers that carry only one (an unavailable raftstore is "busy").
    pub fn into_region_error(self) -> RegionError {
        match self {
            AdminFailure::Region(e) => e,
            AdminFailure::Unavailable(m) => region_error::server_is_busy(&m),
        }
    }
}

/// The local peer's view of `region_id`, if this store has it, and whether it leads.
pub async fn local_region(router: &StoreRouter, region_id: u64) -> Option<(Region, bool)> {
    let info = router.region_status(region_id, ADMIN_WAIT).await?;
    Some((info.region?, info.is_leader))
}

/// The local replica of `region_id`, which this store must lead at exactly `epoch`.
pub async fn local_leader(
    router: &StoreRouter,
    region_id: u64,
    epoch: Option<RegionEpoch>,
) -> Result<Region, AdminFailure> {
    let Some((region, is_leader)) = local_region(router, region_id).await else {
        return Err(AdminFailure::Region(region_error::region_not_found(
            region_id,
        )));
    };
    if !is_leader {
        return Err(AdminFailure::Region(region_error::not_leader(
            region_id, None,
        )));
    }
    if region.region_epoch.unwrap_or_default() != epoch.unwrap_or_default() {
        return Err(AdminFailure::Region(region_error::epoch_not_match(
            &region, epoch,
        )));
    }
    Ok(region)
}

/// Proposes `cmd` to its region's local peer and waits for the applied result.
pub async fn propose(router: &StoreRouter, cmd: RaftCmdRequest) -> Result<(), AdminFailure> {
    let region_id = cmd.region_id;
    let (tx, rx) = oneshot::channel();
    router.send_command(cmd, tx);
    match tokio::time::timeout(ADMIN_WAIT, rx).await {
        Ok(Ok(result)) => result.map(drop).map_err(AdminFailure::Region),
        Ok(Err(_)) => Err(AdminFailure::Unavailable("node is shutting down".into())),
        Err(_) => Err(AdminFailure::Unavailable(format!(
            "proposal to region {region_id} not applied within {ADMIN_WAIT:?}; its outcome is unknown"
        ))),
    }
}

/// [`propose`], with every failure as a region error.
pub async fn propose_for_result(router: &StoreRouter, cmd: RaftCmdRequest) -> CmdResult {
    propose(router, cmd)
        .await
        .map(|()| crate::apply::CmdOutput::Done)
        .map_err(AdminFailure::into_region_error)
}
