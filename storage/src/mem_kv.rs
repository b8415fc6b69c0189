//! The in-memory twin of [`SledKv`](crate::SledKv).

use crate::kv::{KvEngine, KvOp, KvWriteBatch};
use crate::Result;
use parking_lot::RwLock;
use std::collections::BTreeMap;

/// Applied state in memory, in a `BTreeMap`.
#[derive(Default)]
pub struct MemKv {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemKv {
    pub fn new() -> Self {
        Self::default()
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
        Ok(())
    }
}
