//! Exponential backoff with jitter, bounded by a deadline.

use rand::Rng;
use std::time::Duration;
use tokio::time::Instant;

pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
    deadline: Instant,
}

impl Backoff {
    pub fn new(deadline: Instant) -> Self {
        Backoff {
            next: Duration::from_millis(10),
            max: Duration::from_millis(500),
            deadline,
        }
    }

    /// Sleeps for the next interval; returns false (without sleeping past it) once the deadline
    /// has passed.
    pub async fn wait(&mut self) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        let jitter = rand::thread_rng().gen_range(0.5..1.0);
        let sleep = self.next.mul_f64(jitter).min(self.deadline - now);
        tokio::time::sleep(sleep).await;
        self.next = (self.next * 2).min(self.max);
        Instant::now() < self.deadline
    }
}
