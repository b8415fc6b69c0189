//! The applied-state store: one ordered key-value space per node (see [`crate::layout`]).

use crate::Result;

/// One atomic write to a [`KvEngine`].
#[derive(Default, Debug, Clone)]
pub struct KvWriteBatch {
    pub(crate) ops: Vec<KvOp>,
    bytes: usize,
}

#[derive(Debug, Clone)]
pub(crate) enum KvOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

impl KvWriteBatch {
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.bytes += key.len() + value.len();
        self.ops.push(KvOp::Put(key, value));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.bytes += key.len();
        self.ops.push(KvOp::Delete(key));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Approximate size of the batch in bytes.
    pub fn size_bytes(&self) -> usize {
        self.bytes
    }
}

/// An ordered key-value store whose batches are atomic.
pub trait KvEngine: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Calls `visit` on every pair with key in `[start, end)`, in key order, until it returns
    /// `false`.
    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()>;
    /// Applies `batch` atomically: after a crash, all of it or none of it is there.
    fn write(&self, batch: KvWriteBatch) -> Result<()>;
    /// Makes every write so far durable.
    fn flush(&self) -> Result<()>;
}
