//! Replica repair by the placement driver: a node stops, and once it has been silent for the
//! configured down time every region it held a replica of gets a new replica elsewhere (add a
//! learner, promote it, remove the down peer), with no data lost.

use ringkv_proto::metapb::PeerRole;
use ringkv_tests::cluster::ClusterBuilder;
use ringkv_tests::wait_until;
use std::time::Duration;

fn encoded(user: &[u8]) -> Vec<u8> {
    ringkv_proto::keys::encode(&ringkv_proto::keys::default_keyspace(), user)
}

#[test]
fn a_down_follower_s_replica_is_replaced_after_the_down_time_and_nothing_is_lost() {
    repair_after_stopping(false);
}

#[test]
fn a_down_leader_s_replica_is_replaced_after_the_down_time_and_nothing_is_lost() {
    repair_after_stopping(true);
}

fn repair_after_stopping(leader: bool) {
    let mut cluster = ClusterBuilder {
        nodes: 4,
        replicas: 3,
        max_store_down_time_ms: 2_000,
        ..ClusterBuilder::default()
    }
    .start();
    let client = cluster.client();
    cluster.rt.block_on(async {
        for i in 0..100 {
            client.put(format!("k{i}"), format!("v{i}")).await.unwrap();
        }
    });
    let pd = cluster.pd();
    let route = cluster.rt.block_on(pd.get_region(&encoded(b"k1"))).unwrap();
    let before = route.region;
    let leader_store = route.leader.expect("a leader").store_id;
    let victim = (0..4)
        .find(|&i| {
            let store = cluster.store_id(i);
            before.peers.iter().any(|p| p.store_id == store) && (store == leader_store) == leader
        })
        .expect("a node with a replica");
    let victim_store = cluster.store_id(victim);
    cluster.stop_node(victim);

    let repaired = wait_until(
        "the region to have three healthy voters again",
        Duration::from_secs(60),
        || {
            let r = cluster
                .rt
                .block_on(pd.get_region(&encoded(b"k1")))
                .ok()?
                .region;
            let healthy = r.peers.len() == 3
                && r.peers.iter().all(|p| p.store_id != victim_store)
                && r.peers.iter().all(|p| p.role == PeerRole::Voter as i32);
            healthy.then_some(r)
        },
    );
    assert!(
        repaired.region_epoch.unwrap().conf_ver >= before.region_epoch.unwrap().conf_ver + 3,
        "three membership changes: add learner, promote, remove"
    );
    // Every replica holds the data, and clients read all of it.
    for p in &repaired.peers {
        let node = (0..4).find(|&i| cluster.store_id(i) == p.store_id).unwrap();
        wait_until(
            "the new replica to hold the data",
            Duration::from_secs(20),
            || (cluster.local_get(node, b"k99").as_deref() == Some(&b"v99"[..])).then_some(()),
        );
    }
    cluster.rt.block_on(async {
        for i in 0..100 {
            let v = client.get(format!("k{i}")).await.unwrap();
            assert_eq!(v, Some(format!("v{i}").into_bytes()), "k{i}");
        }
        client.put("after", "repair").await.unwrap();
    });
}

/// Decommissioning a store moves its replicas away (while it stays up), then makes it a
/// tombstone; a second decommission that would leave too few stores is refused.
#[test]
fn a_decommissioned_store_is_emptied_and_becomes_a_tombstone() {
    let cluster = ClusterBuilder {
        nodes: 4,
        replicas: 3,
        ..ClusterBuilder::default()
    }
    .start();
    let client = cluster.client();
    cluster.rt.block_on(async {
        for i in 0..100 {
            client.put(format!("k{i}"), format!("v{i}")).await.unwrap();
        }
    });
    let pd = cluster.pd();
    let route = cluster.rt.block_on(pd.get_region(&encoded(b"k1"))).unwrap();
    let before = route.region;
    // The leader's store: its replica can only go after leadership moves away.
    let leaving = route.leader.expect("a leader").store_id;
    let store = cluster.rt.block_on(pd.decommission_store(leaving)).unwrap();
    assert_eq!(
        store.state,
        ringkv_proto::metapb::StoreState::Offline as i32
    );
    let other = before
        .peers
        .iter()
        .find(|p| p.store_id != leaving)
        .unwrap()
        .store_id;
    let refused = cluster
        .rt
        .block_on(pd.decommission_store(other))
        .unwrap_err();
    assert!(
        refused.to_string().contains("cannot be decommissioned"),
        "{refused}"
    );

    wait_until(
        "the store to be emptied and tombstoned",
        Duration::from_secs(60),
        || {
            let r = cluster
                .rt
                .block_on(pd.get_region(&encoded(b"k1")))
                .ok()?
                .region;
            let s = cluster.rt.block_on(pd.get_store(leaving)).ok()?;
            (r.peers.len() == 3
                && r.peers.iter().all(|p| p.store_id != leaving)
                && s.state == ringkv_proto::metapb::StoreState::Tombstone as i32)
                .then_some(())
        },
    );
    let node = (0..4).find(|&i| cluster.store_id(i) == leaving).unwrap();
    wait_until(
        "its replica to be destroyed",
        Duration::from_secs(20),
        || cluster.local_get(node, b"k1").is_none().then_some(()),
    );
    cluster.rt.block_on(async {
        for i in 0..100 {
            let v = client.get(format!("k{i}")).await.unwrap();
            assert_eq!(v, Some(format!("v{i}").into_bytes()), "k{i}");
        }
    });
}
