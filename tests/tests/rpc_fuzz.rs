//! Hostile input against a cluster of the real binaries: the exact request that once killed a
//! node, then a seeded RPC fuzzer over every service (Kv, Raft, Debug, Placement,
//! PlacementMember) and every request type, with random, extreme and malformed field values.
//! After each batch every process must still be running and every key written before the
//! fuzzing must read back unchanged.
//!
//! The fuzzer sends what an unauthenticated caller can get wrong, not what an authorised one
//! may legitimately order: membership changes go out with a wrong region or epoch, forged
//! region reports never claim a newer epoch, forged stores never take a real store's id, and
//! writes only touch keys outside the seed data. Who may order what is issue 22's roles.
//!
//! Replay: `RINGKV_FUZZ_SEED=<seed> cargo nextest run -p ringkv-tests --test rpc_fuzz`. The
//! requests follow from the seed; the cluster's timing (leaders, region ids) may still differ.

use ringkv_client::{RawClient, RawConfig, TransactionClient, TxnConfig};
use ringkv_proto::keys::{self, default_keyspace};
use ringkv_proto::kvrpcpb::kv_client::KvClient;
use ringkv_proto::kvrpcpb::*;
use ringkv_proto::metapb::Region;
use ringkv_proto::pdpb::ErrorType;
use ringkv_tests::fuzz::{batch, observe, seed_key, txn_seed_key, Gen, Tally, SEED_KEYS};
use ringkv_tests::process::{runtime, ProcessCluster, FAST_NODE_TOML};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Batches of requests; every process and the seed data are checked after each.
const BATCHES: usize = 10;
/// Requests of each kind in one batch.
const PER_KIND: usize = 60;
/// Requests in flight at once.
const IN_FLIGHT: usize = 24;
/// How long one request may take before the fuzzer stops waiting for it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_SEED: u64 = 0x5eed_f0220;

fn region_of(cluster: &ProcessCluster, rt: &tokio::runtime::Runtime, key: &[u8]) -> Region {
    let pd = rt
        .block_on(ringkv_client::PdClient::connect(&cluster.pd_endpoints))
        .expect("placement");
    rt.block_on(pd.get_region(key))
        .expect("region of key")
        .region
}

