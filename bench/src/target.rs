//! Where the load generator sends its operations: ringkv through the SDK, or etcd through its
//! own gRPC KV API, with the same operations so one workload runs unchanged against both.

use crate::workload::{record_key, KeyChooser, OpKind, Recorder, RunSpec};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use ringkv_client::{RawClient, TransactionClient, TxnConfig};
use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::etcdserverpb::{request_op, PutRequest, RangeRequest, RequestOp, TxnRequest};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// A system under load.
#[derive(Clone)]
pub enum Target {
    /// The raw API for single-key operations, transactions for `Txn`.
    Ringkv(RawClient, TransactionClient),
    /// ringkv through transactions only, reads as stale snapshots this far in the past
    /// (served by any replica from its own state): records are written and read as MVCC data.
    RingkvStale(TransactionClient, Duration),
    /// One connection per member; client `c` uses member `c % members`.
    Etcd(Vec<KvClient<Channel>>),
}

impl Target {
    /// ringkv through `raw`, with transactions over the same keyspace. `try_one_pc`: commit
    /// transactions whose keys share a region in one phase.
    pub fn ringkv(raw: RawClient, try_one_pc: bool) -> Target {
        let txn = TransactionClient::with_pd(
            raw.pd().clone(),
            TxnConfig {
                timeout: Duration::from_secs(60),
                keyspace: raw.keyspace(),
                try_one_pc,
                ..TxnConfig::default()
            },
        );
        Target::Ringkv(raw, txn)
    }

    /// ringkv with every read a stale read `staleness` in the past, and writes transactional.
    pub fn ringkv_stale(raw: RawClient, staleness: Duration) -> Target {
        match Target::ringkv(raw, true) {
            Target::Ringkv(_, txn) => Target::RingkvStale(txn, staleness),
            _ => unreachable!("Target::ringkv builds a ringkv target"),
        }
    }

