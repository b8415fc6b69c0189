//! Exactly-once raw writes (docs/design.md "Exactly-once writes"; Raft dissertation §6.3).
//!
//! A client numbers its raw writes within a session. Each region remembers, per session, which
//! numbers it applied and which keys each covered ([`SessionRecord`]), in the same atomic batch
//! as the data; a retry of a number skips the keys it already covered. Everything here is a
//! function of the log: the session clock is the largest proposer time in it, so every replica
//! forgets the same sessions at the same entry, and a session the region forgot gets
//! "expired", never a fresh apply.
//!
//! The rules ([`admit`], [`record_write`], [`expired`]) are pure; [`SessionTable`] loads and
//! stores the records of one region for its apply delegate.

use prost::Message;
use ringkv_proto::kvrpcpb::WriteSession;
use ringkv_proto::raftpb::{ApplyState, KeySpan, SessionRecord, SessionWrite};
use ringkv_proto::tso;
use ringkv_storage::{layout, KvEngine, KvWriteBatch, Result as StorageResult, StorageError};
use std::collections::HashMap;

pub use ringkv_proto::limits::{SESSION_IDLE_MS, SESSION_ROTATE_MS, SESSION_WINDOW};

/// Attempts of one write a region remembers spans for (one per region layout it was sent to).
pub const SPANS_PER_WRITE_MAX: usize = 16;

/// How often (by the session clock) a region drops the records of sessions idle past
/// [`SESSION_IDLE_MS`].
const SWEEP_EVERY_MS: u64 = SESSION_IDLE_MS / 2;

/// When session `id` began: the physical part of its TSO timestamp, in ms.
pub fn session_start_ms(id: u64) -> u64 {
    tso::physical_ms(id)
}

/// Checks a session carried by a request, at the edge.
pub fn check_session(session: &WriteSession) -> Result<(), String> {
    if session.id == 0 {
        return Err("session.id is 0; a session id is a TSO timestamp".into());
    }
    if session.seq == 0 {
        return Err("session.seq is 0; write numbers start at 1".into());
    }
    if session.lowest_unanswered == 0 || session.lowest_unanswered > session.seq {
        return Err(format!(
            "session.lowest_unanswered {} must be between 1 and session.seq {}",
            session.lowest_unanswered, session.seq
        ));
    }
    if session.seq - session.lowest_unanswered >= SESSION_WINDOW {
        return Err(format!(
            "session.seq {} is {} or more ahead of session.lowest_unanswered {}",
            session.seq, SESSION_WINDOW, session.lowest_unanswered
        ));
    }
    Ok(())
}

/// What a region does with a write of a session.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Apply the write, skipping its keys inside `done`: spans an earlier attempt of the same
    /// write covered here.
    Write { done: Vec<KeySpan> },
    /// Refuse it: the region forgot the session (`forget`: its record is stale and goes now),
    /// or the number was answered already. An earlier attempt may have been applied.
    Expired { why: String, forget: bool },
}

/// Decides about a write of `session` given the region's record of it, its session clock and
/// horizon.
pub fn admit(
    record: Option<&SessionRecord>,
    session: &WriteSession,
    clock_ms: u64,
    horizon_ms: u64,
) -> Admission {
    let Some(record) = record else {
        if session_start_ms(session.id) <= horizon_ms {
            return Admission::Expired {
                why: format!(
                    "session {} began at {} ms, before sessions this region forgot (up to {horizon_ms} ms)",
                    session.id,
                    session_start_ms(session.id)
                ),
                forget: false,
            };
        }
        return Admission::Write { done: Vec::new() };
    };
    if expired(record, clock_ms) {
        return Admission::Expired {
            why: format!(
                "session {} was idle here since {} ms, more than {SESSION_IDLE_MS} ms",
                session.id, record.last_ms
            ),
            forget: true,
        };
    }
    let lowest = record.lowest_unanswered.max(session.lowest_unanswered);
    if session.seq < lowest {
        return Admission::Expired {
            why: format!(
                "write {} of session {} was answered already (the client waits for {lowest} and up)",
                session.seq, session.id
            ),
            forget: false,
        };
    }
    if session.seq - lowest >= SESSION_WINDOW {
        return Admission::Expired {
            why: format!(
                "write {} of session {} is {SESSION_WINDOW} or more ahead of write {lowest}",
                session.seq, session.id
            ),
            forget: false,
        };
    }
    let done = record
        .writes
        .iter()
        .find(|w| w.seq == session.seq)
        .map(|w| w.spans.clone())
        .unwrap_or_default();
    if done.len() >= SPANS_PER_WRITE_MAX {
        return Admission::Expired {
            why: format!(
                "write {} of session {} was retried across {SPANS_PER_WRITE_MAX} region layouts",
                session.seq, session.id
            ),
            forget: false,
        };
    }
    Admission::Write { done }
}

