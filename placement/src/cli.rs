//! Command-line options of a placement member, shared by `ringkv-placement` and
//! `ringkv placement`.

use crate::{PlacementConfig, PlacementServer};
use std::path::PathBuf;

/// Runs a ringkv placement driver member: it bootstraps the cluster, registers stores, hands out
/// ids and timestamps, and routes clients to regions.
///
/// Options come from --config (TOML, see docs/configuration.md), then from these flags, which
/// win.
#[derive(clap::Args, Debug, Default)]
pub struct PlacementArgs {
    /// TOML configuration file.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Member name [default: pd-1].
    #[arg(long)]
    pub name: Option<String>,
    /// Directory for the metadata store, created if missing [default: ./ringkv-data/placement].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port [default: 127.0.0.1:2379].
    #[arg(long)]
    pub listen_addr: Option<std::net::SocketAddr>,
    /// Address to tell clients and nodes, if not the listen address.
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// The placement group, comma-separated `name=host:port` of every member (this one
    /// included, found by --name) [default: this member alone].
    #[arg(long, value_delimiter = ',')]
    pub initial_members: Option<Vec<String>>,
    /// Replicas per region; the cluster bootstraps once this many nodes registered [default: 3].
    #[arg(long)]
    pub replicas: Option<u32>,
    /// Log filter, e.g. info, debug, ringkv_placement=debug [default: info].
    #[arg(long)]
    pub log_level: Option<String>,
}

impl PlacementArgs {
    /// The configuration: file (or defaults), then flags.
    pub fn config(&self) -> Result<PlacementConfig, String> {
        let mut c = match &self.config {
            Some(path) => PlacementConfig::from_file(path).map_err(|e| e.to_string())?,
            None => PlacementConfig::default(),
        };
        if let Some(v) = &self.name {
            c.name = v.clone();
        }
        if let Some(v) = &self.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = self.listen_addr {
            c.listen_addr = v;
        }
        if let Some(v) = &self.advertise_addr {
            c.advertise_addr = Some(v.clone());
        }
        if let Some(v) = &self.initial_members {
            c.initial_members = v.clone();
        }
        if let Some(v) = self.replicas {
            c.replicas = v;
        }
        if let Some(v) = &self.log_level {
            c.log_level = v.clone();
        }
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    /// Runs the member until SIGINT/SIGTERM. Returns the process exit code.
    pub fn run(&self) -> i32 {
        let config = match self.config() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("ringkv-placement: {e}");
                return 2;
            }
        };
        crate::server::init_logging(&config.log_level);
        let server = match PlacementServer::start(config) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("ringkv-placement: {e}");
                return 1;
            }
        };
        println!(
            "ringkv-placement listening on {} (cluster {})",
            server.addr(),
            server.cluster_id()
        );
        crate::server::wait_for_shutdown_signal();
        tracing::info!("shutting down");
        server.stop();
        0
    }
}
