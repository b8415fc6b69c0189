//! Raft membership changes of a region on an in-process cluster of four nodes: a learner is
//! added on the store without a replica and catches up (by snapshot), is promoted to voter,
//! a follower is removed and its replica destroyed, writes go on throughout; and the changes a
//! region refuses (removing its leader, a second replica on one store, a stale epoch).

use ringkv_proto::errorpb::region_error::Kind;
use ringkv_proto::kvrpcpb::{ChangePeerRegionRequest, Context};
use ringkv_proto::metapb::{ConfChangeKind, Peer, PeerRole, Region};
use ringkv_proto::pdpb::AddOperatorRequest;
use ringkv_tests::cluster::{ClusterBuilder, TestCluster};
use ringkv_tests::{debug, wait_until};
use std::time::Duration;

fn encoded(user: &[u8]) -> Vec<u8> {
    ringkv_proto::keys::encode(&ringkv_proto::keys::default_keyspace(), user)
}

/// Sends a membership change to the region's leader (found through the placement driver),
/// retrying until a leader answers; returns the answer.
fn change(
    cluster: &TestCluster,
    kind: ConfChangeKind,
    peer: Peer,
) -> ringkv_proto::kvrpcpb::ChangePeerRegionResponse {
    let pd = cluster.pd();
    wait_until(
        "a leader to take the change",
        Duration::from_secs(20),
        || {
            cluster.rt.block_on(async {
                let route = pd.get_region(&encoded(b"k")).await.ok()?;
                let leader = route.leader?;
                let store = pd.get_store(leader.store_id).await.ok()?;
                let mut kv = debug::kv_client(&store.address).await;
                let r = kv
                    .change_peer(ChangePeerRegionRequest {
                        context: Some(Context {
                            region_id: route.region.id,
                            region_epoch: route.region.region_epoch,
                            replica_read: false,
                            stale_read: false,
                            ..Default::default()
                        }),
                        kind: kind as i32,
                        peer: Some(peer),
                    })
                    .await
                    .ok()?
                    .into_inner();
                match r.region_error.as_ref().and_then(|e| e.kind.as_ref()) {
                    Some(Kind::NotLeader(_) | Kind::EpochNotMatch(_) | Kind::RegionNotFound(_)) => {
                        None
                    }
                    _ => Some(r),
                }
            })
        },
    )
}

fn region(cluster: &TestCluster) -> Region {
    let pd = cluster.pd();
    cluster
        .rt
        .block_on(pd.get_region(&encoded(b"k")))
        .expect("routed")
        .region
}

#[test]
fn a_learner_catches_up_is_promoted_and_a_removed_follower_is_destroyed() {
    let cluster = ClusterBuilder {
        nodes: 4,
        replicas: 3,
        ..ClusterBuilder::default()
    }
    .start();
    let client = cluster.client();
    cluster.rt.block_on(async {
        for i in 0..50 {
            client.put(format!("k{i}"), format!("v{i}")).await.unwrap();
        }
    });
    let before = region(&cluster);
    let outsider = (0..4)
        .find(|&i| {
            !before
                .peers
                .iter()
                .any(|p| p.store_id == cluster.store_id(i))
        })
        .expect("one store has no replica");
    let peer_id = cluster.rt.block_on(cluster.pd().alloc_ids(1)).unwrap();
    let learner = Peer {
        id: peer_id,
        store_id: cluster.store_id(outsider),
        role: PeerRole::Learner as i32,
    };

    let r = change(&cluster, ConfChangeKind::AddLearner, learner);
    assert!(r.region_error.is_none(), "{:?}", r.region_error);
    let after = r.region.expect("the region after the change");
    assert_eq!(
        after.region_epoch.unwrap().conf_ver,
        before.region_epoch.unwrap().conf_ver + 1
    );
    assert!(after
        .peers
        .iter()
        .any(|p| p.id == peer_id && p.role == PeerRole::Learner as i32));
    cluster.wait_replicated(b"k49", b"v49", Duration::from_secs(30));

    let r = change(&cluster, ConfChangeKind::AddVoter, learner);
    assert!(r.region_error.is_none(), "{:?}", r.region_error);
    let promoted = r.region.unwrap();
    assert!(promoted
        .peers
        .iter()
        .any(|p| p.id == peer_id && p.role == PeerRole::Voter as i32));

    // Remove a follower that is not the new voter.
    let route_leader = cluster
        .rt
        .block_on(cluster.pd().get_region(&encoded(b"k")))
        .unwrap()
        .leader
        .expect("a leader");
    let victim = *promoted
        .peers
        .iter()
        .find(|p| p.id != route_leader.id && p.id != peer_id)
        .expect("a follower to remove");
    let victim_node = (0..4)
        .find(|&i| cluster.store_id(i) == victim.store_id)
        .unwrap();
    let r = change(&cluster, ConfChangeKind::Remove, victim);
    assert!(r.region_error.is_none(), "{:?}", r.region_error);
    let region_id = promoted.id;
    wait_until(
        "the removed replica to be destroyed",
        Duration::from_secs(20),
        || {
            cluster
                .region_info(victim_node, region_id)
                .is_none()
                .then_some(())
        },
    );
    assert_eq!(
        cluster.local_get(victim_node, b"k1"),
        None,
        "its data went with it"
    );

    // Writes go on, and reach the new voter.
    cluster.rt.block_on(async {
        client.put("after", "change").await.unwrap();
    });
    wait_until("the new voter to apply", Duration::from_secs(20), || {
        (cluster.local_get(outsider, b"after").as_deref() == Some(&b"change"[..])).then_some(())
    });
}

