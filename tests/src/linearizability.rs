//! A linearizability checker for histories of single-key registers (put / get), after Wing and
//! Gong's search with Lowe's memoization: it looks for an order of the operations that respects
//! real time (an operation that completed before another was invoked comes first) and in which
//! every read returns the value of the latest write before it.
//!
//! Keys are independent (P-compositionality), so a history is checked key by key. Operations
//! whose outcome is unknown (timed out, dropped, failed after they may have been proposed) are
//! *open*: they may take effect at any point after their invocation, or never. Every put must
//! write a value no other put writes.

use std::collections::{BTreeMap, HashSet};

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// Wrote this value.
    Put(Vec<u8>),
    /// Read this value (None: the key was absent).
    Get(Option<Vec<u8>>),
}

/// One operation on one key, with logical invocation and completion times (`complete` None:
/// open). Times come from one counter, so the order of any two events is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub key: Vec<u8>,
    pub op: Op,
    pub invoke: u64,
    pub complete: Option<u64>,
}

/// Records a history as it happens.
#[derive(Debug, Default)]
pub struct History {
    clock: u64,
    events: Vec<Event>,
}

/// The handle of an invoked, not yet completed operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Invocation(usize);

impl History {
    /// Notes that a put of `value` to `key` was sent.
    pub fn invoke_put(&mut self, key: &[u8], value: &[u8]) -> Invocation {
        self.invoke(key, Op::Put(value.to_vec()))
    }

    /// Notes that a get of `key` was sent; its value comes with [`History::complete_get`].
    pub fn invoke_get(&mut self, key: &[u8]) -> Invocation {
        self.invoke(key, Op::Get(None))
    }

    fn invoke(&mut self, key: &[u8], op: Op) -> Invocation {
        self.clock += 1;
        self.events.push(Event {
            key: key.to_vec(),
            op,
            invoke: self.clock,
            complete: None,
        });
        Invocation(self.events.len() - 1)
    }

    /// The put was acknowledged.
    pub fn complete_put(&mut self, at: Invocation) {
        self.clock += 1;
        let event = &mut self.events[at.0];
        assert!(matches!(event.op, Op::Put(_)) && event.complete.is_none());
        event.complete = Some(self.clock);
    }

    /// The get returned `value`.
    pub fn complete_get(&mut self, at: Invocation, value: Option<Vec<u8>>) {
        self.clock += 1;
        let event = &mut self.events[at.0];
        assert!(matches!(event.op, Op::Get(_)) && event.complete.is_none());
        event.op = Op::Get(value);
        event.complete = Some(self.clock);
    }

    /// A get failed: it observed nothing, so it leaves the history. (A failed put stays open:
    /// it may have taken effect.)
    pub fn forget_get(&mut self, at: Invocation) {
        let event = &mut self.events[at.0];
        assert!(matches!(event.op, Op::Get(_)) && event.complete.is_none());
        event.complete = Some(u64::MAX);
    }

    /// The operations, reads that failed left out.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.events
            .iter()
            .filter(|e| !(matches!(e.op, Op::Get(_)) && e.complete == Some(u64::MAX)))
    }

    pub fn len(&self) -> usize {
        self.events().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks every key's history.
    pub fn check(&self, budget: u64) -> Result<CheckStats, Violation> {
        let mut by_key: BTreeMap<&[u8], Vec<Event>> = BTreeMap::new();
        for e in self.events() {
            by_key.entry(&e.key).or_default().push(e.clone());
        }
        let mut stats = CheckStats::default();
        for (key, events) in by_key {
            stats.keys += 1;
            stats.operations += events.len();
            stats.states += check_key(key, events, budget)?;
        }
        Ok(stats)
    }
}

/// What a successful check covered.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CheckStats {
    pub keys: usize,
    pub operations: usize,
    /// Search states visited.
    pub states: u64,
}

/// Why a history is not shown linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// No order fits: the key's history, for the report.
    NotLinearizable { key: Vec<u8>, history: Vec<Event> },
    /// The search gave up after `budget` states without an answer (shrink the workload).
    Undecided { key: Vec<u8>, budget: u64 },
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::NotLinearizable { key, history } => {
                writeln!(
                    f,
                    "history of key {} is not linearizable ({} operations):",
                    String::from_utf8_lossy(key),
                    history.len()
                )?;
                for e in history {
                    let op = match &e.op {
                        Op::Put(v) => format!("put {}", String::from_utf8_lossy(v)),
                        Op::Get(Some(v)) => format!("get -> {}", String::from_utf8_lossy(v)),
                        Op::Get(None) => "get -> (absent)".to_string(),
                    };
                    let done = e
                        .complete
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "open".into());
                    writeln!(f, "  [{} .. {}] {op}", e.invoke, done)?;
                }
                Ok(())
            }
            Violation::Undecided { key, budget } => write!(
                f,
                "history of key {} undecided after {budget} search states",
                String::from_utf8_lossy(key)
            ),
        }
    }
}

/// A set of operation positions.
struct Bits(Vec<u64>);

