//! A cluster of real processes: the `ringkv-placement` and `ringkv-node` binaries, started as
//! children on loopback ports, for tests that `kill -9` and restart them.

use crate::debug;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A runtime with two worker threads for a test's clients.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Where cargo put the binaries: next to the test executable's `deps/` directory.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, which scripts/test.sh does)",
        path.display()
    );
    path
}

/// A free loopback port (bound and released; good enough for tests on one machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Proc {
    args: Vec<String>,
    binary: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let err = log.try_clone().expect("log file");
        let child = Command::new(&self.binary)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.child = Some(child);
    }

    fn signal(&mut self, sig: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(child.id() as libc::pid_t, sig) };
        }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }
}

/// A node configuration for process tests that wait on the placement driver: store reports
/// five times a second, 50 ms ticks, a region report every 10 ticks.
pub const FAST_NODE_TOML: &str = r#"
store_heartbeat_ms = 200

[raft]
tick_interval_ms = 50
region_heartbeat_ticks = 10
"#;

/// Placement members + N nodes as child processes. Killed on drop.
pub struct ProcessCluster {
    pub dir: tempfile::TempDir,
    /// The first placement member's address.
    pub pd_addr: String,
    /// Every placement member's address, in member order (`pd-1`, `pd-2`, …).
    pub pd_endpoints: Vec<String>,
    placements: Vec<Proc>,
    nodes: Vec<(String, Proc)>,
}

impl ProcessCluster {
    /// Starts placement and `n` nodes and waits until the first region has a leader.
    pub fn start(n: usize) -> Self {
        Self::start_with_config(n, "")
    }

    /// Like [`ProcessCluster::start`], with `node_toml` as every node's configuration file.
    pub fn start_with_config(n: usize, node_toml: &str) -> Self {
        Self::start_with_configs(n, node_toml, "")
    }

    /// Like [`ProcessCluster::start_with_config`], with `placement_toml` as the placement
    /// driver's configuration file too.
    pub fn start_with_configs(n: usize, node_toml: &str, placement_toml: &str) -> Self {
        Self::start_with_placement_members(1, n, node_toml, placement_toml)
    }

    /// `members` placement processes in one group (named `pd-1`, `pd-2`, …) and `n` nodes.
    pub fn start_with_placement_members(
        members: usize,
        n: usize,
        node_toml: &str,
        placement_toml: &str,
    ) -> Self {
        Self::start_prepared(members, n, node_toml, placement_toml, |_| ()).0
    }

    /// Like [`ProcessCluster::start_with_configs`], running `prepare` on the cluster's
    /// directory before any process starts (node `i` keeps its data in `node{i}` under it),
    /// e.g. to mount a small file system there; returns what `prepare` returned.
    pub fn start_with_prepared_dir<T>(
        n: usize,
        node_toml: &str,
        placement_toml: &str,
        prepare: impl FnOnce(&std::path::Path) -> T,
    ) -> (Self, T) {
        Self::start_prepared(1, n, node_toml, placement_toml, prepare)
    }

