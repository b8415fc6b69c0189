//! Facts about regions that the nodes and the placement driver must agree on: which regions
//! are neighbours and which share their stores (the two conditions of a merge).

use crate::metapb::Region;

/// Whether `a` and `b` are neighbours in key order (one ends where the other starts).
pub fn adjacent(a: &Region, b: &Region) -> bool {
    (!a.end_key.is_empty() && a.end_key == b.start_key)
        || (!b.end_key.is_empty() && b.end_key == a.start_key)
}

/// The stores of `region`'s peers, sorted.
pub fn store_ids(region: &Region) -> Vec<u64> {
    let mut ids: Vec<u64> = region.peers.iter().map(|p| p.store_id).collect();
    ids.sort_unstable();
    ids
}

/// Whether `a` and `b` have their peers on the same stores.
pub fn same_stores(a: &Region, b: &Region) -> bool {
    store_ids(a) == store_ids(b)
}
