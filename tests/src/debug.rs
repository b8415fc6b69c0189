//! Talking to one node directly: its Debug service (local state of its replicas) and its KV
//! service without the SDK (for bad-input tests).

use ringkv_proto::kvrpcpb::kv_client::KvClient;
use ringkv_proto::raftpb::debug_client::DebugClient;
use ringkv_proto::raftpb::{LocalGetRequest, RegionInfoResponse, StoreInfoRequest};
use tonic::transport::Channel;

pub async fn debug_client(addr: &str) -> Option<DebugClient<Channel>> {
    DebugClient::connect(format!("http://{addr}")).await.ok()
}

pub async fn kv_client(addr: &str) -> KvClient<Channel> {
    KvClient::connect(format!("http://{addr}"))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to node at {addr}: {e}"))
}

/// The regions of the node at `addr`, or None if it does not answer.
pub async fn regions(addr: &str) -> Option<Vec<RegionInfoResponse>> {
    let mut c = debug_client(addr).await?;
    let info = c.store_info(StoreInfoRequest {}).await.ok()?.into_inner();
    Some(info.regions)
}

/// The value of encoded `key` in the node's local state (no Raft), or None if unreachable.
pub async fn local_get(addr: &str, key: &[u8]) -> Option<Option<Vec<u8>>> {
    let mut c = debug_client(addr).await?;
    let r = c
        .local_get(LocalGetRequest { key: key.to_vec() })
        .await
        .ok()?
        .into_inner();
    Some(r.found.then_some(r.value))
}

/// The store id of the node at `addr`, or None if it does not answer.
pub async fn store_id(addr: &str) -> Option<u64> {
    let mut c = debug_client(addr).await?;
    let info = c.store_info(StoreInfoRequest {}).await.ok()?.into_inner();
    Some(info.store_id)
}

/// Makes the node at `addr` drop its Raft messages to `blocked_to` (empty: heal). Needs the
/// node's `fault_injection = true`. Returns whether the node took it.
pub async fn set_net_filter(addr: &str, blocked_to: Vec<u64>) -> bool {
    let Some(mut c) = debug_client(addr).await else {
        return false;
    };
    c.set_net_filter(ringkv_proto::raftpb::SetNetFilterRequest { blocked_to })
        .await
        .is_ok()
}
