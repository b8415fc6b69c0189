//! Storage reads that can take long — scans of a region, the resolver's lock scans — run on
//! tokio's blocking threads, at most `slots` at once, never on the async runtime's two worker
//! threads: those also carry Raft traffic, heartbeats and every other request, and a few large
//! scans on them would delay heartbeats into elections. Reads past the limit wait their turn.

use std::sync::Arc;
use tokio::sync::Semaphore;

/// Reads one node runs at once on blocking threads by default.
pub const READ_SLOTS_DEFAULT: usize = 8;
/// How long a read waits for a free slot before it is answered busy.
pub const READ_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a read did not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadPoolError {
    /// Every slot stayed taken for the queue wait: the node is overloaded with reads.
    #[error("this node is busy with other reads; retry")]
    Busy,
    /// The read panicked, or the runtime is shutting down.
    #[error("{0}")]
    Failed(String),
}

impl From<ReadPoolError> for tonic::Status {
    fn from(e: ReadPoolError) -> Self {
        match e {
            ReadPoolError::Busy => tonic::Status::unavailable(e.to_string()),
            ReadPoolError::Failed(why) => {
                tonic::Status::internal(format!("storage failure on this node: {why}"))
            }
        }
    }
}

#[derive(Clone)]
pub struct ReadPool {
    slots: Arc<Semaphore>,
    queue_wait: std::time::Duration,
}

impl ReadPool {
    pub fn new(slots: usize) -> Self {
        Self::with_queue_wait(slots, READ_QUEUE_WAIT)
    }

    /// A pool whose reads wait at most `queue_wait` for a slot.
    pub fn with_queue_wait(slots: usize, queue_wait: std::time::Duration) -> Self {
        assert!(slots > 0, "a read pool needs at least one slot");
        ReadPool {
            slots: Arc::new(Semaphore::new(slots)),
            queue_wait,
        }
    }

    /// Runs `read` on a blocking thread once a slot is free, waiting at most the pool's queue
    /// wait ([`READ_QUEUE_WAIT`] by default) for one.
    pub async fn run<T: Send + 'static>(
        &self,
        read: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ReadPoolError> {
        let permit = tokio::time::timeout(self.queue_wait, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| ReadPoolError::Busy)?
            .map_err(|_| ReadPoolError::Failed("the read pool is closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            read()
        })
        .await
        .map_err(|e| ReadPoolError::Failed(format!("read failed: {e}")))
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

    #[tokio::test(flavor = "current_thread")]
    async fn a_read_that_finds_no_free_slot_in_time_is_answered_busy() {
        let pool = ReadPool::with_queue_wait(1, Duration::from_millis(50));
        let (release, released) = std::sync::mpsc::channel::<()>();
        let busy = pool.clone();
        let holder = tokio::spawn(async move {
            busy.run(move || {
                let _ = released.recv();
            })
            .await
        });
        tokio::task::yield_now().await;
        assert_eq!(pool.run(|| ()).await, Err(ReadPoolError::Busy));
        release.send(()).unwrap();
        assert_eq!(holder.await.unwrap(), Ok(()));
    }
}
