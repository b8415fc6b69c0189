//! Real-process chaos: three `ringkv-node` processes and three placement members, clients
//! reading and writing registers and unique keys, and a nemesis that, one fault at a time,
//! `kill -9`s and restarts a node or the placement leader, SIGSTOPs and SIGCONTs a node or the
//! placement leader, cuts the placement leader off from the other members (the members'
//! hook, `PlacementMember/SetMemberNetFilter`), or partitions a
//! node from the others (through the nodes' fault-injection hook, `Debug/SetNetFilter`). The
//! run is bounded in time. Clients use the SDK's default configuration: every write is retried
//! until it is answered, and the client session makes each apply at most once. Afterwards
//! every acknowledged unique key must be readable, the register history linearizable, and a
//! counter incremented with compare-and-swap must hold its count of swaps (no two swaps from
//! the same value); a summary of operations, faults and anomalies is printed.
//!
//! The fault schedule comes from a seed (printed; `RINGKV_CHAOS_SEED` sets it), though timing
//! makes a process run unrepeatable in detail: the simulation is where failures replay.

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv_client::{ClientError, RawClient};
use ringkv_tests::debug;
use ringkv_tests::linearizability::History;
use ringkv_tests::process::ProcessCluster;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the nemesis runs.
const CHAOS: Duration = Duration::from_secs(40);
const CLIENTS: usize = 6;
/// Clients that increment the counter with compare-and-swap.
const CAS_CLIENTS: usize = 3;
const REGISTER_KEYS: u64 = 5;
const COUNTER: &[u8] = b"cas-counter";

const NODE_TOML: &str = r#"
store_heartbeat_ms = 500
fault_injection = true

[raft]
tick_interval_ms = 50

[split]
region_split_size_bytes = 16384
split_check_diff_bytes = 4096
split_check_ticks = 2
"#;

/// What the nemesis did, by kind.
#[derive(Default, Debug)]
struct Faults {
    node_kills: u32,
    placement_kills: u32,
    placement_pauses: u32,
    placement_partitions: u32,
    pauses: u32,
    partitions: u32,
}

/// What the clients did.
#[derive(Default, Debug)]
struct Ops {
    register_puts_acked: AtomicU64,
    register_puts_unknown: AtomicU64,
    register_gets_ok: AtomicU64,
    register_gets_failed: AtomicU64,
    unique_puts_acked: AtomicU64,
    unique_puts_failed: AtomicU64,
    cas_swapped: AtomicU64,
    cas_mismatched: AtomicU64,
    cas_unknown: AtomicU64,
}

