//! Balancing and decommissioning with real processes: three `ringkv-node`s hold twelve
//! regions; a 4th and then a 5th node join and replicas and leaders move until every store is
//! within the balancers' tolerance (at most two regions, and two leaders, between the busiest
//! and the idlest store); then one node is decommissioned, empties and becomes a tombstone;
//! then the remaining four are given zones at runtime (z1, z2, z3, z3) and every region's
//! replicas move into three distinct zones. Every key written reads back after each phase.

use ringkv_client::PdClient;
use ringkv_proto::metapb::StoreState;
use ringkv_tests::process::{ProcessCluster, FAST_NODE_TOML};
use ringkv_tests::{debug, wait_until};
use std::collections::BTreeMap;
use std::time::Duration;

const PLACEMENT_TOML: &str = "schedule_interval_ms = 200\nregion_schedule_limit = 8\n";

const REGIONS: usize = 12;
const TOLERANCE: u64 = 2;
const KEYS: usize = 300;

/// Replicas and leaders per live store, with the operators in flight.
fn counts(
    rt: &tokio::runtime::Runtime,
    pd: &PdClient,
) -> (BTreeMap<u64, u64>, BTreeMap<u64, u64>, usize) {
    let stores = rt.block_on(pd.get_all_stores()).expect("stores");
    let mut replicas: BTreeMap<u64, u64> = stores
        .iter()
        .filter(|s| s.state == StoreState::Up as i32)
        .map(|s| (s.id, 0))
        .collect();
    let mut leaders = replicas.clone();
    for r in rt.block_on(pd.scan_regions(b"", b"", 0)).expect("regions") {
        for p in &r.region.peers {
            *replicas.entry(p.store_id).or_default() += 1;
        }
        if let Some(l) = r.leader {
            *leaders.entry(l.store_id).or_default() += 1;
        }
    }
    let ops = rt
        .block_on(pd.get_operators())
        .map_or(usize::MAX, |o| o.len());
    (replicas, leaders, ops)
}

fn spread(m: &BTreeMap<u64, u64>) -> u64 {
    m.values().max().unwrap_or(&0) - m.values().min().unwrap_or(&0)
}

fn wait_balanced(rt: &tokio::runtime::Runtime, pd: &PdClient, stores: usize, what: &str) {
    wait_until(what, Duration::from_secs(240), || {
        let (replicas, leaders, ops) = counts(rt, pd);
        (replicas.len() == stores
            && ops == 0
            && replicas.values().sum::<u64>() == 3 * REGIONS as u64
            && leaders.values().sum::<u64>() == REGIONS as u64
            && spread(&replicas) <= TOLERANCE
            && spread(&leaders) <= TOLERANCE)
            .then_some(())
    });
}

fn check_keys(rt: &tokio::runtime::Runtime, client: &ringkv_client::RawClient) {
    rt.block_on(async {
        for i in 0..KEYS {
            let v = client.get(format!("key{i:04}")).await.expect("read");
            assert_eq!(v, Some(format!("value{i}").into_bytes()), "key{i:04}");
        }
    });
}

#[test]
fn joining_nodes_get_their_share_and_a_decommissioned_node_empties() {
    let mut cluster = ProcessCluster::start_with_configs(3, FAST_NODE_TOML, PLACEMENT_TOML);
    let (rt, client) = cluster.client();
    let pd = client.pd().clone();
    rt.block_on(async {
        for i in 1..REGIONS {
            let at = format!("split{i:02}");
            client
                .split_region(ringkv_proto::keys::encode(
                    &ringkv_proto::keys::default_keyspace(),
                    at.as_bytes(),
                ))
                .await
                .expect("split");
        }
        for i in 0..KEYS {
            client
                .put(format!("key{i:04}"), format!("value{i}"))
                .await
                .expect("put");
        }
    });
    wait_balanced(&rt, &pd, 3, "leaders spread over the first three nodes");

    for stores in [4, 5] {
        let node = cluster.add_node();
        let store = wait_until("the new node to register", Duration::from_secs(60), || {
            rt.block_on(debug::store_id(cluster.node_addr(node)))
        });
        wait_balanced(&rt, &pd, stores, &format!("node {node} to get its share"));
        let (replicas, leaders, _) = counts(&rt, &pd);
        eprintln!("{stores} stores: replicas {replicas:?}, leaders {leaders:?}");
        assert!(replicas[&store] >= 5, "{replicas:?}");
        assert!(leaders[&store] >= 1, "{leaders:?}");
        check_keys(&rt, &client);
    }

    let leaving = rt
        .block_on(debug::store_id(cluster.node_addr(0)))
        .expect("node 0 answers");
    rt.block_on(pd.decommission_store(leaving))
        .expect("decommission starts");
    wait_until(
        "the decommissioned store to empty and become a tombstone",
        Duration::from_secs(240),
        || {
            let store = rt.block_on(pd.get_store(leaving)).ok()?;
            let holds = rt
                .block_on(pd.scan_regions(b"", b"", 0))
                .ok()?
                .iter()
                .filter(|r| r.region.peers.iter().any(|p| p.store_id == leaving))
                .count();
            (holds == 0 && store.state == StoreState::Tombstone as i32).then_some(())
        },
    );
    wait_balanced(&rt, &pd, 4, "the four remaining stores to balance");
    check_keys(&rt, &client);

    // Zones, set at runtime: a region's three replicas end up in three distinct zones.
    let mut up: Vec<u64> = rt
        .block_on(pd.get_all_stores())
        .expect("stores")
        .iter()
        .filter(|s| s.state == StoreState::Up as i32)
        .map(|s| s.id)
        .collect();
    up.sort_unstable();
    let zones: BTreeMap<u64, &str> = up.iter().copied().zip(["z1", "z2", "z3", "z3"]).collect();
    for (store, zone) in &zones {
        let labels = [("zone".to_string(), zone.to_string())]
            .into_iter()
            .collect();
        rt.block_on(pd.set_store_labels(*store, labels))
            .expect("labels set");
    }
    wait_until(
        "every region's replicas to be in three distinct zones",
        Duration::from_secs(240),
        || {
            let (_, _, ops) = counts(&rt, &pd);
            let routes = rt.block_on(pd.scan_regions(b"", b"", 0)).ok()?;
            let spread = routes.iter().all(|r| {
                let mut z: Vec<&str> = r.region.peers.iter().map(|p| zones[&p.store_id]).collect();
                z.sort_unstable();
                z.dedup();
                z.len() == 3 && r.region.peers.len() == 3
            });
            (ops == 0 && spread).then_some(())
        },
    );
    check_keys(&rt, &client);
}