/// Whether a record is past its idle time at session clock `clock_ms`.
pub fn expired(record: &SessionRecord, clock_ms: u64) -> bool {
    record.last_ms.saturating_add(SESSION_IDLE_MS) < clock_ms
}

/// The record after `session`'s write covered `span` here.
pub fn record_write(
    record: Option<SessionRecord>,
    session: &WriteSession,
    span: KeySpan,
    clock_ms: u64,
) -> SessionRecord {
    let mut record = record.unwrap_or_default();
    record.last_ms = record
        .last_ms
        .max(clock_ms)
        .max(session_start_ms(session.id));
    record.lowest_unanswered = record.lowest_unanswered.max(session.lowest_unanswered);
    let lowest = record.lowest_unanswered;
    record.writes.retain(|w| w.seq >= lowest);
    match record.writes.iter_mut().find(|w| w.seq == session.seq) {
        Some(w) => {
            if !w.spans.contains(&span) {
                w.spans.push(span);
            }
        }
        None => record.writes.push(SessionWrite {
            seq: session.seq,
            spans: vec![span],
        }),
    }
    record
}

/// Whether encoded key `key` lies in `span`.
pub fn in_span(key: &[u8], span: &KeySpan) -> bool {
    key >= span.start.as_slice() && (span.end.is_empty() || key < span.end.as_slice())
}

/// The span `[first, past last]` of point keys (None: no keys).
pub fn point_span<'k>(keys: impl IntoIterator<Item = &'k [u8]>) -> Option<KeySpan> {
    let mut min: Option<&[u8]> = None;
    let mut max: Option<&[u8]> = None;
    for k in keys {
        min = Some(min.map_or(k, |m| m.min(k)));
        max = Some(max.map_or(k, |m| m.max(k)));
    }
    let mut end = max?.to_vec();
    end.push(0);
    Some(KeySpan {
        start: min?.to_vec(),
        end,
    })
}

/// The parts of `[start, end)` (end empty: unbounded) outside every span of `done`, in order.
pub fn uncovered(start: &[u8], end: &[u8], done: &[KeySpan]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut spans: Vec<&KeySpan> = done.iter().collect();
    spans.sort_by(|a, b| a.start.cmp(&b.start));
    let mut parts = Vec::new();
    // Where the part not covered so far begins; None once a span reaches the end.
    let mut from = Some(start.to_vec());
    for span in spans {
        let Some(f) = from.clone() else { break };
        if !end.is_empty() && span.start.as_slice() >= end {
            break;
        }
        if span.start > f {
            parts.push((f.clone(), span.start.clone()));
        }
        from = if span.end.is_empty() {
            None
        } else {
            Some(f.max(span.end.clone()))
        };
    }
    if let Some(f) = from {
        if end.is_empty() || f.as_slice() < end {
            parts.push((f, end.to_vec()));
        }
    }
    parts
}

/// One region's session records, for its apply delegate: read from the engine on first use and
/// written into the apply batch, so a record changed earlier in the same batch is seen.
#[derive(Debug)]
pub struct SessionTable {
    region_id: u64,
    clock_ms: u64,
    horizon_ms: u64,
    /// Records read or written since the table was built; None: none stored.
    cache: HashMap<u64, Option<SessionRecord>>,
}