#[test]
fn a_prewrite_at_the_largest_start_version_is_refused_and_the_node_stays_up() {
    let mut cluster = ProcessCluster::start_with_config(3, FAST_NODE_TOML);
    let (rt, client) = cluster.client();
    rt.block_on(client.put(b"before".to_vec(), b"v".to_vec()))
        .expect("put");
    let key = keys::encode(&default_keyspace(), b"k");
    let region = region_of(&cluster, &rt, &key);
    let leader = cluster.wait_for_leader(Duration::from_secs(30));
    // Every node gets it, so the leader of the key's region does too.
    let mut answers = Vec::new();
    for i in 0..cluster.node_count() {
        for start_version in [u64::MAX, u64::MAX - 1] {
            let addr = format!("http://{}", cluster.node_addr(i));
            let Ok(mut kv) = rt.block_on(KvClient::connect(addr)) else {
                // Down: a request before this one killed it.
                continue;
            };
            let answer = rt.block_on(kv.kv_prewrite(KvPrewriteRequest {
                context: Some(Context {
                    region_id: region.id,
                    region_epoch: region.region_epoch,
                    ..Default::default()
                }),
                mutations: vec![Mutation {
                    op: Op::Put as i32,
                    key: key.clone(),
                    value: b"x".to_vec(),
                }],
                primary_lock: key.clone(),
                start_version,
                lock_ttl: 3_000,
                ..Default::default()
            }));
            answers.push((i, answer));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(cluster.crashed(), Vec::<String>::new());
    for (i, answer) in answers {
        let refused = answer.expect_err("a start version no TSO issued is refused");
        assert_eq!(
            refused.code(),
            tonic::Code::InvalidArgument,
            "node {i}: {refused:?}"
        );
        assert!(
            refused.message().contains("start_version"),
            "the error names the field: {}",
            refused.message()
        );
    }
    assert_eq!(
        rt.block_on(client.get(b"before".to_vec())).expect("get"),
        Some(b"v".to_vec()),
        "the cluster still serves (leader was node {leader})"
    );
}

#[test]
fn fuzzed_requests_to_every_service_crash_nothing_and_lose_no_data() {
    let seed = std::env::var("RINGKV_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    println!(
        "rpc fuzz seed {seed} (replay: RINGKV_FUZZ_SEED={seed} cargo nextest run -p ringkv-tests --test rpc_fuzz)"
    );
    let mut cluster = ProcessCluster::start_with_placement_members(3, 3, FAST_NODE_TOML, "");
    let rt = runtime();
    let config = RawConfig {
        timeout: Duration::from_secs(60),
        attempt_timeout: Duration::from_secs(2),
        ..RawConfig::default()
    };
    let raw = rt
        .block_on(RawClient::connect_with_config(
            &cluster.pd_endpoints,
            config,
        ))
        .expect("raw client");
    let txns = rt
        .block_on(TransactionClient::connect_with_config(
            &cluster.pd_endpoints,
            TxnConfig::default(),
        ))
        .expect("transaction client");
    for i in 0..SEED_KEYS {
        rt.block_on(raw.put(seed_key(i).into_bytes(), format!("v{i}").into_bytes()))
            .expect("seed put");
    }
    rt.block_on(async {
        let mut txn = txns.begin().await?;
        for i in 0..SEED_KEYS / 4 {
            txn.put(txn_seed_key(i).into_bytes(), format!("t{i}").into_bytes())?;
        }
        txn.commit().await
    })
    .expect("transactional seed");

    let nodes: Vec<String> = (0..cluster.node_count())
        .map(|i| cluster.node_addr(i).to_string())
        .collect();
    let mut gen = Gen::new(seed);
    let mut tally: Tally = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let started = Instant::now();
    for b in 0..BATCHES {
        gen.world = rt.block_on(observe(&cluster.pd_endpoints, &nodes));
        assert!(!gen.world.stores.is_empty() && !gen.world.members.is_empty());
        let calls = {
            let _in_runtime = rt.enter();
            batch(&mut gen, PER_KIND)
        };
        let outcomes: Vec<(&'static str, Result<Option<i32>, tonic::Status>)> =
            rt.block_on(async {
                use futures::StreamExt;
                futures::stream::iter(calls.into_iter().map(|(kind, call)| async move {
                    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
                        Ok(outcome) => (kind, outcome),
                        Err(_) => (
                            kind,
                            Err(tonic::Status::deadline_exceeded("fuzzer timeout")),
                        ),
                    }
                }))
                .buffer_unordered(IN_FLIGHT)
                .collect()
                .await
            });
        for (kind, outcome) in outcomes {
            let code = match &outcome {
                Ok(None) => "Ok".to_string(),
                Ok(Some(t)) => ErrorType::try_from(*t)
                    .map_or_else(|_| format!("error type {t}"), |t| format!("{t:?}")),
                Err(s) => format!("{:?}", s.code()),
            };
            if let Err(s) = &outcome {
                // A node answers what it cannot serve with a status that says so; an internal
                // error or a broken stream is a bug it hit.
                if matches!(s.code(), tonic::Code::Internal | tonic::Code::Unknown)
                    && failures.len() < 20
                {
                    failures.push(format!("{kind}: {:?}: {}", s.code(), s.message()));
                }
            }
            *tally.entry(kind).or_default().entry(code).or_default() += 1;
        }
        let crashed = cluster.crashed();
        assert!(
            crashed.is_empty(),
            "batch {b} (seed {seed}) crashed a process:\n{}",
            crashed.join("\n\n")
        );
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_seed_data(&rt, &raw, &txns, b, seed)
        }))
        .is_err()
        {
            // A request the fuzzer stopped waiting for may have crashed a process since.
            let crashed = cluster.crashed();
            assert!(
                crashed.is_empty(),
                "batch {b} (seed {seed}) crashed a process:\n{}",
                crashed.join("\n\n")
            );
            for addr in &nodes {
                for r in rt
                    .block_on(ringkv_tests::debug::regions(addr))
                    .unwrap_or_default()
                {
                    println!(
                        "{addr}: region {} term {} commit {} applied {} last {} leader {} is_leader {} quiet {} peers {:?}",
                        r.region.as_ref().map_or(0, |r| r.id),
                        r.term,
                        r.commit_index,
                        r.applied_index,
                        r.last_index,
                        r.leader_id,
                        r.is_leader,
                        r.quiet,
                        r.region.as_ref().map(|r| r.peers.iter().map(|p| (p.id, p.store_id, p.role)).collect::<Vec<_>>())
                    );
                }
            }
            let kept =
                std::mem::replace(&mut cluster.dir, tempfile::tempdir().expect("dir")).keep();
            panic!(
                "seed data check failed after batch {b}; the cluster's logs are kept in {}",
                kept.display()
            );
        }
        println!("batch {b} done after {:?}", started.elapsed());
    }
    let mut report = String::new();
    let mut total = 0;
    for (kind, codes) in &tally {
        let sent: usize = codes.values().sum();
        total += sent;
        report.push_str(&format!("{kind:45} {sent:4}  {codes:?}\n"));
    }
    println!("{total} requests in {:?}:\n{report}", started.elapsed());
    assert!(
        failures.is_empty(),
        "internal errors or broken streams (seed {seed}):\n{}",
        failures.join("\n")
    );
}

