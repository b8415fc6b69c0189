//! [`RaftLogEngine`] on `raft-engine`: one engine instance holds every region's log.

use crate::log::{RaftLogBatch, RaftLogEngine};
use crate::{Result, StorageError};
use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};
use raft_engine::{Command, Config, Engine, LogBatch, MessageExt, ReadableSize};
use std::path::Path;

/// Tells raft-engine how to find the index of a raft-rs entry.
#[derive(Clone)]
struct EntryExt;

impl MessageExt for EntryExt {
    type Entry = Entry;

    fn index(entry: &Entry) -> u64 {
        entry.index
    }
}

const HARD_STATE_KEY: &[u8] = b"hard_state";

/// Raft logs on disk, in `raft-engine`.
pub struct RaftEngineLog {
    engine: Engine,
}

impl RaftEngineLog {
    /// Opens (or creates) the engine in `dir`. Recovery of a torn tail after a crash is
    /// tolerated; corruption elsewhere is an error.
    pub fn open(dir: &Path) -> Result<Self> {
        let config = Config {
            dir: dir.to_string_lossy().into_owned(),
            // A torn write at the tail is what a crash during a log write leaves: drop it.
            recovery_mode: raft_engine::RecoveryMode::TolerateTailCorruption,
            target_file_size: ReadableSize::mb(64),
            purge_threshold: ReadableSize::gb(2),
            ..Config::default()
        };
        let engine = Engine::open(config)?;
        Ok(RaftEngineLog { engine })
    }
}

impl RaftLogEngine for RaftEngineLog {
    fn write(&self, batch: RaftLogBatch, sync: bool) -> Result<()> {
        let mut log_batch = LogBatch::with_capacity(batch.groups.len());
        for group in &batch.groups {
            if group.clean {
                log_batch.add_command(group.region_id, Command::Clean);
            }
            log_batch.add_entries::<EntryExt>(group.region_id, &group.entries)?;
            if let Some(hs) = &group.hard_state {
                log_batch.put_message(group.region_id, HARD_STATE_KEY.to_vec(), hs)?;
            }
        }
        if log_batch.is_empty() {
            return Ok(());
        }
        self.engine.write(&mut log_batch, sync)?;
        Ok(())
    }

    fn hard_state(&self, region_id: u64) -> Result<Option<HardState>> {
        match self.engine.get(region_id, HARD_STATE_KEY) {
            None => Ok(None),
            Some(bytes) => {
                let mut hs = HardState::default();
                hs.merge_from_bytes(&bytes).map_err(|e| {
                    StorageError::corruption(format!("hard state of region {region_id}"), e)
                })?;
                Ok(Some(hs))
            }
        }
    }

    fn entries(
        &self,
        region_id: u64,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>> {
        let mut out = Vec::with_capacity((high.saturating_sub(low)).min(1024) as usize);
        let max = max_size.map(|m| m as usize);
        self.engine
            .fetch_entries_to::<EntryExt>(region_id, low, high, max, &mut out)?;
        if out.is_empty() && high > low {
            return Err(StorageError::EntriesUnavailable {
                region_id,
                low,
                high,
                first: self.first_index(region_id).unwrap_or(0),
                last: self.last_index(region_id).unwrap_or(0),
            });
        }
        Ok(out)
    }

    fn first_index(&self, region_id: u64) -> Option<u64> {
        self.engine.first_index(region_id)
    }

    fn last_index(&self, region_id: u64) -> Option<u64> {
        self.engine.last_index(region_id)
    }

    fn compact_to(&self, region_id: u64, index: u64) -> Result<()> {
        let mut batch = LogBatch::default();
        batch.add_command(region_id, Command::Compact { index });
        self.engine.write(&mut batch, false)?;
        Ok(())
    }

    fn clean(&self, region_id: u64) -> Result<()> {
        let mut batch = LogBatch::default();
        batch.add_command(region_id, Command::Clean);
        self.engine.write(&mut batch, true)?;
        Ok(())
    }

    fn region_ids(&self) -> Vec<u64> {
        self.engine.raft_groups()
    }

    fn purge(&self) -> Result<()> {
        let lagging = self.engine.purge_expired_files()?;
        if !lagging.is_empty() {
            // Regions whose old entries pin log files; their own log GC will release them.
            tracing::debug!(
                regions = lagging.len(),
                "raft log purge held back by lagging regions"
            );
        }
        Ok(())
    }
}
