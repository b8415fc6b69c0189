//! Storage reads that can take long — scans of a region, the resolver's lock scans — run on
//! tokio's blocking threads, at most `slots` at once, never on the async runtime's two worker
//! threads: those also carry Raft traffic, heartbeats and every other request, and a few large
//! scans on them would delay heartbeats into elections. Reads past the limit wait their turn.

use std::sync::Arc;
use tokio::sync::Semaphore;

/// Reads one node runs at once on blocking threads by default.
pub const READ_SLOTS_DEFAULT: usize = 8;

#[derive(Clone)]
pub struct ReadPool {
    slots: Arc<Semaphore>,
}

impl ReadPool {
    pub fn new(slots: usize) -> Self {
        assert!(slots > 0, "a read pool needs at least one slot");
        ReadPool {
            slots: Arc::new(Semaphore::new(slots)),
        }
    }

    /// Runs `read` on a blocking thread once a slot is free. `Err` only if the read panicked
    /// (its message) or the runtime is shutting down.
    pub async fn run<T: Send + 'static>(
        &self,
        read: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "the read pool is closed".to_string())?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            read()
        })
        .await
        .map_err(|e| format!("read failed: {e}"))
    }
}

impl Default for ReadPool {
    fn default() -> Self {
        Self::new(READ_SLOTS_DEFAULT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "current_thread")]
    async fn reads_run_off_the_runtime_thread_and_at_most_slots_at_once() {
        let pool = ReadPool::new(2);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let runtime_thread = std::thread::current().id();
        let reads = (0..6).map(|_| {
            let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
            async move {
                pool.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                    std::thread::current().id()
                })
                .await
            }
        });
        // The single runtime thread stays free to poll everything while the reads block.
        for thread in futures::future::join_all(reads).await {
            assert_ne!(thread.expect("read ran"), runtime_thread);
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panicking_read_is_an_error_and_frees_its_slot() {
        let pool = ReadPool::new(1);
        let failed = pool.run(|| -> u32 { panic!("broken read") }).await;
        assert!(failed.is_err());
        assert_eq!(pool.run(|| 7).await, Ok(7));
    }
}
