//! Where things live in the [`KvEngine`](crate::KvEngine) of a node (see docs/design.md):
//!
//! ```text
//! 0x01 "ident"                    StoreIdent      who this store is
//! 0x01 "r" region_id: u64 BE      RegionLocalState a region's metadata and peer state
//! 0x01 "a" region_id: u64 BE      ApplyState      how far the region has applied its log
//! 'z' encoded_key                 value           raw data
//! ```

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

/// The storage key of an encoded user key.
pub fn data_key(encoded: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + encoded.len());
    key.push(DATA_PREFIX);
    key.extend_from_slice(encoded);
    key
}

/// The storage-key range of the region range `[start, end)` of encoded keys.
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

/// Deletes every data key of the region range `[start, end)` (of encoded keys) in `batch`.
pub fn delete_data(
    engine: &dyn KvEngine,
    start: &[u8],
    end: &[u8],
    batch: &mut KvWriteBatch,
) -> Result<()> {
    let (lo, hi) = data_range(start, end);
    engine.scan(&lo, &hi, &mut |k, _| {
        batch.delete(k.to_vec());
        true
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