impl SessionTable {
    pub fn new(region_id: u64, state: &ApplyState) -> Self {
        SessionTable {
            region_id,
            clock_ms: state.session_clock_ms,
            horizon_ms: state.session_horizon_ms,
            cache: HashMap::new(),
        }
    }

    /// The session clock and horizon, into the region's apply state.
    pub fn save_into(&self, state: &mut ApplyState) {
        state.session_clock_ms = self.clock_ms;
        state.session_horizon_ms = self.horizon_ms;
    }

    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    pub fn horizon_ms(&self) -> u64 {
        self.horizon_ms
    }

    /// Moves the session clock to a command's `proposed_ms` (it never goes back) and, when it
    /// crosses a sweep boundary, forgets every session idle past its time.
    pub fn advance(
        &mut self,
        proposed_ms: u64,
        kv: &dyn KvEngine,
        batch: &mut KvWriteBatch,
    ) -> StorageResult<()> {
        let before = self.clock_ms;
        self.clock_ms = self.clock_ms.max(proposed_ms);
        if self.clock_ms / SWEEP_EVERY_MS > before / SWEEP_EVERY_MS {
            for (id, record) in self.all(kv)? {
                if expired(&record, self.clock_ms) {
                    self.forget(id, &record, batch);
                }
            }
        }
        Ok(())
    }

    /// The record of session `id`.
    pub fn get(&mut self, kv: &dyn KvEngine, id: u64) -> StorageResult<Option<SessionRecord>> {
        if let Some(cached) = self.cache.get(&id) {
            return Ok(cached.clone());
        }
        let key = layout::session_key(self.region_id, id);
        let record = match kv.get(&key)? {
            None => None,
            Some(bytes) => Some(SessionRecord::decode(bytes.as_slice()).map_err(|e| {
                StorageError::corruption(format!("session {id} of region {}", self.region_id), e)
            })?),
        };
        self.cache.insert(id, record.clone());
        Ok(record)
    }

    pub fn put(&mut self, id: u64, record: SessionRecord, batch: &mut KvWriteBatch) {
        batch.put(
            layout::session_key(self.region_id, id),
            record.encode_to_vec(),
        );
        self.cache.insert(id, Some(record));
    }

    /// Forgets session `id` (its `record`): sessions that began no later than its last write
    /// and are not remembered are refused from now on.
    pub fn forget(&mut self, id: u64, record: &SessionRecord, batch: &mut KvWriteBatch) {
        batch.delete(layout::session_key(self.region_id, id));
        self.cache.insert(id, None);
        self.horizon_ms = self.horizon_ms.max(record.last_ms);
    }

    /// Every record of the region, by session id: the engine's, as changed in this batch.
    pub fn all(&self, kv: &dyn KvEngine) -> StorageResult<Vec<(u64, SessionRecord)>> {
        let mut records = read_all(kv, self.region_id)?;
        records.retain(|(id, _)| !self.cache.contains_key(id));
        records.extend(
            self.cache
                .iter()
                .filter_map(|(id, r)| r.clone().map(|r| (*id, r))),
        );
        records.sort_by_key(|(id, _)| *id);
        Ok(records)
    }

    /// Takes in what a region merged into this one remembered: the union of the records, the
    /// later of each clock and horizon. A session both remember keeps every write either
    /// applied (each with its spans, so a retry skips only keys really written).
    pub fn absorb(
        &mut self,
        kv: &dyn KvEngine,
        source_id: u64,
        source: &ApplyState,
        batch: &mut KvWriteBatch,
    ) -> StorageResult<()> {
        self.clock_ms = self.clock_ms.max(source.session_clock_ms);
        self.horizon_ms = self.horizon_ms.max(source.session_horizon_ms);
        for (id, theirs) in read_all(kv, source_id)? {
            batch.delete(layout::session_key(source_id, id));
            let merged = match self.get(kv, id)? {
                None => theirs,
                Some(mut ours) => {
                    ours.last_ms = ours.last_ms.max(theirs.last_ms);
                    ours.lowest_unanswered = ours.lowest_unanswered.max(theirs.lowest_unanswered);
                    for write in theirs.writes {
                        match ours.writes.iter_mut().find(|w| w.seq == write.seq) {
                            Some(w) => {
                                for span in write.spans {
                                    if !w.spans.contains(&span) {
                                        w.spans.push(span);
                                    }
                                }
                            }
                            None => ours.writes.push(write),
                        }
                    }
                    let lowest = ours.lowest_unanswered;
                    ours.writes.retain(|w| w.seq >= lowest);
                    ours.writes.sort_by_key(|w| w.seq);
                    ours
                }
            };
            self.put(id, merged, batch);
        }
        Ok(())
    }

