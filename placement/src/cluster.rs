//! The placement core: everything the placement driver knows and decides, as a pure state
//! machine. Every mutating call takes the current time as an input and records what must be
//! persisted in a [`MetaWrites`]; the edge writes those (syncing when asked) before it replies.

use crate::balance::{self, BalanceConfig, ClusterView, RegionLoad};
use crate::gc_safe_point::GcSafePoints;
use crate::hot_region::{self, FlowRate, HotRegion};
use crate::id::IdAllocator;
use crate::merge_checker::{self, Candidate, MergeConfig, MergesInFlight, RegionStats};
use crate::meta_store::keys;
use crate::tso::{TsBatch, Tso, TSO_BATCH_MAX};
use crate::PlacementError;
use prost::Message;
use ringkv_proto::kvrpcpb::{Keyspace, KeyspaceMode};
use ringkv_proto::metapb::{
    ConfChangeKind, Peer, PeerRole, Region, RegionEpoch, Store, StoreState,
};
use ringkv_proto::pdpb::{
    KeyspaceMeta, OperatorInfo, RegionFlow, RegionHealth, RegionHeartbeatRequest, ScheduleConfig,
    StoreStats,
};
use std::collections::{BTreeMap, HashMap};

use crate::replica_checker::{self, Operator, ReplicaConfig, Step, StoreView};

/// A store silent this long is down and its replicas are replaced: 30 minutes, as PD's.
pub const DEFAULT_MAX_STORE_DOWN_TIME_MS: i64 = 1_800_000;
/// An operator not done within this long is dropped: 10 minutes.
pub const DEFAULT_OPERATOR_TIMEOUT_MS: i64 = 600_000;
/// A leader transfer not done within this long is dropped (it holds a scheduling slot).
pub const LEADER_OPERATOR_TIMEOUT_MS: i64 = 30_000;
/// Regions one store heartbeat answer asks the store to wake, at most.
pub const WAKE_REGIONS_MAX: usize = 1024;
/// Leader transfers in flight at most while evict-leader schedulers run (evicting is urgent:
/// an admin waits on it to restart a store).
pub const EVICT_LEADER_LIMIT: usize = 64;
/// A region with more replicas than configured keeps them this long before one is removed: an
/// operator that timed out half way leaves one, and so may an admin's change in progress.
pub const EXTRA_REPLICA_GRACE_MS: i64 = 60_000;
/// A store silent this long takes no new leaders or replicas from the balancers.
pub const STORE_DISCONNECTED_MS: i64 = 20_000;

/// A region's reported flow older than this counts as none (a quiet region reports at least
/// once a minute, with its flow since the previous report).
pub const FLOW_STALE_MS: i64 = 120_000;
/// Flow rates are taken over at least this long, so a report right after the previous one
/// does not turn a few bytes into a large rate.
const FLOW_INTERVAL_MIN_MS: u64 = 1000;

/// How far behind now the GC safe point trails by default: 10 minutes.
pub const DEFAULT_GC_LIFE_TIME_MS: i64 = 600_000;

/// Writes the core asks the edge to persist.
#[derive(Default, Debug)]
pub struct MetaWrites {
    pub puts: Vec<(Vec<u8>, Vec<u8>)>,
    pub deletes: Vec<Vec<u8>>,
    /// The writes guard an invariant across restarts (ids, timestamps, bootstrap): sync them
    /// before replying.
    pub sync: bool,
}

impl MetaWrites {
    pub(crate) fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.puts.push((key, value));
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.deletes.push(key);
    }

    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty()
    }
}

/// A store as the placement driver sees it.
#[derive(Debug, Clone)]
pub struct StoreInfo {
    pub store: Store,
    pub stats: Option<StoreStats>,
    pub last_heartbeat_ms: i64,
}

/// A region and the leader last reported for it.
#[derive(Debug, Clone)]
pub struct RegionInfo {
    pub region: Region,
    pub leader: Option<Peer>,
    /// Raft term of the leader report; a report from an older term never replaces a newer one.
    pub term: u64,
    /// Size and health as last measured at this epoch (None until a leader reports them).
    pub stats: Option<RegionStats>,
    /// When the placement driver first heard of the region's current range.
    pub range_since_ms: Option<i64>,
    /// Read and write flow per second from the leader's last report, and when it came.
    pub flow: Option<(FlowRate, i64)>,
    /// Since when the region (at this membership) has had more replicas than configured.
    pub extra_replicas_since_ms: Option<i64>,
    /// Replicas the leader last reported as still catching up (peer ids), whether or not it
    /// had measured the region: a learner is promoted only once it is not among them.
    pub pending_peers: Vec<u64>,
}

impl RegionInfo {
    /// The region's flow if reported lately.
    pub fn flow_now(&self, now_ms: i64) -> Option<FlowRate> {
        self.flow
            .filter(|(_, at)| now_ms - at < FLOW_STALE_MS)
            .map(|(f, _)| f)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the placement driver restores from its metadata store on start.
#[derive(Debug, Default)]
pub struct PersistedState {
    pub id_limit: u64,
    pub tso_limit_ms: i64,
    pub gc_safe_point: u64,
    pub bootstrap_region: Option<Region>,
    pub stores: Vec<Store>,
    pub regions: Vec<Region>,
    pub keyspaces: Vec<KeyspaceMeta>,
    /// Scheduling settings changed at runtime; they win over the configuration file.
    pub schedule_config: Option<ScheduleConfig>,
}

/// The keyspace every cluster has.
pub const DEFAULT_KEYSPACE_NAME: &str = "default";
/// Keyspace names: 1..=64 bytes of letters, digits, `-` and `_`.
const KEYSPACE_NAME_BYTES_MAX: usize = 64;

/// An operator an admin asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminOperator {
    /// Leadership to the region's voter on `to_store`.
    TransferLeader { to_store: u64 },
    /// The replica on `from_store` to `to_store`: add a learner there, promote it, remove the
    /// old replica.
    MovePeer { from_store: u64, to_store: u64 },
    /// Split at encoded `key`, or where the data halves when `key` is empty.
    Split { key: Vec<u8> },
    /// Merge into the adjacent region `target` (both with replicas on the same stores).
    Merge { target: u64 },
}

impl AdminOperator {
    /// The kind as the admin CLI names it.
    pub fn kind(&self) -> &'static str {
        match self {
            AdminOperator::TransferLeader { .. } => "transfer-leader",
            AdminOperator::MovePeer { .. } => "move-peer",
            AdminOperator::Split { .. } => "split",
            AdminOperator::Merge { .. } => "merge",
        }
    }
}

/// The placement driver's state machine.
pub struct PlacementCore {
    cluster_id: u64,
    replicas: u32,
    ids: IdAllocator,
    tso: Tso,
    stores: BTreeMap<u64, StoreInfo>,
    regions: HashMap<u64, RegionInfo>,
    /// Region start key -> region id: the routing table.
    region_tree: BTreeMap<Vec<u8>, u64>,
    bootstrap_region: Option<Region>,
    /// Keyspaces by name (the default one included).
    keyspaces: BTreeMap<String, KeyspaceMeta>,
    merge_config: MergeConfig,
    merges: MergesInFlight,
    gc: GcSafePoints,
    replica_cfg: ReplicaConfig,
    /// Operators in flight, by region.
    operators: BTreeMap<u64, Operator>,
    balance_cfg: BalanceConfig,
    /// Stores with an evict-leader scheduler.
    evict_leader_stores: std::collections::BTreeSet<u64>,
    /// Replica repair plans nothing new (an admin paused it).
    replica_repair_paused: bool,
    /// The merge checker orders nothing (an admin paused it).
    merge_checker_paused: bool,
    /// The store labels placement spreads replicas over, most significant first.
    location_labels: Vec<String>,
    /// Settings an admin changed at runtime, applied over the file's by
    /// [`PlacementCore::apply_persisted_schedule`].
    persisted_schedule: Option<ScheduleConfig>,
    /// When this core was loaded (a start, or a placement leader taking over): a store not
    /// heard from since counts as heard from then, so a new leader does not declare every
    /// store down before their first heartbeats reach it.
    loaded_at_ms: i64,
}

/// What the balance schedulers see now (see [`balance`]): regions borrowed, not copied.
fn cluster_view<'a>(
    stores: &BTreeMap<u64, StoreInfo>,
    regions: &'a HashMap<u64, RegionInfo>,
    operators: &BTreeMap<u64, Operator>,
    merges: &MergesInFlight,
    replicas: u32,
    now_ms: i64,
) -> ClusterView<'a> {
    let mut view = ClusterView {
        schedulable: stores
            .values()
            .filter(|s| {
                // Registered is not enough: the store must have reported (see
                // `StoreView::reported`).
                s.store.state == StoreState::Up as i32
                    && s.stats.is_some()
                    && now_ms - s.last_heartbeat_ms < STORE_DISCONNECTED_MS
            })
            .map(|s| s.store.id)
            .collect(),
        ..Default::default()
    };
    let mut ids: Vec<u64> = regions.keys().copied().collect();
    ids.sort_unstable();
    // Summed in hash maps (a few hundred thousand updates at scale), handed over ordered.
    let mut scores: HashMap<u64, u64> = HashMap::new();
    let mut leaders: HashMap<u64, u64> = HashMap::new();
    for id in ids {
        let info = &regions[&id];
        let score = balance::region_score(info.stats.as_ref().map(|s| s.size_bytes));
        for p in &info.region.peers {
            *scores.entry(p.store_id).or_default() += score;
        }
        let Some(leader) = info.leader else { continue };
        *leaders.entry(leader.store_id).or_default() += 1;
        // Every replica a caught-up voter on a schedulable store: a move or a leader transfer
        // never starts from (or lands on) a replica that is still catching up.
        let healthy = info.region.peers.len() == replicas as usize
            && info.pending_peers.is_empty()
            && info.region.peers.iter().all(|p| {
                p.role == PeerRole::Voter as i32 && view.schedulable.contains(&p.store_id)
            });
        if healthy && !operators.contains_key(&id) && !merges.involves(id) {
            view.movable.push(RegionLoad {
                region: &info.region,
                leader,
                score,
            });
        }
    }
    view.region_scores = scores.into_iter().collect();
    view.leaders = leaders.into_iter().collect();
    view
}

/// A step as an admin reads it.
fn describe_step(step: &Step) -> String {
    match *step {
        Step::ChangePeer { kind, peer } => {
            let what = match kind {
                ConfChangeKind::AddLearner => "add learner",
                ConfChangeKind::AddVoter => "promote",
                ConfChangeKind::Remove => "remove",
            };
            format!("{what} peer {} on store {}", peer.id, peer.store_id)
        }
        Step::TransferLeader { to } => {
            format!("transfer leader to peer {} on store {}", to.id, to.store_id)
        }
        Step::Split { ref key, .. } if key.is_empty() => "split where the data halves".into(),
        Step::Split { ref key, .. } => format!("split at key {}", hex(key)),
        Step::Merge { target } => format!("merge into region {target}"),
    }
}

/// The most labels a store may carry.
const STORE_LABELS_MAX: usize = 32;

