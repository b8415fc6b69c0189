//! A replica's safe timestamp: the highest `ts` at which it may serve a stale read from its
//! own state, with no leader contact.
//!
//! The leader's resolver ([`crate::resolved_ts`]) publishes claims `(index, ts)`: "from log
//! index `index` on, no transaction can commit at or below `ts` any more". A claim is a fact
//! about the log, true forever once made, so a replica takes the highest claim whose index it
//! has applied; later claims wait until it has. A claim covers the region's range as it was
//! (its epoch version): a merge widens the range by keys the claim never looked at, so a change
//! of version drops every claim (a split only narrows it, but is treated the same: the leader
//! publishes again within one advance interval).

use std::collections::VecDeque;

/// Claims waiting for apply at most; a replica this far behind keeps the newest.
const PENDING_MAX: usize = 8;

#[derive(Debug, Default)]
pub struct SafeTs {
    /// The epoch version the claims are about.
    version: u64,
    /// In force: its index is applied.
    current: u64,
    /// The log index of the claim in force.
    current_index: u64,
    /// (index, ts) not yet applied, in the order received.
    pending: VecDeque<(u64, u64)>,
}

impl SafeTs {
    /// Records a claim made at region version `version`; `applied` is the replica's applied
    /// index and `current_version` its region's version now.
    pub fn publish(
        &mut self,
        current_version: u64,
        version: u64,
        index: u64,
        ts: u64,
        applied: u64,
    ) {
        if version != current_version {
            return;
        }
        self.follow(current_version, applied);
        if ts <= self.current || self.pending.iter().any(|&(_, t)| t >= ts) {
            return;
        }
        if self.pending.len() == PENDING_MAX {
            self.pending.pop_back();
        }
        self.pending.push_back((index, ts));
        self.follow(current_version, applied);
    }

    /// The safe timestamp in force at region version `current_version` with `applied`
    /// applied (0: none).
    pub fn get(&mut self, current_version: u64, applied: u64) -> u64 {
        self.follow(current_version, applied);
        self.current
    }

    fn follow(&mut self, current_version: u64, applied: u64) {
        if self.version != current_version {
            *self = SafeTs {
                version: current_version,
                ..SafeTs::default()
            };
        }
        while let Some(&(index, ts)) = self.pending.front() {
            if index > applied {
                break;
            }
            self.pending.pop_front();
            if ts > self.current {
                self.current = ts;
                self.current_index = index;
            }
        }
    }

    /// Whether the claim in force was made at `index` or later, at region version
    /// `current_version`: it then speaks for the replica's whole state up to `index`.
    pub fn made_at_or_after(&mut self, current_version: u64, index: u64) -> bool {
        self.follow(current_version, index);
        self.current != 0 && self.current_index >= index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_takes_effect_once_its_index_is_applied() {
        let mut s = SafeTs::default();
        s.publish(1, 1, 10, 100, 9);
        assert_eq!(s.get(1, 9), 0, "index 10 not applied yet");
        assert_eq!(s.get(1, 10), 100);
        s.publish(1, 1, 12, 150, 10);
        s.publish(1, 1, 11, 120, 10);
        assert_eq!(
            s.get(1, 11),
            100,
            "120 was queued behind 150's index and dropped"
        );
        assert_eq!(s.get(1, 12), 150);
    }

    #[test]
    fn a_lower_claim_never_takes_the_safe_timestamp_back() {
        let mut s = SafeTs::default();
        s.publish(3, 3, 5, 200, 5);
        s.publish(3, 3, 6, 150, 6);
        assert_eq!(s.get(3, 6), 200);
    }

    #[test]
    fn a_new_region_version_drops_every_claim_and_claims_of_another_version_are_ignored() {
        let mut s = SafeTs::default();
        s.publish(1, 1, 5, 100, 5);
        s.publish(1, 1, 8, 130, 5);
        assert_eq!(
            s.get(2, 8),
            0,
            "merged or split: the claims were about another range"
        );
        s.publish(2, 1, 9, 140, 9);
        assert_eq!(s.get(2, 9), 0, "a claim about the old range");
        s.publish(2, 2, 9, 140, 9);
        assert_eq!(s.get(2, 9), 140);
    }

    #[test]
    fn a_claim_speaks_for_the_state_up_to_its_index() {
        let mut s = SafeTs::default();
        assert!(!s.made_at_or_after(1, 0), "no claim yet");
        s.publish(1, 1, 7, 100, 7);
        assert!(s.made_at_or_after(1, 7));
        assert!(!s.made_at_or_after(1, 8), "written to after the claim");
        s.publish(1, 1, 9, 120, 9);
        assert!(s.made_at_or_after(1, 9));
        assert!(!s.made_at_or_after(2, 9), "a new version drops the claim");
    }

    #[test]
    fn a_replica_far_behind_keeps_a_bounded_queue() {
        let mut s = SafeTs::default();
        for i in 1..=20u64 {
            s.publish(1, 1, 100 + i, 1000 + i, 0);
        }
        assert!(s.pending.len() <= PENDING_MAX);
        assert_eq!(s.get(1, 200), 1020, "the newest claim is kept");
    }
}
