//! Component benchmarks (criterion): the pieces a write passes through, measured alone.
//!
//! `cargo bench -p ringkv-bench --bench components` (results in BENCHMARKS.md).
//! - `log/append_sync`: one raft-engine write carrying one 128-byte entry for each of 64 regions,
//!   synced: the group commit of one poll round.
//! - `kv/apply_batch`: one state-store write of 256 puts of 100-byte values (data only).
//! - `apply_pool/64_regions`: 64 regions' apply delegates, 16 put entries each, applied as one
//!   apply round over the in-memory engine (decode, checks, batch, apply states).
//! - `keys/encode_hash`: encoding a user key into the hash keyspace (ring position + key).
//! - `mvcc/prewrite_commit_2_keys`: a two-key transaction's prewrite and commit actions over
//!   the state store (conflict checks, then each action's writes as one batch), as a leader runs them.
//! - `mvcc/prewrite_check_10_keys`: the prewrite action alone (reads and checks, no write) for
//!   ten keys that each have one committed version.
//! - `mvcc/get/{1,10,100}_versions`: a read at a timestamp of a key with that many versions
//!   (the read lands in the middle of them).
//! - `placement/schedule_round/10000_regions`: one pass of the balance schedulers over 20
//!   stores, half of them holding every replica of 10,000 regions (view, then up to 64 replica
//!   moves and 64 leader transfers planned).
//! - `poll_round/{64,1024}_regions`: one round of the batch system (`SteppedStore::step`) on a
//!   store leading that many single-replica regions, each with one put waiting: mail, proposals,
//!   one log write for all, commit, apply, answers — the raftstore's CPU per round, over the
//!   in-memory engines.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use prost::Message as _;
use raft::eraftpb::Entry;
use ringkv_node::apply_pool::{apply_batch, ApplyDelegate};
use ringkv_node::router::StoreRouter;
use ringkv_proto::keys;
use ringkv_proto::metapb::{Peer, Region, RegionEpoch};
use ringkv_proto::raftpb::{request::Cmd, ApplyState, PutRequest, RaftCmdRequest, Request};
use ringkv_storage::{
    FjallKv, KvEngine, KvWriteBatch, MemKv, RaftEngineLog, RaftLogBatch, RaftLogEngine,
};

fn log_append_sync(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let log = RaftEngineLog::open(dir.path()).unwrap();
    let mut index = 0u64;
    let mut group = c.benchmark_group("log");
    group.throughput(Throughput::Elements(64));
    group.bench_function("append_sync", |b| {
        b.iter(|| {
            index += 1;
            let mut batch = RaftLogBatch::default();
            for region in 1..=64u64 {
                let entry = Entry {
                    index,
                    term: 1,
                    data: vec![7u8; 128].into(),
                    ..Default::default()
                };
                batch.append(region, &[entry]);
            }
            log.write(batch, true).unwrap();
        })
    });
    group.finish();
}

fn kv_apply_batch(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let kv = FjallKv::open(dir.path()).unwrap();
    let mut n = 0u64;
    let mut group = c.benchmark_group("kv");
    group.throughput(Throughput::Elements(256));
    group.bench_function("apply_batch", |b| {
        b.iter(|| {
            let mut batch = KvWriteBatch::default();
            for _ in 0..256 {
                n += 1;
                batch.put(format!("z{n:016}").into_bytes(), vec![b'v'; 100]);
            }
            kv.write(batch).unwrap();
        })
    });
    group.finish();
}

fn region(id: u64) -> Region {
    Region {
        id,
        start_key: format!("r{id:04}").into_bytes(),
        end_key: format!("r{:04}", id + 1).into_bytes(),
        region_epoch: Some(RegionEpoch {
            conf_ver: 1,
            version: 1,
        }),
        peers: vec![Peer {
            id: id * 10,
            store_id: 1,
            ..Default::default()
        }],
    }
}

