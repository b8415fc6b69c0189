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
                ..Default::default()
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

/// A leader gives up its lease the moment it starts handing leadership over: the transferee
/// campaigns at once (no election timeout) and may take writes while the old leader's lease
/// would still run. Here nothing reaches the old leader any more, so it never learns it was
/// replaced; it must still not answer from its local state.
#[test]
fn a_leader_handing_over_serves_no_lease_read_once_the_transfer_starts() {
    use ringkv_proto::kvrpcpb::{RawPutRequest, TransferLeaderRequest};
    let c = ClusterBuilder::default().start();
    let client = c.client();
    let encoded = ringkv_proto::keys::encode(&ringkv_proto::keys::default_keyspace(), b"handover");
    c.rt.block_on(client.put(b"handover".to_vec(), b"old".to_vec()))
        .unwrap();
    let route = c.rt.block_on(client.pd().get_region(&encoded)).unwrap();
    let leader = route.leader.expect("a leader");
    let node_of = |store_id| {
        (0..c.node_count())
            .find(|&i| c.store_id(i) == store_id)
            .unwrap()
    };
    let old = node_of(leader.store_id);
    let to = *route
        .region
        .peers
        .iter()
        .find(|p| p.id != leader.id)
        .expect("a follower");
    let new = node_of(to.store_id);
    let context = Context {
        region_id: route.region.id,
        region_epoch: route.region.region_epoch,
        replica_read: false,
        stale_read: false,
        ..Default::default()
    };
    let read_at_old = || {
        c.rt.block_on(async {
            let mut kv = ringkv_tests::debug::kv_client(&c.node_addr(old)).await;
            tokio::time::timeout(
                Duration::from_secs(2),
                kv.raw_get(RawGetRequest {
                    context: Some(context),
                    key: encoded.clone(),
                }),
            )
            .await
        })
    };
    // The old leader serves under its lease.
    let before = read_at_old().expect("answered").unwrap().into_inner();
    assert_eq!(before.value, b"old");

    for i in (0..c.node_count()).filter(|&i| i != old) {
        c.filter.block(c.store_id(i), leader.store_id);
    }
    let started = c.rt.block_on(async {
        let mut kv = ringkv_tests::debug::kv_client(&c.node_addr(old)).await;
        kv.transfer_leader(TransferLeaderRequest {
            context: Some(context),
            to: Some(to),
        })
        .await
        .unwrap()
        .into_inner()
    });
    assert!(started.region_error.is_none(), "{:?}", started.region_error);
    // The transferee wins at once and takes a write.
    ringkv_tests::wait_until("the transferee to take a write", LONG, || {
        c.rt.block_on(async {
            let mut kv = ringkv_tests::debug::kv_client(&c.node_addr(new)).await;
            let r = kv
                .raw_put(RawPutRequest {
                    context: Some(context),
                    key: encoded.clone(),
                    value: b"new".to_vec(),
                })
                .await
                .ok()?
                .into_inner();
            r.region_error.is_none().then_some(())
        })
    });
    // The old leader, still believing it leads, must not answer from its state.
    match read_at_old() {
        Err(_) => {} // no answer: it waits for a ReadIndex quorum it cannot reach
        Ok(Err(_)) => {}
        Ok(Ok(r)) => {
            let r = r.into_inner();
            assert!(
                r.region_error.is_some() || r.value == b"new",
                "the old leader served {:?} after its successor took a write",
                String::from_utf8_lossy(&r.value)
            );
        }
    }
    c.heal();
}
