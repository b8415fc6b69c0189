//! Configuration of a node: a TOML file, overridden by command-line flags. Every option is
//! documented in docs/configuration.md.

use crate::peer::PeerConfig;
use crate::raftstore::RaftStoreConfig;
use crate::split_check::SplitConfig;
use crate::NodeError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every option of a node. Defaults in the `Default` impls.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Directory for the node's data (`raft/` log engine, `kv/` state store). Default
    /// `./ringkv-data/node`.
    pub data_dir: PathBuf,
    /// Address the gRPC server binds. Port 0 picks a free port. Default `127.0.0.1:20160`.
    pub listen_addr: SocketAddr,
    /// Address other nodes and clients are told to use; defaults to the bound address.
    pub advertise_addr: Option<String>,
    /// Placement driver members, host:port. Default `["127.0.0.1:2379"]`.
    pub placement_endpoints: Vec<String>,
    /// Labels of this store, e.g. `{ zone = "z1", host = "h1" }`.
    pub labels: BTreeMap<String, String>,
    /// Log filter (tracing `EnvFilter` syntax). Default `info`.
    pub log_level: String,
    /// How often the store reports to the placement driver, in ms. Default 1000; 100..=60000.
    pub store_heartbeat_ms: u64,
    /// Capacity of the raftstore mailbox, in messages; past it requests get `ServerIsBusy`.
    /// Default 65536.
    pub mailbox_capacity: usize,
    /// Lets the Debug service's `SetNetFilter` drop this node's Raft messages to chosen stores:
    /// for fault-injection tests only, never in production. Default false.
    pub fault_injection: bool,
    /// How often the MVCC garbage collector asks the placement driver for the GC safe point
    /// and collects below it, in ms. Default 60000; 100..=86400000.
    pub gc_interval_ms: u64,
    /// How often each region's leader publishes its resolved timestamp to its replicas, in
    /// ms: stale reads on a replica can be at most about this much (plus the age of the
    /// oldest transaction in flight) behind the present. Default 1000; 50..=600000.
    pub resolved_ts_interval_ms: u64,
    pub raft: RaftSection,
    pub split: SplitSection,
}

/// When regions split, `[split]` in the TOML file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitSection {
    /// A region whose keys and values exceed this many bytes is split in two halves.
    /// Default 96 MiB (100663296); at least 4096.
    pub region_split_size_bytes: u64,
    /// A region with more keys than this is split in two halves. Default 960000; at least 16.
    pub region_split_keys: u64,
    /// A leader re-measures its region after this many bytes were written to it. Default
    /// 1/16 of `region_split_size_bytes`; at least 1.
    pub split_check_diff_bytes: Option<u64>,
    /// Ticks between a leader's split-check decisions. Default 10; at least 1.
    pub split_check_ticks: u32,
}

impl Default for SplitSection {
    fn default() -> Self {
        let d = SplitConfig::default();
        SplitSection {
            region_split_size_bytes: d.region_split_size_bytes,
            region_split_keys: d.region_split_keys,
            split_check_diff_bytes: None,
            split_check_ticks: d.split_check_ticks,
        }
    }
}

impl SplitSection {
    pub fn split_config(&self) -> SplitConfig {
        SplitConfig {
            region_split_size_bytes: self.region_split_size_bytes,
            region_split_keys: self.region_split_keys,
            split_check_diff_bytes: self
                .split_check_diff_bytes
                .unwrap_or((self.region_split_size_bytes / 16).max(1)),
            split_check_ticks: self.split_check_ticks,
        }
    }
}