    /// Writes every pair in one transaction.
    async fn txn(&self, client: usize, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), String> {
        match self {
            Target::Ringkv(_, txn) | Target::RingkvStale(txn, _) => {
                let mut t = txn.begin().await.map_err(|e| e.to_string())?;
                for (k, v) in pairs {
                    t.put(k, v).map_err(|e| e.to_string())?;
                }
                t.commit().await.map(|_| ()).map_err(|e| e.to_string())
            }
            Target::Etcd(members) => {
                let mut kv = members[client % members.len()].clone();
                let success = pairs
                    .into_iter()
                    .map(|(key, value)| RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key,
                            value,
                            lease: 0,
                        })),
                    })
                    .collect();
                kv.txn(TxnRequest {
                    success,
                    failure: vec![],
                })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
            }
        }
    }

    async fn get(&self, client: usize, key: Vec<u8>) -> Result<Option<Vec<u8>>, String> {
        match self {
            Target::Ringkv(c, _) => c.get(key).await.map_err(|e| e.to_string()),
            Target::RingkvStale(txn, staleness) => {
                let mut snap = txn
                    .stale_snapshot(*staleness)
                    .await
                    .map_err(|e| e.to_string())?;
                snap.get(key).await.map_err(|e| e.to_string())
            }
            Target::Etcd(members) => {
                let mut kv = members[client % members.len()].clone();
                let r = kv
                    .range(RangeRequest {
                        key,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(r.into_inner().kvs.pop().map(|kv| kv.value))
            }
        }
    }

    async fn put(&self, client: usize, key: Vec<u8>, value: Vec<u8>) -> Result<(), String> {
        match self {
            Target::Ringkv(c, _) => c.put(key, value).await.map_err(|e| e.to_string()),
            Target::RingkvStale(..) => self.txn(client, vec![(key, value)]).await,
            Target::Etcd(members) => {
                let mut kv = members[client % members.len()].clone();
                kv.put(PutRequest {
                    key,
                    value,
                    lease: 0,
                })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
            }
        }
    }

    /// Reads up to `limit` records from `start` on, in key order; returns how many.
    async fn scan(&self, client: usize, start: Vec<u8>, limit: usize) -> Result<usize, String> {
        match self {
            Target::Ringkv(c, _) => {
                // Records are "user" + digits: ":" sorts right after every digit.
                c.scan(start, b"user:".to_vec(), limit as u32)
                    .await
                    .map(|pairs| pairs.len())
                    .map_err(|e| e.to_string())
            }
            Target::RingkvStale(txn, staleness) => {
                let mut snap = txn
                    .stale_snapshot(*staleness)
                    .await
                    .map_err(|e| e.to_string())?;
                snap.scan(start, b"user:".to_vec(), limit as u32)
                    .await
                    .map(|pairs| pairs.len())
                    .map_err(|e| e.to_string())
            }
            Target::Etcd(members) => {
                let mut kv = members[client % members.len()].clone();
                let r = kv
                    .range(RangeRequest {
                        key: start,
                        range_end: b"user:".to_vec(),
                        limit: limit as i64,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(r.into_inner().kvs.len())
            }
        }
    }

    /// Loads records `0..records` with a progress bar (batched where the target allows).
    pub async fn load(&self, records: u64, value_bytes: usize) -> Result<(), String> {
        let bar = ProgressBar::new(records);
        bar.set_style(
            ProgressStyle::with_template(
                "   loading {pos}/{len} records [{bar:30}] {per_sec}, {eta} left",
            )
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
        );
        let next = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..16)
            .map(|w| {
                let (target, next, bar) = (self.clone(), next.clone(), bar.clone());
                tokio::spawn(async move {
                    let value = vec![b'v'; value_bytes];
                    loop {
                        let first = next.fetch_add(64, Ordering::SeqCst);
                        if first >= records {
                            return Ok::<_, String>(());
                        }
                        let last = (first + 64).min(records);
                        match &target {
                            Target::Ringkv(c, _) => {
                                let pairs = (first..last)
                                    .map(|n| (record_key(n), value.clone()))
                                    .collect();
                                c.batch_put(pairs).await.map_err(|e| e.to_string())?;
                            }
                            Target::RingkvStale(..) => {
                                let pairs = (first..last)
                                    .map(|n| (record_key(n), value.clone()))
                                    .collect();
                                target.txn(w, pairs).await?;
                            }
                            Target::Etcd(_) => {
                                for n in first..last {
                                    target.put(w, record_key(n), value.clone()).await?;
                                }
                            }
                        }
                        bar.inc(last - first);
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.map_err(|e| e.to_string())??;
        }
        bar.finish_and_clear();
        Ok(())
    }
}

/// Runs `spec` against `target` for its duration with its clients, printing the throughput
/// once a second to stderr; returns what each client recorded, merged.
pub async fn run(target: &Target, spec: &RunSpec, label: &str) -> (Recorder, f64) {
    let deadline = Instant::now() + Duration::from_secs(spec.seconds);
    let started = Instant::now();
    let records = Arc::new(AtomicU64::new(spec.records));
    let done = Arc::new(AtomicU64::new(0));
    // Operations handed out so far, for a run bounded by an operation count.
    let issued = Arc::new(AtomicU64::new(0));
    let ticker = {
        let (done, label) = (done.clone(), label.to_string());
        tokio::spawn(async move {
            let mut last = 0;
            let mut second = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if Instant::now() >= deadline {
                    break;
                }
                second += 1;
                let now = done.load(Ordering::Relaxed);
                eprintln!("   {label} {second:>4} s: {:>8} ops/s", now - last);
                last = now;
            }
        })
    };
    let clients: Vec<_> = (0..spec.clients)
        .map(|c| {
            let (target, spec, records, done, issued) = (
                target.clone(),
                spec.clone(),
                records.clone(),
                done.clone(),
                issued.clone(),
            );
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64);
                let mut chooser = KeyChooser::new(spec.workload.distribution);
                let mut recorder = Recorder::default();
                let value = vec![b'u'; spec.value_bytes];
                while Instant::now() < deadline
                    && spec
                        .ops
                        .is_none_or(|n| issued.fetch_add(1, Ordering::Relaxed) < n)
                {
                    let op = spec.workload.pick(rng.gen::<f64>());
                    let count = records.load(Ordering::Relaxed);
                    let t = Instant::now();
                    let ok = match op {
                        OpKind::Read => {
                            let key = record_key(chooser.next(&mut rng, count));
                            target.get(c, key).await.is_ok()
                        }
                        OpKind::Update => {
                            let key = record_key(chooser.next(&mut rng, count));
                            target.put(c, key, value.clone()).await.is_ok()
                        }
                        OpKind::Insert => {
                            let n = records.fetch_add(1, Ordering::Relaxed);
                            target.put(c, record_key(n), value.clone()).await.is_ok()
                        }
                        OpKind::Scan => {
                            let key = record_key(chooser.next(&mut rng, count));
                            let limit = rng.gen_range(1..=spec.scan_length_max);
                            target.scan(c, key, limit).await.is_ok()
                        }
                        OpKind::Txn => {
                            // Distinct records: a transaction writes each key once.
                            let mut keys = std::collections::BTreeSet::new();
                            while keys.len() < spec.workload.txn_keys.min(count as usize) {
                                keys.insert(chooser.next(&mut rng, count));
                            }
                            let pairs = keys
                                .into_iter()
                                .map(|n| (record_key(n), value.clone()))
                                .collect();
                            target.txn(c, pairs).await.is_ok()
                        }
                        OpKind::ReadModifyWrite => {
                            let key = record_key(chooser.next(&mut rng, count));
                            match target.get(c, key.clone()).await {
                                Ok(_) => target.put(c, key, value.clone()).await.is_ok(),
                                Err(_) => false,
                            }
                        }
                    };
                    let micros = ok.then(|| t.elapsed().as_micros() as u64);
                    recorder.record(op, micros);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                recorder
            })
        })
        .collect();
    let mut all = Recorder::default();
    for c in clients {
        if let Ok(r) = c.await {
            all.merge(&r);
        }
    }
    ticker.abort();
    (all, started.elapsed().as_secs_f64())
}
