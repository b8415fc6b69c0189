//! The cluster load generator and its pieces: a local cluster of real processes
//! ([`LocalCluster`]), pre-splitting ([`presplit`]), a closed-loop write load
//! ([`write_load`]) and process CPU accounting ([`cpu_seconds`]).

pub mod snapshot_load;
pub mod target;
pub mod workload;

use ringkv_client::{RawClient, RawConfig};
use ringkv_proto::keys;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Placement and nodes as child processes of the bench, in a temporary directory. Killed on drop.
pub struct LocalCluster {
    pub dir: tempfile::TempDir,
    pub pd_addr: String,
    placement: Child,
    pub nodes: Vec<Child>,
    /// Each node's listen address (its store address).
    pub node_addrs: Vec<String>,
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The directory holding the ringkv binaries: the bench's own.
pub fn binary_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    exe.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "executable has no directory".into())
}

impl LocalCluster {
    /// Starts placement and `nodes` nodes with `node_toml` as their configuration.
    pub fn start(nodes: usize, node_toml: &str) -> Result<Self, String> {
        Self::start_with(nodes, node_toml, None)
    }

    /// Like [`LocalCluster::start`], with `placement_toml` as the placement configuration.
    pub fn start_with(
        nodes: usize,
        node_toml: &str,
        placement_toml: Option<&str>,
    ) -> Result<Self, String> {
        let bin = binary_dir()?;
        for name in ["ringkv-placement", "ringkv-node"] {
            if !bin.join(name).exists() {
                return Err(format!(
                    "{} is missing: build with `cargo build --release --workspace --bins`",
                    bin.join(name).display()
                ));
            }
        }
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let config = dir.path().join("node.toml");
        std::fs::write(&config, node_toml).map_err(|e| format!("write node config: {e}"))?;
        let pd_addr = format!("127.0.0.1:{}", free_port().map_err(|e| e.to_string())?);
        let spawn = |name: &str, args: Vec<String>, log: &str| -> Result<Child, String> {
            let log = std::fs::File::create(dir.path().join(log)).map_err(|e| e.to_string())?;
            let err = log.try_clone().map_err(|e| e.to_string())?;
            Command::new(bin.join(name))
                .args(args)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                .spawn()
                .map_err(|e| format!("cannot start {name}: {e}"))
        };
        let mut placement_args = vec![
            "--data-dir".into(),
            dir.path().join("placement").display().to_string(),
            "--listen-addr".into(),
            pd_addr.clone(),
            "--replicas".into(),
            nodes.min(3).to_string(),
        ];
        if let Some(toml) = placement_toml {
            let path = dir.path().join("placement.toml");
            std::fs::write(&path, toml).map_err(|e| format!("write placement config: {e}"))?;
            placement_args.extend(["--config".into(), path.display().to_string()]);
        }
        let placement = spawn("ringkv-placement", placement_args, "placement.log")?;
        let mut children = Vec::new();
        let mut node_addrs = Vec::new();
        for i in 0..nodes {
            let port = free_port().map_err(|e| e.to_string())?;
            node_addrs.push(format!("127.0.0.1:{port}"));
            children.push(spawn(
                "ringkv-node",
                vec![
                    "--config".into(),
                    config.display().to_string(),
                    "--data-dir".into(),
                    dir.path().join(format!("node{i}")).display().to_string(),
                    "--listen-addr".into(),
                    format!("127.0.0.1:{port}"),
                    "--placement".into(),
                    pd_addr.clone(),
                    "--log-level".into(),
                    "warn".into(),
                ],
                &format!("node{i}.log"),
            )?);
        }
        Ok(LocalCluster {
            dir,
            pd_addr,
            placement,
            nodes: children,
            node_addrs,
        })
    }

