//! Label-aware placement: stores carry labels (`zone`, `rack`, `host`, …); a region's replicas
//! should sit as far apart as the stores allow, the first of `location_labels` counting most.
//! Pure.
//!
//! A store's *location* is its values of the location labels, in order (`""` where a label is
//! missing). Two locations are at *distance* `n - i` when they first differ at label `i` of
//! `n` (different zones: `n`; same zone, different racks: `n - 1`; …) and 0 when equal. A
//! replica's *isolation* in a region is its smallest distance to the region's other replicas.
//! Placement picks the store that maximises the new replica's isolation (then the least
//! loaded); the replica checker moves the worst-isolated replica when a store would isolate it
//! strictly better; balance-region never makes a replica's isolation worse. Each such move
//! raises the region's sorted list of pairwise distances, so they end.

use std::collections::HashMap;

/// A store's values of `keys`, in order; `""` where it has none.
pub fn location(labels: &HashMap<String, String>, keys: &[String]) -> Vec<String> {
    keys.iter()
        .map(|k| labels.get(k).cloned().unwrap_or_default())
        .collect()
}

/// How far apart two locations are (see the module doc).
pub fn distance(a: &[String], b: &[String]) -> usize {
    debug_assert_eq!(a.len(), b.len(), "locations over different label keys");
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .map_or(0, |i| a.len() - i)
}

/// The isolation of a replica at `at` among replicas at `others`: its smallest distance to
/// them (`usize::MAX` when there are none).
pub fn isolation<'a>(at: &[String], others: impl IntoIterator<Item = &'a [String]>) -> usize {
    others
        .into_iter()
        .map(|o| distance(at, o))
        .min()
        .unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_first_label_that_differs_sets_the_distance() {
        let keys = loc(&["zone", "rack", "host"]);
        let labels: HashMap<String, String> = [("zone".to_string(), "z1".to_string())]
            .into_iter()
            .collect();
        assert_eq!(location(&labels, &keys), loc(&["z1", "", ""]));
        let a = loc(&["z1", "r1", "h1"]);
        assert_eq!(distance(&a, &loc(&["z2", "r1", "h1"])), 3);
        assert_eq!(distance(&a, &loc(&["z1", "r2", "h1"])), 2);
        assert_eq!(distance(&a, &loc(&["z1", "r1", "h2"])), 1);
        assert_eq!(distance(&a, &a), 0);
        let others = [loc(&["z2", "r1", "h1"]), loc(&["z1", "r1", "h2"])];
        assert_eq!(isolation(&a, others.iter().map(Vec::as_slice)), 1);
        assert_eq!(isolation(&a, std::iter::empty()), usize::MAX);
    }
}
