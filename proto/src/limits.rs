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