/// A linearized set in short form: see [`Bits::key_above`].
type LinearizedKey = (usize, Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn flip(&mut self, i: usize) {
        self.0[i / 64] ^= 1 << (i % 64);
    }

    /// The set, given that every position below `low` is in it: `low` and the words from
    /// there up to the last one with a bit set (short, as the set grows from the bottom).
    fn key_above(&self, low: usize) -> LinearizedKey {
        let words = &self.0[low / 64..];
        let used = words.iter().rposition(|w| *w != 0).map_or(0, |p| p + 1);
        (low, words[..used].to_vec())
    }
}

struct Search<'a> {
    ops: &'a [Event],
    /// Completed operations not linearized yet, and their completion times (each distinct:
    /// they come from one clock).
    completed_left: usize,
    pending_completions: std::collections::BTreeSet<u64>,
    done: Bits,
    value: Option<Vec<u8>>,
    /// States visited: the linearized set (see [`Bits::key_above`]) and the register value.
    seen: HashSet<(LinearizedKey, Option<Vec<u8>>)>,
    states: u64,
    budget: u64,
}

/// One level of the search: the operation linearized to reach it (with the register value
/// before it), the deadline of its state, and the next candidate to try from it.
struct Frame {
    chosen: Option<(usize, Option<Vec<u8>>)>,
    deadline: u64,
    /// Every operation below this position is linearized.
    low: usize,
    next: usize,
}

impl Search<'_> {
    /// Depth-first search for an order of the remaining operations (iterative: histories are
    /// long). Ok(false): none fits; Err: the budget ran out.
    fn run(&mut self) -> Result<bool, ()> {
        let mut stack = vec![Frame {
            chosen: None,
            deadline: self.deadline(),
            low: 0,
            next: 0,
        }];
        loop {
            if self.completed_left == 0 {
                // Open puts left over never took effect.
                return Ok(true);
            }
            let frame = stack.last_mut().expect("the root frame stays");
            let candidate = (frame.next.max(frame.low)..self.ops.len())
                .take_while(|&i| self.ops[i].invoke < frame.deadline)
                .find(|&i| !self.done.get(i) && self.allows(&self.ops[i].op));
            let Some(i) = candidate else {
                let frame = stack.pop().expect("checked");
                match frame.chosen {
                    None => return Ok(false),
                    Some((i, previous)) => self.undo(i, previous),
                }
                continue;
            };
            frame.next = i + 1;
            let mut low = frame.low;
            let previous = self.apply(i);
            while low < self.ops.len() && self.done.get(low) {
                low += 1;
            }
            if self
                .seen
                .insert((self.done.key_above(low), self.value.clone()))
            {
                self.states += 1;
                if self.states > self.budget {
                    return Err(());
                }
                let deadline = self.deadline();
                stack.push(Frame {
                    chosen: Some((i, previous)),
                    deadline,
                    low,
                    next: 0,
                });
            } else {
                self.undo(i, previous);
            }
        }
    }

    /// Whatever goes next must have been invoked before the earliest pending completion.
    fn deadline(&self) -> u64 {
        self.pending_completions
            .first()
            .copied()
            .unwrap_or(u64::MAX)
    }

    /// Whether `op` may come next given the register's value.
    fn allows(&self, op: &Op) -> bool {
        match op {
            Op::Put(_) => true,
            Op::Get(read) => *read == self.value,
        }
    }

    /// Linearizes operation `i`; returns the value before it.
    fn apply(&mut self, i: usize) -> Option<Vec<u8>> {
        let e = &self.ops[i];
        let next = match &e.op {
            Op::Put(v) => Some(v.clone()),
            Op::Get(_) => self.value.clone(),
        };
        self.done.flip(i);
        if let Some(c) = e.complete {
            self.completed_left -= 1;
            self.pending_completions.remove(&c);
        }
        std::mem::replace(&mut self.value, next)
    }

    fn undo(&mut self, i: usize, previous: Option<Vec<u8>>) {
        self.done.flip(i);
        if let Some(c) = self.ops[i].complete {
            self.completed_left += 1;
            self.pending_completions.insert(c);
        }
        self.value = previous;
    }
}

