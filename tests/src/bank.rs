//! The bank workload: clients move money between accounts in transactions and take snapshots
//! of every account; any isolation anomaly (a lost update, a torn commit, a snapshot that is
//! not one) makes a snapshot's sum differ from the starting total.

use parking_lot::Mutex;
use ringkv_client::{ClientError, Transaction, TransactionClient};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::task::JoinHandle;

pub const ACCOUNTS: usize = 10;
pub const START_BALANCE: i64 = 100;
pub const TOTAL: i64 = START_BALANCE * ACCOUNTS as i64;

pub fn account(i: usize) -> Vec<u8> {
    format!("acct{i:02}").into_bytes()
}

fn balance(v: Option<Vec<u8>>) -> i64 {
    v.and_then(|v| String::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0)
}

/// What the workers did and saw.
#[derive(Default)]
pub struct BankStats {
    pub transfers: AtomicU64,
    pub transfers_failed: AtomicU64,
    pub snapshots: AtomicU64,
    pub violations: Mutex<Vec<String>>,
}

/// Opens every account with the starting balance.
pub async fn open_accounts(client: &TransactionClient) -> Result<(), ClientError> {
    client
        .run(|txn| {
            Box::pin(async move {
                for i in 0..ACCOUNTS {
                    txn.put(account(i), START_BALANCE.to_string())?;
                }
                Ok(())
            })
        })
        .await
}

/// Every balance as `txn` sees it.
pub async fn balances(txn: &mut Transaction) -> Result<Vec<i64>, ClientError> {
    let keys: Vec<Vec<u8>> = (0..ACCOUNTS).map(account).collect();
    let got = txn.batch_get(keys.clone()).await?;
    Ok(keys
        .iter()
        .map(|k| balance(got.iter().find(|(gk, _)| gk == k).map(|(_, v)| v.clone())))
        .collect())
}

/// Starts `workers` clients that, until `stop`, each either transfer a random amount between
/// two accounts (4 in 5) or check a snapshot of all accounts (1 in 5).
pub fn start_workers(
    client: &TransactionClient,
    workers: u64,
    stop: &Arc<AtomicBool>,
    stats: &Arc<BankStats>,
) -> Vec<JoinHandle<()>> {
    (0..workers)
        .map(|w| {
            let (client, stop, stats) = (client.clone(), stop.clone(), stats.clone());
            tokio::spawn(async move {
                let mut n = w.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                while !stop.load(Ordering::Relaxed) {
                    n = n
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    if n % 5 == 0 {
                        check_snapshot(&client, &stats).await;
                        continue;
                    }
                    let from = (n >> 8) as usize % ACCOUNTS;
                    let to = (from + 1 + (n >> 16) as usize % (ACCOUNTS - 1)) % ACCOUNTS;
                    let amount = ((n >> 24) % 20) as i64;
                    let done = client
                        .run(|txn| {
                            Box::pin(async move {
                                let a = balance(txn.get(account(from)).await?);
                                let b = balance(txn.get(account(to)).await?);
                                txn.put(account(from), (a - amount).to_string())?;
                                txn.put(account(to), (b + amount).to_string())?;
                                Ok(())
                            })
                        })
                        .await;
                    let counter = if done.is_ok() {
                        &stats.transfers
                    } else {
                        &stats.transfers_failed
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect()
}

/// Reads every account in one snapshot and records a violation if they do not sum up.
pub async fn check_snapshot(client: &TransactionClient, stats: &BankStats) {
    let Ok(mut txn) = client.begin().await else {
        return;
    };
    if let Ok(b) = balances(&mut txn).await {
        let sum: i64 = b.iter().sum();
        if sum != TOTAL {
            stats.violations.lock().push(format!(
                "snapshot at {} sums to {sum}, not {TOTAL}: {b:?}",
                txn.start_ts()
            ));
        }
        stats.snapshots.fetch_add(1, Ordering::Relaxed);
    }
}
