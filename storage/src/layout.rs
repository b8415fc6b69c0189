//! Where things live in the [`KvEngine`](crate::KvEngine) of a node (see docs/design.md):
//!
//! ```text
//! 0x01 "ident"                    StoreIdent      who this store is
//! 0x01 "r" region_id: u64 BE      RegionLocalState a region's metadata and peer state
//! 0x01 "a" region_id: u64 BE      ApplyState      how far the region has applied its log
//! 0x01 "s" region_id session_id   SessionRecord   what a region remembers of a client session
//! 0x01 "s" region_id session_id seq  SessionWrite  the key spans one numbered write covered
//! 'l' encoded_key                 Lock            a transaction's lock on a key
//! 'w' mc(encoded_key) !commit_ts  Write           a committed (or rolled back) version
//! 'd' mc(encoded_key) !start_ts   value           a version's value when not inlined in Write
//! 'z' encoded_key                 value           raw data
//! ```
//!
//! `mc` is the memcomparable byte encoding ([`encode_bytes`]) and `!ts` the bitwise complement
//! of a timestamp, big-endian: the versions of one key sort together, newest first, and never
//! interleave with another key's. Every column family of a region lies in the same encoded-key
//! range, so a region's data is [`region_data_ranges`].

use crate::{KvEngine, KvWriteBatch, Result, StorageError};
use prost::Message;
use ringkv_proto::metapb::Region;
use ringkv_proto::raftpb::{ApplyState, MergeState, PeerState, RegionLocalState, StoreIdent};

const META_PREFIX: u8 = 0x01;
/// First byte of every data key.
pub const DATA_PREFIX: u8 = b'z';

pub fn ident_key() -> Vec<u8> {
    vec![META_PREFIX, b'i', b'd', b'e', b'n', b't']
}

fn region_meta_key(kind: u8, region_id: u64) -> Vec<u8> {
    let mut key = vec![META_PREFIX, kind];
    key.extend_from_slice(&region_id.to_be_bytes());
    key
}

pub fn region_state_key(region_id: u64) -> Vec<u8> {
    region_meta_key(b'r', region_id)
}

pub fn apply_state_key(region_id: u64) -> Vec<u8> {
    region_meta_key(b'a', region_id)
}

/// Where a region keeps what it remembers of client session `session_id` (both u64 BE).
pub fn session_key(region_id: u64, session_id: u64) -> Vec<u8> {
    let mut key = region_meta_key(b's', region_id);
    key.extend_from_slice(&session_id.to_be_bytes());
    key
}

/// The storage range `[start, end)` of every session record of `region_id`.
pub fn session_range(region_id: u64) -> (Vec<u8>, Vec<u8>) {
    let start = region_meta_key(b's', region_id);
    let mut end = start.clone();
    end.push(0xff);
    end.extend_from_slice(&[0xff; 8]);
    (start, end)
}

