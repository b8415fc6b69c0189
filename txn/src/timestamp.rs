//! TSO timestamps: physical milliseconds in the high bits, a logical counter in the low 18.
//! The layout is defined once, in `ringkv_proto::tso`.

pub use ringkv_proto::tso::{from_physical_ms, physical_ms, LOGICAL_BITS};
