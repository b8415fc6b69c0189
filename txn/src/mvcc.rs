//! Reading and writing the MVCC column families (storage layout in
//! `ringkv_storage::layout`, format in docs/design.md "MVCC layout").

use crate::{Result, TxnError};
use prost::Message;
use ringkv_proto::kvrpcpb::Op;
use ringkv_proto::mvccpb::{Lock, Write};
use ringkv_storage::layout::{self, Cf};
use ringkv_storage::KvEngine;

/// Values up to this size are kept in the lock / write record instead of the default family.
pub const SHORT_VALUE_MAX_BYTES: usize = 255;

/// One write an action wants, on an encoded key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modify {
    Put {
        cf: Cf,
        key: Vec<u8>,
        ts: u64,
        value: Vec<u8>,
    },
    Delete {
        cf: Cf,
        key: Vec<u8>,
        ts: u64,
    },
}

impl Modify {
    /// The encoded key written.
    pub fn key(&self) -> &[u8] {
        match self {
            Modify::Put { key, .. } | Modify::Delete { key, .. } => key,
        }
    }

    /// The storage key written.
    pub fn storage_key(&self) -> Vec<u8> {
        match self {
            Modify::Put { cf, key, ts, .. } | Modify::Delete { cf, key, ts } => {
                layout::cf_key(*cf, key, *ts)
            }
        }
    }
}

/// What a transaction that started at some start_ts finds written since (see
/// [`MvccReader::since_start`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinceStart {
    Nothing,
    /// It committed this key already.
    OwnCommit {
        commit_ts: u64,
    },
    /// It was rolled back on this key.
    OwnRollback,
    /// Another transaction committed the key after it started.
    Conflict {
        commit_ts: u64,
        start_ts: u64,
    },
}

/// What the write family says about transaction `start_ts` on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnCommitRecord {
    Committed { commit_ts: u64, write: Write },
    RolledBack,
    None,
}

/// Reads MVCC records from a storage snapshot. Every read checks what it decodes.
pub struct MvccReader<'a> {
    kv: &'a dyn KvEngine,
}

fn corrupt(what: impl Into<String>, why: impl std::fmt::Display) -> TxnError {
    TxnError::Corruption {
        what: what.into(),
        why: why.to_string(),
    }
}

impl<'a> MvccReader<'a> {
    pub fn new(kv: &'a dyn KvEngine) -> Self {
        MvccReader { kv }
    }

    pub fn load_lock(&self, key: &[u8]) -> Result<Option<Lock>> {
        match self.kv.get(&layout::lock_key(key))? {
            None => Ok(None),
            Some(bytes) => {
                let lock = Lock::decode(bytes.as_slice())
                    .map_err(|e| corrupt(format!("lock of {key:?}"), e))?;
                if lock.start_ts == 0 || lock.primary.is_empty() {
                    return Err(corrupt(
                        format!("lock of {key:?}"),
                        "no start_ts or primary",
                    ));
                }
                Ok(Some(lock))
            }
        }
    }

    /// Every lock on keys in the encoded range `[start, end)`, up to `limit`.
    pub fn scan_locks(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Lock)>> {
        let (lo, hi) = layout::cf_range(Cf::Lock, start, end);
        let mut out = Vec::new();
        let mut err = None;
        self.kv.scan(&lo, &hi, &mut |k, v| {
            match Lock::decode(v) {
                Ok(lock) => out.push((k[1..].to_vec(), lock)),
                Err(e) => {
                    err = Some(corrupt(format!("lock at {k:?}"), e));
                    return false;
                }
            }
            out.len() < limit
        })?;
        err.map_or(Ok(out), Err)
    }

    /// The oldest start_ts of a lock on a key in the encoded range `[start, end)` (every lock
    /// of the range is read).
    pub fn oldest_lock_ts(&self, start: &[u8], end: &[u8]) -> Result<Option<u64>> {
        let (lo, hi) = layout::cf_range(Cf::Lock, start, end);
        let mut oldest: Option<u64> = None;
        let mut err = None;
        self.kv.scan(&lo, &hi, &mut |k, v| match Lock::decode(v) {
            Ok(lock) => {
                oldest = Some(oldest.map_or(lock.start_ts, |o| o.min(lock.start_ts)));
                true
            }
            Err(e) => {
                err = Some(corrupt(format!("lock at {k:?}"), e));
                false
            }
        })?;
        err.map_or(Ok(oldest), Err)
    }

