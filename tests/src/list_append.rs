//! An anomaly checker for list-append histories (after Kingsbury and Alvaro's Elle), for
//! snapshot isolation.
//!
//! Each key holds a list of unique elements. A transaction reads some keys and appends to
//! others; an append is a read-modify-write (the list as the transaction sees it, plus the new
//! element), so the final list of a key is the order in which appends took effect (its version
//! order), and every list a transaction saw must be a prefix of it.
//!
//! From a history of transactions with their outcomes (committed, aborted, unknown) the
//! checker derives, among the transactions that took effect:
//! - *ww*: the writer of element `i` of a key's final list precedes the writer of `i + 1`;
//! - *wr*: the writer of the last element a transaction saw precedes it;
//! - *rw* (anti-dependency): a transaction that saw the first `n` elements precedes the writer
//!   of element `n + 1`.
//!
//! Then, what snapshot isolation forbids: an element of an aborted transaction seen by anyone
//! (dirty read, G1a); a list that is not a prefix of the final one (a lost or reordered
//! update); an acknowledged append missing from the final list (a lost write); an append
//! that does not directly follow the list its transaction saw (a lost update: someone else's
//! append came between); a cycle of ww and wr edges (G0, G1c); a cycle with exactly one rw
//! edge (G-single: read skew). Cycles with two or more rw edges (write skew, G2) are allowed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The list of `key` as the transaction saw it.
    Read { key: u32, list: Vec<u64> },
    /// The transaction saw `prefix` and wrote `prefix ++ [element]`.
    Append {
        key: u32,
        prefix: Vec<u64>,
        element: u64,
    },
}

impl Op {
    fn key(&self) -> u32 {
        match self {
            Op::Read { key, .. } | Op::Append { key, .. } => *key,
        }
    }

    fn seen(&self) -> &[u64] {
        match self {
            Op::Read { list, .. } => list,
            Op::Append { prefix, .. } => prefix,
        }
    }
}

/// How a transaction ended, as its client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    /// Definitely not committed (a conflict, an abort).
    Aborted,
    /// The commit got no answer: it may have taken effect.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Txn {
    pub ops: Vec<Op>,
    pub outcome: Outcome,
}

/// What the check found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anomaly {
    /// An element written by no transaction, or appended twice, or twice in one list.
    Garbage { key: u32, element: u64 },
    /// A transaction saw an element an aborted transaction appended (G1a).
    AbortedRead {
        key: u32,
        element: u64,
        reader: usize,
    },
    /// A list someone saw is not a prefix of the key's final list.
    IncompatibleOrder {
        key: u32,
        seen: Vec<u64>,
        last: Vec<u64>,
    },
    /// A committed transaction's append is not in the final list.
    LostWrite { key: u32, element: u64, txn: usize },
    /// An append did not directly follow the list its transaction saw.
    LostUpdate {
        key: u32,
        element: u64,
        txn: usize,
        prefix_len: usize,
    },
    /// A cycle of write and read dependencies (G0 / G1c).
    DependencyCycle { txns: Vec<usize> },
    /// A cycle with exactly one anti-dependency (G-single, read skew): `from` saw a state
    /// before `to`'s append, yet depends on `to` through writes and reads.
    ReadSkew { from: usize, to: usize, key: u32 },
}

/// What the check looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub committed: usize,
    pub aborted: usize,
    pub unknown: usize,
    /// Unknown transactions found to have taken effect (their append was seen).
    pub unknown_took_effect: usize,
    pub reads: usize,
    pub appends: usize,
    pub edges: usize,
}

