//! Split checks: measure a region's data and, past the thresholds, find the key that halves it.
//!
//! A check scans the region in the KV engine, so it runs on its own worker thread, never on a
//! raftstore thread. [`check_region`] is the scan (deterministic given the data); [`SplitChecker`]
//! is the worker that runs scans and reports back through the raftstore's mailbox.

use crate::router::{PeerMsg, StoreRouter};
use crossbeam::channel::{Sender, TrySendError};
use ringkv_proto::keys::split_boundary;
use ringkv_proto::metapb::Region;
use ringkv_storage::layout;
use ringkv_storage::{KvEngine, Result as StorageResult};
use std::sync::Arc;
use std::thread::JoinHandle;

/// When regions split. Defaults follow TiKV: split at 96 MiB or 960,000 keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitConfig {
    /// A region larger than this (keys plus values) is split in two halves.
    pub region_split_size_bytes: u64,
    /// A region with more keys than this is split in two halves.
    pub region_split_keys: u64,
    /// A leader checks its region after this many bytes were written to it since the last
    /// check.
    pub split_check_diff_bytes: u64,
    /// How often (in raftstore ticks) leaders consider a split check.
    pub split_check_ticks: u32,
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig {
            region_split_size_bytes: 96 * 1024 * 1024,
            region_split_keys: 960_000,
            split_check_diff_bytes: 6 * 1024 * 1024,
            split_check_ticks: 10,
        }
    }
}

/// Where a check found a region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitCheckOutcome {
    pub size_bytes: u64,
    pub keys: u64,
    /// The encoded key to split at, when the region is over a threshold and can be split.
    pub split_key: Option<Vec<u8>>,
}

/// Samples kept while scanning; past this the sampling interval doubles, so memory stays
/// bounded however large the region is.
const SAMPLES_MAX: usize = 1024;

struct Sample {
    /// Bytes and keys before `key`: the size of the left half if the split is at `key`.
    size_before: u64,
    keys_before: u64,
    key: Vec<u8>,
}

/// Samples of one column family's part of a region, in key order.
#[derive(Default)]
struct FamilyScan {
    size: u64,
    keys: u64,
    samples: Vec<Sample>,
}

/// Scans `region`'s data and decides whether and where to split it. Sizes and key counts are
/// over every column family; the split key halves the family holding most of the bytes (raw
/// data, or the write records of transactional data), which is where the region's weight is.
pub fn check_region(
    kv: &dyn KvEngine,
    region: &Region,
    cfg: &SplitConfig,
) -> StorageResult<SplitCheckOutcome> {
    let mut families = Vec::new();
    for (_, lo, hi) in layout::region_data_ranges(&region.start_key, &region.end_key) {
        let mut size_every = (cfg.region_split_size_bytes / 64).max(1);
        let mut keys_every = (cfg.region_split_keys / 64).max(1);
        let mut scan = FamilyScan::default();
        let (mut last_size, mut last_keys) = (0u64, 0u64);
        kv.scan(&lo, &hi, &mut |k, v| {
            let (size, keys) = (scan.size, scan.keys);
            if keys > 0 && (size - last_size >= size_every || keys - last_keys >= keys_every) {
                if let Some((_, encoded, _)) = layout::decode_data_key(k) {
                    scan.samples.push(Sample {
                        size_before: size,
                        keys_before: keys,
                        key: encoded,
                    });
                }
                (last_size, last_keys) = (size, keys);
                if scan.samples.len() > SAMPLES_MAX {
                    let mut i = 0;
                    scan.samples.retain(|_| {
                        i += 1;
                        i % 2 == 0
                    });
                    size_every *= 2;
                    keys_every *= 2;
                }
            }
            scan.size += (k.len() - 1 + v.len()) as u64;
            scan.keys += 1;
            true
        })?;
        families.push(scan);
    }
    let size: u64 = families.iter().map(|f| f.size).sum();
    let keys: u64 = families.iter().map(|f| f.keys).sum();
    let heaviest = families
        .into_iter()
        .max_by_key(|f| f.size)
        .unwrap_or_default();
    let samples = heaviest.samples;
    let (half_size, half_keys) = (heaviest.size / 2, heaviest.keys / 2);
    let by_size = size > cfg.region_split_size_bytes;
    let by_keys = keys > cfg.region_split_keys;
    let split_key = if by_size || by_keys {
        let distance = |s: &Sample| {
            if by_size {
                s.size_before.abs_diff(half_size)
            } else {
                s.keys_before.abs_diff(half_keys)
            }
        };
        samples
            .iter()
            .filter_map(|s| {
                let boundary = split_boundary(&s.key);
                // A boundary equal to the region start would leave the left half empty.
                let key = if boundary > region.start_key.as_slice() {
                    boundary
                } else if s.key.as_slice() > region.start_key.as_slice() {
                    s.key.as_slice()
                } else {
                    return None;
                };
                Some((distance(s), key))
            })
            .min_by_key(|(d, _)| *d)
            .map(|(_, k)| k.to_vec())
    } else {
        None
    };
    Ok(SplitCheckOutcome {
        size_bytes: size,
        keys,
        split_key,
    })
}

