//! The read paths on an in-process cluster: a follower answers a read marked `replica_read`
//! (after a ReadIndex from the leader, so it sees every acknowledged write) and refuses an
//! ordinary one; the SDK sends reads to followers when asked, per request.

use ringkv_proto::kvrpcpb::{Context, RawGetRequest};
use ringkv_tests::cluster::ClusterBuilder;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

#[test]
fn followers_serve_replica_reads_that_see_every_acknowledged_write() {
    let c = ClusterBuilder::default().start();
    let client = c.client();
    let leader = c.wait_for_leader(LONG);
    let follower = (0..c.node_count()).find(|&i| i != leader).unwrap();
    let encoded =
        ringkv_proto::keys::encode(&ringkv_proto::keys::default_keyspace(), b"replica-key");
    c.rt.block_on(async {
        let route = client.pd().get_region(&encoded).await.unwrap();
        let mut kv = ringkv_tests::debug::kv_client(&c.node_addr(follower)).await;
        let get = |replica_read| RawGetRequest {
            context: Some(Context {
                region_id: route.region.id,
                region_epoch: route.region.region_epoch,
                replica_read,
                stale_read: false,
            }),
            key: encoded.clone(),
        };
        for round in 0..20u32 {
            let value = format!("v{round}").into_bytes();
            client
                .put(b"replica-key".to_vec(), value.clone())
                .await
                .unwrap();
            // Right after the acknowledgement: the follower may not have applied it yet, so
            // it must wait for the leader's commit index rather than answer from its state.
            let r = kv.raw_get(get(true)).await.unwrap().into_inner();
            assert!(r.region_error.is_none(), "{:?}", r.region_error);
            assert_eq!(
                r.value, value,
                "a follower read missed an acknowledged write"
            );
        }
        let r = kv.raw_get(get(false)).await.unwrap().into_inner();
        assert!(
            r.region_error
                .is_some_and(|e| e.message.contains("not the leader")
                    || matches!(
                        e.kind,
                        Some(ringkv_proto::errorpb::region_error::Kind::NotLeader(_))
                    )),
            "a follower served an ordinary read"
        );
        // The SDK, per request.
        let from_followers = client.with_replica_read(true);
        client
            .put(b"sdk-key".to_vec(), b"1".to_vec())
            .await
            .unwrap();
        assert_eq!(
            from_followers.get(b"sdk-key".to_vec()).await.unwrap(),
            Some(b"1".to_vec())
        );
        assert_eq!(
            from_followers
                .batch_get(vec![b"sdk-key".to_vec(), b"replica-key".to_vec()])
                .await
                .unwrap()
                .len(),
            2
        );
    });
}
