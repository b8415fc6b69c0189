//! `ringkv-ctl`: the admin CLI. Every command prints a readable table, or with `--json` one JSON
//! document; errors go to stderr with what to do, and the exit code is 1.

use clap::{Parser, Subcommand};
use ringkv_client::PdClient;
use serde_json::json;

/// Administers a ringkv cluster through its placement driver.
#[derive(Parser)]
#[command(name = "ringkv-ctl", version, about, long_about = None)]
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
    /// Cluster status: bootstrapped or not, replicas, stores and regions.
    Cluster,
    /// A fresh timestamp from the TSO, with its physical time.
    Tso,
    /// Stores: list them, or decommission one.
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
}

#[derive(Subcommand)]
enum StoreAction {
    /// Every store: id, address, state, replicas and leaders it holds, labels.
    List,
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
    let physical = ts >> 18;
    let logical = ts & ((1 << 18) - 1);
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
            if cli.json {
                println!(
                    "{}",
                    json!({
                        "cluster_id": pd.cluster_id(),
                        "bootstrapped": info.bootstrapped,
                        "replicas": info.replicas,
                        "stores": info.store_count,
                        "regions": info.region_count,
                    })
                );
            } else {
                println!("{:<16} {}", "cluster id", pd.cluster_id());
                println!("{:<16} {}", "bootstrapped", info.bootstrapped);
                println!("{:<16} {}", "replicas", info.replicas);
                println!("{:<16} {}", "stores", info.store_count);
                println!("{:<16} {}", "regions", info.region_count);
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
        Cmd::Store {
            action: StoreAction::List,
        } => {
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
            let state = |s: i32| match ringkv_proto::metapb::StoreState::try_from(s) {
                Ok(ringkv_proto::metapb::StoreState::Up) => "up",
                Ok(ringkv_proto::metapb::StoreState::Offline) => "decommissioning",
                Ok(ringkv_proto::metapb::StoreState::Tombstone) => "tombstone",
                Err(_) => "unknown",
            };
            if cli.json {
                let list: Vec<_> = stores
                    .iter()
                    .map(|s| {
                        let (replicas, leaders) = count(s.id);
                        json!({
                            "id": s.id,
                            "address": s.address,
                            "state": state(s.state),
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
                    let labels: Vec<String> =
                        s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!(
                        "{:>6}  {:<22} {:<16} {:>8} {:>8}  {}",
                        s.id,
                        s.address,
                        state(s.state),
                        replicas,
                        leaders,
                        labels.join(",")
                    );
                }
            }
        }
        Cmd::Store {
            action: StoreAction::Decommission { store_id },
        } => {
            let store = pd
                .decommission_store(store_id)
                .await
                .map_err(|e| format!("store {store_id} was not decommissioned: {e}"))?;
            if cli.json {
                println!("{}", json!({ "id": store.id, "state": "decommissioning" }));
            } else {
                println!(
                    "store {} is decommissioning: its replicas move to other stores, then it becomes a tombstone",
                    store.id
                );
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
    }
    Ok(())
}

fn main() {
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