    fn start_prepared<T>(
        members: usize,
        n: usize,
        node_toml: &str,
        placement_toml: &str,
        prepare: impl FnOnce(&std::path::Path) -> T,
    ) -> (Self, T) {
        let dir = tempfile::tempdir().expect("temp dir");
        let prepared = prepare(dir.path());
        let config_path = dir.path().join("node.toml");
        std::fs::write(&config_path, node_toml).expect("node config written");
        let placement_config = dir.path().join("placement.toml");
        std::fs::write(&placement_config, placement_toml).expect("placement config written");
        let pd_endpoints: Vec<String> = (0..members.max(1))
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let initial_members = pd_endpoints
            .iter()
            .enumerate()
            .map(|(i, a)| format!("pd-{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut placements = Vec::new();
        for (i, addr) in pd_endpoints.iter().enumerate() {
            let mut args = vec![
                "--config".into(),
                placement_config.display().to_string(),
                "--name".into(),
                format!("pd-{}", i + 1),
                "--data-dir".into(),
                dir.path()
                    .join(if members <= 1 {
                        "placement".to_string()
                    } else {
                        format!("placement{}", i + 1)
                    })
                    .display()
                    .to_string(),
                "--listen-addr".into(),
                addr.clone(),
                "--replicas".into(),
                n.min(3).to_string(),
            ];
            if members > 1 {
                args.extend(["--initial-members".into(), initial_members.clone()]);
            }
            let mut p = Proc {
                args,
                binary: binary("ringkv-placement"),
                log: dir.path().join(if members <= 1 {
                    "placement.log".to_string()
                } else {
                    format!("placement{}.log", i + 1)
                }),
                child: None,
            };
            p.spawn();
            placements.push(p);
        }
        let pd_addr = pd_endpoints[0].clone();
        let mut cluster = ProcessCluster {
            dir,
            pd_addr,
            pd_endpoints,
            placements,
            nodes: Vec::new(),
        };
        for _ in 0..n {
            cluster.spawn_node();
        }
        cluster.wait_for_leader(Duration::from_secs(60));
        (cluster, prepared)
    }

    /// Starts one more node on a fresh data directory (a new store); returns its index.
    pub fn add_node(&mut self) -> usize {
        self.spawn_node()
    }

    fn spawn_node(&mut self) -> usize {
        let i = self.nodes.len();
        let dir = self.dir.path();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut p = Proc {
            args: vec![
                "--config".into(),
                dir.join("node.toml").display().to_string(),
                "--data-dir".into(),
                dir.join(format!("node{i}")).display().to_string(),
                "--listen-addr".into(),
                addr.clone(),
                "--placement".into(),
                self.pd_endpoints.join(","),
                "--log-level".into(),
                "info".into(),
            ],
            binary: binary("ringkv-node"),
            log: dir.join(format!("node{i}.log")),
            child: None,
        };
        p.spawn();
        self.nodes.push((addr, p));
        i
    }

    pub fn node_addr(&self, i: usize) -> &str {
        &self.nodes[i].0
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// Index of a live node that claims leadership of a region.
    pub fn leader(&self) -> Option<usize> {
        let rt = Self::rt();
        (0..self.nodes.len()).find(|&i| {
            self.nodes[i].1.child.is_some()
                && rt
                    .block_on(debug::regions(&self.nodes[i].0))
                    .is_some_and(|rs| rs.iter().any(|r| r.is_leader))
        })
    }

    pub fn wait_for_leader(&self, limit: Duration) -> usize {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(i) = self.leader() {
                return i;
            }
            if std::time::Instant::now() >= deadline {
                let mut logs = String::new();
                for i in 0..self.placements.len() {
                    logs += &format!(
                        "\n--- placement member {i} ---\n{}",
                        self.placement_log_tail(i)
                    );
                }
                for i in 0..self.nodes.len() {
                    logs += &format!("\n--- node {i} ---\n{}", self.log_tail(i));
                }
                panic!("no region leader among the node processes within {limit:?}; logs:{logs}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `kill -9` node `i`.
    pub fn kill_node(&mut self, i: usize) {
        self.nodes[i].1.kill9();
    }

    /// Starts node `i` again with the same data directory and port.
    pub fn restart_node(&mut self, i: usize) {
        assert!(self.nodes[i].1.child.is_none(), "node {i} is running");
        self.nodes[i].1.spawn();
    }

    /// SIGSTOP / SIGCONT node `i`.
    pub fn pause_node(&mut self, i: usize) {
        self.nodes[i].1.signal(libc::SIGSTOP);
    }

    pub fn resume_node(&mut self, i: usize) {
        self.nodes[i].1.signal(libc::SIGCONT);
    }

    /// Node `i`'s data directory.
    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}"))
    }

    /// Waits up to `limit` for node `i`'s process to exit by itself; its exit status if it did.
    pub fn wait_node_exit(
        &mut self,
        i: usize,
        limit: Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            let child = self.nodes[i].1.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.nodes[i].1.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// Whether node `i`'s process is running (not killed; a paused one counts as running).
    pub fn node_running(&self, i: usize) -> bool {
        self.nodes[i].1.child.is_some()
    }

    /// Every process of the cluster that exited on its own (a crash), with its exit status and
    /// the tail of its log; a killed or stopped-by-the-test process is not listed.
    pub fn crashed(&mut self) -> Vec<String> {
        let mut crashed = Vec::new();
        let procs = self
            .placements
            .iter_mut()
            .enumerate()
            .map(|(i, p)| (format!("placement member {i}"), p))
            .chain(
                self.nodes
                    .iter_mut()
                    .enumerate()
                    .map(|(i, (_, p))| (format!("node {i}"), p)),
            );
        for (name, p) in procs {
            if let Some(Ok(Some(status))) = p.child.as_mut().map(|c| c.try_wait()) {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                crashed.push(format!(
                    "{name} exited ({status}); its log ends:\n{}",
                    lines[lines.len().saturating_sub(20)..].join("\n")
                ));
            }
        }
        crashed
    }

    /// `kill -9` the (first) placement member.
    pub fn kill_placement(&mut self) {
        self.kill_placement_member(0);
    }

    /// Starts the (first) placement member again with the same data directory and port.
    pub fn restart_placement(&mut self) {
        self.restart_placement_member(0);
    }

    pub fn placement_running(&self) -> bool {
        self.placement_member_running(0)
    }

    /// `kill -9` placement member `i`.
    pub fn kill_placement_member(&mut self, i: usize) {
        self.placements[i].kill9();
    }

    /// Starts placement member `i` again with the same data directory and port.
    pub fn restart_placement_member(&mut self, i: usize) {
        assert!(
            self.placements[i].child.is_none(),
            "placement member {i} is running"
        );
        self.placements[i].spawn();
    }

    /// Cuts placement member `isolated` off from the other members both ways, or heals
    /// (None), through the members' fault-injection hook (their config needs
    /// `fault_injection = true`). Nodes and clients still reach every member.
    pub fn partition_placement(&self, isolated: Option<usize>) {
        use ringkv_proto::pdpb::placement_member_client::PlacementMemberClient;
        use ringkv_proto::pdpb::SetMemberNetFilterRequest;
        let listed: Vec<String> = self
            .pd_endpoints
            .iter()
            .enumerate()
            .map(|(i, a)| format!("pd-{}={a}", i + 1))
            .collect();
        let specs = ringkv_placement::member::member_specs(&listed).expect("member list");
        let id_of = |i: usize| {
            let name = format!("pd-{}", i + 1);
            specs
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.id)
                .expect("a listed member")
        };
        let rt = Self::rt();
        for i in (0..self.placements.len()).filter(|&i| self.placement_member_running(i)) {
            let blocked: Vec<u64> = match isolated {
                None => Vec::new(),
                Some(j) if j == i => (0..self.placements.len())
                    .filter(|&k| k != i)
                    .map(id_of)
                    .collect(),
                Some(j) => vec![id_of(j)],
            };
            let endpoint = format!("http://{}", self.pd_endpoints[i]);
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                let set = rt.block_on(async {
                    let mut c = PlacementMemberClient::connect(endpoint.clone())
                        .await
                        .ok()?;
                    c.set_member_net_filter(SetMemberNetFilterRequest {
                        blocked_member_ids: blocked.clone(),
                    })
                    .await
                    .ok()
                });
                if set.is_some() {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "placement member {i} did not take its net filter within 20 s; its log ends:\n{}",
                    self.placement_log_tail(i)
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// SIGSTOP / SIGCONT placement member `i`.
    pub fn pause_placement_member(&mut self, i: usize) {
        self.placements[i].signal(libc::SIGSTOP);
    }

    pub fn resume_placement_member(&mut self, i: usize) {
        self.placements[i].signal(libc::SIGCONT);
    }

    pub fn placement_member_running(&self, i: usize) -> bool {
        self.placements[i].child.is_some()
    }

    /// The index of the placement member that leads, as the running members report it (the
    /// leader must confirm it).
    pub fn placement_leader(&self) -> Option<usize> {
        let rt = Self::rt();
        let pd = rt
            .block_on(ringkv_client::PdClient::connect(&self.pd_endpoints))
            .ok()?;
        (0..self.placements.len()).find(|&i| {
            self.placement_member_running(i)
                && rt
                    .block_on(pd.get_members_from(&self.pd_endpoints[i]))
                    .is_ok_and(|m| {
                        m.leader.as_ref().map(|l| &l.name)
                            == m.answered_by.as_ref().map(|a| &a.name)
                    })
        })
    }

    /// The tail of placement member `i`'s log, for failure messages.
    pub fn placement_log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(&self.placements[i].log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// A runtime for the test's clients and a raw client of this cluster with a 30 s deadline.
    /// Cuts node `isolated` off from the others both ways, or heals (None), through the nodes'
    /// fault-injection hook (their config needs `fault_injection = true`).
    pub fn partition(
        &self,
        rt: &tokio::runtime::Runtime,
        store_ids: &[u64],
        isolated: Option<usize>,
    ) {
        for (i, _) in store_ids.iter().enumerate() {
            if !self.node_running(i) {
                continue;
            }
            let blocked = match isolated {
                None => Vec::new(),
                Some(j) if j == i => store_ids
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| *k != i)
                    .map(|(_, s)| *s)
                    .collect(),
                Some(j) => vec![store_ids[j]],
            };
            // A node just restarted may not listen yet: wait for it (it refuses only if fault
            // injection is off, which the wait reports).
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !rt.block_on(debug::set_net_filter(self.node_addr(i), blocked.clone())) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "node {i} did not take its net filter within 20 s; its log ends:\n{}",
                    self.log_tail(i)
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    pub fn client(&self) -> (tokio::runtime::Runtime, ringkv_client::RawClient) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let config = ringkv_client::RawConfig {
            timeout: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(2),
            ..ringkv_client::RawConfig::default()
        };
        let client = rt
            .block_on(ringkv_client::RawClient::connect_with_config(
                &self.pd_endpoints,
                config,
            ))
            .expect("client connects");
        (rt, client)
    }

    /// The tail of node `i`'s log, for failure messages.
    pub fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(&self.nodes[i].1.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for (_, p) in &mut self.nodes {
            p.signal(libc::SIGCONT);
            p.kill9();
        }
        for p in &mut self.placements {
            p.kill9();
        }
    }
}

/// Runs `ringkv-node` with `args` until it exits by itself (at most `limit`, else it is killed);
/// returns its exit status and everything it printed, or None if it kept running.
pub fn run_node_until_exit(
    args: &[String],
    limit: Duration,
) -> Option<(std::process::ExitStatus, String)> {
    let mut child = Command::new(binary("ringkv-node"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ringkv-node starts");
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            let out = child.wait_with_output().expect("output");
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            return Some((out.status, text));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}
