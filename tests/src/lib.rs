//! Cluster test machinery shared by the tests in `tests/tests/`:
//!
//! - [`cluster::TestCluster`]: placement + N nodes in this process, on ephemeral loopback ports,
//!   with per-node stop/restart and per-link message drop (partitions) through the nodes'
//!   [`NetFilter`](ringkv_node::NetFilter).
//! - [`process::ProcessCluster`]: the real `ringkv-placement` and `ringkv-node` binaries as child
//!   processes, with `kill -9`, SIGSTOP/SIGCONT and restart.
//! - [`sim`]: a deterministic, seeded simulation of a whole cluster on one thread.
//! - [`fuzz`]: the RPC fuzzer's request generator and batches (test: `rpc_fuzz.rs`).
//! - [`linearizability`]: a checker for histories of register operations.
//! - [`regions`]: checks that regions tile the keyspace and never overlap on a node.
//! - [`wait_until`]: bounded polling for conditions that become true eventually.

pub mod bank;
pub mod cluster;
pub mod cluster_checks;
pub mod debug;
pub mod fuzz;
pub mod linearizability;
pub mod list_append;
pub mod process;
pub mod regions;
pub mod sim;
pub mod sim_bank;
pub mod sim_placement;
pub mod txn_rpc;

use std::time::{Duration, Instant};

/// Polls `f` every 50 ms until it returns `Some`, or panics with `what` after `limit`.
pub fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Logs of tests go to the test output when `RUST_LOG` is set.
pub fn init_test_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
