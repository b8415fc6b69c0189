//! The node's MVCC garbage collector: a background task that learns the GC safe point from the
//! placement driver and, on every region this store leads, drops the versions below it in
//! small batches (each one Raft command under the keys' latches, so foreground commands on
//! other keys never wait for it).
//!
//! It tracks what it has cleaned, so idle data is not scanned again and again: after a full
//! pass over a region at safe point S every key has at most one version at or below S, so new
//! garbage can only appear once the safe point passes a version above S. The worker remembers
//! the oldest such version it saw, and the oldest this node wrote since (`TxnContext::written`),
//! and rescans the region only when the safe point reaches one of them. A pass cut short
//! resumes where it stopped.

use crate::service::{KvService, TxnOutcome};
use ringkv_proto::kvrpcpb::Context;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Batches one region gets per round before the others have their turn.
const BATCHES_PER_REGION_ROUND: usize = 16;

#[derive(Default)]
struct RegionProgress {
    /// The region version the progress is for (a split or merge starts over).
    version: u64,
    /// Whether a full pass was done at `done_at`.
    passed: bool,
    done_at: u64,
    /// No garbage can appear before the safe point reaches this (None: none can appear
    /// until something is written).
    rescan_at: Option<u64>,
    /// Where the pass under way goes on from, and the oldest version above its safe point
    /// seen so far.
    next: Option<Vec<u8>>,
    oldest_above: Option<u64>,
}

impl RegionProgress {
    fn due(&self, safe_point: u64) -> bool {
        !self.passed || self.next.is_some() || self.rescan_at.is_some_and(|ts| ts <= safe_point)
    }
}

fn min_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

pub struct GcWorker {
    service: KvService,
    interval: Duration,
    progress: HashMap<u64, RegionProgress>,
}

impl GcWorker {
    pub fn new(service: KvService, interval: Duration) -> Self {
        GcWorker {
            service,
            interval,
            progress: HashMap::new(),
        }
    }

    pub async fn run(mut self) {
        loop {
            tokio::time::sleep(self.interval).await;
            self.round().await;
        }
    }

    /// One pass over the regions this store leads; returns the versions dropped and the
    /// regions scanned.
    pub async fn round(&mut self) -> (usize, usize) {
        let ctx = self.service.context().clone();
        let safe_point = match ctx.pd.gc_safe_point().await {
            Ok(sp) => sp,
            Err(e) => {
                tracing::debug!(error = %e, "GC safe point unavailable; GC waits");
                return (0, 0);
            }
        };
        let known = ctx
            .txn
            .gc_safe_point
            .fetch_max(safe_point, Ordering::AcqRel);
        let safe_point = safe_point.max(known);
        if safe_point == 0 {
            return (0, 0);
        }
        let regions: Vec<_> = {
            let meta = ctx.router.meta();
            meta.leaders
                .iter()
                .filter_map(|id| meta.regions.get(id).cloned())
                .collect()
        };
        self.progress
            .retain(|id, _| regions.iter().any(|r| r.id == *id));
        let (mut removed_total, mut scanned) = (0, 0);
        for region in regions {
            let version = region.region_epoch.unwrap_or_default().version;
            let written = ctx.txn.written.lock().remove(&region.id);
            let progress = self.progress.entry(region.id).or_default();
            if progress.version != version {
                *progress = RegionProgress {
                    version,
                    ..Default::default()
                };
            }
            progress.rescan_at = min_opt(progress.rescan_at, written);
            if !progress.due(safe_point) {
                continue;
            }
            scanned += 1;
            if progress.next.is_none() {
                // A new pass; what was due is now being looked at.
                progress.rescan_at = None;
                progress.oldest_above = None;
            }
            let context = Context {
                region_id: region.id,
                region_epoch: region.region_epoch,
                replica_read: false,
                stale_read: false,
                ..Default::default()
            };
            let mut start = progress
                .next
                .clone()
                .unwrap_or_else(|| region.start_key.clone());
            for _ in 0..BATCHES_PER_REGION_ROUND {
                let outcome = self
                    .service
                    .gc_batch(context, start.clone(), &region.end_key, safe_point)
                    .await;
                match outcome {
                    Ok(TxnOutcome::Done(batch)) => {
                        removed_total += batch.removed;
                        progress.oldest_above = min_opt(progress.oldest_above, batch.oldest_above);
                        match batch.next {
                            Some(next) => {
                                start = next.clone();
                                progress.next = Some(next);
                            }
                            None => {
                                progress.passed = true;
                                progress.done_at = safe_point;
                                progress.next = None;
                                progress.rescan_at =
                                    min_opt(progress.rescan_at, progress.oldest_above);
                                break;
                            }
                        }
                    }
                    Ok(TxnOutcome::Region(e)) => {
                        tracing::debug!(region = region.id, error = %e.message, "GC of region skipped");
                        break;
                    }
                    Ok(TxnOutcome::Txn(e)) => {
                        tracing::warn!(region = region.id, error = %e, "GC batch refused");
                        break;
                    }
                    Err(status) => {
                        tracing::warn!(region = region.id, error = %status, "GC batch failed");
                        break;
                    }
                }
                tokio::task::yield_now().await;
            }
        }
        if removed_total > 0 {
            tracing::info!(
                safe_point,
                versions = removed_total,
                regions = scanned,
                "GC dropped old versions"
            );
        }
        (removed_total, scanned)
    }
}