/// Where a region keeps the key spans that write `seq` of session `session_id` covered.
pub fn session_write_key(region_id: u64, session_id: u64, seq: u64) -> Vec<u8> {
    let mut key = session_key(region_id, session_id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The storage range `[start, end)` of session `session_id`'s record and writes in `region_id`.
pub fn session_writes_range(region_id: u64, session_id: u64) -> (Vec<u8>, Vec<u8>) {
    let start = session_key(region_id, session_id);
    let mut end = start.clone();
    end.push(0xff);
    end.extend_from_slice(&[0xff; 8]);
    (start, end)
}

/// A key from [`session_range`]: (region, session id, write number for a write's key).
pub fn parse_session_key(key: &[u8]) -> Option<(u64, u64, Option<u64>)> {
    if !(key.len() == 18 || key.len() == 26) || key[..2] != [META_PREFIX, b's'] {
        return None;
    }
    let word = |at: usize| u64::from_be_bytes(key[at..at + 8].try_into().expect("eight bytes"));
    let seq = (key.len() == 26).then(|| word(18));
    Some((word(2), word(10), seq))
}

/// The region a key from [`session_range`] belongs to (None: not a session key).
pub fn session_region_of(key: &[u8]) -> Option<u64> {
    parse_session_key(key).map(|(region, _, _)| region)
}

/// A column family: one part of a region's data, under its own first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    /// Raw key-value data (the raw API), keyed by the encoded key.
    Raw,
    /// Percolator locks, keyed by the encoded key.
    Lock,
    /// Percolator write records, keyed by the encoded key and the commit timestamp.
    Write,
    /// Percolator values too large to inline in their write record, keyed by the encoded key
    /// and the start timestamp.
    Default,
}

impl Cf {
    /// Every column family, in storage order.
    pub const ALL: [Cf; 4] = [Cf::Default, Cf::Lock, Cf::Write, Cf::Raw];

    pub fn prefix(self) -> u8 {
        match self {
            Cf::Raw => DATA_PREFIX,
            Cf::Lock => b'l',
            Cf::Write => b'w',
            Cf::Default => b'd',
        }
    }

    fn of_prefix(prefix: u8) -> Option<Cf> {
        Cf::ALL.into_iter().find(|cf| cf.prefix() == prefix)
    }

    /// Whether keys of this family carry a timestamp after the memcomparable encoded key.
    pub fn versioned(self) -> bool {
        matches!(self, Cf::Write | Cf::Default)
    }

    /// The wire number of this family (`raftpb.PutRequest.cf`).
    pub fn to_wire(self) -> u32 {
        match self {
            Cf::Raw => 0,
            Cf::Lock => 1,
            Cf::Write => 2,
            Cf::Default => 3,
        }
    }

    pub fn from_wire(n: u32) -> Option<Cf> {
        Cf::ALL.into_iter().find(|cf| cf.to_wire() == n)
    }
}

const ENC_GROUP_SIZE: usize = 8;
const ENC_MARKER: u8 = 0xff;

/// The memcomparable encoding of `key`: groups of 8 bytes, each padded with zeros and followed
/// by `0xff` minus the padding. It keeps byte order and no encoding is a prefix of another, so
/// a suffix appended to it never changes how two keys compare.
pub fn encode_bytes(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity((key.len() / ENC_GROUP_SIZE + 1) * (ENC_GROUP_SIZE + 1));
    for chunk in key.chunks(ENC_GROUP_SIZE) {
        out.extend_from_slice(chunk);
        let pad = ENC_GROUP_SIZE - chunk.len();
        out.extend(std::iter::repeat_n(0u8, pad));
        out.push(ENC_MARKER - pad as u8);
    }
    if key.len().is_multiple_of(ENC_GROUP_SIZE) {
        out.extend_from_slice(&[0; ENC_GROUP_SIZE]);
        out.push(ENC_MARKER - ENC_GROUP_SIZE as u8);
    }
    out
}

/// Decodes [`encode_bytes`] at the start of `data`: the key and the rest of `data`.
pub fn decode_bytes(data: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut key = Vec::new();
    let mut rest = data;
    loop {
        if rest.len() < ENC_GROUP_SIZE + 1 {
            return None;
        }
        let (group, tail) = rest.split_at(ENC_GROUP_SIZE + 1);
        let pad = (ENC_MARKER - group[ENC_GROUP_SIZE]) as usize;
        if pad > ENC_GROUP_SIZE
            || group[ENC_GROUP_SIZE - pad..ENC_GROUP_SIZE]
                .iter()
                .any(|&b| b != 0)
        {
            return None;
        }
        key.extend_from_slice(&group[..ENC_GROUP_SIZE - pad]);
        rest = tail;
        if pad > 0 {
            return Some((key, rest));
        }
    }
}

/// The storage key of `encoded` in `cf`; `ts` is the version of a versioned family (commit
/// timestamp in `Write`, start timestamp in `Default`) and ignored by the others.
pub fn cf_key(cf: Cf, encoded: &[u8], ts: u64) -> Vec<u8> {
    if !cf.versioned() {
        let mut key = Vec::with_capacity(1 + encoded.len());
        key.push(cf.prefix());
        key.extend_from_slice(encoded);
        return key;
    }
    let mut key = vec![cf.prefix()];
    key.extend_from_slice(&encode_bytes(encoded));
    key.extend_from_slice(&(!ts).to_be_bytes());
    key
}

/// The storage key of the lock on `encoded`.
pub fn lock_key(encoded: &[u8]) -> Vec<u8> {
    cf_key(Cf::Lock, encoded, 0)
}

/// The storage key of the write record of `encoded` committed at `commit_ts`.
pub fn write_key(encoded: &[u8], commit_ts: u64) -> Vec<u8> {
    cf_key(Cf::Write, encoded, commit_ts)
}

/// The storage key of the value of `encoded` written by the transaction `start_ts`.
pub fn default_key(encoded: &[u8], start_ts: u64) -> Vec<u8> {
    cf_key(Cf::Default, encoded, start_ts)
}

/// The storage-key range of every version of `encoded` in a versioned family, newest first.
pub fn versions_range(cf: Cf, encoded: &[u8]) -> (Vec<u8>, Vec<u8>) {
    debug_assert!(cf.versioned());
    (cf_key(cf, encoded, u64::MAX), {
        let mut hi = vec![cf.prefix()];
        hi.extend_from_slice(&encode_bytes(encoded));
        hi.extend_from_slice(&[0xff; 9]);
        hi
    })
}

/// The storage-key range of `cf` for the encoded-key range `[start, end)` (empty end:
/// unbounded).
pub fn cf_range(cf: Cf, start: &[u8], end: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let bound = |key: &[u8]| {
        let mut out = vec![cf.prefix()];
        if cf.versioned() {
            out.extend_from_slice(&encode_bytes(key));
        } else {
            out.extend_from_slice(key);
        }
        out
    };
    let hi = if end.is_empty() {
        vec![cf.prefix() + 1]
    } else {
        bound(end)
    };
    (bound(start), hi)
}

/// Every storage-key range holding data of the region range `[start, end)`, one per column
/// family.
pub fn region_data_ranges(start: &[u8], end: &[u8]) -> Vec<(Cf, Vec<u8>, Vec<u8>)> {
    Cf::ALL
        .into_iter()
        .map(|cf| {
            let (lo, hi) = cf_range(cf, start, end);
            (cf, lo, hi)
        })
        .collect()
}

/// Splits a data storage key into its family, encoded key and version (0 when unversioned).
pub fn decode_data_key(key: &[u8]) -> Option<(Cf, Vec<u8>, u64)> {
    let cf = Cf::of_prefix(*key.first()?)?;
    if !cf.versioned() {
        return Some((cf, key[1..].to_vec(), 0));
    }
    let (encoded, rest) = decode_bytes(&key[1..])?;
    let ts: [u8; 8] = rest.try_into().ok()?;
    Some((cf, encoded, !u64::from_be_bytes(ts)))
}

/// The storage key of an encoded user key.
pub fn data_key(encoded: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + encoded.len());
    key.push(DATA_PREFIX);
    key.extend_from_slice(encoded);
    key
}