/// Checks `history` against `last`, each key's list read after every transaction ended.
pub fn check(history: &[Txn], last: &BTreeMap<u32, Vec<u64>>) -> (Summary, Vec<Anomaly>) {
    let mut anomalies = Vec::new();
    let mut summary = Summary::default();
    // Who appended each element.
    let mut writer: BTreeMap<(u32, u64), usize> = BTreeMap::new();
    for (t, txn) in history.iter().enumerate() {
        match txn.outcome {
            Outcome::Committed => summary.committed += 1,
            Outcome::Aborted => summary.aborted += 1,
            Outcome::Unknown => summary.unknown += 1,
        }
        for op in &txn.ops {
            match op {
                Op::Read { .. } => summary.reads += 1,
                Op::Append { key, element, .. } => {
                    summary.appends += 1;
                    if writer.insert((*key, *element), t).is_some() {
                        anomalies.push(Anomaly::Garbage {
                            key: *key,
                            element: *element,
                        });
                    }
                }
            }
        }
    }
    // Which transactions took effect: committed ones, and unknown ones whose append is seen.
    let mut took_effect: Vec<bool> = history
        .iter()
        .map(|t| t.outcome == Outcome::Committed)
        .collect();
    let mut seen_lists: Vec<(usize, u32, &[u64])> = history
        .iter()
        .enumerate()
        .flat_map(|(t, txn)| txn.ops.iter().map(move |op| (t, op.key(), op.seen())))
        .collect();
    let final_lists: Vec<(u32, &[u64])> = last.iter().map(|(k, l)| (*k, l.as_slice())).collect();
    seen_lists.extend(final_lists.iter().map(|&(k, l)| (usize::MAX, k, l)));
    for &(reader, key, list) in &seen_lists {
        let mut in_list = BTreeSet::new();
        for &element in list {
            if !in_list.insert(element) {
                anomalies.push(Anomaly::Garbage { key, element });
            }
            match writer.get(&(key, element)) {
                None => anomalies.push(Anomaly::Garbage { key, element }),
                Some(&w) => match history[w].outcome {
                    Outcome::Aborted => anomalies.push(Anomaly::AbortedRead {
                        key,
                        element,
                        reader,
                    }),
                    Outcome::Unknown if !took_effect[w] => {
                        took_effect[w] = true;
                        summary.unknown_took_effect += 1;
                    }
                    _ => {}
                },
            }
        }
    }
    // Every list seen by a transaction that took effect is a prefix of the final list.
    let empty = Vec::new();
    for &(reader, key, list) in &seen_lists {
        if reader != usize::MAX && !took_effect[reader] {
            continue;
        }
        let final_list = last.get(&key).unwrap_or(&empty);
        if !final_list.starts_with(list) {
            anomalies.push(Anomaly::IncompatibleOrder {
                key,
                seen: list.to_vec(),
                last: final_list.clone(),
            });
        }
    }
    // Appends that took effect are in the final list, right after what their writer saw.
    for (t, txn) in history.iter().enumerate() {
        if !took_effect[t] {
            continue;
        }
        for op in &txn.ops {
            let Op::Append {
                key,
                prefix,
                element,
            } = op
            else {
                continue;
            };
            let final_list = last.get(key).unwrap_or(&empty);
            match final_list.iter().position(|e| e == element) {
                None => anomalies.push(Anomaly::LostWrite {
                    key: *key,
                    element: *element,
                    txn: t,
                }),
                Some(at) if at != prefix.len() => anomalies.push(Anomaly::LostUpdate {
                    key: *key,
                    element: *element,
                    txn: t,
                    prefix_len: prefix.len(),
                }),
                Some(_) => {}
            }
        }
    }
    // Dependency edges among the transactions that took effect.
    let n = history.len();
    let mut wwr: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    let mut rw: Vec<(usize, usize, u32)> = Vec::new();
    let writer_of = |key: u32, element: u64| writer.get(&(key, element)).copied();
    for (&key, list) in last {
        for pair in list.windows(2) {
            if let (Some(a), Some(b)) = (writer_of(key, pair[0]), writer_of(key, pair[1])) {
                if a != b {
                    wwr[a].insert(b);
                }
            }
        }
    }
    for (t, txn) in history.iter().enumerate() {
        if !took_effect[t] {
            continue;
        }
        for op in &txn.ops {
            let (key, seen) = (op.key(), op.seen());
            if let Some(w) = seen.last().and_then(|&e| writer_of(key, e)) {
                if w != t {
                    wwr[w].insert(t);
                }
            }
            let next = last.get(&key).and_then(|l| l.get(seen.len()));
            if let Some(w) = next.and_then(|&e| writer_of(key, e)) {
                if w != t {
                    rw.push((t, w, key));
                }
            }
        }
    }
    summary.edges = wwr.iter().map(BTreeSet::len).sum::<usize>() + rw.len();
    if let Some(cycle) = find_cycle(&wwr) {
        anomalies.push(Anomaly::DependencyCycle { txns: cycle });
    }
    for &(from, to, key) in &rw {
        if reaches(&wwr, to, from) {
            anomalies.push(Anomaly::ReadSkew { from, to, key });
        }
    }
    (summary, anomalies)
}

