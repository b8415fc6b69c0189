//! Applying committed commands. Deterministic: every replica turns the same entry into the same
//! writes and the same result, which is what lets results go back to clients.

use crate::region_error;
use ringkv_proto::errorpb::RegionError;
use ringkv_proto::keys::{self, in_range};
use ringkv_proto::kvrpcpb::{Keyspace, KeyspaceMode};
use ringkv_proto::metapb::{Peer as PeerMeta, Region, RegionEpoch};
use ringkv_proto::raftpb::{
    admin_request, request::Cmd, PeerState, RaftCmdRequest, RegionLocalState, Request, SplitRequest,
};
use ringkv_storage::layout::{self, data_key, data_range, origin_key};
use ringkv_storage::{KvEngine, KvWriteBatch, PeerStorage, Result as StorageResult};

/// The outcome of one command. `Err` is a deterministic refusal (wrong epoch, key outside the
/// region): it is the applied result, the same on every replica.
pub type CmdResult = Result<(), RegionError>;

/// What an applied admin command changed about regions, for the raftstore to act on after the
/// apply batch is written.
#[derive(Debug, Clone, PartialEq)]
pub enum AdminResult {
    /// The region is now `left`; `right` is new and its state is in the batch.
    Split { left: Region, right: Region },
    /// Entries up to `index` may go: the peer updates its truncated state (written with this
    /// apply batch) and the raftstore compacts the log engine once that state is durable.
    CompactLog { index: u64, term: u64 },
}

/// A command's result and, for an admin command that succeeded, what it changed.
#[derive(Debug)]
pub struct Applied {
    pub result: CmdResult,
    pub admin: Option<AdminResult>,
}

impl Applied {
    fn refused(e: RegionError) -> Applied {
        Applied {
            result: Err(e),
            admin: None,
        }
    }
}