/// The raw-data storage-key range of the region range `[start, end)` of encoded keys.
pub fn data_range(start: &[u8], end: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let end = if end.is_empty() {
        vec![DATA_PREFIX + 1]
    } else {
        data_key(end)
    };
    (data_key(start), end)
}

/// The encoded key of a storage data key.
pub fn origin_key(data_key: &[u8]) -> &[u8] {
    debug_assert_eq!(data_key.first(), Some(&DATA_PREFIX));
    &data_key[1..]
}

fn read_message<M: Message + Default>(
    engine: &dyn KvEngine,
    key: &[u8],
    what: &str,
) -> Result<Option<M>> {
    match engine.get(key)? {
        None => Ok(None),
        Some(bytes) => M::decode(bytes.as_slice())
            .map(Some)
            .map_err(|e| StorageError::corruption(what, e)),
    }
}

pub fn read_ident(engine: &dyn KvEngine) -> Result<Option<StoreIdent>> {
    read_message(engine, &ident_key(), "store ident")
}

pub fn write_ident(batch: &mut KvWriteBatch, ident: &StoreIdent) {
    batch.put(ident_key(), ident.encode_to_vec());
}

pub fn read_region_state(
    engine: &dyn KvEngine,
    region_id: u64,
) -> Result<Option<RegionLocalState>> {
    read_message(
        engine,
        &region_state_key(region_id),
        &format!("region state of region {region_id}"),
    )
}

