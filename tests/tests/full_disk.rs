//! A full disk, with real processes: one of three `ringkv-node`s keeps its data on a small
//! tmpfs the test mounts (the test runs as root, as CI does). Clients write until that disk
//! fills: the node stops with an error naming the full disk instead of going on with some of
//! its threads dead, the other two keep serving, and no acknowledged write is lost. Once the
//! file system is grown, the node restarts from what it had on disk and catches up.

use ringkv_tests::process::{ProcessCluster, FAST_NODE_TOML};
use ringkv_tests::{debug, wait_until};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The node whose data directory is the small file system.
const FULL: usize = 2;
const VALUE_BYTES: usize = 64 * 1024;

/// A tmpfs mounted for the test; unmounted (lazily, whatever still holds it) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size_mib: u64) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        run(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"],
            at,
        );
        Tmpfs(at.to_path_buf())
    }

    fn grow(&self, size_mib: u64) {
        run(
            "mount",
            &["-o", &format!("remount,size={size_mib}m")],
            &self.0,
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn run(cmd: &str, args: &[&str], path: &Path) {
    let status = Command::new(cmd)
        .args(args)
        .arg(path)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        status.success(),
        "{cmd} {args:?} {} failed: {status}",
        path.display()
    );
}

fn key(i: usize) -> String {
    format!("big{i:05}")
}

/// `VALUE_BYTES` that no engine can compress (storage engines compress blocks; a value of one
/// repeated byte would never fill the disk), the same for the same `i`.
fn value(i: usize) -> Vec<u8> {
    let mut v = format!("{i}:").into_bytes();
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while v.len() < VALUE_BYTES {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(VALUE_BYTES);
    v
}

#[test]
fn a_node_whose_disk_fills_stops_with_a_clear_error_and_recovers_once_there_is_room() {
    let (mut cluster, tmpfs) =
        ProcessCluster::start_with_prepared_dir(3, FAST_NODE_TOML, "", |dir: &Path| {
            Tmpfs::mount(&dir.join(format!("node{FULL}")), 48)
        });
    let (rt, client) = cluster.client();
    // Write until the small disk is full and its node stops (bounded: ~250 MiB, 3 minutes).
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut stopped = None;
    for i in 0..4000 {
        if Instant::now() > deadline {
            break;
        }
        let put = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), client.put(key(i), value(i))).await
        });
        if put.is_ok_and(|r| r.is_ok()) {
            acked.push(i);
        }
        if i % 20 == 0 {
            stopped = cluster.wait_node_exit(FULL, Duration::from_millis(1));
            if stopped.is_some() {
                break;
            }
        }
    }
    let status = stopped
        .or_else(|| cluster.wait_node_exit(FULL, Duration::from_secs(30)))
        .expect("the node on the full disk stops");
    assert_eq!(status.code(), Some(70), "it stops on purpose: {status}");
    let log = cluster.log_tail(FULL);
    assert!(
        log.contains("is full: free space or grow the volume"),
        "the error names the full disk: {log}"
    );
    eprintln!("{} writes acknowledged before the disk filled", acked.len());
    assert!(
        acked.len() > 100,
        "the disk filled too early: {}",
        acked.len()
    );

    // The other two serve on.
    let more: Vec<usize> = (10_000..10_020).collect();
    rt.block_on(async {
        for &i in &more {
            client
                .put(key(i), value(i))
                .await
                .expect("two of three nodes write");
        }
    });

    // Room again: the node restarts from its disk and catches up with everything.
    tmpfs.grow(1024);
    cluster.restart_node(FULL);
    let addr = cluster.node_addr(FULL).to_string();
    for &i in acked.iter().chain(&more) {
        let encoded =
            ringkv_proto::keys::encode(&ringkv_proto::keys::default_keyspace(), key(i).as_bytes());
        wait_until(
            &format!("the restarted node to hold {}", key(i)),
            Duration::from_secs(120),
            || {
                let local = rt.block_on(debug::local_get(&addr, &encoded))?;
                (local == Some(value(i))).then_some(())
            },
        );
    }
    rt.block_on(async {
        for &i in acked.iter().chain(&more) {
            let v = client.get(key(i)).await.expect("read");
            assert_eq!(v, Some(value(i)), "{}", key(i));
        }
    });
    drop(cluster);
    drop(tmpfs);
}