/// Whether `to` can be reached from `from` along `edges`.
fn reaches(edges: &[BTreeSet<usize>], from: usize, to: usize) -> bool {
    let mut seen = vec![false; edges.len()];
    let mut queue = VecDeque::from([from]);
    seen[from] = true;
    while let Some(t) = queue.pop_front() {
        if t == to {
            return true;
        }
        for &next in &edges[t] {
            if !seen[next] {
                seen[next] = true;
                queue.push_back(next);
            }
        }
    }
    false
}

/// A cycle in `edges`, if there is one (iterative depth-first search).
fn find_cycle(edges: &[BTreeSet<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::New; edges.len()];
    for root in 0..edges.len() {
        if mark[root] != Mark::New {
            continue;
        }
        let mut path: Vec<(usize, Vec<usize>)> =
            vec![(root, edges[root].iter().copied().collect())];
        mark[root] = Mark::OnPath;
        while let Some((node, pending)) = path.last_mut() {
            let node = *node;
            match pending.pop() {
                Some(next) => match mark[next] {
                    Mark::New => {
                        mark[next] = Mark::OnPath;
                        path.push((next, edges[next].iter().copied().collect()));
                    }
                    Mark::OnPath => {
                        let start = path.iter().position(|(t, _)| *t == next).unwrap_or(0);
                        return Some(path[start..].iter().map(|(t, _)| *t).collect());
                    }
                    Mark::Done => {}
                },
                None => {
                    mark[node] = Mark::Done;
                    path.pop();
                }
            }
        }
    }
    None
}

/// A list as stored: its elements in decimal, comma-separated.
pub fn encode(list: &[u64]) -> Vec<u8> {
    list.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
        .into_bytes()
}

