//! The client side of exactly-once raw writes (docs/design.md "Exactly-once writes"): one
//! session at a time, its id a TSO timestamp, its writes numbered from 1. A write keeps its
//! number through every retry; the regions that applied it answer a retry without applying it
//! again.

use parking_lot::Mutex;
use ringkv_proto::kvrpcpb::WriteSession;
use ringkv_proto::limits::{SESSION_ROTATE_MS, SESSION_WINDOW};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One session: its id and the numbers of writes not answered yet.
struct Session {
    id: u64,
    opened: Instant,
    state: Mutex<Numbers>,
}

#[derive(Default)]
struct Numbers {
    next: u64,
    unanswered: BTreeSet<u64>,
}

/// A write's number in a session, held until the write is answered (or given up): while it is
/// held, the regions remember the write.
pub(crate) struct Ticket {
    session: Arc<Session>,
    seq: u64,
}

impl Ticket {
    /// What a request of this write carries: the lowest number the client still waits for is
    /// read now, so regions forget answered writes as early as they can.
    pub(crate) fn write_session(&self) -> WriteSession {
        let lowest = self
            .session
            .state
            .lock()
            .unanswered
            .first()
            .copied()
            .unwrap_or(self.seq);
        WriteSession {
            id: self.session.id,
            seq: self.seq,
            lowest_unanswered: lowest.min(self.seq),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.session.state.lock().unanswered.remove(&self.seq);
    }
}

/// The client's current session (shared by clones of a client).
#[derive(Default)]
pub(crate) struct Sessions {
    current: Mutex<Option<Arc<Session>>>,
}

/// How long a session serves new writes.
const ROTATE: Duration = Duration::from_millis(SESSION_ROTATE_MS);

impl Sessions {
    /// A number in the current session, if it is young enough and its window has room.
    pub(crate) fn ticket(&self) -> Option<Ticket> {
        let current = self.current.lock();
        let session = current.as_ref()?;
        if session.opened.elapsed() >= ROTATE {
            return None;
        }
        let mut numbers = session.state.lock();
        let seq = numbers.next + 1;
        let lowest = numbers.unanswered.first().copied().unwrap_or(seq);
        if seq - lowest >= SESSION_WINDOW {
            return None;
        }
        numbers.next = seq;
        numbers.unanswered.insert(seq);
        Some(Ticket {
            session: session.clone(),
            seq,
        })
    }

    /// Starts a session with id `id` (a fresh TSO timestamp) for new writes, unless another
    /// caller just did. Writes of the previous session keep their numbers.
    pub(crate) fn open(&self, id: u64) {
        let mut current = self.current.lock();
        let stale = current
            .as_ref()
            .is_none_or(|s| s.opened.elapsed() >= ROTATE || full(s));
        if stale {
            *current = Some(Arc::new(Session {
                id,
                opened: Instant::now(),
                state: Mutex::new(Numbers::default()),
            }));
        }
    }
}

/// Whether a session's window has no room for another write.
fn full(session: &Session) -> bool {
    let numbers = session.state.lock();
    let lowest = numbers
        .unanswered
        .first()
        .copied()
        .unwrap_or(numbers.next + 1);
    numbers.next + 1 - lowest >= SESSION_WINDOW
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_count_up_and_the_lowest_unanswered_follows_the_answers() {
        let sessions = Sessions::default();
        assert!(sessions.ticket().is_none(), "no session yet");
        sessions.open(7);
        let first = sessions.ticket().unwrap();
        let second = sessions.ticket().unwrap();
        assert_eq!((first.seq, second.seq), (1, 2));
        assert_eq!(second.write_session().lowest_unanswered, 1);
        drop(first);
        let ws = second.write_session();
        assert_eq!((ws.id, ws.seq, ws.lowest_unanswered), (7, 2, 2));
    }

    #[test]
    fn a_full_window_asks_for_a_new_session_and_old_tickets_keep_theirs() {
        let sessions = Sessions::default();
        sessions.open(1);
        let held: Vec<Ticket> = (0..SESSION_WINDOW)
            .map(|_| sessions.ticket().unwrap())
            .collect();
        assert!(sessions.ticket().is_none(), "the window is full");
        sessions.open(2);
        let fresh = sessions.ticket().unwrap();
        assert_eq!((fresh.write_session().id, fresh.seq), (2, 1));
        assert_eq!(held[5].write_session().id, 1);
        // Another caller racing to open keeps the session just opened.
        sessions.open(3);
        assert_eq!(sessions.ticket().unwrap().write_session().id, 2);
    }
}
