//! Damaged data directories, on the real binaries: a node must either recover exactly (a torn
//! log tail, as a crash during a log write leaves) or refuse to start with an error that says
//! what is wrong, and never serve data that diverges from its replicas.

use ringkv_tests::debug;
use ringkv_tests::process::{free_port, run_node_until_exit, ProcessCluster};
use ringkv_tests::wait_until;
use std::path::{Path, PathBuf};
use std::time::Duration;

const KEYS: usize = 300;

fn key(i: usize) -> Vec<u8> {
    format!("corrupt-{i:04}").into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    format!("value-{i}-{}", "x".repeat(100)).into_bytes()
}

/// A three-node cluster holding `KEYS` keys, with node 2 killed -9 afterwards.
fn cluster_with_data() -> ProcessCluster {
    let mut cluster = ProcessCluster::start(3);
    let (rt, client) = cluster.client();
    for i in 0..KEYS {
        rt.block_on(client.put(key(i), value(i))).expect("put");
    }
    // Node 2 has everything before it goes.
    wait_for_all_keys_on(&cluster, 2);
    cluster.kill_node(2);
    cluster
}

/// Waits until node `i` holds every key locally (it caught up).
fn wait_for_all_keys_on(cluster: &ProcessCluster, i: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let keyspace = ringkv_proto::keys::default_keyspace();
    wait_until(
        &format!("node {i} to hold all {KEYS} keys"),
        Duration::from_secs(60),
        || {
            (0..KEYS)
                .all(|k| {
                    let encoded = ringkv_proto::keys::encode(&keyspace, &key(k));
                    rt.block_on(debug::local_get(cluster.node_addr(i), &encoded))
                        == Some(Some(value(k)))
                })
                .then_some(())
        },
    );
}

/// The raft-engine log files of node directory `dir`, largest first.
fn raft_log_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(dir.join("raft"))
        .expect("raft directory")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "raftlog"))
        .map(|p| (std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0), p))
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    files.into_iter().map(|(_, p)| p).collect()
}

/// Restarts node 2 and returns None if it keeps running, else how it exited and its log.
fn restart_and_watch(cluster: &mut ProcessCluster) -> Option<(std::process::ExitStatus, String)> {
    cluster.restart_node(2);
    let status = cluster.wait_node_exit(2, Duration::from_secs(15))?;
    Some((status, cluster.log_tail(2)))
}

#[test]
fn a_torn_raft_log_tail_is_recovered_and_the_node_catches_up() {
    let mut cluster = cluster_with_data();
    let files = raft_log_files(&cluster.node_dir(2));
    let log = files.first().expect("a raft log file");
    let len = std::fs::metadata(log).unwrap().len();
    // A crash during a write leaves a partial record at the end.
    let file = std::fs::OpenOptions::new().write(true).open(log).unwrap();
    file.set_len(len - 7).unwrap();
    if let Some((status, log)) = restart_and_watch(&mut cluster) {
        panic!("node 2 did not recover from a torn log tail ({status}):\n{log}");
    }
    wait_for_all_keys_on(&cluster, 2);
}

#[test]
fn a_missing_raft_log_is_refused_with_a_clear_error() {
    let mut cluster = cluster_with_data();
    std::fs::remove_dir_all(cluster.node_dir(2).join("raft")).unwrap();
    let (status, log) = restart_and_watch(&mut cluster).expect("node 2 must refuse to start");
    assert!(!status.success());
    assert!(
        log.contains("raft directory replaced") || log.contains("no hard state"),
        "unclear error:\n{log}"
    );
}

#[test]
fn a_flipped_bit_in_the_raft_log_never_yields_divergent_data() {
    let mut cluster = cluster_with_data();
    let files = raft_log_files(&cluster.node_dir(2));
    let log = files.first().expect("a raft log file");
    let mut bytes = std::fs::read(log).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(log, &bytes).unwrap();
    match restart_and_watch(&mut cluster) {
        Some((status, log)) => {
            assert!(!status.success());
            assert!(
                log.contains("corrupt")
                    || log.contains("raft log engine")
                    || log.contains("checksum"),
                "node 2 stopped without saying the log is damaged ({status}):\n{log}"
            );
            println!(
                "node 2 refused its damaged log: {}",
                log.lines().last().unwrap_or("")
            );
        }
        None => {
            // It dropped the damaged part and caught up from the others: its data must match.
            wait_for_all_keys_on(&cluster, 2);
            println!("node 2 recovered from the damaged log and caught up");
        }
    }
}

#[test]
fn data_of_another_cluster_is_refused_with_a_clear_error() {
    let mut first = ProcessCluster::start(1);
    let dir = first.node_dir(0);
    first.kill_node(0);
    let second = ProcessCluster::start(1);
    let args = vec![
        "--data-dir".to_string(),
        dir.display().to_string(),
        "--listen-addr".to_string(),
        format!("127.0.0.1:{}", free_port()),
        "--placement".to_string(),
        second.pd_addr.clone(),
    ];
    let (status, output) =
        run_node_until_exit(&args, Duration::from_secs(30)).expect("the node must refuse");
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(
        output.contains("belongs to cluster") && output.contains("refusing to start"),
        "unclear error: {output}"
    );
    drop(first);
}

#[test]
fn a_wiped_data_directory_never_comes_back_as_the_old_store() {
    let mut cluster = cluster_with_data();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let old_store = rt.block_on(debug::store_id(cluster.node_addr(0))).unwrap();
    cluster.kill_node(0);
    std::fs::remove_dir_all(cluster.node_dir(0)).unwrap();
    cluster.restart_node(0);
    // Either it refuses (its address still belongs to the old, recently live store) or it joins
    // as a new, empty store; it never answers as the old store with no data.
    match cluster.wait_node_exit(0, Duration::from_secs(15)) {
        Some(status) => {
            let log = cluster.log_tail(0);
            assert!(!status.success());
            assert!(
                log.contains("already used by live store"),
                "unclear error:\n{log}"
            );
            println!("the wiped node was refused: its address belongs to live store {old_store}");
        }
        None => {
            let new_store = wait_until("the wiped node to answer", Duration::from_secs(30), || {
                rt.block_on(debug::store_id(cluster.node_addr(0)))
            });
            assert_ne!(
                new_store, old_store,
                "a wiped node came back as its old store"
            );
            println!("the wiped node joined as new store {new_store}");
        }
    }
}