/// Checks one key's operations; returns the states searched.
fn check_key(key: &[u8], mut events: Vec<Event>, budget: u64) -> Result<u64, Violation> {
    // An open put no read observed can be taken as never having happened: wherever it could
    // take effect, no read follows it before the next write, so dropping it changes no read.
    // (Values are unique per put.) Left in, each would double the search.
    let observed: HashSet<Vec<u8>> = events
        .iter()
        .filter_map(|e| match &e.op {
            Op::Get(Some(v)) => Some(v.clone()),
            _ => None,
        })
        .collect();
    events.retain(|e| match &e.op {
        Op::Put(v) => e.complete.is_some() || observed.contains(v),
        Op::Get(_) => true,
    });
    events.sort_by_key(|e| e.invoke);
    let mut search = Search {
        ops: &events,
        completed_left: events.iter().filter(|e| e.complete.is_some()).count(),
        pending_completions: events.iter().filter_map(|e| e.complete).collect(),
        done: Bits::new(events.len()),
        value: None,
        seen: HashSet::new(),
        states: 0,
        budget,
    };
    match search.run() {
        Ok(true) => Ok(search.states),
        Ok(false) => Err(Violation::NotLinearizable {
            key: key.to_vec(),
            history: events,
        }),
        Err(()) => Err(Violation::Undecided {
            key: key.to_vec(),
            budget,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: u64 = 1_000_000;

    #[test]
    fn sequential_reads_of_the_latest_write_pass() {
        let mut h = History::default();
        let g = h.invoke_get(b"k");
        h.complete_get(g, None);
        let p = h.invoke_put(b"k", b"1");
        h.complete_put(p);
        let g = h.invoke_get(b"k");
        h.complete_get(g, Some(b"1".to_vec()));
        assert!(h.check(BUDGET).is_ok());
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_write_is_caught() {
        let mut h = History::default();
        let p = h.invoke_put(b"k", b"1");
        h.complete_put(p);
        let p = h.invoke_put(b"k", b"2");
        h.complete_put(p);
        let g = h.invoke_get(b"k");
        h.complete_get(g, Some(b"1".to_vec()));
        let err = h.check(BUDGET).unwrap_err();
        assert!(matches!(err, Violation::NotLinearizable { .. }), "{err}");
        assert!(err.to_string().contains("get -> 1"), "{err}");
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        let mut h = History::default();
        let p1 = h.invoke_put(b"k", b"1");
        let g = h.invoke_get(b"k");
        let p2 = h.invoke_put(b"k", b"2");
        h.complete_get(g, Some(b"2".to_vec()));
        h.complete_put(p1);
        h.complete_put(p2);
        let g = h.invoke_get(b"k");
        h.complete_get(g, Some(b"1".to_vec()));
        // put 2, get -> 2, put 1, get -> 1.
        assert!(h.check(BUDGET).is_ok());
    }

    #[test]
    fn an_open_put_may_take_effect_late_or_never() {
        let mut h = History::default();
        let _lost = h.invoke_put(b"k", b"1");
        let g = h.invoke_get(b"k");
        h.complete_get(g, None);
        let g = h.invoke_get(b"k");
        h.complete_get(g, Some(b"1".to_vec()));
        assert!(h.check(BUDGET).is_ok());
        // ... but once seen, its value cannot vanish again with nothing else written.
        let g = h.invoke_get(b"k");
        h.complete_get(g, None);
        assert!(h.check(BUDGET).is_err());
    }

    #[test]
    fn a_value_never_written_is_caught_and_failed_reads_are_ignored() {
        let mut h = History::default();
        let p = h.invoke_put(b"k", b"1");
        h.complete_put(p);
        let failed = h.invoke_get(b"k");
        h.forget_get(failed);
        assert!(h.check(BUDGET).is_ok());
        let g = h.invoke_get(b"k");
        h.complete_get(g, Some(b"9".to_vec()));
        assert!(h.check(BUDGET).is_err());
    }

    #[test]
    fn keys_are_checked_apart() {
        let mut h = History::default();
        let p = h.invoke_put(b"a", b"1");
        h.complete_put(p);
        let g = h.invoke_get(b"b");
        h.complete_get(g, None);
        let stats = h.check(BUDGET).unwrap();
        assert_eq!((stats.keys, stats.operations), (2, 2));
    }

    #[test]
    fn a_long_concurrent_history_is_decided_within_the_budget() {
        // Each round's get overlaps the round's put and sees the previous round's value: the
        // register behaves, so the history is linearizable.
        let mut h = History::default();
        let mut last = None;
        for round in 0..200u32 {
            let v = format!("v{round}").into_bytes();
            let p = h.invoke_put(b"k", &v);
            let g = h.invoke_get(b"k");
            h.complete_put(p);
            h.complete_get(g, last.take());
            last = Some(v);
        }
        let stats = h.check(BUDGET).unwrap();
        assert_eq!(stats.operations, 400);
        assert!(stats.states < BUDGET);
    }

    #[test]
    fn many_open_puts_do_not_blow_up_the_search() {
        // Sixty puts that timed out and were never read, then a stale read: decided at once.
        let mut h = History::default();
        let p = h.invoke_put(b"k", b"first");
        h.complete_put(p);
        for i in 0..60 {
            h.invoke_put(b"k", format!("lost{i}").as_bytes());
        }
        let p = h.invoke_put(b"k", b"second");
        h.complete_put(p);
        let g = h.invoke_get(b"k");
        h.complete_get(g, Some(b"first".to_vec()));
        assert!(matches!(
            h.check(10_000),
            Err(Violation::NotLinearizable { .. })
        ));
    }

    #[test]
    fn a_very_long_history_is_searched_without_exhausting_the_stack() {
        let mut h = History::default();
        for i in 0..20_000u32 {
            let v = i.to_string().into_bytes();
            let p = h.invoke_put(b"k", &v);
            h.complete_put(p);
            let g = h.invoke_get(b"k");
            h.complete_get(g, Some(v));
        }
        assert_eq!(h.check(BUDGET).unwrap().operations, 40_000);
    }
}