/// A label name or value: 1 to 64 letters, digits, '-', '_' or '.'.
fn valid_label(t: &str) -> bool {
    (1..=64).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// A store's address: `host:port`, at most 255 bytes, with a port that is a number.
fn check_store_address(store_id: u64, address: &str) -> Result<(), PlacementError> {
    let port_ok = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
    if address.len() > 255 || !port_ok {
        return Err(PlacementError::InvalidArgument(format!(
            "store {store_id} address {address:?} is not host:port"
        )));
    }
    Ok(())
}

/// The most peers a region reported to the placement driver may list.
const REGION_PEERS_MAX: usize = 16;

/// Checks that a region a node reports is well formed before it can reach routing: an id, an
/// epoch, a range that is not inverted, keys of a sane length, and 1..=[`REGION_PEERS_MAX`]
/// peers with ids, each on its own store (a store holds at most one peer of a region).
fn check_region_shape(region: &Region) -> Result<(), PlacementError> {
    let bad = |what: String| {
        Err(PlacementError::InvalidArgument(format!(
            "region {}: {what}",
            region.id
        )))
    };
    if region.id == 0 {
        return bad("region id 0 is reserved".into());
    }
    if region.region_epoch.is_none() {
        return bad("no epoch".into());
    }
    let key_max = ringkv_proto::limits::KEY_BYTES_MAX + ringkv_proto::keys::HASH_PREFIX_LEN;
    if region.start_key.len() > key_max || region.end_key.len() > key_max {
        return bad(format!("a boundary key is longer than {key_max} bytes"));
    }
    if !region.end_key.is_empty() && region.start_key >= region.end_key {
        return bad("its range is empty or inverted".into());
    }
    if region.peers.is_empty() || region.peers.len() > REGION_PEERS_MAX {
        return bad(format!(
            "{} peers; a region has 1..={REGION_PEERS_MAX}",
            region.peers.len()
        ));
    }
    let mut stores = std::collections::HashSet::new();
    for p in &region.peers {
        if p.id == 0 || p.store_id == 0 {
            return bad(format!(
                "peer {} on store {}: ids 0 are reserved",
                p.id, p.store_id
            ));
        }
        if PeerRole::try_from(p.role).is_err() {
            return bad(format!("peer {} has unknown role {}", p.id, p.role));
        }
        if !stores.insert(p.store_id) {
            return bad(format!("two peers on store {}", p.store_id));
        }
    }
    Ok(())
}

fn epoch_of(region: &Region) -> (u64, u64) {
    let e = region.region_epoch.unwrap_or_default();
    (e.version, e.conf_ver)
}

impl PlacementCore {
    pub fn new(
        cluster_id: u64,
        replicas: u32,
        tso_save_window_ms: i64,
        state: PersistedState,
    ) -> Self {
        assert!(cluster_id != 0, "cluster id 0 is reserved for 'unknown'");
        let mut core = PlacementCore {
            cluster_id,
            replicas,
            ids: IdAllocator::new(state.id_limit),
            tso: Tso::new(state.tso_limit_ms, tso_save_window_ms),
            stores: BTreeMap::new(),
            regions: HashMap::new(),
            region_tree: BTreeMap::new(),
            bootstrap_region: state.bootstrap_region,
            keyspaces: BTreeMap::new(),
            merge_config: MergeConfig::default(),
            merges: MergesInFlight::default(),
            replica_cfg: ReplicaConfig {
                replicas,
                max_store_down_time_ms: DEFAULT_MAX_STORE_DOWN_TIME_MS,
                operator_timeout_ms: DEFAULT_OPERATOR_TIMEOUT_MS,
            },
            operators: BTreeMap::new(),
            balance_cfg: BalanceConfig::default(),
            evict_leader_stores: Default::default(),
            replica_repair_paused: false,
            merge_checker_paused: false,
            location_labels: Vec::new(),
            persisted_schedule: state.schedule_config,
            loaded_at_ms: 0,
            gc: GcSafePoints::new(state.gc_safe_point, DEFAULT_GC_LIFE_TIME_MS),
        };
        core.keyspaces.insert(
            DEFAULT_KEYSPACE_NAME.into(),
            KeyspaceMeta {
                name: DEFAULT_KEYSPACE_NAME.into(),
                keyspace: Some(ringkv_proto::keys::default_keyspace()),
            },
        );
        for ks in state.keyspaces {
            core.keyspaces.insert(ks.name.clone(), ks);
        }
        for store in state.stores {
            core.stores.insert(
                store.id,
                StoreInfo {
                    store,
                    stats: None,
                    last_heartbeat_ms: 0,
                },
            );
        }
        // Oldest first, so a region persisted before a split that replaced it cannot win.
        let mut regions = state.regions;
        regions.sort_by_key(epoch_of);
        let mut ignored = MetaWrites::default();
        for region in regions {
            core.upsert_region(region, None, 0, &mut ignored);
        }
        core
    }

    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// Records when this core was loaded (see `loaded_at_ms`).
    pub fn set_loaded_at(&mut self, now_ms: i64) {
        self.loaded_at_ms = now_ms;
    }

    /// When the placement driver last heard from `store`, or loaded, whichever is later.
    fn heard_ms(&self, store: &StoreInfo) -> i64 {
        store.last_heartbeat_ms.max(self.loaded_at_ms)
    }

    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    pub fn is_bootstrapped(&self) -> bool {
        self.bootstrap_region.is_some()
    }

    pub fn store_count(&self) -> usize {
        self.stores.len()
    }

    pub fn region_count(&self) -> usize {
        self.regions.len()
    }

    /// Checks that a request names this cluster (0 is allowed only for first contact).
    pub fn check_cluster(&self, cluster_id: u64) -> Result<(), PlacementError> {
        if cluster_id != 0 && cluster_id != self.cluster_id {
            return Err(PlacementError::ClusterMismatch {
                expected: self.cluster_id,
                got: cluster_id,
            });
        }
        Ok(())
    }

    pub fn alloc_ids(
        &mut self,
        count: u32,
        writes: &mut MetaWrites,
    ) -> Result<u64, PlacementError> {
        if count == 0 || count > 10_000 {
            return Err(PlacementError::InvalidArgument(format!(
                "id count {count} is outside 1..=10000"
            )));
        }
        let (first, new_limit) = self.ids.alloc(count);
        if let Some(limit) = new_limit {
            writes.put(keys::ID_LIMIT.to_vec(), limit.to_be_bytes().to_vec());
            writes.sync = true;
        }
        Ok(first)
    }

    pub fn tso(
        &mut self,
        count: u32,
        now_ms: i64,
        writes: &mut MetaWrites,
    ) -> Result<TsBatch, PlacementError> {
        if count == 0 || count > TSO_BATCH_MAX {
            return Err(PlacementError::InvalidArgument(format!(
                "timestamp count {count} is outside 1..={TSO_BATCH_MAX}"
            )));
        }
        let (batch, new_limit) = self.tso.allocate(count, now_ms);
        if let Some(limit) = new_limit {
            writes.put(keys::TSO_LIMIT.to_vec(), limit.to_be_bytes().to_vec());
            writes.sync = true;
        }
        Ok(batch)
    }

    /// Registers a store or updates its address and labels. Bootstraps the cluster once enough
    /// stores are up. Returns the regions the store must create at their bootstrap state.
    pub fn put_store(
        &mut self,
        store: Store,
        now_ms: i64,
        writes: &mut MetaWrites,
    ) -> Result<Vec<Region>, PlacementError> {
        if store.id == 0 {
            return Err(PlacementError::InvalidArgument(
                "store id 0 is reserved".into(),
            ));
        }
        check_store_address(store.id, &store.address)?;
        if store.labels.len() > STORE_LABELS_MAX {
            return Err(PlacementError::InvalidArgument(format!(
                "store {} has {} labels; the limit is {STORE_LABELS_MAX}",
                store.id,
                store.labels.len()
            )));
        }
        for (k, v) in &store.labels {
            if !valid_label(k) || !valid_label(v) {
                return Err(PlacementError::InvalidArgument(format!(
                    "store {} label {k:?}={v:?}: names and values are 1 to 64 letters, digits, '-', '_' or '.'",
                    store.id
                )));
            }
        }
        let mut store = store;
        if let Some(existing) = self.stores.get(&store.id) {
            if existing.store.state == StoreState::Tombstone as i32 {
                return Err(PlacementError::StoreTombstone { store_id: store.id });
            }
            // A restart does not undo a decommission.
            store.state = existing.store.state;
            // Labels an admin set stay unless the node configures the same key.
            for (k, v) in &existing.store.labels {
                store.labels.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        if let Some(other) = self.stores.values().find(|s| {
            s.store.address == store.address
                && s.store.id != store.id
                && s.store.state != StoreState::Tombstone as i32
        }) {
            // Two live stores at one address means two data directories fight for one port.
            if now_ms - other.last_heartbeat_ms < 60_000 && other.last_heartbeat_ms != 0 {
                return Err(PlacementError::InvalidArgument(format!(
                    "address {} is already used by live store {}",
                    store.address, other.store.id
                )));
            }
        }
        writes.put(keys::store(store.id), store.encode_to_vec());
        writes.sync = true;
        let id = store.id;
        let entry = self.stores.entry(id).or_insert(StoreInfo {
            store: store.clone(),
            stats: None,
            last_heartbeat_ms: now_ms,
        });
        entry.store = store;
        entry.last_heartbeat_ms = now_ms;
        self.maybe_bootstrap(writes)?;
        Ok(self.bootstrap_regions_for(id))
    }

    fn maybe_bootstrap(&mut self, writes: &mut MetaWrites) -> Result<(), PlacementError> {
        if self.bootstrap_region.is_some() {
            return Ok(());
        }
        let up: Vec<u64> = self
            .stores
            .values()
            .filter(|s| s.store.state == StoreState::Up as i32)
            .map(|s| s.store.id)
            .take(self.replicas as usize)
            .collect();
        if up.len() < self.replicas as usize {
            return Ok(());
        }
        let first = self.alloc_ids(1 + self.replicas, writes)?;
        let peers = up
            .iter()
            .enumerate()
            .map(|(i, store_id)| Peer {
                id: first + 1 + i as u64,
                store_id: *store_id,
                role: PeerRole::Voter as i32,
            })
            .collect();
        let region = Region {
            id: first,
            start_key: Vec::new(),
            end_key: Vec::new(),
            region_epoch: Some(RegionEpoch {
                conf_ver: 1,
                version: 1,
            }),
            peers,
        };
        writes.put(keys::BOOTSTRAP.to_vec(), region.encode_to_vec());
        writes.sync = true;
        self.upsert_region(region.clone(), None, 0, writes);
        self.bootstrap_region = Some(region);
        Ok(())
    }

    fn bootstrap_regions_for(&self, store_id: u64) -> Vec<Region> {
        self.bootstrap_region
            .iter()
            .filter(|r| r.peers.iter().any(|p| p.store_id == store_id))
            .cloned()
            .collect()
    }

    pub fn get_store(&self, store_id: u64) -> Result<&StoreInfo, PlacementError> {
        self.stores
            .get(&store_id)
            .ok_or(PlacementError::StoreNotFound { store_id })
    }

    pub fn stores(&self) -> impl Iterator<Item = &StoreInfo> {
        self.stores.values()
    }

    pub fn store_heartbeat(
        &mut self,
        stats: StoreStats,
        now_ms: i64,
    ) -> Result<Vec<Region>, PlacementError> {
        let store_id = stats.store_id;
        let info = self
            .stores
            .get_mut(&store_id)
            .ok_or(PlacementError::StoreNotFound { store_id })?;
        if info.store.state == StoreState::Tombstone as i32 {
            return Err(PlacementError::StoreTombstone { store_id });
        }
        info.stats = Some(stats);
        info.last_heartbeat_ms = now_ms;
        Ok(self.bootstrap_regions_for(store_id))
    }

    /// What the placement driver knows of a region's health now.
    pub fn region_health(&self, info: &RegionInfo, now_ms: i64) -> RegionHealth {
        let down_peer_ids = info
            .region
            .peers
            .iter()
            .filter(|p| {
                self.stores
                    .get(&p.store_id)
                    .is_none_or(|s| now_ms - self.heard_ms(s) >= STORE_DISCONNECTED_MS)
            })
            .map(|p| p.id)
            .collect();
        let stats = info.stats.as_ref();
        let flow = info.flow_now(now_ms).unwrap_or_default();
        RegionHealth {
            measured: stats.is_some(),
            approximate_size_bytes: stats.map_or(0, |s| s.size_bytes),
            approximate_keys: stats.map_or(0, |s| s.keys),
            pending_peers: info.pending_peers.len() as u32,
            down_peer_ids,
            read_bytes_per_sec: flow.read_bytes,
            read_keys_per_sec: flow.read_keys,
            written_bytes_per_sec: flow.written_bytes,
            written_keys_per_sec: flow.written_keys,
        }
    }

    /// Regions led from `store_id` whose operator waits for their next report (at most
    /// [`WAKE_REGIONS_MAX`]).
    pub fn regions_to_wake(&self, store_id: u64) -> Vec<u64> {
        self.operators
            .keys()
            .filter(|id| {
                self.regions
                    .get(id)
                    .and_then(|i| i.leader)
                    .is_some_and(|l| l.store_id == store_id)
            })
            .take(WAKE_REGIONS_MAX)
            .copied()
            .collect()
    }

    /// Takes a leader's report of its region. A report with an older epoch than what is known
    /// is ignored; a newer one replaces every region it overlaps.
    pub fn region_heartbeat(
        &mut self,
        region: Region,
        leader: Option<Peer>,
        term: u64,
        writes: &mut MetaWrites,
    ) -> Result<(), PlacementError> {
        check_region_shape(&region)?;
        if let Some(l) = &leader {
            if !region
                .peers
                .iter()
                .any(|p| p.id == l.id && p.store_id == l.store_id)
            {
                return Err(PlacementError::InvalidArgument(format!(
                    "region {}: leader peer {} on store {} is not one of its peers",
                    region.id, l.id, l.store_id
                )));
            }
        }
        if let Some(known) = self.regions.get_mut(&region.id) {
            if epoch_of(&region) == epoch_of(&known.region)
                && known.region.start_key == region.start_key
                && known.region.end_key == region.end_key
            {
                if term >= known.term {
                    known.leader = leader;
                    known.term = term;
                }
                return Ok(());
            }
        }
        self.upsert_region(region, leader, term, writes);
        Ok(())
    }

    /// Sets the merge checker's limits.
    /// How far behind now the GC safe point trails on its own (0: only set by hand).
    pub fn set_gc_life_time_ms(&mut self, life_time_ms: i64) {
        self.gc.set_life_time_ms(life_time_ms);
    }

    /// The GC safe point, advanced first when the life time allows.
    pub fn gc_safe_point(&mut self, now_ms: i64, writes: &mut MetaWrites) -> u64 {
        self.gc.current(now_ms, writes)
    }

    /// Sets the GC safe point by hand (the admin CLI).
    pub fn set_gc_safe_point(
        &mut self,
        safe_point: u64,
        now_ms: i64,
        writes: &mut MetaWrites,
    ) -> Result<u64, PlacementError> {
        self.gc
            .set_by_hand(safe_point, now_ms, self.tso.last(), writes)
    }

    /// A client's oldest running start_ts (see [`GcSafePoints::update_service`]).
    pub fn update_service_gc_safe_point(
        &mut self,
        service_id: &str,
        safe_point: u64,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<u64, PlacementError> {
        self.gc
            .update_service(service_id, safe_point, ttl_ms, now_ms)
    }

    pub fn set_merge_config(&mut self, cfg: MergeConfig) {
        self.merge_config = cfg;
    }

    /// Takes a leader's flow since its previous report: per-second rates, averaged with the
    /// previous report's when that is recent, so one burst does not make a region hot.
    pub fn region_flow(&mut self, region_id: u64, flow: &RegionFlow, now_ms: i64) {
        let Some(info) = self.regions.get_mut(&region_id) else {
            return;
        };
        let interval = flow.interval_ms.max(FLOW_INTERVAL_MIN_MS);
        let rate = |count: u64| (u128::from(count) * 1000 / u128::from(interval)) as u64;
        let measured = FlowRate {
            read_bytes: rate(flow.read_bytes),
            read_keys: rate(flow.read_keys),
            written_bytes: rate(flow.written_bytes),
            written_keys: rate(flow.written_keys),
        };
        let averaged = match info.flow {
            Some((old, at)) if now_ms - at < FLOW_STALE_MS => FlowRate {
                read_bytes: old.read_bytes / 2 + measured.read_bytes / 2,
                read_keys: old.read_keys / 2 + measured.read_keys / 2,
                written_bytes: old.written_bytes / 2 + measured.written_bytes / 2,
                written_keys: old.written_keys / 2 + measured.written_keys / 2,
            },
            _ => measured,
        };
        info.flow = Some((averaged, now_ms));
    }

    /// Takes the figures of a leader's report of its region (at the epoch it reported just
    /// before): its size when measured, and the replicas still catching up.
    pub fn region_stats(&mut self, report: &RegionHeartbeatRequest, now_ms: i64) {
        let Some(region_id) = report.region.as_ref().map(|r| r.id) else {
            return;
        };
        if let Some(info) = self.regions.get_mut(&region_id) {
            info.stats = report.stats_known.then_some(RegionStats {
                size_bytes: report.approximate_size_bytes,
                keys: report.approximate_keys,
                pending_peers: report.pending_peers.len(),
            });
            info.pending_peers = report.pending_peers.iter().map(|p| p.id).collect();
            info.range_since_ms.get_or_insert(now_ms);
        }
    }

    /// Whether `region_id` should merge into a neighbour now (see [`merge_checker`]); the
    /// order is recorded so it is not given twice at once.
    /// Starts decommissioning `store_id`: its replicas move to other stores, then it becomes a
    /// tombstone. Refused when too few other stores would be left for the replica count.
    pub fn decommission_store(
        &mut self,
        store_id: u64,
        writes: &mut MetaWrites,
    ) -> Result<Store, PlacementError> {
        let replicas = self.replicas as usize;
        let others = self
            .stores
            .values()
            .filter(|s| s.store.id != store_id && s.store.state == StoreState::Up as i32)
            .count();
        let info = self
            .stores
            .get_mut(&store_id)
            .ok_or(PlacementError::StoreNotFound { store_id })?;
        if info.store.state == StoreState::Tombstone as i32 {
            return Err(PlacementError::StoreTombstone { store_id });
        }
        if info.store.state == StoreState::Up as i32 {
            if others < replicas {
                return Err(PlacementError::InvalidArgument(format!(
                    "store {store_id} cannot be decommissioned: only {others} other stores would hold {replicas} replicas; add a store first"
                )));
            }
            info.store.state = StoreState::Offline as i32;
            writes.put(keys::store(store_id), info.store.encode_to_vec());
            writes.sync = true;
            tracing::info!(
                store = store_id,
                "store decommissioning: its replicas move away"
            );
        }
        Ok(info.store.clone())
    }

    /// Marks a decommissioning store a tombstone once no region has a replica on it.
    pub fn finish_decommission(&mut self, store_id: u64, writes: &mut MetaWrites) {
        let offline = self
            .stores
            .get(&store_id)
            .is_some_and(|s| s.store.state == StoreState::Offline as i32);
        if !offline
            || self
                .regions
                .values()
                .any(|r| r.region.peers.iter().any(|p| p.store_id == store_id))
        {
            return;
        }
        let info = self.stores.get_mut(&store_id).expect("checked");
        info.store.state = StoreState::Tombstone as i32;
        writes.put(keys::store(store_id), info.store.encode_to_vec());
        writes.sync = true;
        tracing::info!(store = store_id, "store decommissioned: now a tombstone");
    }

    /// Sets how replicas are repaired (down time, operator timeout).
    /// The store labels replicas are spread over, most significant first (e.g. zone, rack,
    /// host); empty: labels are ignored.
    pub fn set_location_labels(&mut self, keys: Vec<String>) {
        self.location_labels = keys;
    }

    fn store_location(&self, store: &StoreInfo) -> Vec<String> {
        crate::location::location(&store.store.labels, &self.location_labels)
    }

    /// Whether any store carries a location label (else placement ignores locations).
    fn locations_in_use(&self) -> bool {
        !self.location_labels.is_empty()
            && self.stores.values().any(|s| {
                self.location_labels
                    .iter()
                    .any(|k| s.store.labels.get(k).is_some_and(|v| !v.is_empty()))
            })
    }

    /// The replica checker's view of the stores (`counts`: replicas per store, when the
    /// choice between equally placed stores matters).
    fn store_views(
        &self,
        counts: Option<&BTreeMap<u64, usize>>,
        with_locations: bool,
    ) -> BTreeMap<u64, StoreView> {
        self.stores
            .values()
            .map(|s| {
                (
                    s.store.id,
                    StoreView {
                        id: s.store.id,
                        last_heartbeat_ms: self.heard_ms(s),
                        region_count: counts
                            .and_then(|c| c.get(&s.store.id))
                            .copied()
                            .unwrap_or(0),
                        tombstone: s.store.state == StoreState::Tombstone as i32,
                        offline: s.store.state == StoreState::Offline as i32,
                        reported: s.stats.is_some(),
                        location: if with_locations {
                            self.store_location(s)
                        } else {
                            Vec::new()
                        },
                    },
                )
            })
            .collect()
    }

    pub fn set_replica_timing(&mut self, max_store_down_time_ms: i64, operator_timeout_ms: i64) {
        self.replica_cfg.max_store_down_time_ms = max_store_down_time_ms;
        self.replica_cfg.operator_timeout_ms = operator_timeout_ms;
    }

    /// Operators in flight.
    pub fn operators(&self) -> impl Iterator<Item = &Operator> {
        self.operators.values()
    }

    pub fn set_balance_config(&mut self, cfg: BalanceConfig) {
        self.balance_cfg = cfg;
    }

    pub fn balance_config(&self) -> BalanceConfig {
        self.balance_cfg
    }

    /// What the leader of `region_id` should do now, if anything: the next step of the
    /// region's operator, planning a repair first when the region has a down peer or too few
    /// replicas. An operator is dropped once the region shows every step done, or when it
    /// times out (a leader transfer after [`LEADER_OPERATOR_TIMEOUT_MS`] at most).
    pub fn operator_step(
        &mut self,
        region_id: u64,
        now_ms: i64,
        writes: &mut MetaWrites,
    ) -> Option<Step> {
        let info = self.regions.get(&region_id)?;
        let (region, leader) = (info.region.clone(), info.leader);
        let pending = info.pending_peers.clone();
        if let Some(op) = self.operators.get(&region_id) {
            let timeout = if op.is_leader_transfer() {
                self.replica_cfg
                    .operator_timeout_ms
                    .min(LEADER_OPERATOR_TIMEOUT_MS)
            } else {
                self.replica_cfg.operator_timeout_ms
            };
            if now_ms - op.created_ms > timeout {
                tracing::warn!(region = region_id, reason = %op.reason, "operator timed out");
                self.operators.remove(&region_id);
                return None;
            }
            match op.next_step(&region, leader.as_ref()) {
                // A learner is promoted once it has caught up (the leader's last report does
                // not list it as pending), so the region never gains a voter that cannot vote
                // yet, nor one on a store that never answers.
                Some(Step::ChangePeer {
                    kind: ConfChangeKind::AddVoter,
                    peer,
                }) if pending.contains(&peer.id) => return None,
                Some(step) => return Some(step),
                None => {
                    tracing::info!(region = region_id, reason = %op.reason, "operator finished");
                    self.operators.remove(&region_id);
                    return None;
                }
            }
        }
        if self.replica_repair_paused {
            return None;
        }
        let cfg = self.replica_cfg;
        let extra_since = match self.regions.get_mut(&region_id) {
            Some(info) if region.peers.len() > cfg.replicas as usize => {
                *info.extra_replicas_since_ms.get_or_insert(now_ms)
            }
            Some(info) => {
                info.extra_replicas_since_ms = None;
                now_ms
            }
            None => now_ms,
        };
        let needs_look = region.peers.len() < cfg.replicas as usize
            || (region.peers.len() > cfg.replicas as usize
                && now_ms - extra_since >= EXTRA_REPLICA_GRACE_MS)
            || region.peers.iter().any(|p| {
                self.stores.get(&p.store_id).is_none_or(|s| {
                    s.store.state != StoreState::Up as i32
                        || now_ms - self.heard_ms(s) >= cfg.max_store_down_time_ms
                })
            });
        let with_locations = self.locations_in_use();
        // A healthy region is looked at again only if a store would spread it better
        // (decided without counting replicas per store, which costs a pass over the regions).
        let spread = !needs_look
            && with_locations
            && pending.is_empty()
            && region.peers.len() == cfg.replicas as usize
            && region
                .peers
                .iter()
                .all(|p| p.role == PeerRole::Voter as i32)
            && replica_checker::improve_isolation(
                &region,
                &self.store_views(None, true),
                &cfg,
                now_ms,
                &mut || 0,
            )
            .is_some();
        if !needs_look && !spread {
            return None;
        }
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for info in self.regions.values() {
            for p in &info.region.peers {
                *counts.entry(p.store_id).or_default() += 1;
            }
        }
        let stores = self.store_views(Some(&counts), with_locations);
        let ids = &mut self.ids;
        let mut new_peer_id = || {
            let (id, new_limit) = ids.alloc(1);
            if let Some(limit) = new_limit {
                writes.put(keys::ID_LIMIT.to_vec(), limit.to_be_bytes().to_vec());
                writes.sync = true;
            }
            id
        };
        let op = if needs_look {
            replica_checker::check_region(&region, &stores, &cfg, now_ms, &mut new_peer_id)?
        } else {
            replica_checker::improve_isolation(&region, &stores, &cfg, now_ms, &mut new_peer_id)?
        };
        tracing::info!(region = region_id, reason = %op.reason, steps = op.steps.len(), "operator created");
        let step = op.next_step(&region, leader.as_ref());
        self.operators.insert(region_id, op);
        step
    }

    /// One round of the balance schedulers: plans operators within the in-flight limits;
    /// returns the regions it started operators for.
    pub fn schedule(&mut self, now_ms: i64, writes: &mut MetaWrites) -> Vec<u64> {
        let cfg = self.balance_cfg;
        if !cfg.balance_leader
            && !cfg.balance_region
            && !cfg.balance_hot_region
            && self.evict_leader_stores.is_empty()
        {
            return Vec::new();
        }
        let mut view = cluster_view(
            &self.stores,
            &self.regions,
            &self.operators,
            &self.merges,
            self.replicas,
            now_ms,
        );
        view.leader_refused = self.evict_leader_stores.clone();
        if self.locations_in_use() {
            view.locations = self
                .stores
                .values()
                .map(|s| (s.store.id, self.store_location(s)))
                .collect();
        }
        let leader_ops = self
            .operators
            .values()
            .filter(|o| o.is_leader_transfer())
            .count();
        let region_ops = self.operators.len() - leader_ops;
        let mut planned = Vec::new();
        if !self.evict_leader_stores.is_empty() {
            let mut ids: Vec<u64> = self
                .regions
                .iter()
                .filter(|(id, info)| {
                    info.leader
                        .is_some_and(|l| self.evict_leader_stores.contains(&l.store_id))
                        && !self.operators.contains_key(id)
                        && !self.merges.involves(**id)
                        && info.pending_peers.is_empty()
                })
                .map(|(id, _)| *id)
                .collect();
            ids.sort_unstable();
            let led: Vec<RegionLoad<'_>> = ids
                .iter()
                .filter_map(|id| {
                    let info = &self.regions[id];
                    Some(RegionLoad {
                        region: &info.region,
                        leader: info.leader?,
                        score: 1,
                    })
                })
                .collect();
            let budget = EVICT_LEADER_LIMIT.saturating_sub(leader_ops);
            planned.extend(balance::evict_leaders(&view, &led, budget, now_ms));
            // The balancers leave the regions just given an operator alone.
            let evicting: std::collections::BTreeSet<u64> =
                planned.iter().map(|o| o.region_id).collect();
            view.movable.retain(|r| !evicting.contains(&r.region.id));
        }
        if cfg.balance_hot_region {
            let in_flight = self
                .operators
                .values()
                .filter(|o| o.reason.starts_with("hot-region"))
                .count();
            let budget = cfg.hot_region_schedule_limit.saturating_sub(in_flight);
            if budget > 0 {
                let movable: std::collections::BTreeSet<u64> =
                    view.movable.iter().map(|r| r.region.id).collect();
                let mut hot: Vec<HotRegion<'_>> = self
                    .regions
                    .values()
                    .filter_map(|info| {
                        let flow = info.flow_now(now_ms)?;
                        let min = cfg.hot_region_min_bytes_per_sec;
                        (flow.read_bytes >= min || flow.written_bytes >= min).then_some(HotRegion {
                            region: &info.region,
                            leader: info.leader?,
                            flow,
                            movable: movable.contains(&info.region.id),
                        })
                    })
                    .collect();
                hot.sort_by_key(|h| h.region.id);
                let ids = &mut self.ids;
                let hot_ops = hot_region::balance_hot_regions(
                    &view,
                    &hot,
                    cfg.hot_region_min_bytes_per_sec,
                    cfg.tolerance_ratio,
                    budget,
                    now_ms,
                    &mut || {
                        let (id, new_limit) = ids.alloc(1);
                        if let Some(limit) = new_limit {
                            writes.put(keys::ID_LIMIT.to_vec(), limit.to_be_bytes().to_vec());
                            writes.sync = true;
                        }
                        id
                    },
                );
                let moving: std::collections::BTreeSet<u64> =
                    hot_ops.iter().map(|o| o.region_id).collect();
                view.movable.retain(|r| !moving.contains(&r.region.id));
                planned.extend(hot_ops);
            }
        }
        let leader_ops = leader_ops + planned.len();
        if cfg.balance_region {
            let budget = cfg.region_schedule_limit.saturating_sub(region_ops);
            let ids = &mut self.ids;
            planned.extend(balance::balance_regions(
                &view,
                &cfg,
                budget,
                now_ms,
                &mut || {
                    let (id, new_limit) = ids.alloc(1);
                    if let Some(limit) = new_limit {
                        writes.put(keys::ID_LIMIT.to_vec(), limit.to_be_bytes().to_vec());
                        writes.sync = true;
                    }
                    id
                },
            ));
        }
        if cfg.balance_leader {
            let budget = cfg.leader_schedule_limit.saturating_sub(leader_ops);
            let moving: std::collections::BTreeSet<u64> =
                planned.iter().map(|o| o.region_id).collect();
            planned.extend(
                balance::balance_leaders(&view, &cfg, budget, now_ms)
                    .into_iter()
                    .filter(|o| !moving.contains(&o.region_id)),
            );
        }
        self.start_operators(planned)
    }

    fn start_operators(&mut self, planned: Vec<Operator>) -> Vec<u64> {
        let mut started = Vec::with_capacity(planned.len());
        for op in planned {
            tracing::info!(region = op.region_id, reason = %op.reason, steps = op.steps.len(), "operator created");
            started.push(op.region_id);
            self.operators.insert(op.region_id, op);
        }
        started
    }

    /// Sets labels of `store_id` (an empty value removes the label); persisted. Label names
    /// and values are 1..=64 bytes of letters, digits, `-`, `_` and `.`.
    pub fn set_store_labels(
        &mut self,
        store_id: u64,
        labels: &std::collections::HashMap<String, String>,
        writes: &mut MetaWrites,
    ) -> Result<Store, PlacementError> {
        if labels.is_empty() {
            return Err(PlacementError::InvalidArgument(
                "no label given: pass KEY=VALUE (or KEY= to remove one)".into(),
            ));
        }
        for (k, v) in labels {
            if !valid_label(k) || (!v.is_empty() && !valid_label(v)) {
                return Err(PlacementError::InvalidArgument(format!(
                    "label {k:?}={v:?}: names and values are 1 to 64 letters, digits, '-', '_' or '.'"
                )));
            }
        }
        let info = self
            .stores
            .get_mut(&store_id)
            .ok_or(PlacementError::StoreNotFound { store_id })?;
        if info.store.state == StoreState::Tombstone as i32 {
            return Err(PlacementError::StoreTombstone { store_id });
        }
        for (k, v) in labels {
            if v.is_empty() {
                info.store.labels.remove(k);
            } else {
                info.store.labels.insert(k.clone(), v.clone());
            }
        }
        writes.put(keys::store(store_id), info.store.encode_to_vec());
        writes.sync = true;
        tracing::info!(store = store_id, labels = ?info.store.labels, "store labels changed");
        Ok(info.store.clone())
    }

    /// Adds (`evict`) or removes the evict-leader scheduler of `store_id`; persisted with the
    /// scheduling settings.
    pub fn set_evict_leader(
        &mut self,
        store_id: u64,
        evict: bool,
        writes: &mut MetaWrites,
    ) -> Result<ScheduleConfig, PlacementError> {
        if evict {
            let store = self.get_store(store_id)?;
            if store.store.state == StoreState::Tombstone as i32 {
                return Err(PlacementError::StoreTombstone { store_id });
            }
            self.evict_leader_stores.insert(store_id);
        } else if !self.evict_leader_stores.remove(&store_id) {
            return Err(PlacementError::InvalidArgument(format!(
                "store {store_id} has no evict-leader scheduler (see `ringkv-ctl scheduler list`)"
            )));
        }
        let c = self.schedule_config();
        writes.put(keys::SCHEDULE_CONFIG.to_vec(), c.encode_to_vec());
        writes.sync = true;
        tracing::info!(store = store_id, evict, "evict-leader scheduler changed");
        Ok(c)
    }

    /// The runtime-changeable scheduling settings now in force.
    pub fn schedule_config(&self) -> ScheduleConfig {
        let b = self.balance_cfg;
        ScheduleConfig {
            balance_leader: b.balance_leader,
            balance_region: b.balance_region,
            leader_schedule_limit: b.leader_schedule_limit as u64,
            region_schedule_limit: b.region_schedule_limit as u64,
            balance_tolerance_ratio: b.tolerance_ratio,
            max_store_down_time_ms: self.replica_cfg.max_store_down_time_ms,
            operator_timeout_ms: self.replica_cfg.operator_timeout_ms,
            evict_leader_stores: self.evict_leader_stores.iter().copied().collect(),
            balance_hot_region: b.balance_hot_region,
            hot_region_schedule_limit: b.hot_region_schedule_limit as u64,
            hot_region_min_bytes_per_sec: b.hot_region_min_bytes_per_sec,
            replica_repair_paused: self.replica_repair_paused,
            merge_checker_paused: self.merge_checker_paused,
            replicas: self.replicas,
        }
    }

    /// Puts settings an admin changed at runtime (persisted) over those from the file.
    pub fn apply_persisted_schedule(&mut self) {
        if let Some(c) = self.persisted_schedule.take() {
            self.use_schedule_config(&c);
        }
    }

    fn use_schedule_config(&mut self, c: &ScheduleConfig) {
        self.balance_cfg = BalanceConfig {
            balance_leader: c.balance_leader,
            balance_region: c.balance_region,
            leader_schedule_limit: c.leader_schedule_limit as usize,
            region_schedule_limit: c.region_schedule_limit as usize,
            tolerance_ratio: c.balance_tolerance_ratio,
            balance_hot_region: c.balance_hot_region,
            hot_region_schedule_limit: c.hot_region_schedule_limit as usize,
            hot_region_min_bytes_per_sec: c.hot_region_min_bytes_per_sec,
        };
        self.replica_cfg.max_store_down_time_ms = c.max_store_down_time_ms;
        self.replica_cfg.operator_timeout_ms = c.operator_timeout_ms;
        self.evict_leader_stores = c.evict_leader_stores.iter().copied().collect();
        self.replica_repair_paused = c.replica_repair_paused;
        self.merge_checker_paused = c.merge_checker_paused;
        if c.replicas != 0 {
            self.replicas = c.replicas;
            self.replica_cfg.replicas = c.replicas;
        }
    }

    /// Sets one scheduling setting by name (a field of [`ScheduleConfig`]) from text, checked
    /// as the configuration file is; persisted.
    pub fn set_schedule_config(
        &mut self,
        key: &str,
        value: &str,
        writes: &mut MetaWrites,
    ) -> Result<ScheduleConfig, PlacementError> {
        let bad =
            |why: String| PlacementError::InvalidArgument(format!("{key} = {value:?}: {why}"));
        let boolean = || {
            value
                .parse::<bool>()
                .map_err(|_| bad("give true or false".into()))
        };
        let ranged = |lo: i64, hi: i64| {
            value
                .parse::<i64>()
                .ok()
                .filter(|v| (lo..=hi).contains(v))
                .ok_or_else(|| bad(format!("give a whole number in {lo}..={hi}")))
        };
        let mut c = self.schedule_config();
        match key {
            "balance_leader" => c.balance_leader = boolean()?,
            "balance_region" => c.balance_region = boolean()?,
            "leader_schedule_limit" => c.leader_schedule_limit = ranged(0, 1024)? as u64,
            "region_schedule_limit" => c.region_schedule_limit = ranged(0, 1024)? as u64,
            "balance_tolerance_ratio" => {
                c.balance_tolerance_ratio = value
                    .parse::<f64>()
                    .ok()
                    .filter(|v| (0.0..=1.0).contains(v))
                    .ok_or_else(|| bad("give a fraction in 0.0..=1.0".into()))?
            }
            "balance_hot_region" => c.balance_hot_region = boolean()?,
            "replica_repair" => c.replica_repair_paused = !boolean()?,
            "merge_checker" => c.merge_checker_paused = !boolean()?,
            "replicas" => {
                let n = ranged(1, 7)? as u32;
                let up = self
                    .stores
                    .values()
                    .filter(|s| s.store.state == StoreState::Up as i32)
                    .count();
                if n as usize > up {
                    return Err(bad(format!(
                        "only {up} stores are up; add stores before asking for {n} replicas"
                    )));
                }
                c.replicas = n
            }
            "hot_region_schedule_limit" => c.hot_region_schedule_limit = ranged(0, 1024)? as u64,
            "hot_region_min_bytes_per_sec" => {
                c.hot_region_min_bytes_per_sec = ranged(1, 1 << 40)? as u64
            }
            "max_store_down_time_ms" => c.max_store_down_time_ms = ranged(1000, 604_800_000)?,
            "operator_timeout_ms" => c.operator_timeout_ms = ranged(1000, 86_400_000)?,
            _ => {
                return Err(PlacementError::InvalidArgument(format!(
                    "unknown setting {key:?}; settable: replicas, replica_repair, merge_checker, balance_leader, balance_region, balance_hot_region, leader_schedule_limit, region_schedule_limit, hot_region_schedule_limit, hot_region_min_bytes_per_sec, balance_tolerance_ratio, max_store_down_time_ms, operator_timeout_ms"
                )))
            }
        }
        self.use_schedule_config(&c);
        writes.put(keys::SCHEDULE_CONFIG.to_vec(), c.encode_to_vec());
        writes.sync = true;
        tracing::info!(key, value, "scheduling setting changed");
        Ok(c)
    }

    /// Operators in flight, described.
    pub fn operator_infos(&self) -> Vec<OperatorInfo> {
        self.operators
            .values()
            .map(|op| self.describe(op))
            .collect()
    }

    fn describe(&self, op: &Operator) -> OperatorInfo {
        let info = self.regions.get(&op.region_id);
        let next = info.and_then(|i| op.next_step(&i.region, i.leader.as_ref()));
        OperatorInfo {
            region_id: op.region_id,
            reason: op.reason.clone(),
            steps: op.steps.iter().map(describe_step).collect(),
            next_step: next.as_ref().map(describe_step).unwrap_or_default(),
            created_ms: op.created_ms,
        }
    }

    /// Drops the operator of `region_id` (an admin's cancel); steps already made stay made.
    pub fn cancel_operator(&mut self, region_id: u64) -> Result<(), PlacementError> {
        if !self.operators.contains_key(&region_id) {
            return Err(PlacementError::InvalidArgument(format!(
                "region {region_id} has no operator in flight (see `ringkv-ctl operator list`)"
            )));
        }
        self.cancel_operators(&[region_id]);
        Ok(())
    }

    /// An admin's operator (see [`AdminOperator`]), checked against what the placement
    /// driver knows of the region now.
    pub fn add_operator(
        &mut self,
        region_id: u64,
        wanted: AdminOperator,
        now_ms: i64,
        writes: &mut MetaWrites,
    ) -> Result<OperatorInfo, PlacementError> {
        let bad = PlacementError::InvalidArgument;
        let info = self.regions.get(&region_id).ok_or_else(|| {
            bad(format!(
                "no region {region_id} (see `ringkv-ctl region list`)"
            ))
        })?;
        if self.operators.contains_key(&region_id) {
            return Err(bad(format!(
                "region {region_id} already has an operator in flight; cancel it first"
            )));
        }
        let region = info.region.clone();
        let leader = info.leader;
        let target_up = |core: &Self, store: u64| -> Result<(), PlacementError> {
            match core.stores.get(&store) {
                Some(s) if s.store.state == StoreState::Up as i32 => Ok(()),
                Some(_) => Err(bad(format!(
                    "store {store} is decommissioning or a tombstone; it takes nothing"
                ))),
                None => Err(PlacementError::StoreNotFound { store_id: store }),
            }
        };
        let kind = wanted.kind();
        let steps = match wanted {
            AdminOperator::TransferLeader { to_store } => {
                let to = *region
                    .peers
                    .iter()
                    .find(|p| p.store_id == to_store && p.role == PeerRole::Voter as i32)
                    .ok_or_else(|| {
                        bad(format!(
                            "region {region_id} has no voter on store {to_store}"
                        ))
                    })?;
                if leader.is_some_and(|l| l.id == to.id) {
                    return Err(bad(format!(
                        "store {to_store} already leads region {region_id}"
                    )));
                }
                vec![Step::TransferLeader { to }]
            }
            AdminOperator::MovePeer {
                from_store,
                to_store,
            } => {
                let from = *region
                    .peers
                    .iter()
                    .find(|p| p.store_id == from_store)
                    .ok_or_else(|| {
                        bad(format!(
                            "region {region_id} has no replica on store {from_store}"
                        ))
                    })?;
                if region.peers.iter().any(|p| p.store_id == to_store) {
                    return Err(bad(format!(
                        "region {region_id} already has a replica on store {to_store}"
                    )));
                }
                target_up(self, to_store)?;
                let (id, new_limit) = self.ids.alloc(1);
                if let Some(limit) = new_limit {
                    writes.put(keys::ID_LIMIT.to_vec(), limit.to_be_bytes().to_vec());
                    writes.sync = true;
                }
                replica_checker::move_replica_steps(id, to_store, from)
            }
            AdminOperator::Split { key } => {
                let inside = key.as_slice() > region.start_key.as_slice()
                    && (region.end_key.is_empty() || key.as_slice() < region.end_key.as_slice());
                if !key.is_empty() && !inside {
                    return Err(bad(format!(
                        "key {} is not inside region {region_id} (its start key or outside [{}, {})); a split key must fall strictly inside the region",
                        hex(&key),
                        hex(&region.start_key),
                        hex(&region.end_key)
                    )));
                }
                let version = region.region_epoch.unwrap_or_default().version;
                vec![Step::Split { version, key }]
            }
            AdminOperator::Merge { target } => {
                let into = self.regions.get(&target).ok_or_else(|| {
                    bad(format!("no region {target} (see `ringkv-ctl region list`)"))
                })?;
                let adjacent = (!into.region.end_key.is_empty()
                    && into.region.end_key == region.start_key)
                    || (!region.end_key.is_empty() && region.end_key == into.region.start_key);
                if target == region_id || !adjacent {
                    return Err(bad(format!(
                        "regions {region_id} and {target} are not adjacent; a region merges into the one just before or after it"
                    )));
                }
                if !ringkv_proto::region::same_stores(&region, &into.region) {
                    let stores = |r: &Region| {
                        let mut v: Vec<u64> = r.peers.iter().map(|p| p.store_id).collect();
                        v.sort_unstable();
                        v
                    };
                    return Err(bad(format!(
                        "region {region_id} has replicas on stores {:?} but region {target} on {:?}; move replicas first (`operator add move-peer`) so both are on the same stores",
                        stores(&region),
                        stores(&into.region)
                    )));
                }
                if self.operators.contains_key(&target)
                    || self.merges.involves(target)
                    || self.merges.involves(region_id)
                {
                    return Err(bad(format!(
                        "region {target} is being moved or merged; wait for its operator or cancel it"
                    )));
                }
                self.merges.record(
                    region_id,
                    target,
                    now_ms + self.replica_cfg.operator_timeout_ms,
                );
                vec![Step::Merge { target }]
            }
        };
        let op = Operator {
            region_id,
            steps,
            created_ms: now_ms,
            reason: format!("admin: {kind}"),
        };
        tracing::info!(region = region_id, reason = %op.reason, "operator created");
        let described = self.describe(&op);
        self.operators.insert(region_id, op);
        Ok(described)
    }

    /// Drops the operators of `regions` (what they allocated could not be persisted, or an
    /// admin cancelled them).
    pub fn cancel_operators(&mut self, regions: &[u64]) {
        for id in regions {
            if let Some(op) = self.operators.remove(id) {
                if op.steps.iter().any(|s| matches!(s, Step::Merge { .. })) {
                    self.merges.forget(*id);
                }
                tracing::info!(region = id, reason = %op.reason, "operator cancelled");
            }
        }
    }

    pub fn merge_order(&mut self, region_id: u64, now_ms: i64) -> Option<Region> {
        self.merges.expire(now_ms);
        if self.merge_checker_paused {
            return None;
        }
        let info = self.regions.get(&region_id)?;
        if self.merges.involves(region_id) {
            return None;
        }
        fn candidate(i: &RegionInfo) -> Candidate<'_> {
            Candidate {
                region: &i.region,
                stats: i.stats,
                range_since_ms: i.range_since_ms,
            }
        }
        let prev = self
            .region_tree
            .range(..info.region.start_key.clone())
            .next_back()
            .and_then(|(_, id)| self.regions.get(id))
            .filter(|p| !self.merges.involves(p.region.id));
        let next = (!info.region.end_key.is_empty())
            .then(|| self.region_by_key(&info.region.end_key))
            .flatten()
            .filter(|n| !self.merges.involves(n.region.id));
        let target = merge_checker::merge_target(
            &candidate(info),
            prev.map(candidate).as_ref(),
            next.map(candidate).as_ref(),
            &self.merge_config,
            now_ms,
        )?
        .clone();
        self.merges.record(
            region_id,
            target.id,
            now_ms + self.merge_config.merge_timeout_ms,
        );
        Some(target)
    }

    /// Creates keyspace `name`, ordered by `mode`, with the next free id.
    pub fn create_keyspace(
        &mut self,
        name: &str,
        mode: i32,
        writes: &mut MetaWrites,
    ) -> Result<KeyspaceMeta, PlacementError> {
        let valid_name = !name.is_empty()
            && name.len() <= KEYSPACE_NAME_BYTES_MAX
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            return Err(PlacementError::InvalidArgument(format!(
                "keyspace name {name:?} must be 1..={KEYSPACE_NAME_BYTES_MAX} letters, digits, '-' or '_'"
            )));
        }
        if KeyspaceMode::try_from(mode).is_err() {
            return Err(PlacementError::InvalidArgument(format!(
                "keyspace mode {mode} is neither hash nor range"
            )));
        }
        if let Some(existing) = self.keyspaces.get(name) {
            return Err(PlacementError::KeyspaceExists {
                name: name.into(),
                id: existing.keyspace.map(|k| k.id).unwrap_or(0),
            });
        }
        let id = self
            .keyspaces
            .values()
            .filter_map(|k| k.keyspace.map(|k| k.id))
            .max()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| PlacementError::InvalidArgument("no keyspace id left".into()))?;
        let meta = KeyspaceMeta {
            name: name.into(),
            keyspace: Some(Keyspace { id, mode }),
        };
        writes.put(keys::keyspace(id), meta.encode_to_vec());
        writes.sync = true;
        self.keyspaces.insert(name.into(), meta.clone());
        Ok(meta)
    }

    pub fn keyspace(&self, name: &str) -> Result<&KeyspaceMeta, PlacementError> {
        self.keyspaces
            .get(name)
            .ok_or_else(|| PlacementError::KeyspaceNotFound { name: name.into() })
    }

    /// Allocates the ids a split of `region` needs: the new region's and one per peer.
    pub fn ask_split(
        &mut self,
        region: &Region,
        writes: &mut MetaWrites,
    ) -> Result<(u64, Vec<u64>), PlacementError> {
        // The shape check also refuses a region without peers.
        check_region_shape(region)?;
        if let Some(known) = self.regions.get(&region.id) {
            let (k, r) = (epoch_of(&known.region), epoch_of(region));
            if r.0 < k.0 || r.1 < k.1 {
                return Err(PlacementError::StaleRegion {
                    region_id: region.id,
                });
            }
        }
        let count = 1 + region.peers.len() as u32;
        let first = self.alloc_ids(count, writes)?;
        let peer_ids = (first + 1..first + u64::from(count)).collect();
        Ok((first, peer_ids))
    }

    /// Takes a leader's report of a split it applied: both halves replace the parent at once.
    pub fn report_split(
        &mut self,
        left: Region,
        right: Region,
        leader: Option<Peer>,
        term: u64,
        writes: &mut MetaWrites,
    ) -> Result<(), PlacementError> {
        check_region_shape(&left)?;
        check_region_shape(&right)?;
        if left.end_key != right.start_key || left.end_key.is_empty() {
            return Err(PlacementError::InvalidArgument(format!(
                "split report of regions {} and {} is not adjacent",
                left.id, right.id
            )));
        }
        // The left half keeps the parent's leader; the right half's leader reports itself.
        self.upsert_region(left, leader, term, writes);
        self.upsert_region(right, None, 0, writes);
        Ok(())
    }

    /// Ids of regions whose range overlaps `[start, end)`.
    fn overlapping(&self, start: &[u8], end: &[u8]) -> Vec<u64> {
        let first = self
            .region_tree
            .range(..=start.to_vec())
            .next_back()
            .map(|(s, _)| s.clone())
            .unwrap_or_default();
        self.region_tree
            .range(first..)
            .take_while(|(s, _)| end.is_empty() || s.as_slice() < end)
            .filter_map(|(_, id)| self.regions.get(id))
            .filter(|r| {
                ringkv_proto::keys::ranges_overlap(
                    &r.region.start_key,
                    &r.region.end_key,
                    start,
                    end,
                )
            })
            .map(|r| r.region.id)
            .collect()
    }

    /// Puts `region` into the routing table unless something newer already covers part of
    /// it; every older region it overlaps is dropped (split and merge leave them behind).
    /// Returns whether it was taken.
    fn upsert_region(
        &mut self,
        region: Region,
        leader: Option<Peer>,
        term: u64,
        writes: &mut MetaWrites,
    ) -> bool {
        let new_epoch = epoch_of(&region);
        if let Some(known) = self.regions.get(&region.id) {
            let known_epoch = epoch_of(&known.region);
            if new_epoch.0 < known_epoch.0 || new_epoch.1 < known_epoch.1 {
                return false;
            }
        }
        let overlapping: Vec<u64> = self
            .overlapping(&region.start_key, &region.end_key)
            .into_iter()
            .filter(|id| *id != region.id)
            .collect();
        if overlapping.iter().any(|id| {
            self.regions[id]
                .region
                .region_epoch
                .unwrap_or_default()
                .version
                > new_epoch.0
        }) {
            return false;
        }
        for id in overlapping {
            if let Some(old) = self.regions.remove(&id) {
                self.region_tree.remove(&old.region.start_key);
                writes.delete(keys::region(id));
                self.merges.forget(id);
                // Its operator is done (a merge) or moot (the region is gone).
                if let Some(op) = self.operators.remove(&id) {
                    tracing::info!(region = id, reason = %op.reason, "operator finished: the region was merged away");
                }
            }
        }
        let mut range_since_ms = None;
        let mut stats = None;
        let mut flow = None;
        if let Some(old) = self.regions.get(&region.id) {
            if self.region_tree.get(&old.region.start_key) == Some(&region.id) {
                self.region_tree.remove(&old.region.start_key);
            }
            if old.region.start_key == region.start_key && old.region.end_key == region.end_key {
                range_since_ms = old.range_since_ms;
                flow = old.flow;
                if epoch_of(&old.region) == new_epoch {
                    stats = old.stats;
                }
            }
        }
        writes.put(keys::region(region.id), region.encode_to_vec());
        self.region_tree.insert(region.start_key.clone(), region.id);
        self.regions.insert(
            region.id,
            RegionInfo {
                region,
                leader,
                term,
                stats,
                range_since_ms,
                flow,
                extra_replicas_since_ms: None,
                pending_peers: Vec::new(),
            },
        );
        true
    }

    /// The region containing encoded `key`.
    pub fn region_by_key(&self, key: &[u8]) -> Option<&RegionInfo> {
        let (_, id) = self.region_tree.range(..=key.to_vec()).next_back()?;
        let info = self.regions.get(id)?;
        ringkv_proto::keys::in_range(key, &info.region.start_key, &info.region.end_key)
            .then_some(info)
    }

    pub fn region_by_id(&self, region_id: u64) -> Option<&RegionInfo> {
        self.regions.get(&region_id)
    }

    /// Regions overlapping `[start, end)` (empty `end`: unbounded) in key order, at most `limit`.
    pub fn scan_regions(&self, start: &[u8], end: &[u8], limit: usize) -> Vec<&RegionInfo> {
        let first_start = self
            .region_by_key(start)
            .map(|r| r.region.start_key.clone())
            .unwrap_or_else(|| start.to_vec());
        self.region_tree
            .range(first_start..)
            .take_while(|(s, _)| end.is_empty() || s.as_slice() < end)
            .filter_map(|(_, id)| self.regions.get(id))
            .take(limit)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(id: u64) -> Store {
        Store {
            id,
            address: format!("127.0.0.1:{}", 20000 + id),
            ..Default::default()
        }
    }

    fn core(replicas: u32) -> PlacementCore {
        PlacementCore::new(42, replicas, 3000, PersistedState::default())
    }

    #[test]
    fn bootstraps_once_enough_stores_registered() {
        let mut pd = core(3);
        let mut w = MetaWrites::default();
        assert!(pd.put_store(store(1), 0, &mut w).unwrap().is_empty());
        assert!(pd.put_store(store(2), 0, &mut w).unwrap().is_empty());
        assert!(!pd.is_bootstrapped());
        let regions = pd.put_store(store(3), 0, &mut w).unwrap();
        assert!(pd.is_bootstrapped());
        assert_eq!(regions.len(), 1);
        let region = &regions[0];
        assert_eq!(region.peers.len(), 3);
        assert!(region.start_key.is_empty() && region.end_key.is_empty());
        let mut ids: Vec<u64> = region.peers.iter().map(|p| p.id).collect();
        ids.push(region.id);
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 4, "region and peer ids are distinct");
        assert!(w.sync);
        // Store 4 joins later: it hosts no bootstrap peer.
        assert!(pd.put_store(store(4), 0, &mut w).unwrap().is_empty());
        assert_eq!(
            pd.store_heartbeat(
                StoreStats {
                    store_id: 2,
                    ..Default::default()
                },
                1
            )
            .unwrap()
            .len(),
            1
        );
        assert!(pd.region_by_key(b"hanything").is_some());
    }

    #[test]
    fn stale_region_heartbeats_are_ignored() {
        let mut pd = core(1);
        let mut w = MetaWrites::default();
        let region = pd.put_store(store(1), 0, &mut w).unwrap().remove(0);
        let leader = region.peers[0];
        pd.region_heartbeat(region.clone(), Some(leader), 7, &mut w)
            .unwrap();
        pd.region_heartbeat(region.clone(), None, 6, &mut w)
            .unwrap();
        assert_eq!(pd.region_by_id(region.id).unwrap().leader, Some(leader));
        let mut older = region.clone();
        older.region_epoch = Some(RegionEpoch {
            conf_ver: 0,
            version: 0,
        });
        older.end_key = b"m".to_vec();
        pd.region_heartbeat(older, None, 8, &mut w).unwrap();
        assert!(pd
            .region_by_id(region.id)
            .unwrap()
            .region
            .end_key
            .is_empty());
    }

    #[test]
    fn a_store_is_asked_to_wake_the_regions_it_leads_whose_operator_waits() {
        let mut pd = core(3);
        let mut w = MetaWrites::default();
        pd.put_store(store(1), 0, &mut w).unwrap();
        pd.put_store(store(2), 0, &mut w).unwrap();
        let region = pd.put_store(store(3), 0, &mut w).unwrap().remove(0);
        let leader = region.peers[0];
        pd.region_heartbeat(region.clone(), Some(leader), 7, &mut w)
            .unwrap();
        assert!(pd.regions_to_wake(leader.store_id).is_empty());
        let other = region.peers[1].store_id;
        pd.add_operator(
            region.id,
            AdminOperator::TransferLeader { to_store: other },
            0,
            &mut w,
        )
        .unwrap();
        assert_eq!(pd.regions_to_wake(leader.store_id), vec![region.id]);
        assert!(
            pd.regions_to_wake(other).is_empty(),
            "only the leader's store"
        );
        pd.cancel_operator(region.id).unwrap();
        assert!(pd.regions_to_wake(leader.store_id).is_empty());
    }

    /// A bootstrapped three-store core whose first region is split in two at `m` (ids 100+),
    /// with leaders on store 1: (core, left, right).
    /// Store `id` registers and reports once (at time 0).
    fn join(pd: &mut PlacementCore, id: u64, w: &mut MetaWrites) {
        pd.put_store(store(id), 0, w).unwrap();
        pd.store_heartbeat(
            StoreStats {
                store_id: id,
                ..Default::default()
            },
            0,
        )
        .unwrap();
    }

    /// A leader's report of `region` led by its first peer, listing `pending` as catching up.
    fn report(region: &Region, pending: &[Peer]) -> RegionHeartbeatRequest {
        RegionHeartbeatRequest {
            region: Some(region.clone()),
            leader: region.peers.first().copied(),
            pending_peers: pending.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn a_store_that_registered_but_never_reported_takes_no_replica() {
        let (mut pd, left, _) = split_core();
        let mut w = MetaWrites::default();
        pd.set_schedule_config("replica_repair", "false", &mut w)
            .unwrap();
        // Store 4 registers (at an address nothing may listen on) and stays silent.
        pd.put_store(store(4), 0, &mut w).unwrap();
        let mut short = left.clone();
        short.peers.pop();
        short.region_epoch = Some(RegionEpoch {
            conf_ver: 2,
            version: 2,
        });
        pd.region_heartbeat(short.clone(), short.peers.first().copied(), 1, &mut w)
            .unwrap();
        pd.set_schedule_config("replica_repair", "true", &mut w)
            .unwrap();
        let to_store = |step: Option<Step>| match step {
            Some(Step::ChangePeer { peer, .. }) => Some(peer.store_id),
            _ => None,
        };
        let step = pd.operator_step(short.id, 1000, &mut w);
        assert_ne!(to_store(step.clone()), Some(4), "{step:?}");
        assert!(
            step.is_none(),
            "no store without a replica has reported: {step:?}"
        );
        // Once it reports, it is a home like any other.
        pd.store_heartbeat(
            StoreStats {
                store_id: 4,
                ..Default::default()
            },
            1000,
        )
        .unwrap();
        pd.cancel_operators(&[short.id]);
        assert_eq!(to_store(pd.operator_step(short.id, 1000, &mut w)), Some(4));
    }

    #[test]
    fn a_learner_is_promoted_only_once_its_leader_no_longer_reports_it_pending() {
        let (mut pd, left, _) = split_core();
        let mut w = MetaWrites::default();
        join(&mut pd, 4, &mut w);
        pd.set_schedule_config("replicas", "4", &mut w).unwrap();
        let Some(Step::ChangePeer { kind, peer }) = pd.operator_step(left.id, 1000, &mut w) else {
            panic!("a fourth replica is added");
        };
        assert_eq!((kind, peer.store_id), (ConfChangeKind::AddLearner, 4));
        let mut with_learner = left.clone();
        with_learner.peers.push(Peer {
            role: PeerRole::Learner as i32,
            ..peer
        });
        with_learner.region_epoch = Some(RegionEpoch {
            conf_ver: 2,
            version: 2,
        });
        let leader = with_learner.peers.first().copied();
        pd.region_heartbeat(with_learner.clone(), leader, 1, &mut w)
            .unwrap();
        // Not measured yet (no size), but the learner is catching up: no promotion.
        pd.region_stats(&report(&with_learner, &[peer]), 1000);
        assert_eq!(pd.operator_step(left.id, 1000, &mut w), None);
        pd.region_stats(&report(&with_learner, &[]), 1100);
        assert!(matches!(
            pd.operator_step(left.id, 1100, &mut w),
            Some(Step::ChangePeer { kind: ConfChangeKind::AddVoter, peer: p }) if p.id == peer.id
        ));
    }

    fn split_core() -> (PlacementCore, Region, Region) {
        let mut pd = core(3);
        let mut w = MetaWrites::default();
        pd.put_store(store(1), 0, &mut w).unwrap();
        pd.put_store(store(2), 0, &mut w).unwrap();
        let region = pd.put_store(store(3), 0, &mut w).unwrap().remove(0);
        let mut left = region.clone();
        left.end_key = b"m".to_vec();
        left.region_epoch = Some(RegionEpoch {
            conf_ver: 1,
            version: 2,
        });
        let mut right = left.clone();
        right.id = 100;
        right.start_key = b"m".to_vec();
        right.end_key = Vec::new();
        for (i, p) in right.peers.iter_mut().enumerate() {
            p.id = 101 + i as u64;
        }
        let lead = |r: &Region| r.peers.iter().find(|p| p.store_id == 1).copied();
        pd.region_heartbeat(left.clone(), lead(&left), 1, &mut w)
            .unwrap();
        pd.region_heartbeat(right.clone(), lead(&right), 1, &mut w)
            .unwrap();
        (pd, left, right)
    }

    #[test]
    fn admin_split_and_merge_operators_are_checked_run_and_finish() {
        let (mut pd, left, right) = split_core();
        let mut w = MetaWrites::default();
        let outside = pd.add_operator(
            left.id,
            AdminOperator::Split { key: b"x".to_vec() },
            0,
            &mut w,
        );
        assert!(
            matches!(&outside, Err(PlacementError::InvalidArgument(m)) if m.contains("not inside")),
            "{outside:?}"
        );
        let at_start = pd.add_operator(
            right.id,
            AdminOperator::Split { key: b"m".to_vec() },
            0,
            &mut w,
        );
        assert!(
            at_start.is_err(),
            "a split at the region's start splits nothing"
        );
        let info = pd
            .add_operator(
                left.id,
                AdminOperator::Split { key: b"g".to_vec() },
                0,
                &mut w,
            )
            .unwrap();
        assert_eq!(info.steps, vec!["split at key 67".to_string()]);
        assert!(matches!(
            pd.operator_step(left.id, 1, &mut w),
            Some(Step::Split { ref key, version: 2 }) if key == b"g"
        ));
        // The split shows as a newer version: the operator is done.
        let mut after = left.clone();
        after.end_key = b"g".to_vec();
        after.region_epoch = Some(RegionEpoch {
            conf_ver: 1,
            version: 3,
        });
        pd.region_heartbeat(after.clone(), Some(after.peers[0]), 1, &mut w)
            .unwrap();
        assert_eq!(pd.operator_step(left.id, 2, &mut w), None);
        assert_eq!(pd.operators().count(), 0);

        // Merges: adjacent regions on the same stores only.
        let itself = pd.add_operator(
            right.id,
            AdminOperator::Merge { target: right.id },
            0,
            &mut w,
        );
        assert!(itself.is_err());
        let far = pd.add_operator(
            after.id,
            AdminOperator::Merge { target: right.id },
            0,
            &mut w,
        );
        assert!(
            matches!(&far, Err(PlacementError::InvalidArgument(m)) if m.contains("not adjacent")),
            "{far:?} ([{:?}, {:?}) and [m, ))",
            after.start_key,
            after.end_key
        );
        let mut middle = after.clone();
        middle.id = 200;
        middle.start_key = b"g".to_vec();
        middle.end_key = b"m".to_vec();
        for (i, p) in middle.peers.iter_mut().enumerate() {
            p.id = 201 + i as u64;
            if i == 2 {
                p.store_id = 4;
            }
        }
        pd.region_heartbeat(middle.clone(), Some(middle.peers[0]), 1, &mut w)
            .unwrap();
        let elsewhere = pd.add_operator(
            middle.id,
            AdminOperator::Merge { target: right.id },
            0,
            &mut w,
        );
        assert!(
            matches!(&elsewhere, Err(PlacementError::InvalidArgument(m)) if m.contains("same stores")),
            "{elsewhere:?}"
        );
        pd.add_operator(
            after.id,
            AdminOperator::Merge { target: middle.id },
            0,
            &mut w,
        )
        .expect_err("different stores");
        // Bring the middle onto stores 1-3, then merge the right region into it.
        let mut moved = middle.clone();
        moved.peers[2].store_id = 3;
        moved.region_epoch = Some(RegionEpoch {
            conf_ver: 2,
            version: 3,
        });
        pd.region_heartbeat(moved.clone(), Some(moved.peers[0]), 1, &mut w)
            .unwrap();
        pd.add_operator(
            right.id,
            AdminOperator::Merge { target: moved.id },
            5,
            &mut w,
        )
        .unwrap();
        assert_eq!(
            pd.operator_step(right.id, 6, &mut w),
            Some(Step::Merge { target: moved.id })
        );
        let busy = pd.add_operator(
            after.id,
            AdminOperator::Merge { target: moved.id },
            6,
            &mut w,
        );
        assert!(busy.is_err(), "the target is being merged into already");
        // The target grows over the source's range: the source left routing, its operator
        // with it.
        let mut grown = moved.clone();
        grown.end_key = Vec::new();
        grown.region_epoch = Some(RegionEpoch {
            conf_ver: 2,
            version: 5,
        });
        pd.region_heartbeat(grown.clone(), Some(grown.peers[0]), 1, &mut w)
            .unwrap();
        assert!(pd.region_by_id(right.id).is_none());
        assert_eq!(pd.operators().count(), 0);
    }

    #[test]
    fn flow_reports_become_averaged_rates_and_hot_regions_get_operators() {
        let (mut pd, left, right) = split_core();
        let mut w = MetaWrites::default();
        pd.set_balance_config(BalanceConfig {
            balance_leader: false,
            balance_region: false,
            hot_region_min_bytes_per_sec: 1000,
            ..BalanceConfig::default()
        });
        for s in 1..=3 {
            pd.store_heartbeat(
                StoreStats {
                    store_id: s,
                    ..Default::default()
                },
                1000,
            )
            .unwrap();
        }
        let flow = |read_bytes: u64| RegionFlow {
            read_bytes,
            read_keys: read_bytes / 100,
            interval_ms: 2000,
            ..Default::default()
        };
        pd.region_flow(left.id, &flow(40_000), 1000);
        let rate = pd.region_by_id(left.id).unwrap().flow_now(1000).unwrap();
        assert_eq!((rate.read_bytes, rate.read_keys), (20_000, 200));
        // A second report is averaged with the first.
        pd.region_flow(left.id, &flow(0), 2000);
        assert_eq!(
            pd.region_by_id(left.id)
                .unwrap()
                .flow_now(2000)
                .unwrap()
                .read_bytes,
            10_000
        );
        // A report older than FLOW_STALE_MS counts as none, and a fresh one replaces it.
        assert!(pd
            .region_by_id(left.id)
            .unwrap()
            .flow_now(2000 + FLOW_STALE_MS)
            .is_none());
        let health = pd.region_health(pd.region_by_id(left.id).unwrap(), 2000);
        assert_eq!(health.read_bytes_per_sec, 10_000);
        pd.region_flow(right.id, &flow(40_000), 2000);
        // Both read-hot regions are led from store 1: one leader moves.
        let started = pd.schedule(2000, &mut w);
        assert_eq!(started.len(), 1, "{:?}", pd.operator_infos());
        let op = pd.operators().next().unwrap();
        assert!(op.reason.starts_with("hot-region"), "{}", op.reason);
        assert!(matches!(op.steps[..], [Step::TransferLeader { to }] if to.store_id != 1));
        // Paused: nothing more is planned.
        pd.set_schedule_config("balance_hot_region", "false", &mut w)
            .unwrap();
        pd.cancel_operators(&started);
        assert!(pd.schedule(2000, &mut w).is_empty());
    }

    #[test]
    fn an_extra_replica_is_removed_only_after_a_grace_period() {
        let (mut pd, left, _) = split_core();
        let mut w = MetaWrites::default();
        pd.put_store(store(4), 0, &mut w).unwrap();
        let mut four = left.clone();
        four.peers.push(Peer {
            id: 500,
            store_id: 4,
            role: PeerRole::Voter as i32,
        });
        four.region_epoch = Some(RegionEpoch {
            conf_ver: 2,
            version: 2,
        });
        pd.region_heartbeat(four.clone(), Some(four.peers[0]), 1, &mut w)
            .unwrap();
        for s in 1..=4 {
            pd.store_heartbeat(
                StoreStats {
                    store_id: s,
                    ..Default::default()
                },
                EXTRA_REPLICA_GRACE_MS,
            )
            .unwrap();
        }
        assert_eq!(
            pd.operator_step(four.id, 1000, &mut w),
            None,
            "in its grace"
        );
        assert_eq!(
            pd.operator_step(four.id, 1000 + EXTRA_REPLICA_GRACE_MS - 1, &mut w),
            None
        );
        let step = pd.operator_step(four.id, 1000 + EXTRA_REPLICA_GRACE_MS, &mut w);
        assert!(
            matches!(
                step,
                Some(Step::ChangePeer {
                    kind: ConfChangeKind::Remove,
                    ..
                })
            ),
            "{step:?}"
        );
    }

    #[test]
    fn replica_repair_pauses_and_the_replica_count_changes_at_runtime() {
        let (mut pd, left, _) = split_core();
        let mut w = MetaWrites::default();
        let too_many = pd.set_schedule_config("replicas", "4", &mut w);
        assert!(
            matches!(&too_many, Err(PlacementError::InvalidArgument(m)) if m.contains("only 3 stores are up")),
            "{too_many:?}"
        );
        join(&mut pd, 4, &mut w);
        pd.set_schedule_config("replica_repair", "false", &mut w)
            .unwrap();
        let c = pd.set_schedule_config("replicas", "4", &mut w).unwrap();
        assert_eq!((c.replicas, c.replica_repair_paused), (4, true));
        assert_eq!(pd.replicas(), 4);
        assert_eq!(pd.operator_step(left.id, 1000, &mut w), None, "paused");
        pd.set_schedule_config("replica_repair", "true", &mut w)
            .unwrap();
        let step = pd.operator_step(left.id, 1000, &mut w);
        assert!(
            matches!(step, Some(Step::ChangePeer { kind: ConfChangeKind::AddLearner, peer }) if peer.store_id == 4),
            "{step:?}"
        );
        // The merge checker pauses too.
        pd.set_schedule_config("merge_checker", "false", &mut w)
            .unwrap();
        assert!(pd.schedule_config().merge_checker_paused);
    }

    #[test]
    fn store_labels_are_set_removed_checked_and_kept_across_a_node_restart() {
        let mut pd = core(3);
        let mut w = MetaWrites::default();
        pd.put_store(store(1), 0, &mut w).unwrap();
        let set = |pairs: &[(&str, &str)]| -> std::collections::HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let s = pd
            .set_store_labels(1, &set(&[("zone", "z1"), ("rack", "r1")]), &mut w)
            .unwrap();
        assert_eq!(s.labels.len(), 2);
        assert!(w.sync);
        let s = pd
            .set_store_labels(1, &set(&[("rack", "")]), &mut w)
            .unwrap();
        assert_eq!(s.labels, set(&[("zone", "z1")]));
        for bad in [set(&[]), set(&[("", "x")]), set(&[("zone", "a b")])] {
            assert!(pd.set_store_labels(1, &bad, &mut w).is_err(), "{bad:?}");
        }
        assert!(matches!(
            pd.set_store_labels(9, &set(&[("zone", "z")]), &mut w),
            Err(PlacementError::StoreNotFound { store_id: 9 })
        ));
        // The node restarts with its own configured labels: those win for their keys, the
        // admin's others stay.
        let mut again = store(1);
        again.labels = set(&[("host", "h1")]);
        pd.put_store(again, 10, &mut w).unwrap();
        assert_eq!(
            pd.get_store(1).unwrap().store.labels,
            set(&[("zone", "z1"), ("host", "h1")])
        );
    }

    /// What a restart would load from `writes` applied in order.
    fn reload(writes: &[MetaWrites]) -> PlacementCore {
        let mut kv: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for w in writes {
            for k in &w.deletes {
                kv.remove(k);
            }
            for (k, v) in &w.puts {
                kv.insert(k.clone(), v.clone());
            }
        }
        let regions = kv
            .iter()
            .filter(|(k, _)| k.starts_with(keys::REGION_PREFIX))
            .map(|(_, v)| Region::decode(v.as_slice()).unwrap())
            .collect();
        let keyspaces = kv
            .iter()
            .filter(|(k, _)| k.starts_with(keys::KEYSPACE_PREFIX))
            .map(|(_, v)| KeyspaceMeta::decode(v.as_slice()).unwrap())
            .collect();
        let schedule_config = kv
            .get(keys::SCHEDULE_CONFIG)
            .map(|v| ScheduleConfig::decode(v.as_slice()).unwrap());
        let mut core = PlacementCore::new(
            42,
            1,
            3000,
            PersistedState {
                regions,
                keyspaces,
                schedule_config,
                ..Default::default()
            },
        );
        core.apply_persisted_schedule();
        core
    }

    #[test]
    fn scheduling_settings_changed_at_runtime_are_checked_and_survive_a_restart() {
        let mut pd = core(3);
        let mut w = MetaWrites::default();
        let c = pd
            .set_schedule_config("region_schedule_limit", "32", &mut w)
            .unwrap();
        assert_eq!(c.region_schedule_limit, 32);
        pd.set_schedule_config("balance_leader", "false", &mut w)
            .unwrap();
        for (key, value) in [
            ("region_schedule_limit", "-1"),
            ("operator_timeout_ms", "5"),
            ("balance_tolerance_ratio", "nan"),
            ("nope", "1"),
        ] {
            assert!(
                pd.set_schedule_config(key, value, &mut w).is_err(),
                "{key} = {value}"
            );
        }
        let restarted = reload(&[w]);
        let c = restarted.schedule_config();
        assert_eq!((c.region_schedule_limit, c.balance_leader), (32, false));
        assert_eq!(restarted.balance_config().region_schedule_limit, 32);
    }

    #[test]
    fn splits_replace_the_parent_in_routing_and_survive_restart() {
        let mut pd = core(1);
        let mut log = vec![MetaWrites::default()];
        let parent = pd.put_store(store(1), 0, &mut log[0]).unwrap().remove(0);
        let mut w = MetaWrites::default();
        let (new_id, peer_ids) = pd.ask_split(&parent, &mut w).unwrap();
        assert_eq!(peer_ids.len(), parent.peers.len());
        assert!(new_id != parent.id && !peer_ids.contains(&new_id));
        let next = Some(RegionEpoch {
            conf_ver: 1,
            version: 2,
        });
        let left = Region {
            end_key: b"m".to_vec(),
            region_epoch: next,
            ..parent.clone()
        };
        let right = Region {
            id: new_id,
            start_key: b"m".to_vec(),
            end_key: Vec::new(),
            region_epoch: next,
            peers: vec![Peer {
                id: peer_ids[0],
                ..parent.peers[0]
            }],
        };
        pd.report_split(left.clone(), right.clone(), None, 0, &mut w)
            .unwrap();
        log.push(w);
        assert_eq!(pd.region_by_key(b"a").unwrap().region, left);
        assert_eq!(pd.region_by_key(b"z").unwrap().region, right);
        // A late heartbeat of the parent as it was must not undo the split.
        let mut w = MetaWrites::default();
        pd.region_heartbeat(parent.clone(), None, 9, &mut w)
            .unwrap();
        log.push(w);
        assert_eq!(pd.region_by_key(b"z").unwrap().region.id, new_id);
        assert_eq!(pd.region_count(), 2);
        // An id the split did not see is stale now.
        assert!(matches!(
            pd.ask_split(&parent, &mut MetaWrites::default()),
            Err(PlacementError::StaleRegion { .. })
        ));
        let restarted = reload(&log);
        assert_eq!(restarted.region_count(), 2);
        assert_eq!(restarted.region_by_key(b"a").unwrap().region, left);
        assert_eq!(restarted.region_by_key(b"z").unwrap().region, right);
    }

    #[test]
    fn keyspaces_are_created_once_named_checked_and_kept() {
        let mut pd = core(1);
        let mut w = MetaWrites::default();
        let default = pd
            .keyspace(DEFAULT_KEYSPACE_NAME)
            .unwrap()
            .keyspace
            .unwrap();
        assert_eq!((default.id, default.mode), (0, KeyspaceMode::Hash as i32));
        let orders = pd
            .create_keyspace("orders", KeyspaceMode::Range as i32, &mut w)
            .unwrap();
        let users = pd
            .create_keyspace("users", KeyspaceMode::Hash as i32, &mut w)
            .unwrap();
        assert_eq!(orders.keyspace.unwrap().id, 1);
        assert_eq!(users.keyspace.unwrap().id, 2);
        assert!(
            w.sync,
            "a created keyspace is durable before it is answered"
        );
        assert!(matches!(
            pd.create_keyspace("orders", KeyspaceMode::Hash as i32, &mut w),
            Err(PlacementError::KeyspaceExists { id: 1, .. })
        ));
        for bad in ["", "has space", &"x".repeat(65)] {
            assert!(matches!(
                pd.create_keyspace(bad, KeyspaceMode::Hash as i32, &mut w),
                Err(PlacementError::InvalidArgument(_))
            ));
        }
        assert!(pd.create_keyspace("m", 7, &mut w).is_err());
        assert!(matches!(
            pd.keyspace("nope"),
            Err(PlacementError::KeyspaceNotFound { .. })
        ));
        let restarted = reload(&[w]);
        assert_eq!(restarted.keyspace("orders").unwrap(), &orders);
        assert_eq!(restarted.keyspace("users").unwrap(), &users);
    }

    #[test]
    fn rejects_other_clusters_and_bad_stores() {
        let mut pd = core(3);
        assert!(pd.check_cluster(0).is_ok());
        assert!(matches!(
            pd.check_cluster(7),
            Err(PlacementError::ClusterMismatch { .. })
        ));
        let mut w = MetaWrites::default();
        assert!(pd
            .put_store(Store { id: 0, ..store(1) }, 0, &mut w)
            .is_err());
        assert!(pd
            .put_store(
                Store {
                    address: String::new(),
                    ..store(1)
                },
                0,
                &mut w
            )
            .is_err());
        assert!(matches!(
            pd.store_heartbeat(
                StoreStats {
                    store_id: 9,
                    ..Default::default()
                },
                0
            ),
            Err(PlacementError::StoreNotFound { store_id: 9 })
        ));
        assert!(pd.tso(0, 0, &mut w).is_err());
        assert!(pd.alloc_ids(0, &mut w).is_err());
    }
}