    /// A client, once the cluster accepts writes (waits up to `limit`).
    pub async fn client(&self, limit: Duration) -> Result<RawClient, String> {
        let deadline = Instant::now() + limit;
        loop {
            let attempt = async {
                let client = RawClient::connect_with_config(
                    std::slice::from_ref(&self.pd_addr),
                    RawConfig {
                        timeout: Duration::from_secs(10),
                        ..RawConfig::default()
                    },
                )
                .await?;
                client.put(b"bench-ready".to_vec(), b"1".to_vec()).await?;
                Ok::<_, ringkv_client::ClientError>(client)
            };
            match attempt.await {
                Ok(c) => return Ok(c),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    return Err(format!(
                        "cluster did not start serving: {e}{}",
                        self.exited_processes()
                    ))
                }
            }
        }
    }

    /// For error messages: which processes have exited, with the end of their logs.
    fn exited_processes(&self) -> String {
        let mut out = String::new();
        // An exited child stays a zombie until waited for: its state in /proc is `Z`.
        let pid_alive = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let state = stat.rsplit_once(") ")?.1.chars().next()?;
                    Some(state != 'Z')
                })
                .unwrap_or(false)
        };
        let mut check = |name: String, pid: u32, log: &str| {
            if !pid_alive(pid) {
                let text = std::fs::read_to_string(self.dir.path().join(log)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                out += &format!(
                    "\n  {name} (pid {pid}) has exited; its log ends:\n    {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n    ")
                );
            }
        };
        check("placement".into(), self.placement.id(), "placement.log");
        for (i, n) in self.nodes.iter().enumerate() {
            check(format!("node {i}"), n.id(), &format!("node{i}.log"));
        }
        out
    }

    pub fn node_pids(&self) -> Vec<u32> {
        self.nodes.iter().map(Child::id).collect()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for c in self
            .nodes
            .iter_mut()
            .chain(std::iter::once(&mut self.placement))
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The encoded key at ring position `pos` of the default keyspace.
pub fn ring_position(pos: u64) -> Vec<u8> {
    let mut key = keys::keyspace_prefix(&keys::default_keyspace());
    key.extend_from_slice(&pos.to_be_bytes());
    key
}

/// Splits the default keyspace into `regions` equal arcs of the ring, `concurrency` splits at
/// a time, reporting progress on stderr.
pub async fn presplit(client: &RawClient, regions: u64, concurrency: usize) -> Result<(), String> {
    if regions <= 1 {
        return Ok(());
    }
    let step = u64::MAX / regions;
    let positions: Vec<u64> = (1..regions).map(|i| i * step).collect();
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut last_report = Instant::now();
    // Split in rounds of bisection so concurrent splits hit different regions.
    let mut order = Vec::with_capacity(positions.len());
    let mut stride = positions.len().next_power_of_two();
    let mut taken = vec![false; positions.len()];
    while stride > 0 {
        let mut i = stride - 1;
        while i < positions.len() {
            if !taken[i] {
                taken[i] = true;
                order.push(positions[i]);
            }
            i += stride;
        }
        stride /= 2;
    }
    for chunk in order.chunks(concurrency.max(1)) {
        let splits = chunk.iter().map(|pos| {
            let (client, done) = (client.clone(), done.clone());
            let key = ring_position(*pos);
            async move {
                client
                    .split_region(key)
                    .await
                    .map_err(|e| format!("split failed: {e}"))?;
                done.fetch_add(1, Ordering::Relaxed);
                Ok::<(), String>(())
            }
        });
        for r in futures::future::join_all(splits).await {
            r?;
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "  pre-split: {}/{} splits ({:.0} s)",
                done.load(Ordering::Relaxed),
                positions.len(),
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    Ok(())
}

/// What a load run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub clients: usize,
    pub seconds: f64,
    pub ops: u64,
    pub errors: u64,
    pub ops_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// `clients` concurrent writers, each putting random keys of `value_bytes` one at a time, for
/// `duration`.
pub async fn write_load(
    client: &RawClient,
    clients: usize,
    duration: Duration,
    value_bytes: usize,
) -> LoadReport {
    let value = vec![b'v'; value_bytes];
    let client = client.clone();
    run_load(clients, duration, move |c, n| {
        let (client, value) = (client.clone(), value.clone());
        async move {
            let key = format!("bench-{c:03}-{n:010}").into_bytes();
            client.put(key, value).await.is_ok()
        }
    })
    .await
}

/// The key the read loads read and [`preload`] writes: `n` of `keys`.
pub fn read_key(n: u64) -> Vec<u8> {
    format!("read-{n:08}").into_bytes()
}

/// Writes keys `0..keys` ([`read_key`]) with values of `value_bytes`, in batches.
pub async fn preload(client: &RawClient, keys: u64, value_bytes: usize) -> Result<(), String> {
    let value = vec![b'r'; value_bytes];
    let mut n = 0;
    while n < keys {
        let batch: Vec<_> = (n..(n + 256).min(keys))
            .map(|k| (read_key(k), value.clone()))
            .collect();
        n += batch.len() as u64;
        client
            .batch_put(batch)
            .await
            .map_err(|e| format!("preloading keys: {e}"))?;
    }
    Ok(())
}

/// `clients` concurrent readers, each getting random keys of `0..keys` one at a time (every
/// read linearizable), for `duration`. A key that is not found counts as an error.
pub async fn read_load(
    client: &RawClient,
    clients: usize,
    duration: Duration,
    keys: u64,
) -> LoadReport {
    let client = client.clone();
    run_load(clients, duration, move |c, n| {
        let client = client.clone();
        async move {
            let k = spread(c as u64, n) % keys.max(1);
            matches!(client.get(read_key(k)).await, Ok(Some(_)))
        }
    })
    .await
}

/// A cheap, well-spread number from a client and its operation count (no shared RNG).
pub fn spread(client: u64, n: u64) -> u64 {
    (client.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n).wrapping_mul(0xBF58_476D_1CE4_E5B9) >> 7
}

/// Runs `op(client, n)` in `clients` concurrent closed loops for `duration`; `op` says whether
/// the operation succeeded. Latency of successful operations goes into the histogram.
pub async fn run_load<F, Fut>(clients: usize, duration: Duration, op: F) -> LoadReport
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut hist = workload::latency_histogram();
                let (mut ops, mut errors) = (0u64, 0u64);
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    let t = Instant::now();
                    if op(c, n).await {
                        ops += 1;
                        let _ = hist.record(t.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
                (hist, ops, errors)
            })
        })
        .collect();
    let mut hist = workload::latency_histogram();
    let (mut ops, mut errors) = (0, 0);
    for t in tasks {
        if let Ok((h, o, e)) = t.await {
            let _ = hist.add(&h);
            ops += o;
            errors += e;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    LoadReport {
        clients,
        seconds,
        ops,
        errors,
        ops_per_second: ops as f64 / seconds,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: hist.max() as f64 / 1000.0,
    }
}

/// The same loads against an etcd cluster, through etcd's own gRPC KV API.
pub mod etcd {
    use super::{read_key, run_load, spread, LoadReport};
    use ringkv_proto::etcdserverpb::kv_client::KvClient;
    use ringkv_proto::etcdserverpb::{PutRequest, RangeRequest};
    use std::time::Duration;
    use tonic::transport::Channel;

    /// One client per endpoint (host:port), as etcd's client balances over members.
    pub async fn connect(endpoints: &[String]) -> Result<Vec<KvClient<Channel>>, String> {
        let mut clients = Vec::new();
        for e in endpoints {
            let channel = Channel::from_shared(format!("http://{e}"))
                .map_err(|err| format!("bad etcd endpoint {e}: {err}"))?
                .connect()
                .await
                .map_err(|err| format!("cannot reach etcd at {e}: {err}"))?;
            clients.push(KvClient::new(channel));
        }
        if clients.is_empty() {
            return Err("no etcd endpoint given".into());
        }
        Ok(clients)
    }

    /// Writes keys `0..keys` as [`super::preload`] does.
    pub async fn preload(
        clients: &[KvClient<Channel>],
        keys: u64,
        value_bytes: usize,
    ) -> Result<(), String> {
        let value = vec![b'r'; value_bytes];
        let mut c = clients[0].clone();
        for k in 0..keys {
            c.put(PutRequest {
                key: read_key(k),
                value: value.clone(),
                lease: 0,
            })
            .await
            .map_err(|e| format!("preloading etcd: {e}"))?;
        }
        Ok(())
    }

    /// Readers as [`super::read_load`], spread over the members; `serializable`: member-local
    /// reads (may be stale), else linearizable (etcd's default, a ReadIndex round per batch).
    pub async fn read_load(
        clients: &[KvClient<Channel>],
        readers: usize,
        duration: Duration,
        keys: u64,
        serializable: bool,
    ) -> LoadReport {
        let clients = clients.to_vec();
        run_load(readers, duration, move |c, n| {
            let mut kv = clients[c % clients.len()].clone();
            async move {
                let k = spread(c as u64, n) % keys.max(1);
                match kv
                    .range(RangeRequest {
                        key: read_key(k),
                        serializable,
                        ..Default::default()
                    })
                    .await
                {
                    Ok(r) => !r.into_inner().kvs.is_empty(),
                    Err(_) => false,
                }
            }
        })
        .await
    }
}

/// CPU time (user + system) a process has used, in seconds, from `/proc`.
pub fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields
        .get(11)
        .and_then(|f| f.parse().ok())
        .ok_or("no utime")?;
    let stime: f64 = fields
        .get(12)
        .and_then(|f| f.parse().ok())
        .ok_or("no stime")?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((utime + stime) / ticks)
}
