//! Snapshot isolation, checked on a list-append history: eight clients run transactions that
//! read some of eight keys and append unique elements to others, over three regions, while a
//! nemesis restarts nodes and cuts leaders off. The history is then checked for what snapshot
//! isolation forbids — dirty reads, lost updates and writes, read skew, dependency cycles —
//! by `ringkv_tests::list_append` (write skew is allowed and not reported).

use parking_lot::Mutex;
use ringkv_client::{ClientError, TxnConfig};
use ringkv_tests::cluster::ClusterBuilder;
use ringkv_tests::cluster_checks::{self, presplit};
use ringkv_tests::list_append::{self, Op, Outcome, Txn};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const KEYS: u32 = 8;
const WORKERS: u64 = 8;

fn key(k: u32) -> Vec<u8> {
    format!("la{k}").into_bytes()
}

/// How a failed commit ended: only a refusal is a sure abort; no answer may have committed.
fn outcome_of(result: &Result<u64, ClientError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Committed,
        Err(
            ClientError::WriteConflict { .. }
            | ClientError::TxnAborted { .. }
            | ClientError::KeyExists { .. }
            | ClientError::TxnTooOld { .. }
            | ClientError::InvalidArgument(_),
        ) => Outcome::Aborted,
        Err(_) => Outcome::Unknown,
    }
}

/// One transaction of a worker: 1 to 4 distinct keys, each read or appended to (even odds).
async fn one_transaction(
    client: &ringkv_client::TransactionClient,
    n: &mut u64,
    elements: &AtomicU64,
) -> Option<Txn> {
    let mut next = || {
        *n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *n >> 33
    };
    let count = 1 + next() % 4;
    let mut keys: Vec<u32> = Vec::new();
    while keys.len() < count as usize {
        let k = (next() % u64::from(KEYS)) as u32;
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let mut txn = client.begin().await.ok()?;
    let mut ops = Vec::new();
    for k in keys {
        let seen = match txn.get(key(k)).await {
            Ok(v) => list_append::decode(v.as_deref()),
            Err(_) => {
                txn.rollback();
                return None;
            }
        };
        if next() % 2 == 0 {
            ops.push(Op::Read { key: k, list: seen });
        } else {
            let element = elements.fetch_add(1, Ordering::Relaxed);
            let mut list = seen.clone();
            list.push(element);
            txn.put(key(k), list_append::encode(&list)).ok()?;
            ops.push(Op::Append {
                key: k,
                prefix: seen,
                element,
            });
        }
    }
    let outcome = outcome_of(&txn.commit().await);
    Some(Txn { ops, outcome })
}

#[test]
fn list_append_histories_show_no_snapshot_isolation_anomaly_under_restarts_and_partitions() {
    let mut cluster = ClusterBuilder::default().start();
    presplit(&cluster, &[b"la3", b"la6"]);
    let client = cluster.txn_client_with(TxnConfig {
        timeout: Duration::from_secs(10),
        attempt_timeout: Duration::from_secs(1),
        lock_ttl_ms: 1_000,
        ..Default::default()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(Vec::new()));
    let elements = Arc::new(AtomicU64::new(1));
    let workers: Vec<_> = {
        let _guard = cluster.rt.enter();
        (0..WORKERS)
            .map(|w| {
                let (client, stop, history, elements) = (
                    client.clone(),
                    stop.clone(),
                    history.clone(),
                    elements.clone(),
                );
                tokio::spawn(async move {
                    let mut n = (w + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(txn) = one_transaction(&client, &mut n, &elements).await {
                            history.lock().push(txn);
                        }
                    }
                })
            })
            .collect()
    };
    let faults = cluster_checks::restart_and_partition_nemesis(&mut cluster);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = cluster.rt.block_on(w);
    }
    // Every key as it ends up, in one snapshot (locks of undetermined commits get resolved).
    let last: BTreeMap<u32, Vec<u64>> = cluster.rt.block_on(async {
        for attempt in 0.. {
            let read = async {
                let mut txn = client.begin().await?;
                let mut last = BTreeMap::new();
                for k in 0..KEYS {
                    last.insert(k, list_append::decode(txn.get(key(k)).await?.as_deref()));
                }
                Ok::<_, ClientError>(last)
            };
            match read.await {
                Ok(last) => return last,
                Err(e) if attempt < 10 => eprintln!("final read: {e}; again"),
                Err(e) => panic!("the final read keeps failing: {e}"),
            }
        }
        unreachable!("the loop returns or panics")
    });
    let history = history.lock().clone();
    let (summary, anomalies) = list_append::check(&history, &last);
    eprintln!(
        "list-append: {} transactions ({} committed, {} aborted, {} unknown of which {} took effect), {} reads, {} appends, {} dependency edges; faults: {faults:?}; anomalies: {}",
        history.len(),
        summary.committed,
        summary.aborted,
        summary.unknown,
        summary.unknown_took_effect,
        summary.reads,
        summary.appends,
        summary.edges,
        anomalies.len()
    );
    assert!(anomalies.is_empty(), "{anomalies:#?}");
    assert!(
        summary.committed > 100 && summary.edges > 100,
        "the workload made progress: {summary:?}"
    );
    assert!(!faults.is_empty(), "the nemesis injected faults");
}