/// Measures `region` and finds the key that halves its data, whatever its size (an admin's
/// split order): a second scan samples at a fraction of the size the first one measured.
/// `split_key` is None when the region holds fewer than two keys.
pub fn halve_region(kv: &dyn KvEngine, region: &Region) -> StorageResult<SplitCheckOutcome> {
    let measured = check_region(
        kv,
        region,
        &SplitConfig {
            region_split_size_bytes: u64::MAX,
            region_split_keys: u64::MAX,
            ..SplitConfig::default()
        },
    )?;
    if measured.size_bytes == 0 {
        return Ok(measured);
    }
    check_region(
        kv,
        region,
        &SplitConfig {
            region_split_size_bytes: measured.size_bytes - 1,
            region_split_keys: u64::MAX,
            ..SplitConfig::default()
        },
    )
}

/// One check to run.
pub struct SplitCheckTask {
    pub region: Region,
    /// Find the halving key whatever the region's size (see [`halve_region`]).
    pub halve: bool,
}

fn run_check(
    kv: &dyn KvEngine,
    task: &SplitCheckTask,
    cfg: &SplitConfig,
) -> StorageResult<SplitCheckOutcome> {
    if task.halve {
        halve_region(kv, &task.region)
    } else {
        check_region(kv, &task.region, cfg)
    }
}

/// Runs split checks: on a worker thread in a node, inline in a simulation.
pub struct SplitChecker {
    tx: Option<Sender<SplitCheckTask>>,
    handle: Option<JoinHandle<()>>,
    /// Set for a checker that runs each check at once on the caller's thread.
    inline: Option<(Arc<dyn KvEngine>, SplitConfig, StoreRouter)>,
}

fn report(router: &StoreRouter, task: &SplitCheckTask, outcome: SplitCheckOutcome) {
    let msg = PeerMsg::SplitCheckResult {
        version: task.region.region_epoch.unwrap_or_default().version,
        outcome,
    };
    if router.send(task.region.id, msg).is_err() {
        tracing::debug!(
            region = task.region.id,
            "split check result dropped: mailbox full"
        );
    }
}

/// Checks waiting at most; more are skipped and retried at a later tick.
const QUEUE_MAX: usize = 1024;

impl SplitChecker {
    /// Starts the worker. Results go back to the region as [`PeerMsg::SplitCheckResult`].
    pub fn start(
        kv: Arc<dyn KvEngine>,
        cfg: SplitConfig,
        router: StoreRouter,
    ) -> std::io::Result<SplitChecker> {
        let (tx, rx) = crossbeam::channel::bounded::<SplitCheckTask>(QUEUE_MAX);
        let handle = std::thread::Builder::new()
            .name("split-check".into())
            .spawn(move || {
                for task in rx {
                    let outcome = match run_check(kv.as_ref(), &task, &cfg) {
                        Ok(o) => o,
                        Err(e) => {
                            // A read failure here is not fatal for the node: apply will hit the
                            // same disk and stop it if the fault is real.
                            tracing::error!(region = task.region.id, error = %e, "split check failed");
                            continue;
                        }
                    };
                    report(&router, &task, outcome);
                }
            })?;
        Ok(SplitChecker {
            tx: Some(tx),
            handle: Some(handle),
            inline: None,
        })
    }

    /// A checker that runs every check at once on the caller's thread (deterministic, for
    /// simulation).
    pub fn inline(kv: Arc<dyn KvEngine>, cfg: SplitConfig, router: StoreRouter) -> SplitChecker {
        SplitChecker {
            tx: None,
            handle: None,
            inline: Some((kv, cfg, router)),
        }
    }

    /// Queues a check; returns false if the queue is full (try again later).
    pub fn schedule(&self, task: SplitCheckTask) -> bool {
        if let Some((kv, cfg, router)) = &self.inline {
            match run_check(kv.as_ref(), &task, cfg) {
                Ok(outcome) => report(router, &task, outcome),
                Err(e) => {
                    tracing::error!(region = task.region.id, error = %e, "split check failed")
                }
            }
            return true;
        }
        match self.tx.as_ref().map(|tx| tx.try_send(task)) {
            Some(Ok(())) => true,
            Some(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) | None => false,
        }
    }
}

impl Drop for SplitChecker {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_proto::keys;
    use ringkv_storage::layout::{data_key, data_range, write_key};
    use ringkv_storage::{KvWriteBatch, MemKv};

