//! Drawing request fields: nearly valid or wild.

use super::{seed_key, World, SEED_KEYS};
use protobuf::{Message as _, ProtobufEnum as _};
use raft::eraftpb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv_proto::keys::{self, default_keyspace};
use ringkv_proto::kvrpcpb::*;
use ringkv_proto::limits::KEY_BYTES_MAX;
use ringkv_proto::metapb::{Peer, Region, RegionEpoch};
use ringkv_proto::pdpb::*;
use ringkv_proto::raftpb::{self, RaftMessage};
use ringkv_proto::Message as _;
use std::collections::HashMap;
use tonic::transport::Channel;

/// Draws request fields. Most requests are *nearly valid*: aimed at a real region's leader,
/// each field sane but for a small chance (a request refused at its first field tests
/// nothing behind it); the rest are wild in every field.
pub struct Gen {
    pub rng: StdRng,
    pub world: World,
    /// The current request is nearly valid: each field is wild only with this chance (%).
    pub nearly_valid: Option<u32>,
    /// The region the current request is aimed at.
    pub target: Option<Region>,
}

impl Gen {
    pub fn new(seed: u64) -> Self {
        Gen {
            rng: StdRng::seed_from_u64(seed),
            world: World::default(),
            nearly_valid: None,
            target: None,
        }
    }

    /// Starts drawing a new request.
    pub fn begin(&mut self) {
        self.nearly_valid = self.chance(70).then_some(12);
        self.target = self.real_region();
    }

    /// Whether the next field is drawn from the wild values.
    pub fn wild(&mut self) -> bool {
        match self.nearly_valid {
            None => true,
            Some(percent) => self.chance(percent),
        }
    }

    /// Where a KV request goes: the target region's leader for a nearly valid one.
    pub fn kv_node(&mut self, nodes: &HashMap<String, Channel>) -> Channel {
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
    pub fn valid_write_key(&mut self) -> Vec<u8> {
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

    pub fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.rng.gen_range(0..items.len())].clone()
    }

    pub fn chance(&mut self, percent: u32) -> bool {
        self.rng.gen_range(0..100) < percent
    }

    /// An id that names something real (region, peer, store, member) now and then.
    pub fn real_id(&mut self) -> u64 {
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

    pub fn u64(&mut self) -> u64 {
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

    pub fn u32(&mut self) -> u32 {
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

    pub fn i64(&mut self) -> i64 {
        if !self.wild() {
            return 60_000;
        }
        self.pick(&[0, -1, 1, i64::MAX, i64::MIN, 86_400_001, 1_000])
    }

    /// An enum's value: mostly a valid one, else out of range.
    pub fn enum_value(&mut self) -> i32 {
        if !self.wild() || self.chance(60) {
            return self.rng.gen_range(0..=3);
        }
        self.pick(&[-1, 4, 5, 99, i32::MAX, i32::MIN])
    }

    /// A lock TTL in ms: mostly a usual one.
    pub fn ttl(&mut self) -> u64 {
        if !self.wild() || self.chance(60) {
            3_000
        } else {
            self.u64()
        }
    }

    /// Timestamps: unset, tiny, near the end of the range, real, just ahead, far ahead.
    pub fn ts(&mut self) -> u64 {
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

    pub fn bytes(&mut self) -> Vec<u8> {
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

    pub fn string(&mut self) -> String {
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
    pub fn write_key(&mut self) -> Vec<u8> {
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
    pub fn read_key(&mut self) -> Vec<u8> {
        if self.chance(30) {
            let i = self.rng.gen_range(0..SEED_KEYS);
            keys::encode(&default_keyspace(), seed_key(i).as_bytes())
        } else {
            self.write_key()
        }
    }

    pub fn keys(&mut self, write: bool) -> Vec<Vec<u8>> {
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

    pub fn epoch(&mut self) -> Option<RegionEpoch> {
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

    pub fn real_region(&mut self) -> Option<Region> {
        if self.world.regions.is_empty() {
            return None;
        }
        let regions = self.world.regions.clone();
        Some(self.pick(&regions))
    }

    /// A request context; with `current` it may name a real region at its current epoch.
    pub fn context(&mut self, current: bool) -> Option<Context> {
        if !self.wild() {
            if let Some(r) = self.target.clone() {
                let mut epoch = r.region_epoch.unwrap_or_default();
                if !current {
                    epoch.version = epoch.version.saturating_sub(1);
                }
                let session = self.session();
                return Some(Context {
                    region_id: r.id,
                    region_epoch: Some(epoch),
                    session,
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
            session: self.session(),
        })
    }

    /// A write session for a request's context (half the time none): mostly well numbered,
    /// with an id from the TSO's range; in a wild request any numbers at all.
    pub fn session(&mut self) -> Option<WriteSession> {
        if self.chance(50) {
            return None;
        }
        if !self.wild() {
            let seq = self.rng.gen_range(1..2_000);
            return Some(WriteSession {
                id: self.ts(),
                seq,
                lowest_unanswered: self.rng.gen_range(seq.saturating_sub(1_000).max(1)..=seq),
            });
        }
        Some(WriteSession {
            id: self.u64(),
            seq: self.u64(),
            lowest_unanswered: self.u64(),
        })
    }

    pub fn keyspace(&mut self) -> Option<Keyspace> {
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
    pub fn delete_range(&mut self, keyspace: &Option<Keyspace>) -> (Vec<u8>, Vec<u8>) {
        let default = keyspace.as_ref() == Some(&default_keyspace());
        if default || keyspace.is_none() {
            let a = format!("fuzz/{}", self.rng.gen::<u16>()).into_bytes();
            let b = format!("fuzz/{}", self.rng.gen::<u16>()).into_bytes();
            (a, b)
        } else {
            (self.bytes(), self.bytes())
        }
    }

    pub fn peer(&mut self) -> Peer {
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
    pub fn forged_region(&mut self) -> Region {
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

    pub fn header(&mut self) -> Option<RequestHeader> {
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

    pub fn labels(&mut self) -> HashMap<String, String> {
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
    pub fn raft_message(&mut self) -> eraftpb::Message {
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
                    file_bytes: self.u64(),
                    file_xxh3: self.u64(),
                    kv_count: self.u64(),
                    ..Default::default()
                }
                .encode_to_vec()
                .into()
            };
        }
        m
    }

    pub fn raft_message_bytes(&mut self) -> Vec<u8> {
        if self.chance(15) {
            self.bytes()
        } else {
            self.raft_message().write_to_bytes().expect("encodes")
        }
    }

    /// A message between nodes' peers, addressed to the store at `store_id`.
    pub fn node_raft_message(&mut self, store_id: u64) -> RaftMessage {
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
