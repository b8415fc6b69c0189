//! Command-line options of a node, shared by `ringkv-node` and `ringkv node`.

use crate::{NetFilter, NodeConfig, NodeServer};
use std::path::PathBuf;

/// Runs a ringkv storage node: it joins the cluster through the placement driver, replicates
/// its regions with Raft, and serves the raw KV API.
///
/// Options come from --config (TOML, see docs/configuration.md), then from these flags, which
/// win.
#[derive(clap::Args, Debug, Default)]
pub struct NodeArgs {
    /// TOML configuration file.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Data directory, created if missing [default: ./ringkv-data/node].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port [default: 127.0.0.1:20160].
    #[arg(long)]
    pub listen_addr: Option<std::net::SocketAddr>,
    /// Address to tell other nodes and clients, if not the listen address.
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// Placement members, comma-separated host:port [default: 127.0.0.1:2379].
    #[arg(long, value_delimiter = ',')]
    pub placement: Vec<String>,
    /// Store label, key=value; repeatable (e.g. --label zone=z1 --label host=h1).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Log filter, e.g. info, debug, ringkv_node=debug [default: info].
    #[arg(long)]
    pub log_level: Option<String>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("label {s:?} is not key=value")),
    }
}

impl NodeArgs {
    /// The configuration: file (or defaults), then flags.
    pub fn config(&self) -> Result<NodeConfig, String> {
        let mut c = match &self.config {
            Some(path) => NodeConfig::from_file(path).map_err(|e| e.to_string())?,
            None => NodeConfig::default(),
        };
        if let Some(v) = &self.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = self.listen_addr {
            c.listen_addr = v;
        }
        if let Some(v) = &self.advertise_addr {
            c.advertise_addr = Some(v.clone());
        }
        if !self.placement.is_empty() {
            c.placement_endpoints = self.placement.clone();
        }
        for (k, v) in &self.labels {
            c.labels.insert(k.clone(), v.clone());
        }
        if let Some(v) = &self.log_level {
            c.log_level = v.clone();
        }
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    /// Runs the node until SIGINT/SIGTERM. Returns the process exit code.
    pub fn run(&self) -> i32 {
        let config = match self.config() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("ringkv-node: {e}");
                return 2;
            }
        };
        ringkv_placement::server::init_logging(&config.log_level);
        let server = match NodeServer::start(config, NetFilter::new()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("ringkv-node: {e}");
                return 1;
            }
        };
        println!(
            "ringkv-node store {} listening on {}",
            server.store_id(),
            server.addr()
        );
        ringkv_placement::server::wait_for_shutdown_signal();
        tracing::info!("shutting down");
        server.stop();
        0
    }
}
