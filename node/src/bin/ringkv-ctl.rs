//! `ringkv-ctl`: the admin CLI. Every command prints a readable table, or with `--json` one JSON
//! document; errors go to stderr with what to do, and the exit code is 1.

use clap::{Parser, Subcommand};
use ringkv_client::PdClient;
use ringkv_proto::pdpb::AddOperatorRequest;
use serde_json::json;

/// Administers a ringkv cluster through its placement driver.
#[derive(Parser)]
#[command(
    name = "ringkv-ctl",
    version,
    about = "ringkv-ctl: administers a ringkv cluster through its placement driver (stores, regions, operators, schedulers, members, TSO, GC)",
    long_about = None
)]
struct Cli {
    /// Placement members, comma-separated host:port.
    #[arg(
        long,
        value_delimiter = ',',
        env = "RINGKV_PD",
        default_value = "127.0.0.1:2379"
    )]
    pd: Vec<String>,
    /// Print one JSON document instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Cluster status and health: stores by state and those down, regions without a leader
    /// or missing, down or pending replicas, operators in flight.
    Cluster,
    /// A fresh timestamp from the TSO, with its physical time.
    Tso,
    /// Placement members: list them with their health and Raft state, or move leadership.
    Member {
        #[command(subcommand)]
        action: MemberAction,
    },
    /// Stores: list them, show one with its heartbeat figures, label one, or decommission one.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// The MVCC GC safe point: versions committed before it may be gone, and reads below it
    /// are refused. Without a subcommand: show it.
    GcSafePoint {
        #[command(subcommand)]
        action: Option<GcAction>,
    },
    /// Regions: list them, show one, find the one holding a key, or check for problems.
    Region {
        #[command(subcommand)]
        action: RegionAction,
    },
    /// Operators (ordered steps moving a region's replicas or leader): list, show, cancel,
    /// or add one by hand.
    Operator {
        #[command(subcommand)]
        action: OperatorAction,
    },
    /// The schedulers: list them with their state; pause, resume, add or remove one.
    Scheduler {
        #[command(subcommand)]
        action: SchedulerAction,
    },
    /// Scheduling settings: show them, or change one (persisted by the placement driver;
    /// it wins over the configuration file on restart).
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand)]
enum MemberAction {
    /// Every member: name, id, endpoint, role, and (asked of each) its term, commit and
    /// applied index; an unreachable member is shown as down.
    List,
    /// Hands placement leadership to the member NAME; returns once the leader stepped down.
    TransferLeader {
        /// The member's name, as `member list` shows it.
        name: String,
    },
}

#[derive(Subcommand)]
enum RegionAction {
    /// Regions in key order: id, epoch, leader's store, replicas.
    List {
        /// Show at most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// One region by id.
    Show { region_id: u64 },
    /// The region holding a key of the default keyspace.
    ByKey { key: String },
    /// The regions with the most read or written bytes per second, as their leaders last
    /// reported (what the hot-region scheduler spreads).
    Hot {
        #[arg(value_parser = ["read", "write"])]
        by: String,
        /// Show at most this many.
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
    /// Regions with a problem: `miss-peer` (fewer replicas than configured), `extra-peer`
    /// (more), `learner` (a replica not yet a voter), `no-leader` (no leader reported),
    /// `pending-peer` (a replica catching up), `down-peer` (a replica on a store silent for
    /// 20 s), `oversized` / `undersized` (approximate size above --size-max-mib / below
    /// --size-min-mib, as last measured by the leader).
    Check {
        #[arg(value_parser = [
            "miss-peer", "extra-peer", "learner", "no-leader", "pending-peer", "down-peer",
            "oversized", "undersized",
        ])]
        problem: String,
        /// `oversized`: regions above this many MiB (default: 1.5 × the 96 MiB split size).
        #[arg(long, default_value_t = 144)]
        size_max_mib: u64,
        /// `undersized`: regions below this many MiB (default: the 20 MiB merge limit).
        #[arg(long, default_value_t = 20)]
        size_min_mib: u64,
    },
}

#[derive(Subcommand)]
enum OperatorAction {
    /// Every operator in flight.
    List,
    /// The operator of one region.
    Show { region_id: u64 },
    /// Drop a region's operator (steps already made stay made).
    Cancel { region_id: u64 },
    /// Start an operator by hand.
    Add {
        #[command(subcommand)]
        kind: AddOperator,
    },
}

#[derive(Subcommand)]
enum AddOperator {
    /// Hand the region's leadership to its voter on a store.
    TransferLeader { region_id: u64, to_store: u64 },
    /// Move the region's replica from one store to another (add a learner there, promote
    /// it, remove the old replica).
    MovePeer {
        region_id: u64,
        from_store: u64,
        to_store: u64,
    },
    /// Split the region at a key, or (without --key) where its data halves.
    Split {
        region_id: u64,
        /// A key of the default keyspace; the split lands at its position in the region's
        /// order. Must fall inside the region.
        #[arg(long)]
        key: Option<String>,
    },
    /// Merge the region into an adjacent one; both need replicas on the same stores (see
    /// `operator add move-peer`).
    Merge {
        region_id: u64,
        target_region_id: u64,
    },
}

