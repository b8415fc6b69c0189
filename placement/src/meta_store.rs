//! The placement driver's metadata on disk (sled). Layout:
//!
//! ```text
//! "cluster_id"            u64 BE    chosen at first start, never changes
//! "id_limit"              u64 BE    every id handed out is below it
//! "tso_limit_ms"          i64 BE    every timestamp handed out has physical_ms below it
//! "bootstrap"             Region    the first region, once the cluster is bootstrapped
//! "gc_safe_point"         u64 BE    the GC safe point (never goes back)
//! "store/" id: u64 BE     Store
//! "region/" id: u64 BE    Region
//! "keyspace/" id: u64 BE  KeyspaceMeta
//! "schedule_config"       ScheduleConfig
//! "members"               MetaSnapshot  the placement members (name -> endpoint), fixed at
//!                                        the first start
//! "raft/applied"          u64 BE index, u64 BE term: the last placement log entry applied
//! "raft/truncated"        u64 BE index, u64 BE term: the log is compacted up to here
//! ```
//!
//! Every key but `raft/*` is written only by applying committed entries of the placement Raft
//! log (or installing a snapshot of them), so all members hold the same metadata at the same
//! applied index. The `raft/*` keys are each member's own.

use crate::cluster::{MetaWrites, PersistedState};
use crate::PlacementError;
use prost::Message;
use ringkv_proto::metapb::{Region, Store};
use ringkv_proto::pdpb::KeyspaceMeta;
use std::path::Path;

pub mod keys {
    pub const CLUSTER_ID: &[u8] = b"cluster_id";
    pub const ID_LIMIT: &[u8] = b"id_limit";
    pub const TSO_LIMIT: &[u8] = b"tso_limit_ms";
    pub const BOOTSTRAP: &[u8] = b"bootstrap";
    pub const GC_SAFE_POINT: &[u8] = b"gc_safe_point";
    /// The scheduling settings an admin changed at runtime (ScheduleConfig).
    pub const SCHEDULE_CONFIG: &[u8] = b"schedule_config";
    pub const STORE_PREFIX: &[u8] = b"store/";
    pub const REGION_PREFIX: &[u8] = b"region/";
    pub const KEYSPACE_PREFIX: &[u8] = b"keyspace/";
    /// The placement members the group was first started with.
    pub const MEMBERS: &[u8] = b"members";
    /// Each member's own Raft bookkeeping (never part of a snapshot).
    pub const RAFT_PREFIX: &[u8] = b"raft/";
    pub const RAFT_APPLIED: &[u8] = b"raft/applied";
    pub const RAFT_TRUNCATED: &[u8] = b"raft/truncated";

    pub fn keyspace(id: u32) -> Vec<u8> {
        with_id(KEYSPACE_PREFIX, u64::from(id))
    }

    fn with_id(prefix: &[u8], id: u64) -> Vec<u8> {
        let mut key = prefix.to_vec();
        key.extend_from_slice(&id.to_be_bytes());
        key
    }

    pub fn store(id: u64) -> Vec<u8> {
        with_id(STORE_PREFIX, id)
    }

    pub fn region(id: u64) -> Vec<u8> {
        with_id(REGION_PREFIX, id)
    }
}

/// Metadata keys and values, as a snapshot carries them.
pub type MetaKvs = Vec<(Vec<u8>, Vec<u8>)>;

/// The sled database holding the placement metadata.
pub struct MetaStore {
    db: sled::Db,
}

fn corruption(key: &[u8], detail: impl std::fmt::Display) -> PlacementError {
    PlacementError::Corruption {
        key: String::from_utf8_lossy(key).into_owned(),
        detail: detail.to_string(),
    }
}

fn fixed8(key: &[u8], bytes: &[u8]) -> Result<[u8; 8], PlacementError> {
    bytes
        .try_into()
        .map_err(|_| corruption(key, format!("expected 8 bytes, found {}", bytes.len())))
}

impl MetaStore {
    pub fn open(dir: &Path) -> Result<Self, PlacementError> {
        std::fs::create_dir_all(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(100))
            .open()?;
        Ok(MetaStore { db })
    }

    /// A store that lives as long as this value (tests and the simulation): kept in memory
    /// and a temporary file that is removed when it is dropped.
    pub fn open_temporary() -> Result<Self, PlacementError> {
        let db = sled::Config::new()
            .temporary(true)
            .flush_every_ms(None)
            .open()?;
        Ok(MetaStore { db })
    }

    /// The cluster id, once a leader has chosen it (0 before).
    pub fn cluster_id(&self) -> Result<u64, PlacementError> {
        match self.db.get(keys::CLUSTER_ID)? {
            Some(v) => Ok(u64::from_be_bytes(fixed8(keys::CLUSTER_ID, &v)?)),
            None => Ok(0),
        }
    }

