//! Deterministic simulation of a cluster, by workload, each over 200 seeds in CI (four shards of
//! 50, which nextest runs in parallel). Faults: messages dropped, duplicated, delayed and
//! reordered; partitions (both ways and one way), crashes, disk faults that stop a node, pauses,
//! and clocks that tick at different rates; placement members crashing and cut off from each
//! other (the placement group runs inside the simulation, see `sim_placement`). A failure prints its seed:
//! `RINGKV_SIM_SEED=<seed> cargo nextest run -p ringkv-tests --test simulation` replays it, and
//! `RINGKV_SIM_SEEDS=<n>` runs `n` seeds per shard instead (the soak run, see docs/testing.md).

use ringkv_tests::sim::{shard_seeds, Sim, SimConfig, SimOutcome};

/// The raw workload: clients put unique keys (enough to split the one region into dozens) and
/// get and put four register keys, routed like real clients (mostly to the leader the placement
/// driver knows, sometimes to any replica), while an admin moves leaderships around (the
/// busy regions' half the time). Checked: every acknowledged write on every replica,
/// replicas equal, no overlapping regions, and a linearizable register history.
fn raw_workload() -> SimConfig {
    SimConfig {
        steps: 5000,
        register_keys: 4,
        register_per_mille: 300,
        write_per_mille: 300,
        transfer_per_mille: 5,
        ..SimConfig::default()
    }
}

/// The split / merge workload: the raw workload plus an admin ordering merges of random
/// neighbours while the regions split, so merges meet splits, faults and each other.
fn split_merge_workload() -> SimConfig {
    SimConfig {
        merge_per_mille: 8,
        ..raw_workload()
    }
}

/// The bank workload: sixteen transactional clients move money between ten accounts (Percolator, one-
/// phase when both accounts share a region) and check snapshots of all of them, while raw
/// writes split the keyspace under them, an admin merges neighbours, and every fault is
/// injected. Checked: each snapshot
/// and the final one sum to the starting total, and replicas agree on every column family.
fn bank_workload() -> SimConfig {
    SimConfig {
        steps: 5000,
        bank_clients: 16,
        write_per_mille: 150,
        merge_per_mille: 4,
        ..SimConfig::default()
    }
}

/// The placement workload: five stores, the first region on three of them. The raw workload's
/// writes split it into dozens of regions; the balancers spread replicas and leaders over all
/// five (learners caught up by snapshot, promoted, old replicas removed, a leader handing over
/// before its own removal) while every fault strikes, and a store silent for 4 s of placement
/// time (200 steps; crashes and pauses last 100 to 600) has its replicas rebuilt elsewhere. A
/// replica removed while its store was cut off asks the placement driver and is destroyed.
/// Checked as the raw workload, and at the end every region has three voters and no operator
/// is left.
fn placement_workload() -> SimConfig {
    SimConfig {
        stores: 5,
        placement: true,
        ..raw_workload()
    }
}

const PLACEMENT_SEEDS: u64 = 40_000;

fn placement_shard(shard: u64) {
    let outcomes = run_seeds(PLACEMENT_SEEDS, shard, placement_workload());
    for (seed, o) in &outcomes {
        assert!(o.acked_writes > 500, "seed {seed}: too few writes: {o:?}");
        assert!(
            o.replicas_on_added_stores > 0,
            "seed {seed}: the two stores that started empty hold nothing: {o:?}"
        );
    }
    let sum = |f: fn(&SimOutcome) -> u32| outcomes.iter().map(|(_, o)| f(o)).sum::<u32>();
    let (balance, repair, changes) = (
        sum(|o| o.balance_operators),
        sum(|o| o.repair_operators),
        sum(|o| o.membership_changes_proposed),
    );
    println!(
        "placement over {} seeds: {balance} balance operators, {repair} repairs, {changes} membership changes proposed",
        outcomes.len()
    );
    if outcomes.len() >= 10 {
        assert!(repair > 0, "no replica was repaired over the shard");
    }
    assert_faults_injected(&outcomes);
}

