//! The real engines against their in-memory twins (the model), with random operations and random
//! restarts (close and reopen from disk). Seeded: a failure prints the seed to replay it.

use raft::eraftpb::{Entry, HardState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv_storage::*;
use std::sync::Arc;

fn entry(index: u64, term: u64, rng: &mut StdRng) -> Entry {
    let len = rng.gen_range(0..200);
    Entry {
        index,
        term,
        data: (0..len)
            .map(|_| rng.gen::<u8>())
            .collect::<Vec<u8>>()
            .into(),
        ..Default::default()
    }
}

fn compare_logs(real: &dyn RaftLogEngine, model: &dyn RaftLogEngine, regions: &[u64], seed: u64) {
    for &r in regions {
        assert_eq!(
            real.first_index(r),
            model.first_index(r),
            "seed {seed} region {r} first"
        );
        assert_eq!(
            real.last_index(r),
            model.last_index(r),
            "seed {seed} region {r} last"
        );
        assert_eq!(
            real.hard_state(r).unwrap(),
            model.hard_state(r).unwrap(),
            "seed {seed} region {r} hs"
        );
        if let (Some(f), Some(l)) = (model.first_index(r), model.last_index(r)) {
            assert_eq!(
                real.entries(r, f, l + 1, None).unwrap(),
                model.entries(r, f, l + 1, None).unwrap(),
                "seed {seed} region {r} entries"
            );
        }
    }
}

#[test]
fn raft_engine_log_matches_model_across_restarts() {
    for seed in 0..8u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let mut real = RaftEngineLog::open(dir.path()).unwrap();
        let model = MemLogEngine::new();
        let regions = [1u64, 2, 3];
        let mut last = [0u64; 3];
        let mut first = [1u64; 3];
        let mut term = [1u64; 3];
        for step in 0..300 {
            let mut batch_real = RaftLogBatch::default();
            let mut batch_model = RaftLogBatch::default();
            for (i, &r) in regions.iter().enumerate() {
                if rng.gen_bool(0.04) {
                    // A snapshot arrived: the log restarts after index `snap`.
                    let snap = last[i] + rng.gen_range(1..20);
                    batch_real.clean(r);
                    batch_model.clean(r);
                    let hs = HardState {
                        term: term[i],
                        commit: snap,
                        ..Default::default()
                    };
                    batch_real.set_hard_state(r, &hs);
                    batch_model.set_hard_state(r, &hs);
                    first[i] = snap + 1;
                    last[i] = snap;
                }
                if rng.gen_bool(0.6) {
                    // Append, sometimes overwriting a suffix (a new leader's entries).
                    let start = if last[i] >= first[i] && rng.gen_bool(0.2) {
                        term[i] += 1;
                        rng.gen_range(first[i]..=last[i])
                    } else {
                        last[i] + 1
                    };
                    let n = rng.gen_range(1..5);
                    let entries: Vec<Entry> = (start..start + n)
                        .map(|idx| entry(idx, term[i], &mut rng))
                        .collect();
                    batch_real.append(r, &entries);
                    batch_model.append(r, &entries);
                    last[i] = start + n - 1;
                }
                if rng.gen_bool(0.3) {
                    let hs = HardState {
                        term: term[i],
                        commit: last[i] / 2,
                        ..Default::default()
                    };
                    batch_real.set_hard_state(r, &hs);
                    batch_model.set_hard_state(r, &hs);
                }
            }
            real.write(batch_real, true).unwrap();
            model.write(batch_model, true).unwrap();
            if rng.gen_bool(0.05) {
                let i = rng.gen_range(0..3);
                if last[i] > first[i] + 2 {
                    let to = rng.gen_range(first[i]..last[i]);
                    real.compact_to(regions[i], to).unwrap();
                    model.compact_to(regions[i], to).unwrap();
                    first[i] = to;
                }
            }
            if rng.gen_bool(0.05) {
                drop(real);
                real = RaftEngineLog::open(dir.path()).unwrap();
            }
            if step % 25 == 0 {
                compare_logs(&real, &model, &regions, seed);
            }
        }
        drop(real);
        let real = RaftEngineLog::open(dir.path()).unwrap();
        compare_logs(&real, &model, &regions, seed);
    }
}

#[test]
fn fjall_kv_matches_model_across_restarts() {
    // A reopen waits out fjall's background threads (up to 250 ms): few seeds, some reopens.
    for seed in 0..4u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let mut real = FjallKv::open(dir.path()).unwrap();
        let model = MemKv::new();
        for _ in 0..400 {
            let mut batch = KvWriteBatch::default();
            for _ in 0..rng.gen_range(1..8) {
                let key = vec![b'z', rng.gen_range(0..40u8)];
                if rng.gen_bool(0.7) {
                    batch.put(key, vec![rng.gen(); rng.gen_range(0..20)]);
                } else {
                    batch.delete(key);
                }
            }
            real.write(batch.clone()).unwrap();
            model.write(batch).unwrap();
            if rng.gen_bool(0.03) {
                real.flush().unwrap();
                drop(real);
                real = FjallKv::open(dir.path()).unwrap();
            }
        }
        let mut seen = std::collections::BTreeMap::new();
        real.scan(b"z", b"{", &mut |k, v| {
            seen.insert(k.to_vec(), v.to_vec());
            true
        })
        .unwrap();
        assert_eq!(seen, model.dump(), "seed {seed}");
    }
}

#[test]
fn peer_storage_reloads_what_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let region = ringkv_proto::metapb::Region {
        id: 7,
        region_epoch: Some(ringkv_proto::metapb::RegionEpoch {
            conf_ver: 1,
            version: 1,
        }),
        peers: vec![ringkv_proto::metapb::Peer {
            id: 8,
            store_id: 1,
            role: 0,
        }],
        ..Default::default()
    };
    let kv = FjallKv::open(&dir.path().join("kv")).unwrap();
    let log: Arc<dyn RaftLogEngine> =
        Arc::new(RaftEngineLog::open(&dir.path().join("raft")).unwrap());
    let (mut kvb, mut logb) = (KvWriteBatch::default(), RaftLogBatch::default());
    let mut ps = PeerStorage::create_at_bootstrap(region.clone(), log.clone(), &mut kvb, &mut logb);
    log.write(logb, true).unwrap();
    kv.write(kvb).unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    let entries: Vec<Entry> = (6..16).map(|i| entry(i, 6, &mut rng)).collect();
    let mut b = RaftLogBatch::default();
    ps.append(&entries, &mut b);
    let hs = HardState {
        term: 6,
        commit: 12,
        ..Default::default()
    };
    ps.set_hard_state(&hs, &mut b);
    log.write(b, true).unwrap();
    use raft::Storage;
    assert_eq!(ps.term(RAFT_INIT_LOG_INDEX).unwrap(), RAFT_INIT_LOG_TERM);
    drop(ps);
    let reloaded = PeerStorage::load(region, &kv, log).unwrap();
    assert_eq!(reloaded.last_index().unwrap(), 15);
    assert_eq!(reloaded.first_index().unwrap(), 6);
    assert_eq!(reloaded.term(10).unwrap(), 6);
    assert_eq!(reloaded.initial_state().unwrap().hard_state.commit, 12);
    assert_eq!(
        reloaded
            .entries(6, 16, None, raft::GetEntriesContext::empty(false))
            .unwrap(),
        entries
    );
}
