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

/// Decides about a write of `session` given the region's record of it, what it keeps of this
/// write's number (`write`; an entry below the record's `lowest_unanswered` is stale and
/// ignored), its session clock and horizon.
pub fn admit(
    record: Option<&SessionRecord>,
    write: Option<&SessionWrite>,
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
    // An entry at or above the record's lowest number is this write's (entries below it are
    // deleted as the number passes them).
    let done = match write {
        Some(w) if session.seq >= record.lowest_unanswered => w.spans.clone(),
        _ => Vec::new(),
    };
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

/// The record and the write's entry after `session`'s write covered `span` here (`done`: the
/// spans earlier attempts covered).
pub fn record_write(
    record: Option<SessionRecord>,
    done: Vec<KeySpan>,
    session: &WriteSession,
    span: KeySpan,
    clock_ms: u64,
) -> (SessionRecord, SessionWrite) {
    let mut record = record.unwrap_or_default();
    record.last_ms = record
        .last_ms
        .max(clock_ms)
        .max(session_start_ms(session.id));
    record.lowest_unanswered = record.lowest_unanswered.max(session.lowest_unanswered);
    let mut spans = done;
    if !spans.contains(&span) {
        spans.push(span);
    }
    (record, SessionWrite { spans })
}

/// The write numbers whose entries go when a record's lowest number moves from `from` to
/// `to`: entries exist only within [`SESSION_WINDOW`] of the lowest number they were written
/// at, so at most that many.
pub fn answered(from: u64, to: u64) -> std::ops::Range<u64> {
    if from == 0 || to <= from {
        return 0..0;
    }
    from..to.min(from.saturating_add(SESSION_WINDOW))
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

/// What a region remembers of one session: its record and its writes' entries, by number.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionState {
    pub record: SessionRecord,
    pub writes: Vec<(u64, SessionWrite)>,
}

/// One region's session records, for its apply delegate: read from the engine and written into
/// the apply batch. Records are cached (bounded by the sessions the region remembers; the cache
/// is emptied at each sweep); write entries are looked up in the engine, with an overlay of
/// those changed in the batch not yet written ([`SessionTable::begin_batch`]).
#[derive(Debug)]
pub struct SessionTable {
    region_id: u64,
    clock_ms: u64,
    horizon_ms: u64,
    /// Records read or written; None: none stored.
    records: HashMap<u64, Option<SessionRecord>>,
    /// Write entries changed since the last written batch; None: deleted.
    writes: HashMap<(u64, u64), Option<SessionWrite>>,
}

impl SessionTable {
    pub fn new(region_id: u64, state: &ApplyState) -> Self {
        SessionTable {
            region_id,
            clock_ms: state.session_clock_ms,
            horizon_ms: state.session_horizon_ms,
            records: HashMap::new(),
            writes: HashMap::new(),
        }
    }

    /// A new apply batch starts: the previous one is in the engine.
    pub fn begin_batch(&mut self) {
        self.writes.clear();
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
            for (id, state) in self.all(kv)? {
                if expired(&state.record, self.clock_ms) {
                    self.forget(kv, id, &state.record, batch)?;
                }
            }
            self.records.retain(|_, r| r.is_some());
        }
        Ok(())
    }

    /// The record of session `id`.
    pub fn get(&mut self, kv: &dyn KvEngine, id: u64) -> StorageResult<Option<SessionRecord>> {
        if let Some(cached) = self.records.get(&id) {
            return Ok(*cached);
        }
        let key = layout::session_key(self.region_id, id);
        let record = decode(kv.get(&key)?, || self.what(id))?;
        self.records.insert(id, record);
        Ok(record)
    }

    /// The entry of write `seq` of session `id`.
    pub fn get_write(
        &self,
        kv: &dyn KvEngine,
        id: u64,
        seq: u64,
    ) -> StorageResult<Option<SessionWrite>> {
        if let Some(changed) = self.writes.get(&(id, seq)) {
            return Ok(changed.clone());
        }
        kv.get(&layout::session_write_key(self.region_id, id, seq))?
            .map(|b| decode_write(&b, || self.what(id)))
            .transpose()
    }

    fn what(&self, id: u64) -> String {
        format!("session {id} of region {}", self.region_id)
    }

    /// Records that write `seq` of session `id` covered `write` here, and drops the entries of
    /// the numbers the new `record` says are answered.
    pub fn put(
        &mut self,
        kv: &dyn KvEngine,
        id: u64,
        record: SessionRecord,
        seq: u64,
        write: SessionWrite,
        batch: &mut KvWriteBatch,
    ) -> StorageResult<()> {
        let before = self.get(kv, id)?.map_or(0, |r| r.lowest_unanswered);
        for gone in answered(before, record.lowest_unanswered) {
            batch.delete(layout::session_write_key(self.region_id, id, gone));
            self.writes.insert((id, gone), None);
        }
        batch.put(
            layout::session_write_key(self.region_id, id, seq),
            write.encode_to_vec(),
        );
        self.writes.insert((id, seq), Some(write));
        self.put_record(id, record, batch);
        Ok(())
    }

    fn put_record(&mut self, id: u64, record: SessionRecord, batch: &mut KvWriteBatch) {
        batch.put(
            layout::session_key(self.region_id, id),
            record.encode_to_vec(),
        );
        self.records.insert(id, Some(record));
    }

    /// Forgets session `id` (its `record`) and its writes: sessions that began no later than
    /// its last write and are not remembered are refused from now on.
    pub fn forget(
        &mut self,
        kv: &dyn KvEngine,
        id: u64,
        record: &SessionRecord,
        batch: &mut KvWriteBatch,
    ) -> StorageResult<()> {
        for (seq, _) in self.writes_of(kv, id)? {
            batch.delete(layout::session_write_key(self.region_id, id, seq));
            self.writes.insert((id, seq), None);
        }
        batch.delete(layout::session_key(self.region_id, id));
        self.records.insert(id, None);
        self.horizon_ms = self.horizon_ms.max(record.last_ms);
        Ok(())
    }

    /// The stored write entries of session `id`, as changed in this batch.
    fn writes_of(&self, kv: &dyn KvEngine, id: u64) -> StorageResult<Vec<(u64, SessionWrite)>> {
        let (start, end) = layout::session_writes_range(self.region_id, id);
        let mut found: std::collections::BTreeMap<u64, SessionWrite> = Default::default();
        for (key, value) in scan(kv, &start, &end)? {
            if let Some((_, _, Some(seq))) = layout::parse_session_key(&key) {
                found.insert(seq, decode_write(&value, || self.what(id))?);
            }
        }
        for ((sid, seq), w) in &self.writes {
            if *sid == id {
                match w {
                    Some(w) => found.insert(*seq, w.clone()),
                    None => found.remove(seq),
                };
            }
        }
        Ok(found.into_iter().collect())
    }

    /// Every session the region remembers, by id: the engine's (one scan of the region's
    /// session range), as changed in this batch. Entries of answered writes are left out.
    pub fn all(&self, kv: &dyn KvEngine) -> StorageResult<Vec<(u64, SessionState)>> {
        use std::collections::BTreeMap;
        let mut records: BTreeMap<u64, Option<SessionRecord>> = BTreeMap::new();
        let mut writes: BTreeMap<(u64, u64), SessionWrite> = BTreeMap::new();
        let (start, end) = layout::session_range(self.region_id);
        for (key, value) in scan(kv, &start, &end)? {
            match layout::parse_session_key(&key) {
                Some((_, id, None)) => {
                    records.insert(id, decode(Some(value), || self.what(id))?);
                }
                Some((_, id, Some(seq))) => {
                    writes.insert((id, seq), decode_write(&value, || self.what(id))?);
                }
                None => {}
            }
        }
        records.extend(self.records.iter().map(|(id, r)| (*id, *r)));
        for (key, w) in &self.writes {
            match w {
                Some(w) => writes.insert(*key, w.clone()),
                None => writes.remove(key),
            };
        }
        let mut all: BTreeMap<u64, SessionState> = records
            .into_iter()
            .filter_map(|(id, r)| {
                r.map(|record| {
                    (
                        id,
                        SessionState {
                            record,
                            writes: vec![],
                        },
                    )
                })
            })
            .collect();
        for ((id, seq), write) in writes {
            if let Some(state) = all.get_mut(&id) {
                if seq >= state.record.lowest_unanswered {
                    state.writes.push((seq, write));
                }
            }
        }
        Ok(all.into_iter().collect())
    }

    /// Takes in what a region merged into this one remembered: the union of the sessions (the
    /// later clock, the higher lowest number; per number, the spans of both), the later clock
    /// and horizon. The source's records are deleted.
    pub fn absorb(
        &mut self,
        kv: &dyn KvEngine,
        source_id: u64,
        source: &ApplyState,
        batch: &mut KvWriteBatch,
    ) -> StorageResult<()> {
        self.clock_ms = self.clock_ms.max(source.session_clock_ms);
        self.horizon_ms = self.horizon_ms.max(source.session_horizon_ms);
        let theirs = SessionTable::new(source_id, source);
        let (start, end) = layout::session_range(source_id);
        for (key, _) in scan(kv, &start, &end)? {
            batch.delete(key);
        }
        for (id, state) in theirs.all(kv)? {
            let ours = self.get(kv, id)?;
            let mut record = ours.unwrap_or_default();
            record.last_ms = record.last_ms.max(state.record.last_ms);
            let before = record.lowest_unanswered;
            record.lowest_unanswered = before.max(state.record.lowest_unanswered);
            for (seq, write) in state.writes {
                if seq < record.lowest_unanswered {
                    continue;
                }
                let mut spans = match ours {
                    Some(_) => self
                        .get_write(kv, id, seq)?
                        .filter(|_| seq >= before)
                        .map(|w| w.spans)
                        .unwrap_or_default(),
                    None => Vec::new(),
                };
                for span in write.spans {
                    if !spans.contains(&span) {
                        spans.push(span);
                    }
                }
                let entry = SessionWrite { spans };
                batch.put(
                    layout::session_write_key(self.region_id, id, seq),
                    entry.encode_to_vec(),
                );
                self.writes.insert((id, seq), Some(entry));
            }
            if ours.is_some() {
                for gone in answered(before, record.lowest_unanswered) {
                    batch.delete(layout::session_write_key(self.region_id, id, gone));
                    self.writes.insert((id, gone), None);
                }
            }
            self.put_record(id, record, batch);
        }
        Ok(())
    }

    /// Copies every session to a new region `right` (a split): a retry of a write applied
    /// before the split is recognised on both sides.
    pub fn copy_to(
        &self,
        kv: &dyn KvEngine,
        right_id: u64,
        batch: &mut KvWriteBatch,
    ) -> StorageResult<()> {
        for (id, state) in self.all(kv)? {
            if expired(&state.record, self.clock_ms) {
                continue;
            }
            batch.put(
                layout::session_key(right_id, id),
                state.record.encode_to_vec(),
            );
            for (seq, write) in state.writes {
                batch.put(
                    layout::session_write_key(right_id, id, seq),
                    write.encode_to_vec(),
                );
            }
        }
        Ok(())
    }
}

