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
    /// Address clients and nodes are told to use; defaults to `listen_addr`. With
    /// `initial_members`, this member's entry there wins.
    pub advertise_addr: Option<String>,
    /// The placement group: every member as `name=host:port` (the address clients, nodes and
    /// the other members use), the same list on every member; this member is the entry named
    /// `name`. Empty (the default): a group of this member alone. 1..=7 members; 3 or 5
    /// survive the loss of 1 or 2. Fixed at the first start: a data directory refuses a
    /// different list.
    pub initial_members: Vec<String>,
    /// Replicas per region. The cluster bootstraps once this many stores registered.
    /// Default 3; 1..=7.
    pub replicas: u32,
    /// How far ahead of the handed-out timestamps the TSO persists its upper bound, in ms.
    /// Larger: fewer syncs; a restart skips up to this much time. Default 3000; 100..=60000.
    pub tso_save_window_ms: i64,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `ringkv_placement=debug`.
    /// Default `info`.
    pub log_level: String,
    /// Regions at most this large, whose merged result also stays within it, are merged into
    /// a neighbour on the same stores. 0 turns merging off. Default 20 MiB (20971520).
    pub merge_size_bytes_max: u64,
    /// The same limit in keys. Default 200000.
    pub merge_keys_max: u64,
    /// A region whose range changed (split or merge) less than this long ago is not merged,
    /// so fresh splits are not undone. Default 3600000 (1 hour); 0..=604800000.
    pub split_merge_interval_ms: i64,
    /// A merge order not completed within this long may be given again. Default 60000;
    /// 1000..=3600000.
    pub merge_timeout_ms: i64,
    /// How long versions stay readable: the GC safe point trails now by this much (and never
    /// passes a running transaction's start_ts). 0: it only moves when set with the admin CLI.
    /// Default 600000 (10 minutes); 0 or 60000..=31536000000.
    pub gc_life_time_ms: i64,
    /// A store that has not heartbeated for this long is down: its replicas are replaced on
    /// other stores (add a learner, promote it, remove the down peer). Default 1800000 (30
    /// minutes); 1000..=604800000.
    pub max_store_down_time_ms: i64,
    /// A repair operator not done within this long is dropped and planned afresh. Default
    /// 600000 (10 minutes); 1000..=86400000.
    pub operator_timeout_ms: i64,
    /// How often the balance schedulers look at the cluster, in ms. Default 1000;
    /// 100..=600000.
    pub schedule_interval_ms: u64,
    /// balance-leader: spread region leaders evenly over the stores. Default true.
    pub balance_leader: bool,
    /// balance-region: spread replicas evenly (by size in MiB, each region counting at least
    /// 1). Default true.
    pub balance_region: bool,
    /// Leader transfers the balancers keep in flight at most. Default 4; 0..=1024 (0 pauses
    /// balance-leader).
    pub leader_schedule_limit: usize,
    /// Replica moves the balancers keep in flight at most. Default 4; 0..=1024 (0 pauses
    /// balance-region).
    pub region_schedule_limit: usize,
    /// Stores whose scores differ by at most this fraction of the mean (and at least one
    /// region) count as balanced. Default 0.05; 0.0..=1.0.
    pub balance_tolerance_ratio: f64,
    /// hot-region: move leaders of the regions read most, and replicas of those written most,
    /// off the stores where that flow piles up. Default true.
    pub balance_hot_region: bool,
    /// Operators hot-region keeps in flight at most. Default 4; 0..=1024.
    pub hot_region_schedule_limit: usize,
    /// A region is hot once its leader reports at least this many bytes read or written per
    /// second. Default 65536 (64 KiB/s); 1..=1099511627776.
    pub hot_region_min_bytes_per_sec: u64,
    /// The store labels a region's replicas are spread over, most significant first: replicas
    /// go to distinct zones first, then racks, then hosts, as far as the stores allow. Stores
    /// without these labels are placed by load alone. Default `["zone", "rack", "host"]`;
    /// at most 8 distinct names.
    pub location_labels: Vec<String>,
    /// Lets `PlacementMember/SetMemberNetFilter` make this member drop its Raft traffic to
    /// and from chosen members: for fault-injection tests only, never in production. Default
    /// false.
    pub fault_injection: bool,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            name: "pd-1".into(),
            data_dir: PathBuf::from("./ringkv-data/placement"),
            listen_addr: "127.0.0.1:2379".parse().expect("valid address"),
            advertise_addr: None,
            initial_members: Vec::new(),
            replicas: 3,
            tso_save_window_ms: 3000,
            log_level: "info".into(),
            merge_size_bytes_max: 20 * 1024 * 1024,
            merge_keys_max: 200_000,
            split_merge_interval_ms: 3_600_000,
            merge_timeout_ms: 60_000,
            gc_life_time_ms: crate::cluster::DEFAULT_GC_LIFE_TIME_MS,
            max_store_down_time_ms: crate::cluster::DEFAULT_MAX_STORE_DOWN_TIME_MS,
            operator_timeout_ms: crate::cluster::DEFAULT_OPERATOR_TIMEOUT_MS,
            schedule_interval_ms: 1000,
            balance_leader: true,
            balance_region: true,
            leader_schedule_limit: 4,
            region_schedule_limit: 4,
            balance_tolerance_ratio: 0.05,
            balance_hot_region: true,
            hot_region_schedule_limit: 4,
            hot_region_min_bytes_per_sec: 64 * 1024,
            location_labels: vec!["zone".into(), "rack".into(), "host".into()],
            fault_injection: false,
        }
    }
}

