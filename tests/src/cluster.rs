//! An in-process cluster for tests: placement members (one by default) and N nodes, each on
//! its own runtime,
//! on ephemeral loopback ports, sharing one [`NetFilter`] so tests can cut links.

use crate::debug;
use crate::wait_until;
use ringkv_client::{RawClient, RawConfig};
use ringkv_node::config::SplitSection;
use ringkv_node::{NetFilter, NodeConfig, NodeServer};
use ringkv_placement::{PlacementConfig, PlacementServer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How to build a [`TestCluster`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    pub nodes: usize,
    pub replicas: u32,
    pub tick_interval_ms: u64,
    pub split: SplitSection,
    /// `[raft]` log GC settings: ticks, threshold, count limit.
    pub log_gc: (u32, u64, u64),
    /// The placement driver's merge checker (default: the production limits, which merge
    /// nothing a test creates within its run).
    pub merge: ringkv_placement::merge_checker::MergeConfig,
    /// When the placement driver declares a silent store down and replaces its replicas.
    pub max_store_down_time_ms: i64,
    /// The placement driver's balance schedulers run (default false here, so tests that do
    /// not test them see leaders and replicas stay where they are).
    pub balance: bool,
    /// Placement members (default 1).
    pub placement_members: usize,
    /// An operator not done within this long is dropped and planned afresh (default: the
    /// production 10 minutes).
    pub operator_timeout_ms: i64,
    /// Store labels by node index (nodes past the end have none).
    pub labels: Vec<std::collections::BTreeMap<String, String>>,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            nodes: 3,
            replicas: 3,
            tick_interval_ms: 50,
            split: SplitSection::default(),
            log_gc: {
                let r = ringkv_node::config::RaftSection::default();
                (
                    r.raft_log_gc_ticks,
                    r.raft_log_gc_threshold,
                    r.raft_log_gc_count_limit,
                )
            },
            merge: Default::default(),
            max_store_down_time_ms: ringkv_placement::cluster::DEFAULT_MAX_STORE_DOWN_TIME_MS,
            balance: false,
            placement_members: 1,
            operator_timeout_ms: ringkv_placement::cluster::DEFAULT_OPERATOR_TIMEOUT_MS,
            labels: Vec::new(),
        }
    }
}

impl ClusterBuilder {
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// Regions split past `size_bytes`, checked often: for tests that want many splits.
    pub fn small_regions(mut self, size_bytes: u64) -> Self {
        self.split = SplitSection {
            region_split_size_bytes: size_bytes,
            split_check_diff_bytes: Some((size_bytes / 4).max(1)),
            split_check_ticks: 2,
            ..SplitSection::default()
        };
        self
    }

    /// Logs are compacted often and kept short, so a follower that misses ~`count_limit`
    /// entries needs a snapshot.
    pub fn eager_log_gc(mut self, count_limit: u64) -> Self {
        self.log_gc = (2, 5, count_limit);
        self
    }

    /// The placement driver merges regions of at most `size_bytes` (and whose union stays
    /// within it) into a neighbour soon after they last changed.
    pub fn auto_merge(mut self, size_bytes: u64) -> Self {
        self.merge = ringkv_placement::merge_checker::MergeConfig {
            merge_size_bytes_max: size_bytes,
            merge_keys_max: u64::MAX,
            split_merge_interval_ms: 500,
            merge_timeout_ms: 5_000,
        };
        self
    }

    /// Node `i` gets the labels of `zones[i]` as `zone`, and `host` = its index.
    pub fn zones(mut self, zones: &[&str]) -> Self {
        self.labels = zones
            .iter()
            .enumerate()
            .map(|(i, z)| {
                [
                    ("zone".to_string(), z.to_string()),
                    ("host".to_string(), format!("h{i}")),
                ]
                .into_iter()
                .collect()
            })
            .collect();
        self
    }

    /// A placement group of `n` members instead of one.
    pub fn placement_members(mut self, n: usize) -> Self {
        self.placement_members = n;
        self
    }

    pub fn start(self) -> TestCluster {
        TestCluster::start(self)
    }
}

struct NodeSlot {
    config: NodeConfig,
    server: Option<NodeServer>,
    store_id: u64,
    addr: SocketAddr,
}

/// A running in-process cluster. Nodes are numbered from 0 in start order.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    /// Placement members in name order (`pd-1`, `pd-2`, …); None while stopped.
    pd: Vec<Option<PlacementServer>>,
    pd_configs: Vec<PlacementConfig>,
    nodes: Vec<NodeSlot>,
    /// The configuration new nodes start from (data directory and port set per node).
    node_template: NodeConfig,
    pub filter: Arc<NetFilter>,
    /// Runtime for clients and debug calls of the test.
    pub rt: tokio::runtime::Runtime,
}

