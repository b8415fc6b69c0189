//! The real binaries as separate processes, with regions small enough that a modest load splits
//! them more than fifty times: `kill -9` one node in the middle of the splits, restart it, and
//! check that every acknowledged key is readable, that the placement driver's regions tile the
//! keyspace, and that every node ends up holding exactly those regions, never two overlapping.
//! Then a bulk delete and merges of twenty region pairs, with the same node killed -9 during
//! the merges, bring the region count back down.

use ringkv_client::PdClient;
use ringkv_proto::metapb::Region;
use ringkv_tests::process::ProcessCluster;
use ringkv_tests::regions::{node_regions_disjoint, pd_regions, tiling_error};
use ringkv_tests::wait_until;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const KEYS: usize = 6_000;
const WRITERS: usize = 8;
const BATCH: usize = 20;
const SPLITS_MIN: usize = 50;

const NODE_TOML: &str = r#"
store_heartbeat_ms = 500

[raft]
tick_interval_ms = 50

[split]
region_split_size_bytes = 8192
split_check_diff_bytes = 2048
split_check_ticks = 2
"#;

fn key(i: usize) -> Vec<u8> {
    format!("split-{i:06}").into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    format!("{i}-{}", "v".repeat(200)).into_bytes()
}

/// The regions the placement driver routes to, without their leaders.
fn routed_regions(rt: &tokio::runtime::Runtime, pd: &PdClient) -> Vec<Region> {
    rt.block_on(pd_regions(pd))
        .into_iter()
        .map(|(r, _)| r)
        .collect()
}