pub fn write_region_state(batch: &mut KvWriteBatch, state: &RegionLocalState) {
    let region_id = state.region.as_ref().map(|r| r.id).unwrap_or_default();
    batch.put(region_state_key(region_id), state.encode_to_vec());
}

/// Marks `region` as gone from this store for good: its peer is never loaded or recreated.
/// `merged_into` is the merge that ended it, when its replica here applied its log up to that
/// merge's prepare (so nothing it could have applied later is missing here); None when it was
/// removed without that (a snapshot of a region that took over its range).
pub fn write_tombstone(batch: &mut KvWriteBatch, region: &Region, merged_into: Option<MergeState>) {
    write_region_state(
        batch,
        &RegionLocalState {
            state: PeerState::Tombstone as i32,
            region: Some(region.clone()),
            merge_state: merged_into,
            ..Default::default()
        },
    );
}

/// Keys deleted per engine write when a range of data is dropped ([`delete_data`]): a region of
/// any size is deleted in pages of this many keys, never collected whole.
pub const DELETE_PAGE_KEYS: usize = 4096;

/// Deletes every data key (of every column family) of the region range `[start, end)` (of
/// encoded keys), in engine writes of at most [`DELETE_PAGE_KEYS`] keys. Not atomic: a crash
/// between pages leaves the rest, and running it again finishes the job. Returns the number of
/// keys deleted.
pub fn delete_data(engine: &dyn KvEngine, start: &[u8], end: &[u8]) -> Result<u64> {
    let mut deleted = 0;
    for (_, lo, hi) in region_data_ranges(start, end) {
        deleted += delete_paged(engine, &lo, &hi, &mut |_| true)?;
    }
    Ok(deleted)
}

/// Deletes the keys of storage range `[lo, hi)` that `wanted` picks, in engine writes of at
/// most [`DELETE_PAGE_KEYS`] keys each. Returns the number of keys deleted.
pub fn delete_paged(
    engine: &dyn KvEngine,
    lo: &[u8],
    hi: &[u8],
    wanted: &mut dyn FnMut(&[u8]) -> bool,
) -> Result<u64> {
    let mut from = lo.to_vec();
    let mut deleted = 0;
    loop {
        let mut page = KvWriteBatch::default();
        let mut resume = None;
        engine.scan(&from, hi, &mut |k, _| {
            if wanted(k) {
                page.delete(k.to_vec());
            }
            if page.len() == DELETE_PAGE_KEYS {
                // The next page starts right after this key.
                let mut next = k.to_vec();
                next.push(0);
                resume = Some(next);
                return false;
            }
            true
        })?;
        deleted += page.len() as u64;
        if !page.is_empty() {
            engine.write(page)?;
        }
        match resume {
            Some(next) => from = next,
            None => return Ok(deleted),
        }
    }
}

/// Deletes every data key outside the ranges of `live` regions (encoded-key ranges): what a
/// crash left of regions whose data was being dropped. Returns the number of keys deleted.
pub fn delete_data_outside(engine: &dyn KvEngine, live: &[Region]) -> Result<u64> {
    let mut ranges: Vec<(&[u8], &[u8])> = live
        .iter()
        .map(|r| (r.start_key.as_slice(), r.end_key.as_slice()))
        .collect();
    ranges.sort();
    let mut deleted = 0;
    // `gap_start` is where the key space not covered so far begins; None once the last region
    // reaches the end of the key space.
    let mut gap_start: Option<&[u8]> = Some(&[]);
    for (start, end) in ranges {
        if let Some(from) = gap_start {
            if from < start {
                deleted += delete_data(engine, from, start)?;
            }
        }
        gap_start = match gap_start {
            None => None,
            Some(_) if end.is_empty() => None,
            Some(from) => Some(from.max(end)),
        };
    }
    if let Some(from) = gap_start {
        deleted += delete_data(engine, from, &[])?;
    }
    Ok(deleted)
}