#[test]
fn placement_seeds_shard_0() {
    placement_shard(0);
}

#[test]
fn placement_seeds_shard_1() {
    placement_shard(1);
}

#[test]
fn placement_seeds_shard_2() {
    placement_shard(2);
}

#[test]
fn placement_seeds_shard_3() {
    placement_shard(3);
}

const BANK_SEEDS: u64 = 30_000;

const RAW_SEEDS: u64 = 10_000;
const SPLIT_MERGE_SEEDS: u64 = 20_000;

fn raw_shard(shard: u64) {
    let outcomes = run_seeds(RAW_SEEDS, shard, raw_workload());
    for (seed, o) in &outcomes {
        assert!(o.acked_writes > 500, "seed {seed}: too few writes: {o:?}");
        assert!(o.regions >= 4, "seed {seed}: too few splits: {o:?}");
        assert!(
            o.register_ops_completed > 300,
            "seed {seed}: too few register operations: {o:?}"
        );
        assert!(
            o.leader_transfers_ordered > 0,
            "seed {seed}: no leader transfer under the reads: {o:?}"
        );
    }
    assert_faults_injected(&outcomes);
}

fn split_merge_shard(shard: u64) {
    let outcomes = run_seeds(SPLIT_MERGE_SEEDS, shard, split_merge_workload());
    let committed: u32 = outcomes.iter().map(|(_, o)| o.merges_committed).sum();
    let ordered: u32 = outcomes.iter().map(|(_, o)| o.merges_ordered).sum();
    println!("merges: {committed} committed of {ordered} ordered");
    assert!(
        committed as usize >= outcomes.len(),
        "too few merges committed: {committed} of {ordered} ordered over {} seeds",
        outcomes.len()
    );
    assert_faults_injected(&outcomes);
}

/// Over a whole shard every kind of fault happened (a replayed single seed is exempt).
fn assert_faults_injected(outcomes: &[(u64, SimOutcome)]) {
    if outcomes.len() < 10 {
        return;
    }
    let sum = |f: fn(&SimOutcome) -> u32| outcomes.iter().map(|(_, o)| f(o)).sum::<u32>();
    let faults = [
        ("crashes", sum(|o| o.crashes)),
        ("disk faults", sum(|o| o.disk_faults)),
        ("partitions", sum(|o| o.partitions)),
        ("one-way partitions", sum(|o| o.one_way_partitions)),
        ("pauses", sum(|o| o.pauses)),
    ];
    println!("faults over {} seeds: {faults:?}", outcomes.len());
    for (what, n) in faults {
        assert!(n > 0, "no {what} injected over {} seeds", outcomes.len());
    }
    // The placement group: members crashed and were cut off, leadership moved, and the TSO
    // probe's timestamps (checked to rise strictly) went on across the failovers.
    let group = |f: fn(&SimOutcome) -> u64| outcomes.iter().map(|(_, o)| f(o)).sum::<u64>();
    let placement = [
        (
            "placement member crashes",
            group(|o| o.placement_group.member_crashes),
        ),
        (
            "placement member isolations",
            group(|o| o.placement_group.member_isolations),
        ),
        (
            "placement failovers",
            group(|o| o.placement_group.serving_terms.saturating_sub(1)),
        ),
        ("TSO probes", group(|o| o.tso_probes)),
    ];
    println!(
        "placement group over {} seeds: {placement:?}",
        outcomes.len()
    );
    for (what, n) in placement {
        assert!(n > 0, "no {what} over {} seeds", outcomes.len());
    }
}

