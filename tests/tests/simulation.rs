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
