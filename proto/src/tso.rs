//! The layout of a TSO timestamp, defined once for every component: physical milliseconds since
//! the Unix epoch in the high bits, a logical counter in the low [`LOGICAL_BITS`].

/// Bits of the logical part.
pub const LOGICAL_BITS: u32 = 18;

/// The largest logical part.
pub const LOGICAL_MAX: u64 = (1 << LOGICAL_BITS) - 1;

/// Packs a physical time (ms) and a logical counter into one timestamp.
pub fn compose(physical_ms: u64, logical: u64) -> u64 {
    debug_assert!(logical <= LOGICAL_MAX, "logical part {logical} overflows");
    (physical_ms << LOGICAL_BITS) | logical
}

/// The physical time (ms since the Unix epoch) of a timestamp.
pub fn physical_ms(ts: u64) -> u64 {
    ts >> LOGICAL_BITS
}

/// The logical part of a timestamp.
pub fn logical(ts: u64) -> u64 {
    ts & LOGICAL_MAX
}

/// The smallest timestamp at physical time `ms`.
pub fn from_physical_ms(ms: u64) -> u64 {
    ms << LOGICAL_BITS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timestamp_splits_into_the_parts_it_was_made_of() {
        let ts = compose(1_700_000_000_000, 7);
        assert_eq!((physical_ms(ts), logical(ts)), (1_700_000_000_000, 7));
        assert_eq!(from_physical_ms(5), compose(5, 0));
        assert_eq!(logical(compose(1, LOGICAL_MAX)), LOGICAL_MAX);
    }
}
