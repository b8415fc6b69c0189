//! The node's MVCC garbage collector: a background task that learns the GC safe point from the
//! placement driver and, on every region this store leads, drops the versions below it in
//! small batches (each one Raft command under the keys' latches, so foreground commands on
//! other keys never wait for it). Progress is kept per region: a region fully collected at a
//! safe point is not scanned again until the safe point moves, and a region that is only
//! partly done resumes where it stopped.

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
    /// Fully collected at this safe point.
    done_at: u64,
    /// Where the current pass goes on from.
    next: Option<Vec<u8>>,
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

    /// One pass over the regions this store leads; returns the versions dropped.
    pub async fn round(&mut self) -> usize {
        let ctx = self.service.context().clone();
        let safe_point = match ctx.pd.gc_safe_point().await {
            Ok(sp) => sp,
            Err(e) => {
                tracing::debug!(error = %e, "GC safe point unavailable; GC waits");
                return 0;
            }
        };
        let known = ctx
            .txn
            .gc_safe_point
            .fetch_max(safe_point, Ordering::AcqRel);
        let safe_point = safe_point.max(known);
        if safe_point == 0 {
            return 0;
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
        let mut removed_total = 0;
        for region in regions {
            let version = region.region_epoch.unwrap_or_default().version;
            let progress = self.progress.entry(region.id).or_default();
            if progress.version != version {
                *progress = RegionProgress {
                    version,
                    ..Default::default()
                };
            }
            if progress.done_at >= safe_point {
                continue;
            }
            let context = Context {
                region_id: region.id,
                region_epoch: region.region_epoch,
                replica_read: false,
            };
            let mut start = progress
                .next
                .clone()
                .unwrap_or_else(|| region.start_key.clone());
            for _ in 0..BATCHES_PER_REGION_ROUND {
                let outcome = self
                    .service
                    .gc_batch(context.clone(), start.clone(), &region.end_key, safe_point)
                    .await;
                match outcome {
                    Ok(TxnOutcome::Done((next, removed))) => {
                        removed_total += removed;
                        match next {
                            Some(next) => {
                                start = next.clone();
                                progress.next = Some(next);
                            }
                            None => {
                                progress.done_at = safe_point;
                                progress.next = None;
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
                "GC dropped old versions"
            );
        }
        removed_total
    }
}