fn bank_shard(shard: u64) {
    let outcomes = run_seeds(BANK_SEEDS, shard, bank_workload());
    let mut totals = ringkv_tests::sim_bank::BankOutcome::default();
    for (seed, o) in &outcomes {
        let bank = o.bank.as_ref().expect("bank outcome");
        assert!(
            bank.transfers > 20,
            "seed {seed}: too few transfers: {bank:?}"
        );
        assert!(
            bank.snapshots > 5,
            "seed {seed}: too few snapshots: {bank:?}"
        );
        totals.transfers += bank.transfers;
        totals.one_phase += bank.one_phase;
        totals.aborted += bank.aborted;
        totals.snapshots += bank.snapshots;
        totals.stale_snapshots += bank.stale_snapshots;
        totals.stale_reads_served += bank.stale_reads_served;
        totals.stale_reads_fallen_back += bank.stale_reads_fallen_back;
        totals.locks_resolved += bank.locks_resolved;
        for (k, v) in &bank.abort_reasons {
            *totals.abort_reasons.entry(k.clone()).or_default() += v;
        }
    }
    let merges: u32 = outcomes.iter().map(|(_, o)| o.merges_committed).sum();
    println!(
        "bank over {} seeds: {totals:?}; {merges} merges committed",
        outcomes.len()
    );
    if outcomes.len() >= 10 {
        assert!(merges > 0, "merges ran under the transactions");
        assert!(
            totals.one_phase > 0 && totals.one_phase < totals.transfers,
            "both commit paths ran: {totals:?}"
        );
        assert!(
            totals.locks_resolved > 0,
            "readers resolved locks: {totals:?}"
        );
        assert!(
            totals.stale_reads_served > 0 && totals.stale_reads_fallen_back > 0,
            "replicas served stale reads, and some fell back to the leader: {totals:?}"
        );
    }
    assert_faults_injected(&outcomes);
}

#[test]
fn bank_seeds_shard_0() {
    bank_shard(0);
}

#[test]
fn bank_seeds_shard_1() {
    bank_shard(1);
}

#[test]
fn bank_seeds_shard_2() {
    bank_shard(2);
}

#[test]
fn bank_seeds_shard_3() {
    bank_shard(3);
}

#[test]
fn raw_seeds_shard_0() {
    raw_shard(0);
}

#[test]
fn raw_seeds_shard_1() {
    raw_shard(1);
}

#[test]
fn raw_seeds_shard_2() {
    raw_shard(2);
}

#[test]
fn raw_seeds_shard_3() {
    raw_shard(3);
}

#[test]
fn split_merge_seeds_shard_0() {
    split_merge_shard(0);
}

#[test]
fn split_merge_seeds_shard_1() {
    split_merge_shard(1);
}

#[test]
fn split_merge_seeds_shard_2() {
    split_merge_shard(2);
}

#[test]
fn split_merge_seeds_shard_3() {
    split_merge_shard(3);
}

/// The checker's own test: with a node that answers reads on any replica without confirming
/// leadership (a broken invariant), the raw workload yields stale reads, and the check reports
/// them.
#[test]
fn the_checker_catches_stale_reads_of_a_broken_node() {
    let cfg = SimConfig {
        unsafe_local_reads: true,
        ..raw_workload()
    };
    let caught = first_seed_caught(&cfg, RAW_SEEDS..RAW_SEEDS + 10, "not linearizable");
    assert!(caught.is_some(), "stale reads went unnoticed in ten seeds");
}

/// The lease's own test: leaders that keep serving local reads after their lease expired (the
/// check skipped) are caught, in the same workload, by the history check.
#[test]
fn the_checker_catches_reads_served_on_an_expired_lease() {
    let cfg = SimConfig {
        unsafe_lease_ignores_expiry: true,
        // Clients with stale routes reach a deposed leader more often.
        misroute_per_mille: 500,
        ..raw_workload()
    };
    let caught = first_seed_caught(&cfg, RAW_SEEDS..RAW_SEEDS + 20, "not linearizable");
    assert!(
        caught.is_some(),
        "expired-lease reads went unnoticed in twenty seeds"
    );
}