/// The checkers and schedulers that can be paused; each maps to a setting of `config show`.
const BALANCERS: [&str; 5] = [
    "balance-leader",
    "balance-region",
    "hot-region",
    "replica-repair",
    "merge-checker",
];

/// What `scheduler add` / `remove` take: a checker or balancer by name, or `evict-leader`.
const SCHEDULERS: [&str; 6] = [
    "evict-leader",
    "balance-leader",
    "balance-region",
    "hot-region",
    "replica-repair",
    "merge-checker",
];

/// The `config` setting that turns a checker or scheduler on or off.
fn balancer_setting(name: &str) -> &'static str {
    match name {
        "balance-leader" => "balance_leader",
        "balance-region" => "balance_region",
        "replica-repair" => "replica_repair",
        "merge-checker" => "merge_checker",
        _ => "balance_hot_region",
    }
}

#[derive(Subcommand)]
enum SchedulerAction {
    /// The schedulers and whether they run.
    List,
    /// Stop a checker or scheduler: `balance-leader`, `balance-region`, `hot-region`,
    /// `replica-repair` (plans no new repair; operators in flight go on) or `merge-checker`
    /// (persisted, like `scheduler remove`; `resume` starts it again).
    Pause {
        #[arg(value_parser = BALANCERS)]
        name: String,
    },
    /// Start a paused balancer again.
    Resume {
        #[arg(value_parser = BALANCERS)]
        name: String,
    },
    /// Add a scheduler: a checker or balancer by name (`balance-leader`, `balance-region`,
    /// `hot-region`, `replica-repair`, `merge-checker`), or `evict-leader STORE_ID`, which moves every leader off the store and
    /// keeps new ones away (before restarting it); watch `store list` until it leads 0.
    Add {
        #[arg(value_parser = SCHEDULERS)]
        name: String,
        /// The store, for `evict-leader`.
        store_id: Option<u64>,
    },
    /// Remove a scheduler: a balancer by name, or `evict-leader STORE_ID` (the store may lead
    /// again).
    Remove {
        #[arg(value_parser = SCHEDULERS)]
        name: String,
        /// The store, for `evict-leader`.
        store_id: Option<u64>,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Every runtime-changeable scheduling setting.
    Show,
    /// Change one: replicas (per region, 1..=7, at most the stores up), replica_repair,
    /// merge_checker, balance_leader, balance_region, balance_hot_region, leader_schedule_limit,
    /// region_schedule_limit, hot_region_schedule_limit, hot_region_min_bytes_per_sec,
    /// balance_tolerance_ratio, max_store_down_time_ms, operator_timeout_ms (see
    /// docs/configuration.md).
    Set { key: String, value: String },
}

#[derive(Subcommand)]
enum StoreAction {
    /// Every store: id, address, state, replicas and leaders it holds, labels.
    List,
    /// One store: its state, labels, capacity, and the figures of its last heartbeat
    /// (replicas, leaders, read and write flow).
    Show { store_id: u64 },
    /// Set labels of a store, `KEY=VALUE` each (`KEY=` removes one). Placement spreads
    /// replicas over the configured location labels (zone, rack, host). A node's own
    /// configured labels are put again when it restarts.
    Label {
        store_id: u64,
        #[arg(required = true)]
        labels: Vec<String>,
    },
    /// Move every replica off the store, then mark it a tombstone (it may never rejoin).
    Decommission {
        /// The store's id (see `ringkv-ctl store list`).
        store_id: u64,
    },
}

#[derive(Subcommand)]
enum GcAction {
    /// Set the safe point by hand. It never goes back, may not pass the TSO, nor the oldest
    /// running transaction a client registered.
    Set {
        /// A TSO timestamp, or `now` for a fresh one.
        ts: String,
    },
}

/// The physical and logical parts of a TSO timestamp, and the physical part as UTC.
fn describe_ts(ts: u64) -> (u64, u64, String) {
    let (physical, logical) = (
        ringkv_proto::tso::physical_ms(ts),
        ringkv_proto::tso::logical(ts),
    );
    (physical, logical, utc(physical))
}

/// `ms` since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn utc(ms: u64) -> String {
    let (secs, millis) = (ms / 1000, ms % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn region_json(r: &ringkv_client::RegionRoute) -> serde_json::Value {
    let e = r.region.region_epoch.unwrap_or_default();
    let peers: Vec<_> = r
        .region
        .peers
        .iter()
        .map(|p| {
            json!({
                "id": p.id,
                "store_id": p.store_id,
                "role": if p.role == ringkv_proto::metapb::PeerRole::Voter as i32 { "voter" } else { "learner" },
            })
        })
        .collect();
    json!({
        "id": r.region.id,
        "start_key": hex(&r.region.start_key),
        "end_key": hex(&r.region.end_key),
        "conf_ver": e.conf_ver,
        "version": e.version,
        "leader": r.leader.map(|l| json!({ "id": l.id, "store_id": l.store_id })),
        "peers": peers,
        "health": r.health.as_ref().map(|h| json!({
            "measured": h.measured,
            "approximate_size_bytes": h.approximate_size_bytes,
            "approximate_keys": h.approximate_keys,
            "pending_peers": h.pending_peers,
            "down_peer_ids": h.down_peer_ids,
            "read_bytes_per_sec": h.read_bytes_per_sec,
            "read_keys_per_sec": h.read_keys_per_sec,
            "written_bytes_per_sec": h.written_bytes_per_sec,
            "written_keys_per_sec": h.written_keys_per_sec,
        })),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn region_header() -> String {
    format!(
        "{:>8}  {:>9}  {:>7}  {:<24}  {:<24}  replicas (store:peer, * leader, ~ learner)",
        "region", "conf/ver", "leader", "start", "end"
    )
}

fn region_row(r: &ringkv_client::RegionRoute) -> String {
    let e = r.region.region_epoch.unwrap_or_default();
    let peers: Vec<String> = r
        .region
        .peers
        .iter()
        .map(|p| {
            let mark = if r.leader.is_some_and(|l| l.id == p.id) {
                "*"
            } else if p.role != ringkv_proto::metapb::PeerRole::Voter as i32 {
                "~"
            } else {
                ""
            };
            format!("{}:{}{mark}", p.store_id, p.id)
        })
        .collect();
    let short = |k: &[u8]| {
        let h = hex(k);
        if h.is_empty() {
            "(unbounded)".to_string()
        } else if h.len() > 24 {
            format!("{}…", &h[..23])
        } else {
            h
        }
    };
    format!(
        "{:>8}  {:>9}  {:>7}  {:<24}  {:<24}  {}",
        r.region.id,
        format!("{}/{}", e.conf_ver, e.version),
        r.leader.map_or("-".to_string(), |l| l.store_id.to_string()),
        short(&r.region.start_key),
        short(&r.region.end_key),
        peers.join(" ")
    )
}

fn operator_json(o: &ringkv_proto::pdpb::OperatorInfo) -> serde_json::Value {
    json!({
        "region_id": o.region_id,
        "reason": o.reason,
        "steps": o.steps,
        "next_step": o.next_step,
        "created": utc(o.created_ms.max(0) as u64),
    })
}

fn config_json(c: &ringkv_proto::pdpb::ScheduleConfig) -> serde_json::Value {
    json!({
        "replicas": c.replicas,
        "replica_repair": !c.replica_repair_paused,
        "merge_checker": !c.merge_checker_paused,
        "balance_leader": c.balance_leader,
        "balance_region": c.balance_region,
        "leader_schedule_limit": c.leader_schedule_limit,
        "region_schedule_limit": c.region_schedule_limit,
        "balance_tolerance_ratio": c.balance_tolerance_ratio,
        "max_store_down_time_ms": c.max_store_down_time_ms,
        "operator_timeout_ms": c.operator_timeout_ms,
        "balance_hot_region": c.balance_hot_region,
        "hot_region_schedule_limit": c.hot_region_schedule_limit,
        "hot_region_min_bytes_per_sec": c.hot_region_min_bytes_per_sec,
    })
}

fn print_config(c: &ringkv_proto::pdpb::ScheduleConfig, as_json: bool) {
    let j = config_json(c);
    if as_json {
        println!("{j}");
        return;
    }
    for (k, v) in j.as_object().expect("an object") {
        println!("{k:<26} {v}");
    }
}

fn ts_json(ts: u64) -> serde_json::Value {
    let (physical, logical, time) = describe_ts(ts);
    json!({ "timestamp": ts, "physical_ms": physical, "logical": logical, "utc": time })
}

fn ts_line(label: &str, ts: u64) -> String {
    if ts == 0 {
        return format!("{label:<16} 0 (never set)");
    }
    let (physical, logical, time) = describe_ts(ts);
    format!("{label:<16} {ts}  ({time}, physical {physical} ms, logical {logical})")
}

async fn run(cli: Cli) -> Result<(), String> {
    let pd = PdClient::connect(&cli.pd).await.map_err(|e| {
        format!(
            "cannot reach the placement driver at {:?}: {e}\nhint: pass --pd host:port (or set RINGKV_PD)",
            cli.pd
        )
    })?;
    match cli.cmd {
        Cmd::Cluster => {
            let info = pd.get_cluster_info().await.map_err(|e| e.to_string())?;
            let stores = pd.get_all_stores().await.map_err(|e| e.to_string())?;
            let regions = pd
                .scan_regions(b"", b"", 0)
                .await
                .map_err(|e| e.to_string())?;
            let operators = pd.get_operators().await.map_err(|e| e.to_string())?.len();
            let count_state = |state: ringkv_proto::metapb::StoreState| {
                stores.iter().filter(|s| s.state == state as i32).count()
            };
            let mut down_stores: Vec<u64> = regions
                .iter()
                .flat_map(|r| {
                    let down = r
                        .health
                        .as_ref()
                        .map(|h| h.down_peer_ids.clone())
                        .unwrap_or_default();
                    r.region
                        .peers
                        .iter()
                        .filter(move |p| down.contains(&p.id))
                        .map(|p| p.store_id)
                        .collect::<Vec<_>>()
                })
                .collect();
            down_stores.sort_unstable();
            down_stores.dedup();
            let count = |f: &dyn Fn(&ringkv_client::RegionRoute) -> bool| {
                regions.iter().filter(|r| f(r)).count()
            };
            let no_leader = count(&|r| r.leader.is_none());
            let missing = count(&|r| r.region.peers.len() < info.replicas as usize);
            let with_down = count(&|r| {
                r.health
                    .as_ref()
                    .is_some_and(|h| !h.down_peer_ids.is_empty())
            });
            let pending = count(&|r| r.health.as_ref().is_some_and(|h| h.pending_peers > 0));
            let healthy = info.bootstrapped
                && down_stores.is_empty()
                && no_leader == 0
                && missing == 0
                && with_down == 0;
            if cli.json {
                println!(
                    "{}",
                    json!({
                        "cluster_id": pd.cluster_id(),
                        "bootstrapped": info.bootstrapped,
                        "healthy": healthy,
                        "replicas": info.replicas,
                        "stores": info.store_count,
                        "stores_up": count_state(ringkv_proto::metapb::StoreState::Up),
                        "stores_decommissioning": count_state(ringkv_proto::metapb::StoreState::Offline),
                        "stores_tombstone": count_state(ringkv_proto::metapb::StoreState::Tombstone),
                        "stores_down": down_stores,
                        "regions": info.region_count,
                        "regions_without_leader": no_leader,
                        "regions_missing_replicas": missing,
                        "regions_with_down_replicas": with_down,
                        "regions_with_pending_replicas": pending,
                        "operators_in_flight": operators,
                    })
                );
            } else {
                println!("{:<24} {}", "cluster id", pd.cluster_id());
                println!("{:<24} {}", "bootstrapped", info.bootstrapped);
                println!(
                    "{:<24} {}",
                    "health",
                    if healthy {
                        "healthy"
                    } else {
                        "degraded (see below; `region check <problem>` lists the regions)"
                    }
                );
                println!("{:<24} {}", "replicas", info.replicas);
                println!(
                    "{:<24} {} ({} up, {} decommissioning, {} tombstone)",
                    "stores",
                    info.store_count,
                    count_state(ringkv_proto::metapb::StoreState::Up),
                    count_state(ringkv_proto::metapb::StoreState::Offline),
                    count_state(ringkv_proto::metapb::StoreState::Tombstone)
                );
                println!("{:<24} {:?}", "stores down (silent 20 s)", down_stores);
                println!("{:<24} {}", "regions", info.region_count);
                println!("{:<24} {}", "  without a leader", no_leader);
                println!("{:<24} {}", "  missing replicas", missing);
                println!("{:<24} {}", "  with down replicas", with_down);
                println!("{:<24} {}", "  with pending replicas", pending);
                println!("{:<24} {}", "operators in flight", operators);
            }
        }
        Cmd::Tso => {
            let ts = pd.tso(1).await.map_err(|e| e.to_string())?;
            if cli.json {
                println!("{}", ts_json(ts));
            } else {
                println!("{}", ts_line("timestamp", ts));
            }
        }
        Cmd::GcSafePoint { action: None } => {
            let sp = pd.gc_safe_point().await.map_err(|e| e.to_string())?;
            if cli.json {
                println!("{}", json!({ "gc_safe_point": ts_json(sp) }));
            } else {
                println!("{}", ts_line("gc safe point", sp));
            }
        }
        Cmd::GcSafePoint {
            action: Some(GcAction::Set { ts }),
        } => {
            let ts = if ts == "now" {
                pd.tso(1).await.map_err(|e| e.to_string())?
            } else {
                ts.parse::<u64>().map_err(|_| {
                    format!("{ts:?} is not a timestamp: give a TSO timestamp (see `ringkv-ctl tso`) or `now`")
                })?
            };
            let sp = pd
                .update_gc_safe_point(ts)
                .await
                .map_err(|e| format!("the GC safe point was not set: {e}"))?;
            if cli.json {
                println!("{}", json!({ "gc_safe_point": ts_json(sp) }));
            } else {
                println!("{}", ts_line("gc safe point", sp));
            }
        }
        Cmd::Member { action } => member_command(&pd, action, cli.json).await?,
        Cmd::Region { action } => region_command(&pd, action, cli.json).await?,
        Cmd::Operator { action } => operator_command(&pd, action, cli.json).await?,
        Cmd::Scheduler { action } => scheduler_command(&pd, action, cli.json).await?,
        Cmd::Store { action } => store_command(&pd, action, cli.json).await?,
        Cmd::Config {
            action: ConfigAction::Show,
        } => print_config(
            &pd.get_schedule_config().await.map_err(|e| e.to_string())?,
            cli.json,
        ),
        Cmd::Config {
            action: ConfigAction::Set { key, value },
        } => print_config(
            &pd.set_schedule_config(&key, &value)
                .await
                .map_err(|e| format!("not changed: {e}"))?,
            cli.json,
        ),
    }
    Ok(())
}

/// Bytes per second, readable: `812 B/s`, `1.5 KiB/s`, `3.2 MiB/s`.
fn rate(bytes_per_sec: u64) -> String {
    let b = bytes_per_sec as f64;
    if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB/s", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.1} KiB/s", b / 1024.0)
    } else {
        format!("{bytes_per_sec} B/s")
    }
}

fn store_state(s: i32) -> &'static str {
    match ringkv_proto::metapb::StoreState::try_from(s) {
        Ok(ringkv_proto::metapb::StoreState::Up) => "up",
        Ok(ringkv_proto::metapb::StoreState::Offline) => "decommissioning",
        Ok(ringkv_proto::metapb::StoreState::Tombstone) => "tombstone",
        Err(_) => "unknown",
    }
}

fn labels_text(labels: &std::collections::HashMap<String, String>) -> String {
    let mut v: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    v.sort();
    v.join(",")
}

async fn store_command(pd: &PdClient, action: StoreAction, as_json: bool) -> Result<(), String> {
    match action {
        StoreAction::List => {
            let stores = pd.get_all_stores().await.map_err(|e| e.to_string())?;
            let regions = pd
                .scan_regions(b"", b"", 0)
                .await
                .map_err(|e| e.to_string())?;
            let count = |id: u64| {
                let replicas = regions
                    .iter()
                    .filter(|r| r.region.peers.iter().any(|p| p.store_id == id))
                    .count();
                let leaders = regions
                    .iter()
                    .filter(|r| r.leader.is_some_and(|l| l.store_id == id))
                    .count();
                (replicas, leaders)
            };
            if as_json {
                let list: Vec<_> = stores
                    .iter()
                    .map(|s| {
                        let (replicas, leaders) = count(s.id);
                        json!({
                            "id": s.id,
                            "address": s.address,
                            "state": store_state(s.state),
                            "replicas": replicas,
                            "leaders": leaders,
                            "labels": s.labels,
                            "version": s.version,
                        })
                    })
                    .collect();
                println!("{}", json!({ "stores": list }));
            } else {
                println!(
                    "{:>6}  {:<22} {:<16} {:>8} {:>8}  labels",
                    "id", "address", "state", "replicas", "leaders"
                );
                for s in &stores {
                    let (replicas, leaders) = count(s.id);
                    println!(
                        "{:>6}  {:<22} {:<16} {:>8} {:>8}  {}",
                        s.id,
                        s.address,
                        store_state(s.state),
                        replicas,
                        leaders,
                        labels_text(&s.labels)
                    );
                }
            }
        }
        StoreAction::Decommission { store_id } => {
            let store = pd
                .decommission_store(store_id)
                .await
                .map_err(|e| format!("store {store_id} was not decommissioned: {e}"))?;
            if as_json {
                println!("{}", json!({ "id": store.id, "state": "decommissioning" }));
            } else {
                println!(
                    "store {} is decommissioning: its replicas move to other stores, then it becomes a tombstone",
                    store.id
                );
            }
        }
        StoreAction::Show { store_id } => {
            let (store, stats) = pd.get_store_with_stats(store_id).await.map_err(|e| {
                format!("store {store_id}: {e}\nhint: `ringkv-ctl store list` shows the stores")
            })?;
            let stats = stats.unwrap_or_default();
            if as_json {
                println!(
                    "{}",
                    json!({
                        "id": store.id,
                        "address": store.address,
                        "state": store_state(store.state),
                        "labels": store.labels,
                        "version": store.version,
                        "capacity_bytes": stats.capacity_bytes,
                        "available_bytes": stats.available_bytes,
                        "region_count": stats.region_count,
                        "leader_count": stats.leader_count,
                        "start_time_s": stats.start_time_s,
                        "read_bytes_per_sec": stats.read_bytes_per_sec,
                        "read_keys_per_sec": stats.read_keys_per_sec,
                        "written_bytes_per_sec": stats.written_bytes_per_sec,
                        "written_keys_per_sec": stats.written_keys_per_sec,
                    })
                );
            } else {
                let gib = |b: u64| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
                println!("{:<16} {}", "store", store.id);
                println!("{:<16} {}", "address", store.address);
                println!("{:<16} {}", "state", store_state(store.state));
                println!("{:<16} {}", "labels", labels_text(&store.labels));
                println!("{:<16} {}", "version", store.version);
                println!("{:<16} {}", "capacity", gib(stats.capacity_bytes));
                println!("{:<16} {}", "available", gib(stats.available_bytes));
                println!("{:<16} {}", "replicas", stats.region_count);
                println!("{:<16} {}", "leaders", stats.leader_count);
                println!(
                    "{:<16} {}, {} keys/s",
                    "read",
                    rate(stats.read_bytes_per_sec),
                    stats.read_keys_per_sec
                );
                println!(
                    "{:<16} {}, {} keys/s",
                    "written",
                    rate(stats.written_bytes_per_sec),
                    stats.written_keys_per_sec
                );
                if stats.start_time_s > 0 {
                    println!("{:<16} {}", "started", utc(stats.start_time_s * 1000));
                }
            }
        }
        StoreAction::Label { store_id, labels } => {
            let mut parsed = std::collections::HashMap::new();
            for l in &labels {
                let Some((k, v)) = l.split_once('=') else {
                    return Err(format!(
                        "{l:?} is not a label: give KEY=VALUE, or KEY= to remove the label"
                    ));
                };
                parsed.insert(k.to_string(), v.to_string());
            }
            let store = pd
                .set_store_labels(store_id, parsed)
                .await
                .map_err(|e| format!("labels not changed: {e}"))?;
            if as_json {
                println!("{}", json!({ "id": store.id, "labels": store.labels }));
            } else {
                println!("store {} labels: {}", store.id, labels_text(&store.labels));
            }
        }
    }
    Ok(())
}

async fn scheduler_command(
    pd: &PdClient,
    action: SchedulerAction,
    as_json: bool,
) -> Result<(), String> {
    let store_for = |name: &str, store: Option<u64>| {
        store.ok_or_else(|| {
            format!("{name} needs a store: `ringkv-ctl scheduler add {name} STORE_ID`")
        })
    };
    let config = match &action {
        SchedulerAction::List => pd.get_schedule_config().await,
        SchedulerAction::Pause { name } | SchedulerAction::Resume { name } => {
            let on = matches!(action, SchedulerAction::Resume { .. });
            pd.set_schedule_config(balancer_setting(name), &on.to_string())
                .await
        }
        SchedulerAction::Add { name, store_id } | SchedulerAction::Remove { name, store_id } => {
            let add = matches!(action, SchedulerAction::Add { .. });
            if name == "evict-leader" {
                pd.evict_leader(store_for(name, *store_id)?, add).await
            } else if store_id.is_some() {
                return Err(format!(
                    "{name} runs over every store and takes no store id"
                ));
            } else {
                pd.set_schedule_config(balancer_setting(name), &add.to_string())
                    .await
            }
        }
    }
    .map_err(|e| e.to_string())?;
    let evicting: Vec<String> = config
        .evict_leader_stores
        .iter()
        .map(|s| format!("evict-leader-{s}"))
        .collect();
    let fixed = [
        (
            "replica-repair",
            !config.replica_repair_paused,
            "replaces down, missing and decommissioned replicas, drops extra ones",
        ),
        (
            "balance-leader",
            config.balance_leader,
            "spreads leaders evenly",
        ),
        (
            "balance-region",
            config.balance_region,
            "spreads replicas evenly by size",
        ),
        (
            "hot-region",
            config.balance_hot_region,
            "spreads the regions read and written most",
        ),
        (
            "merge-checker",
            !config.merge_checker_paused,
            "merges small neighbours (merge_size_bytes_max, file setting)",
        ),
    ];
    let rows: Vec<(&str, bool, &str)> = fixed
        .into_iter()
        .chain(
            evicting
                .iter()
                .map(|n| (n.as_str(), true, "moves leaders off the store, none to it")),
        )
        .collect();
    if as_json {
        let list: Vec<_> = rows
            .iter()
            .map(|(n, on, what)| json!({ "name": n, "running": on, "does": what }))
            .collect();
        println!("{}", json!({ "schedulers": list }));
    } else {
        println!("{:<20} {:<8} does", "scheduler", "state");
        for (n, on, what) in rows {
            println!(
                "{n:<20} {:<8} {what}",
                if on { "running" } else { "paused" }
            );
        }
    }
    Ok(())
}

async fn member_command(pd: &PdClient, action: MemberAction, as_json: bool) -> Result<(), String> {
    match action {
        MemberAction::List => {
            let view = pd.get_members().await.map_err(|e| e.to_string())?;
            let leader_id = view.leader.as_ref().map(|l| l.member_id).unwrap_or(0);
            let mut rows = Vec::new();
            for m in &view.members {
                let own = pd.get_members_from(&m.endpoint).await;
                let role = match (&own, m.member_id == leader_id) {
                    (Err(_), _) => "down",
                    (Ok(_), true) => "leader",
                    (Ok(_), false) => "follower",
                };
                rows.push((m, role, own.ok()));
            }
            if as_json {
                let list: Vec<_> = rows
                    .iter()
                    .map(|(m, role, own)| {
                        json!({
                            "name": m.name,
                            "member_id": m.member_id,
                            "endpoint": m.endpoint,
                            "role": role,
                            "term": own.as_ref().map(|o| o.term),
                            "commit_index": own.as_ref().map(|o| o.commit_index),
                            "applied_index": own.as_ref().map(|o| o.applied_index),
                        })
                    })
                    .collect();
                println!("{}", json!({ "members": list, "leader_id": leader_id }));
            } else {
                println!(
                    "{:<16} {:>4} {:<24} {:<9} {:>6} {:>10} {:>10}",
                    "NAME", "ID", "ENDPOINT", "ROLE", "TERM", "COMMIT", "APPLIED"
                );
                for (m, role, own) in &rows {
                    let (term, commit, applied) = match own {
                        Some(o) => (
                            o.term.to_string(),
                            o.commit_index.to_string(),
                            o.applied_index.to_string(),
                        ),
                        None => ("-".into(), "-".into(), "-".into()),
                    };
                    println!(
                        "{:<16} {:>4} {:<24} {:<9} {:>6} {:>10} {:>10}",
                        m.name, m.member_id, m.endpoint, role, term, commit, applied
                    );
                }
            }
        }
        MemberAction::TransferLeader { name } => {
            pd.transfer_placement_leader(&name)
                .await
                .map_err(|e| e.to_string())?;
            if as_json {
                println!("{}", json!({ "transferred_to": name }));
            } else {
                println!("placement leadership handed to {name}");
            }
        }
    }
    Ok(())
}

async fn region_command(pd: &PdClient, action: RegionAction, as_json: bool) -> Result<(), String> {
    let routes = match &action {
        RegionAction::Show { region_id } => {
            vec![pd.get_region_by_id(*region_id).await.map_err(|e| {
                format!("region {region_id}: {e}\nhint: `ringkv-ctl region list` shows the regions")
            })?]
        }
        RegionAction::ByKey { key } => {
            let encoded =
                ringkv_proto::keys::encode(&ringkv_proto::keys::default_keyspace(), key.as_bytes());
            vec![pd.get_region(&encoded).await.map_err(|e| e.to_string())?]
        }
        RegionAction::List { limit } => {
            let mut all = pd
                .scan_regions(b"", b"", 0)
                .await
                .map_err(|e| e.to_string())?;
            all.truncate(*limit);
            all
        }
        RegionAction::Hot { by, limit } => {
            let mut all = pd
                .scan_regions(b"", b"", 0)
                .await
                .map_err(|e| e.to_string())?;
            let flow = |r: &ringkv_client::RegionRoute| {
                r.health.as_ref().map_or(0, |h| {
                    if by == "read" {
                        h.read_bytes_per_sec
                    } else {
                        h.written_bytes_per_sec
                    }
                })
            };
            all.retain(|r| flow(r) > 0);
            all.sort_by_key(|r| std::cmp::Reverse(flow(r)));
            all.truncate(*limit);
            all
        }
        RegionAction::Check {
            problem,
            size_max_mib,
            size_min_mib,
        } => {
            let replicas = pd
                .get_cluster_info()
                .await
                .map_err(|e| e.to_string())?
                .replicas as usize;
            let all = pd
                .scan_regions(b"", b"", 0)
                .await
                .map_err(|e| e.to_string())?;
            all.into_iter()
                .filter(|r| match problem.as_str() {
                    "miss-peer" => r.region.peers.len() < replicas,
                    "extra-peer" => r.region.peers.len() > replicas,
                    "learner" => r
                        .region
                        .peers
                        .iter()
                        .any(|p| p.role != ringkv_proto::metapb::PeerRole::Voter as i32),
                    "pending-peer" => r.health.as_ref().is_some_and(|h| h.pending_peers > 0),
                    "down-peer" => r
                        .health
                        .as_ref()
                        .is_some_and(|h| !h.down_peer_ids.is_empty()),
                    "oversized" => r.health.as_ref().is_some_and(|h| {
                        h.measured
                            && h.approximate_size_bytes > size_max_mib.saturating_mul(1 << 20)
                    }),
                    "undersized" => r.health.as_ref().is_some_and(|h| {
                        h.measured
                            && h.approximate_size_bytes < size_min_mib.saturating_mul(1 << 20)
                    }),
                    _ => r.leader.is_none(),
                })
                .collect()
        }
    };
    if as_json {
        let list: Vec<_> = routes.iter().map(region_json).collect();
        match action {
            RegionAction::Show { .. } | RegionAction::ByKey { .. } => {
                println!("{}", list.into_iter().next().expect("one region"))
            }
            _ => println!("{}", json!({ "regions": list })),
        }
    } else if let RegionAction::Hot { by, .. } = &action {
        println!("{:>14}  {}", format!("{by} flow"), region_header());
        for r in &routes {
            let h = r.health.clone().unwrap_or_default();
            let flow = if by == "read" {
                h.read_bytes_per_sec
            } else {
                h.written_bytes_per_sec
            };
            println!("{:>14}  {}", rate(flow), region_row(r));
        }
        if routes.is_empty() {
            println!("no region reported {by} flow lately");
        }
    } else {
        println!("{}", region_header());
        for r in &routes {
            println!("{}", region_row(r));
        }
    }
    Ok(())
}

async fn operator_command(
    pd: &PdClient,
    action: OperatorAction,
    as_json: bool,
) -> Result<(), String> {
    let print = |ops: &[ringkv_proto::pdpb::OperatorInfo]| {
        if as_json {
            let list: Vec<_> = ops.iter().map(operator_json).collect();
            println!("{}", json!({ "operators": list }));
            return;
        }
        if ops.is_empty() {
            println!("no operator in flight");
        }
        for o in ops {
            println!(
                "region {}: {} (since {})",
                o.region_id,
                o.reason,
                utc(o.created_ms.max(0) as u64)
            );
            for step in &o.steps {
                let mark = if *step == o.next_step { "->" } else { "  " };
                println!("  {mark} {step}");
            }
        }
    };
    match action {
        OperatorAction::List => print(&pd.get_operators().await.map_err(|e| e.to_string())?),
        OperatorAction::Show { region_id } => {
            let ops = pd.get_operators().await.map_err(|e| e.to_string())?;
            let op: Vec<_> = ops
                .into_iter()
                .filter(|o| o.region_id == region_id)
                .collect();
            if op.is_empty() {
                return Err(format!(
                    "region {region_id} has no operator in flight (see `ringkv-ctl operator list`)"
                ));
            }
            print(&op);
        }
        OperatorAction::Cancel { region_id } => {
            pd.cancel_operator(region_id)
                .await
                .map_err(|e| format!("not cancelled: {e}"))?;
            if as_json {
                println!("{}", json!({ "cancelled": region_id }));
            } else {
                println!("cancelled the operator of region {region_id}");
            }
        }
        OperatorAction::Add { kind } => {
            let request = match kind {
                AddOperator::TransferLeader {
                    region_id,
                    to_store,
                } => AddOperatorRequest {
                    region_id,
                    kind: "transfer-leader".into(),
                    to_store,
                    ..Default::default()
                },
                AddOperator::MovePeer {
                    region_id,
                    from_store,
                    to_store,
                } => AddOperatorRequest {
                    region_id,
                    kind: "move-peer".into(),
                    from_store,
                    to_store,
                    ..Default::default()
                },
                AddOperator::Split { region_id, key } => AddOperatorRequest {
                    region_id,
                    kind: "split".into(),
                    split_key: key.map_or_else(Vec::new, |k| split_key_of(k.as_bytes())),
                    ..Default::default()
                },
                AddOperator::Merge {
                    region_id,
                    target_region_id,
                } => AddOperatorRequest {
                    region_id,
                    kind: "merge".into(),
                    target_region_id,
                    ..Default::default()
                },
            };
            let op = pd
                .add_operator(request)
                .await
                .map_err(|e| format!("no operator started: {e}"))?;
            print(&[op]);
        }
    }
    Ok(())
}

/// Where a split at user key `key` of the default keyspace lands: the boundary in front of
/// its encoded form (every version of one key stays in one region).
fn split_key_of(key: &[u8]) -> Vec<u8> {
    let encoded = ringkv_proto::keys::encode(&ringkv_proto::keys::default_keyspace(), key);
    ringkv_proto::keys::split_boundary(&encoded).to_vec()
}

fn main() {
    // Die quietly of a closed pipe (`ringkv-ctl region list | head`) like other command-line
    // tools, instead of panicking on the failed write: Rust ignores SIGPIPE by default.
    // SAFETY: restoring the default disposition of a signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(utc(1_795_651_200_123), "2026-11-26T00:00:00.123Z");
    }

    #[test]
    fn a_timestamp_splits_into_physical_and_logical() {
        let (p, l, _) = describe_ts((1234 << 18) | 7);
        assert_eq!((p, l), (1234, 7));
    }
}
