//! `ringkv-bench`: the cluster load generator.
//!
//! `ringkv-bench multi-raft` starts fresh local clusters (release binaries next to this one),
//! measures write throughput with 1, 64 and 1,024 regions, and the CPU that 10,000 idle
//! regions cost. `ringkv-bench reads` measures linearizable reads with leader leases and with
//! ReadIndex only, and, given `--etcd`, etcd's linearizable and serializable reads under the
//! same load. `ringkv-bench run` runs a workload (raw put / get / mixed, YCSB A–F) against
//! ringkv and, with `--etcd`, the identical workload against etcd. `ringkv-bench write --pd
//! ADDR` runs the write load against a running cluster.

use clap::{Parser, Subcommand};
use ringkv_bench::{
    cpu_seconds, etcd, preload, presplit, read_load, write_load, LoadReport, LocalCluster,
};
use ringkv_client::{RawClient, RawConfig};
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "ringkv-bench",
    version,
    about = "Load generator and benchmarks for ringkv"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write throughput of 3 local nodes at several region counts, then the CPU cost of many
    /// idle regions. Starts and stops its own clusters.
    MultiRaft {
        /// Region counts to measure write throughput at.
        #[arg(long, value_delimiter = ',', default_value = "1,64,1024")]
        regions: Vec<u64>,
        #[command(flatten)]
        load: LoadArgs,
        /// Regions for the idle-CPU measurement (0 skips it).
        #[arg(long, default_value_t = 10_000)]
        idle_regions: u64,
        /// Seconds the idle CPU is measured over.
        #[arg(long, default_value_t = 30)]
        idle_seconds: u64,
    },
    /// Linearizable read throughput of 3 local nodes, with leader leases and with ReadIndex
    /// only (`raft.lease_reads`), each on a fresh cluster; with `--etcd`, the same load against
    /// that etcd cluster, linearizable and serializable. Clients read random preloaded keys.
    Reads {
        /// Concurrent readers.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Seconds of load per measurement (after a warm-up of a fifth of it).
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Keys preloaded and read.
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
        /// Value size in bytes.
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
        /// etcd client endpoints (host:port, comma-separated), e.g. those of
        /// ../shared/peers/etcd-cluster.sh: 127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793.
        #[arg(long, value_delimiter = ',')]
        etcd: Vec<String>,
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a workload against ringkv (a fresh local 3-node cluster, or a running one with
    /// `--pd`) and, with `--etcd`, the identical workload against etcd: records are loaded
    /// first (with a progress bar), then clients run the operation mix for the duration;
    /// throughput is printed once a second and, at the end, a table of throughput and latency
    /// percentiles per operation type (or JSON with `--json`).
    Run {
        /// put, get, mixed (read/update 50/50), YCSB's core workloads ycsb-a .. ycsb-f
        /// (a: 50/50 read/update, b: 95/5, c: read only, d: read latest 95 / insert 5,
        /// e: short scans 95 / insert 5, f: read / read-modify-write 50/50), or txn-2 / txn-10
        /// (transactions overwriting 2 or 10 records; etcd: a Txn of as many puts).
        #[arg(long, default_value = "ycsb-a")]
        workload: String,
        /// Key distribution of the records read and updated; default: the workload's own.
        #[arg(long, value_enum)]
        distribution: Option<ringkv_bench::workload::KeyDistribution>,
        /// Records loaded before the run.
        #[arg(long, default_value_t = 10_000)]
        records: u64,
        /// Concurrent clients (closed loops).
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Seconds of load.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Stop after this many operations in all (or at --seconds, whichever comes first).
        #[arg(long)]
        ops: Option<u64>,
        /// Value size in bytes.
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
        /// How ringkv serves reads: leader (lease, else ReadIndex; the default), read-index
        /// (leases off: a fresh local cluster only), follower (replica reads), or stale
        /// (transactional snapshots --staleness-ms in the past, served by any replica from its
        /// own state; records are then loaded and written by transactions).
        #[arg(long, value_enum, default_value = "leader")]
        read_mode: ReadMode,
        /// How far in the past stale reads read (--read-mode stale), in ms.
        #[arg(long, default_value_t = 2000)]
        staleness_ms: u64,
        /// A running ringkv cluster's placement endpoint(s); default: start a local one.
        #[arg(long, value_delimiter = ',')]
        pd: Vec<String>,
        /// etcd client endpoints (host:port, comma-separated) to run the same workload against.
        #[arg(long, value_delimiter = ',')]
        etcd: Vec<String>,
        /// Skip ringkv (etcd only).
        #[arg(long)]
        no_ringkv: bool,
        /// The ringkv keyspace the records go to: hash (the default keyspace: even spread, scans
        /// fan out over every region) or range (a keyspace "bench-range", ordered: scans walk
        /// regions in key order; the one to use for ycsb-e).
        #[arg(long, value_enum, default_value = "hash")]
        keyspace: KeyspaceKind,
        /// How ringkv commits the transactions of txn-2 and txn-10: auto (in one phase when
        /// every key is in one region, else two) or two-pc (always two phases).
        #[arg(long, value_enum, default_value = "auto")]
        txn_commit: TxnCommit,
        /// Print one JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Throughput against client count: runs a workload at each client count against a
    /// fresh local ringkv cluster and, with `--etcd`, against etcd; prints a table and draws
    /// both lines into an SVG plot.
    Sweep {
        /// As for `run`.
        #[arg(long, default_value = "ycsb-a")]
        workload: String,
        /// Client counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,4,16,64,128")]
        clients: Vec<usize>,
        /// Seconds of load at each client count.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Records loaded before the runs.
        #[arg(long, default_value_t = 10_000)]
        records: u64,
        /// etcd client endpoints (host:port, comma-separated).
        #[arg(long, value_delimiter = ',')]
        etcd: Vec<String>,
        /// Where the plot goes.
        #[arg(long, default_value = "docs/throughput-vs-clients.svg")]
        plot: std::path::PathBuf,
    },
    /// Render saved `run --json` documents (files, or every *.json in a directory) as Markdown
    /// tables, in file-name order: how scripts/benchmarks.sh turns a session's runs into the
    /// tables of BENCHMARKS.md.
    Report {
        /// JSON files or directories holding them.
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
    },
    /// Node memory while many large regions are rebuilt from snapshots at once: 4 local nodes
    /// hold --regions regions of --region-mib MiB and one of --big-region-mib MiB; the node
    /// with the most replicas is killed, and every region it held is rebuilt on another node
    /// beside --scanners clients scanning everything. Prints the RSS of every live node before
    /// and at its peak, and the rebuild time.
    Snapshots {
        #[arg(long, default_value_t = 8)]
        regions: usize,
        #[arg(long, default_value_t = 64)]
        region_mib: u64,
        /// The size of one more region (0: none).
        #[arg(long, default_value_t = 1024)]
        big_region_mib: u64,
        /// Value size of the loaded pairs, in KiB.
        #[arg(long, default_value_t = 256)]
        value_kib: usize,
        #[arg(long, default_value_t = 8)]
        scanners: usize,
        /// Minutes the rebuild may take before the run fails.
        #[arg(long, default_value_t = 20)]
        limit_minutes: u64,
        /// Print one JSON document instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// The placement driver's balancers on a simulated cluster (no nodes): `--initial-stores`
    /// of `--stores` hold every replica, the rest join empty; reports the scheduling rounds to
    /// balance, the time per round and the core's CPU per region heartbeat.
    PlacementSim {
        #[arg(long, default_value_t = 100)]
        stores: u64,
        #[arg(long, default_value_t = 50)]
        initial_stores: u64,
        #[arg(long, default_value_t = 100_000)]
        regions: u64,
        /// Leader transfers and replica moves in flight at most (each).
        #[arg(long, default_value_t = 1024)]
        schedule_limit: usize,
        #[arg(long, default_value_t = 100_000)]
        rounds_max: usize,
    },
    /// Run the write load against a running cluster.
    Write {
        /// Placement endpoint(s), comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        pd: Vec<String>,
        #[command(flatten)]
        load: LoadArgs,
    },
}

/// The write load, shared by every command.
#[derive(clap::Args, Clone, Copy)]
struct LoadArgs {
    /// Concurrent writers.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds of load per measurement (multi-raft warms up for a fifth of it first).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct RegionsRun {
    regions: u64,
    load: LoadReport,
}

#[derive(Serialize)]
struct IdleRun {
    regions: u64,
    seconds: f64,
    /// CPU of each node process, as a percentage of one core.
    node_cpu_percent: Vec<f64>,
}

/// Nodes of the benchmark: defaults, except that regions split only when the bench asks, so
/// each run has exactly the region count it names.
const NODE_TOML: &str = r#"
[split]
region_split_size_bytes = 1073741824
region_split_keys = 100000000
"#;

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = rt.block_on(async {
        match cli.command {
            Cmd::MultiRaft {
                regions,
                load,
                idle_regions,
                idle_seconds,
            } => multi_raft(&regions, &load, idle_regions, idle_seconds).await,
            Cmd::Reads {
                clients,
                seconds,
                keys,
                value_bytes,
                etcd,
                json,
            } => reads(clients, seconds, keys, value_bytes, &etcd, json).await,
            Cmd::Run {
                workload,
                distribution,
                records,
                clients,
                seconds,
                ops,
                value_bytes,
                read_mode,
                staleness_ms,
                pd,
                etcd,
                no_ringkv,
                keyspace,
                txn_commit,
                json,
            } => {
                let spec = ringkv_bench::workload::RunSpec::new(
                    &workload,
                    distribution,
                    records,
                    clients,
                    seconds,
                    value_bytes,
                )?
                .with_ops(ops)?;
                if staleness_ms == 0 && read_mode == ReadMode::Stale {
                    return Err("--staleness-ms must be at least 1 with --read-mode stale (0 is a leader read)".into());
                }
                let opts = RunOptions {
                    read_mode,
                    staleness: Duration::from_millis(staleness_ms),
                    keyspace,
                    pd,
                    etcd,
                    no_ringkv,
                    txn_commit,
                    json,
                };
                run(&spec, &opts).await
            }
            Cmd::Sweep {
                workload,
                clients,
                seconds,
                records,
                etcd,
                plot,
            } => sweep(&workload, &clients, seconds, records, &etcd, &plot).await,
            Cmd::Report { paths } => report(&paths),
            Cmd::Snapshots {
                regions,
                region_mib,
                big_region_mib,
                value_kib,
                scanners,
                limit_minutes,
                json,
            } => {
                let report = ringkv_bench::snapshot_load::run(&ringkv_bench::snapshot_load::SnapshotLoad {
                    regions,
                    region_mib,
                    big_region_mib,
                    value_kib,
                    scanners,
                    rebuild_limit: Duration::from_secs(limit_minutes * 60),
                })
                .await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
                } else {
                    println!(
                        "{} MiB, {} regions rebuilt in {:.0} s; {} full scans ({} pairs) meanwhile",
                        report.data_mib, report.rebuilt_regions, report.rebuild_seconds, report.scans, report.scanned_pairs
                    );
                    for (i, (before, peak)) in report.rss_before_mib.iter().zip(&report.rss_peak_mib).enumerate() {
                        println!("live node {i}: RSS {before} MiB before, {peak} MiB at peak");
                    }
                }
                Ok(())
            }
            Cmd::PlacementSim {
                stores,
                initial_stores,
                regions,
                schedule_limit,
                rounds_max,
            } => {
                if initial_stores < 3 || initial_stores > stores || regions == 0 {
                    return Err("need 3 <= --initial-stores <= --stores and --regions >= 1".into());
                }
                let spec = ringkv_placement::scheduling_sim::SimSpec {
                    stores,
                    initial_stores,
                    regions,
                    balance: ringkv_placement::balance::BalanceConfig {
                        leader_schedule_limit: schedule_limit,
                        region_schedule_limit: schedule_limit,
                        ..Default::default()
                    },
                    rounds_max,
                };
                let started = Instant::now();
                let r = ringkv_placement::scheduling_sim::run(spec);
                println!(
                    "stores {stores} ({initial_stores} initially), regions {regions}, schedule limit {schedule_limit}"
                );
                match r.rounds {
                    Some(n) => println!("balanced after {n} rounds, {} operators", r.operators),
                    None => println!("NOT balanced within {rounds_max} rounds ({} operators)", r.operators),
                }
                println!(
                    "replicas per store {}..{}, leaders per store {}..{}",
                    r.region_spread.0, r.region_spread.1, r.leader_spread.0, r.leader_spread.1
                );
                println!(
                    "scheduling pass: {:.1} ms mean; region heartbeat: {:.2} µs of core CPU; whole run {:.1} s",
                    r.schedule_ms_mean,
                    r.heartbeat_us_mean,
                    started.elapsed().as_secs_f64()
                );
                Ok(())
            }
            Cmd::Write { pd, load } => {
                let client = RawClient::connect_with_config(&pd, RawConfig::default())
                    .await
                    .map_err(|e| format!("cannot reach the cluster: {e}"))?;
                let report = write_load(
                    &client,
                    load.clients,
                    Duration::from_secs(load.seconds),
                    load.value_bytes,
                )
                .await;
                print_load(&[("-".into(), report)], load.json);
                Ok(())
            }
        }
    });
    if let Err(e) = result {
        eprintln!("ringkv-bench: {e}");
        std::process::exit(1);
    }
}

fn print_load(rows: &[(String, LoadReport)], json: bool) {
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(k, r)| serde_json::json!({"regions": k, "load": r}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return;
    }
    println!(
        "{:>8} {:>8} {:>10} {:>10} {:>9} {:>9} {:>9} {:>8}",
        "regions", "clients", "ops/s", "ops", "p50 ms", "p99 ms", "p99.9 ms", "errors"
    );
    for (k, r) in rows {
        println!(
            "{:>8} {:>8} {:>10.0} {:>10} {:>9.2} {:>9.2} {:>9.2} {:>8}",
            k, r.clients, r.ops_per_second, r.ops, r.p50_ms, r.p99_ms, r.p999_ms, r.errors
        );
    }
}

async fn multi_raft(
    region_counts: &[u64],
    load: &LoadArgs,
    idle_regions: u64,
    idle_seconds: u64,
) -> Result<(), String> {
    let LoadArgs {
        clients,
        seconds,
        value_bytes,
        json,
    } = *load;
    let mut runs = Vec::new();
    for &regions in region_counts {
        eprintln!("== {regions} region(s): starting 3 nodes");
        let cluster = LocalCluster::start(3, NODE_TOML)?;
        let client = cluster.client(Duration::from_secs(60)).await?;
        presplit(&client, regions, 16).await?;
        let warmup = Duration::from_secs((seconds / 5).max(1));
        eprintln!("   warming up for {warmup:?}");
        write_load(&client, clients, warmup, value_bytes).await;
        eprintln!("   measuring for {seconds} s with {clients} clients");
        let load = write_load(&client, clients, Duration::from_secs(seconds), value_bytes).await;
        eprintln!("   {:.0} ops/s", load.ops_per_second);
        runs.push(RegionsRun { regions, load });
    }
    let idle = if idle_regions > 0 {
        eprintln!("== idle: {idle_regions} regions on 3 nodes");
        let cluster = LocalCluster::start(3, NODE_TOML)?;
        let client = cluster.client(Duration::from_secs(60)).await?;
        let started = Instant::now();
        presplit(&client, idle_regions, 32).await?;
        eprintln!(
            "   pre-split took {:.0} s; letting regions go quiet",
            started.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(15)).await;
        let pids = cluster.node_pids();
        let before: Vec<f64> = pids
            .iter()
            .map(|p| cpu_seconds(*p))
            .collect::<Result<_, _>>()?;
        let t = Instant::now();
        tokio::time::sleep(Duration::from_secs(idle_seconds)).await;
        let after: Vec<f64> = pids
            .iter()
            .map(|p| cpu_seconds(*p))
            .collect::<Result<_, _>>()?;
        let window = t.elapsed().as_secs_f64();
        let node_cpu_percent = before
            .iter()
            .zip(&after)
            .map(|(b, a)| (a - b) / window * 100.0)
            .collect();
        Some(IdleRun {
            regions: idle_regions,
            seconds: window,
            node_cpu_percent,
        })
    } else {
        None
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"writes": runs, "idle": idle}))
                .expect("json")
        );
        return Ok(());
    }
    let rows: Vec<(String, LoadReport)> = runs
        .into_iter()
        .map(|r| (r.regions.to_string(), r.load))
        .collect();
    print_load(&rows, false);
    if let Some(idle) = idle {
        println!(
            "idle: {} regions, CPU per node over {:.0} s: {}",
            idle.regions,
            idle.seconds,
            idle.node_cpu_percent
                .iter()
                .map(|c| format!("{c:.1}%"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// See [`Cmd::Reads`].
async fn reads(
    clients: usize,
    seconds: u64,
    keys: u64,
    value_bytes: usize,
    etcd_endpoints: &[String],
    json: bool,
) -> Result<(), String> {
    if keys == 0 || clients == 0 || seconds == 0 {
        return Err("--keys, --clients and --seconds must be at least 1".into());
    }
    let duration = Duration::from_secs(seconds);
    let warmup = Duration::from_secs((seconds / 5).max(1));
    let mut rows: Vec<(String, LoadReport)> = Vec::new();
    for (name, lease) in [
        ("ringkv lease reads", true),
        ("ringkv ReadIndex only", false),
    ] {
        eprintln!("== {name}: starting 3 nodes");
        let toml = format!("{NODE_TOML}\n[raft]\nlease_reads = {lease}\n");
        let cluster = LocalCluster::start(3, &toml)?;
        let client = cluster.client(Duration::from_secs(60)).await?;
        eprintln!("   preloading {keys} keys");
        preload(&client, keys, value_bytes).await?;
        read_load(&client, clients, warmup, keys).await;
        eprintln!("   measuring for {seconds} s with {clients} clients");
        let report = read_load(&client, clients, duration, keys).await;
        eprintln!("   {:.0} reads/s", report.ops_per_second);
        rows.push((name.into(), report));
    }
    if !etcd_endpoints.is_empty() {
        eprintln!("== etcd at {}", etcd_endpoints.join(","));
        let kv = etcd::connect(etcd_endpoints).await?;
        eprintln!("   preloading {keys} keys");
        etcd::preload(&kv, keys, value_bytes).await?;
        for (name, serializable) in [("etcd linearizable", false), ("etcd serializable", true)] {
            etcd::read_load(&kv, clients, warmup, keys, serializable).await;
            eprintln!("   {name}: measuring for {seconds} s with {clients} clients");
            let report = etcd::read_load(&kv, clients, duration, keys, serializable).await;
            eprintln!("   {:.0} reads/s", report.ops_per_second);
            rows.push((name.into(), report));
        }
    }
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(k, r)| serde_json::json!({"system": k, "load": r}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return Ok(());
    }
    println!(
        "{:<24} {:>8} {:>10} {:>10} {:>9} {:>9} {:>9} {:>8}",
        "reads", "clients", "ops/s", "ops", "p50 ms", "p99 ms", "p99.9 ms", "errors"
    );
    for (k, r) in &rows {
        println!(
            "{:<24} {:>8} {:>10.0} {:>10} {:>9.2} {:>9.2} {:>9.2} {:>8}",
            k, r.clients, r.ops_per_second, r.ops, r.p50_ms, r.p99_ms, r.p999_ms, r.errors
        );
    }
    Ok(())
}

/// How ringkv serves the reads of `run`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ReadMode {
    Leader,
    ReadIndex,
    Follower,
    Stale,
}

/// How `run` has ringkv commit transactions.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TxnCommit {
    Auto,
    TwoPc,
}

/// Where and how `run` sends its load.
struct RunOptions {
    read_mode: ReadMode,
    staleness: Duration,
    keyspace: KeyspaceKind,
    pd: Vec<String>,
    etcd: Vec<String>,
    no_ringkv: bool,
    txn_commit: TxnCommit,
    json: bool,
}

/// Which ringkv keyspace `run` uses.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum KeyspaceKind {
    Hash,
    Range,
}

/// See [`Cmd::Report`].
fn report(paths: &[std::path::PathBuf]) -> Result<(), String> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let entries = std::fs::read_dir(p)
                .map_err(|e| format!("cannot read directory {}: {e}", p.display()))?;
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|x| x == "json") {
                    files.push(path);
                }
            }
        } else {
            files.push(p.clone());
        }
    }
    files.sort();
    if files.is_empty() {
        return Err("no JSON files found; pass files or directories of `run --json` output".into());
    }
    for f in files {
        let text =
            std::fs::read_to_string(&f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        let doc: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", f.display()))?;
        let md = ringkv_bench::workload::markdown_report(&doc)
            .map_err(|e| format!("{}: {e}", f.display()))?;
        println!("{md}");
    }
    Ok(())
}