    fn cfg(size: u64, keys: u64) -> SplitConfig {
        SplitConfig {
            region_split_size_bytes: size,
            region_split_keys: keys,
            ..Default::default()
        }
    }

    fn load(kv: &MemKv, n: usize, value_len: usize) {
        let mut batch = KvWriteBatch::default();
        for i in 0..n {
            let key = keys::encode(&keys::default_keyspace(), format!("k{i:06}").as_bytes());
            batch.put(data_key(&key), vec![7; value_len]);
        }
        kv.write(batch).unwrap();
    }

    fn count_below(kv: &MemKv, split: &[u8]) -> u64 {
        let mut n = 0;
        let (lo, hi) = data_range(b"", split);
        kv.scan(&lo, &hi, &mut |_, _| {
            n += 1;
            true
        })
        .unwrap();
        n
    }

    #[test]
    fn a_region_of_transactional_data_splits_at_the_middle_of_its_write_records() {
        let kv = MemKv::new();
        let mut batch = KvWriteBatch::default();
        let mut encoded: Vec<Vec<u8>> = (0..1000)
            .map(|i| keys::encode(&keys::default_keyspace(), format!("t{i:06}").as_bytes()))
            .collect();
        for key in &encoded {
            for ts in [10, 20] {
                batch.put(write_key(key, ts), vec![1; 20]);
            }
        }
        kv.write(batch).unwrap();
        let out = check_region(&kv, &Region::default(), &cfg(10_000, 1 << 20)).unwrap();
        assert_eq!(out.keys, 2000);
        let split = out.split_key.expect("over the size threshold");
        encoded.sort();
        let below = encoded
            .iter()
            .filter(|k| k.as_slice() < split.as_slice())
            .count();
        assert!(
            (400..=600).contains(&below),
            "{below} of 1000 keys below the split"
        );
    }

    #[test]
    fn halving_finds_the_middle_of_a_small_region_and_nothing_in_an_empty_one() {
        let kv = MemKv::new();
        assert_eq!(
            halve_region(&kv, &Region::default()).unwrap().split_key,
            None
        );
        load(&kv, 1, 10);
        assert_eq!(
            halve_region(&kv, &Region::default()).unwrap().split_key,
            None,
            "one key cannot be halved"
        );
        let kv = MemKv::new();
        load(&kv, 100, 10);
        // Far below any split threshold, yet halved when asked.
        let out = halve_region(&kv, &Region::default()).unwrap();
        assert_eq!(out.keys, 100);
        let split = out.split_key.expect("a halving key");
        let below = count_below(&kv, &split);
        assert!(
            (35..=65).contains(&below),
            "{below} of 100 keys below the split"
        );
    }

    #[test]
    fn small_region_is_measured_and_not_split() {
        let kv = MemKv::new();
        load(&kv, 100, 10);
        let out = check_region(&kv, &Region::default(), &cfg(1 << 20, 1000)).unwrap();
        assert_eq!(out.keys, 100);
        assert_eq!(
            out.size_bytes,
            100 * (keys::HASH_PREFIX_LEN as u64 + 7 + 10)
        );
        assert_eq!(out.split_key, None);
    }

    #[test]
    fn large_region_splits_near_its_middle_at_a_ring_position() {
        let kv = MemKv::new();
        load(&kv, 20_000, 100);
        let out = check_region(&kv, &Region::default(), &cfg(1 << 20, 1 << 30)).unwrap();
        let split = out.split_key.expect("over the size threshold");
        assert_eq!(split.len(), keys::HASH_PREFIX_LEN, "a ring position");
        let left = count_below(&kv, &split);
        assert!(
            (9_000..=11_000).contains(&left),
            "left half has {left} of 20000 keys"
        );
    }

    #[test]
    fn key_count_threshold_splits_too() {
        let kv = MemKv::new();
        load(&kv, 5_000, 1);
        let out = check_region(&kv, &Region::default(), &cfg(1 << 40, 1_000)).unwrap();
        let left = count_below(&kv, &out.split_key.expect("over the key threshold"));
        assert!((2_000..=3_000).contains(&left), "left half has {left}");
    }

    #[test]
    fn split_key_stays_inside_the_region() {
        let kv = MemKv::new();
        load(&kv, 5_000, 50);
        let first = keys::encode(&keys::default_keyspace(), b"k002000");
        let region = Region {
            start_key: split_boundary(&first).to_vec(),
            ..Default::default()
        };
        let out = check_region(&kv, &region, &cfg(1 << 10, 1 << 30)).unwrap();
        let split = out.split_key.expect("split");
        assert!(split.as_slice() > region.start_key.as_slice());
    }
}