/// The exactly-once check's own test: without client sessions, register puts that are sent
/// again after no answer (as the SDK does) are applied twice now and then (one after another
/// client's put), and the history check sees the old value come back.
#[test]
fn the_checker_catches_retried_writes_applied_twice_without_sessions() {
    let cfg = SimConfig {
        sessions: false,
        // Fewer keys, so a put applied twice more often lands after another client's put.
        register_keys: 2,
        ..raw_workload()
    };
    let caught = first_seed_caught(&cfg, RAW_SEEDS..RAW_SEEDS + 30, "not linearizable");
    assert!(
        caught.is_some(),
        "writes applied twice went unnoticed in thirty seeds"
    );
}

/// The first of `seeds` whose run fails with a message containing `caught_by` (the check
/// under test); a failure of any other kind fails the test.
fn first_seed_caught(cfg: &SimConfig, seeds: std::ops::Range<u64>, caught_by: &str) -> Option<u64> {
    seeds.into_iter().find(|&seed| {
        match std::panic::catch_unwind(|| Sim::new(seed, cfg.clone()).run()) {
            Ok(_) => false,
            Err(e) => {
                let msg = panic_message(e);
                assert!(
                    msg.contains(caught_by),
                    "seed {seed} failed for another reason: {msg}"
                );
                true
            }
        }
    })
}

#[test]
fn a_seed_replays_exactly() {
    let cfg = SimConfig {
        steps: 4000,
        ..split_merge_workload()
    };
    let a = Sim::new(77, cfg.clone()).run();
    let b = Sim::new(77, cfg).run();
    assert_eq!(a, b, "the same seed must give the same run");
    let cfg = SimConfig {
        steps: 4000,
        ..placement_workload()
    };
    let a = Sim::new(PLACEMENT_SEEDS + 7, cfg.clone()).run();
    let b = Sim::new(PLACEMENT_SEEDS + 7, cfg).run();
    assert_eq!(a, b, "the same placement seed must give the same run");
}

/// The stale-read checker's own test: with leaders that claim safe timestamps past live
/// locks, some stale snapshot misses a transfer and does not sum up.
#[test]
fn the_bank_catches_safe_timestamps_claimed_past_live_locks() {
    let cfg = SimConfig {
        unsafe_safe_ts_ignores_locks: true,
        ..bank_workload()
    };
    let caught = first_seed_caught(&cfg, BANK_SEEDS..BANK_SEEDS + 10, "stale snapshot");
    assert!(
        caught.is_some(),
        "safe timestamps past live locks went unnoticed in ten seeds"
    );
}

/// The bank checker's own test: with nodes whose transactional reads ignore locks (so a
/// snapshot can miss a transfer committing below it), some snapshot does not sum up.
#[test]
fn the_bank_catches_reads_that_ignore_locks() {
    let cfg = SimConfig {
        unsafe_txn_reads_ignore_locks: true,
        ..bank_workload()
    };
    let caught = first_seed_caught(&cfg, BANK_SEEDS..BANK_SEEDS + 10, "bank:");
    assert!(
        caught.is_some(),
        "reads ignoring locks went unnoticed in ten seeds"
    );
}

#[test]
fn a_bank_seed_replays_exactly() {
    let cfg = bank_workload();
    for seed in [BANK_SEEDS + 35, BANK_SEEDS + 46] {
        let a = Sim::new(seed, cfg.clone()).run();
        let b = Sim::new(seed, cfg.clone()).run();
        assert_eq!(a, b, "seed {seed}: the same seed must give the same run");
    }
}

/// Runs a shard's seeds; a panic anywhere (a node's own invariant included) names the seed.
fn run_seeds(base: u64, shard: u64, cfg: SimConfig) -> Vec<(u64, SimOutcome)> {
    shard_seeds(base, shard)
        .into_iter()
        .map(|seed| {
            let outcome = match std::panic::catch_unwind(|| Sim::new(seed, cfg.clone()).run()) {
                Ok(outcome) => outcome,
                Err(e) => panic!(
                    "simulation seed {seed} failed: {}\nreplay with RINGKV_SIM_SEED={seed}",
                    panic_message(e)
                ),
            };
            println!("seed {seed}: {outcome:?}");
            (seed, outcome)
        })
        .collect()
}

fn panic_message(e: Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}
