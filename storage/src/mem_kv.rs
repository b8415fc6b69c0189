//! The in-memory twin of [`FjallKv`](crate::FjallKv).

use crate::kv::{KvEngine, KvOp, KvWriteBatch};
use crate::Result;
use parking_lot::RwLock;
use std::collections::BTreeMap;

/// Applied state in memory, in a `BTreeMap`.
///
/// Like the disk engine, it can be made to lose writes on a crash: with [`MemKv::losing_unflushed`] only
/// what was written before the last [`KvEngine::flush`] survives [`MemKv::crash`].
#[derive(Default)]
pub struct MemKv {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
    /// What survives a crash, when unflushed writes are to be lost.
    durable: RwLock<Option<BTreeMap<Vec<u8>, Vec<u8>>>>,
    fail_next_write: std::sync::atomic::AtomicBool,
}

impl MemKv {
    pub fn new() -> Self {
        Self::default()
    }

    /// An engine whose writes are durable only once flushed (the pessimistic view of the disk
    /// engine, which may keep recent writes in buffers).
    pub fn losing_unflushed() -> Self {
        MemKv {
            map: RwLock::new(BTreeMap::new()),
            durable: RwLock::new(Some(BTreeMap::new())),
            fail_next_write: Default::default(),
        }
    }

    /// With `fail`, the next write fails and writes nothing (a disk fault); a simulation uses
    /// it to crash a node while it applies.
    pub fn set_fail_next_write(&self, fail: bool) {
        self.fail_next_write
            .store(fail, std::sync::atomic::Ordering::SeqCst);
    }

    /// Forgets every write since the last flush, as a crash would.
    pub fn crash(&self) {
        if let Some(durable) = self.durable.read().as_ref() {
            *self.map.write() = durable.clone();
        }
    }

    /// A copy of everything stored, for comparing with a model.
    pub fn dump(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.map.read().clone()
    }
}

impl KvEngine for MemKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.map.read().get(key).cloned())
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        if start >= end {
            return Ok(());
        }
        let map = self.map.read();
        for (k, v) in map.range(start.to_vec()..end.to_vec()) {
            if !visit(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn write(&self, batch: KvWriteBatch) -> Result<()> {
        if self
            .fail_next_write
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(crate::StorageError::Injected("state write failed"));
        }
        let mut map = self.map.write();
        for op in batch.ops {
            match op {
                KvOp::Put(k, v) => {
                    map.insert(k, v);
                }
                KvOp::Delete(k) => {
                    map.remove(&k);
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        if let Some(durable) = self.durable.write().as_mut() {
            *durable = self.map.read().clone();
        }
        Ok(())
    }
}
