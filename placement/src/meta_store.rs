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
//! ```

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

    /// The cluster id, choosing and persisting `fresh()` on first start.
    pub fn cluster_id_or_init(&self, fresh: impl FnOnce() -> u64) -> Result<u64, PlacementError> {
        if let Some(v) = self.db.get(keys::CLUSTER_ID)? {
            return Ok(u64::from_be_bytes(fixed8(keys::CLUSTER_ID, &v)?));
        }
        let id = fresh();
        self.db.insert(keys::CLUSTER_ID, &id.to_be_bytes())?;
        self.db.flush()?;
        Ok(id)
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

    /// Persists what the core asked for, durably when it said so.
    pub fn apply(&self, writes: MetaWrites) -> Result<(), PlacementError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for k in writes.deletes {
            batch.remove(k);
        }
        for (k, v) in writes.puts {
            batch.insert(k, v);
        }
        self.db.apply_batch(batch)?;
        if writes.sync {
            self.db.flush()?;
        }
        Ok(())
    }
}