/// See [`Cmd::Run`].
async fn run(spec: &ringkv_bench::workload::RunSpec, opts: &RunOptions) -> Result<(), String> {
    let RunOptions {
        read_mode,
        staleness,
        keyspace,
        ref pd,
        etcd: ref etcd_endpoints,
        no_ringkv,
        txn_commit,
        json,
    } = *opts;
    use ringkv_bench::target::Target;
    use ringkv_bench::workload::{format_table, report_json};
    if no_ringkv && etcd_endpoints.is_empty() {
        return Err("--no-ringkv leaves nothing to run: give --etcd endpoints".into());
    }
    if read_mode == ReadMode::ReadIndex && !pd.is_empty() {
        return Err(
            "--read-mode read-index needs a fresh local cluster (it starts the nodes with raft.lease_reads = false); drop --pd, or set that option on your nodes and use --read-mode leader".into(),
        );
    }
    let mut rows = Vec::new();
    if !no_ringkv {
        let mut _cluster = None;
        let client = if pd.is_empty() {
            eprintln!("== ringkv: starting 3 local nodes");
            let toml = format!(
                "{NODE_TOML}\n[raft]\nlease_reads = {}\n",
                read_mode != ReadMode::ReadIndex
            );
            let cluster = LocalCluster::start(3, &toml)?;
            let client = cluster.client(Duration::from_secs(60)).await?;
            _cluster = Some(cluster);
            client
        } else {
            RawClient::connect_with_config(pd, RawConfig::default())
                .await
                .map_err(|e| format!("cannot reach the ringkv cluster at {pd:?}: {e}"))?
        };
        let client = if keyspace == KeyspaceKind::Range {
            let pd = client.pd().clone();
            let meta = match pd.get_keyspace("bench-range").await {
                Ok(meta) => meta,
                Err(_) => pd
                    .create_keyspace("bench-range", ringkv_proto::kvrpcpb::KeyspaceMode::Range)
                    .await
                    .map_err(|e| format!("cannot create keyspace bench-range: {e}"))?,
            };
            let keyspace = meta
                .keyspace
                .ok_or("the placement driver returned keyspace bench-range without an id")?;
            RawClient::with_pd(
                pd,
                RawConfig {
                    keyspace,
                    ..RawConfig::default()
                },
            )
        } else {
            client
        };
        let client = client.with_replica_read(read_mode == ReadMode::Follower);
        let target = if read_mode == ReadMode::Stale {
            Target::ringkv_stale(client, staleness)
        } else {
            Target::ringkv(client, txn_commit == TxnCommit::Auto)
        };
        rows.push(measure(&target, spec, "ringkv").await?);
    }
    if !etcd_endpoints.is_empty() {
        let kv = etcd::connect(etcd_endpoints).await?;
        rows.push(measure(&Target::Etcd(kv), spec, "etcd").await?);
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report_json(spec, &rows)).expect("json")
        );
    } else {
        print!("{}", format_table(&rows));
    }
    Ok(())
}