fn check_seed_data(
    rt: &tokio::runtime::Runtime,
    raw: &RawClient,
    txns: &TransactionClient,
    batch: usize,
    seed: u64,
) {
    for i in 0..SEED_KEYS {
        let got = rt
            .block_on(raw.get(seed_key(i).into_bytes()))
            .unwrap_or_else(|e| {
                panic!("batch {batch} (seed {seed}): seed key {i} unreadable: {e}")
            });
        assert_eq!(
            got,
            Some(format!("v{i}").into_bytes()),
            "batch {batch} (seed {seed}): seed key {i} changed"
        );
    }
    rt.block_on(async {
        let mut snap = txns.begin().await.expect("begin");
        for i in 0..SEED_KEYS / 4 {
            let got = snap
                .get(txn_seed_key(i).into_bytes())
                .await
                .unwrap_or_else(|e| panic!("batch {batch} (seed {seed}): txn key {i}: {e}"));
            assert_eq!(
                got,
                Some(format!("t{i}").into_bytes()),
                "batch {batch} (seed {seed}): transactional seed key {i} changed"
            );
        }
    });
}

/// Leadership of every region as the nodes report it: region id → (term, leader peer id),
/// from the replica that leads it.
fn leaders(rt: &tokio::runtime::Runtime, cluster: &ProcessCluster) -> BTreeMap<u64, (u64, u64)> {
    let mut led = BTreeMap::new();
    for i in 0..cluster.node_count() {
        for r in rt
            .block_on(ringkv_tests::debug::regions(cluster.node_addr(i)))
            .unwrap_or_default()
        {
            if r.is_leader {
                let id = r.region.as_ref().map_or(0, |r| r.id);
                led.insert(id, (r.term, r.leader_id));
            }
        }
    }
    led
}

#[test]
fn heavy_scans_beside_writes_cause_no_leader_change() {
    // Default timing (100 ms ticks, elections after 1–2 s without a leader's word).
    let cluster = ProcessCluster::start_with_config(3, "");
    let (rt, client) = cluster.client();
    let value = vec![7u8; 512];
    for chunk in 0..40 {
        let pairs = (0..500)
            .map(|i| (format!("scan/{chunk}/{i}").into_bytes(), value.clone()))
            .collect();
        rt.block_on(client.batch_put(pairs)).expect("load");
    }
    // Let the cluster settle after the load (leases, quiet regions) before taking the terms.
    std::thread::sleep(Duration::from_secs(2));
    let before = leaders(&rt, &cluster);
    assert!(!before.is_empty(), "every region has a leader");
    let scans = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let until = Instant::now() + Duration::from_secs(10);
    rt.block_on(async {
        let mut tasks = Vec::new();
        // Each scan of a hash keyspace reads every key of every region: 20,000 keys.
        for _ in 0..12 {
            let (client, scans) = (client.clone(), scans.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < until {
                    let found = client
                        .scan(b"scan/".to_vec(), b"scan0".to_vec(), 10_240)
                        .await;
                    assert_eq!(found.expect("scan").len(), 10_240);
                    scans.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for w in 0..4 {
            let (client, writes) = (client.clone(), writes.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while Instant::now() < until {
                    client
                        .put(format!("w/{w}/{i}").into_bytes(), b"v".to_vec())
                        .await
                        .expect("write beside the scans");
                    writes.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            }));
        }
        for t in tasks {
            t.await.expect("load task");
        }
    });
    let after = leaders(&rt, &cluster);
    let (scans, writes) = (
        scans.load(Ordering::Relaxed),
        writes.load(Ordering::Relaxed),
    );
    println!("{scans} full scans and {writes} writes in 10 s; leaders before {before:?}, after {after:?}");
    assert!(scans > 0 && writes > 0);
    for (region, led) in &before {
        assert_eq!(
            after.get(region),
            Some(led),
            "region {region} changed leader or term under the scans (before {led:?}, after {:?})",
            after.get(region)
        );
    }
}
