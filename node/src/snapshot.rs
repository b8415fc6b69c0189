//! Region snapshots: what a leader sends a follower that is too far behind (or new), and how the
//! follower installs it.
//!
//! A snapshot has two parts. Its header travels inside raft's `Snapshot` (a [`SnapshotData`]:
//! the region at the snapshot index, its merge state, and the length, hash and key count of the
//! data file). The data file holds every data key of the region, in frames of about
//! [`FRAME_BYTES`]; it lives in the node's snapshot directory ([`SnapshotDir`]) and is written,
//! streamed, checked and installed a frame at a time, so no step holds a region in memory.
//!
//! - **Generate** ([`generate`]): on the snapshot worker, while the region's apply delegate is
//!   held there (nothing writes the region meanwhile), the region is scanned into a file.
//! - **Receive** ([`Incoming`]): the receiving node writes the streamed bytes to a temporary
//!   file, checks them against the header (length, hash, frames, every key inside the region)
//!   and only then hands the raft message on.
//! - **Install**: the raft round records the install ([`begin_install`]: the region state says
//!   `Applying`, the apply state names the snapshot, the file is linked to `applying-<id>`),
//!   and the snapshot worker replaces the range's data page by page ([`install`]) and then
//!   writes the final region state. A node that crashes in between finishes the install when it
//!   starts again.

use prost::Message as _;
use raft::eraftpb::Snapshot;
use ringkv_proto::metapb::Region;
use ringkv_proto::raftpb::{
    ApplyState, MergeState, PeerState, RaftMessage, RegionLocalState, SnapshotData, SnapshotKv,
    SnapshotKvBatch,
};
use ringkv_storage::conf_state_of;
use ringkv_storage::layout;
use ringkv_storage::{KvEngine, KvWriteBatch, Result as StorageResult, StorageError};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use xxhash_rust::xxh3::Xxh3;

/// Bytes of key-value pairs a frame of a data file gathers before it is written (a frame holds
/// at least one pair, so one pair larger than this makes a larger frame).
pub const FRAME_BYTES: usize = 1024 * 1024;
/// The largest frame a data file may hold: one pair of the largest key and value, and room.
const FRAME_BYTES_MAX: usize =
    ringkv_proto::limits::VALUE_BYTES_MAX + ringkv_proto::limits::KEY_BYTES_MAX + 1024;
/// The largest data file a node accepts (it bounds disk, not memory: files are streamed).
/// Regions split long before (96 MiB by default).
pub const SNAPSHOT_BYTES_MAX: u64 = 8 * 1024 * 1024 * 1024;

/// The directory holding a node's snapshot files:
/// - `gen-<region>-<term>-<index>`: generated here, for followers (gone at restart);
/// - `rcv-<region>-<term>-<index>`: received and checked, not installed yet (gone at restart);
/// - `applying-<region>`: being installed (kept until the install is done);
/// - `tmp-<n>`: being written.
#[derive(Clone, Debug)]
pub struct SnapshotDir {
    path: PathBuf,
    next_temp: Arc<AtomicU64>,
}

