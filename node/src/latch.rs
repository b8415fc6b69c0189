//! Per-key latches: transactional commands on the same keys run one at a time, from the read
//! of their snapshot until their writes are applied, so what an action read is still true when
//! its writes land (the Percolator actions are computed on the leader, not at apply).
//!
//! Keys hash to slots; a command takes its slots in ascending order, so two commands can never
//! wait on each other in a cycle. Two keys sharing a slot only cost some concurrency, never
//! correctness. Only slots that are held take memory: a table maps each held slot to the
//! commands waiting for it, first come first served. So the slot space can be huge, and a
//! command on 10,240 keys holds 10,240 of 2^32 slots, leaving every other key free.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::oneshot;
use xxhash_rust::xxh3::xxh3_64;

/// Slots by default: so many that unrelated keys practically never share one.
pub const LATCH_SLOTS: u64 = 1 << 32;

/// Held slots → the commands waiting for each, in arrival order.
type Table = parking_lot::Mutex<HashMap<u64, VecDeque<oneshot::Sender<Grant>>>>;

pub struct Latches {
    slots: u64,
    table: Arc<Table>,
}

/// Held latches; dropping it releases them (each to its next waiter).
pub struct LatchGuard {
    table: Arc<Table>,
    held: Vec<u64>,
}

/// A slot handed to a waiter. Until the waiter takes it (disarms it), dropping it hands the
/// slot on, so a waiter that gave up (its command was cancelled) never strands a slot.
struct Grant {
    table: Arc<Table>,
    slot: u64,
    armed: bool,
}

impl Drop for Grant {
    fn drop(&mut self) {
        if self.armed {
            release(&self.table, self.slot);
        }
    }
}

impl Drop for LatchGuard {
    fn drop(&mut self) {
        for slot in self.held.drain(..) {
            release(&self.table, slot);
        }
    }
}

/// Hands `slot` to its first waiter still waiting, or frees it.
fn release(table: &Arc<Table>, slot: u64) {
    let mut held = table.lock();
    let Some(waiters) = held.get_mut(&slot) else {
        debug_assert!(false, "slot {slot} released but not held");
        return;
    };
    while let Some(waiter) = waiters.pop_front() {
        let grant = Grant {
            table: table.clone(),
            slot,
            armed: true,
        };
        match waiter.send(grant) {
            Ok(()) => return,
            // That waiter gave up: the grant must not hand the slot on from inside this lock.
            Err(mut unsent) => unsent.armed = false,
        }
    }
    held.remove(&slot);
}

impl Latches {
    pub fn new(slots: u64) -> Self {
        assert!(slots > 0, "latches need at least one slot");
        Latches {
            slots,
            table: Arc::new(Table::default()),
        }
    }

    fn slots_of(&self, keys: &[Vec<u8>]) -> Vec<u64> {
        let mut slots: Vec<u64> = keys.iter().map(|k| xxh3_64(k) % self.slots).collect();
        slots.sort_unstable();
        slots.dedup();
        slots
    }

    /// Slots held now (for tests and diagnostics).
    pub fn held(&self) -> usize {
        self.table.lock().len()
    }

    /// Waits until this command holds the latches of every key in `keys`. Dropped while
    /// waiting, it releases what it took and gives up its place in the queues.
    pub async fn acquire(&self, keys: &[Vec<u8>]) -> LatchGuard {
        let slots = self.slots_of(keys);
        let mut guard = LatchGuard {
            table: self.table.clone(),
            held: Vec::with_capacity(slots.len()),
        };
        for slot in slots {
            let turn = match self.table.lock().entry(slot) {
                Entry::Vacant(free) => {
                    free.insert(VecDeque::new());
                    None
                }
                Entry::Occupied(mut taken) => {
                    let (tx, rx) = oneshot::channel();
                    taken.get_mut().push_back(tx);
                    Some(rx)
                }
            };
            if let Some(turn) = turn {
                // A waiter's sender leaves its queue only by being sent a grant.
                let mut grant = turn
                    .await
                    .expect("a queued waiter is always handed its slot");
                grant.armed = false;
            }
            guard.held.push(slot);
        }
        guard
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
        let second = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("released latches wake the waiter")
            .unwrap();
        drop(second);
        assert_eq!(latches.held(), 0, "every slot freed");
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
        assert_eq!(latches.held(), 0);
    }

    #[tokio::test]
    async fn a_command_on_ten_thousand_keys_leaves_every_other_key_free() {
        let latches = Latches::new(LATCH_SLOTS);
        let big: Vec<Vec<u8>> = (0..10_240u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let held = latches.acquire(&big).await;
        assert_eq!(latches.held(), 10_240);
        for i in 0..1_000u32 {
            let key = format!("other-{i}").into_bytes();
            tokio::time::timeout(Duration::from_secs(5), latches.acquire(&[key]))
                .await
                .expect("a key the big command does not name is free");
        }
        drop(held);
        assert_eq!(latches.held(), 0);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_hands_its_turn_on() {
        let latches = Arc::new(Latches::new(LATCH_SLOTS));
        let first = latches.acquire(&[b"k".to_vec()]).await;
        // Two waiters queue behind it; the first of them gives up (its command was cancelled).
        let l = latches.clone();
        let quitter = tokio::spawn(async move { l.acquire(&[b"k".to_vec()]).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let l = latches.clone();
        let patient = tokio::spawn(async move { l.acquire(&[b"k".to_vec()]).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        quitter.abort();
        let _ = quitter.await;
        drop(first);
        let guard = tokio::time::timeout(Duration::from_secs(5), patient)
            .await
            .expect("the slot reaches the waiter behind the one that left")
            .unwrap();
        drop(guard);
        assert_eq!(latches.held(), 0);
        // A waiter dropped after being handed the slot, before taking it, hands it on too.
        let first = latches.acquire(&[b"k".to_vec()]).await;
        let key = [b"k".to_vec()];
        let mut late = Box::pin(latches.acquire(&key));
        assert!(futures::poll!(late.as_mut()).is_pending(), "queued");
        drop(first);
        drop(late);
        assert_eq!(
            latches.held(),
            0,
            "the grant sent to the dropped waiter came back"
        );
    }
}
