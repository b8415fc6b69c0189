//! The hot-region scheduler on an in-process cluster: regions whose leaders report the most
//! read flow are led from one store, and their leadership spreads; regions written hard get a
//! replica moved to a store that carries none of their writes. The other balancers are paused
//! throughout, so only hot-region can be what moves them.

use ringkv_tests::cluster::{ClusterBuilder, TestCluster};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const REGIONS: usize = 6;

fn set(cluster: &TestCluster, key: &str, value: &str) {
    cluster
        .rt
        .block_on(cluster.pd().set_schedule_config(key, value))
        .unwrap_or_else(|e| panic!("{key} = {value}: {e}"));
}

/// Leaders per store over every store.
fn leaders(cluster: &TestCluster) -> BTreeMap<u64, u64> {
    let routes = cluster
        .rt
        .block_on(cluster.pd().scan_regions(b"", b"", 0))
        .expect("regions");
    let mut led: BTreeMap<u64, u64> = cluster.store_ids().into_iter().map(|s| (s, 0)).collect();
    for r in routes {
        if let Some(l) = r.leader {
            *led.entry(l.store_id).or_default() += 1;
        }
    }
    led
}

/// A cluster with only hot-region and the evict-leader scheduler able to move anything, the
/// hot threshold at 4 KiB/s, and the regions [`TestCluster::split_and_fill`] makes.
fn cluster(nodes: usize) -> TestCluster {
    let cluster = ClusterBuilder {
        nodes,
        balance: true,
        ..ClusterBuilder::default()
    }
    .start();
    for (key, value) in [
        ("balance_leader", "false"),
        ("balance_region", "false"),
        ("balance_hot_region", "false"),
        ("hot_region_min_bytes_per_sec", "4096"),
    ] {
        set(&cluster, key, value);
    }
    cluster.split_and_fill(REGIONS);
    cluster
}

/// Runs `load` on its own thread until the returned guard is dropped (at most 3 minutes).
struct Load {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<u64>>,
}

impl Load {
    fn start(cluster: &TestCluster, write: bool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let client = cluster.client();
        let stopping = stop.clone();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            let deadline = std::time::Instant::now() + Duration::from_secs(180);
            let mut rounds = 0;
            while !stopping.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                rt.block_on(async {
                    let keys: Vec<Vec<u8>> = (0..200)
                        .map(|i| format!("key{i:03}").into_bytes())
                        .collect();
                    if write {
                        let pairs = keys.into_iter().map(|k| (k, vec![b'w'; 1024])).collect();
                        client.batch_put(pairs).await.expect("batch put");
                    } else {
                        client.batch_get(keys).await.expect("batch get");
                    }
                });
                rounds += 1;
            }
            rounds
        });
        Load {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let rounds = h.join().expect("the load thread");
            eprintln!("load ran {rounds} rounds");
        }
    }
}

#[test]
fn read_hot_regions_led_from_one_store_have_their_leadership_spread() {
    let cluster = cluster(3);
    let pd = cluster.pd();
    let (first, others) = (
        cluster.store_id(0),
        [cluster.store_id(1), cluster.store_id(2)],
    );
    // Every leader onto the first store.
    for s in others {
        cluster
            .rt
            .block_on(pd.evict_leader(s, true))
            .expect("evict");
    }
    ringkv_tests::wait_until(
        "the first store to lead every region",
        Duration::from_secs(120),
        || (leaders(&cluster)[&first] == REGIONS as u64).then_some(()),
    );
    for s in others {
        cluster
            .rt
            .block_on(pd.evict_leader(s, false))
            .expect("evict removed");
    }
    // Reads on every region; nothing moves while hot-region is off.
    let _load = Load::start(&cluster, false);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        leaders(&cluster)[&first],
        REGIONS as u64,
        "nothing moved yet"
    );
    set(&cluster, "balance_hot_region", "true");
    let spread = ringkv_tests::wait_until(
        "hot-region to spread the read-hot leaders",
        Duration::from_secs(120),
        || {
            let led = leaders(&cluster);
            led.values().all(|n| *n >= 1).then_some(led)
        },
    );
    assert!(spread[&first] < REGIONS as u64, "{spread:?}");
    let store = cluster
        .rt
        .block_on(pd.get_store_with_stats(first))
        .expect("store");
    assert!(
        store.1.is_some_and(|s| s.read_bytes_per_sec > 0),
        "the store reports read flow: {store:?}"
    );
    drop(_load);
    cluster.check_filled();
}

#[test]
fn write_hot_regions_get_a_replica_on_the_store_without_their_writes() {
    let mut cluster = cluster(3);
    // A fourth store joins; balance-region is paused, so it would stay empty.
    let fourth = cluster.add_node();
    let fourth = cluster.store_id(fourth);
    std::thread::sleep(Duration::from_secs(3));
    let holds = |cluster: &TestCluster| {
        cluster
            .rt
            .block_on(cluster.pd().scan_regions(b"", b"", 0))
            .expect("regions")
            .iter()
            .filter(|r| r.region.peers.iter().any(|p| p.store_id == fourth))
            .count()
    };
    assert_eq!(holds(&cluster), 0, "nothing moves to the new store yet");
    let load = Load::start(&cluster, true);
    set(&cluster, "balance_hot_region", "true");
    ringkv_tests::wait_until(
        "a write-hot region to get a replica on the fourth store",
        Duration::from_secs(150),
        || (holds(&cluster) >= 1).then_some(()),
    );
    drop(load);
    // Every region keeps three replicas, and every key reads back.
    ringkv_tests::wait_until("every operator to finish", Duration::from_secs(120), || {
        let ops = cluster.rt.block_on(cluster.pd().get_operators()).ok()?;
        ops.is_empty().then_some(())
    });
    let routes = cluster
        .rt
        .block_on(cluster.pd().scan_regions(b"", b"", 0))
        .expect("regions");
    assert!(
        routes.iter().all(|r| r.region.peers.len() == 3),
        "{routes:?}"
    );
    let client = cluster.client();
    cluster.rt.block_on(async {
        for i in 0..200 {
            let v = client.get(format!("key{i:03}")).await.expect("read");
            assert_eq!(v, Some(vec![b'w'; 1024]), "key{i:03}");
        }
    });
}