/// Starts node `i` from `template`, with its own data directory under `dir`.
fn start_node_slot(
    template: &NodeConfig,
    dir: &std::path::Path,
    i: usize,
    filter: &Arc<NetFilter>,
    labels: std::collections::BTreeMap<String, String>,
) -> NodeSlot {
    let mut config = NodeConfig {
        data_dir: dir.join(format!("node{i}")),
        labels,
        ..template.clone()
    };
    let server = NodeServer::start(config.clone(), filter.clone()).expect("node starts");
    // Restarts come back on the same port.
    config.listen_addr = server.addr();
    NodeSlot {
        store_id: server.store_id(),
        addr: server.addr(),
        config,
        server: Some(server),
    }
}

impl TestCluster {
    fn start(b: ClusterBuilder) -> Self {
        crate::init_test_logging();
        let dir = tempfile::tempdir().expect("temp dir");
        let template = PlacementConfig {
            listen_addr: "127.0.0.1:0".parse().unwrap(),
            replicas: b.replicas,
            merge_size_bytes_max: b.merge.merge_size_bytes_max,
            merge_keys_max: b.merge.merge_keys_max,
            split_merge_interval_ms: b.merge.split_merge_interval_ms,
            merge_timeout_ms: b.merge.merge_timeout_ms,
            max_store_down_time_ms: b.max_store_down_time_ms,
            operator_timeout_ms: b.operator_timeout_ms,
            balance_leader: b.balance,
            balance_region: b.balance,
            balance_hot_region: b.balance,
            schedule_interval_ms: 500,
            ..PlacementConfig::default()
        };
        let pd_configs: Vec<PlacementConfig> = if b.placement_members <= 1 {
            vec![PlacementConfig {
                data_dir: dir.path().join("placement"),
                ..template
            }]
        } else {
            // Members must know each other's ports before they start: take free ones.
            let addrs: Vec<SocketAddr> = (0..b.placement_members)
                .map(|_| {
                    std::net::TcpListener::bind("127.0.0.1:0")
                        .and_then(|l| l.local_addr())
                        .expect("a free port")
                })
                .collect();
            let members: Vec<String> = addrs
                .iter()
                .enumerate()
                .map(|(i, a)| format!("pd-{}={a}", i + 1))
                .collect();
            addrs
                .iter()
                .enumerate()
                .map(|(i, a)| PlacementConfig {
                    name: format!("pd-{}", i + 1),
                    data_dir: dir.path().join(format!("placement{}", i + 1)),
                    listen_addr: *a,
                    initial_members: members.clone(),
                    ..template.clone()
                })
                .collect()
        };
        let mut pd = Vec::new();
        for config in &pd_configs {
            pd.push(Some(
                PlacementServer::start(config.clone()).expect("placement starts"),
            ));
        }
        let mut pd_configs = pd_configs;
        for (config, server) in pd_configs.iter_mut().zip(&pd) {
            // Restarts come back on the same port.
            config.listen_addr = server.as_ref().expect("started").addr();
        }
        let pd_endpoints: Vec<String> = pd_configs
            .iter()
            .map(|c| c.listen_addr.to_string())
            .collect();
        let filter = NetFilter::new();
        let mut node_template = NodeConfig {
            listen_addr: "127.0.0.1:0".parse().unwrap(),
            placement_endpoints: pd_endpoints,
            store_heartbeat_ms: 200,
            gc_interval_ms: 200,
            resolved_ts_interval_ms: 100,
            ..NodeConfig::default()
        };
        node_template.raft.tick_interval_ms = b.tick_interval_ms;
        node_template.split = b.split.clone();
        // Quiet leaders report every second, so merge orders reach them within a test.
        node_template.raft.region_heartbeat_quiet_ticks = (1000 / b.tick_interval_ms.max(1)) as u32;
        // Followers without a leader (and quiet ones, in sweeps) ask whether they are still
        // members every 3 s, so a replica removed while cut off goes within a test.
        node_template.raft.stale_peer_check_ticks = (3000 / b.tick_interval_ms.max(1)) as u32;
        (
            node_template.raft.raft_log_gc_ticks,
            node_template.raft.raft_log_gc_threshold,
            node_template.raft.raft_log_gc_count_limit,
        ) = b.log_gc;
        let nodes = (0..b.nodes)
            .map(|i| {
                let labels = b.labels.get(i).cloned().unwrap_or_default();
                start_node_slot(&node_template, dir.path(), i, &filter, labels)
            })
            .collect();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test runtime");
        let cluster = TestCluster {
            dir,
            pd,
            pd_configs,
            nodes,
            node_template,
            filter,
            rt,
        };
        cluster.wait_for_leader(Duration::from_secs(30));
        cluster
    }