/// Checks that a command still fits the region: same version (splits and merges change which keys
/// the region owns) and every key inside it.
pub fn check_command(region: &Region, cmd: &RaftCmdRequest) -> CmdResult {
    let current = region.region_epoch.unwrap_or_default();
    let asked = cmd.region_epoch.unwrap_or_default();
    if asked.version != current.version {
        return Err(region_error::epoch_not_match(region, cmd.region_epoch));
    }
    if let Some(admin) = &cmd.admin {
        if !cmd.requests.is_empty() {
            return Err(region_error::invalid_command(
                region.id,
                "an admin command must be alone in its entry",
            ));
        }
        match &admin.cmd {
            Some(admin_request::Cmd::Split(split)) => check_split(region, split)?,
            Some(admin_request::Cmd::CompactLog(_)) => {}
            None => {
                return Err(region_error::invalid_command(
                    region.id,
                    "admin command is empty",
                ))
            }
        }
    }
    for req in &cmd.requests {
        match &req.cmd {
            Some(Cmd::Put(p)) if !in_range(&p.key, &region.start_key, &region.end_key) => {
                return Err(region_error::key_not_in_region(&p.key, region))
            }
            Some(Cmd::Delete(d)) if !in_range(&d.key, &region.start_key, &region.end_key) => {
                return Err(region_error::key_not_in_region(&d.key, region))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Bytes `cmd` writes (keys and values), the measure split checks are scheduled by.
pub fn written_bytes(cmd: &RaftCmdRequest) -> u64 {
    cmd.requests
        .iter()
        .map(|r| match &r.cmd {
            Some(Cmd::Put(p)) => (p.key.len() + p.value.len()) as u64,
            Some(Cmd::Delete(d)) => d.key.len() as u64,
            _ => 0,
        })
        .sum()
}

/// Whether applying `cmd` needs to see earlier writes of the same batch (it scans storage).
pub fn needs_flushed_state(cmd: &RaftCmdRequest) -> bool {
    cmd.requests
        .iter()
        .any(|r| matches!(r.cmd, Some(Cmd::DeleteRange(_))))
}

fn check_split(region: &Region, split: &SplitRequest) -> CmdResult {
    let key = &split.split_key;
    let inside = !key.is_empty()
        && key.as_slice() > region.start_key.as_slice()
        && (region.end_key.is_empty() || key.as_slice() < region.end_key.as_slice());
    if !inside {
        return Err(region_error::key_not_in_region(key, region));
    }
    if split.new_region_id == 0 || split.new_peer_ids.len() != region.peers.len() {
        return Err(region_error::invalid_command(
            region.id,
            &format!(
                "split needs a new region id and {} new peer ids, got id {} and {} peer ids",
                region.peers.len(),
                split.new_region_id,
                split.new_peer_ids.len()
            ),
        ));
    }
    Ok(())
}

/// The two regions a checked split of `region` produces.
pub fn split_regions(region: &Region, split: &SplitRequest) -> (Region, Region) {
    let epoch = region.region_epoch.unwrap_or_default();
    let next = RegionEpoch {
        conf_ver: epoch.conf_ver,
        version: epoch.version + 1,
    };
    let left = Region {
        end_key: split.split_key.clone(),
        region_epoch: Some(next),
        ..region.clone()
    };
    let right = Region {
        id: split.new_region_id,
        start_key: split.split_key.clone(),
        end_key: region.end_key.clone(),
        region_epoch: Some(next),
        peers: region
            .peers
            .iter()
            .zip(&split.new_peer_ids)
            .map(|(p, id)| PeerMeta { id: *id, ..*p })
            .collect(),
    };
    (left, right)
}

/// Adds the writes of `cmd` to `batch`. A delete range scans `kv`, so the caller must have
/// written every earlier write of the round first (see [`needs_flushed_state`]).
pub fn exec_command(
    region: &Region,
    cmd: &RaftCmdRequest,
    kv: &dyn KvEngine,
    batch: &mut KvWriteBatch,
) -> StorageResult<Applied> {
    if let Err(e) = check_command(region, cmd) {
        return Ok(Applied::refused(e));
    }
    if let Some(admin) = &cmd.admin {
        let admin = match &admin.cmd {
            Some(admin_request::Cmd::Split(split)) => {
                let (left, right) = split_regions(region, split);
                layout::write_region_state(
                    batch,
                    &RegionLocalState {
                        state: PeerState::Normal as i32,
                        region: Some(left.clone()),
                    },
                );
                // A peer of the new region can only exist here already if it was created
                // from a snapshot, which is newer than this split: keep it.
                if layout::read_region_state(kv, right.id)?.is_none() {
                    PeerStorage::write_split_state(&right, batch);
                }
                AdminResult::Split { left, right }
            }
            Some(admin_request::Cmd::CompactLog(c)) => AdminResult::CompactLog {
                index: c.compact_index,
                term: c.compact_term,
            },
            None => unreachable!("check_command refuses an empty admin command"),
        };
        return Ok(Applied {
            result: Ok(()),
            admin: Some(admin),
        });
    }
    for Request { cmd } in &cmd.requests {
        match cmd {
            Some(Cmd::Put(p)) => batch.put(data_key(&p.key), p.value.clone()),
            Some(Cmd::Delete(d)) => batch.delete(data_key(&d.key)),
            Some(Cmd::DeleteRange(r)) => {
                let keyspace = r.keyspace.unwrap_or_else(keys::default_keyspace);
                for key in keys_in_user_range(region, &keyspace, &r.start_key, &r.end_key, kv)? {
                    batch.delete(key);
                }
            }
            None => {}
        }
    }
    Ok(Applied {
        result: Ok(()),
        admin: None,
    })
}

/// The storage-key span of `keyspace` that user range `[start, end)` can touch, clipped to the
/// region. In a hash keyspace that is the whole keyspace: user order is not storage order.
pub fn scan_span(
    region: &Region,
    keyspace: &Keyspace,
    start: &[u8],
    end: &[u8],
) -> Option<(Vec<u8>, Vec<u8>)> {
    let (mut lo, mut hi) = if keyspace.mode == KeyspaceMode::Range as i32 {
        let hi = if end.is_empty() {
            keys::keyspace_end(keyspace)
        } else {
            keys::encode(keyspace, end)
        };
        (keys::encode(keyspace, start), hi)
    } else {
        (
            keys::keyspace_prefix(keyspace),
            keys::keyspace_end(keyspace),
        )
    };
    if lo < region.start_key {
        lo = region.start_key.clone();
    }
    if !region.end_key.is_empty() && hi > region.end_key {
        hi = region.end_key.clone();
    }
    (lo < hi).then(|| data_range(&lo, &hi))
}

/// Whether user key `k` is in `[start, end)`, an empty `end` being unbounded.
pub fn user_in_range(k: &[u8], start: &[u8], end: &[u8]) -> bool {
    k >= start && (end.is_empty() || k < end)
}

fn keys_in_user_range(
    region: &Region,
    keyspace: &Keyspace,
    start: &[u8],
    end: &[u8],
    kv: &dyn KvEngine,
) -> StorageResult<Vec<Vec<u8>>> {
    let Some((lo, hi)) = scan_span(region, keyspace, start, end) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    kv.scan(&lo, &hi, &mut |k, _| {
        if keys::user_key_unchecked(origin_key(k)).is_some_and(|u| user_in_range(u, start, end)) {
            out.push(k.to_vec());
        }
        true
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_proto::metapb::RegionEpoch;
    use ringkv_proto::raftpb::{DeleteRangeRequest, PutRequest};
    use ringkv_storage::MemKv;

    fn whole_region() -> Region {
        Region {
            id: 1,
            region_epoch: Some(RegionEpoch {
                conf_ver: 1,
                version: 1,
            }),
            ..Default::default()
        }
    }

    fn put(user: &[u8]) -> Request {
        Request {
            cmd: Some(Cmd::Put(PutRequest {
                key: keys::encode(&keys::default_keyspace(), user),
                value: user.to_vec(),
            })),
        }
    }

    fn run(kv: &MemKv, region: &Region, requests: Vec<Request>, version: u64) -> CmdResult {
        let cmd = RaftCmdRequest {
            region_id: region.id,
            region_epoch: Some(RegionEpoch {
                conf_ver: 1,
                version,
            }),
            requests,
            admin: None,
        };
        let mut batch = KvWriteBatch::default();
        let applied = exec_command(region, &cmd, kv, &mut batch).unwrap();
        kv.write(batch).unwrap();
        applied.result
    }

    #[test]
    fn stale_epoch_is_refused_and_writes_nothing() {
        let kv = MemKv::new();
        let region = whole_region();
        assert!(run(&kv, &region, vec![put(b"a")], 0).is_err());
        assert!(kv.dump().is_empty());
        assert!(run(&kv, &region, vec![put(b"a")], 1).is_ok());
        assert_eq!(kv.dump().len(), 1);
    }

    #[test]
    fn delete_range_in_hash_keyspace_uses_user_order() {
        let kv = MemKv::new();
        let region = whole_region();
        let puts = [b"a".as_ref(), b"b", b"c", b"d", b"e"]
            .iter()
            .map(|k| put(k))
            .collect();
        run(&kv, &region, puts, 1).unwrap();
        let del = Request {
            cmd: Some(Cmd::DeleteRange(DeleteRangeRequest {
                keyspace: Some(keys::default_keyspace()),
                start_key: b"b".to_vec(),
                end_key: b"d".to_vec(),
            })),
        };
        run(&kv, &region, vec![del], 1).unwrap();
        let mut left: Vec<Vec<u8>> = kv
            .dump()
            .keys()
            .map(|k| keys::user_key_unchecked(origin_key(k)).unwrap().to_vec())
            .collect();
        left.sort();
        assert_eq!(left, vec![b"a".to_vec(), b"d".to_vec(), b"e".to_vec()]);
    }
}