fn apply_pool_round(c: &mut Criterion) {
    let kv = MemKv::new();
    let (router, _receivers) = StoreRouter::new(1024, 1024);
    let regions: Vec<Region> = (1..=64).map(region).collect();
    let mut next_index = 6u64;
    let mut group = c.benchmark_group("apply_pool");
    group.throughput(Throughput::Elements(64 * 16));
    group.bench_function("64_regions", |b| {
        b.iter_batched(
            || {
                let first = next_index;
                next_index += 16;
                regions
                    .iter()
                    .map(|r| {
                        let state = ApplyState {
                            applied_index: first - 1,
                            truncated_index: 5,
                            truncated_term: 5,
                            ..Default::default()
                        };
                        let mut d = ApplyDelegate::new(r.clone(), state, None, Vec::new());
                        let entries = (first..first + 16)
                            .map(|index| {
                                let mut key = r.start_key.clone();
                                key.extend_from_slice(&index.to_be_bytes());
                                let cmd = RaftCmdRequest {
                                    region_id: r.id,
                                    region_epoch: r.region_epoch,
                                    requests: vec![Request {
                                        cmd: Some(Cmd::Put(PutRequest {
                                            key,
                                            value: vec![b'v'; 100],
                                            ..Default::default()
                                        })),
                                    }],
                                    ..Default::default()
                                };
                                Entry {
                                    index,
                                    term: 6,
                                    data: cmd.encode_to_vec().into(),
                                    ..Default::default()
                                }
                            })
                            .collect();
                        d.push(entries, []);
                        d
                    })
                    .collect::<Vec<_>>()
            },
            |delegates| apply_batch(&kv, &router, delegates),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn key_encoding(c: &mut Criterion) {
    let keyspace = keys::default_keyspace();
    let user = b"user000000123456".to_vec();
    c.bench_function("keys/encode_hash", |b| {
        b.iter(|| keys::encode(&keyspace, std::hint::black_box(&user)))
    });
}

/// Runs `txn`'s writes as one state-store batch.
fn write_txn(kv: &FjallKv, txn: ringkv_txn::MvccTxn) {
    let mut batch = KvWriteBatch::default();
    ringkv_txn::write_modifies(&mut batch, txn.into_modifies());
    kv.write(batch).unwrap();
}

fn put_mutation(key: Vec<u8>) -> ringkv_proto::kvrpcpb::Mutation {
    ringkv_proto::kvrpcpb::Mutation {
        op: ringkv_proto::kvrpcpb::Op::Put as i32,
        key,
        value: vec![b'v'; 100],
    }
}

/// `keys` records, each committed once (start 1, commit 2).
fn mvcc_store(keys: u64) -> (tempfile::TempDir, FjallKv, Vec<Vec<u8>>) {
    use ringkv_txn::actions::prewrite;
    let dir = tempfile::tempdir().unwrap();
    let kv = FjallKv::open(dir.path()).unwrap();
    let encoded: Vec<Vec<u8>> = (0..keys)
        .map(|n| keys::encode(&keys::default_keyspace(), format!("user{n:012}").as_bytes()))
        .collect();
    for chunk in encoded.chunks(256) {
        let muts: Vec<_> = chunk.iter().cloned().map(put_mutation).collect();
        let reader = ringkv_txn::MvccReader::new(&kv);
        let txn = prewrite::prewrite(
            &reader,
            &prewrite::Prewrite {
                mutations: &muts,
                primary: &chunk[0],
                start_ts: 1,
                lock_ttl_ms: 3000,
                txn_size: muts.len() as u64,
                one_pc_commit_ts: Some(2),
            },
        )
        .unwrap();
        write_txn(&kv, txn);
    }
    (dir, kv, encoded)
}

fn mvcc_actions(c: &mut Criterion) {
    use ringkv_txn::actions::{commit, prewrite, read};
    let (_dir, kv, keys) = mvcc_store(10_000);
    let mut ts = 10u64;
    let mut next = 0usize;
    let mut group = c.benchmark_group("mvcc");
    group.throughput(Throughput::Elements(2));
    group.bench_function("prewrite_commit_2_keys", |b| {
        b.iter(|| {
            let pair = [
                keys[next % keys.len()].clone(),
                keys[(next + 1) % keys.len()].clone(),
            ];
            next += 2;
            let (start_ts, commit_ts) = (ts, ts + 1);
            ts += 2;
            let muts: Vec<_> = pair.iter().cloned().map(put_mutation).collect();
            let txn = prewrite::prewrite(
                &ringkv_txn::MvccReader::new(&kv),
                &prewrite::Prewrite {
                    mutations: &muts,
                    primary: &pair[0],
                    start_ts,
                    lock_ttl_ms: 3000,
                    txn_size: 2,
                    one_pc_commit_ts: None,
                },
            )
            .unwrap();
            write_txn(&kv, txn);
            let txn = commit::commit_keys(
                &ringkv_txn::MvccReader::new(&kv),
                start_ts,
                &pair,
                commit_ts,
            )
            .unwrap();
            write_txn(&kv, txn);
        })
    });
    group.throughput(Throughput::Elements(10));
    group.bench_function("prewrite_check_10_keys", |b| {
        b.iter(|| {
            let muts: Vec<_> = (0..10)
                .map(|i| put_mutation(keys[(next + i) % keys.len()].clone()))
                .collect();
            next += 10;
            let txn = prewrite::prewrite(
                &ringkv_txn::MvccReader::new(&kv),
                &prewrite::Prewrite {
                    mutations: &muts,
                    primary: &muts[0].key,
                    start_ts: u64::MAX / 2,
                    lock_ttl_ms: 3000,
                    txn_size: 10,
                    one_pc_commit_ts: None,
                },
            )
            .unwrap();
            std::hint::black_box(txn);
        })
    });
    group.throughput(Throughput::Elements(1));
    for versions in [1u64, 10, 100] {
        let key = keys::encode(
            &keys::default_keyspace(),
            format!("versions{versions}").as_bytes(),
        );
        for v in 0..versions {
            let (start_ts, commit_ts) = (1_000 + v * 10, 1_000 + v * 10 + 1);
            let txn = prewrite::prewrite(
                &ringkv_txn::MvccReader::new(&kv),
                &prewrite::Prewrite {
                    mutations: &[put_mutation(key.clone())],
                    primary: &key,
                    start_ts,
                    lock_ttl_ms: 3000,
                    txn_size: 1,
                    one_pc_commit_ts: Some(commit_ts),
                },
            )
            .unwrap();
            write_txn(&kv, txn);
        }
        let read_ts = 1_000 + versions * 5 + 2;
        group.bench_function(format!("get/{versions}_versions"), |b| {
            b.iter(|| {
                let v = read::get(
                    &ringkv_txn::MvccReader::new(&kv),
                    &key,
                    read_ts,
                    read::Locks::Check(&[]),
                )
                .unwrap();
                std::hint::black_box(v)
            })
        });
    }
    group.finish();
}

struct NoTransport;

impl ringkv_node::raftstore::RaftTransport for NoTransport {
    fn send_all(&self, _: Vec<ringkv_proto::raftpb::RaftMessage>) {}
    fn send_snapshot(
        &self,
        _: ringkv_proto::raftpb::RaftMessage,
        _: ringkv_node::transport::SnapshotReport,
    ) {
    }
}

/// A store leading `n` single-replica regions, all elected; with the receiver of its events
/// (kept alive so reports to placement have somewhere to go).
type SingleStore = (
    ringkv_node::raftstore::SteppedStore,
    Vec<Region>,
    tokio::sync::mpsc::Receiver<ringkv_node::raftstore::StoreEvent>,
);

fn single_store(n: u64) -> SingleStore {
    use ringkv_node::raftstore::{RaftStoreConfig, SteppedStore, StoreContext};
    use ringkv_node::router::StoreMsg;
    use std::sync::Arc;
    let (router, receivers) = StoreRouter::new(1 << 16, 1 << 12);
    let kv: Arc<dyn KvEngine> = Arc::new(MemKv::new());
    let (events, events_rx) =
        ringkv_node::raftstore::StoreEvents::channel(ringkv_node::raftstore::STORE_EVENTS_MAX);
    let cfg = RaftStoreConfig {
        tick_interval: std::time::Duration::from_millis(100),
        ..RaftStoreConfig::default()
    };
    let ctx = StoreContext {
        store_id: 1,
        log: Arc::new(ringkv_storage::MemLogEngine::new()),
        kv: kv.clone(),
        // One store makes no snapshots; the directory stays empty.
        snapshots: ringkv_node::snapshot::SnapshotDir::open(
            &std::env::temp_dir().join("ringkv-bench-snapshots"),
        )
        .expect("snapshot directory"),
        transport: Arc::new(NoTransport),
        events,
        split_checker: ringkv_node::split_check::SplitChecker::inline(
            kv,
            cfg.split,
            router.clone(),
        ),
        clock: Arc::new(ringkv_node::clock::ManualClock::default()),
        cfg,
        router,
    };
    let mut store = SteppedStore::open(ctx, receivers).unwrap();
    let regions: Vec<Region> = (1..=n).map(region).collect();
    for r in &regions {
        let _ = store
            .router()
            .send_control(StoreMsg::CreateBootstrapPeer(r.clone()));
    }
    // Single voters elect themselves within a couple of election timeouts.
    for _ in 0..60 {
        store.tick();
        store.step();
    }
    (store, regions, events_rx)
}

fn poll_round(c: &mut Criterion) {
    let mut group = c.benchmark_group("poll_round");
    for n in [64u64, 1024] {
        let (mut store, regions, _events) = single_store(n);
        let mut seq = 0u64;
        group.throughput(Throughput::Elements(n));
        group.bench_function(format!("{n}_regions"), |b| {
            b.iter(|| {
                let mut answers = Vec::with_capacity(regions.len());
                for r in &regions {
                    seq += 1;
                    let mut key = r.start_key.clone();
                    key.extend_from_slice(&seq.to_be_bytes());
                    let cmd = RaftCmdRequest {
                        region_id: r.id,
                        region_epoch: r.region_epoch,
                        requests: vec![Request {
                            cmd: Some(Cmd::Put(PutRequest {
                                key,
                                value: vec![b'v'; 100],
                                ..Default::default()
                            })),
                        }],
                        ..Default::default()
                    };
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    store.router().send_command(cmd, tx);
                    answers.push(rx);
                }
                store.step();
                for mut rx in answers {
                    assert!(
                        matches!(rx.try_recv(), Ok(Ok(_))),
                        "every put is answered in the round"
                    );
                }
            })
        });
    }
    group.finish();
}

/// One pass of the balance schedulers (`PlacementCore::schedule`) over a skewed cluster: 20
/// stores, 10 of them holding every replica of 10,000 regions; up to 64 moves and 64 leader
/// transfers planned.
fn placement_schedule_round(c: &mut Criterion) {
    use ringkv_placement::balance::BalanceConfig;
    use ringkv_placement::scheduling_sim::{skewed_core, SimSpec};
    let spec = SimSpec {
        stores: 20,
        initial_stores: 10,
        regions: 10_000,
        balance: BalanceConfig {
            leader_schedule_limit: 64,
            region_schedule_limit: 64,
            ..BalanceConfig::default()
        },
        rounds_max: 1,
    };
    let mut group = c.benchmark_group("placement");
    group.sample_size(20);
    group.bench_function("schedule_round/10000_regions", |b| {
        b.iter_batched(
            || skewed_core(&spec),
            |(mut core, now)| {
                let mut w = ringkv_placement::cluster::MetaWrites::default();
                let planned = core.schedule(now, &mut w);
                assert!(!planned.is_empty(), "a skewed cluster gets operators");
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(
    components,
    placement_schedule_round,
    log_append_sync,
    kv_apply_batch,
    apply_pool_round,
    key_encoding,
    mvcc_actions,
    poll_round
);
criterion_main!(components);