#[test]
fn chaos_keeps_histories_linearizable_and_acknowledged_writes_durable() {
    let seed = std::env::var("RINGKV_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    println!("chaos seed {seed} (RINGKV_CHAOS_SEED replays the fault schedule)");
    let mut cluster =
        ProcessCluster::start_with_placement_members(3, 3, NODE_TOML, "fault_injection = true\n");
    let (rt, checking_client) = cluster.client();
    // The defaults: writes are retried until answered, at most once each.
    let client = rt
        .block_on(RawClient::connect(&cluster.pd_endpoints))
        .expect("client connects");
    let store_ids: Vec<u64> = (0..3)
        .map(|i| {
            rt.block_on(debug::store_id(cluster.node_addr(i)))
                .expect("node answers")
        })
        .collect();

    let history = Arc::new(Mutex::new(History::default()));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let ops = Arc::new(Ops::default());
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|w| {
            let (client, history, acked, ops, stop) = (
                client.clone(),
                history.clone(),
                acked.clone(),
                ops.clone(),
                stop.clone(),
            );
            rt.spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed * 100 + w as u64);
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let choice = rng.gen_range(0..10);
                    let register = format!("reg{}", rng.gen_range(0..REGISTER_KEYS)).into_bytes();
                    if choice < 4 {
                        let value = format!("c{w}-{n}").into_bytes();
                        let at = history.lock().invoke_put(&register, &value);
                        match client.put(register, value).await {
                            Ok(()) => {
                                history.lock().complete_put(at);
                                ops.register_puts_acked.fetch_add(1, Ordering::SeqCst);
                            }
                            // Failed or unknown: it stays open (it may take effect, or not).
                            Err(_) => {
                                ops.register_puts_unknown.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    } else if choice < 8 {
                        let at = history.lock().invoke_get(&register);
                        match client.get(register).await {
                            Ok(value) => {
                                history.lock().complete_get(at, value);
                                ops.register_gets_ok.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(_) => {
                                history.lock().forget_get(at);
                                ops.register_gets_failed.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    } else {
                        let key = format!("uniq-{w}-{n}").into_bytes();
                        match client.put(key.clone(), b"u".to_vec()).await {
                            Ok(()) => {
                                acked.lock().push(key);
                                ops.unique_puts_acked.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => {
                                assert!(
                                    !matches!(e, ClientError::InvalidArgument(_)),
                                    "the workload sent a bad request: {e}"
                                );
                                ops.unique_puts_failed.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                }
            })
        })
        .collect();
    // Each swap's old value, by client: no value may be swapped from twice.
    let swapped_from = Arc::new(Mutex::new(Vec::new()));
    let cas_workers: Vec<_> = (0..CAS_CLIENTS)
        .map(|_| {
            let (client, ops, stop, swapped_from) = (
                client.clone(),
                ops.clone(),
                stop.clone(),
                swapped_from.clone(),
            );
            rt.spawn(async move {
                let mut seen: Option<u64> = None;
                while !stop.load(Ordering::SeqCst) {
                    let next = seen.map_or(1, |n| n + 1).to_string().into_bytes();
                    let expected = seen.map(|n| n.to_string().into_bytes());
                    match client.compare_and_swap(COUNTER, expected, Some(next)).await {
                        Ok(outcome) if outcome.swapped => {
                            swapped_from.lock().push(seen.unwrap_or(0));
                            ops.cas_swapped.fetch_add(1, Ordering::SeqCst);
                            seen = Some(seen.map_or(1, |n| n + 1));
                        }
                        Ok(outcome) => {
                            ops.cas_mismatched.fetch_add(1, Ordering::SeqCst);
                            seen = outcome.current.map(|v| {
                                String::from_utf8(v)
                                    .ok()
                                    .and_then(|v| v.parse().ok())
                                    .expect("the counter holds a number")
                            });
                        }
                        Err(e) => {
                            assert!(
                                !matches!(e, ClientError::InvalidArgument(_)),
                                "the workload sent a bad request: {e}"
                            );
                            // It may or may not have swapped: read the counter again.
                            ops.cas_unknown.fetch_add(1, Ordering::SeqCst);
                            seen = client.get(COUNTER).await.ok().and_then(|v| {
                                v.map(|v| String::from_utf8_lossy(&v).parse().unwrap_or(0))
                            });
                        }
                    }
                }
            })
        })
        .collect();

    let faults = run_nemesis(&mut cluster, &rt, &store_ids, seed);
    stop.store(true, Ordering::SeqCst);
    for w in workers.into_iter().chain(cas_workers) {
        rt.block_on(w).expect("client task");
    }

    // Every acknowledged unique key is there (read with retries, the cluster healed).
    let acked = acked.lock().clone();
    let mut lost = Vec::new();
    for key in &acked {
        match rt.block_on(checking_client.get(key.clone())) {
            Ok(Some(_)) => {}
            Ok(None) => lost.push(String::from_utf8_lossy(key).into_owned()),
            Err(e) => panic!("cannot read back {}: {e}", String::from_utf8_lossy(key)),
        }
    }
    // The counter holds exactly the swaps made, give or take the ones whose outcome the
    // clients never learnt; and no two swaps started from the same value.
    let counter: u64 = rt
        .block_on(checking_client.get(COUNTER.to_vec()))
        .expect("the counter reads")
        .map(|v| String::from_utf8_lossy(&v).parse().expect("a number"))
        .unwrap_or(0);
    let swaps = ops.cas_swapped.load(Ordering::SeqCst);
    let unknown = ops.cas_unknown.load(Ordering::SeqCst);
    let mut from = swapped_from.lock().clone();
    from.sort_unstable();
    let twice: Vec<u64> = from
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    let history = history.lock();
    let check = history.check(5_000_000);
    let anomalies = usize::from(check.is_err());
    let summary: BTreeMap<&str, u64> = [
        (
            "register puts acknowledged",
            ops.register_puts_acked.load(Ordering::SeqCst),
        ),
        (
            "register puts failed or unknown",
            ops.register_puts_unknown.load(Ordering::SeqCst),
        ),
        ("register gets", ops.register_gets_ok.load(Ordering::SeqCst)),
        (
            "register gets failed",
            ops.register_gets_failed.load(Ordering::SeqCst),
        ),
        (
            "unique puts acknowledged",
            ops.unique_puts_acked.load(Ordering::SeqCst),
        ),
        (
            "unique puts failed",
            ops.unique_puts_failed.load(Ordering::SeqCst),
        ),
        ("node kills", u64::from(faults.node_kills)),
        ("placement kills", u64::from(faults.placement_kills)),
        ("placement pauses", u64::from(faults.placement_pauses)),
        (
            "placement partitions",
            u64::from(faults.placement_partitions),
        ),
        ("pauses", u64::from(faults.pauses)),
        ("partitions", u64::from(faults.partitions)),
        ("cas swapped", swaps),
        ("cas mismatched", ops.cas_mismatched.load(Ordering::SeqCst)),
        ("cas unknown", unknown),
        ("counter", counter),
        ("lost acknowledged writes", lost.len() as u64),
        ("anomalies", anomalies as u64),
    ]
    .into_iter()
    .collect();
    println!("chaos summary (seed {seed}): {summary:#?}");
    assert!(
        lost.is_empty(),
        "acknowledged writes lost: {lost:?} (seed {seed})"
    );
    if let Err(violation) = check {
        panic!("seed {seed}: {violation}");
    }
    assert!(
        twice.is_empty(),
        "two compare-and-swaps succeeded from the same value: {twice:?} (seed {seed})"
    );
    assert!(
        swaps <= counter && counter <= swaps + unknown,
        "the counter holds {counter} after {swaps} swaps and {unknown} of unknown outcome (seed {seed})"
    );
    assert!(swaps > 10, "too few swaps to check anything: {summary:?}");
    assert!(
        ops.register_gets_ok.load(Ordering::SeqCst) > 100
            && ops.register_puts_acked.load(Ordering::SeqCst) > 100,
        "too little got through to check anything: {summary:?}"
    );
}

/// Injects one fault at a time until [`CHAOS`] has passed, then heals everything and waits
/// until the cluster serves again.
fn run_nemesis(
    cluster: &mut ProcessCluster,
    rt: &tokio::runtime::Runtime,
    store_ids: &[u64],
    seed: u64,
) -> Faults {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = Faults::default();
    let start = Instant::now();
    while start.elapsed() < CHAOS {
        std::thread::sleep(Duration::from_millis(rng.gen_range(1000..2500)));
        let i = rng.gen_range(0..store_ids.len());
        let length = Duration::from_millis(rng.gen_range(1000..3000));
        match rng.gen_range(0..12) {
            0..=3 => {
                cluster.kill_node(i);
                faults.node_kills += 1;
                std::thread::sleep(length);
                cluster.restart_node(i);
            }
            4..=5 => {
                cluster.pause_node(i);
                faults.pauses += 1;
                std::thread::sleep(length);
                cluster.resume_node(i);
            }
            6..=8 => {
                cluster.partition(rt, store_ids, Some(i));
                faults.partitions += 1;
                std::thread::sleep(length);
                cluster.partition(rt, store_ids, None);
            }
            9 => {
                let member = cluster.placement_leader().unwrap_or(0);
                cluster.kill_placement_member(member);
                faults.placement_kills += 1;
                std::thread::sleep(length);
                cluster.restart_placement_member(member);
            }
            10 => {
                // The placement leader cut off from the other members (nodes and clients
                // still reach it): it must stop serving once its lease runs out, and a new
                // leader takes over.
                let member = cluster.placement_leader().unwrap_or(0);
                cluster.partition_placement(Some(member));
                faults.placement_partitions += 1;
                std::thread::sleep(length);
                cluster.partition_placement(None);
            }
            _ => {
                // A stopped leader that resumes must not serve on a lease that ran out
                // while it was stopped.
                let member = cluster.placement_leader().unwrap_or(0);
                cluster.pause_placement_member(member);
                faults.placement_pauses += 1;
                std::thread::sleep(length);
                cluster.resume_placement_member(member);
            }
        }
    }
    cluster.partition(rt, store_ids, None);
    cluster.wait_for_leader(Duration::from_secs(60));
    faults
}