    /// Copies every record to a new region `right` (a split): a retry of a write applied
    /// before the split is recognised on both sides.
    pub fn copy_to(
        &self,
        kv: &dyn KvEngine,
        right_id: u64,
        batch: &mut KvWriteBatch,
    ) -> StorageResult<()> {
        for (id, record) in self.all(kv)? {
            if !expired(&record, self.clock_ms) {
                batch.put(layout::session_key(right_id, id), record.encode_to_vec());
            }
        }
        Ok(())
    }
}

/// Every stored session record of `region_id`, by session id.
pub fn read_all(kv: &dyn KvEngine, region_id: u64) -> StorageResult<Vec<(u64, SessionRecord)>> {
    let (start, end) = layout::session_range(region_id);
    let mut records = Vec::new();
    let mut failed = None;
    kv.scan(&start, &end, &mut |k, v| {
        let Some(id) = layout::session_id_of(k) else {
            return true;
        };
        match SessionRecord::decode(v) {
            Ok(r) => {
                records.push((id, r));
                true
            }
            Err(e) => {
                failed = Some(StorageError::corruption(
                    format!("session {id} of region {region_id}"),
                    e,
                ));
                false
            }
        }
    })?;
    match failed {
        Some(e) => Err(e),
        None => Ok(records),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn session(start_ms: u64, seq: u64, lowest: u64) -> WriteSession {
        WriteSession {
            id: tso::compose(start_ms, 1),
            seq,
            lowest_unanswered: lowest,
        }
    }

    fn span(start: &[u8], end: &[u8]) -> KeySpan {
        KeySpan {
            start: start.to_vec(),
            end: end.to_vec(),
        }
    }

    #[test]
    fn a_new_session_writes_and_a_retry_sees_what_its_first_attempt_covered() {
        let s = session(100 * MIN, 1, 1);
        assert_eq!(
            admit(None, &s, 100 * MIN, 0),
            Admission::Write { done: vec![] }
        );
        let record = record_write(None, &s, span(b"a", b"c"), 100 * MIN);
        assert_eq!(
            admit(Some(&record), &s, 101 * MIN, 0),
            Admission::Write {
                done: vec![span(b"a", b"c")]
            }
        );
        // Another number of the same session is new.
        let s2 = session(100 * MIN, 2, 1);
        assert_eq!(
            admit(Some(&record), &s2, 101 * MIN, 0),
            Admission::Write { done: vec![] }
        );
    }

    #[test]
    fn a_session_idle_past_its_time_or_older_than_the_horizon_is_refused_never_new() {
        let s = session(100 * MIN, 1, 1);
        let record = record_write(None, &s, span(b"a", b"b"), 100 * MIN);
        let late = 100 * MIN + SESSION_IDLE_MS + 1;
        assert!(matches!(
            admit(Some(&record), &s, late, 0),
            Admission::Expired { forget: true, .. }
        ));
        // Once forgotten (the horizon moved to its last write), the same session is refused
        // though its record is gone, and so is any session that began before.
        let horizon = record.last_ms;
        assert!(matches!(
            admit(None, &s, late, horizon),
            Admission::Expired { forget: false, .. }
        ));
        assert!(matches!(
            admit(None, &session(99 * MIN, 1, 1), late, horizon),
            Admission::Expired { .. }
        ));
        // A session that began after the horizon is new.
        assert_eq!(
            admit(None, &session(100 * MIN + 1, 1, 1), late, horizon),
            Admission::Write { done: vec![] }
        );
    }

    #[test]
    fn answered_numbers_are_dropped_and_refused() {
        let mut record = None;
        for seq in 1..=3 {
            record = Some(record_write(
                record,
                &session(100 * MIN, seq, 1),
                span(b"k", b"k\0"),
                100 * MIN,
            ));
        }
        assert_eq!(record.as_ref().unwrap().writes.len(), 3);
        // The client now waits for 3 and up: 1 and 2 are dropped, and a late copy of 2 is
        // refused rather than applied.
        let record = record_write(
            record,
            &session(100 * MIN, 4, 3),
            span(b"k", b"k\0"),
            100 * MIN,
        );
        let seqs: Vec<u64> = record.writes.iter().map(|w| w.seq).collect();
        assert_eq!(seqs, vec![3, 4]);
        assert!(matches!(
            admit(Some(&record), &session(100 * MIN, 2, 1), 100 * MIN, 0),
            Admission::Expired { forget: false, .. }
        ));
        assert!(matches!(
            admit(
                Some(&record),
                &session(100 * MIN, 3 + SESSION_WINDOW, 3),
                100 * MIN,
                0
            ),
            Admission::Expired { .. }
        ));
    }

    #[test]
    fn the_edge_refuses_sessions_that_break_the_numbering() {
        assert!(check_session(&session(1, 1, 1)).is_ok());
        let zero_id = WriteSession {
            id: 0,
            seq: 1,
            lowest_unanswered: 1,
        };
        assert!(check_session(&zero_id).unwrap_err().contains("session.id"));
        assert!(check_session(&session(1, 0, 0))
            .unwrap_err()
            .contains("session.seq"));
        assert!(check_session(&session(1, 3, 4))
            .unwrap_err()
            .contains("lowest_unanswered"));
        assert!(check_session(&session(1, SESSION_WINDOW + 1, 1)).is_err());
        assert!(check_session(&session(1, SESSION_WINDOW, 1)).is_ok());
    }

    #[test]
    fn uncovered_parts_of_a_range_table() {
        type Case<'a> = (&'a [u8], &'a [u8], Vec<KeySpan>, Vec<(&'a [u8], &'a [u8])>);
        let cases: Vec<Case> = vec![
            (b"a", b"z", vec![], vec![(b"a", b"z")]),
            (b"a", b"z", vec![span(b"a", b"z")], vec![]),
            (
                b"a",
                b"z",
                vec![span(b"c", b"f")],
                vec![(b"a", b"c"), (b"f", b"z")],
            ),
            (
                b"a",
                b"z",
                vec![span(b"m", b""), span(b"b", b"c")],
                vec![(b"a", b"b"), (b"c", b"m")],
            ),
            (
                b"a",
                b"",
                vec![span(b"c", b"d")],
                vec![(b"a", b"c"), (b"d", b"")],
            ),
            (b"d", b"f", vec![span(b"a", b"e")], vec![(b"e", b"f")]),
            (b"d", b"f", vec![span(b"x", b"y")], vec![(b"d", b"f")]),
            (b"d", b"f", vec![span(b"a", b"")], vec![]),
        ];
        for (start, end, done, want) in cases {
            let got = uncovered(start, end, &done);
            let want: Vec<(Vec<u8>, Vec<u8>)> = want
                .into_iter()
                .map(|(a, b)| (a.to_vec(), b.to_vec()))
                .collect();
            assert_eq!(got, want, "[{start:?}, {end:?}) minus {done:?}");
        }
    }

    #[test]
    fn point_spans_cover_exactly_their_first_to_last_key() {
        let s = point_span([b"m".as_slice(), b"c", b"x"]).unwrap();
        assert!(in_span(b"c", &s) && in_span(b"x", &s) && in_span(b"m", &s));
        assert!(!in_span(b"b", &s) && !in_span(b"x\0", &s) && !in_span(b"y", &s));
        assert!(point_span(std::iter::empty()).is_none());
    }
}
