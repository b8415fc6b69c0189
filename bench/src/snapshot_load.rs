//! `ringkv-bench snapshots`: the memory of nodes while many large regions are rebuilt from
//! snapshots at once, under scans.
//!
//! Four nodes (three replicas per region) hold `regions` regions of `region_mib` MiB and one of
//! `big_region_mib` MiB, in an ordered keyspace of their own. The node holding the most
//! replicas is killed (`kill -9`); once the placement driver declares it down, every region it
//! held gets a new replica on another node, each built from a snapshot — all at once, beside
//! `scanners` clients scanning the whole keyspace. The resident memory (RSS) of every live node
//! is sampled every 100 ms from the kill until every region has three replicas again.

use crate::LocalCluster;
use ringkv_client::{RawClient, RawConfig};
use ringkv_proto::keys;
use ringkv_proto::kvrpcpb::KeyspaceMode;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to move; see the module comment.
#[derive(Debug, Clone)]
pub struct SnapshotLoad {
    pub regions: usize,
    pub region_mib: u64,
    pub big_region_mib: u64,
    pub value_kib: usize,
    pub scanners: usize,
    /// How long the rebuild may take before the run fails.
    pub rebuild_limit: Duration,
}

#[derive(Debug, Serialize)]
pub struct SnapshotLoadReport {
    pub data_mib: u64,
    /// Regions that had a replica on the killed node and were rebuilt elsewhere.
    pub rebuilt_regions: usize,
    /// From the kill until every region has three live replicas again (the placement
    /// driver's down detection included).
    pub rebuild_seconds: f64,
    /// Per live node: RSS just before the kill, and the largest sampled afterwards, in MiB.
    pub rss_before_mib: Vec<u64>,
    pub rss_peak_mib: Vec<u64>,
    /// Full scans of the keyspace finished during the rebuild, and pairs they read.
    pub scans: u64,
    pub scanned_pairs: u64,
}

/// Nodes never split here (the regions are the sizes asked for); the placement driver declares
/// a silent store down after 5 s and does not balance, so every move is a repair.
const NODE_TOML: &str = r#"
[split]
region_split_size_bytes = 17179869184
region_split_keys = 100000000
"#;
const PLACEMENT_TOML: &str = r#"
max_store_down_time_ms = 5000
balance_region = false
"#;
const KEYSPACE: &str = "bench-snapshots";

fn region_prefix(r: usize) -> String {
    format!("r{r:02}/")
}
const BIG_PREFIX: &str = "zz/";