#[test]
fn fifty_splits_with_a_node_killed_lose_nothing_and_tile_the_keyspace() {
    let mut cluster = ProcessCluster::start_with_config(3, NODE_TOML);
    let (rt, client) = cluster.client();
    let pd = rt
        .block_on(PdClient::connect(&[cluster.pd_addr.clone()]))
        .unwrap();

    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (client, next, acked) = (client.clone(), next.clone(), acked.clone());
            rt.spawn(async move {
                loop {
                    let first = next.fetch_add(BATCH, Ordering::SeqCst);
                    if first >= KEYS {
                        return;
                    }
                    let batch: Vec<_> =
                        (first..first + BATCH).map(|i| (key(i), value(i))).collect();
                    // A batch that fails has an unknown outcome; retrying is safe (puts are
                    // idempotent) and only an Ok counts as acknowledged.
                    for _attempt in 0..5 {
                        if client.batch_put(batch.clone()).await.is_ok() {
                            acked.lock().extend(first..first + BATCH);
                            break;
                        }
                    }
                }
            })
        })
        .collect();

    let victim = 1;
    wait_until(
        "a third of the keys written",
        Duration::from_secs(120),
        || (next.load(Ordering::SeqCst) >= KEYS / 3).then_some(()),
    );
    let regions_at_kill = rt.block_on(pd_regions(&pd)).len();
    cluster.kill_node(victim);
    wait_until(
        "two thirds of the keys written",
        Duration::from_secs(120),
        || (next.load(Ordering::SeqCst) >= 2 * KEYS / 3).then_some(()),
    );
    cluster.restart_node(victim);
    for w in writers {
        rt.block_on(w).unwrap();
    }
    let acked = acked.lock().clone();
    assert!(
        acked.len() >= KEYS * 9 / 10,
        "only {} of {KEYS} writes were acknowledged",
        acked.len()
    );

    // Splits continue until no region is over the threshold; wait for the count to settle.
    let regions: Vec<Region> = wait_until(
        "the regions to tile the keyspace with at least fifty splits",
        Duration::from_secs(120),
        || {
            let regions = routed_regions(&rt, &pd);
            (regions.len() > SPLITS_MIN && tiling_error(&regions).is_none()).then_some(regions)
        },
    );
    println!(
        "{} regions at the kill, {} at the end",
        regions_at_kill,
        regions.len()
    );

    for chunk in acked.chunks(500) {
        let keys: Vec<Vec<u8>> = chunk.iter().map(|i| key(*i)).collect();
        let got = rt.block_on(client.batch_get(keys)).unwrap();
        let mut got: Vec<Vec<u8>> = got.into_iter().map(|(k, _)| k).collect();
        got.sort();
        let mut want: Vec<Vec<u8>> = chunk.iter().map(|i| key(*i)).collect();
        want.sort();
        assert_eq!(got, want, "acknowledged keys are missing");
    }
    let scanned = rt
        .block_on(client.scan("split-", "split.", 10_240))
        .unwrap();
    let distinct: std::collections::BTreeSet<_> = scanned.iter().map(|(k, _)| k).collect();
    assert_eq!(distinct.len(), scanned.len(), "a key is returned twice");
    assert!(scanned.len() >= acked.len());

    // Every node, the restarted one included, converges on exactly the routed regions.
    wait_until(
        "every node to hold exactly the routed regions",
        Duration::from_secs(120),
        || {
            let mut want = routed_regions(&rt, &pd);
            want.sort_by_key(|r| r.id);
            for i in 0..cluster.node_count() {
                let mut have = rt.block_on(node_regions_disjoint(cluster.node_addr(i)))?;
                have.sort_by_key(|r| r.id);
                if have != want {
                    return None;
                }
            }
            Some(())
        },
    );
    assert!(
        !cluster.log_tail(victim).contains("panicked"),
        "restarted node panicked:\n{}",
        cluster.log_tail(victim)
    );

    // A bulk delete leaves the regions empty; merging pairs of them (a node killed -9 in the
    // middle, so its replicas hold the merges up until it is back) brings the count down.
    rt.block_on(client.delete_range("split-", "split."))
        .unwrap();
    // The routing as it stands now: nothing splits once the data is gone.
    let regions = routed_regions(&rt, &pd);
    let before = regions.len();
    let pairs: Vec<(u64, u64)> = regions
        .chunks(2)
        .filter_map(|p| match p {
            [target, source] => Some((source.id, target.id)),
            _ => None,
        })
        .take(20)
        .collect();
    for (k, (source, target)) in pairs.iter().enumerate() {
        if k == pairs.len() / 2 {
            cluster.kill_node(victim);
            std::thread::sleep(Duration::from_secs(1));
            cluster.restart_node(victim);
        }
        rt.block_on(client.merge_region(*source, *target))
            .unwrap_or_else(|e| panic!("merge of region {source} into {target}: {e}"));
    }
    let merged: Vec<Region> = wait_until(
        "every merged source to leave the routing",
        Duration::from_secs(120),
        || {
            let regions = routed_regions(&rt, &pd);
            let left: Vec<u64> = pairs
                .iter()
                .map(|(source, _)| *source)
                .filter(|source| regions.iter().any(|r| r.id == *source))
                .collect();
            if !left.is_empty() {
                println!("sources still routed: {left:?}");
            }
            (left.is_empty() && tiling_error(&regions).is_none()).then_some(regions)
        },
    );
    assert_eq!(
        merged.len(),
        before - pairs.len(),
        "each merge removes one region"
    );
    println!("{before} regions before the merges, {} after", merged.len());
    assert!(rt
        .block_on(client.scan("split-", "split.", 100))
        .unwrap()
        .is_empty());
    rt.block_on(client.put(key(1), value(1))).unwrap();
    assert_eq!(rt.block_on(client.get(key(1))).unwrap(), Some(value(1)));
    wait_until(
        "every node to hold exactly the merged regions",
        Duration::from_secs(120),
        || {
            for i in 0..cluster.node_count() {
                let have = rt.block_on(node_regions_disjoint(cluster.node_addr(i)))?;
                if have.len() != merged.len() {
                    return None;
                }
            }
            Some(())
        },
    );
}
