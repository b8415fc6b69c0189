//! Deterministic simulation of a cluster: splits under load over a network that drops,
//! duplicates, delays and reorders messages, with partitions and crash/restart of stores. A
//! failure prints its seed; `RINGKV_SIM_SEED=<seed>` replays it.

use ringkv_tests::sim::{seeds, Sim, SimConfig};

#[test]
fn splits_under_load_with_faults_lose_nothing() {
    for seed in seeds(1, 6) {
        let outcome = run_reporting_seed(seed, SimConfig::default());
        println!("seed {seed}: {outcome:?}");
        assert!(
            outcome.acked_writes > 1000,
            "seed {seed}: too few writes: {outcome:?}"
        );
        assert!(
            outcome.regions >= 8,
            "seed {seed}: too few splits: {outcome:?}"
        );
    }
}

#[test]
fn splits_and_merges_under_load_with_faults_lose_nothing() {
    let cfg = SimConfig {
        merge_per_mille: 4,
        ..SimConfig::default()
    };
    let mut committed = 0;
    for seed in seeds(101, 6) {
        let outcome = run_reporting_seed(seed, cfg.clone());
        println!("seed {seed}: {outcome:?}");
        assert!(
            outcome.acked_writes > 1000,
            "seed {seed}: too few writes: {outcome:?}"
        );
        assert!(
            outcome.merges_ordered > 10,
            "seed {seed}: too few merges ordered: {outcome:?}"
        );
        committed += outcome.merges_committed;
    }
    assert!(committed > 0, "no merge committed in any seed");
}

/// The raw register workload: a few keys put and read by clients routed like real ones (mostly
/// to the leader the placement driver knows, sometimes to any replica), under the same faults
/// and splits; the history must be linearizable.
fn register_workload() -> SimConfig {
    SimConfig {
        steps: 6000,
        register_keys: 4,
        register_per_mille: 300,
        write_per_mille: 300,
        ..SimConfig::default()
    }
}

#[test]
fn registers_stay_linearizable_under_faults() {
    for seed in seeds(301, 6) {
        let outcome = run_reporting_seed(seed, register_workload());
        println!("seed {seed}: {outcome:?}");
        assert!(
            outcome.register_ops_completed > 500,
            "seed {seed}: too few register operations completed: {outcome:?}"
        );
    }
}

/// The checker's own test: with a node that answers reads on any replica without confirming
/// leadership (a broken invariant), the same workload yields stale reads, and the check
/// reports them.
#[test]
fn the_checker_catches_stale_reads_of_a_broken_node() {
    let cfg = SimConfig {
        unsafe_local_reads: true,
        ..register_workload()
    };
    let caught = (301..311).find(|&seed| {
        let result = std::panic::catch_unwind(|| Sim::new(seed, cfg.clone()).run());
        match result {
            Ok(_) => false,
            Err(e) => {
                let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
                assert!(
                    msg.contains("not linearizable"),
                    "seed {seed} failed for another reason: {msg}"
                );
                true
            }
        }
    });
    assert!(caught.is_some(), "stale reads went unnoticed in ten seeds");
}

/// Runs one seed; a panic anywhere (a node's own invariant included) names the seed.
fn run_reporting_seed(seed: u64, cfg: SimConfig) -> ringkv_tests::sim::SimOutcome {
    match std::panic::catch_unwind(|| Sim::new(seed, cfg).run()) {
        Ok(outcome) => outcome,
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("simulation seed {seed} failed: {msg}\nreplay with RINGKV_SIM_SEED={seed}");
        }
    }
}

#[test]
fn a_seed_replays_exactly() {
    let cfg = SimConfig {
        steps: 4000,
        ..SimConfig::default()
    };
    let a = Sim::new(77, cfg.clone()).run();
    let b = Sim::new(77, cfg).run();
    assert_eq!(a, b, "the same seed must give the same run");
}