pub async fn run(load: &SnapshotLoad) -> Result<SnapshotLoadReport, String> {
    if load.regions == 0 && load.big_region_mib == 0 {
        return Err("nothing to move: --regions and --big-region-mib are both 0".into());
    }
    if load.value_kib == 0 || load.value_kib > 4096 {
        return Err("--value-kib must be in 1..=4096".into());
    }
    eprintln!("== starting placement and 4 nodes");
    let cluster = LocalCluster::start_with(4, NODE_TOML, Some(PLACEMENT_TOML))?;
    let ready = cluster.client(Duration::from_secs(60)).await?;
    let pd = ready.pd().clone();
    if let Err(e) = pd.create_keyspace(KEYSPACE, KeyspaceMode::Range).await {
        return Err(format!("cannot create keyspace {KEYSPACE}: {e}"));
    }
    let client = RawClient::connect_keyspace(
        std::slice::from_ref(&cluster.pd_addr),
        KEYSPACE,
        RawConfig {
            timeout: Duration::from_secs(60),
            ..RawConfig::default()
        },
    )
    .await
    .map_err(|e| format!("cannot connect to keyspace {KEYSPACE}: {e}"))?;
    let keyspace = client.keyspace();

    // One region per prefix.
    let mut parts: Vec<(String, u64)> = (0..load.regions)
        .map(|r| (region_prefix(r), load.region_mib))
        .collect();
    if load.big_region_mib > 0 {
        parts.push((BIG_PREFIX.into(), load.big_region_mib));
    }
    for (prefix, _) in parts.iter().skip(1) {
        client
            .split_region(keys::encode(&keyspace, prefix.as_bytes()))
            .await
            .map_err(|e| format!("cannot split at {prefix}: {e}"))?;
    }
    let data_mib: u64 = parts.iter().map(|(_, mib)| mib).sum();
    eprintln!("== loading {data_mib} MiB in {} regions", parts.len());
    fill(&client, &parts, load.value_kib).await?;

    // The node with the most replicas of the keyspace's regions goes.
    let (start, end) = (
        keys::keyspace_prefix(&keyspace),
        keys::keyspace_end(&keyspace),
    );
    let routes = pd
        .scan_regions(&start, &end, 1024)
        .await
        .map_err(|e| format!("cannot list regions: {e}"))?;
    let stores = pd
        .get_all_stores()
        .await
        .map_err(|e| format!("cannot list stores: {e}"))?;
    let store_of_node: Vec<u64> = cluster
        .node_addrs
        .iter()
        .map(|a| {
            stores
                .iter()
                .find(|s| &s.address == a)
                .map(|s| s.id)
                .ok_or(format!("no store has address {a}"))
        })
        .collect::<Result<_, _>>()?;
    let mut replicas: HashMap<u64, usize> = HashMap::new();
    for route in &routes {
        for p in &route.region.peers {
            *replicas.entry(p.store_id).or_default() += 1;
        }
    }
    let victim = (0..store_of_node.len())
        .max_by_key(|&n| replicas.get(&store_of_node[n]).copied().unwrap_or(0))
        .expect("four nodes");
    let victim_store = store_of_node[victim];
    let rebuilt_regions = routes
        .iter()
        .filter(|r| r.region.peers.iter().any(|p| p.store_id == victim_store))
        .count();
    let live: Vec<u32> = cluster
        .node_pids()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, pid)| pid)
        .collect();
    let rss_before_mib: Vec<u64> = live.iter().map(|p| rss_mib(*p)).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (live, stop) = (live.clone(), stop.clone());
        tokio::spawn(async move {
            let mut peak = vec![0u64; live.len()];
            while !stop.load(Ordering::SeqCst) {
                for (i, pid) in live.iter().enumerate() {
                    peak[i] = peak[i].max(rss_mib(*pid));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    };
    let (scans, scanned) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let scanners: Vec<_> = (0..load.scanners)
        .map(|_| {
            let (client, stop) = (client.clone(), stop.clone());
            let (scans, scanned) = (scans.clone(), scanned.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(n) = scan_all(&client, &stop).await {
                        scans.fetch_add(1, Ordering::Relaxed);
                        scanned.fetch_add(n, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    eprintln!(
        "== killing node {victim} (store {victim_store}, {rebuilt_regions} of {} regions); \
         waiting for every region to have 3 live replicas",
        routes.len()
    );
    let mut cluster = cluster;
    let _ = cluster.nodes[victim].kill();
    let _ = cluster.nodes[victim].wait();
    let killed_at = Instant::now();
    let outcome = wait_rebuilt(&pd, &start, &end, victim_store, load.rebuild_limit).await;
    let rebuild_seconds = killed_at.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    for s in scanners {
        let _ = s.await;
    }
    let rss_peak_mib = sampler.await.map_err(|e| e.to_string())?;
    outcome?;
    Ok(SnapshotLoadReport {
        data_mib,
        rebuilt_regions,
        rebuild_seconds,
        rss_before_mib,
        rss_peak_mib,
        scans: scans.load(Ordering::Relaxed),
        scanned_pairs: scanned.load(Ordering::Relaxed),
    })
}

/// Writes each part's MiB under its prefix, 8 writers, a progress line per tenth.
async fn fill(client: &RawClient, parts: &[(String, u64)], value_kib: usize) -> Result<(), String> {
    let per_mib = (1024 / value_kib).max(1) as u64;
    let jobs: Vec<(String, u64)> = parts
        .iter()
        .flat_map(|(prefix, mib)| (0..mib * per_mib).map(move |i| (prefix.clone(), i)))
        .collect();
    let total = jobs.len() as u64;
    let jobs = Arc::new(parking_lot::Mutex::new(jobs.into_iter()));
    let done = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (client, jobs, done) = (client.clone(), jobs.clone(), done.clone());
            tokio::spawn(async move {
                let value = vec![w as u8; value_kib * 1024];
                loop {
                    let Some((prefix, i)) = jobs.lock().next() else {
                        return Ok::<(), String>(());
                    };
                    let key = format!("{prefix}{i:08}").into_bytes();
                    client
                        .put(key, value.clone())
                        .await
                        .map_err(|e| format!("load failed: {e}"))?;
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if n % (total / 10).max(1) == 0 {
                        eprintln!("   {}%", n * 100 / total);
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// One scan of the whole keyspace in pages of 16 pairs; the number of pairs read.
async fn scan_all(client: &RawClient, stop: &AtomicBool) -> Result<u64, String> {
    let mut from = Vec::new();
    let mut pairs = 0;
    while !stop.load(Ordering::SeqCst) {
        let page = client
            .scan(from.clone(), Vec::new(), 16)
            .await
            .map_err(|e| e.to_string())?;
        pairs += page.len() as u64;
        match page.last() {
            Some((k, _)) if page.len() == 16 => {
                from = k.clone();
                from.push(0);
            }
            _ => break,
        }
    }
    Ok(pairs)
}

/// Waits until every region of `[start, end)` has three peers, none on `victim_store`, and no
/// pending peer.
async fn wait_rebuilt(
    pd: &ringkv_client::PdClient,
    start: &[u8],
    end: &[u8],
    victim_store: u64,
    limit: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let mut last_report = Instant::now();
    loop {
        let routes = pd
            .scan_regions(start, end, 1024)
            .await
            .map_err(|e| e.to_string())?;
        let waiting = routes
            .iter()
            .filter(|r| {
                r.region.peers.len() != 3
                    || r.region.peers.iter().any(|p| p.store_id == victim_store)
                    || r.health.as_ref().is_none_or(|h| h.pending_peers > 0)
            })
            .count();
        if waiting == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{waiting} regions still lack a live replica after {limit:?}"
            ));
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!("   {waiting} regions still being rebuilt");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Resident memory of a process in MiB (0 once it is gone).
pub fn rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kib| kib / 1024)
        .unwrap_or(0)
}