fn decode(
    bytes: Option<Vec<u8>>,
    what: impl FnOnce() -> String,
) -> StorageResult<Option<SessionRecord>> {
    bytes
        .map(|b| {
            SessionRecord::decode(b.as_slice()).map_err(|e| StorageError::corruption(what(), e))
        })
        .transpose()
}

fn decode_write(bytes: &[u8], what: impl FnOnce() -> String) -> StorageResult<SessionWrite> {
    SessionWrite::decode(bytes).map_err(|e| StorageError::corruption(what(), e))
}

fn scan(kv: &dyn KvEngine, start: &[u8], end: &[u8]) -> StorageResult<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    kv.scan(start, end, &mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        true
    })?;
    Ok(out)
}

/// Every stored session record of `region_id` (not the writes' entries), by session id.
#[cfg(test)]
pub fn read_all(kv: &dyn KvEngine, region_id: u64) -> StorageResult<Vec<(u64, SessionRecord)>> {
    let (start, end) = layout::session_range(region_id);
    let mut records = Vec::new();
    for (key, value) in scan(kv, &start, &end)? {
        if let Some((_, id, None)) = layout::parse_session_key(&key) {
            let what = || format!("session {id} of region {region_id}");
            records.push((id, decode(Some(value), what)?.expect("decoded")));
        }
    }
    Ok(records)
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
            admit(None, None, &s, 100 * MIN, 0),
            Admission::Write { done: vec![] }
        );
        let (record, write) = record_write(None, vec![], &s, span(b"a", b"c"), 100 * MIN);
        assert_eq!(
            admit(Some(&record), Some(&write), &s, 101 * MIN, 0),
            Admission::Write {
                done: vec![span(b"a", b"c")]
            }
        );
        // Another number of the same session is new.
        let s2 = session(100 * MIN, 2, 1);
        assert_eq!(
            admit(Some(&record), None, &s2, 101 * MIN, 0),
            Admission::Write { done: vec![] }
        );
        // A retry in another region layout adds its span.
        let (_, write) = record_write(
            Some(record),
            vec![span(b"a", b"c")],
            &s,
            span(b"x", b"y"),
            101 * MIN,
        );
        assert_eq!(write.spans, vec![span(b"a", b"c"), span(b"x", b"y")]);
    }

    #[test]
    fn a_session_idle_past_its_time_or_older_than_the_horizon_is_refused_never_new() {
        let s = session(100 * MIN, 1, 1);
        let (record, write) = record_write(None, vec![], &s, span(b"a", b"b"), 100 * MIN);
        let late = 100 * MIN + SESSION_IDLE_MS + 1;
        assert!(matches!(
            admit(Some(&record), Some(&write), &s, late, 0),
            Admission::Expired { forget: true, .. }
        ));
        // Once forgotten (the horizon moved to its last write), the same session is refused
        // though its record is gone, and so is any session that began before.
        let horizon = record.last_ms;
        assert!(matches!(
            admit(None, None, &s, late, horizon),
            Admission::Expired { forget: false, .. }
        ));
        assert!(matches!(
            admit(None, None, &session(99 * MIN, 1, 1), late, horizon),
            Admission::Expired { .. }
        ));
        // A session that began after the horizon is new.
        assert_eq!(
            admit(None, None, &session(100 * MIN + 1, 1, 1), late, horizon),
            Admission::Write { done: vec![] }
        );
    }

    #[test]
    fn answered_numbers_are_refused_and_their_entries_dropped() {
        let (record, _) = record_write(
            None,
            vec![],
            &session(100 * MIN, 4, 3),
            span(b"k", b"k\0"),
            100 * MIN,
        );
        assert_eq!(record.lowest_unanswered, 3);
        // A late copy of 2 is refused rather than applied; so is a number too far ahead.
        assert!(matches!(
            admit(Some(&record), None, &session(100 * MIN, 2, 1), 100 * MIN, 0),
            Admission::Expired { forget: false, .. }
        ));
        assert!(matches!(
            admit(
                Some(&record),
                None,
                &session(100 * MIN, 3 + SESSION_WINDOW, 3),
                100 * MIN,
                0
            ),
            Admission::Expired { .. }
        ));
        // An entry left below the lowest number is not taken for this write's.
        let stale = SessionWrite {
            spans: vec![span(b"k", b"k\0")],
        };
        let low = SessionRecord {
            lowest_unanswered: 5,
            last_ms: 100 * MIN,
        };
        assert_eq!(
            admit(
                Some(&low),
                Some(&stale),
                &session(100 * MIN, 6, 5),
                100 * MIN,
                0
            ),
            Admission::Write {
                done: vec![span(b"k", b"k\0")]
            }
        );
        // The entries that go as the lowest number moves: from the old one up, at most a
        // window's worth, none for a new record.
        assert_eq!(answered(3, 7), 3..7);
        assert_eq!(answered(0, 7), 0..0);
        assert!(answered(7, 7).is_empty());
        assert_eq!(answered(1, 5000), 1..1 + SESSION_WINDOW);
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
