//! Hostile input against a cluster of the real binaries: the exact request that once killed a
//! node, then a seeded RPC fuzzer over every service (Kv, Raft, Debug, Placement,
//! PlacementMember) and every request type, with random, extreme and malformed field values.
//! After each batch every process must still be running and every key written before the
//! fuzzing must read back unchanged.
//!
//! The fuzzer sends what an unauthenticated caller can get wrong, not what an authorised one
//! may legitimately order: membership changes go out with a wrong region or epoch, forged
//! region reports never claim a newer epoch, forged stores never take a real store's id, and
//! writes only touch keys outside the seed data. Who may order what is issue 22's roles.
//!
//! Replay: `RINGKV_FUZZ_SEED=<seed> cargo nextest run -p ringkv-tests --test rpc_fuzz`. The
//! requests follow from the seed; the cluster's timing (leaders, region ids) may still differ.

use futures::future::BoxFuture;
use protobuf::{Message as _, ProtobufEnum as _};
use raft::eraftpb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv_client::{RawClient, RawConfig, TransactionClient, TxnConfig};
use ringkv_proto::keys::{self, default_keyspace};
use ringkv_proto::kvrpcpb::kv_client::KvClient;
use ringkv_proto::kvrpcpb::*;
use ringkv_proto::limits::KEY_BYTES_MAX;
use ringkv_proto::metapb::{Peer, Region, RegionEpoch, Store};
use ringkv_proto::pdpb::placement_client::PlacementClient;
use ringkv_proto::pdpb::placement_member_client::PlacementMemberClient;
use ringkv_proto::pdpb::*;
use ringkv_proto::raftpb::debug_client::DebugClient;
use ringkv_proto::raftpb::raft_client::RaftClient;
use ringkv_proto::raftpb::{self, RaftCmdRequest, RaftMessage, RaftMessageBatch, SnapshotChunk};
use ringkv_proto::Message as _;
use ringkv_tests::process::{runtime, ProcessCluster, FAST_NODE_TOML};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

/// Batches of requests; every process and the seed data are checked after each.
const BATCHES: usize = 10;
/// Requests of each kind in one batch.
const PER_KIND: usize = 60;
/// Requests in flight at once.
const IN_FLIGHT: usize = 24;
/// How long one request may take before the fuzzer stops waiting for it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const SEED_KEYS: usize = 60;
const DEFAULT_SEED: u64 = 0x5eed_f0220;

fn channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}

fn region_of(cluster: &ProcessCluster, rt: &tokio::runtime::Runtime, key: &[u8]) -> Region {
    let pd = rt
        .block_on(ringkv_client::PdClient::connect(&cluster.pd_endpoints))
        .expect("placement");
    rt.block_on(pd.get_region(key))
        .expect("region of key")
        .region
}

