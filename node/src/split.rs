//! Proposing a split: ask the placement driver for the new region's ids, then propose the split
//! through the region's Raft log. Used both by the node itself (a split check found the region
//! too big) and by the `SplitRegion` RPC (placement driver, admin CLI, tests).

use crate::apply::split_regions;
use crate::region_error;
use crate::router::StoreRouter;
use ringkv_client::PdClient;
use ringkv_proto::errorpb::RegionError;
use ringkv_proto::metapb::Region;
use ringkv_proto::raftpb::{admin_request, AdminRequest, RaftCmdRequest, SplitRequest};
use std::time::Duration;
use tokio::sync::oneshot;

/// How long a split may take before its caller is told the outcome is unknown.
const SPLIT_WAIT: Duration = Duration::from_secs(10);

/// Why a split did not happen.
#[derive(Debug)]
pub enum SplitFailure {
    /// The region refused it (not leader, epoch changed, key not inside): retry with fresh
    /// routing.
    Region(RegionError),
    /// The placement driver or the raftstore could not be reached, or the split did not apply
    /// in time.
    Unavailable(String),
}

impl std::fmt::Display for SplitFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SplitFailure::Region(e) => write!(f, "{}", e.message),
            SplitFailure::Unavailable(m) => write!(f, "{m}"),
        }
    }
}

/// The local peer's view of `region_id`, if this store has it.
pub async fn local_region(router: &StoreRouter, region_id: u64) -> Option<(Region, bool)> {
    let info = router.region_status(region_id, SPLIT_WAIT).await?;
    Some((info.region?, info.is_leader))
}

/// Splits `region` (as the caller last saw it) at encoded `split_key`. Returns the two regions
/// the split produced.
pub async fn split_region(
    pd: &PdClient,
    router: &StoreRouter,
    region: &Region,
    split_key: Vec<u8>,
) -> Result<(Region, Region), SplitFailure> {
    let (new_region_id, new_peer_ids) = pd
        .ask_split(region)
        .await
        .map_err(|e| SplitFailure::Unavailable(format!("placement driver: {e}")))?;
    let split = SplitRequest {
        split_key,
        new_region_id,
        new_peer_ids,
    };
    let cmd = RaftCmdRequest {
        region_id: region.id,
        region_epoch: region.region_epoch,
        requests: Vec::new(),
        admin: Some(AdminRequest {
            cmd: Some(admin_request::Cmd::Split(split.clone())),
        }),
    };
    let (tx, rx) = oneshot::channel();
    router.send_command(cmd, tx);
    match tokio::time::timeout(SPLIT_WAIT, rx).await {
        Ok(Ok(Ok(()))) => Ok(split_regions(region, &split)),
        Ok(Ok(Err(e))) => Err(SplitFailure::Region(e)),
        Ok(Err(_)) => Err(SplitFailure::Unavailable("node is shutting down".into())),
        Err(_) => Err(SplitFailure::Unavailable(format!(
            "split of region {} not applied within {SPLIT_WAIT:?}; its outcome is unknown",
            region.id
        ))),
    }
}

/// Splits the local region `region_id` at `split_key` on behalf of an RPC, checking first that
/// this store leads it at the epoch the caller named.
pub async fn split_local_region(
    pd: &PdClient,
    router: &StoreRouter,
    region_id: u64,
    epoch: Option<ringkv_proto::metapb::RegionEpoch>,
    split_key: Vec<u8>,
) -> Result<(Region, Region), SplitFailure> {
    let Some((region, is_leader)) = local_region(router, region_id).await else {
        return Err(SplitFailure::Region(region_error::region_not_found(
            region_id,
        )));
    };
    if !is_leader {
        return Err(SplitFailure::Region(region_error::not_leader(
            region_id, None,
        )));
    }
    let (now, asked) = (
        region.region_epoch.unwrap_or_default(),
        epoch.unwrap_or_default(),
    );
    if now != asked {
        return Err(SplitFailure::Region(region_error::epoch_not_match(
            &region, epoch,
        )));
    }
    split_region(pd, router, &region, split_key).await
}
