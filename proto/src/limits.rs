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
