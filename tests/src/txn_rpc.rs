//! Transactional RPCs sent straight to region leaders, bypassing the SDK: to leave the
//! traces a client that dies mid-commit leaves (locks without a commit).

use ringkv_client::PdClient;
use ringkv_proto::keys;
use ringkv_proto::kvrpcpb::kv_client::KvClient;
use ringkv_proto::kvrpcpb::*;
use std::time::{Duration, Instant};

/// `user` in the default keyspace.
pub fn encoded(user: &[u8]) -> Vec<u8> {
    keys::encode(&keys::default_keyspace(), user)
}

/// Prewrites `keys` of a transaction at `start_ts` with `primary` and a TTL, the way a client
/// does before it dies: straight to each key's region leader.
pub async fn prewrite_and_die(
    pd: &PdClient,
    keys_values: &[(&[u8], &[u8])],
    primary: &[u8],
    start_ts: u64,
    ttl_ms: u64,
) {
    for (k, v) in keys_values {
        send_to_leader(pd, &encoded(k), |mut c, context| async move {
            let r = c
                .kv_prewrite(KvPrewriteRequest {
                    context: Some(context),
                    mutations: vec![Mutation {
                        op: Op::Put as i32,
                        key: encoded(k),
                        value: v.to_vec(),
                    }],
                    primary_lock: encoded(primary),
                    start_version: start_ts,
                    lock_ttl: ttl_ms,
                    txn_size: keys_values.len() as u64,
                    try_one_pc: false,
                })
                .await?
                .into_inner();
            Ok(r.region_error.is_none() && r.errors.is_empty())
        })
        .await;
    }
}

pub async fn commit_key(pd: &PdClient, key: &[u8], start_ts: u64, commit_ts: u64) {
    send_to_leader(pd, &encoded(key), |mut c, context| async move {
        let r = c
            .kv_commit(KvCommitRequest {
                context: Some(context),
                start_version: start_ts,
                keys: vec![encoded(key)],
                commit_version: commit_ts,
            })
            .await?
            .into_inner();
        Ok(r.region_error.is_none() && r.error.is_none())
    })
    .await;
}

/// Sends to the leader of `key`'s region until `f` says it was done.
pub async fn send_to_leader<F, Fut>(pd: &PdClient, key: &[u8], f: F)
where
    F: Fn(KvClient<tonic::transport::Channel>, Context) -> Fut,
    Fut: std::future::Future<Output = Result<bool, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "no leader accepted the request");
        let route = pd.get_region(key).await.unwrap();
        if let Some(leader) = route.leader {
            let store = pd.get_store(leader.store_id).await.unwrap();
            let client = KvClient::connect(format!("http://{}", store.address))
                .await
                .unwrap();
            let context = Context {
                region_id: route.region.id,
                region_epoch: route.region.region_epoch,
                replica_read: false,
                stale_read: false,
                ..Default::default()
            };
            if let Ok(true) = f(client, context).await {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
