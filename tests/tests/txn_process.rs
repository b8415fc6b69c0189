//! The bank workload against real processes: three `ringkv-node`s and three placement
//! members, 16 transactional clients, and a nemesis that `kill -9`s and restarts nodes and the
//! placement leader and partitions the region leader. Every snapshot and the final state must
//! sum to the starting total, and the timestamps the clients got must be strictly increasing
//! across placement failovers.

use ringkv_client::{TransactionClient, TxnConfig};
use ringkv_tests::bank;
use ringkv_tests::debug;
use ringkv_tests::process::ProcessCluster;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NODE_TOML: &str = r#"
store_heartbeat_ms = 500
fault_injection = true

[raft]
tick_interval_ms = 50
"#;

/// How long the nemesis runs.
const NEMESIS: Duration = Duration::from_secs(30);

#[test]
fn bank_survives_kill_dash_nine_of_nodes_and_placement_and_leader_partitions() {
    let mut cluster = ProcessCluster::start_with_placement_members(3, 3, NODE_TOML, "");
    let (rt, _raw) = cluster.client();
    let config = TxnConfig {
        timeout: Duration::from_secs(15),
        attempt_timeout: Duration::from_secs(1),
        lock_ttl_ms: 1_000,
        ..Default::default()
    };
    let client = rt
        .block_on(TransactionClient::connect_with_config(
            &cluster.pd_endpoints,
            config,
        ))
        .expect("client connects");
    rt.block_on(bank::open_accounts(&client))
        .expect("accounts open");
    let store_ids: Vec<u64> = (0..cluster.node_count())
        .map(|i| {
            rt.block_on(debug::store_id(cluster.node_addr(i)))
                .expect("node answers")
        })
        .collect();
    let first_ts = rt.block_on(client.current_ts()).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(bank::BankStats::default());
    let workers = {
        let _guard = rt.enter();
        bank::start_workers(&client, 16, &stop, &stats)
    };
    // Timestamps taken one after another must strictly increase, placement restarts or not.
    let ts_watch = {
        let (client, stop) = (client.clone(), stop.clone());
        rt.spawn(async move {
            let (mut last, mut taken, mut backwards) = (0u64, 0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                if let Ok(ts) = client.current_ts().await {
                    if ts <= last {
                        backwards.push((last, ts));
                    }
                    last = ts;
                    taken += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (taken, backwards)
        })
    };
    let started = Instant::now();
    let mut round = 0;
    let mut faults = Vec::new();
    while started.elapsed() < NEMESIS {
        std::thread::sleep(Duration::from_millis(1500));
        match round % 3 {
            0 => {
                let victim = (round / 3) % cluster.node_count();
                cluster.kill_node(victim);
                std::thread::sleep(Duration::from_millis(1500));
                cluster.restart_node(victim);
                faults.push(format!("kill -9 node {victim}"));
            }
            1 => {
                if let Some(leader) = cluster.leader() {
                    cluster.partition(&rt, &store_ids, Some(leader));
                    std::thread::sleep(Duration::from_millis(2000));
                    cluster.partition(&rt, &store_ids, None);
                    faults.push(format!("partition leader node {leader}"));
                }
            }
            _ => {
                let member = cluster.placement_leader().unwrap_or(0);
                cluster.kill_placement_member(member);
                std::thread::sleep(Duration::from_millis(500));
                cluster.restart_placement_member(member);
                faults.push(format!("kill -9 placement leader pd-{}", member + 1));
            }
        }
        round += 1;
    }
    cluster.partition(&rt, &store_ids, None);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = rt.block_on(w);
    }
    let (taken, backwards) = rt.block_on(ts_watch).unwrap();
    assert!(backwards.is_empty(), "timestamps went back: {backwards:?}");
    assert!(taken > 0);
    let violations = stats.violations.lock().clone();
    assert!(violations.is_empty(), "{violations:#?}");
    let balances = rt.block_on(async {
        let mut txn = client.begin().await.unwrap();
        bank::balances(&mut txn).await.unwrap()
    });
    assert_eq!(balances.iter().sum::<i64>(), bank::TOTAL, "{balances:?}");
    let last_ts = rt.block_on(client.current_ts()).unwrap();
    assert!(
        last_ts > first_ts,
        "timestamps went back across placement restarts"
    );
    let (t, f, s) = (
        stats.transfers.load(Ordering::Relaxed),
        stats.transfers_failed.load(Ordering::Relaxed),
        stats.snapshots.load(Ordering::Relaxed),
    );
    eprintln!(
        "bank (processes): {t} transfers, {f} given up, {s} snapshots checked; faults: {faults:?}"
    );
    assert!(
        t > 0 && s > 0,
        "the workload made progress: {t} transfers, {s} snapshots"
    );
}
