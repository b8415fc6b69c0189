//! Label-aware placement on an in-process cluster: six nodes in three zones (two each). The
//! first region starts on the first three stores to register — two of them in one zone — and
//! the placement driver moves replicas until every region has one replica in each zone; splits,
//! the balancers and a seventh node joining keep it that way.

use ringkv_tests::cluster::{ClusterBuilder, TestCluster};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const ZONES: [&str; 6] = ["z1", "z1", "z2", "z2", "z3", "z3"];
const REGIONS: usize = 8;

/// Zones of each region's replicas, and the operators in flight.
fn placement(
    cluster: &TestCluster,
    zone_of: &BTreeMap<u64, String>,
) -> (Vec<Vec<String>>, Vec<ringkv_proto::pdpb::OperatorInfo>) {
    let pd = cluster.pd();
    let regions = cluster
        .rt
        .block_on(pd.scan_regions(b"", b"", 0))
        .expect("regions");
    let ops = cluster.rt.block_on(pd.get_operators()).unwrap_or_default();
    let zones = regions
        .iter()
        .map(|r| {
            r.region
                .peers
                .iter()
                .map(|p| zone_of.get(&p.store_id).cloned().unwrap_or_default())
                .collect()
        })
        .collect();
    (zones, ops)
}

fn spread_over_zones(zones: &[Vec<String>]) -> bool {
    zones.len() >= REGIONS
        && zones
            .iter()
            .all(|z| z.len() == 3 && z.iter().collect::<BTreeSet<_>>().len() == 3)
}

fn wait_spread(cluster: &TestCluster, zone_of: &BTreeMap<u64, String>, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    loop {
        let (zones, in_flight) = placement(cluster, zone_of);
        if spread_over_zones(&zones) && in_flight.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: zones per region {zones:?}, operators in flight: {in_flight:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn replicas_spread_over_distinct_zones_and_stay_spread_as_regions_split_and_nodes_join() {
    let mut cluster = ClusterBuilder {
        nodes: ZONES.len(),
        balance: true,
        // A step that stalls (a learner slow to catch up on a loaded machine) is planned
        // afresh after a minute rather than after the production ten.
        operator_timeout_ms: 60_000,
        ..ClusterBuilder::default()
    }
    .zones(&ZONES)
    .start();
    let mut zone_of: BTreeMap<u64, String> = (0..ZONES.len())
        .map(|i| (cluster.store_id(i), ZONES[i].to_string()))
        .collect();
    cluster.split_and_fill(REGIONS);
    wait_spread(&cluster, &zone_of, "one replica per zone in every region");

    // A seventh node in z1: the balancers give it replicas, never two in one zone.
    let seventh = cluster.add_node_with_labels(
        [
            ("zone".to_string(), "z1".to_string()),
            ("host".to_string(), "h6".to_string()),
        ]
        .into_iter()
        .collect(),
    );
    zone_of.insert(cluster.store_id(seventh), "z1".into());
    ringkv_tests::wait_until(
        "the seventh node to get replicas",
        Duration::from_secs(240),
        || {
            let regions = cluster
                .rt
                .block_on(cluster.pd().scan_regions(b"", b"", 0))
                .ok()?;
            regions
                .iter()
                .any(|r| {
                    r.region
                        .peers
                        .iter()
                        .any(|p| p.store_id == cluster.store_id(seventh))
                })
                .then_some(())
        },
    );
    wait_spread(
        &cluster,
        &zone_of,
        "every region still spread over the zones",
    );
    cluster.check_filled();
}
