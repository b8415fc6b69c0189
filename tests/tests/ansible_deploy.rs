//! The Ansible playbooks (`ansible/`) run for real against SSH hosts on this machine: four
//! network namespaces with their own mount namespaces and sshd (`tests/ansible/hosts.sh`).
//! Deploy three placement members and three nodes, deploy again (no changes), write through
//! the client, then a rolling restart and a scale-out to a fourth host while a client keeps
//! writing; every acknowledged write is read back afterwards. `ansible-lint` passes on the
//! playbooks.
//!
//! Needs root, openssh-server, iproute2 and the virtualenv at target/ansible-venv:
//! `scripts/ansible-deps.sh` installs them (scripts/test.sh runs it first).

use ringkv_client::{RawClient, RawConfig};
use ringkv_tests::process::{binary, runtime};
use ringkv_tests::wait_until;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HOSTS: usize = 4;
const PLACEMENT: [&str; 3] = ["10.77.0.11:2379", "10.77.0.12:2379", "10.77.0.13:2379"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn venv_bin() -> PathBuf {
    let bin = repo().join("target/ansible-venv/bin");
    assert!(
        bin.join("ansible-playbook").exists() && bin.join("ansible-lint").exists(),
        "{} lacks ansible-playbook or ansible-lint: run scripts/ansible-deps.sh (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A command from the virtualenv, run in `ansible/`.
fn ansible_command(program: &str) -> Command {
    let bin = venv_bin();
    let mut cmd = Command::new(bin.join(program));
    cmd.current_dir(repo().join("ansible"))
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("ANSIBLE_CONFIG", repo().join("ansible/ansible.cfg"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_FORCE_COLOR", "0");
    cmd
}

/// The test hosts; removed (and everything in them killed) on drop.
struct Hosts {
    work: tempfile::TempDir,
}

impl Hosts {
    fn up() -> Self {
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the deployment test creates network namespaces and runs sshd: run it as root"
        );
        let work = tempfile::tempdir().expect("work dir");
        let status = Command::new(repo().join("tests/ansible/hosts.sh"))
            .args(["up", &work.path().display().to_string(), &HOSTS.to_string()])
            .status()
            .expect("hosts.sh runs");
        assert!(status.success(), "the test hosts could not be created");
        Hosts { work }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("tests/ansible/hosts.sh"))
            .args([
                "down",
                &self.work.path().display().to_string(),
                &HOSTS.to_string(),
            ])
            .status();
    }
}

/// The inventory: h1..h3 run a placement member and a node; `with_h4` adds h4's node.
fn write_inventory(hosts: &Hosts, with_h4: bool) -> PathBuf {
    let h4_node = if with_h4 {
        "        h4: {ringkv_labels: {zone: z1, host: h4}}\n"
    } else {
        ""
    };
    let text = format!(
        r#"all:
  vars:
    ansible_user: root
    ansible_python_interpreter: /usr/bin/python3
    ansible_ssh_private_key_file: {key}
    ringkv_binary_dir: {bin}
    ringkv_health_timeout_s: 240
    ringkv_node_extra:
      split:
        region_split_size_bytes: 65536
        split_check_diff_bytes: 16384
        split_check_ticks: 2
  children:
    ringkv_placement:
      hosts:
        h1: {{ringkv_placement_name: pd-1}}
        h2: {{ringkv_placement_name: pd-2}}
        h3: {{ringkv_placement_name: pd-3}}
    ringkv_nodes:
      hosts:
        h1: {{ringkv_labels: {{zone: z1, host: h1}}}}
        h2: {{ringkv_labels: {{zone: z2, host: h2}}}}
        h3: {{ringkv_labels: {{zone: z3, host: h3}}}}
{h4_node}  hosts:
    h1: {{ansible_host: 10.77.0.11}}
    h2: {{ansible_host: 10.77.0.12}}
    h3: {{ansible_host: 10.77.0.13}}
    h4: {{ansible_host: 10.77.0.14}}
"#,
        key = hosts.path("id_ed25519").display(),
        bin = hosts.path("bin").display(),
    );
    let path = hosts.path("inventory.yml");
    std::fs::write(&path, text).expect("inventory written");
    path
}

/// Runs a playbook; returns its output, or panics with its end.
fn playbook(hosts: &Hosts, inventory: &Path, name: &str) -> String {
    playbook_with(hosts, inventory, name, &[])
}

/// Runs a playbook with extra arguments (e.g. `--limit`).
fn playbook_with(hosts: &Hosts, inventory: &Path, name: &str, args: &[&str]) -> String {
    let started = Instant::now();
    let out = ansible_command("ansible-playbook")
        .arg("-i")
        .arg(inventory)
        .args(args)
        .arg(name)
        .output()
        .expect("ansible-playbook runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    std::fs::write(hosts.path(&format!("{name}.log")), &text).expect("log written");
    let tail: Vec<&str> = text.lines().rev().take(60).collect();
    assert!(
        out.status.success(),
        "{name} failed after {:?}; the end of its output:\n{}",
        started.elapsed(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    println!("{name}: {:?}", started.elapsed());
    text
}

/// `changed=N` of every host in a play recap.
fn changed_counts(output: &str) -> Vec<(String, u32)> {
    let recap = output.rsplit("PLAY RECAP").next().unwrap_or_default();
    recap
        .lines()
        .filter_map(|line| {
            let (host, rest) = line.split_once(" : ")?;
            let changed = rest
                .split_whitespace()
                .find_map(|f| f.strip_prefix("changed="))?
                .parse()
                .ok()?;
            Some((host.trim().to_string(), changed))
        })
        .collect()
}

fn client(rt: &tokio::runtime::Runtime) -> RawClient {
    rt.block_on(RawClient::connect_with_config(
        &PLACEMENT,
        RawConfig {
            timeout: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(2),
            ..RawConfig::default()
        },
    ))
    .expect("client connects to the deployed cluster")
}

#[test]
fn ansible_lint_passes_on_the_playbooks() {
    let out = ansible_command("ansible-lint")
        .arg("--offline")
        .output()
        .expect("ansible-lint runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ansible-lint failed:\n{text}");
    assert!(text.contains("0 failure(s)"), "{text}");
}

#[test]
fn playbooks_deploy_restart_and_scale_out_a_cluster_without_losing_a_write() {
    let hosts = Hosts::up();
    // The binaries this build made, without their debug sections (a tenth of the size).
    std::fs::create_dir_all(hosts.path("bin")).expect("bin dir");
    for name in ["ringkv-placement", "ringkv-node", "ringkv-ctl"] {
        let status = Command::new("objcopy")
            .arg("--strip-debug")
            .arg(binary(name))
            .arg(hosts.path("bin").join(name))
            .status()
            .expect("objcopy runs");
        assert!(status.success(), "objcopy {name}");
    }
    let inventory = write_inventory(&hosts, false);
    playbook(&hosts, &inventory, "deploy.yml");
    let again = playbook(&hosts, &inventory, "deploy.yml");
    let changed = changed_counts(&again);
    assert_eq!(changed.len(), 3, "a recap line per host: {changed:?}");
    assert!(
        changed.iter().all(|(_, n)| *n == 0),
        "a second deploy changed something: {changed:?}"
    );

    let rt = runtime();
    let writer_client = client(&rt);
    let value = vec![b'v'; 1024];
    rt.block_on(async {
        for i in 0..300u32 {
            writer_client
                .put(format!("before-{i:04}").into_bytes(), value.clone())
                .await
                .expect("put before the restarts");
        }
    });

    // A client keeps writing through the rolling restart and the scale-out; it records what
    // was acknowledged. Bounded in count and time.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let handle = rt.handle().clone();
        let client = writer_client.clone();
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut failed = 0u32;
            let deadline = Instant::now() + Duration::from_secs(900);
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && n < 1_000_000 {
                let key = format!("during-{n:07}").into_bytes();
                match handle.block_on(client.put(key, b"w".to_vec())) {
                    Ok(()) => acked.push(n),
                    Err(_) => failed += 1,
                }
                n += 1;
                // A steady trickle, not a flood: the playbooks and the nodes share two cores.
                std::thread::sleep(Duration::from_millis(5));
            }
            (acked, failed)
        })
    };

    playbook(&hosts, &inventory, "rolling_restart.yml");
    let inventory = write_inventory(&hosts, true);
    // Only the new host is touched (the documented fast path).
    playbook_with(&hosts, &inventory, "scale_out.yml", &["--limit", "h4"]);

    // The fourth node gets its share of the (small, split) regions.
    let pd = rt
        .block_on(ringkv_client::PdClient::connect(&PLACEMENT))
        .expect("placement client");
    let h4_store = rt
        .block_on(pd.get_all_stores())
        .expect("stores")
        .into_iter()
        .find(|s| s.address == "10.77.0.14:20160")
        .expect("the fourth node registered")
        .id;
    wait_until(
        "the fourth node to hold replicas",
        Duration::from_secs(240),
        || {
            let regions = rt.block_on(pd.scan_regions(b"", b"", 0)).ok()?;
            regions
                .iter()
                .any(|r| r.region.peers.iter().any(|p| p.store_id == h4_store))
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (acked, failed) = writer.join().expect("writer");
    println!(
        "writes during the rolling restart and scale-out: {} acknowledged, {failed} failed",
        acked.len()
    );
    assert!(acked.len() > 100, "the cluster kept taking writes");

    let reader = client(&rt);
    rt.block_on(async {
        for i in 0..300u32 {
            let got = reader
                .get(format!("before-{i:04}").into_bytes())
                .await
                .expect("get");
            assert_eq!(got.as_deref(), Some(value.as_slice()), "before-{i:04}");
        }
        for chunk in acked.chunks(256) {
            let keys: Vec<Vec<u8>> = chunk
                .iter()
                .map(|n| format!("during-{n:07}").into_bytes())
                .collect();
            let found: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = reader
                .batch_get(keys.clone())
                .await
                .expect("batch get")
                .into_iter()
                .collect();
            for key in keys {
                assert_eq!(
                    found.get(&key).map(Vec::as_slice),
                    Some(&b"w"[..]),
                    "acknowledged {} lost",
                    String::from_utf8_lossy(&key)
                );
            }
        }
    });
    playbook(&hosts, &inventory, "status.yml");
}
