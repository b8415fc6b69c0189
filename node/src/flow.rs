//! Read and write flow: bytes (keys plus values) and keys read from and written to each region
//! this store leads, counted where they happen (reads in the KV service once served, writes
//! where a leader's apply results come back). Region heartbeats drain a region's counts (the
//! placement driver turns them into rates for the hot-region scheduler); store heartbeats read
//! the store's running totals.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Regions counted at most; past this, flow of further regions is not counted until
/// heartbeats drain some (a bound, never reached with the regions one store holds).
const REGIONS_MAX: usize = 1 << 20;

/// Counts since the last drain.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlowCounts {
    pub read_bytes: u64,
    pub read_keys: u64,
    pub written_bytes: u64,
    pub written_keys: u64,
}

impl FlowCounts {
    fn add(&mut self, other: FlowCounts) {
        self.read_bytes = self.read_bytes.saturating_add(other.read_bytes);
        self.read_keys = self.read_keys.saturating_add(other.read_keys);
        self.written_bytes = self.written_bytes.saturating_add(other.written_bytes);
        self.written_keys = self.written_keys.saturating_add(other.written_keys);
    }
}

#[derive(Default)]
struct RegionEntry {
    counts: FlowCounts,
    /// When the counts were last drained (None: never, so the interval is unknown).
    since_ms: Option<u64>,
}

/// One store's flow counters, shared by the KV service and the raftstore.
#[derive(Default)]
pub struct FlowRecorder {
    regions: Mutex<HashMap<u64, RegionEntry>>,
    read_bytes: AtomicU64,
    read_keys: AtomicU64,
    written_bytes: AtomicU64,
    written_keys: AtomicU64,
}

impl FlowRecorder {
    fn record(&self, region_id: u64, counts: FlowCounts) {
        if counts == FlowCounts::default() {
            return;
        }
        self.read_bytes
            .fetch_add(counts.read_bytes, Ordering::Relaxed);
        self.read_keys
            .fetch_add(counts.read_keys, Ordering::Relaxed);
        self.written_bytes
            .fetch_add(counts.written_bytes, Ordering::Relaxed);
        self.written_keys
            .fetch_add(counts.written_keys, Ordering::Relaxed);
        let mut regions = self.regions.lock();
        if regions.len() >= REGIONS_MAX && !regions.contains_key(&region_id) {
            return;
        }
        regions.entry(region_id).or_default().counts.add(counts);
    }

    /// A read served from `region_id`: `bytes` of keys and values returned, `keys` of them.
    pub fn record_read(&self, region_id: u64, bytes: u64, keys: u64) {
        self.record(
            region_id,
            FlowCounts {
                read_bytes: bytes,
                read_keys: keys,
                ..Default::default()
            },
        );
    }

    /// Writes a leader applied to `region_id`.
    pub fn record_write(&self, region_id: u64, bytes: u64, keys: u64) {
        self.record(
            region_id,
            FlowCounts {
                written_bytes: bytes,
                written_keys: keys,
                ..Default::default()
            },
        );
    }

    /// The region's counts since the last drain and the milliseconds they cover (0: unknown,
    /// the first drain); counting starts again from `now_ms`.
    pub fn drain_region(&self, region_id: u64, now_ms: u64) -> (FlowCounts, u64) {
        let mut regions = self.regions.lock();
        let entry = regions.entry(region_id).or_default();
        let counts = std::mem::take(&mut entry.counts);
        let interval_ms = entry
            .since_ms
            .map_or(0, |since| now_ms.saturating_sub(since));
        entry.since_ms = Some(now_ms);
        (counts, interval_ms)
    }

    /// Forgets a region this store no longer holds.
    pub fn forget_region(&self, region_id: u64) {
        self.regions.lock().remove(&region_id);
    }

    /// Running totals over every region since the store started.
    pub fn store_totals(&self) -> FlowCounts {
        FlowCounts {
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            read_keys: self.read_keys.load(Ordering::Relaxed),
            written_bytes: self.written_bytes.load(Ordering::Relaxed),
            written_keys: self.written_keys.load(Ordering::Relaxed),
        }
    }
}

/// Per-second rates between two readings of [`FlowRecorder::store_totals`] `elapsed_ms` apart.
pub fn rates(before: FlowCounts, after: FlowCounts, elapsed_ms: u64) -> FlowCounts {
    let per_sec = |a: u64, b: u64| {
        if elapsed_ms == 0 {
            0
        } else {
            (b.saturating_sub(a) as u128 * 1000 / elapsed_ms as u128) as u64
        }
    };
    FlowCounts {
        read_bytes: per_sec(before.read_bytes, after.read_bytes),
        read_keys: per_sec(before.read_keys, after.read_keys),
        written_bytes: per_sec(before.written_bytes, after.written_bytes),
        written_keys: per_sec(before.written_keys, after.written_keys),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_drain_what_was_counted_since_their_last_report() {
        let flow = FlowRecorder::default();
        flow.record_read(1, 100, 2);
        flow.record_write(1, 50, 1);
        flow.record_read(2, 7, 1);
        let (counts, interval) = flow.drain_region(1, 1_000);
        assert_eq!(
            counts,
            FlowCounts {
                read_bytes: 100,
                read_keys: 2,
                written_bytes: 50,
                written_keys: 1
            }
        );
        assert_eq!(
            interval, 0,
            "the first drain does not know when counting began"
        );
        flow.record_write(1, 10, 1);
        let (counts, interval) = flow.drain_region(1, 3_500);
        assert_eq!((counts.written_bytes, interval), (10, 2_500));
        assert_eq!(flow.drain_region(1, 4_000).0, FlowCounts::default());
        let totals = flow.store_totals();
        assert_eq!((totals.read_bytes, totals.written_bytes), (107, 60));
        flow.forget_region(2);
        assert_eq!(flow.drain_region(2, 5_000).0, FlowCounts::default());
    }

    #[test]
    fn store_rates_are_per_second() {
        let before = FlowCounts::default();
        let after = FlowCounts {
            read_bytes: 5_000,
            read_keys: 50,
            written_bytes: 1_000,
            written_keys: 10,
        };
        let r = rates(before, after, 10_000);
        assert_eq!((r.read_bytes, r.read_keys, r.written_bytes), (500, 5, 100));
        assert_eq!(rates(before, after, 0), FlowCounts::default());
    }
}
