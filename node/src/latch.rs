//! Per-key latches: transactional commands on the same keys run one at a time, from the read
//! of their snapshot until their writes are applied, so what an action read is still true when
//! its writes land (the Percolator actions are computed on the leader, not at apply).
//!
//! Keys hash to a fixed number of slots; a command takes its slots in ascending order, so two
//! commands can never wait on each other in a cycle. Two keys sharing a slot only cost some
//! concurrency, never correctness.

use std::sync::Arc;
use tokio::sync::{Mutex, OwnedMutexGuard};
use xxhash_rust::xxh3::xxh3_64;

/// Slots by default: enough that unrelated keys rarely share one.
pub const LATCH_SLOTS: usize = 4096;

pub struct Latches {
    slots: Vec<Arc<Mutex<()>>>,
}

/// Held latches; dropping it releases them.
pub struct LatchGuard {
    _held: Vec<OwnedMutexGuard<()>>,
}

impl Latches {
    pub fn new(slots: usize) -> Self {
        assert!(slots > 0, "latches need at least one slot");
        Latches {
            slots: (0..slots).map(|_| Arc::new(Mutex::new(()))).collect(),
        }
    }

    fn slots_of(&self, keys: &[Vec<u8>]) -> Vec<usize> {
        let mut slots: Vec<usize> = keys
            .iter()
            .map(|k| (xxh3_64(k) % self.slots.len() as u64) as usize)
            .collect();
        slots.sort_unstable();
        slots.dedup();
        slots
    }

    /// Waits until this command holds the latches of every key in `keys`.
    pub async fn acquire(&self, keys: &[Vec<u8>]) -> LatchGuard {
        let mut held = Vec::new();
        for slot in self.slots_of(keys) {
            held.push(self.slots[slot].clone().lock_owned().await);
        }
        LatchGuard { _held: held }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn commands_on_a_shared_key_run_one_at_a_time_and_others_run_at_once() {
        let latches = Arc::new(Latches::new(LATCH_SLOTS));
        let first = latches.acquire(&[b"a".to_vec(), b"b".to_vec()]).await;
        let l = latches.clone();
        let waiting = tokio::spawn(async move { l.acquire(&[b"b".to_vec(), b"c".to_vec()]).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "a command on a latched key waits");
        let other = tokio::time::timeout(Duration::from_secs(5), latches.acquire(&[b"z".to_vec()]))
            .await
            .expect("an unrelated key is free");
        drop(other);
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("released latches wake the waiter")
            .unwrap();
    }

    #[tokio::test]
    async fn opposite_key_orders_do_not_deadlock() {
        let latches = Arc::new(Latches::new(8));
        let mut tasks = Vec::new();
        for i in 0..50 {
            let l = latches.clone();
            tasks.push(tokio::spawn(async move {
                let keys: Vec<Vec<u8>> = if i % 2 == 0 {
                    vec![b"x".to_vec(), b"y".to_vec()]
                } else {
                    vec![b"y".to_vec(), b"x".to_vec()]
                };
                let _g = l.acquire(&keys).await;
                tokio::task::yield_now().await;
            }));
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .unwrap()
                .unwrap();
        }
    }
}