/// A stored list (None or empty: no element yet).
pub fn decode(value: Option<&[u8]>) -> Vec<u64> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Vec::new();
    };
    String::from_utf8_lossy(value)
        .split(',')
        .map(|e| e.parse().unwrap_or(u64::MAX))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(key: u32, list: &[u64]) -> Op {
        Op::Read {
            key,
            list: list.to_vec(),
        }
    }

    fn append(key: u32, prefix: &[u64], element: u64) -> Op {
        Op::Append {
            key,
            prefix: prefix.to_vec(),
            element,
        }
    }

    fn txn(outcome: Outcome, ops: Vec<Op>) -> Txn {
        Txn { ops, outcome }
    }

    fn lists(l: &[(u32, &[u64])]) -> BTreeMap<u32, Vec<u64>> {
        l.iter().map(|(k, v)| (*k, v.to_vec())).collect()
    }

    #[test]
    fn a_serial_history_and_write_skew_pass() {
        use Outcome::*;
        let history = vec![
            txn(Committed, vec![append(1, &[], 10), append(2, &[], 20)]),
            txn(Committed, vec![read(1, &[10]), append(2, &[20], 21)]),
            // Write skew: both read keys 3 and 4 empty, each appends to one of them.
            txn(Committed, vec![read(4, &[]), append(3, &[], 30)]),
            txn(Committed, vec![read(3, &[]), append(4, &[], 40)]),
            // An aborted append nobody saw, an unknown one that took effect.
            txn(Aborted, vec![append(1, &[10], 11)]),
            txn(Unknown, vec![append(1, &[10], 12)]),
        ];
        let last = lists(&[(1, &[10, 12]), (2, &[20, 21]), (3, &[30]), (4, &[40])]);
        let (summary, anomalies) = check(&history, &last);
        assert_eq!(anomalies, vec![]);
        assert_eq!(summary.unknown_took_effect, 1);
        assert_eq!(summary.committed, 4);
    }

    #[test]
    fn a_read_of_an_aborted_append_is_a_dirty_read() {
        use Outcome::*;
        let history = vec![
            txn(Aborted, vec![append(1, &[], 10)]),
            txn(Committed, vec![read(1, &[10])]),
        ];
        let (_, anomalies) = check(&history, &lists(&[(1, &[])]));
        assert!(anomalies.contains(&Anomaly::AbortedRead {
            key: 1,
            element: 10,
            reader: 1
        }));
    }

    #[test]
    fn two_appends_after_the_same_prefix_are_a_lost_update() {
        use Outcome::*;
        // Both saw the empty list; the second overwrote the first.
        let history = vec![
            txn(Committed, vec![append(1, &[], 10)]),
            txn(Committed, vec![append(1, &[], 11)]),
        ];
        let (_, anomalies) = check(&history, &lists(&[(1, &[11])]));
        assert!(anomalies.contains(&Anomaly::LostWrite {
            key: 1,
            element: 10,
            txn: 0
        }));
        // Had both survived, the second still did not follow what it saw.
        let (_, anomalies) = check(&history, &lists(&[(1, &[10, 11])]));
        assert!(anomalies.contains(&Anomaly::LostUpdate {
            key: 1,
            element: 11,
            txn: 1,
            prefix_len: 0
        }));
    }

    #[test]
    fn seeing_one_write_of_a_transaction_but_not_the_other_is_read_skew() {
        use Outcome::*;
        // T0 sees key 1 before T1's append, but key 2 after it.
        let history = vec![
            txn(Committed, vec![read(1, &[]), read(2, &[20])]),
            txn(Committed, vec![append(1, &[], 10), append(2, &[], 20)]),
        ];
        let last = lists(&[(1, &[10]), (2, &[20])]);
        let (_, anomalies) = check(&history, &last);
        assert_eq!(
            anomalies,
            vec![Anomaly::ReadSkew {
                from: 0,
                to: 1,
                key: 1
            }]
        );
    }

    #[test]
    fn a_cycle_of_writes_and_reads_is_caught() {
        use Outcome::*;
        // T0 appends before T1 on key 1, T1 before T0 on key 2.
        let history = vec![
            txn(Committed, vec![append(1, &[], 10), append(2, &[21], 20)]),
            txn(Committed, vec![append(1, &[10], 11), append(2, &[], 21)]),
        ];
        let last = lists(&[(1, &[10, 11]), (2, &[21, 20])]);
        let (_, anomalies) = check(&history, &last);
        assert!(anomalies
            .iter()
            .any(|a| matches!(a, Anomaly::DependencyCycle { .. })));
    }

    #[test]
    fn a_list_out_of_order_or_with_strangers_is_caught() {
        use Outcome::*;
        let history = vec![
            txn(Committed, vec![append(1, &[], 10)]),
            txn(Committed, vec![append(1, &[10], 11)]),
            txn(Committed, vec![read(1, &[11])]),
        ];
        let (_, anomalies) = check(&history, &lists(&[(1, &[10, 11, 99])]));
        assert!(anomalies.contains(&Anomaly::Garbage {
            key: 1,
            element: 99
        }));
        assert!(anomalies
            .iter()
            .any(|a| matches!(a, Anomaly::IncompatibleOrder { key: 1, .. })));
    }

    #[test]
    fn lists_round_trip_through_their_encoding() {
        assert_eq!(decode(Some(&encode(&[3, 1, 2]))), vec![3, 1, 2]);
        assert_eq!(decode(Some(b"")), Vec::<u64>::new());
        assert_eq!(decode(None), Vec::<u64>::new());
    }
}
