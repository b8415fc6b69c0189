//! Component benchmarks (criterion): the pieces a write passes through, measured alone.
//!
//! `cargo bench -p ringkv-bench --bench components` (results in BENCHMARKS.md).
//! - `log/append_sync`: one raft-engine write carrying one 128-byte entry for each of 64 regions,
//!   synced: the group commit of one poll round.
//! - `kv/apply_batch`: one sled write of 256 puts of 100-byte values (data only).
//! - `apply_pool/64_regions`: 64 regions' apply delegates, 16 put entries each, applied as one
//!   apply round over the in-memory engine (decode, checks, batch, apply states).
//! - `keys/encode_hash`: encoding a user key into the hash keyspace (ring position + key).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use prost::Message as _;
use raft::eraftpb::Entry;
use ringkv_node::apply_pool::{apply_batch, ApplyDelegate};
use ringkv_node::router::StoreRouter;
use ringkv_proto::keys;
use ringkv_proto::metapb::{Peer, Region, RegionEpoch};
use ringkv_proto::raftpb::{request::Cmd, ApplyState, PutRequest, RaftCmdRequest, Request};
use ringkv_storage::{
    KvEngine, KvWriteBatch, MemKv, RaftEngineLog, RaftLogBatch, RaftLogEngine, SledKv,
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
    let kv = SledKv::open(dir.path()).unwrap();
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
                                    admin: None,
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

criterion_group!(
    components,
    log_append_sync,
    kv_apply_batch,
    apply_pool_round,
    key_encoding
);
criterion_main!(components);
