//! Raft messages from the network, checked before they reach raft-rs.
//!
//! raft-rs trusts its peers: a message no correct peer sends can make it panic (a heartbeat
//! whose commit index lies past the local log, an append response naming an index past the
//! leader's log, a snapshot at term 0, a read request without its context entry) or overflow
//! an index. A node that panics takes every region it holds down with it, so every message
//! from the network passes [`admit`] first: one that would break an assumption of raft-rs is
//! refused (and dropped; Raft resends what matters), never stepped. This is not
//! authentication: a peer that speaks well-formed Raft is still believed.

use raft::eraftpb::{Message, MessageType};

/// What [`admit`] needs to know of the receiving Raft member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogView {
    /// The member's current term.
    pub term: u64,
    /// The last index of its log.
    pub last_index: u64,
    /// Its commit index.
    pub committed: u64,
}

impl LogView {
    /// The view of a raft-rs member.
    pub fn of<S: raft::Storage>(raft: &raft::Raft<S>) -> Self {
        LogView {
            term: raft.term,
            last_index: raft.raft_log.last_index(),
            committed: raft.raft_log.committed,
        }
    }
}

/// How far a message's term may run ahead of the receiver's. Terms grow by one an election;
/// no real cluster is four billion elections ahead of one of its members, while a term near
/// `u64::MAX` would overflow the next election.
pub const TERM_AHEAD_MAX: u64 = 1 << 32;

