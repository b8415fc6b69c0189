//! Proposing a split: ask the placement driver for the new region's ids, then propose the split
//! through the region's Raft log. Used both by the node itself (a split check found the region
//! too big) and by the `SplitRegion` RPC (placement driver, admin CLI, tests).

use crate::admin::{self, AdminFailure};
use crate::apply::split_regions;
use crate::router::StoreRouter;
use ringkv_client::PdClient;
use ringkv_proto::metapb::{Region, RegionEpoch};
use ringkv_proto::raftpb::{admin_request, AdminRequest, RaftCmdRequest, SplitRequest};

/// Splits `region` (as the caller last saw it) at encoded `split_key`. Returns the two regions
/// the split produced.
pub async fn split_region(
    pd: &PdClient,
    router: &StoreRouter,
    region: &Region,
    split_key: Vec<u8>,
) -> Result<(Region, Region), AdminFailure> {
    let (new_region_id, new_peer_ids) = pd
        .ask_split(region)
        .await
        .map_err(|e| AdminFailure::Unavailable(format!("placement driver: {e}")))?;
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
        ..Default::default()
    };
    admin::propose(router, cmd).await?;
    Ok(split_regions(region, &split))
}

/// Splits the local region `region_id` at `split_key` on behalf of an RPC, checking first that
/// this store leads it at the epoch the caller named.
pub async fn split_local_region(
    pd: &PdClient,
    router: &StoreRouter,
    region_id: u64,
    epoch: Option<RegionEpoch>,
    split_key: Vec<u8>,
) -> Result<(Region, Region), AdminFailure> {
    let region = admin::local_leader(router, region_id, epoch).await?;
    split_region(pd, router, &region, split_key).await
}