    /// Splits the default keyspace into `regions` regions (at `split01`, `split02`, …) and
    /// writes 200 keys (`key000` = `value0` …) over them.
    pub fn split_and_fill(&self, regions: usize) {
        let client = self.client();
        self.rt.block_on(async {
            for i in 1..regions {
                let at = format!("split{i:02}");
                client
                    .split_region(ringkv_proto::keys::encode(
                        &ringkv_proto::keys::default_keyspace(),
                        at.as_bytes(),
                    ))
                    .await
                    .expect("split");
            }
            for i in 0..200 {
                client
                    .put(format!("key{i:03}"), format!("value{i}"))
                    .await
                    .expect("put");
            }
        });
    }

    /// Asserts that every key [`TestCluster::split_and_fill`] wrote reads back.
    pub fn check_filled(&self) {
        let client = self.client();
        self.rt.block_on(async {
            for i in 0..200 {
                let v = client.get(format!("key{i:03}")).await.expect("read");
                assert_eq!(v, Some(format!("value{i}").into_bytes()), "key{i:03}");
            }
        });
    }

    /// Starts one more node (a new store); returns its index.
    pub fn add_node(&mut self) -> usize {
        self.add_node_with_labels(Default::default())
    }

    /// Starts one more node with store labels; returns its index.
    pub fn add_node_with_labels(
        &mut self,
        labels: std::collections::BTreeMap<String, String>,
    ) -> usize {
        let i = self.nodes.len();
        let slot = start_node_slot(
            &self.node_template,
            self.dir.path(),
            i,
            &self.filter,
            labels,
        );
        self.nodes.push(slot);
        i
    }

    /// The first placement member's address (the only one unless the cluster has several).
    pub fn pd_addr(&self) -> String {
        self.pd_configs[0].listen_addr.to_string()
    }

    /// Every placement member's address.
    pub fn pd_endpoints(&self) -> Vec<String> {
        self.pd_configs
            .iter()
            .map(|c| c.listen_addr.to_string())
            .collect()
    }

    /// The index of the placement member that serves now, if one does.
    pub fn placement_leader(&self) -> Option<usize> {
        let serving: Vec<usize> = (0..self.pd.len())
            .filter(|&i| self.pd[i].as_ref().is_some_and(|s| s.is_serving()))
            .collect();
        assert!(
            serving.len() <= 1,
            "placement members {serving:?} serve at the same time"
        );
        serving.first().copied()
    }

    /// Placement member `i`'s view of its group, if it runs.
    pub fn placement_status(&self, i: usize) -> Option<ringkv_placement::member::GroupStatus> {
        self.pd[i].as_ref().map(|s| s.group_status())
    }

    /// Stops placement member `i` (its data stays).
    pub fn stop_placement(&mut self, i: usize) {
        if let Some(server) = self.pd[i].take() {
            server.stop();
        }
    }