    /// A fixed-size value, if present.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, PlacementError> {
        Ok(self.db.get(key)?.map(|v| v.to_vec()))
    }

    fn index_term(&self, key: &[u8]) -> Result<(u64, u64), PlacementError> {
        match self.db.get(key)? {
            None => Ok((0, 0)),
            Some(v) if v.len() == 16 => Ok((
                u64::from_be_bytes(fixed8(key, &v[..8])?),
                u64::from_be_bytes(fixed8(key, &v[8..])?),
            )),
            Some(v) => Err(corruption(
                key,
                format!("expected 16 bytes, found {}", v.len()),
            )),
        }
    }

    fn index_term_bytes(index: u64, term: u64) -> Vec<u8> {
        let mut v = index.to_be_bytes().to_vec();
        v.extend_from_slice(&term.to_be_bytes());
        v
    }

    /// The last placement log entry applied here: (index, term); (0, 0) before any.
    pub fn applied(&self) -> Result<(u64, u64), PlacementError> {
        self.index_term(keys::RAFT_APPLIED)
    }

    /// Where the placement log is compacted: (index, term); (0, 0) before any compaction.
    pub fn truncated(&self) -> Result<(u64, u64), PlacementError> {
        self.index_term(keys::RAFT_TRUNCATED)
    }

    /// Records a compaction of the log up to `index`, durably (the log entries are dropped
    /// only after this returns).
    pub fn set_truncated(&self, index: u64, term: u64) -> Result<(), PlacementError> {
        self.db
            .insert(keys::RAFT_TRUNCATED, Self::index_term_bytes(index, term))?;
        self.db.flush()?;
        Ok(())
    }

    /// Applies one committed log entry's writes together with the new applied index, atomically.
    /// Not synced: the log holds the entry durably, and a restart applies it again from there.
    pub fn apply_entry(
        &self,
        writes: &MetaWrites,
        index: u64,
        term: u64,
    ) -> Result<(), PlacementError> {
        let mut batch = sled::Batch::default();
        for k in &writes.deletes {
            assert!(
                !k.starts_with(keys::RAFT_PREFIX),
                "a log entry writes raft/ keys"
            );
            batch.remove(k.as_slice());
        }
        for (k, v) in &writes.puts {
            assert!(
                !k.starts_with(keys::RAFT_PREFIX),
                "a log entry writes raft/ keys"
            );
            batch.insert(k.as_slice(), v.as_slice());
        }
        batch.insert(keys::RAFT_APPLIED, Self::index_term_bytes(index, term));
        self.db.apply_batch(batch)?;
        Ok(())
    }

    /// Every metadata key and value (the `raft/*` keys left out): a snapshot's data.
    pub fn dump(&self) -> Result<MetaKvs, PlacementError> {
        let mut kvs = Vec::new();
        for item in self.db.iter() {
            let (k, v) = item?;
            if !k.starts_with(keys::RAFT_PREFIX) {
                kvs.push((k.to_vec(), v.to_vec()));
            }
        }
        Ok(kvs)
    }

    /// Replaces every metadata key with a snapshot's, applied and truncated at (index, term);
    /// durable when it returns.
    pub fn install_snapshot(
        &self,
        kvs: MetaKvs,
        index: u64,
        term: u64,
    ) -> Result<(), PlacementError> {
        let mut batch = sled::Batch::default();
        for item in self.db.iter() {
            let (k, _) = item?;
            batch.remove(k);
        }
        for (k, v) in kvs {
            if k.starts_with(keys::RAFT_PREFIX) {
                return Err(corruption(&k, "a snapshot carries a raft/ key"));
            }
            batch.insert(k, v);
        }
        let at = Self::index_term_bytes(index, term);
        batch.insert(keys::RAFT_APPLIED, at.clone());
        batch.insert(keys::RAFT_TRUNCATED, at);
        self.db.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<(), PlacementError> {
        self.db.flush()?;
        Ok(())
    }

    pub fn load(&self) -> Result<PersistedState, PlacementError> {
        let mut state = PersistedState::default();
        if let Some(v) = self.db.get(keys::ID_LIMIT)? {
            state.id_limit = u64::from_be_bytes(fixed8(keys::ID_LIMIT, &v)?);
        }
        if let Some(v) = self.db.get(keys::TSO_LIMIT)? {
            state.tso_limit_ms = i64::from_be_bytes(fixed8(keys::TSO_LIMIT, &v)?);
        }
        if let Some(v) = self.db.get(keys::GC_SAFE_POINT)? {
            state.gc_safe_point = u64::from_be_bytes(fixed8(keys::GC_SAFE_POINT, &v)?);
        }
        if let Some(v) = self.db.get(keys::SCHEDULE_CONFIG)? {
            state.schedule_config = Some(
                ringkv_proto::pdpb::ScheduleConfig::decode(v.as_ref())
                    .map_err(|e| corruption(keys::SCHEDULE_CONFIG, e))?,
            );
        }
        if let Some(v) = self.db.get(keys::BOOTSTRAP)? {
            state.bootstrap_region =
                Some(Region::decode(v.as_ref()).map_err(|e| corruption(keys::BOOTSTRAP, e))?);
        }
        for item in self.db.scan_prefix(keys::STORE_PREFIX) {
            let (k, v) = item?;
            state
                .stores
                .push(Store::decode(v.as_ref()).map_err(|e| corruption(&k, e))?);
        }
        for item in self.db.scan_prefix(keys::KEYSPACE_PREFIX) {
            let (k, v) = item?;
            state
                .keyspaces
                .push(KeyspaceMeta::decode(v.as_ref()).map_err(|e| corruption(&k, e))?);
        }
        for item in self.db.scan_prefix(keys::REGION_PREFIX) {
            let (k, v) = item?;
            state
                .regions
                .push(Region::decode(v.as_ref()).map_err(|e| corruption(&k, e))?);
        }
        Ok(state)
    }
}