#[test]
fn a_prewrite_at_the_largest_start_version_is_refused_and_the_node_stays_up() {
    let mut cluster = ProcessCluster::start_with_config(3, FAST_NODE_TOML);
    let (rt, client) = cluster.client();
    rt.block_on(client.put(b"before".to_vec(), b"v".to_vec()))
        .expect("put");
    let key = keys::encode(&default_keyspace(), b"k");
    let region = region_of(&cluster, &rt, &key);
    let leader = cluster.wait_for_leader(Duration::from_secs(30));
    // Every node gets it, so the leader of the key's region does too.
    let mut answers = Vec::new();
    for i in 0..cluster.node_count() {
        for start_version in [u64::MAX, u64::MAX - 1] {
            let addr = format!("http://{}", cluster.node_addr(i));
            let Ok(mut kv) = rt.block_on(KvClient::connect(addr)) else {
                // Down: a request before this one killed it.
                continue;
            };
            let answer = rt.block_on(kv.kv_prewrite(KvPrewriteRequest {
                context: Some(Context {
                    region_id: region.id,
                    region_epoch: region.region_epoch,
                    ..Default::default()
                }),
                mutations: vec![Mutation {
                    op: Op::Put as i32,
                    key: key.clone(),
                    value: b"x".to_vec(),
                }],
                primary_lock: key.clone(),
                start_version,
                lock_ttl: 3_000,
                ..Default::default()
            }));
            answers.push((i, answer));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(cluster.crashed(), Vec::<String>::new());
    for (i, answer) in answers {
        let refused = answer.expect_err("a start version no TSO issued is refused");
        assert_eq!(
            refused.code(),
            tonic::Code::InvalidArgument,
            "node {i}: {refused:?}"
        );
        assert!(
            refused.message().contains("start_version"),
            "the error names the field: {}",
            refused.message()
        );
    }
    assert_eq!(
        rt.block_on(client.get(b"before".to_vec())).expect("get"),
        Some(b"v".to_vec()),
        "the cluster still serves (leader was node {leader})"
    );
}

/// What the fuzzer knows of the live cluster, refreshed before each batch.
#[derive(Default, Clone)]
struct World {
    cluster_id: u64,
    regions: Vec<Region>,
    /// Node address → its store id.
    stores: Vec<(String, u64)>,
    members: Vec<(String, u64, String)>,
    placement_leader: Option<String>,
    /// Region id → the address of the node that leads it.
    leaders: HashMap<u64, String>,
    now_ts: u64,
}

/// A request on its way: its kind and the call.
/// Its outcome: the gRPC status, and for placement calls the error type in the header.
type Call = (
    &'static str,
    BoxFuture<'static, Result<Option<i32>, tonic::Status>>,
);

/// Draws request fields. Most requests are *nearly valid*: aimed at a real region's leader,
/// each field sane but for a small chance (a request refused at its first field tests
/// nothing behind it); the rest are wild in every field.
struct Gen {
    rng: StdRng,
    world: World,
    /// The current request is nearly valid: each field is wild only with this chance (%).
    nearly_valid: Option<u32>,
    /// The region the current request is aimed at.
    target: Option<Region>,
}

impl Gen {
    fn new(seed: u64) -> Self {
        Gen {
            rng: StdRng::seed_from_u64(seed),
            world: World::default(),
            nearly_valid: None,
            target: None,
        }
    }

    /// Starts drawing a new request.
    fn begin(&mut self) {
        self.nearly_valid = self.chance(70).then_some(12);
        self.target = self.real_region();
    }

    /// Whether the next field is drawn from the wild values.
    fn wild(&mut self) -> bool {
        match self.nearly_valid {
            None => true,
            Some(percent) => self.chance(percent),
        }
    }

    /// Where a KV request goes: the target region's leader for a nearly valid one.
    fn kv_node(&mut self, nodes: &HashMap<String, Channel>) -> Channel {
        let leader = self
            .target
            .as_ref()
            .and_then(|r| self.world.leaders.get(&r.id))
            .filter(|_| self.nearly_valid.is_some())
            .and_then(|a| nodes.get(a));
        match leader {
            Some(c) => c.clone(),
            None => {
                let all: Vec<&Channel> = nodes.values().collect();
                all[self.rng.gen_range(0..all.len())].clone()
            }
        }
    }

    /// A fuzz key in the target region (a hash keyspace spreads them over every region).
    fn valid_write_key(&mut self) -> Vec<u8> {
        let mut key = Vec::new();
        // Regions get small as the fuzzer splits them: try enough keys to land in one.
        for _ in 0..1_024 {
            let n: u16 = self.rng.gen();
            key = keys::encode(&default_keyspace(), format!("fuzz/{n}").as_bytes());
            if self
                .target
                .as_ref()
                .is_none_or(|r| keys::in_range(&key, &r.start_key, &r.end_key))
            {
                break;
            }
        }
        key
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.rng.gen_range(0..items.len())].clone()
    }

    fn chance(&mut self, percent: u32) -> bool {
        self.rng.gen_range(0..100) < percent
    }

    /// An id that names something real (region, peer, store, member) now and then.
    fn real_id(&mut self) -> u64 {
        let mut ids: Vec<u64> = self.world.stores.iter().map(|s| s.1).collect();
        for r in &self.world.regions {
            ids.push(r.id);
            ids.extend(r.peers.iter().map(|p| p.id));
        }
        ids.extend(self.world.members.iter().map(|m| m.1));
        if ids.is_empty() {
            1
        } else {
            self.pick(&ids)
        }
    }

    fn u64(&mut self) -> u64 {
        if !self.wild() {
            return self.real_id();
        }
        if self.nearly_valid.is_some() {
            // The one odd field of a nearly valid request: an extreme.
            return self.pick(&[0, 1, u64::MAX, u64::MAX - 1]);
        }
        match self.rng.gen_range(0..10) {
            0 => 0,
            1 => 1,
            2 => u64::MAX,
            3 => u64::MAX - 1,
            4 => self.rng.gen(),
            5 => self.rng.gen_range(2..1_000),
            6 => i64::MAX as u64,
            7 => u64::from(u32::MAX) + 1,
            _ => self.real_id(),
        }
    }

    fn u32(&mut self) -> u32 {
        if !self.wild() {
            return self.rng.gen_range(1..100);
        }
        if self.nearly_valid.is_some() {
            return self.pick(&[0, u32::MAX, 4_097, 262_143]);
        }
        match self.rng.gen_range(0..8) {
            0 => 0,
            1 => 1,
            2 => u32::MAX,
            3 => u32::MAX - 1,
            4 => self.rng.gen(),
            5 => 4_097,
            6 => 262_143,
            _ => self.rng.gen_range(2..20_000),
        }
    }

    fn i64(&mut self) -> i64 {
        if !self.wild() {
            return 60_000;
        }
        self.pick(&[0, -1, 1, i64::MAX, i64::MIN, 86_400_001, 1_000])
    }

    /// An enum's value: mostly a valid one, else out of range.
    fn enum_value(&mut self) -> i32 {
        if !self.wild() || self.chance(60) {
            return self.rng.gen_range(0..=3);
        }
        self.pick(&[-1, 4, 5, 99, i32::MAX, i32::MIN])
    }

    /// A lock TTL in ms: mostly a usual one.
    fn ttl(&mut self) -> u64 {
        if !self.wild() || self.chance(60) {
            3_000
        } else {
            self.u64()
        }
    }

    /// Timestamps: unset, tiny, near the end of the range, real, just ahead, far ahead.
    fn ts(&mut self) -> u64 {
        let now = self.world.now_ts;
        if !self.wild() {
            return now + self.rng.gen_range(0..100);
        }
        let two_hours_ahead = ringkv_proto::tso::from_physical_ms(
            ringkv_proto::tso::physical_ms(now) + 2 * 3_600_000,
        );
        if self.nearly_valid.is_some() {
            return self.pick(&[0, 1, u64::MAX, u64::MAX - 1, two_hours_ahead]);
        }
        match self.rng.gen_range(0..16) {
            10..=15 => now + self.rng.gen_range(0..100),
            0 => 0,
            1 => 1,
            2 => u64::MAX,
            3 => u64::MAX - 1,
            4 => now,
            5 => now + self.rng.gen_range(1..1_000),
            6 => now.saturating_sub(1 << 30),
            7 => two_hours_ahead,
            8 => self.rng.gen(),
            _ => now + (1_000 << ringkv_proto::tso::LOGICAL_BITS),
        }
    }

    fn bytes(&mut self) -> Vec<u8> {
        if !self.wild() {
            let n = self.rng.gen_range(1..16);
            return (0..n).map(|_| self.rng.gen()).collect();
        }
        match self.rng.gen_range(0..20) {
            0..=2 => Vec::new(),
            3 => vec![0],
            4 => vec![0xff; KEY_BYTES_MAX + 1],
            5 => vec![7; 1 << 20],
            _ => {
                let n = self.rng.gen_range(1..40);
                (0..n).map(|_| self.rng.gen()).collect()
            }
        }
    }

    fn string(&mut self) -> String {
        if !self.wild() {
            return format!("fuzz-{}", self.rng.gen::<u16>());
        }
        match self.rng.gen_range(0..8) {
            0 => String::new(),
            1 => "x".repeat(300),
            2 => "pd-1".into(),
            3 => "zone".into(),
            4 => "\u{0}\u{ffff}é".into(),
            _ => String::from_utf8_lossy(&self.bytes())
                .chars()
                .take(40)
                .collect(),
        }
    }

    /// A key a write may touch: never one of the seed keys.
    fn write_key(&mut self) -> Vec<u8> {
        if !self.wild() {
            return self.valid_write_key();
        }
        match self.rng.gen_range(0..10) {
            0 => self.bytes(),
            1 => {
                let ks = Keyspace {
                    id: self.rng.gen(),
                    mode: self.enum_value(),
                };
                keys::encode(&ks, &self.bytes())
            }
            2 => keys::encode(&default_keyspace(), &vec![b'f'; KEY_BYTES_MAX + 1]),
            3 => keys::encode(&default_keyspace(), b""),
            _ => self.valid_write_key(),
        }
    }

    /// A key a read may touch: a seed key now and then.
    fn read_key(&mut self) -> Vec<u8> {
        if self.chance(30) {
            let i = self.rng.gen_range(0..SEED_KEYS);
            keys::encode(&default_keyspace(), seed_key(i).as_bytes())
        } else {
            self.write_key()
        }
    }

    fn keys(&mut self, write: bool) -> Vec<Vec<u8>> {
        if !self.wild() {
            let n = self.rng.gen_range(1..5);
            let mut keys: Vec<Vec<u8>> = (0..n).map(|_| self.valid_write_key()).collect();
            keys.sort();
            keys.dedup();
            return keys;
        }
        if self.chance(3) {
            return vec![b"k".to_vec(); 10_241];
        }
        let n = if self.chance(10) {
            0
        } else {
            self.rng.gen_range(1..5)
        };
        let mut keys: Vec<Vec<u8>> = (0..n)
            .map(|_| {
                if write {
                    self.write_key()
                } else {
                    self.read_key()
                }
            })
            .collect();
        if n > 0 && self.chance(15) {
            keys.push(keys[0].clone());
        }
        keys
    }

    fn epoch(&mut self) -> Option<RegionEpoch> {
        if !self.wild() {
            if let Some(r) = &self.target {
                return r.region_epoch;
            }
        }
        match self.rng.gen_range(0..4) {
            0 => None,
            1 => Some(RegionEpoch {
                conf_ver: u64::MAX,
                version: u64::MAX,
            }),
            _ => Some(RegionEpoch {
                conf_ver: self.u64(),
                version: self.u64(),
            }),
        }
    }

    fn real_region(&mut self) -> Option<Region> {
        if self.world.regions.is_empty() {
            return None;
        }
        let regions = self.world.regions.clone();
        Some(self.pick(&regions))
    }

    /// A request context; with `current` it may name a real region at its current epoch.
    fn context(&mut self, current: bool) -> Option<Context> {
        if !self.wild() {
            if let Some(r) = &self.target {
                let mut epoch = r.region_epoch.unwrap_or_default();
                if !current {
                    epoch.version = epoch.version.saturating_sub(1);
                }
                return Some(Context {
                    region_id: r.id,
                    region_epoch: Some(epoch),
                    ..Default::default()
                });
            }
        }
        let (region_id, region_epoch) = match self.rng.gen_range(0..8) {
            0 => return None,
            1 => (0, self.epoch()),
            2..=5 if current => match self.real_region() {
                Some(r) => (r.id, r.region_epoch),
                None => (self.u64(), self.epoch()),
            },
            2..=5 => match self.real_region() {
                // An older epoch: a stale request.
                Some(r) => {
                    let mut e = r.region_epoch.unwrap_or_default();
                    e.version = e.version.saturating_sub(1);
                    e.conf_ver = e.conf_ver.saturating_sub(1);
                    (r.id, Some(e))
                }
                None => (self.u64(), self.epoch()),
            },
            _ => (self.u64(), self.epoch()),
        };
        Some(Context {
            region_id,
            region_epoch,
            replica_read: self.chance(30),
            stale_read: self.chance(30),
        })
    }

    fn keyspace(&mut self) -> Option<Keyspace> {
        if !self.wild() {
            return Some(default_keyspace());
        }
        match self.rng.gen_range(0..4) {
            0 => None,
            1 => Some(Keyspace {
                id: self.rng.gen(),
                mode: self.enum_value(),
            }),
            _ => Some(default_keyspace()),
        }
    }

    /// A user-key range for a delete: inside the fuzz keys in the default keyspace (never
    /// reaching the seed keys), anything in another keyspace.
    fn delete_range(&mut self, keyspace: &Option<Keyspace>) -> (Vec<u8>, Vec<u8>) {
        let default = keyspace.as_ref() == Some(&default_keyspace());
        if default || keyspace.is_none() {
            let a = format!("fuzz/{}", self.rng.gen::<u16>()).into_bytes();
            let b = format!("fuzz/{}", self.rng.gen::<u16>()).into_bytes();
            (a, b)
        } else {
            (self.bytes(), self.bytes())
        }
    }

    fn peer(&mut self) -> Peer {
        if !self.wild() {
            if let Some(p) = self.target.as_ref().and_then(|r| r.peers.last()) {
                return *p;
            }
        }
        Peer {
            id: self.u64(),
            store_id: self.u64(),
            role: self.enum_value(),
        }
    }

    /// A region that no node reports: a fresh id, an epoch that is never newer than a real
    /// one, random bounds and peers.
    fn forged_region(&mut self) -> Region {
        let n = self.rng.gen_range(0..5);
        Region {
            id: self.rng.gen_range(1_000_000..u64::MAX),
            start_key: self.bytes(),
            end_key: self.bytes(),
            region_epoch: if self.chance(20) {
                None
            } else {
                Some(RegionEpoch {
                    conf_ver: self.u64(),
                    version: 0,
                })
            },
            peers: (0..n).map(|_| self.peer()).collect(),
        }
    }

    fn header(&mut self) -> Option<RequestHeader> {
        if !self.wild() {
            return Some(RequestHeader {
                cluster_id: self.world.cluster_id,
            });
        }
        match self.rng.gen_range(0..10) {
            0 => None,
            1 => Some(RequestHeader {
                cluster_id: self.u64(),
            }),
            _ => Some(RequestHeader {
                cluster_id: self.world.cluster_id,
            }),
        }
    }

    fn labels(&mut self) -> HashMap<String, String> {
        let n = if self.chance(5) {
            40
        } else {
            self.rng.gen_range(0..3)
        };
        (0..n)
            .map(|i| {
                let k = if self.chance(50) {
                    format!("fuzz{i}")
                } else {
                    self.string()
                };
                (k, self.string())
            })
            .collect()
    }

    /// A Raft message of any type with extreme fields. Its log term never matches a real
    /// one, so no forged entry can join a real log.
    fn raft_message(&mut self) -> eraftpb::Message {
        let mut m = eraftpb::Message::default();
        let kind = self.rng.gen_range(0..=18);
        m.set_msg_type(eraftpb::MessageType::from_i32(kind).expect("a message type"));
        m.to = self.u64();
        m.from = self.u64();
        m.term = match self.rng.gen_range(0..4) {
            0 => self.rng.gen_range(1..30),
            _ => self.u64(),
        };
        let random: u64 = self.rng.gen();
        m.log_term = self.pick(&[0, u64::MAX, u64::from(u32::MAX), random]);
        m.index = self.u64();
        m.commit = self.u64();
        m.reject = self.chance(30);
        m.reject_hint = self.u64();
        m.request_snapshot = if self.chance(50) { 0 } else { self.u64() };
        m.context = self.bytes().into();
        let entries = self.rng.gen_range(0..3);
        let mut next = m.index.wrapping_add(1);
        for _ in 0..entries {
            let index = if self.chance(70) { next } else { self.u64() };
            let any = self.u64();
            let e = eraftpb::Entry {
                index,
                term: self.pick(&[m.log_term, m.term, any]),
                data: self.bytes().into(),
                ..Default::default()
            };
            next = next.wrapping_add(1);
            m.mut_entries().push(e);
        }
        if kind == eraftpb::MessageType::MsgSnapshot as i32 || self.chance(10) {
            let snap = m.mut_snapshot();
            snap.mut_metadata().index = self.u64();
            snap.mut_metadata().term = self.u64();
            let voters: Vec<u64> = (0..self.rng.gen_range(0..3)).map(|_| self.u64()).collect();
            snap.mut_metadata().mut_conf_state().set_voters(voters);
            snap.data = if self.chance(50) {
                self.bytes().into()
            } else {
                raftpb::SnapshotData {
                    region: Some(self.forged_region()),
                    kvs: vec![raftpb::SnapshotKv {
                        key: self.bytes(),
                        value: self.bytes(),
                    }],
                    ..Default::default()
                }
                .encode_to_vec()
                .into()
            };
        }
        m
    }

    fn raft_message_bytes(&mut self) -> Vec<u8> {
        if self.chance(15) {
            self.bytes()
        } else {
            self.raft_message().write_to_bytes().expect("encodes")
        }
    }

    /// A message between nodes' peers, addressed to the store at `store_id`.
    fn node_raft_message(&mut self, store_id: u64) -> RaftMessage {
        let region = self.real_region();
        let region_id = match (&region, self.chance(60)) {
            (Some(r), true) => r.id,
            _ => self.u64(),
        };
        let to_peer = match region
            .as_ref()
            .and_then(|r| r.peers.iter().find(|p| p.store_id == store_id))
        {
            Some(p) if self.chance(60) => *p,
            _ => Peer {
                id: self.u64(),
                store_id: if self.chance(90) {
                    store_id
                } else {
                    self.u64()
                },
                role: self.enum_value(),
            },
        };
        RaftMessage {
            region_id,
            from_peer: Some(self.peer()),
            to_peer: Some(to_peer),
            region_epoch: self.epoch(),
            message: self.raft_message_bytes(),
            start_key: self.bytes(),
            end_key: self.bytes(),
            quiesce_term: self.u64(),
            quiesce_index: self.u64(),
            safe_ts: self.ts(),
            safe_ts_index: self.u64(),
        }
    }
}

fn seed_key(i: usize) -> String {
    format!("seed/{i}")
}

fn txn_seed_key(i: usize) -> String {
    format!("tseed/{i}")
}

/// Pushes one request of kind `$kind` to `$calls`: `$client` over `$chan`, method `$method`.
macro_rules! push {
    ($calls:expr, $kind:literal, $client:ident, $chan:expr, $method:ident, $req:expr) => {{
        let mut c = $client::new($chan.clone())
            .max_decoding_message_size(ringkv_proto::limits::GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(ringkv_proto::limits::GRPC_MESSAGE_BYTES_MAX);
        let req = $req;
        $calls.push((
            $kind,
            Box::pin(async move { c.$method(req).await.map(|_| None) }) as BoxFuture<'static, _>,
        ));
    }};
}

/// Like `push!` for a placement call, whose errors travel in the response header: the
/// outcome names the header's error type.
macro_rules! push_pd {
    ($calls:expr, $kind:literal, $chan:expr, $method:ident, $req:expr) => {{
        let mut c = PlacementClient::new($chan.clone())
            .max_decoding_message_size(ringkv_proto::limits::GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(ringkv_proto::limits::GRPC_MESSAGE_BYTES_MAX);
        let req = $req;
        $calls.push((
            $kind,
            Box::pin(async move {
                let r = c.$method(req).await?.into_inner();
                Ok(r.header.and_then(|h| h.error).map(|e| e.r#type))
            }) as BoxFuture<'static, _>,
        ));
    }};
}

/// One batch: `PER_KIND` requests of every kind, in a seeded order.
fn batch(g: &mut Gen) -> Vec<Call> {
    let nodes: Vec<(Channel, u64)> = g
        .world
        .stores
        .iter()
        .map(|(a, s)| (channel(a), *s))
        .collect();
    let members: Vec<Channel> = g.world.members.iter().map(|m| channel(&m.2)).collect();
    let leader = g.world.placement_leader.as_deref().map(channel);
    let node_channels: HashMap<String, Channel> = g
        .world
        .stores
        .iter()
        .map(|(a, _)| (a.clone(), channel(a)))
        .collect();
    let mut calls: Vec<Call> = Vec::new();
    for _ in 0..PER_KIND {
        let (node, store_id) = g.pick(&nodes);
        let pd = match (&leader, g.chance(75)) {
            (Some(l), true) => l.clone(),
            _ => g.pick(&members),
        };
        let member = g.pick(&members);

        // Kv: raw.
        push!(
            calls,
            "Kv/RawGet",
            KvClient,
            g.kv_node(&node_channels),
            raw_get,
            RawGetRequest {
                context: g.context(true),
                key: g.read_key(),
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/RawBatchGet",
            KvClient,
            g.kv_node(&node_channels),
            raw_batch_get,
            RawBatchGetRequest {
                context: g.context(true),
                keys: g.keys(false),
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/RawPut",
            KvClient,
            g.kv_node(&node_channels),
            raw_put,
            RawPutRequest {
                context: g.context(true),
                key: g.write_key(),
                value: g.bytes(),
            }
        );
        g.begin();
        let keys = g.keys(true);
        let many = keys.len() > 100;
        let pairs = keys
            .into_iter()
            .map(|key| KvPair {
                key,
                // A batch too long to take stays small in bytes.
                value: if many { Vec::new() } else { g.bytes() },
            })
            .collect();
        push!(
            calls,
            "Kv/RawBatchPut",
            KvClient,
            g.kv_node(&node_channels),
            raw_batch_put,
            RawBatchPutRequest {
                context: g.context(true),
                pairs,
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/RawDelete",
            KvClient,
            g.kv_node(&node_channels),
            raw_delete,
            RawDeleteRequest {
                context: g.context(true),
                key: g.write_key(),
            }
        );
        g.begin();
        let keyspace = g.keyspace();
        let (start_key, end_key) = g.delete_range(&keyspace);
        push!(
            calls,
            "Kv/RawDeleteRange",
            KvClient,
            g.kv_node(&node_channels),
            raw_delete_range,
            RawDeleteRangeRequest {
                context: g.context(true),
                keyspace,
                start_key,
                end_key,
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/RawScan",
            KvClient,
            g.kv_node(&node_channels),
            raw_scan,
            RawScanRequest {
                context: g.context(true),
                keyspace: g.keyspace(),
                start_key: g.bytes(),
                end_key: g.bytes(),
                limit: g.u32(),
                key_only: g.chance(50),
            }
        );
        // Kv: admin.
        g.begin();
        push!(
            calls,
            "Kv/SplitRegion",
            KvClient,
            g.kv_node(&node_channels),
            split_region,
            SplitRegionRequest {
                context: g.context(true),
                split_key: if g.chance(50) {
                    g.write_key()
                } else {
                    g.bytes()
                },
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/MergeRegion",
            KvClient,
            g.kv_node(&node_channels),
            merge_region,
            MergeRegionRequest {
                source_region_id: g.u64(),
                source_epoch: g.epoch(),
                target_region_id: g.u64(),
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/ChangePeer",
            KvClient,
            g.kv_node(&node_channels),
            change_peer,
            ChangePeerRegionRequest {
                context: g.context(false),
                kind: g.enum_value(),
                peer: Some(g.peer()),
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/TransferLeader",
            KvClient,
            g.kv_node(&node_channels),
            transfer_leader,
            TransferLeaderRequest {
                context: g.context(true),
                to: Some(g.peer()),
            }
        );
        // Kv: transactional.
        g.begin();
        push!(
            calls,
            "Kv/KvGet",
            KvClient,
            g.kv_node(&node_channels),
            kv_get,
            KvGetRequest {
                context: g.context(true),
                key: g.read_key(),
                version: g.ts(),
                resolved_locks: (0..g.rng.gen_range(0..3)).map(|_| g.ts()).collect(),
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/KvBatchGet",
            KvClient,
            g.kv_node(&node_channels),
            kv_batch_get,
            KvBatchGetRequest {
                context: g.context(true),
                keys: g.keys(false),
                version: g.ts(),
                resolved_locks: if g.chance(5) {
                    vec![1; 5_000]
                } else {
                    vec![g.ts()]
                },
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/KvScan",
            KvClient,
            g.kv_node(&node_channels),
            kv_scan,
            KvScanRequest {
                context: g.context(true),
                keyspace: g.keyspace(),
                start_key: g.bytes(),
                end_key: g.bytes(),
                limit: g.u32(),
                version: g.ts(),
                key_only: g.chance(50),
                resolved_locks: vec![],
            }
        );
        g.begin();
        let keys = g.keys(true);
        let many = keys.len() > 100;
        let mutations = keys
            .into_iter()
            .map(|key| Mutation {
                op: g.enum_value(),
                key,
                value: if many { Vec::new() } else { g.bytes() },
            })
            .collect();
        push!(
            calls,
            "Kv/KvPrewrite",
            KvClient,
            g.kv_node(&node_channels),
            kv_prewrite,
            KvPrewriteRequest {
                context: g.context(true),
                mutations,
                primary_lock: g.write_key(),
                start_version: g.ts(),
                lock_ttl: g.ttl(),
                txn_size: g.u64(),
                try_one_pc: g.chance(20),
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/KvCommit",
            KvClient,
            g.kv_node(&node_channels),
            kv_commit,
            KvCommitRequest {
                context: g.context(true),
                start_version: g.ts(),
                keys: g.keys(false),
                commit_version: g.ts(),
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/KvBatchRollback",
            KvClient,
            g.kv_node(&node_channels),
            kv_batch_rollback,
            KvBatchRollbackRequest {
                context: g.context(true),
                start_version: g.ts(),
                keys: g.keys(false),
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/KvCheckTxnStatus",
            KvClient,
            g.kv_node(&node_channels),
            kv_check_txn_status,
            KvCheckTxnStatusRequest {
                context: g.context(true),
                primary_key: g.read_key(),
                lock_ts: g.ts(),
                caller_start_ts: g.ts(),
                current_ts: g.ts(),
                rollback_if_not_exist: g.chance(50),
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/KvResolveLock",
            KvClient,
            g.kv_node(&node_channels),
            kv_resolve_lock,
            KvResolveLockRequest {
                context: g.context(true),
                start_version: g.ts(),
                commit_version: g.ts(),
                keys: g.keys(false),
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/KvTxnHeartBeat",
            KvClient,
            g.kv_node(&node_channels),
            kv_txn_heart_beat,
            KvTxnHeartBeatRequest {
                context: g.context(true),
                primary_lock: g.read_key(),
                start_version: g.ts(),
                advise_lock_ttl: g.ttl(),
            }
        );

        // Raft.
        g.begin();
        let messages = (0..g.rng.gen_range(1..4))
            .map(|_| g.node_raft_message(store_id))
            .collect();
        push!(
            calls,
            "Raft/Raft",
            RaftClient,
            node,
            raft,
            futures::stream::iter(vec![RaftMessageBatch { messages }])
        );
        g.begin();
        let chunks: Vec<SnapshotChunk> = if g.chance(50) {
            (0..g.rng.gen_range(0..3))
                .map(|_| SnapshotChunk { data: g.bytes() })
                .collect()
        } else {
            let mut m = g.node_raft_message(store_id);
            let mut inner = g.raft_message();
            inner.set_msg_type(eraftpb::MessageType::MsgSnapshot);
            m.message = inner.write_to_bytes().expect("encodes");
            vec![SnapshotChunk {
                data: m.encode_to_vec(),
            }]
        };
        push!(
            calls,
            "Raft/Snapshot",
            RaftClient,
            node,
            snapshot,
            futures::stream::iter(chunks)
        );
        g.begin();
        let source = match g.real_region() {
            Some(r) if g.chance(50) => r,
            _ => g.forged_region(),
        };
        let target = g.real_region().map_or_else(|| g.u64(), |r| r.id);
        let admin = raftpb::AdminRequest {
            cmd: Some(match g.rng.gen_range(0..4) {
                0 => raftpb::admin_request::Cmd::CompactLog(raftpb::CompactLogRequest {
                    compact_index: g.u64(),
                    compact_term: g.u64(),
                }),
                _ => raftpb::admin_request::Cmd::CommitMerge(raftpb::CommitMergeRequest {
                    source: Some(source),
                    commit: g.u64(),
                    commit_term: g.u64(),
                    source_merged_sources: vec![g.u64()],
                }),
            }),
        };
        push!(
            calls,
            "Raft/ProposeMerge",
            RaftClient,
            node,
            propose_merge,
            raftpb::ProposeMergeRequest {
                cmd: if g.chance(10) {
                    None
                } else {
                    Some(RaftCmdRequest {
                        region_id: if g.chance(70) { target } else { g.u64() },
                        region_epoch: g.epoch(),
                        requests: vec![],
                        admin: Some(admin),
                    })
                },
            }
        );

        // Debug.
        g.begin();
        push!(
            calls,
            "Debug/RegionInfo",
            DebugClient,
            node,
            region_info,
            raftpb::RegionInfoRequest { region_id: g.u64() }
        );
        g.begin();
        push!(
            calls,
            "Debug/LocalGet",
            DebugClient,
            node,
            local_get,
            raftpb::LocalGetRequest { key: g.read_key() }
        );
        g.begin();
        push!(
            calls,
            "Debug/StoreInfo",
            DebugClient,
            node,
            store_info,
            raftpb::StoreInfoRequest {}
        );
        g.begin();
        push!(
            calls,
            "Debug/SetNetFilter",
            DebugClient,
            node,
            set_net_filter,
            raftpb::SetNetFilterRequest {
                blocked_to: vec![g.u64()],
            }
        );

        // Placement.
        g.begin();
        push_pd!(
            calls,
            "Placement/GetMembers",
            pd,
            get_members,
            GetMembersRequest { header: g.header() }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/GetClusterInfo",
            pd,
            get_cluster_info,
            GetClusterInfoRequest { header: g.header() }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/AllocId",
            pd,
            alloc_id,
            AllocIdRequest {
                header: g.header(),
                count: g.u32(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/Tso",
            pd,
            tso,
            TsoRequest {
                header: g.header(),
                count: g.u32(),
            }
        );
        g.begin();
        let address = g.pick(&[
            String::new(),
            "127.0.0.1:1".into(),
            "host:0".into(),
            "no-port".into(),
            ":::".into(),
            "h".repeat(300) + ":1",
        ]);
        push_pd!(
            calls,
            "Placement/PutStore",
            pd,
            put_store,
            PutStoreRequest {
                header: g.header(),
                store: g.chance(90).then(|| Store {
                    // Never a real store's id: a forged registration of a real store is an
                    // authorised operation's business (issue 22).
                    id: if g.chance(20) {
                        0
                    } else {
                        g.rng.gen_range(1_000_000..u64::MAX)
                    },
                    address,
                    state: g.enum_value(),
                    labels: g.labels(),
                    version: g.string(),
                }),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/GetStore",
            pd,
            get_store,
            GetStoreRequest {
                header: g.header(),
                store_id: g.u64(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/GetAllStores",
            pd,
            get_all_stores,
            GetAllStoresRequest { header: g.header() }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/SetStoreLabels",
            pd,
            set_store_labels,
            SetStoreLabelsRequest {
                header: g.header(),
                store_id: g.u64(),
                labels: g.labels(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/StoreHeartbeat",
            pd,
            store_heartbeat,
            StoreHeartbeatRequest {
                header: g.header(),
                stats: g.chance(90).then(|| StoreStats {
                    store_id: g.u64(),
                    capacity_bytes: g.u64(),
                    available_bytes: g.u64(),
                    region_count: g.u32(),
                    leader_count: g.u32(),
                    start_time_s: g.u64(),
                    read_bytes_per_sec: g.u64(),
                    read_keys_per_sec: g.u64(),
                    written_bytes_per_sec: g.u64(),
                    written_keys_per_sec: g.u64(),
                }),
            }
        );
        g.begin();
        let (region, leader) = match g.real_region() {
            // A real region as it is, with a leader that may or may not be one of its peers.
            Some(r) if g.chance(40) => {
                let leader = if g.chance(50) {
                    r.peers.first().copied()
                } else {
                    Some(g.peer())
                };
                (Some(r), leader)
            }
            _ => (g.chance(90).then(|| g.forged_region()), Some(g.peer())),
        };
        push_pd!(
            calls,
            "Placement/RegionHeartbeat",
            pd,
            region_heartbeat,
            RegionHeartbeatRequest {
                header: g.header(),
                region,
                leader,
                term: g.u64(),
                approximate_keys: g.u64(),
                approximate_size_bytes: g.u64(),
                stats_known: g.chance(50),
                pending_peers: vec![g.peer()],
                flow: Some(RegionFlow {
                    read_bytes: g.u64(),
                    read_keys: g.u64(),
                    written_bytes: g.u64(),
                    written_keys: g.u64(),
                    interval_ms: g.u64(),
                }),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/CreateKeyspace",
            pd,
            create_keyspace,
            CreateKeyspaceRequest {
                header: g.header(),
                name: g.string(),
                mode: g.enum_value(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/GetKeyspace",
            pd,
            get_keyspace,
            GetKeyspaceRequest {
                header: g.header(),
                name: g.string(),
            }
        );
        g.begin();
        let region = match g.real_region() {
            Some(r) if g.chance(50) => Some(r),
            _ => g.chance(90).then(|| g.forged_region()),
        };
        push_pd!(
            calls,
            "Placement/AskSplit",
            pd,
            ask_split,
            AskSplitRequest {
                header: g.header(),
                region,
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/ReportSplit",
            pd,
            report_split,
            ReportSplitRequest {
                header: g.header(),
                left: g.chance(90).then(|| g.forged_region()),
                right: g.chance(90).then(|| g.forged_region()),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/GetRegion",
            pd,
            get_region,
            GetRegionRequest {
                header: g.header(),
                region_key: g.bytes(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/GetRegionById",
            pd,
            get_region_by_id,
            GetRegionByIdRequest {
                header: g.header(),
                region_id: g.u64(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/ScanRegions",
            pd,
            scan_regions,
            ScanRegionsRequest {
                header: g.header(),
                start_key: g.bytes(),
                end_key: g.bytes(),
                limit: g.u32(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/DecommissionStore",
            pd,
            decommission_store,
            DecommissionStoreRequest {
                header: g.header(),
                store_id: g.u64(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/GetGcSafePoint",
            pd,
            get_gc_safe_point,
            GetGcSafePointRequest { header: g.header() }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/UpdateGcSafePoint",
            pd,
            update_gc_safe_point,
            UpdateGcSafePointRequest {
                header: g.header(),
                safe_point: g.ts(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/UpdateServiceGcSafePoint",
            pd,
            update_service_gc_safe_point,
            UpdateServiceGcSafePointRequest {
                header: g.header(),
                service_id: g.string(),
                ttl_ms: g.i64(),
                safe_point: g.ts(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/GetOperators",
            pd,
            get_operators,
            GetOperatorsRequest { header: g.header() }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/CancelOperator",
            pd,
            cancel_operator,
            CancelOperatorRequest {
                header: g.header(),
                region_id: g.u64(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/AddOperator",
            pd,
            add_operator,
            AddOperatorRequest {
                header: g.header(),
                region_id: g.u64(),
                kind: g
                    .pick(&[
                        "transfer-leader",
                        "move-peer",
                        "split",
                        "merge",
                        "",
                        "explode"
                    ])
                    .into(),
                from_store: g.u64(),
                to_store: g.u64(),
                split_key: g.bytes(),
                target_region_id: g.u64(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/GetScheduleConfig",
            pd,
            get_schedule_config,
            GetScheduleConfigRequest { header: g.header() }
        );
        g.begin();
        let key = g.pick(&[
            "balance_leader",
            "leader_schedule_limit",
            "balance_tolerance_ratio",
            "max_store_down_time_ms",
            "operator_timeout_ms",
            "hot_region_min_bytes_per_sec",
            "",
            "no_such_setting",
        ]);
        let value = g.pick(&[
            "0",
            "1",
            "-1",
            "true",
            "",
            "1e309",
            "NaN",
            "inf",
            "99999999999999999999",
            "0.5",
            "1025",
        ]);
        push_pd!(
            calls,
            "Placement/SetScheduleConfig",
            pd,
            set_schedule_config,
            SetScheduleConfigRequest {
                header: g.header(),
                key: key.into(),
                value: value.into(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/TransferPlacementLeader",
            pd,
            transfer_placement_leader,
            TransferPlacementLeaderRequest {
                header: g.header(),
                to_name: g.string(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/EvictLeader",
            pd,
            evict_leader,
            EvictLeaderRequest {
                header: g.header(),
                store_id: g.u64(),
                evict: false,
            }
        );

        // PlacementMember.
        g.begin();
        let messages = (0..g.rng.gen_range(0..3))
            .map(|_| g.raft_message_bytes())
            .collect();
        push!(
            calls,
            "PlacementMember/Raft",
            PlacementMemberClient,
            member,
            raft,
            MemberRaftRequest {
                from_member_id: g.u64(),
                to_member_id: g.u64(),
                messages,
            }
        );
        g.begin();
        push!(
            calls,
            "PlacementMember/SetMemberNetFilter",
            PlacementMemberClient,
            member,
            set_member_net_filter,
            SetMemberNetFilterRequest {
                blocked_member_ids: vec![g.u64()],
            }
        );
    }
    // Interleave the kinds so one slow kind does not hold a batch's tail.
    let mut order: Vec<usize> = (0..calls.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, g.rng.gen_range(0..=i));
    }
    let mut slots: Vec<Option<Call>> = calls.into_iter().map(Some).collect();
    order
        .into_iter()
        .map(|i| slots[i].take().expect("each once"))
        .collect()
}

/// The cluster as it is now, for the next batch's ids.
async fn observe(cluster_pd: &[String], nodes: &[String]) -> World {
    let mut world = World::default();
    let pd = ringkv_client::PdClient::connect(cluster_pd)
        .await
        .expect("placement answers");
    if let Ok(m) = pd.get_members().await {
        world.cluster_id = m.header.map_or(0, |h| h.cluster_id);
        world.members = m
            .members
            .iter()
            .map(|m| (m.name.clone(), m.member_id, m.endpoint.clone()))
            .collect();
        world.placement_leader = m.leader.map(|l| l.endpoint);
    }
    world.now_ts = pd.tso(1).await.unwrap_or(1 << 40);
    let mut regions: BTreeMap<u64, Region> = BTreeMap::new();
    for addr in nodes {
        if let Some(id) = ringkv_tests::debug::store_id(addr).await {
            world.stores.push((addr.clone(), id));
        }
        for info in ringkv_tests::debug::regions(addr).await.unwrap_or_default() {
            let Some(region) = info.region else { continue };
            if info.is_leader {
                world.leaders.insert(region.id, addr.clone());
            }
            let newer = regions.get(&region.id).is_none_or(|known| {
                let (k, r) = (
                    known.region_epoch.unwrap_or_default(),
                    region.region_epoch.unwrap_or_default(),
                );
                (r.version, r.conf_ver) > (k.version, k.conf_ver)
            });
            if newer {
                regions.insert(region.id, region);
            }
        }
    }
    world.regions = regions.into_values().collect();
    world
}

/// Outcomes of one kind of request: gRPC code → count.
type Tally = BTreeMap<&'static str, BTreeMap<String, usize>>;

#[test]
fn fuzzed_requests_to_every_service_crash_nothing_and_lose_no_data() {
    let seed = std::env::var("RINGKV_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    println!(
        "rpc fuzz seed {seed} (replay: RINGKV_FUZZ_SEED={seed} cargo nextest run -p ringkv-tests --test rpc_fuzz)"
    );
    let mut cluster = ProcessCluster::start_with_placement_members(3, 3, FAST_NODE_TOML, "");
    let rt = runtime();
    let config = RawConfig {
        timeout: Duration::from_secs(60),
        attempt_timeout: Duration::from_secs(2),
        ..RawConfig::default()
    };
    let raw = rt
        .block_on(RawClient::connect_with_config(
            &cluster.pd_endpoints,
            config,
        ))
        .expect("raw client");
    let txns = rt
        .block_on(TransactionClient::connect_with_config(
            &cluster.pd_endpoints,
            TxnConfig::default(),
        ))
        .expect("transaction client");
    for i in 0..SEED_KEYS {
        rt.block_on(raw.put(seed_key(i).into_bytes(), format!("v{i}").into_bytes()))
            .expect("seed put");
    }
    rt.block_on(async {
        let mut txn = txns.begin().await?;
        for i in 0..SEED_KEYS / 4 {
            txn.put(txn_seed_key(i).into_bytes(), format!("t{i}").into_bytes())?;
        }
        txn.commit().await
    })
    .expect("transactional seed");

    let nodes: Vec<String> = (0..cluster.node_count())
        .map(|i| cluster.node_addr(i).to_string())
        .collect();
    let mut gen = Gen::new(seed);
    let mut tally: Tally = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let started = Instant::now();
    for b in 0..BATCHES {
        gen.world = rt.block_on(observe(&cluster.pd_endpoints, &nodes));
        assert!(!gen.world.stores.is_empty() && !gen.world.members.is_empty());
        let calls = {
            let _in_runtime = rt.enter();
            batch(&mut gen)
        };
        let outcomes: Vec<(&'static str, Result<Option<i32>, tonic::Status>)> =
            rt.block_on(async {
                use futures::StreamExt;
                futures::stream::iter(calls.into_iter().map(|(kind, call)| async move {
                    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
                        Ok(outcome) => (kind, outcome),
                        Err(_) => (
                            kind,
                            Err(tonic::Status::deadline_exceeded("fuzzer timeout")),
                        ),
                    }
                }))
                .buffer_unordered(IN_FLIGHT)
                .collect()
                .await
            });
        for (kind, outcome) in outcomes {
            let code = match &outcome {
                Ok(None) => "Ok".to_string(),
                Ok(Some(t)) => ErrorType::try_from(*t)
                    .map_or_else(|_| format!("error type {t}"), |t| format!("{t:?}")),
                Err(s) => format!("{:?}", s.code()),
            };
            if let Err(s) = &outcome {
                // A node answers what it cannot serve with a status that says so; an internal
                // error or a broken stream is a bug it hit.
                if matches!(s.code(), tonic::Code::Internal | tonic::Code::Unknown)
                    && failures.len() < 20
                {
                    failures.push(format!("{kind}: {:?}: {}", s.code(), s.message()));
                }
            }
            *tally.entry(kind).or_default().entry(code).or_default() += 1;
        }
        let crashed = cluster.crashed();
        assert!(
            crashed.is_empty(),
            "batch {b} (seed {seed}) crashed a process:\n{}",
            crashed.join("\n\n")
        );
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_seed_data(&rt, &raw, &txns, b, seed)
        }))
        .is_err()
        {
            // A request the fuzzer stopped waiting for may have crashed a process since.
            let crashed = cluster.crashed();
            assert!(
                crashed.is_empty(),
                "batch {b} (seed {seed}) crashed a process:\n{}",
                crashed.join("\n\n")
            );
            for addr in &nodes {
                for r in rt
                    .block_on(ringkv_tests::debug::regions(addr))
                    .unwrap_or_default()
                {
                    println!(
                        "{addr}: region {} term {} commit {} applied {} last {} leader {} is_leader {} quiet {} peers {:?}",
                        r.region.as_ref().map_or(0, |r| r.id),
                        r.term,
                        r.commit_index,
                        r.applied_index,
                        r.last_index,
                        r.leader_id,
                        r.is_leader,
                        r.quiet,
                        r.region.as_ref().map(|r| r.peers.iter().map(|p| (p.id, p.store_id, p.role)).collect::<Vec<_>>())
                    );
                }
            }
            let kept =
                std::mem::replace(&mut cluster.dir, tempfile::tempdir().expect("dir")).keep();
            panic!(
                "seed data check failed after batch {b}; the cluster's logs are kept in {}",
                kept.display()
            );
        }
        println!("batch {b} done after {:?}", started.elapsed());
    }
    let mut report = String::new();
    let mut total = 0;
    for (kind, codes) in &tally {
        let sent: usize = codes.values().sum();
        total += sent;
        report.push_str(&format!("{kind:45} {sent:4}  {codes:?}\n"));
    }
    println!("{total} requests in {:?}:\n{report}", started.elapsed());
    assert!(
        failures.is_empty(),
        "internal errors or broken streams (seed {seed}):\n{}",
        failures.join("\n")
    );
}

fn check_seed_data(
    rt: &tokio::runtime::Runtime,
    raw: &RawClient,
    txns: &TransactionClient,
    batch: usize,
    seed: u64,
) {
    for i in 0..SEED_KEYS {
        let got = rt
            .block_on(raw.get(seed_key(i).into_bytes()))
            .unwrap_or_else(|e| {
                panic!("batch {batch} (seed {seed}): seed key {i} unreadable: {e}")
            });
        assert_eq!(
            got,
            Some(format!("v{i}").into_bytes()),
            "batch {batch} (seed {seed}): seed key {i} changed"
        );
    }
    rt.block_on(async {
        let mut snap = txns.begin().await.expect("begin");
        for i in 0..SEED_KEYS / 4 {
            let got = snap
                .get(txn_seed_key(i).into_bytes())
                .await
                .unwrap_or_else(|e| panic!("batch {batch} (seed {seed}): txn key {i}: {e}"));
            assert_eq!(
                got,
                Some(format!("t{i}").into_bytes()),
                "batch {batch} (seed {seed}): transactional seed key {i} changed"
            );
        }
    });
}

/// Leadership of every region as the nodes report it: region id → (term, leader peer id),
/// from the replica that leads it.
fn leaders(rt: &tokio::runtime::Runtime, cluster: &ProcessCluster) -> BTreeMap<u64, (u64, u64)> {
    let mut led = BTreeMap::new();
    for i in 0..cluster.node_count() {
        for r in rt
            .block_on(ringkv_tests::debug::regions(cluster.node_addr(i)))
            .unwrap_or_default()
        {
            if r.is_leader {
                let id = r.region.as_ref().map_or(0, |r| r.id);
                led.insert(id, (r.term, r.leader_id));
            }
        }
    }
    led
}

#[test]
fn heavy_scans_beside_writes_cause_no_leader_change() {
    // Default timing (100 ms ticks, elections after 1–2 s without a leader's word).
    let cluster = ProcessCluster::start_with_config(3, "");
    let (rt, client) = cluster.client();
    let value = vec![7u8; 512];
    for chunk in 0..40 {
        let pairs = (0..500)
            .map(|i| (format!("scan/{chunk}/{i}").into_bytes(), value.clone()))
            .collect();
        rt.block_on(client.batch_put(pairs)).expect("load");
    }
    // Let the cluster settle after the load (leases, quiet regions) before taking the terms.
    std::thread::sleep(Duration::from_secs(2));
    let before = leaders(&rt, &cluster);
    assert!(!before.is_empty(), "every region has a leader");
    let scans = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let until = Instant::now() + Duration::from_secs(10);
    rt.block_on(async {
        let mut tasks = Vec::new();
        // Each scan of a hash keyspace reads every key of every region: 20,000 keys.
        for _ in 0..12 {
            let (client, scans) = (client.clone(), scans.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < until {
                    let found = client
                        .scan(b"scan/".to_vec(), b"scan0".to_vec(), 10_240)
                        .await;
                    assert_eq!(found.expect("scan").len(), 10_240);
                    scans.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for w in 0..4 {
            let (client, writes) = (client.clone(), writes.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while Instant::now() < until {
                    client
                        .put(format!("w/{w}/{i}").into_bytes(), b"v".to_vec())
                        .await
                        .expect("write beside the scans");
                    writes.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            }));
        }
        for t in tasks {
            t.await.expect("load task");
        }
    });
    let after = leaders(&rt, &cluster);
    let (scans, writes) = (
        scans.load(Ordering::Relaxed),
        writes.load(Ordering::Relaxed),
    );
    println!("{scans} full scans and {writes} writes in 10 s; leaders before {before:?}, after {after:?}");
    assert!(scans > 0 && writes > 0);
    for (region, led) in &before {
        assert_eq!(
            after.get(region),
            Some(led),
            "region {region} changed leader or term under the scans (before {led:?}, after {:?})",
            after.get(region)
        );
    }
}