/// Checks `msg` from the network against the receiver's log; `Err` says why it is refused.
/// A heartbeat whose commit index lies past the local log (this member lost entries, or the
/// sender is wrong) is kept with its commit index lowered to the local one, so liveness and
/// read-index rounds still work while the commit index only moves with appends.
pub fn admit(msg: &mut Message, log: LogView) -> Result<(), String> {
    use MessageType::*;
    let kind = msg.get_msg_type();
    match kind {
        MsgHup | MsgBeat | MsgPropose | MsgUnreachable | MsgSnapStatus | MsgCheckQuorum => {
            return Err(format!("{kind:?} is local to a member"))
        }
        _ => {}
    }
    // Only a forwarded read request travels without a term; raft-rs would take any other
    // message without one as local and skip its term checks.
    if msg.term == 0 && kind != MsgReadIndex {
        return Err(format!("{kind:?} without a term"));
    }
    if msg.term > log.term.saturating_add(TERM_AHEAD_MAX) {
        return Err(format!(
            "term {} is more than {TERM_AHEAD_MAX} ahead of this member's {}",
            msg.term, log.term
        ));
    }
    match kind {
        MsgAppend => check_append(msg, log),
        MsgAppendResponse => {
            if msg.index > log.last_index
                || msg.reject_hint > log.last_index
                || msg.request_snapshot > log.last_index
            {
                return Err(format!(
                    "append response names index {} (hint {}, snapshot {}) past the last index {}",
                    msg.index, msg.reject_hint, msg.request_snapshot, log.last_index
                ));
            }
            Ok(())
        }
        MsgHeartbeat => {
            if msg.commit > log.last_index {
                msg.commit = log.committed;
            }
            Ok(())
        }
        MsgSnapshot => {
            let meta = msg.get_snapshot().get_metadata();
            if meta.index == 0 || meta.term == 0 || meta.term > msg.term {
                return Err(format!(
                    "snapshot at index {} term {} (message term {})",
                    meta.index, meta.term, msg.term
                ));
            }
            if meta.get_conf_state().get_voters().is_empty() {
                return Err("snapshot whose membership has no voters".into());
            }
            Ok(())
        }
        MsgReadIndex | MsgReadIndexResp => {
            if msg.entries.len() != 1 {
                return Err(format!(
                    "{kind:?} carries {} entries instead of its one context entry",
                    msg.entries.len()
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// An append must continue the log at `index + 1` with entries of consecutive indexes and
/// non-decreasing terms no newer than the message; and it must not claim to match past the
/// local log at term 0 (raft-rs reads the term of an index past its log as 0, so it would
/// believe such an append and leave a hole).
fn check_append(msg: &Message, log: LogView) -> Result<(), String> {
    if msg.log_term == 0 && msg.index > log.last_index {
        return Err(format!(
            "append after index {} at term 0, past the last index {}",
            msg.index, log.last_index
        ));
    }
    let mut expected_index = msg.index;
    let mut last_term = msg.log_term;
    for e in msg.get_entries() {
        expected_index = expected_index
            .checked_add(1)
            .ok_or("append past the largest index")?;
        if e.index != expected_index {
            return Err(format!(
                "append entries are not consecutive: index {} where {expected_index} belongs",
                e.index
            ));
        }
        if e.term < last_term || e.term > msg.term {
            return Err(format!(
                "append entry {} has term {}, outside {last_term}..={}",
                e.index, e.term, msg.term
            ));
        }
        last_term = e.term;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::{Entry, Snapshot};

    const LOG: LogView = LogView {
        term: 7,
        last_index: 100,
        committed: 90,
    };

    fn msg(kind: MessageType, term: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.term = term;
        m
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    fn append(index: u64, log_term: u64, entries: &[(u64, u64)]) -> Message {
        let mut m = msg(MessageType::MsgAppend, 7);
        m.index = index;
        m.log_term = log_term;
        m.set_entries(entries.iter().map(|&(i, t)| entry(i, t)).collect());
        m
    }

    #[test]
    fn what_a_correct_peer_sends_is_admitted() {
        let cases = [
            append(100, 7, &[(101, 7), (102, 7)]),
            // Past the local log with a real term: raft rejects it and the leader probes back.
            append(150, 6, &[(151, 7)]),
            msg(MessageType::MsgRequestVote, 8),
            msg(MessageType::MsgHeartbeatResponse, 7),
            msg(MessageType::MsgTimeoutNow, 7),
        ];
        for mut m in cases {
            assert_eq!(admit(&mut m, LOG), Ok(()), "{m:?}");
        }
        let mut read = msg(MessageType::MsgReadIndex, 0);
        read.set_entries(vec![entry(0, 0)].into());
        assert_eq!(admit(&mut read, LOG), Ok(()));
        let mut resp = msg(MessageType::MsgAppendResponse, 7);
        (resp.index, resp.reject_hint) = (100, 95);
        assert_eq!(admit(&mut resp, LOG), Ok(()));
    }

    #[test]
    fn messages_raft_rs_would_panic_or_overflow_on_are_refused() {
        let mut overflow = append(u64::MAX, 7, &[(0, 7)]);
        let mut hole = append(u64::MAX - 1, 0, &[]);
        let mut gap = append(100, 7, &[(101, 7), (103, 7)]);
        let mut backwards = append(100, 7, &[(101, 7), (102, 6)]);
        let mut term_from_the_future = append(100, 7, &[(101, 9)]);
        let mut response = msg(MessageType::MsgAppendResponse, 7);
        response.index = u64::MAX;
        let mut hint = msg(MessageType::MsgAppendResponse, 7);
        (hint.reject, hint.index, hint.reject_hint) = (true, 50, u64::MAX);
        let mut snapshot_at_term_zero = msg(MessageType::MsgSnapshot, 7);
        snapshot_at_term_zero.set_snapshot(Snapshot::default());
        snapshot_at_term_zero.mut_snapshot().mut_metadata().index = 500;
        let mut read_without_context = msg(MessageType::MsgReadIndex, 0);
        let mut huge_term = msg(MessageType::MsgRequestVote, u64::MAX);
        let mut termless = msg(MessageType::MsgAppend, 0);
        let mut local = msg(MessageType::MsgPropose, 7);
        for m in [
            &mut overflow,
            &mut hole,
            &mut gap,
            &mut backwards,
            &mut term_from_the_future,
            &mut response,
            &mut hint,
            &mut snapshot_at_term_zero,
            &mut read_without_context,
            &mut huge_term,
            &mut termless,
            &mut local,
        ] {
            assert!(admit(m, LOG).is_err(), "admitted: {m:?}");
        }
    }

    #[test]
    fn a_heartbeat_committing_past_the_log_keeps_the_local_commit_index() {
        let mut hb = msg(MessageType::MsgHeartbeat, 7);
        hb.commit = 5_000;
        assert_eq!(admit(&mut hb, LOG), Ok(()));
        assert_eq!(hb.commit, LOG.committed);
        let mut fine = msg(MessageType::MsgHeartbeat, 7);
        fine.commit = 95;
        assert_eq!(admit(&mut fine, LOG), Ok(()));
        assert_eq!(fine.commit, 95);
    }
}
