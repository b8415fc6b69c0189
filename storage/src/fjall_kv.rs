//! [`KvEngine`] on `fjall` (an LSM-tree): one partition, namespaced by [`crate::layout`]
//! prefixes, so that a region's data and its apply state change in one atomic batch.
//!
//! Why not sled (measured, BENCHMARKS.md 2026-12-03): sled keeps every page it writes or reads
//! in memory while open, whatever its cache capacity, so a node's memory grew with its data
//! (1 GiB written: 1,032 MiB resident); fjall holds its block cache and memtables (about
//! [`CACHE_BYTES`] + [`WRITE_BUFFER_BYTES`]) and wrote small batches 3.5x faster.

use crate::kv::{KvEngine, KvOp, KvWriteBatch};
use crate::Result;
use fjall::{Config, Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Block cache of the state store.
pub const CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// Memtables of the state store in all: past it, the largest is flushed to disk.
pub const WRITE_BUFFER_BYTES: u64 = 64 * 1024 * 1024;
/// Journal files kept before memtables are flushed to make room.
const JOURNAL_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// How long opening waits for another handle in this process to let go of the directory.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// The applied state of a node, on disk in `fjall`. Cheap to clone.
#[derive(Clone)]
pub struct FjallKv {
    inner: Arc<Inner>,
}

struct Inner {
    // Dropped in this order: the partition and keyspace (which waits for its background
    // threads) before the lock, so no second handle opens the directory while this one writes.
    state: PartitionHandle,
    keyspace: Keyspace,
    dir: std::path::PathBuf,
    /// When the oldest write still in `commit` started (ms since `epoch`; 0: none).
    write_started_ms: std::sync::atomic::AtomicU64,
    epoch: Instant,
    _lock: std::fs::File,
}

/// A write stuck this long while the disk is full stops the node (see [`watch_writes`]).
const STUCK_WRITE: Duration = Duration::from_secs(5);

impl FjallKv {
    /// Opens (or creates) the store in `dir`. Only one handle may have a directory open: a
    /// second one waits up to 5 s (an in-process restart whose old handle is going away),
    /// then fails.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let lock_path = dir.join("LOCK");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(std::io::Error::other(format!(
                        "{} is in use by another process (or another store in this one)",
                        dir.display()
                    ))
                    .into())
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
            }
        }
        let keyspace = Config::new(dir.join("db"))
            .cache_size(CACHE_BYTES)
            .max_write_buffer_size(WRITE_BUFFER_BYTES)
            .max_journaling_size(JOURNAL_BYTES_MAX)
            .open()?;
        let state = keyspace.open_partition("state", PartitionCreateOptions::default())?;
        Ok(FjallKv {
            inner: Arc::new(Inner {
                state,
                keyspace,
                dir: dir.to_path_buf(),
                write_started_ms: Default::default(),
                epoch: Instant::now(),
                _lock: lock,
            }),
        })
        .inspect(|kv| watch_writes(Arc::downgrade(&kv.inner)))
    }

    /// Size of the store on disk, in bytes.
    pub fn size_on_disk(&self) -> u64 {
        self.inner.keyspace.disk_space()
    }
}

impl KvEngine for FjallKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.state.get(key)?.map(|v| v.to_vec()))
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
        for item in self.inner.state.range(start..end) {
            let (k, v) = item?;
            if !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn write(&self, batch: KvWriteBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        // Handed to the OS at commit: fjall drops a journal write error unless the batch asks
        // for this, and a write that failed must fail here (a node then stops, see node/cli.rs).
        let mut out = self
            .inner
            .keyspace
            .batch()
            .durability(Some(PersistMode::Buffer));
        for op in batch.ops {
            match op {
                KvOp::Put(k, v) => out.insert(&self.inner.state, k, v),
                KvOp::Delete(k) => out.remove(&self.inner.state, k),
            }
        }
        let inner = &self.inner;
        let now_ms = (inner.epoch.elapsed().as_millis() as u64).max(1);
        let _ = inner.write_started_ms.compare_exchange(
            0,
            now_ms,
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
        );
        let outcome = out.commit();
        inner
            .write_started_ms
            .store(0, std::sync::atomic::Ordering::SeqCst);
        outcome.map_err(|e| self.explain(e))?;
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.inner
            .keyspace
            .persist(PersistMode::SyncAll)
            .map_err(|e| self.explain(e))?;
        Ok(())
    }
}

impl FjallKv {
    /// fjall reports a failed journal or flush write only as `Poisoned`, without its cause;
    /// the usual cause is a full disk, which is then named as the operating system would.
    fn explain(&self, e: fjall::Error) -> crate::StorageError {
        if matches!(e, fjall::Error::Poisoned) && disk_full(&self.inner.dir) {
            return std::io::Error::from_raw_os_error(libc::ENOSPC).into();
        }
        e.into()
    }
}

/// Watches for a write that fjall holds for ever: once a memtable flush fails (a full disk),
/// fjall keeps writers waiting for room that never comes. A write stuck for [`STUCK_WRITE`]
/// while the disk is full stops the process with the operating system's full-disk error, as
/// a failed write would (a node that cannot persist stops; node/src/cli.rs names the disk).
fn watch_writes(inner: std::sync::Weak<Inner>) {
    let spawned = std::thread::Builder::new()
        .name("state-store-watch".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let started = inner
                .write_started_ms
                .load(std::sync::atomic::Ordering::SeqCst);
            let now = inner.epoch.elapsed().as_millis() as u64;
            if started != 0
                && now.saturating_sub(started) >= STUCK_WRITE.as_millis() as u64
                && disk_full(&inner.dir)
            {
                panic!(
                    "state store write stuck for {STUCK_WRITE:?}: {}",
                    std::io::Error::from_raw_os_error(libc::ENOSPC)
                );
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the state store's write watch");
    }
}

/// Whether the file system holding `dir` has (next to) no space left: under 4 MiB, less than
/// one journal write of a large batch.
fn disk_full(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `path` is a valid C string and `stat` a plain output buffer.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    let free = stat.f_bavail as u64 * stat.f_frsize as u64;
    rc == 0 && free < 4 * 1024 * 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_handle_on_a_directory_waits_for_the_first_then_fails() {
        let dir = tempfile::tempdir().unwrap();
        let first = FjallKv::open(dir.path()).unwrap();
        let started = Instant::now();
        let err = FjallKv::open(dir.path())
            .err()
            .expect("the directory is in use");
        assert!(err.to_string().contains("in use"), "{err}");
        assert!(started.elapsed() >= LOCK_WAIT);
        let mut batch = KvWriteBatch::default();
        batch.put(b"k".to_vec(), b"v".to_vec());
        first.write(batch).unwrap();
        first.flush().unwrap();
        drop(first);
        let again = FjallKv::open(dir.path()).unwrap();
        assert_eq!(again.get(b"k").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn an_inverted_or_empty_range_scans_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let kv = FjallKv::open(dir.path()).unwrap();
        let mut batch = KvWriteBatch::default();
        batch.put(b"b".to_vec(), b"1".to_vec());
        kv.write(batch).unwrap();
        let mut seen = 0;
        kv.scan(b"c", b"a", &mut |_, _| {
            seen += 1;
            true
        })
        .unwrap();
        kv.scan(b"b", b"b", &mut |_, _| {
            seen += 1;
            true
        })
        .unwrap();
        assert_eq!(seen, 0);
    }
}