#[test]
fn a_region_refuses_changes_it_cannot_make() {
    let cluster = ClusterBuilder {
        nodes: 4,
        replicas: 3,
        ..ClusterBuilder::default()
    }
    .start();
    let before = region(&cluster);
    let leader = cluster
        .rt
        .block_on(cluster.pd().get_region(&encoded(b"k")))
        .unwrap()
        .leader
        .expect("a leader");
    let r = change(&cluster, ConfChangeKind::Remove, leader);
    let e = r.region_error.expect("refused");
    assert!(
        e.message.contains("transfer leadership first"),
        "{}",
        e.message
    );

    let member = before.peers[0];
    let twin = Peer {
        id: cluster.rt.block_on(cluster.pd().alloc_ids(1)).unwrap(),
        store_id: member.store_id,
        role: PeerRole::Learner as i32,
    };
    let r = change(&cluster, ConfChangeKind::AddLearner, twin);
    let e = r.region_error.expect("refused");
    assert!(e.message.contains("already holds peer"), "{}", e.message);

    let stranger = Peer {
        id: 999_999,
        store_id: member.store_id,
        role: 0,
    };
    let r = change(&cluster, ConfChangeKind::Remove, stranger);
    assert!(r
        .region_error
        .is_some_and(|e| e.message.contains("not a member")));
    assert_eq!(
        region(&cluster).region_epoch,
        before.region_epoch,
        "nothing changed"
    );
}

/// The keys the move-away-and-back test writes.
/// The region holding `k`, with a follower's store and a store that holds no replica of it.
fn roles(
    cluster: &TestCluster,
    pd: &ringkv_client::PdClient,
) -> (ringkv_client::RegionRoute, u64, u64) {
    let route = cluster
        .rt
        .block_on(pd.get_region(&encoded(b"k")))
        .expect("routed");
    let leader = route.leader.expect("a leader").store_id;
    let follower = route
        .region
        .peers
        .iter()
        .find(|p| p.store_id != leader)
        .expect("a follower")
        .store_id;
    let outsider = cluster
        .store_ids()
        .into_iter()
        .find(|s| !route.region.peers.iter().any(|p| p.store_id == *s))
        .expect("a store without a replica");
    (route, follower, outsider)
}

fn moved_and_back_keys() -> Vec<String> {
    (0..50).map(|i| format!("back{i:02}")).collect()
}