    /// Visits the write records of `key` from newest to oldest, starting at commit_ts `from`
    /// (inclusive), until `visit` returns false.
    fn visit_writes(
        &self,
        key: &[u8],
        from: u64,
        visit: &mut dyn FnMut(u64, Write) -> bool,
    ) -> Result<()> {
        let lo = layout::write_key(key, from);
        let (_, hi) = layout::versions_range(Cf::Write, key);
        let mut err = None;
        self.kv.scan(&lo, &hi, &mut |k, v| {
            let Some((_, _, commit_ts)) = layout::decode_data_key(k) else {
                err = Some(corrupt(format!("write key {k:?}"), "undecodable"));
                return false;
            };
            match Write::decode(v) {
                Ok(w) if w.start_ts > commit_ts => {
                    err = Some(corrupt(
                        format!("write of {key:?} at {commit_ts}"),
                        format!("start_ts {} after commit_ts", w.start_ts),
                    ));
                    false
                }
                Ok(w) => visit(commit_ts, w),
                Err(e) => {
                    err = Some(corrupt(format!("write of {key:?} at {commit_ts}"), e));
                    false
                }
            }
        })?;
        err.map_or(Ok(()), Err)
    }

    /// The newest write record of `key` with commit_ts <= `ts`, of any kind.
    pub fn seek_write(&self, key: &[u8], ts: u64) -> Result<Option<(u64, Write)>> {
        let mut found = None;
        self.visit_writes(key, ts, &mut |commit_ts, w| {
            found = Some((commit_ts, w));
            false
        })?;
        Ok(found)
    }

    /// The newest put or delete of `key` with commit_ts <= `ts` (rollback and lock records
    /// are skipped: they change nothing).
    pub fn seek_data_write(&self, key: &[u8], ts: u64) -> Result<Option<(u64, Write)>> {
        let mut found = None;
        self.visit_writes(key, ts, &mut |commit_ts, w| {
            if w.op == Op::Put as i32 || w.op == Op::Delete as i32 {
                found = Some((commit_ts, w));
                false
            } else {
                true
            }
        })?;
        Ok(found)
    }

    /// The value of `key` visible at `ts`: None when absent or deleted.
    pub fn get(&self, key: &[u8], ts: u64) -> Result<Option<Vec<u8>>> {
        match self.seek_data_write(key, ts)? {
            Some((_, w)) if w.op == Op::Put as i32 => self.value_of(key, &w).map(Some),
            _ => Ok(None),
        }
    }

    /// The value a put record points at.
    pub fn value_of(&self, key: &[u8], write: &Write) -> Result<Vec<u8>> {
        if let Some(v) = &write.short_value {
            return Ok(v.clone());
        }
        self.kv
            .get(&layout::default_key(key, write.start_ts))?
            .ok_or_else(|| {
                corrupt(
                    format!("value of {key:?} by {}", write.start_ts),
                    "write record points at a missing value",
                )
            })
    }

    /// What happened to transaction `start_ts` on `key`, per the write family.
    pub fn txn_commit_record(&self, key: &[u8], start_ts: u64) -> Result<TxnCommitRecord> {
        let mut record = TxnCommitRecord::None;
        self.visit_writes(key, u64::MAX, &mut |commit_ts, w| {
            if commit_ts < start_ts {
                return false;
            }
            if w.start_ts == start_ts {
                record = if w.op == Op::Rollback as i32 {
                    TxnCommitRecord::RolledBack
                } else {
                    TxnCommitRecord::Committed {
                        commit_ts,
                        write: w,
                    }
                };
                return false;
            }
            true
        })?;
        Ok(record)
    }

    /// What the write records at or after `start_ts` mean for a transaction that started
    /// then, in one scan: its own commit or rollback wins over other transactions' writes (a
    /// retried one-phase commit that did commit must learn so, not see a conflict).
    pub fn since_start(&self, key: &[u8], start_ts: u64) -> Result<SinceStart> {
        let mut newest_other = None;
        let mut own = None;
        self.visit_writes(key, u64::MAX, &mut |commit_ts, w| {
            if commit_ts < start_ts {
                return false;
            }
            if w.start_ts == start_ts {
                own = Some(if w.op == Op::Rollback as i32 {
                    SinceStart::OwnRollback
                } else {
                    SinceStart::OwnCommit { commit_ts }
                });
                return false;
            }
            if commit_ts > start_ts && w.op != Op::Rollback as i32 && newest_other.is_none() {
                newest_other = Some(SinceStart::Conflict {
                    commit_ts,
                    start_ts: w.start_ts,
                });
            }
            true
        })?;
        Ok(own.or(newest_other).unwrap_or(SinceStart::Nothing))
    }

    /// Every write record of `key` (newest first).
    pub fn all_writes(&self, key: &[u8]) -> Result<Vec<(u64, Write)>> {
        let mut out = Vec::new();
        self.visit_writes(key, u64::MAX, &mut |commit_ts, w| {
            out.push((commit_ts, w));
            true
        })?;
        Ok(out)
    }

