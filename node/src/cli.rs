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
        stop_on_panic(config.data_dir.clone());
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

/// A panic on any thread stops the whole process (exit code 70): a node whose storage failed
/// must stop rather than go on answering with some of its threads gone. A full disk is named
/// as such, with what to do.
fn stop_on_panic(data_dir: PathBuf) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if is_disk_full(message) {
            let what = format!(
                "the disk holding {} is full: free space or grow the volume, then restart this node (everything it acknowledged is on disk)",
                data_dir.display()
            );
            tracing::error!("{what}");
            eprintln!("ringkv-node: {what}");
        } else {
            tracing::error!(panic = message, "stopping the node");
        }
        std::process::exit(70);
    }));
}

/// Whether an error message is the operating system's "no space left on device".
fn is_disk_full(message: &str) -> bool {
    message.contains("No space left on device") || message.contains("os error 28")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_recognised_in_storage_errors() {
        assert!(is_disk_full(
            "raft log write failed; stopping the node: IO error: No space left on device (os error 28)"
        ));
        assert!(is_disk_full("apply write failed: os error 28"));
        assert!(!is_disk_full("apply write failed: injected fault"));
    }
}