/// Raft settings, `[raft]` in the TOML file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftSection {
    /// Length of one Raft tick in ms. Default 100; 10..=10000.
    pub tick_interval_ms: u64,
    /// Ticks without a leader before a follower campaigns (randomised up to twice this).
    /// Default 10; must exceed `heartbeat_ticks`.
    pub election_ticks: usize,
    /// Leaders serve reads from local state while their lease lasts (see `max_clock_drift_ms`);
    /// false: every read takes a ReadIndex round. Default true.
    pub lease_reads: bool,
    /// How far two nodes' clocks may drift apart over one election timeout, in ms. A lease
    /// lasts `(election_ticks - 1) * tick_interval_ms - max_clock_drift_ms` from the round that
    /// confirmed it. Default 100; must leave a lease of at least one tick.
    pub max_clock_drift_ms: u64,
    /// Ticks between leader heartbeats. Default 2.
    pub heartbeat_ticks: usize,
    /// Sync the Raft log before acknowledging writes. Default true. Off loses acknowledged
    /// writes on power loss; only for benchmarks that say so.
    pub sync_log: bool,
    /// Ticks between a leader's region reports to the placement driver. Default 10.
    pub region_heartbeat_ticks: u32,
    /// Largest append message, in bytes. Default 1 MiB.
    pub max_size_per_msg_bytes: u64,
    /// Append messages in flight per follower. Default 256.
    pub max_inflight_msgs: usize,
    /// Ticks between log GC decisions. Default 30; at least 1.
    pub raft_log_gc_ticks: u32,
    /// A leader compacts its log once this many applied entries are in it. Default 50; at
    /// least 1.
    pub raft_log_gc_threshold: u64,
    /// Past this many entries the log is compacted to the applied index even if a follower
    /// lags; the follower then catches up from a snapshot. Default 20000; at least
    /// `raft_log_gc_threshold`.
    pub raft_log_gc_count_limit: u64,
    /// Poller threads driving the node's peers. Default: the number of cores; 1..=64.
    pub pollers: Option<usize>,
    /// Threads applying committed entries to the KV engine. Default 2; 1..=64.
    pub apply_pool_size: usize,
    /// Idle regions stop ticking and heartbeating, and wake on any message or request.
    /// Default true.
    pub quiet_regions: bool,
    /// Ticks a leader must be idle before its region goes quiet. Default 20; at least
    /// `election_ticks`.
    pub quiet_leader_ticks: u32,
    /// Ticks between the reports of a quiet leader to the placement driver (which may answer
    /// with a merge order), made without waking the region. Default 600 (a minute); at least 1.
    pub region_heartbeat_quiet_ticks: u32,
    /// Ticks a follower may know no leader before it asks the placement driver whether it is
    /// still a member of its region (a replica removed while it was cut off is then
    /// destroyed). Default 3000 (5 minutes at 100 ms ticks); at least `election_ticks`.
    pub stale_peer_check_ticks: u32,
}

impl Default for RaftSection {
    fn default() -> Self {
        let peer = PeerConfig::default();
        let store = RaftStoreConfig::default();
        RaftSection {
            tick_interval_ms: store.tick_interval.as_millis() as u64,
            election_ticks: peer.election_ticks,
            lease_reads: true,
            max_clock_drift_ms: 100,
            heartbeat_ticks: peer.heartbeat_ticks,
            sync_log: store.sync_log,
            region_heartbeat_ticks: store.region_heartbeat_ticks,
            max_size_per_msg_bytes: peer.max_size_per_msg_bytes,
            max_inflight_msgs: peer.max_inflight_msgs,
            raft_log_gc_ticks: store.raft_log_gc_ticks,
            raft_log_gc_threshold: store.raft_log_gc_threshold,
            raft_log_gc_count_limit: store.raft_log_gc_count_limit,
            pollers: None,
            apply_pool_size: store.apply_pool_size,
            quiet_regions: store.quiet_regions,
            quiet_leader_ticks: store.quiet_leader_ticks,
            region_heartbeat_quiet_ticks: store.region_heartbeat_quiet_ticks,
            stale_peer_check_ticks: store.stale_peer_check_ticks,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("./ringkv-data/node"),
            listen_addr: "127.0.0.1:20160".parse().expect("valid address"),
            advertise_addr: None,
            placement_endpoints: vec!["127.0.0.1:2379".into()],
            labels: BTreeMap::new(),
            log_level: "info".into(),
            store_heartbeat_ms: 1000,
            mailbox_capacity: 65536,
            fault_injection: false,
            gc_interval_ms: 60_000,
            resolved_ts_interval_ms: 1000,
            raft: RaftSection::default(),
            split: SplitSection::default(),
        }
    }
}

