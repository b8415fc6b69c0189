//! Size limits every request is checked against, by the client SDK before sending and by the node
//! before proposing. Keeping them in the wire crate keeps both sides in agreement.

/// The largest user key, in bytes.
pub const KEY_BYTES_MAX: usize = 8 * 1024;
/// The largest value, in bytes.
pub const VALUE_BYTES_MAX: usize = 8 * 1024 * 1024;
/// The most keys one batch request may carry.
pub const BATCH_KEYS_MAX: usize = 10_240;
/// The most bytes (keys plus values) one batch put may carry.
pub const BATCH_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The largest `limit` a scan request may ask for.
pub const SCAN_LIMIT_MAX: u32 = 10_240;
/// The most timestamps one TSO request may take (clients batch concurrent requests up to this).
pub const TSO_COUNT_MAX: u32 = 4096;
/// How far ahead of the receiver's wall clock a timestamp in a request may be. The TSO follows
/// the placement leader's clock, so only clock skew between hosts puts a real timestamp ahead;
/// anything further is not a timestamp the TSO issued.
pub const TS_AHEAD_MS_MAX: u64 = 60 * 60 * 1000;
/// The longest lock TTL a transaction may ask for (as TiDB's `max-txn-ttl`): a client that dies
/// holding locks blocks their keys for at most this long.
pub const LOCK_TTL_MS_MAX: u64 = 60 * 60 * 1000;
/// The most transactions a read may name as resolved.
pub const RESOLVED_LOCKS_MAX: usize = 1024;
/// A client session idle this long in a region (by the region's session clock) is forgotten
/// there; its writes are refused from then on, never applied as new (docs/design.md
/// "Exactly-once writes").
pub const SESSION_IDLE_MS: u64 = 10 * 60 * 1000;
/// How long a client uses one session for new writes before it opens another: half the idle
/// time, so no region forgets a session whose new writes still arrive.
pub const SESSION_ROTATE_MS: u64 = SESSION_IDLE_MS / 2;
/// How far a write's number may run ahead of the lowest number its client still waits for: the
/// bound on the writes a region remembers per session.
pub const SESSION_WINDOW: u64 = 1024;
/// How far a session's start (its id's physical time) may be ahead of the receiving node's
/// clock: a region remembers a session at least until its start, so a session "from the future"
/// would hold back its region's expiry horizon.
pub const SESSION_AHEAD_MS: u64 = 60 * 1000;
/// gRPC messages up to this size are accepted; it leaves room for a full batch plus framing.
pub const GRPC_MESSAGE_BYTES_MAX: usize = BATCH_BYTES_MAX + 16 * 1024 * 1024;

/// Checks a user key against the limits. The error says what was wrong.
pub fn check_user_key(key: &[u8]) -> Result<(), String> {
    if key.is_empty() {
        return Err("key is empty".into());
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(format!(
            "key is {} bytes; the limit is {KEY_BYTES_MAX}",
            key.len()
        ));
    }
    Ok(())
}

/// Checks a value against the limits.
pub fn check_value(value: &[u8]) -> Result<(), String> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(format!(
            "value is {} bytes; the limit is {VALUE_BYTES_MAX}",
            value.len()
        ));
    }
    Ok(())
}

/// Checks a user-key range `[start, end)`, an empty `end` being unbounded.
pub fn check_user_range(start: &[u8], end: &[u8]) -> Result<(), String> {
    if start.len() > KEY_BYTES_MAX || end.len() > KEY_BYTES_MAX {
        return Err(format!("range bound longer than {KEY_BYTES_MAX} bytes"));
    }
    if !end.is_empty() && start > end {
        return Err(format!(
            "inverted range: start key {:?} is after end key {:?}",
            String::from_utf8_lossy(start),
            String::from_utf8_lossy(end)
        ));
    }
    Ok(())
}

/// Checks a scan limit.
pub fn check_scan_limit(limit: u32) -> Result<(), String> {
    if limit == 0 || limit > SCAN_LIMIT_MAX {
        return Err(format!(
            "scan limit {limit} is outside 1..={SCAN_LIMIT_MAX}"
        ));
    }
    Ok(())
}

/// Checks the size of a batch: `count` items named `what` ("keys", "pairs") of `bytes` in all.
pub fn check_batch(count: usize, what: &str, bytes: usize) -> Result<(), String> {
    if count > BATCH_KEYS_MAX {
        return Err(format!(
            "batch of {count} {what}; the limit is {BATCH_KEYS_MAX}"
        ));
    }
    if bytes > BATCH_BYTES_MAX {
        return Err(format!(
            "batch of {bytes} bytes; the limit is {BATCH_BYTES_MAX}"
        ));
    }
    Ok(())
}

/// A merge names two distinct, real regions.
pub fn check_merge_ids(source_region_id: u64, target_region_id: u64) -> Result<(), String> {
    if source_region_id == 0 || target_region_id == 0 {
        return Err("merge needs a source and a target region id".into());
    }
    if source_region_id == target_region_id {
        return Err(format!(
            "region {source_region_id} cannot merge into itself"
        ));
    }
    Ok(())
}

/// Checks a timestamp field of a request: set, and not beyond what the TSO can have issued by
/// `now_wall_ms` (the receiver's wall clock, ms since the Unix epoch) plus [`TS_AHEAD_MS_MAX`].
/// `field` names the field in the error.
pub fn check_timestamp(ts: u64, field: &str, now_wall_ms: u64) -> Result<(), String> {
    if ts == 0 {
        return Err(format!("{field} is 0; take timestamps from the TSO"));
    }
    let latest = now_wall_ms.saturating_add(TS_AHEAD_MS_MAX);
    if crate::tso::physical_ms(ts) > latest {
        return Err(format!(
            "{field} {ts} (physical {} ms) is more than {TS_AHEAD_MS_MAX} ms ahead of this \
             server's clock ({now_wall_ms} ms); take timestamps from the TSO, and check the hosts' \
             clocks are synchronised",
            crate::tso::physical_ms(ts)
        ));
    }
    Ok(())
}

/// Checks a lock TTL (`field` names it in the error).
pub fn check_lock_ttl(ttl_ms: u64, field: &str) -> Result<(), String> {
    if ttl_ms > LOCK_TTL_MS_MAX {
        return Err(format!(
            "{field} {ttl_ms} ms is above the limit of {LOCK_TTL_MS_MAX} ms"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tso::from_physical_ms;

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn a_timestamp_is_refused_when_unset_or_beyond_what_the_tso_can_have_issued() {
        assert!(check_timestamp(0, "start_version", NOW)
            .unwrap_err()
            .contains("start_version is 0"));
        for ts in [
            1,
            from_physical_ms(NOW),
            from_physical_ms(NOW + TS_AHEAD_MS_MAX),
        ] {
            assert_eq!(check_timestamp(ts, "start_version", NOW), Ok(()));
        }
        for ts in [
            from_physical_ms(NOW + TS_AHEAD_MS_MAX + 1),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let e = check_timestamp(ts, "commit_version", NOW).unwrap_err();
            assert!(e.contains("commit_version"), "{e}");
        }
        // A clock at its end does not wrap around.
        assert_eq!(check_timestamp(u64::MAX, "ts", u64::MAX), Ok(()));
    }

    #[test]
    fn a_lock_ttl_above_the_limit_is_refused() {
        assert_eq!(check_lock_ttl(LOCK_TTL_MS_MAX, "lock_ttl"), Ok(()));
        assert!(check_lock_ttl(u64::MAX, "lock_ttl")
            .unwrap_err()
            .contains("lock_ttl"));
    }
}