impl SnapshotDir {
    /// Opens (or creates) the directory and removes what a restart makes useless: temporary,
    /// generated and received files. Files of installs under way stay.
    pub fn open(path: &Path) -> std::io::Result<SnapshotDir> {
        std::fs::create_dir_all(path)?;
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if ["tmp-", "gen-", "rcv-"].iter().any(|p| name.starts_with(p)) {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(SnapshotDir {
            path: path.to_path_buf(),
            next_temp: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn generated(&self, region_id: u64, term: u64, index: u64) -> PathBuf {
        self.path.join(format!("gen-{region_id}-{term}-{index}"))
    }

    pub fn received(&self, region_id: u64, term: u64, index: u64) -> PathBuf {
        self.path.join(format!("rcv-{region_id}-{term}-{index}"))
    }

    pub fn applying(&self, region_id: u64) -> PathBuf {
        self.path.join(format!("applying-{region_id}"))
    }

    fn temp(&self) -> PathBuf {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        self.path.join(format!("tmp-{n}"))
    }

    /// Removes every `applying` file (at start, once every install cut short is finished).
    pub fn remove_applying_files(&self) {
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("applying-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Removes the generated and received files of `region_id` other than `keep`.
    pub fn remove_region_files(&self, region_id: u64, keep: Option<&Path>) {
        let prefixes = [format!("gen-{region_id}-"), format!("rcv-{region_id}-")];
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if prefixes.iter().any(|p| name.starts_with(p.as_str()))
                && keep.is_none_or(|k| k != entry.path())
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// The header of a snapshot, if it decodes and names a region.
pub fn header(snap: &Snapshot) -> Option<SnapshotData> {
    let data = SnapshotData::decode(snap.get_data()).ok()?;
    data.region.as_ref()?;
    Some(data)
}

/// What generating a snapshot needs to know of its region, read on the raft poller.
#[derive(Debug, Clone)]
pub struct GenerateTask {
    pub region: Region,
    /// The applied index the region's data is at, and its term.
    pub index: u64,
    pub term: u64,
    pub merge_state: Option<MergeState>,
    pub merged_sources: Vec<u64>,
}

/// Writes the data of `task`'s region, exactly as the engine holds it, to a generated file and
/// returns the snapshot naming it. The region's data must not change meanwhile (the caller
/// holds its apply delegate).
pub fn generate(
    kv: &dyn KvEngine,
    dir: &SnapshotDir,
    task: &GenerateTask,
) -> StorageResult<Snapshot> {
    let region = &task.region;
    let io = |e: std::io::Error| {
        StorageError::corruption(format!("region {} snapshot file", region.id), e)
    };
    let temp = dir.temp();
    let mut out = FrameWriter::new(File::create(&temp).map_err(io)?);
    let mut frame = SnapshotKvBatch::default();
    let mut frame_bytes = 0;
    let mut failed = None;
    // The region's session records (they sort before its data), then its data.
    let mut ranges = vec![layout::session_range(region.id)];
    ranges.extend(
        layout::region_data_ranges(&region.start_key, &region.end_key)
            .into_iter()
            .map(|(_, lo, hi)| (lo, hi)),
    );
    let sessions = layout::read_apply_state(kv, region.id)?.unwrap_or_default();
    for (lo, hi) in ranges {
        kv.scan(&lo, &hi, &mut |k, v| {
            frame_bytes += k.len() + v.len();
            frame.kvs.push(SnapshotKv {
                key: k.to_vec(),
                value: v.to_vec(),
            });
            if frame_bytes >= FRAME_BYTES {
                frame_bytes = 0;
                if let Err(e) = out.write_frame(&std::mem::take(&mut frame)) {
                    failed = Some(e);
                    return false;
                }
            }
            true
        })?;
        if let Some(e) = failed.take() {
            let _ = std::fs::remove_file(&temp);
            return Err(io(e));
        }
    }
    if !frame.kvs.is_empty() {
        out.write_frame(&frame).map_err(io)?;
    }
    let (file_bytes, file_xxh3, kv_count) = out.finish().map_err(io)?;
    let path = dir.generated(region.id, task.term, task.index);
    std::fs::rename(&temp, &path).map_err(io)?;
    let data = SnapshotData {
        region: Some(region.clone()),
        merge_state: task.merge_state.clone(),
        merged_sources: task.merged_sources.clone(),
        file_bytes,
        file_xxh3,
        kv_count,
        session_clock_ms: sessions.session_clock_ms,
        session_horizon_ms: sessions.session_horizon_ms,
    };
    let mut snap = Snapshot::default();
    snap.set_data(data.encode_to_vec().into());
    let meta = snap.mut_metadata();
    meta.index = task.index;
    meta.term = task.term;
    meta.set_conf_state(conf_state_of(region));
    Ok(snap)
}

/// Writes frames to a file, hashing and counting as it goes.
struct FrameWriter {
    out: BufWriter<File>,
    hash: Xxh3,
    bytes: u64,
    kvs: u64,
}

impl FrameWriter {
    fn new(file: File) -> FrameWriter {
        FrameWriter {
            out: BufWriter::with_capacity(256 * 1024, file),
            hash: Xxh3::new(),
            bytes: 0,
            kvs: 0,
        }
    }

    fn write_frame(&mut self, frame: &SnapshotKvBatch) -> std::io::Result<()> {
        let body = frame.encode_to_vec();
        let len = u32::try_from(body.len()).expect("a frame is far below 4 GiB");
        let len = len.to_le_bytes();
        for part in [&len[..], &body] {
            self.out.write_all(part)?;
            self.hash.update(part);
            self.bytes += part.len() as u64;
        }
        self.kvs += frame.kvs.len() as u64;
        Ok(())
    }

    /// Syncs the file; returns its length, hash and pair count.
    fn finish(self) -> std::io::Result<(u64, u64, u64)> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok((self.bytes, self.hash.digest(), self.kvs))
    }
}

/// Reads the frames of a data file in order.
struct FrameReader<R> {
    input: R,
}

impl<R: Read> FrameReader<R> {
    /// The next frame, None at the end of the file, or what is wrong with it.
    fn next_frame(&mut self) -> Result<Option<SnapshotKvBatch>, String> {
        let mut len = [0u8; 4];
        match self.input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.to_string()),
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > FRAME_BYTES_MAX {
            return Err(format!(
                "a frame of {len} bytes (at most {FRAME_BYTES_MAX})"
            ));
        }
        let mut body = vec![0u8; len];
        self.input
            .read_exact(&mut body)
            .map_err(|e| format!("a frame cut short: {e}"))?;
        SnapshotKvBatch::decode(body.as_slice())
            .map(Some)
            .map_err(|e| format!("an undecodable frame: {e}"))
    }
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    hash: Xxh3,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Checks a data file against its header: its length and hash, that every frame decodes, and
/// that every key is one of the region's session records or inside its data ranges, in order.
/// Reads a frame at a time.
pub fn verify(path: &Path, header: &SnapshotData) -> Result<(), String> {
    let region = header.region.as_ref().ok_or("a header without a region")?;
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut frames = FrameReader {
        input: Hashing {
            inner: BufReader::with_capacity(256 * 1024, file),
            hash: Xxh3::new(),
            bytes: 0,
        },
    };
    let mut ranges = vec![layout::session_range(region.id)];
    ranges.extend(
        layout::region_data_ranges(&region.start_key, &region.end_key)
            .into_iter()
            .map(|(_, lo, hi)| (lo, hi)),
    );
    let mut kvs = 0u64;
    let mut last: Option<Vec<u8>> = None;
    while let Some(frame) = frames.next_frame()? {
        for pair in frame.kvs {
            // A key outside the region's data ranges would be another region's data (or meta).
            if !ranges
                .iter()
                .any(|(lo, hi)| pair.key >= *lo && pair.key < *hi)
            {
                return Err(format!(
                    "key {:?} is outside region {}",
                    pair.key, region.id
                ));
            }
            if last.as_ref().is_some_and(|l| *l >= pair.key) {
                return Err(format!("key {:?} is out of order", pair.key));
            }
            last = Some(pair.key);
            kvs += 1;
        }
    }
    let input = frames.input;
    if input.bytes != header.file_bytes {
        return Err(format!(
            "{} bytes where the header says {}",
            input.bytes, header.file_bytes
        ));
    }
    if input.hash.digest() != header.file_xxh3 {
        return Err("the file's hash does not match the header".into());
    }
    if kvs != header.kv_count {
        return Err(format!(
            "{kvs} pairs where the header says {}",
            header.kv_count
        ));
    }
    Ok(())
}

/// A snapshot message being received: its file is written to a temporary file as it comes,
/// then checked and renamed to its received name. Dropped unfinished, it removes its file.
pub struct Incoming {
    header: SnapshotData,
    out: Option<BufWriter<File>>,
    temp: PathBuf,
    dest: PathBuf,
    written: u64,
}

impl Incoming {
    /// Starts receiving the file of snapshot message `msg` into `dir`.
    pub fn begin(dir: &SnapshotDir, msg: &RaftMessage) -> Result<Incoming, String> {
        let inner = <raft::eraftpb::Message as protobuf::Message>::parse_from_bytes(&msg.message)
            .map_err(|e| format!("malformed raft message: {e}"))?;
        let snap = inner.get_snapshot();
        let header = header(snap).ok_or("a snapshot without a readable header")?;
        let region = header.region.as_ref().expect("header checks the region");
        if region.id != msg.region_id {
            return Err(format!(
                "a snapshot of region {} sent as region {}",
                region.id, msg.region_id
            ));
        }
        if header.file_bytes > SNAPSHOT_BYTES_MAX {
            return Err(format!(
                "a snapshot file of {} bytes (at most {SNAPSHOT_BYTES_MAX})",
                header.file_bytes
            ));
        }
        let meta = snap.get_metadata();
        let temp = dir.temp();
        let file =
            File::create(&temp).map_err(|e| format!("cannot create {}: {e}", temp.display()))?;
        Ok(Incoming {
            dest: dir.received(region.id, meta.term, meta.index),
            header,
            out: Some(BufWriter::with_capacity(256 * 1024, file)),
            temp,
            written: 0,
        })
    }

    /// Appends the next bytes of the file.
    pub fn write(&mut self, data: &[u8]) -> Result<(), String> {
        self.written += data.len() as u64;
        if self.written > self.header.file_bytes {
            return Err(format!(
                "more than the {} bytes the header announces",
                self.header.file_bytes
            ));
        }
        let out = self.out.as_mut().expect("written before finished");
        out.write_all(data)
            .map_err(|e| format!("cannot write {}: {e}", self.temp.display()))
    }

    /// Syncs and checks the file and gives it its received name.
    pub fn finish(mut self) -> Result<PathBuf, String> {
        let out = self.out.take().expect("finished once");
        let file = out
            .into_inner()
            .map_err(|e| format!("cannot write {}: {}", self.temp.display(), e.error()))?;
        file.sync_all()
            .map_err(|e| format!("cannot sync {}: {e}", self.temp.display()))?;
        drop(file);
        verify(&self.temp, &self.header)?;
        std::fs::rename(&self.temp, &self.dest)
            .map_err(|e| format!("cannot rename {}: {e}", self.temp.display()))?;
        Ok(self.dest.clone())
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        // Removes the temporary file unless it was renamed (then this fails harmlessly).
        let _ = std::fs::remove_file(&self.temp);
    }
}

/// Whether the received file of snapshot `snap` of `region_id` is here (checked on receipt).
pub fn received(dir: &SnapshotDir, region_id: u64, snap: &Snapshot) -> bool {
    let meta = snap.get_metadata();
    dir.received(region_id, meta.term, meta.index).exists()
}

/// The region state of a snapshot being installed (see `PEER_STATE_APPLYING`).
pub fn applying_state(header: &SnapshotData) -> RegionLocalState {
    RegionLocalState {
        state: PeerState::Applying as i32,
        region: header.region.clone(),
        merge_state: header.merge_state.clone(),
        merged_sources: header.merged_sources.clone(),
    }
}

/// Records the start of an install of `snap` (received for its region): links the received
/// file to the region's `applying` name and adds to `batch` the `Applying` region state and an
/// apply state at the snapshot. The caller writes and flushes `batch` before the raft log
/// restarts after the snapshot; from then on a restart finishes the install.
pub fn begin_install(
    dir: &SnapshotDir,
    snap: &Snapshot,
    header: &SnapshotData,
    batch: &mut KvWriteBatch,
) -> StorageResult<()> {
    let region = header.region.as_ref().expect("header checks the region");
    let meta = snap.get_metadata();
    let received = dir.received(region.id, meta.term, meta.index);
    let applying = dir.applying(region.id);
    let io = |e: std::io::Error| {
        StorageError::corruption(format!("region {} snapshot file", region.id), e)
    };
    match std::fs::remove_file(&applying) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    std::fs::hard_link(&received, &applying).map_err(io)?;
    File::open(dir.path())
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    let _ = std::fs::remove_file(&received);
    layout::write_region_state(batch, &applying_state(header));
    layout::write_apply_state(
        batch,
        region.id,
        &ApplyState {
            applied_index: meta.index,
            truncated_index: meta.index,
            truncated_term: meta.term,
            session_clock_ms: header.session_clock_ms,
            session_horizon_ms: header.session_horizon_ms,
        },
    );
    Ok(())
}

/// Replaces the data of the range of a region being installed (`state`, in `Applying`) with
/// its `applying` file, page by page, then writes its final region state and removes the file.
/// Running it again after a crash in the middle ends in the same state. Returns the number of
/// pairs written.
pub fn install(
    kv: &dyn KvEngine,
    dir: &SnapshotDir,
    state: &RegionLocalState,
) -> StorageResult<u64> {
    let region = state
        .region
        .as_ref()
        .expect("an applying state names its region");
    assert_eq!(
        state.state,
        PeerState::Applying as i32,
        "region {} is not installing",
        region.id
    );
    let path = dir.applying(region.id);
    let what = || format!("region {} snapshot file {}", region.id, path.display());
    let file = File::open(&path).map_err(|e| StorageError::corruption(what(), e))?;
    let (sessions_lo, sessions_hi) = layout::session_range(region.id);
    layout::delete_paged(kv, &sessions_lo, &sessions_hi, &mut |_| true)?;
    layout::delete_data(kv, &region.start_key, &region.end_key)?;
    let mut frames = FrameReader {
        input: BufReader::with_capacity(256 * 1024, file),
    };
    let mut pairs = 0;
    while let Some(frame) = frames
        .next_frame()
        .map_err(|e| StorageError::corruption(what(), e))?
    {
        let mut batch = KvWriteBatch::default();
        for pair in frame.kvs {
            batch.put(pair.key, pair.value);
        }
        pairs += batch.len() as u64;
        kv.write(batch)?;
    }
    let mut batch = KvWriteBatch::default();
    let final_state = if state.merge_state.is_some() {
        PeerState::Merging
    } else {
        PeerState::Normal
    };
    layout::write_region_state(
        &mut batch,
        &RegionLocalState {
            state: final_state as i32,
            ..state.clone()
        },
    );
    kv.write(batch)?;
    kv.flush()?;
    let _ = std::fs::remove_file(&path);
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_proto::metapb::{Peer as PeerMeta, RegionEpoch};
    use ringkv_storage::layout::{cf_key, encode_bytes, Cf};
    use ringkv_storage::MemKv;

    fn region(id: u64, start: &[u8], end: &[u8]) -> Region {
        Region {
            id,
            start_key: encode_bytes(start),
            end_key: if end.is_empty() {
                Vec::new()
            } else {
                encode_bytes(end)
            },
            region_epoch: Some(RegionEpoch {
                conf_ver: 1,
                version: 1,
            }),
            peers: vec![PeerMeta {
                id: id * 10,
                store_id: 1,
                role: 0,
            }],
        }
    }

    fn put_users(kv: &dyn KvEngine, users: &[Vec<u8>], value: &[u8]) {
        let mut batch = KvWriteBatch::default();
        for u in users {
            batch.put(cf_key(Cf::Raw, &encode_bytes(u), 0), value.to_vec());
        }
        kv.write(batch).unwrap();
    }

    fn raw_users(kv: &MemKv) -> Vec<(Vec<u8>, Vec<u8>)> {
        kv.dump()
            .into_iter()
            .filter(|(k, _)| k[0] == Cf::Raw.prefix())
            .map(|(k, v)| (layout::decode_bytes(&k[1..]).unwrap().0, v))
            .collect()
    }

    fn snapshot_message(snap: &Snapshot, region_id: u64) -> RaftMessage {
        let mut inner = raft::eraftpb::Message::default();
        inner.set_msg_type(raft::eraftpb::MessageType::MsgSnapshot);
        inner.set_snapshot(snap.clone());
        RaftMessage {
            region_id,
            message: protobuf::Message::write_to_bytes(&inner).unwrap(),
            ..Default::default()
        }
    }

    /// Sends the generated file of `snap` through an [`Incoming`] in chunks of `chunk`.
    fn receive(
        dir: &SnapshotDir,
        from: &Path,
        snap: &Snapshot,
        chunk: usize,
    ) -> Result<PathBuf, String> {
        let header = header(snap).unwrap();
        let mut incoming =
            Incoming::begin(dir, &snapshot_message(snap, header.region.unwrap().id))?;
        for part in std::fs::read(from).unwrap().chunks(chunk) {
            incoming.write(part)?;
        }
        incoming.finish()
    }

    /// A region of `n` keys, with values large enough to need several frames.
    fn sender(n: usize) -> (MemKv, tempfile::TempDir, SnapshotDir, Snapshot, Region) {
        let kv = MemKv::new();
        let users: Vec<Vec<u8>> = (0..n).map(|i| format!("k{i:05}").into_bytes()).collect();
        put_users(&kv, &users, &[7u8; 1000]);
        put_users(&kv, &[b"a".to_vec(), b"z".to_vec()], b"outside");
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(&tmp.path().join("send")).unwrap();
        let r = region(5, b"k", b"l");
        let task = GenerateTask {
            region: r.clone(),
            index: 40,
            term: 3,
            merge_state: None,
            merged_sources: vec![2],
        };
        let snap = generate(&kv, &dir, &task).unwrap();
        (kv, tmp, dir, snap, r)
    }

    #[test]
    fn a_snapshot_goes_from_engine_to_file_to_engine_in_frames_and_replaces_the_range() {
        let (_, tmp, send_dir, snap, r) = sender(3000);
        let head = header(&snap).unwrap();
        assert_eq!(head.kv_count, 3000);
        assert!(head.file_bytes > 2 * FRAME_BYTES as u64, "several frames");
        let generated = send_dir.generated(5, 3, 40);
        let recv_dir = SnapshotDir::open(&tmp.path().join("recv")).unwrap();
        let received = receive(&recv_dir, &generated, &snap, 64 * 1024).unwrap();
        assert_eq!(received, recv_dir.received(5, 3, 40));
        assert!(super::received(&recv_dir, 5, &snap));

        // The receiver holds old data in the range, and a neighbour's outside it.
        let kv = MemKv::new();
        put_users(&kv, &[b"k-old".to_vec(), b"k00001".to_vec()], b"old");
        put_users(&kv, &[b"m".to_vec()], b"neighbour");
        let mut batch = KvWriteBatch::default();
        begin_install(&recv_dir, &snap, &head, &mut batch).unwrap();
        kv.write(batch).unwrap();
        assert!(!received.exists() && recv_dir.applying(5).exists());
        let state = layout::read_region_state(&kv, 5).unwrap().unwrap();
        assert_eq!(state.state, PeerState::Applying as i32);
        assert_eq!(
            layout::read_apply_state(&kv, 5)
                .unwrap()
                .unwrap()
                .applied_index,
            40
        );

        assert_eq!(install(&kv, &recv_dir, &state).unwrap(), 3000);
        let users = raw_users(&kv);
        assert_eq!(users.len(), 3001, "the snapshot's keys and the neighbour's");
        assert!(users
            .iter()
            .all(|(k, v)| (k.as_slice() == b"m") == (v.as_slice() == b"neighbour")));
        assert!(users.iter().all(|(k, _)| k.as_slice() != b"k-old"));
        let state = layout::read_region_state(&kv, 5).unwrap().unwrap();
        assert_eq!(state.state, PeerState::Normal as i32);
        assert_eq!(state.region, Some(r));
        assert_eq!(state.merged_sources, vec![2]);
        assert!(
            !recv_dir.applying(5).exists(),
            "the file goes once installed"
        );
    }

    #[test]
    fn an_install_cut_short_finishes_when_run_again() {
        let (_, tmp, send_dir, snap, _) = sender(500);
        let head = header(&snap).unwrap();
        let recv_dir = SnapshotDir::open(&tmp.path().join("recv")).unwrap();
        receive(&recv_dir, &send_dir.generated(5, 3, 40), &snap, 1 << 20).unwrap();
        let kv = MemKv::new();
        put_users(&kv, &[b"k-old".to_vec()], b"old");
        let mut batch = KvWriteBatch::default();
        begin_install(&recv_dir, &snap, &head, &mut batch).unwrap();
        kv.write(batch).unwrap();
        let state = layout::read_region_state(&kv, 5).unwrap().unwrap();
        // A disk fault stops the install after its first page.
        kv.set_fail_next_write(true);
        assert!(install(&kv, &recv_dir, &state).is_err());
        let state = layout::read_region_state(&kv, 5).unwrap().unwrap();
        assert_eq!(state.state, PeerState::Applying as i32, "still installing");
        // A restart reopens the directory and finishes the install.
        let recv_dir = SnapshotDir::open(recv_dir.path()).unwrap();
        assert!(
            recv_dir.applying(5).exists(),
            "a restart keeps the install's file"
        );
        assert_eq!(install(&kv, &recv_dir, &state).unwrap(), 500);
        assert_eq!(raw_users(&kv).len(), 500);
    }

    #[test]
    fn a_damaged_or_foreign_file_is_refused_on_receipt_and_leaves_nothing() {
        let (_, tmp, send_dir, snap, _) = sender(300);
        let generated = send_dir.generated(5, 3, 40);
        let bytes = std::fs::read(&generated).unwrap();
        let recv_dir = SnapshotDir::open(&tmp.path().join("recv")).unwrap();
        let bad = tmp.path().join("bad");

        // One flipped byte: the hash (or a frame) tells.
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 0x40;
        std::fs::write(&bad, &flipped).unwrap();
        assert!(receive(&recv_dir, &bad, &snap, 4096).is_err());

        // Cut short.
        std::fs::write(&bad, &bytes[..bytes.len() - 10]).unwrap();
        let err = receive(&recv_dir, &bad, &snap, 4096).unwrap_err();
        assert!(err.contains("cut short") || err.contains("bytes"), "{err}");

        // Longer than announced.
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0; 8]);
        std::fs::write(&bad, &longer).unwrap();
        let err = receive(&recv_dir, &bad, &snap, 4096).unwrap_err();
        assert!(err.contains("more than"), "{err}");

        // A well-formed file whose keys are outside the region it claims.
        let mut head = header(&snap).unwrap();
        head.region = Some(region(5, b"x", b"y"));
        let mut foreign = snap.clone();
        foreign.set_data(head.encode_to_vec().into());
        let err = receive(&recv_dir, &generated, &foreign, 4096).unwrap_err();
        assert!(err.contains("outside region 5"), "{err}");

        // A frame length beyond any frame.
        let mut huge = (u32::MAX).to_le_bytes().to_vec();
        huge.extend_from_slice(&bytes[4..]);
        std::fs::write(&bad, &huge).unwrap();
        let err = receive(&recv_dir, &bad, &snap, 4096).unwrap_err();
        assert!(err.contains("a frame of"), "{err}");

        let left: Vec<_> = std::fs::read_dir(recv_dir.path()).unwrap().collect();
        assert!(left.is_empty(), "refused files are removed: {left:?}");
    }

    #[test]
    fn a_restart_removes_generated_received_and_temporary_files_but_not_installs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(tmp.path()).unwrap();
        for path in [
            dir.generated(1, 1, 1),
            dir.received(2, 1, 1),
            dir.temp(),
            dir.applying(3),
        ] {
            std::fs::write(path, b"x").unwrap();
        }
        let dir = SnapshotDir::open(tmp.path()).unwrap();
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec!["applying-3".to_string()]);
    }

    #[test]
    fn a_snapshot_carries_the_regions_session_records_and_clock_and_replaces_the_old_ones() {
        use ringkv_proto::raftpb::SessionRecord;
        let kv = MemKv::new();
        put_users(&kv, &[b"k1".to_vec()], b"v");
        let mut batch = KvWriteBatch::default();
        let record = SessionRecord {
            last_ms: 77,
            lowest_unanswered: 3,
        };
        batch.put(layout::session_key(5, 42), record.encode_to_vec());
        // Another region's session is not part of region 5's snapshot.
        batch.put(layout::session_key(6, 43), record.encode_to_vec());
        layout::write_apply_state(
            &mut batch,
            5,
            &ApplyState {
                applied_index: 40,
                session_clock_ms: 900,
                session_horizon_ms: 300,
                ..Default::default()
            },
        );
        kv.write(batch).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let send_dir = SnapshotDir::open(&tmp.path().join("send")).unwrap();
        let task = GenerateTask {
            region: region(5, b"k", b"l"),
            index: 40,
            term: 3,
            merge_state: None,
            merged_sources: vec![],
        };
        let snap = generate(&kv, &send_dir, &task).unwrap();
        let head = header(&snap).unwrap();
        assert_eq!((head.session_clock_ms, head.session_horizon_ms), (900, 300));
        assert_eq!(head.kv_count, 2, "one session record, one key");
        let recv_dir = SnapshotDir::open(&tmp.path().join("recv")).unwrap();
        receive(&recv_dir, &send_dir.generated(5, 3, 40), &snap, 1 << 20).unwrap();

        // The receiver remembers a session the snapshot does not: it goes.
        let target = MemKv::new();
        let mut batch = KvWriteBatch::default();
        batch.put(layout::session_key(5, 1), record.encode_to_vec());
        target.write(batch).unwrap();
        let mut batch = KvWriteBatch::default();
        begin_install(&recv_dir, &snap, &head, &mut batch).unwrap();
        target.write(batch).unwrap();
        let state = layout::read_region_state(&target, 5).unwrap().unwrap();
        install(&target, &recv_dir, &state).unwrap();
        let ids: Vec<u64> = crate::session::read_all(&target, 5)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids, vec![42]);
        assert!(crate::session::read_all(&target, 6).unwrap().is_empty());
        let applied = layout::read_apply_state(&target, 5).unwrap().unwrap();
        assert_eq!(
            (applied.session_clock_ms, applied.session_horizon_ms),
            (900, 300)
        );
    }
}
