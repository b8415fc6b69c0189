//! Configuration of a placement member: a TOML file, overridden by command-line flags.

use crate::PlacementError;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Every option of a placement member. Defaults in [`PlacementConfig::default`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlacementConfig {
    /// Member name, shown in member lists. Default `pd-1`.
    pub name: String,
    /// Directory for the metadata store. Default `./ringkv-data/placement`.
    pub data_dir: PathBuf,
    /// Address the gRPC server binds. Port 0 picks a free port. Default `127.0.0.1:2379`.
    pub listen_addr: SocketAddr,
    /// Address clients and nodes are told to use; defaults to `listen_addr`.
    pub advertise_addr: Option<String>,
    /// Replicas per region. The cluster bootstraps once this many stores registered.
    /// Default 3; 1..=7.
    pub replicas: u32,
    /// How far ahead of the handed-out timestamps the TSO persists its upper bound, in ms.
    /// Larger: fewer syncs; a restart skips up to this much time. Default 3000; 100..=60000.
    pub tso_save_window_ms: i64,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `ringkv_placement=debug`.
    /// Default `info`.
    pub log_level: String,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            name: "pd-1".into(),
            data_dir: PathBuf::from("./ringkv-data/placement"),
            listen_addr: "127.0.0.1:2379".parse().expect("valid address"),
            advertise_addr: None,
            replicas: 3,
            tso_save_window_ms: 3000,
            log_level: "info".into(),
        }
    }
}

impl PlacementConfig {
    /// Reads a TOML file; unknown keys are errors, missing keys take their defaults.
    pub fn from_file(path: &Path) -> Result<Self, PlacementError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            PlacementError::Config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        toml::from_str(&text)
            .map_err(|e| PlacementError::Config(format!("config file {}: {e}", path.display())))
    }

    /// Rejects values out of range, with what to do instead.
    pub fn validate(&self) -> Result<(), PlacementError> {
        if !(1..=7).contains(&self.replicas) {
            return Err(PlacementError::Config(format!(
                "replicas = {} is outside 1..=7",
                self.replicas
            )));
        }
        if !(100..=60_000).contains(&self.tso_save_window_ms) {
            return Err(PlacementError::Config(format!(
                "tso_save_window_ms = {} is outside 100..=60000",
                self.tso_save_window_ms
            )));
        }
        if self.name.is_empty() {
            return Err(PlacementError::Config("name must not be empty".into()));
        }
        Ok(())
    }
}
