//! The resolver: on every region this store leads, it computes a *resolved timestamp* — a
//! timestamp at or below which no transaction can commit any more in the region — and
//! publishes it to every replica as a claim about the log (see [`crate::safe_ts`]), so that
//! followers serve stale reads at or below it from their own state.
//!
//! One round, per region: take `T` from the TSO; check, after that, that this peer leads
//! under a valid lease (the lease barrier: no message, no activity, so quiet regions stay
//! quiet), so the leader's applied state holds every write acknowledged before `T`;
//! look at the one-phase commits in flight (memory locks) and the locks in the region; read
//! the applied index `J` *after* that; publish `(J, min(T, oldest lock − 1))`.
//!
//! Why no commit at or below that timestamp can appear after `J`:
//! - a two-phase commit takes its commit_ts after every prewrite is acknowledged, i.e.
//!   applied on the leader. A commit_ts below `T` was taken before `T`, so its lock was in the
//!   state the round looked at — then the claim is below the lock's start_ts, hence below the
//!   commit_ts — unless the commit (which removes the lock) was applied by then, at or before
//!   `J`;
//! - a one-phase commit locks its keys in memory before taking its commit_ts and unlocks them
//!   once its writes are applied: a commit_ts below `T` means the memory lock was taken before
//!   the round looked (the claim is then below its start_ts), or the writes were applied
//!   before, at or before `J`.
//!
//! Locks that appear after the round with a start_ts at or below the claim belong to
//! transactions that take their commit_ts later, above `T`: stale reads ignore locks.

use crate::router::{PeerMsg, StoreRouter};
use crate::service::NodeContext;
use ringkv_proto::metapb::Region;
use ringkv_storage::{layout, KvEngine};
use ringkv_txn::MvccReader;
use std::time::Duration;

/// The claim a round makes from the TSO's timestamp and the start_ts of the locks it saw (in
/// storage and in memory): below every lock, at most `tso_ts`. None: nothing to claim.
pub fn resolve(tso_ts: u64, locks: impl IntoIterator<Item = u64>) -> Option<u64> {
    let claim = locks
        .into_iter()
        .map(|start_ts| start_ts.saturating_sub(1))
        .fold(tso_ts, u64::min);
    (claim > 0).then_some(claim)
}

/// The least time a round waits for one region's read barrier.
const MIN_REGION_TIMEOUT: Duration = Duration::from_secs(1);

/// Publishes resolved timestamps of the regions this store leads, every `interval`.
pub struct Resolver {
    ctx: NodeContext,
    interval: Duration,
}

impl Resolver {
    pub fn new(ctx: NodeContext, interval: Duration) -> Self {
        Resolver { ctx, interval }
    }

    pub async fn run(self) {
        loop {
            tokio::time::sleep(self.interval).await;
            self.round().await;
        }
    }

    /// One round over the regions led here; returns how many got a claim.
    pub async fn round(&self) -> usize {
        // Quiet regions are left alone: the read barrier would wake them. They keep the
        // claims made before they went quiet (see docs/design.md "Stale reads").
        let regions: Vec<Region> = {
            let meta = self.ctx.router.meta();
            meta.leaders
                .iter()
                .filter(|id| self.ctx.router.is_awake(**id))
                .filter_map(|id| meta.regions.get(id).cloned())
                .collect()
        };
        if regions.is_empty() {
            return 0;
        }
        let tso_ts = match self.ctx.tso.get().await {
            Ok(ts) => ts,
            Err(e) => {
                tracing::debug!(error = %e, "resolved ts: no timestamp from the TSO this round");
                return 0;
            }
        };
        // A round gives each region at least a second: on a loaded node a read barrier can take
        // longer than a short interval, and no claim would ever be made.
        let per_region = self.interval.max(MIN_REGION_TIMEOUT);
        let rounds = regions
            .into_iter()
            .map(|region| tokio::time::timeout(per_region, self.advance(region, tso_ts)));
        futures::future::join_all(rounds)
            .await
            .into_iter()
            .filter(|r| matches!(r, Ok(true)))
            .count()
    }

    /// Resolves one region at `tso_ts`; whether a claim was published.
    async fn advance(&self, region: Region, tso_ts: u64) -> bool {
        let router = &self.ctx.router;
        let (tx, rx) = tokio::sync::oneshot::channel();
        if router.send(region.id, PeerMsg::LeaseBarrier(tx)).is_err() {
            return false;
        }
        let region = match rx.await {
            Ok(Ok(region)) => region,
            _ => return false,
        };
        let memory = self
            .ctx
            .txn
            .memory_locks
            .oldest_in(&region.start_key, &region.end_key);
        let (kv, region_id) = (self.ctx.kv.clone(), region.id);
        let scanned = self
            .ctx
            .reads
            .run(move || claim(kv.as_ref(), &region, tso_ts, memory))
            .await;
        match scanned {
            Ok(Ok(Some(claim))) => claim.publish(router, region_id),
            Ok(Ok(None)) => false,
            Err(e) => {
                tracing::warn!(region = region_id, error = %e, "resolved ts: lock scan failed");
                false
            }
            Ok(Err(e)) => {
                tracing::warn!(region = region_id, error = %e, "resolved ts: cannot scan locks");
                false
            }
        }
    }
}

/// A leader's claim about its region's log (see [`crate::safe_ts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The region version the claim is about.
    pub version: u64,
    /// From this applied index on ...
    pub index: u64,
    /// ... nothing commits at or below this timestamp.
    pub ts: u64,
}

impl Claim {
    /// Hands the claim to the region's local leader, which keeps it and sends it to the other
    /// replicas; whether it could be queued.
    pub fn publish(self, router: &StoreRouter, region_id: u64) -> bool {
        let msg = PeerMsg::PublishSafeTs {
            version: self.version,
            index: self.index,
            ts: self.ts,
        };
        router.send(region_id, msg).is_ok()
    }
}

/// The claim a leader of `region` can make at `tso_ts`, once a read barrier it sent after
/// taking `tso_ts` has cleared: `memory_oldest` is the oldest start_ts of the one-phase commits
/// in flight on the region's keys, looked at after the barrier. The locks in storage are read
/// next and the applied index last (the order the argument above needs). None: nothing to
/// claim, or the region's apply state is gone (destroyed meanwhile).
pub fn claim(
    kv: &dyn KvEngine,
    region: &Region,
    tso_ts: u64,
    memory_oldest: Option<u64>,
) -> ringkv_txn::Result<Option<Claim>> {
    let stored = MvccReader::new(kv).oldest_lock_ts(&region.start_key, &region.end_key)?;
    let Some(state) = layout::read_apply_state(kv, region.id)? else {
        return Ok(None);
    };
    Ok(
        resolve(tso_ts, memory_oldest.into_iter().chain(stored)).map(|ts| Claim {
            version: region.region_epoch.unwrap_or_default().version,
            index: state.applied_index,
            ts,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_claim_stays_below_every_lock_and_at_most_the_tso_timestamp() {
        assert_eq!(resolve(100, []), Some(100));
        assert_eq!(resolve(100, [40, 70]), Some(39));
        assert_eq!(resolve(100, [200]), Some(100));
        assert_eq!(resolve(100, [1]), None, "nothing below a lock at 1");
        assert_eq!(resolve(0, []), None);
    }
}
