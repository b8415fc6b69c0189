//! TSO timestamps: physical milliseconds in the high bits, a logical counter in the low 18.

/// Bits of the logical part.
pub const LOGICAL_BITS: u32 = 18;

/// The physical time (ms since the Unix epoch) of a timestamp.
pub fn physical_ms(ts: u64) -> u64 {
    ts >> LOGICAL_BITS
}

/// The smallest timestamp at physical time `ms`.
pub fn from_physical_ms(ms: u64) -> u64 {
    ms << LOGICAL_BITS
}