/// Deletes the session records of every region but the `live` ones: what a crash left of
/// regions destroyed. Returns the number of records deleted.
pub fn delete_sessions_outside(engine: &dyn KvEngine, live: &[Region]) -> Result<u64> {
    let live: std::collections::HashSet<u64> = live.iter().map(|r| r.id).collect();
    let start = vec![META_PREFIX, b's'];
    let end = vec![META_PREFIX, b's' + 1];
    delete_paged(engine, &start, &end, &mut |k| {
        session_region_of(k).is_some_and(|region| !live.contains(&region))
    })
}

pub fn read_apply_state(engine: &dyn KvEngine, region_id: u64) -> Result<Option<ApplyState>> {
    read_message(
        engine,
        &apply_state_key(region_id),
        &format!("apply state of region {region_id}"),
    )
}

pub fn write_apply_state(batch: &mut KvWriteBatch, region_id: u64, state: &ApplyState) {
    batch.put(apply_state_key(region_id), state.encode_to_vec());
}

/// Every region state stored on this node.
pub fn all_region_states(engine: &dyn KvEngine) -> Result<Vec<RegionLocalState>> {
    let mut states = Vec::new();
    let mut err = None;
    engine.scan(
        &region_state_key(0),
        &region_state_key(u64::MAX),
        &mut |_, v| match RegionLocalState::decode(v) {
            Ok(s) => {
                states.push(s);
                true
            }
            Err(e) => {
                err = Some(StorageError::corruption("region state", e));
                false
            }
        },
    )?;
    // region_state_key(u64::MAX) is excluded by the half-open scan; no region has that id.
    match err {
        Some(e) => Err(e),
        None => Ok(states),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memcomparable_encoding_keeps_order_and_round_trips() {
        let keys: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            b"a".to_vec(),
            b"a\0".to_vec(),
            b"abcdefgh".to_vec(),
            b"abcdefgh\0".to_vec(),
            b"abcdefghi".to_vec(),
            vec![0xff; 9],
        ];
        for a in &keys {
            let ea = encode_bytes(a);
            let (back, rest) = decode_bytes(&ea).unwrap();
            assert_eq!(&back, a);
            assert!(rest.is_empty());
            for b in &keys {
                assert_eq!(a.cmp(b), ea.cmp(&encode_bytes(b)), "{a:?} vs {b:?}");
            }
        }
        assert!(decode_bytes(&[1, 2, 3]).is_none());
        assert!(
            decode_bytes(&[1, 0, 0, 0, 0, 0, 0, 7, 0xf8]).is_none(),
            "nonzero padding"
        );
    }

    #[test]
    fn versions_of_a_key_sort_newest_first_and_never_interleave_with_other_keys() {
        let mut all = [
            write_key(b"a", 5),
            write_key(b"a", 9),
            write_key(b"a\0", 7),
            write_key(b"a\0", 1),
            write_key(b"b", u64::MAX),
        ];
        all.sort();
        let decoded: Vec<_> = all.iter().map(|k| decode_data_key(k).unwrap()).collect();
        assert_eq!(
            decoded,
            vec![
                (Cf::Write, b"a".to_vec(), 9),
                (Cf::Write, b"a".to_vec(), 5),
                (Cf::Write, b"a\0".to_vec(), 7),
                (Cf::Write, b"a\0".to_vec(), 1),
                (Cf::Write, b"b".to_vec(), u64::MAX),
            ]
        );
        let (lo, hi) = versions_range(Cf::Write, b"a");
        assert!(all.iter().filter(|k| **k >= lo && **k < hi).count() == 2);
    }

    #[test]
    fn a_region_range_holds_exactly_the_keys_of_its_encoded_range_in_every_family() {
        for cf in Cf::ALL {
            let (lo, hi) = cf_range(cf, b"b", b"d");
            for (key, inside) in [
                (&b"a"[..], false),
                (b"b", true),
                (b"c\xff\xff", true),
                (b"d", false),
            ] {
                let k = cf_key(cf, key, 42);
                assert_eq!(k >= lo && k < hi, inside, "{cf:?} {key:?}");
            }
            let (lo, hi) = cf_range(cf, b"b", b"");
            assert!(cf_key(cf, &[0xff; 20], 0) >= lo && cf_key(cf, &[0xff; 20], 0) < hi);
        }
    }

    /// Counts engine writes and their largest batch.
    struct Counting {
        inner: crate::MemKv,
        writes: std::sync::atomic::AtomicUsize,
        largest: std::sync::atomic::AtomicUsize,
    }

    impl KvEngine for Counting {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
            self.inner.get(key)
        }
        fn scan(
            &self,
            start: &[u8],
            end: &[u8],
            visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
        ) -> Result<()> {
            self.inner.scan(start, end, visit)
        }
        fn write(&self, batch: KvWriteBatch) -> Result<()> {
            use std::sync::atomic::Ordering::SeqCst;
            self.writes.fetch_add(1, SeqCst);
            self.largest.fetch_max(batch.len(), SeqCst);
            self.inner.write(batch)
        }
        fn flush(&self) -> Result<()> {
            self.inner.flush()
        }
    }

    fn region(id: u64, start: &[u8], end: &[u8]) -> Region {
        Region {
            id,
            start_key: encode_bytes(start),
            end_key: if end.is_empty() {
                Vec::new()
            } else {
                encode_bytes(end)
            },
            ..Default::default()
        }
    }

    /// One raw and one lock key per user key.
    fn fill(kv: &dyn KvEngine, users: impl Iterator<Item = Vec<u8>>) {
        let mut batch = KvWriteBatch::default();
        for u in users {
            batch.put(cf_key(Cf::Raw, &encode_bytes(&u), 0), b"v".to_vec());
            batch.put(cf_key(Cf::Lock, &encode_bytes(&u), 0), b"l".to_vec());
        }
        kv.write(batch).unwrap();
    }

    #[test]
    fn a_large_range_is_deleted_in_pages_and_nothing_outside_it() {
        let kv = Counting {
            inner: crate::MemKv::new(),
            writes: Default::default(),
            largest: Default::default(),
        };
        let n = DELETE_PAGE_KEYS * 2 + 100;
        fill(&kv, (0..n).map(|i| format!("b{i:08}").into_bytes()));
        fill(&kv, ["a".into(), "c".into()].into_iter());
        let before = kv.writes.load(std::sync::atomic::Ordering::SeqCst);
        kv.largest.store(0, std::sync::atomic::Ordering::SeqCst);
        let r = region(1, b"b", b"c");
        assert_eq!(
            delete_data(&kv, &r.start_key, &r.end_key).unwrap(),
            2 * n as u64
        );
        let writes = kv.writes.load(std::sync::atomic::Ordering::SeqCst) - before;
        // Per column family: two full pages and a rest.
        assert_eq!(writes, 2 * 3, "pages written");
        assert!(kv.largest.load(std::sync::atomic::Ordering::SeqCst) <= DELETE_PAGE_KEYS);
        let left: Vec<_> = kv.inner.dump().into_keys().collect();
        assert_eq!(left.len(), 4, "a and c in both families stay: {left:?}");
    }

    #[test]
    fn data_outside_live_regions_is_deleted_and_data_inside_kept() {
        let kv = crate::MemKv::new();
        fill(
            &kv,
            [b"a", b"d", b"f", b"k", b"x"]
                .into_iter()
                .map(|k| k.to_vec()),
        );
        // Live: [c, e) and [j, ∞); destroyed leftovers: a, f.
        let live = vec![region(2, b"j", b""), region(1, b"c", b"e")];
        assert_eq!(delete_data_outside(&kv, &live).unwrap(), 4);
        let users: Vec<Vec<u8>> = kv
            .dump()
            .into_keys()
            .filter(|k| k[0] == Cf::Raw.prefix())
            .map(|k| decode_bytes(&k[1..]).unwrap().0)
            .collect();
        assert_eq!(users, vec![b"d".to_vec(), b"k".to_vec(), b"x".to_vec()]);
        // A region over the whole key space keeps everything.
        assert_eq!(delete_data_outside(&kv, &[region(3, b"", b"")]).unwrap(), 0);
        // No live region: nothing is anyone's.
        assert_eq!(delete_data_outside(&kv, &[]).unwrap(), 6);
        assert!(kv.dump().keys().all(|k| Cf::of_prefix(k[0]).is_none()));
    }
}
