//! The clock leader leases are measured with: monotonic milliseconds. A node uses its own
//! monotonic clock; a simulation sets each store's clock by hand, so it can run them at
//! different rates and stop them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Monotonic time in milliseconds from an arbitrary start. Never goes back.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The process's monotonic clock (it keeps running while the process is stopped, so a paused
/// leader finds its lease expired when it resumes).
pub struct MonotonicClock {
    start: Instant,
}

impl MonotonicClock {
    pub fn new() -> Self {
        MonotonicClock {
            start: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now_ms(&self) -> u64 {
        // Starts at 1: 0 means "no lease" to a peer.
        self.start.elapsed().as_millis() as u64 + 1
    }
}

/// A clock that moves only when set (simulations).
#[derive(Default)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    /// Moves the clock to `ms`; it never goes back.
    pub fn set(&self, ms: u64) {
        self.now_ms.fetch_max(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}