    /// Starts placement member `i` again from its data directory, on the same port.
    pub fn restart_placement(&mut self, i: usize) {
        assert!(self.pd[i].is_none(), "placement member {i} is running");
        self.pd[i] =
            Some(PlacementServer::start(self.pd_configs[i].clone()).expect("placement restarts"));
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// A placement client, for tests that inspect routing.
    pub fn pd(&self) -> ringkv_client::PdClient {
        self.rt
            .block_on(ringkv_client::PdClient::connect(&self.pd_endpoints()))
            .expect("placement client connects")
    }

    pub fn node_addr(&self, i: usize) -> String {
        self.nodes[i].addr.to_string()
    }

    pub fn store_id(&self, i: usize) -> u64 {
        self.nodes[i].store_id
    }

    pub fn store_ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.store_id).collect()
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].server.is_some()
    }

    /// A raw client with a 20 s deadline per call.
    pub fn client(&self) -> RawClient {
        let config = RawConfig {
            timeout: Duration::from_secs(20),
            attempt_timeout: Duration::from_secs(2),
            ..RawConfig::default()
        };
        self.rt
            .block_on(RawClient::connect_with_config(&self.pd_endpoints(), config))
            .expect("client connects")
    }

    /// A transactional client with a 20 s deadline per call.
    pub fn txn_client(&self) -> ringkv_client::TransactionClient {
        self.txn_client_with(ringkv_client::TxnConfig {
            timeout: Duration::from_secs(20),
            attempt_timeout: Duration::from_secs(2),
            ..Default::default()
        })
    }

    pub fn txn_client_with(
        &self,
        config: ringkv_client::TxnConfig,
    ) -> ringkv_client::TransactionClient {
        self.rt
            .block_on(ringkv_client::TransactionClient::connect_with_config(
                &self.pd_endpoints(),
                config,
            ))
            .expect("client connects")
    }

    /// Node `i`'s applied-state engine (it must be running).
    pub fn node_kv(&self, i: usize) -> std::sync::Arc<dyn ringkv_storage::KvEngine> {
        self.nodes[i]
            .server
            .as_ref()
            .expect("node is running")
            .kv_engine()
    }

    /// Stops node `i` (its data stays).
    pub fn stop_node(&mut self, i: usize) {
        if let Some(server) = self.nodes[i].server.take() {
            server.stop();
        }
    }

    /// Starts node `i` again from its data directory, on the same port.
    pub fn restart_node(&mut self, i: usize) {
        assert!(self.nodes[i].server.is_none(), "node {i} is running");
        let server = NodeServer::start(self.nodes[i].config.clone(), self.filter.clone())
            .expect("node restarts");
        assert_eq!(
            server.store_id(),
            self.nodes[i].store_id,
            "a restarted node keeps its store id"
        );
        self.nodes[i].addr = server.addr();
        self.nodes[i].server = Some(server);
    }

    /// Cuts node `i` off from every other node, both ways.
    pub fn isolate(&self, i: usize) {
        self.filter.isolate(self.store_id(i), &self.store_ids());
    }

    pub fn heal(&self) {
        self.filter.heal();
    }

    /// Index of the running node whose peer of the (only) first region leads it, if any node
    /// claims leadership and no other running node disagrees about the term.
    pub fn leader(&self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for (i, n) in self.nodes.iter().enumerate() {
            if n.server.is_none() {
                continue;
            }
            let regions = self.rt.block_on(debug::regions(&n.addr.to_string()))?;
            for r in regions {
                if r.is_leader && best.is_none_or(|(t, _)| r.term > t) {
                    best = Some((r.term, i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// Waits until some node leads the region.
    pub fn wait_for_leader(&self, limit: Duration) -> usize {
        wait_until("a region leader", limit, || self.leader())
    }

    /// Index of a node whose peer leads the region and is not node `old`.
    pub fn wait_for_new_leader(&self, old: usize, limit: Duration) -> usize {
        wait_until("a new leader", limit, || {
            let mut found = None;
            for i in 0..self.nodes.len() {
                if i == old || !self.is_running(i) {
                    continue;
                }
                let regions = self.rt.block_on(debug::regions(&self.node_addr(i)))?;
                if regions.iter().any(|r| r.is_leader) {
                    found = Some(i);
                }
            }
            found
        })
    }

    /// The value of user `key` (default keyspace) in node `i`'s local state.
    pub fn local_get(&self, i: usize, key: &[u8]) -> Option<Vec<u8>> {
        let encoded = ringkv_proto::keys::encode(&ringkv_proto::keys::default_keyspace(), key);
        self.rt
            .block_on(debug::local_get(&self.node_addr(i), &encoded))
            .expect("node answers debug calls")
    }

    /// Node `i`'s view of region `region_id`, if it has the region.
    pub fn region_info(
        &self,
        i: usize,
        region_id: u64,
    ) -> Option<ringkv_proto::raftpb::RegionInfoResponse> {
        self.rt
            .block_on(debug::regions(&self.node_addr(i)))?
            .into_iter()
            .find(|r| r.region.as_ref().is_some_and(|r| r.id == region_id))
    }

    /// Waits until every running node has `key` = `value` locally.
    pub fn wait_replicated(&self, key: &[u8], value: &[u8], limit: Duration) {
        for i in 0..self.nodes.len() {
            if !self.is_running(i) {
                continue;
            }
            wait_until(
                &format!("node {i} to apply key {:?}", String::from_utf8_lossy(key)),
                limit,
                || (self.local_get(i, key).as_deref() == Some(value)).then_some(()),
            );
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(s) = n.server.take() {
                s.stop();
            }
        }
        for pd in &mut self.pd {
            if let Some(pd) = pd.take() {
                pd.stop();
            }
        }
    }
}