/// Loads `spec`'s records into `target` if it reads any, runs it, and reports per operation.
async fn measure(
    target: &ringkv_bench::target::Target,
    spec: &ringkv_bench::workload::RunSpec,
    name: &str,
) -> Result<(String, Vec<ringkv_bench::workload::OpReport>), String> {
    if spec.workload.needs_records() {
        target.load(spec.records, spec.value_bytes).await?;
    }
    eprintln!(
        "== {name}: {} for {} s with {} clients",
        spec.workload.name, spec.seconds, spec.clients
    );
    let (recorder, seconds) = ringkv_bench::target::run(target, spec, name).await;
    Ok((name.to_string(), recorder.report(seconds)))
}

/// See [`Cmd::Sweep`].
async fn sweep(
    workload: &str,
    client_counts: &[usize],
    seconds: u64,
    records: u64,
    etcd_endpoints: &[String],
    plot: &std::path::Path,
) -> Result<(), String> {
    use ringkv_bench::target::{self, Target};
    let specs: Vec<_> = client_counts
        .iter()
        .map(|&c| ringkv_bench::workload::RunSpec::new(workload, None, records, c, seconds, 100))
        .collect::<Result<_, _>>()?;
    if specs.is_empty() {
        return Err("--clients needs at least one count".into());
    }
    let mut targets = Vec::new();
    eprintln!("== ringkv: starting 3 local nodes");
    let cluster = LocalCluster::start(3, NODE_TOML)?;
    targets.push((
        "ringkv".to_string(),
        Target::ringkv(cluster.client(Duration::from_secs(60)).await?, true),
    ));
    if !etcd_endpoints.is_empty() {
        targets.push((
            "etcd".to_string(),
            Target::Etcd(etcd::connect(etcd_endpoints).await?),
        ));
    }
    let mut series = Vec::new();
    for (name, t) in &targets {
        if specs[0].workload.needs_records() {
            t.load(records, 100).await?;
        }
        let mut points = Vec::new();
        for spec in &specs {
            eprintln!(
                "== {name}: {workload}, {} clients, {seconds} s",
                spec.clients
            );
            let (recorder, secs) = target::run(t, spec, name).await;
            points.push((spec.clients, recorder.ops() as f64 / secs));
        }
        series.push((name.clone(), points));
    }
    println!("{:<10} {:>8} {:>10}", "target", "clients", "ops/s");
    for (name, points) in &series {
        for (c, v) in points {
            println!("{name:<10} {c:>8} {v:>10.0}");
        }
    }
    let title = format!("{workload}: throughput vs clients");
    ringkv_bench::workload::plot_sweep(plot, &title, &series)?;
    eprintln!("plot written to {}", plot.display());
    Ok(())
}
