//! The timestamp oracle: strictly increasing timestamps `physical_ms << 18 | logical`.
//!
//! Before handing out a timestamp at or past the persisted upper bound, the allocator asks the
//! edge to persist a new bound `save_window_ms` ahead. After a restart it starts at the persisted
//! bound, so no timestamp is ever handed out twice or goes back, whatever the clock does.

pub use ringkv_proto::tso::LOGICAL_BITS;
use ringkv_proto::tso::LOGICAL_MAX;

/// Timestamps one request may take at most (`ringkv_proto::limits::TSO_COUNT_MAX`). Far below
/// what one millisecond holds, so no request can push the TSO ahead of the clock by itself.
pub const TSO_BATCH_MAX: u32 = ringkv_proto::limits::TSO_COUNT_MAX;

/// Packs a timestamp into the u64 that transactions use.
pub fn compose_ts(physical_ms: i64, logical: i64) -> u64 {
    ringkv_proto::tso::compose(physical_ms as u64, logical as u64)
}

/// A batch of timestamps: `count` of them, ending at `(physical_ms, logical)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TsBatch {
    pub physical_ms: i64,
    pub logical: i64,
    pub count: u32,
}

/// The TSO core. Time is an input.
#[derive(Debug)]
pub struct Tso {
    physical_ms: i64,
    logical: i64,
    /// Persisted: no timestamp with `physical_ms >= limit_ms` may be handed out before a larger
    /// limit is persisted.
    limit_ms: i64,
    save_window_ms: i64,
}

impl Tso {
    /// Starts after a (re)start: every timestamp handed out before was below `saved_limit_ms`.
    pub fn new(saved_limit_ms: i64, save_window_ms: i64) -> Self {
        assert!(save_window_ms > 0, "TSO save window must be positive");
        Tso {
            physical_ms: saved_limit_ms,
            logical: 0,
            limit_ms: saved_limit_ms,
            save_window_ms,
        }
    }

    pub fn limit_ms(&self) -> i64 {
        self.limit_ms
    }

    /// Takes `count` timestamps at time `now_ms`. Returns the batch and, when the persisted limit
    /// must move first, the new limit to persist (durably, before replying).
    /// The last timestamp handed out (0 before the first).
    pub fn last(&self) -> u64 {
        compose_ts(self.physical_ms, self.logical)
    }

    pub fn allocate(&mut self, count: u32, now_ms: i64) -> (TsBatch, Option<i64>) {
        assert!(
            (1..=TSO_BATCH_MAX).contains(&count),
            "TSO batch of {count} outside 1..={TSO_BATCH_MAX}"
        );
        let before = (self.physical_ms, self.logical);
        let mut physical = self.physical_ms.max(now_ms);
        let mut logical = if physical == self.physical_ms {
            self.logical
        } else {
            0
        };
        if logical + i64::from(count) > LOGICAL_MAX as i64 {
            physical += 1;
            logical = 0;
        }
        logical += i64::from(count);
        self.physical_ms = physical;
        self.logical = logical;
        assert!(
            (physical, logical) > before,
            "timestamps go back: {before:?} -> {:?}",
            (physical, logical)
        );
        let new_limit = if physical >= self.limit_ms {
            self.limit_ms = physical + self.save_window_ms;
            Some(self.limit_ms)
        } else {
            None
        };
        (
            TsBatch {
                physical_ms: physical,
                logical,
                count,
            },
            new_limit,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last(b: TsBatch) -> u64 {
        compose_ts(b.physical_ms, b.logical)
    }

    #[test]
    fn strictly_increasing_even_when_clock_goes_back() {
        let mut tso = Tso::new(0, 3000);
        let mut prev = 0;
        for now in [100, 100, 50, 100, 101, 10, 5000, 4000] {
            let (b, _) = tso.allocate(10, now);
            let first = last(b) - u64::from(b.count) + 1;
            assert!(first > prev, "batch starting {first} after {prev}");
            prev = last(b);
        }
    }

    #[test]
    fn logical_overflow_moves_physical() {
        let mut tso = Tso::new(0, 3000);
        // Fill the millisecond until the next batch no longer fits in it.
        let fit = LOGICAL_MAX / u64::from(TSO_BATCH_MAX);
        for _ in 0..fit - 1 {
            tso.allocate(TSO_BATCH_MAX, 100);
        }
        let (a, _) = tso.allocate(TSO_BATCH_MAX, 100);
        let (b, _) = tso.allocate(TSO_BATCH_MAX, 100);
        assert_eq!(a.physical_ms, 100);
        assert_eq!(b.physical_ms, 101);
        assert!(last(b) > last(a));
    }

    #[test]
    fn limit_is_persisted_before_use_and_restart_never_goes_back() {
        let mut tso = Tso::new(0, 3000);
        let (_, limit) = tso.allocate(1, 1000);
        assert_eq!(limit, Some(4000));
        let (b, limit) = tso.allocate(1, 2000);
        assert_eq!(limit, None);
        // Restart from the persisted limit with a clock that went back.
        let mut restarted = Tso::new(4000, 3000);
        let (c, limit) = restarted.allocate(1, 1500);
        assert!(last(c) > last(b));
        assert_eq!(limit, Some(7000));
    }
}