#[test]
fn a_replica_moved_away_and_back_returns_over_its_tombstone() {
    let cluster = ClusterBuilder {
        nodes: 4,
        ..ClusterBuilder::default()
    }
    .start();
    let client = cluster.client();
    cluster.rt.block_on(async {
        for k in moved_and_back_keys() {
            client.put(k.clone(), format!("v-{k}")).await.unwrap();
        }
    });
    let pd = cluster.pd();
    let (route, follower, outsider) = roles(&cluster, &pd);
    let moved = |from: u64, to: u64| {
        cluster
            .rt
            .block_on(pd.add_operator(AddOperatorRequest {
                region_id: route.region.id,
                kind: "move-peer".into(),
                from_store: from,
                to_store: to,
                ..Default::default()
            }))
            .expect("operator added");
        wait_until(
            &format!("the replica to move from store {from} to store {to}"),
            Duration::from_secs(60),
            || {
                let r = region(&cluster);
                let ops = cluster.rt.block_on(pd.get_operators()).ok()?;
                (ops.is_empty()
                    && r.peers.iter().any(|p| p.store_id == to)
                    && !r.peers.iter().any(|p| p.store_id == from))
                .then_some(())
            },
        );
    };
    moved(follower, outsider);
    // Back to the store that holds the region's tombstone now: a new peer replaces it.
    moved(outsider, follower);
    let i = cluster
        .store_ids()
        .iter()
        .position(|s| *s == follower)
        .expect("a node");
    for k in moved_and_back_keys() {
        let key = encoded(k.as_bytes());
        let value = wait_until(
            "the returned replica to hold the data",
            Duration::from_secs(30),
            || {
                cluster
                    .rt
                    .block_on(debug::local_get(&cluster.node_addr(i), &key))
                    .flatten()
            },
        );
        assert_eq!(value, format!("v-{k}").into_bytes());
    }
}

/// Whether node `i` holds a replica of `region_id`, and whether it is quiet there.
fn local_replica(cluster: &TestCluster, i: usize, region_id: u64) -> Option<bool> {
    cluster
        .rt
        .block_on(debug::regions(&cluster.node_addr(i)))
        .expect("the node answers")
        .into_iter()
        .find(|r| r.found && r.region.as_ref().is_some_and(|g| g.id == region_id))
        .map(|r| r.quiet)
}

/// A follower's replica is cut off (quiet or not, as `quiet` asks), moved to the fourth store
/// meanwhile, and must be destroyed by the node on its own, data and all.
fn removed_while_cut_off(quiet: bool) {
    let cluster = ClusterBuilder {
        nodes: 4,
        ..ClusterBuilder::default()
    }
    .start();
    let client = cluster.client();
    let keys: Vec<String> = (0..20).map(|i| format!("cut{i:02}")).collect();
    cluster.rt.block_on(async {
        for k in &keys {
            client.put(k.clone(), b"v".to_vec()).await.unwrap();
        }
    });
    let pd = cluster.pd();
    let (route, follower, outsider) = roles(&cluster, &pd);
    let i = cluster
        .store_ids()
        .iter()
        .position(|s| *s == follower)
        .expect("a node");
    if quiet {
        wait_until(
            "the follower's replica to go quiet",
            Duration::from_secs(30),
            || (local_replica(&cluster, i, route.region.id) == Some(true)).then_some(()),
        );
    } else {
        // A write wakes the region; the follower is cut off before it can go quiet again
        // (its leader cannot go quiet without the follower's acknowledgement).
        cluster
            .rt
            .block_on(client.put("cut00", b"v".to_vec()))
            .unwrap();
    }
    cluster.isolate(i);
    cluster
        .rt
        .block_on(pd.add_operator(AddOperatorRequest {
            region_id: route.region.id,
            kind: "move-peer".into(),
            from_store: follower,
            to_store: outsider,
            ..Default::default()
        }))
        .expect("operator added");
    wait_until(
        "the replica to move to the fourth store without the cut-off one",
        Duration::from_secs(60),
        || {
            let r = region(&cluster);
            (r.peers.iter().any(|p| p.store_id == outsider)
                && !r.peers.iter().any(|p| p.store_id == follower))
            .then_some(())
        },
    );
    // Still cut off from its peers, the node learns from the placement driver that its
    // replica was removed, and destroys it with its data.
    wait_until(
        "the cut-off node to destroy its removed replica",
        Duration::from_secs(60),
        || {
            local_replica(&cluster, i, route.region.id)
                .is_none()
                .then_some(())
        },
    );
    for k in &keys {
        let local = cluster
            .rt
            .block_on(debug::local_get(
                &cluster.node_addr(i),
                &encoded(k.as_bytes()),
            ))
            .expect("the node answers");
        assert_eq!(local, None, "{k} is gone from the destroyed replica");
    }
    cluster.heal();
    cluster.rt.block_on(async {
        for k in &keys {
            assert_eq!(client.get(k.clone()).await.unwrap(), Some(b"v".to_vec()));
        }
    });
}

#[test]
fn a_quiet_replica_removed_while_cut_off_is_destroyed_by_its_node() {
    removed_while_cut_off(true);
}

#[test]
fn a_leaderless_replica_removed_while_cut_off_is_destroyed_by_its_node() {
    removed_while_cut_off(false);
}