impl NodeConfig {
    /// Reads a TOML file; unknown keys are errors, missing keys take their defaults.
    pub fn from_file(path: &Path) -> Result<Self, NodeError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            NodeError::Config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        toml::from_str(&text)
            .map_err(|e| NodeError::Config(format!("config file {}: {e}", path.display())))
    }

    /// Rejects values out of range or combinations that cannot work.
    pub fn validate(&self) -> Result<(), NodeError> {
        let bad = |m: String| Err(NodeError::Config(m));
        if self.placement_endpoints.is_empty() {
            return bad("placement_endpoints is empty; name at least one placement member".into());
        }
        if !(10..=10_000).contains(&self.raft.tick_interval_ms) {
            return bad(format!(
                "raft.tick_interval_ms = {} is outside 10..=10000",
                self.raft.tick_interval_ms
            ));
        }
        if self.raft.heartbeat_ticks == 0 || self.raft.election_ticks <= self.raft.heartbeat_ticks {
            return bad(format!(
                "raft.election_ticks ({}) must be greater than raft.heartbeat_ticks ({}), which must be at least 1",
                self.raft.election_ticks, self.raft.heartbeat_ticks
            ));
        }
        if !(100..=86_400_000).contains(&self.gc_interval_ms) {
            return bad(format!(
                "gc_interval_ms = {} is outside 100..=86400000 (a day)",
                self.gc_interval_ms
            ));
        }
        if !(50..=600_000).contains(&self.resolved_ts_interval_ms) {
            return bad(format!(
                "resolved_ts_interval_ms = {} is outside 50..=600000 (ten minutes)",
                self.resolved_ts_interval_ms
            ));
        }
        if !(100..=60_000).contains(&self.store_heartbeat_ms) {
            return bad(format!(
                "store_heartbeat_ms = {} is outside 100..=60000",
                self.store_heartbeat_ms
            ));
        }
        if self.mailbox_capacity < 1024 {
            return bad(format!(
                "mailbox_capacity = {} is below 1024",
                self.mailbox_capacity
            ));
        }
        if (self.raft.stale_peer_check_ticks as usize) < self.raft.election_ticks {
            return bad(format!(
                "raft.stale_peer_check_ticks = {} is below raft.election_ticks = {}: a follower would ask before it could have missed an election",
                self.raft.stale_peer_check_ticks, self.raft.election_ticks
            ));
        }
        if self.raft.region_heartbeat_quiet_ticks == 0 {
            return bad("raft.region_heartbeat_quiet_ticks must be at least 1".into());
        }
        if self.raft.region_heartbeat_ticks == 0 {
            return bad("raft.region_heartbeat_ticks must be at least 1".into());
        }
        let r = &self.raft;
        if r.raft_log_gc_ticks == 0
            || r.raft_log_gc_threshold == 0
            || r.raft_log_gc_count_limit < r.raft_log_gc_threshold
        {
            return bad(format!(
                "raft.raft_log_gc_ticks ({}) and raft.raft_log_gc_threshold ({}) must be at least 1, and raft.raft_log_gc_count_limit ({}) at least the threshold",
                r.raft_log_gc_ticks, r.raft_log_gc_threshold, r.raft_log_gc_count_limit
            ));
        }
        if r.pollers.is_some_and(|p| !(1..=64).contains(&p)) {
            return bad(format!("raft.pollers = {:?} is outside 1..=64", r.pollers));
        }
        if r.lease_reads && self.lease_ms() == 0 {
            return bad(format!(
                "raft.max_clock_drift_ms ({}) leaves no lease: it must be below (election_ticks - 1) * tick_interval_ms - tick_interval_ms = {} ms (or turn raft.lease_reads off)",
                r.max_clock_drift_ms,
                (r.election_ticks as u64).saturating_sub(2) * r.tick_interval_ms
            ));
        }
        if !(1..=64).contains(&r.apply_pool_size) {
            return bad(format!(
                "raft.apply_pool_size = {} is outside 1..=64",
                r.apply_pool_size
            ));
        }
        if (r.quiet_leader_ticks as usize) < r.election_ticks {
            return bad(format!(
                "raft.quiet_leader_ticks ({}) must be at least raft.election_ticks ({})",
                r.quiet_leader_ticks, r.election_ticks
            ));
        }
        let split = &self.split;
        if split.region_split_size_bytes < 4096 {
            return bad(format!(
                "split.region_split_size_bytes = {} is below 4096",
                split.region_split_size_bytes
            ));
        }
        if split.region_split_keys < 16 {
            return bad(format!(
                "split.region_split_keys = {} is below 16",
                split.region_split_keys
            ));
        }
        if split.split_check_diff_bytes == Some(0) || split.split_check_ticks == 0 {
            return bad(
                "split.split_check_diff_bytes and split.split_check_ticks must be at least 1"
                    .into(),
            );
        }
        Ok(())
    }

    /// A leader's lease in ms (0: lease reads off, or no room for one): an election timeout,
    /// less one tick (a follower's election timer may tick right after it heard the leader),
    /// less the allowed clock drift; at least one tick, else none.
    pub fn lease_ms(&self) -> u64 {
        let r = &self.raft;
        if !r.lease_reads {
            return 0;
        }
        let lease = (r.election_ticks as u64).saturating_sub(1) * r.tick_interval_ms;
        match lease.checked_sub(r.max_clock_drift_ms) {
            Some(ms) if ms >= r.tick_interval_ms => ms,
            _ => 0,
        }
    }

    pub fn raftstore_config(&self) -> RaftStoreConfig {
        RaftStoreConfig {
            tick_interval: Duration::from_millis(self.raft.tick_interval_ms),
            peer: PeerConfig {
                election_ticks: self.raft.election_ticks,
                heartbeat_ticks: self.raft.heartbeat_ticks,
                max_size_per_msg_bytes: self.raft.max_size_per_msg_bytes,
                max_inflight_msgs: self.raft.max_inflight_msgs,
                lease_ms: self.lease_ms(),
                ..PeerConfig::default()
            },
            sync_log: self.raft.sync_log,
            region_heartbeat_ticks: self.raft.region_heartbeat_ticks,
            split: self.split.split_config(),
            raft_log_gc_ticks: self.raft.raft_log_gc_ticks,
            raft_log_gc_threshold: self.raft.raft_log_gc_threshold,
            raft_log_gc_count_limit: self.raft.raft_log_gc_count_limit,
            quiet_regions: self.raft.quiet_regions,
            quiet_leader_ticks: self.raft.quiet_leader_ticks,
            region_heartbeat_quiet_ticks: self.raft.region_heartbeat_quiet_ticks,
            stale_peer_check_ticks: self.raft.stale_peer_check_ticks,
            apply_pool_size: self.raft.apply_pool_size,
            pollers: self
                .raft
                .pollers
                .unwrap_or_else(|| RaftStoreConfig::default().pollers),
            ..RaftStoreConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        NodeConfig::default().validate().unwrap();
        let mut c = NodeConfig::default();
        c.raft.election_ticks = 2;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("election_ticks"), "{err}");
        let parsed: Result<NodeConfig, _> = toml::from_str("no_such_option = 1");
        assert!(parsed.is_err());
        let parsed: NodeConfig = toml::from_str("[raft]\nelection_ticks = 20\n").unwrap();
        assert_eq!(parsed.raft.election_ticks, 20);
        assert_eq!(parsed.raft.heartbeat_ticks, 2);
    }
}
