//! [`KvEngine`] on `sled`: one tree, namespaced by [`crate::layout`] prefixes, so that a region's
//! data and its apply state change in one atomic `sled::Batch`.

use crate::kv::{KvEngine, KvOp, KvWriteBatch};
use crate::Result;
use std::path::Path;

/// The applied state of a node, on disk in `sled`.
#[derive(Clone)]
pub struct SledKv {
    db: sled::Db,
}

impl SledKv {
    /// Opens (or creates) the store in `dir`.
    ///
    /// sled's background flusher may hold the directory lock for a moment after the previous
    /// handle was dropped (an in-process restart), so a busy lock is retried for up to 5 s.
    pub fn open(dir: &Path) -> Result<Self> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let opened = sled::Config::new()
                .path(dir)
                .cache_capacity(256 * 1024 * 1024)
                .flush_every_ms(Some(200))
                .open();
            match opened {
                Ok(db) => return Ok(SledKv { db }),
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Size of the store on disk, in bytes.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

impl KvEngine for SledKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get(key)?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        for item in self.db.range(start..end) {
            let (k, v) = item?;
            if !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn write(&self, batch: KvWriteBatch) -> Result<()> {
        let mut sled_batch = sled::Batch::default();
        for op in batch.ops {
            match op {
                KvOp::Put(k, v) => sled_batch.insert(k, v),
                KvOp::Delete(k) => sled_batch.remove(k),
            }
        }
        self.db.apply_batch(sled_batch)?;
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}
