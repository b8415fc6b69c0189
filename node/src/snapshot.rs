//! Region snapshots: what a leader sends a follower that is too far behind (or new), and how the
//! follower installs it. A snapshot is the region's metadata at an applied index plus every data
//! key in its range; installing it replaces the follower's data in that range and its apply
//! state in one atomic KV write, and restarts its log after the snapshot index.

use prost::Message as _;
use raft::eraftpb::Snapshot;
use raft::Storage as _;
use ringkv_proto::metapb::Region;
use ringkv_proto::raftpb::{ApplyState, PeerState, RegionLocalState, SnapshotData, SnapshotKv};
use ringkv_storage::conf_state_of;
use ringkv_storage::layout;
use ringkv_storage::{KvEngine, KvWriteBatch, PeerStorage, Result as StorageResult, StorageError};

/// Builds a snapshot of `storage`'s region at its applied index. Must run where no apply of
/// this region can interleave (between raftstore rounds), so the data is exactly that state.
pub fn generate(storage: &PeerStorage, kv: &dyn KvEngine) -> StorageResult<Snapshot> {
    let region = storage.region().clone();
    let index = storage.applied_index();
    let term = storage.term(index).map_err(|e| {
        StorageError::corruption(
            format!("region {} snapshot", region.id),
            format!("no term for applied index {index}: {e}"),
        )
    })?;
    let mut kvs = Vec::new();
    for (_, lo, hi) in layout::region_data_ranges(&region.start_key, &region.end_key) {
        kv.scan(&lo, &hi, &mut |k, v| {
            kvs.push(SnapshotKv {
                key: k.to_vec(),
                value: v.to_vec(),
            });
            true
        })?;
    }
    // The merge part of the region's state is the applied state too (written by the same
    // apply batches as the data).
    let local = layout::read_region_state(kv, region.id)?.unwrap_or_default();
    let merge_state = if local.state == PeerState::Merging as i32 {
        local.merge_state
    } else {
        None
    };
    let data = SnapshotData {
        region: Some(region.clone()),
        kvs,
        merge_state,
        merged_sources: local.merged_sources,
    };
    let mut snap = Snapshot::default();
    snap.set_data(data.encode_to_vec().into());
    let meta = snap.mut_metadata();
    meta.index = index;
    meta.term = term;
    meta.set_conf_state(conf_state_of(&region));
    Ok(snap)
}

/// The data of a snapshot, if it decodes and names a region.
pub fn decode(snap: &Snapshot) -> Option<SnapshotData> {
    let data = SnapshotData::decode(snap.get_data()).ok()?;
    data.region.as_ref()?;
    Some(data)
}

/// The writes that install `data` (taken at `index`/`term`): the region's range is emptied and
/// refilled, and the region and apply states say the snapshot is applied. One atomic batch.
pub fn install_batch(
    kv: &dyn KvEngine,
    data: &SnapshotData,
    index: u64,
    term: u64,
) -> StorageResult<KvWriteBatch> {
    let region: &Region = data.region.as_ref().expect("decode checked the region");
    let mut batch = KvWriteBatch::default();
    for (_, lo, hi) in layout::region_data_ranges(&region.start_key, &region.end_key) {
        kv.scan(&lo, &hi, &mut |k, _| {
            batch.delete(k.to_vec());
            true
        })?;
    }
    let ranges = layout::region_data_ranges(&region.start_key, &region.end_key);
    for pair in &data.kvs {
        // A key outside the region's data ranges would be another region's data (or meta).
        if !ranges
            .iter()
            .any(|(_, lo, hi)| pair.key >= *lo && pair.key < *hi)
        {
            return Err(StorageError::corruption(
                format!("region {} snapshot", region.id),
                format!("key {:?} outside the region's data", pair.key),
            ));
        }
        batch.put(pair.key.clone(), pair.value.clone());
    }
    let state = if data.merge_state.is_some() {
        PeerState::Merging
    } else {
        PeerState::Normal
    };
    layout::write_region_state(
        &mut batch,
        &RegionLocalState {
            state: state as i32,
            region: Some(region.clone()),
            merge_state: data.merge_state.clone(),
            merged_sources: data.merged_sources.clone(),
        },
    );
    layout::write_apply_state(
        &mut batch,
        region.id,
        &ApplyState {
            applied_index: index,
            truncated_index: index,
            truncated_term: term,
        },
    );
    Ok(batch)
}