    /// Visits the write records of the encoded range `[start, end)` in storage order (key
    /// ascending, versions newest first) until `visit` returns false.
    pub fn scan_writes(
        &self,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], u64, Write) -> bool,
    ) -> Result<()> {
        let (lo, hi) = layout::cf_range(Cf::Write, start, end);
        let mut err = None;
        self.kv.scan(&lo, &hi, &mut |k, v| {
            let Some((_, key, commit_ts)) = layout::decode_data_key(k) else {
                err = Some(corrupt(format!("write key {k:?}"), "undecodable"));
                return false;
            };
            match Write::decode(v) {
                Ok(w) => visit(&key, commit_ts, w),
                Err(e) => {
                    err = Some(corrupt(format!("write of {key:?} at {commit_ts}"), e));
                    false
                }
            }
        })?;
        err.map_or(Ok(()), Err)
    }
}

/// The writes of one action, for one transaction (`start_ts`), collected in order.
#[derive(Debug, Default)]
pub struct MvccTxn {
    pub start_ts: u64,
    /// Set by a prewrite that found keys the transaction already committed (a retried
    /// one-phase commit): when it did.
    pub committed_at: Option<u64>,
    modifies: Vec<Modify>,
}

impl MvccTxn {
    pub fn new(start_ts: u64) -> Self {
        MvccTxn {
            start_ts,
            committed_at: None,
            modifies: Vec::new(),
        }
    }

    pub fn put_lock(&mut self, key: &[u8], lock: &Lock) {
        assert_eq!(
            lock.start_ts, self.start_ts,
            "a lock belongs to its transaction"
        );
        self.modifies.push(Modify::Put {
            cf: Cf::Lock,
            key: key.to_vec(),
            ts: 0,
            value: lock.encode_to_vec(),
        });
    }

    pub fn unlock(&mut self, key: &[u8]) {
        self.modifies.push(Modify::Delete {
            cf: Cf::Lock,
            key: key.to_vec(),
            ts: 0,
        });
    }

    pub fn put_value(&mut self, key: &[u8], value: Vec<u8>) {
        self.modifies.push(Modify::Put {
            cf: Cf::Default,
            key: key.to_vec(),
            ts: self.start_ts,
            value,
        });
    }

    pub fn delete_value(&mut self, key: &[u8], start_ts: u64) {
        self.modifies.push(Modify::Delete {
            cf: Cf::Default,
            key: key.to_vec(),
            ts: start_ts,
        });
    }

    pub fn put_write(&mut self, key: &[u8], commit_ts: u64, write: &Write) {
        assert!(
            write.start_ts <= commit_ts,
            "a version commits at or after it starts"
        );
        self.modifies.push(Modify::Put {
            cf: Cf::Write,
            key: key.to_vec(),
            ts: commit_ts,
            value: write.encode_to_vec(),
        });
    }

    pub fn delete_write(&mut self, key: &[u8], commit_ts: u64) {
        self.modifies.push(Modify::Delete {
            cf: Cf::Write,
            key: key.to_vec(),
            ts: commit_ts,
        });
    }

    /// Records that this transaction is rolled back on `key`, so a late prewrite fails.
    pub fn put_rollback(&mut self, key: &[u8]) {
        let write = Write {
            op: Op::Rollback as i32,
            start_ts: self.start_ts,
            short_value: None,
        };
        self.put_write(key, self.start_ts, &write);
    }

    pub fn is_empty(&self) -> bool {
        self.modifies.is_empty()
    }

    pub fn into_modifies(self) -> Vec<Modify> {
        self.modifies
    }
}

/// The Raft command entry that carries `m` (a column-family put or delete of one key).
pub fn raft_request(m: Modify) -> ringkv_proto::raftpb::Request {
    use ringkv_proto::raftpb::{request::Cmd, DeleteRequest, PutRequest};
    let cmd = match m {
        Modify::Put { cf, key, ts, value } => Cmd::Put(PutRequest {
            key,
            value,
            cf: cf.to_wire(),
            ts,
        }),
        Modify::Delete { cf, key, ts } => Cmd::Delete(DeleteRequest {
            key,
            cf: cf.to_wire(),
            ts,
        }),
    };
    ringkv_proto::raftpb::Request { cmd: Some(cmd) }
}

/// Applies modifies to a write batch, for tests and for anything that writes locally.
pub fn write_modifies(batch: &mut ringkv_storage::KvWriteBatch, modifies: Vec<Modify>) {
    for m in modifies {
        let key = m.storage_key();
        match m {
            Modify::Put { value, .. } => batch.put(key, value),
            Modify::Delete { .. } => batch.delete(key),
        }
    }
}
