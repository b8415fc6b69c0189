//! Constructors of the region errors a node answers with. Every one carries a message that says
//! what happened, for logs and for users reading raw responses.

use ringkv_proto::errorpb::{self, region_error::Kind, RegionError};
use ringkv_proto::metapb::{Peer, Region};

pub fn not_leader(region_id: u64, leader: Option<Peer>) -> RegionError {
    let message = match &leader {
        Some(l) => format!(
            "peer is not the leader of region {region_id}; leader is peer {} on store {}",
            l.id, l.store_id
        ),
        None => format!("peer is not the leader of region {region_id}; no leader is known yet"),
    };
    RegionError {
        message,
        kind: Some(Kind::NotLeader(errorpb::NotLeader { region_id, leader })),
    }
}

/// A command the node cannot run as asked (malformed admin command). Deterministic: every
/// replica refuses it the same way.
pub fn invalid_command(region_id: u64, detail: &str) -> RegionError {
    RegionError {
        message: format!("region {region_id}: invalid command: {detail}"),
        kind: None,
    }
}

pub fn region_not_found(region_id: u64) -> RegionError {
    RegionError {
        message: format!("region {region_id} is not found on this store"),
        kind: Some(Kind::RegionNotFound(errorpb::RegionNotFound { region_id })),
    }
}

pub fn epoch_not_match(
    current: &Region,
    requested: Option<ringkv_proto::metapb::RegionEpoch>,
) -> RegionError {
    let now = current.region_epoch.unwrap_or_default();
    let asked = requested.unwrap_or_default();
    RegionError {
        message: format!(
            "region {} epoch is conf_ver {} version {}; request has conf_ver {} version {}",
            current.id, now.conf_ver, now.version, asked.conf_ver, asked.version
        ),
        kind: Some(Kind::EpochNotMatch(errorpb::EpochNotMatch {
            current_regions: vec![current.clone()],
        })),
    }
}

pub fn key_not_in_region(key: &[u8], region: &Region) -> RegionError {
    RegionError {
        message: format!("key is not in region {}", region.id),
        kind: Some(Kind::KeyNotInRegion(errorpb::KeyNotInRegion {
            key: key.to_vec(),
            region_id: region.id,
            start_key: region.start_key.clone(),
            end_key: region.end_key.clone(),
        })),
    }
}

pub fn server_is_busy(reason: &str) -> RegionError {
    RegionError {
        message: format!("server is busy: {reason}"),
        kind: Some(Kind::ServerIsBusy(errorpb::ServerIsBusy {
            reason: reason.to_string(),
            backoff_ms: 10,
        })),
    }
}

pub fn stale_command(region_id: u64) -> RegionError {
    RegionError {
        message: format!(
            "proposal to region {region_id} was overtaken by a leader change and not applied"
        ),
        kind: Some(Kind::StaleCommand(errorpb::StaleCommand {})),
    }
}

/// The region is the source of a merge in progress: it serves nothing until the merge is done
/// (then its keys belong to the target) or rolled back. Retryable after a short backoff.
pub fn merging(region_id: u64, target_id: u64) -> RegionError {
    RegionError {
        message: format!(
            "region {region_id} is merging into region {target_id}; retry shortly (the keys move to region {target_id})"
        ),
        kind: Some(Kind::ServerIsBusy(errorpb::ServerIsBusy {
            reason: format!("region {region_id} is merging"),
            backoff_ms: 50,
        })),
    }
}

/// A stale read at `read_ts` above what this replica can serve yet (its safe timestamp).
pub fn data_is_not_ready(region_id: u64, peer_id: u64, read_ts: u64, safe_ts: u64) -> RegionError {
    RegionError {
        message: format!(
            "region {region_id}: peer {peer_id} cannot serve a stale read at {read_ts} yet (its safe timestamp is {safe_ts}); read at the leader or at an older timestamp"
        ),
        kind: Some(Kind::DataIsNotReady(errorpb::DataIsNotReady {
            region_id,
            peer_id,
            safe_ts,
        })),
    }
}

/// A raw write whose session the region no longer remembers ([`crate::session::admit`]): not
/// applied now; an earlier attempt may have been.
pub fn session_expired(
    region_id: u64,
    session: &ringkv_proto::kvrpcpb::WriteSession,
    why: &str,
) -> RegionError {
    RegionError {
        message: format!(
            "region {region_id} refused write {} of session {}: {why}; the write was not applied now, but an earlier attempt of it may have been (a client that never sent it before may send it in a new session)",
            session.seq, session.id
        ),
        kind: Some(Kind::SessionExpired(errorpb::SessionExpired {
            region_id,
            session_id: session.id,
            seq: session.seq,
        })),
    }
}

/// A proposal raft replaced with an empty entry (a membership change while another is still
/// being applied): not applied; propose again once the other change is done.
pub fn dropped_by_raft(region_id: u64) -> RegionError {
    RegionError {
        message: format!(
            "region {region_id}: raft refused the proposal (a membership change while another is not yet applied) and it was not applied; retry once the other change is done"
        ),
        kind: Some(Kind::StaleCommand(errorpb::StaleCommand {})),
    }
}