impl PlacementConfig {
    /// The balance schedulers' settings.
    pub fn balance_config(&self) -> crate::balance::BalanceConfig {
        crate::balance::BalanceConfig {
            balance_leader: self.balance_leader,
            balance_region: self.balance_region,
            leader_schedule_limit: self.leader_schedule_limit,
            region_schedule_limit: self.region_schedule_limit,
            tolerance_ratio: self.balance_tolerance_ratio,
            balance_hot_region: self.balance_hot_region,
            hot_region_schedule_limit: self.hot_region_schedule_limit,
            hot_region_min_bytes_per_sec: self.hot_region_min_bytes_per_sec,
        }
    }

    /// The merge checker's limits.
    pub fn merge_config(&self) -> crate::merge_checker::MergeConfig {
        crate::merge_checker::MergeConfig {
            merge_size_bytes_max: self.merge_size_bytes_max,
            merge_keys_max: self.merge_keys_max,
            split_merge_interval_ms: self.split_merge_interval_ms,
            merge_timeout_ms: self.merge_timeout_ms,
        }
    }

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
        if !(0..=604_800_000).contains(&self.split_merge_interval_ms) {
            return Err(PlacementError::Config(format!(
                "split_merge_interval_ms = {} is outside 0..=604800000 (a week)",
                self.split_merge_interval_ms
            )));
        }
        if !(1000..=3_600_000).contains(&self.merge_timeout_ms) {
            return Err(PlacementError::Config(format!(
                "merge_timeout_ms = {} is outside 1000..=3600000",
                self.merge_timeout_ms
            )));
        }
        if self.gc_life_time_ms != 0 && !(60_000..=31_536_000_000).contains(&self.gc_life_time_ms) {
            return Err(PlacementError::Config(format!(
                "gc_life_time_ms = {} is outside 60000..=31536000000 (a minute to a year); 0 turns automatic GC off",
                self.gc_life_time_ms
            )));
        }
        if !(1000..=604_800_000).contains(&self.max_store_down_time_ms) {
            return Err(PlacementError::Config(format!(
                "max_store_down_time_ms = {} is outside 1000..=604800000 (a week)",
                self.max_store_down_time_ms
            )));
        }
        if !(1000..=86_400_000).contains(&self.operator_timeout_ms) {
            return Err(PlacementError::Config(format!(
                "operator_timeout_ms = {} is outside 1000..=86400000 (a day)",
                self.operator_timeout_ms
            )));
        }
        if !(100..=600_000).contains(&self.schedule_interval_ms) {
            return Err(PlacementError::Config(format!(
                "schedule_interval_ms = {} is outside 100..=600000",
                self.schedule_interval_ms
            )));
        }
        for (name, limit) in [
            ("leader_schedule_limit", self.leader_schedule_limit),
            ("region_schedule_limit", self.region_schedule_limit),
            ("hot_region_schedule_limit", self.hot_region_schedule_limit),
        ] {
            if limit > 1024 {
                return Err(PlacementError::Config(format!(
                    "{name} = {limit} is outside 0..=1024"
                )));
            }
        }
        if !(0.0..=1.0).contains(&self.balance_tolerance_ratio) {
            return Err(PlacementError::Config(format!(
                "balance_tolerance_ratio = {} is outside 0.0..=1.0",
                self.balance_tolerance_ratio
            )));
        }
        if !(1..=1 << 40).contains(&self.hot_region_min_bytes_per_sec) {
            return Err(PlacementError::Config(format!(
                "hot_region_min_bytes_per_sec = {} is outside 1..=1099511627776",
                self.hot_region_min_bytes_per_sec
            )));
        }
        if self.name.is_empty() {
            return Err(PlacementError::Config("name must not be empty".into()));
        }
        let mut labels = self.location_labels.clone();
        labels.sort();
        labels.dedup();
        if labels.len() != self.location_labels.len()
            || labels.len() > 8
            || labels.iter().any(|l| l.is_empty())
        {
            return Err(PlacementError::Config(format!(
                "location_labels = {:?}: give at most 8 distinct, non-empty label names, most significant first (e.g. [\"zone\", \"rack\", \"host\"])",
                self.location_labels
            )));
        }
        if !self.initial_members.is_empty() {
            let members = crate::member::member_specs(&self.initial_members)?;
            if !members.iter().any(|m| m.name == self.name) {
                return Err(PlacementError::Config(format!(
                    "initial_members does not name this member ({:?}); list every member, this one included",
                    self.name
                )));
            }
            if members.len() > 1 && self.listen_addr.port() == 0 {
                return Err(PlacementError::Config(
                    "listen_addr port 0 cannot be used with several initial_members: the others must know this member's port".into(),
                ));
            }
        }
        Ok(())
    }
}
