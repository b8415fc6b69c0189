//! Raft messages between nodes: one long-lived gRPC stream per destination store, fed by a
//! bounded queue. Messages that cannot be sent (queue full, link down) are dropped: Raft
//! retransmits. Links reconnect with backoff and re-resolve the destination's address from the
//! placement driver, so a node that restarts on another port is found again.

use parking_lot::{Mutex, RwLock};
use prost::Message as _;
use ringkv_client::PdClient;
use ringkv_proto::limits::GRPC_MESSAGE_BYTES_MAX;
use ringkv_proto::raftpb::raft_client::RaftClient;
use ringkv_proto::raftpb::{RaftMessage, RaftMessageBatch, SnapshotChunk};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Messages queued per destination before new ones are dropped.
const LINK_QUEUE_MESSAGES_MAX: usize = 8192;
/// Messages sent in one batch at most.
const BATCH_MESSAGES_MAX: usize = 512;
/// Bytes per chunk of a snapshot stream.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// How long sending one snapshot may take (waiting for a send slot included).
const SNAPSHOT_SEND_TIMEOUT: Duration = Duration::from_secs(300);
/// Snapshots one node sends at once; more wait for a slot. Each holds a few chunks in memory.
pub const SNAPSHOT_SENDS_MAX: usize = 4;
/// Chunks read ahead of the network per snapshot being sent.
const SNAPSHOT_READ_AHEAD_CHUNKS: usize = 2;

/// Told whether a snapshot reached the other node.
pub type SnapshotReport = Box<dyn FnOnce(bool) + Send>;

/// Drops messages on chosen links: the fault-injection hook of the in-process harness. Shared
/// by every node of a test cluster. Links are directed: block both ways for a partition.
#[derive(Default, Debug)]
pub struct NetFilter {
    blocked: RwLock<HashSet<(u64, u64)>>,
}

impl NetFilter {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Drops every message from store `from` to store `to`.
    pub fn block(&self, from: u64, to: u64) {
        self.blocked.write().insert((from, to));
    }

    /// Cuts `store` off from `others` in both directions.
    pub fn isolate(&self, store: u64, others: &[u64]) {
        for &o in others {
            if o != store {
                self.block(store, o);
                self.block(o, store);
            }
        }
    }

    pub fn heal(&self) {
        self.blocked.write().clear();
    }

    pub fn allows(&self, from: u64, to: u64) -> bool {
        !self.blocked.read().contains(&(from, to))
    }
}

/// The sending side of the transport. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    store_id: u64,
    pd: PdClient,
    links: Mutex<HashMap<u64, mpsc::Sender<RaftMessage>>>,
    filter: Arc<NetFilter>,
    runtime: tokio::runtime::Handle,
    on_unreachable: UnreachableHook,
    /// When each store was last reported unreachable, so reports stay rare.
    reported: Mutex<HashMap<u64, std::time::Instant>>,
    /// Where generated snapshot files are.
    snapshots: crate::snapshot::SnapshotDir,
    /// Send slots (see [`SNAPSHOT_SENDS_MAX`]).
    snapshot_sends: Arc<tokio::sync::Semaphore>,
}

/// Told the id of a store messages could not be delivered to.
pub type UnreachableHook = Box<dyn Fn(u64) + Send + Sync>;

/// A store is reported unreachable at most this often.
const UNREACHABLE_REPORT_INTERVAL: Duration = Duration::from_secs(1);

impl Inner {
    fn report_unreachable(&self, to: u64) {
        let now = std::time::Instant::now();
        let mut reported = self.reported.lock();
        if reported
            .get(&to)
            .is_some_and(|t| now.duration_since(*t) < UNREACHABLE_REPORT_INTERVAL)
        {
            return;
        }
        reported.insert(to, now);
        drop(reported);
        (self.on_unreachable)(to);
    }
}

impl crate::raftstore::RaftTransport for Transport {
    fn send_all(&self, messages: Vec<RaftMessage>) {
        Transport::send_all(self, messages)
    }

    fn send_snapshot(&self, message: RaftMessage, report: SnapshotReport) {
        Transport::send_snapshot(self, message, report)
    }
}

impl Transport {
    /// `on_unreachable` hears of stores that messages could not reach (link broken, or cut
    /// by the filter), so quiet regions with a peer there wake and notice.
    pub fn new(
        store_id: u64,
        pd: PdClient,
        filter: Arc<NetFilter>,
        runtime: tokio::runtime::Handle,
        snapshots: crate::snapshot::SnapshotDir,
        on_unreachable: UnreachableHook,
    ) -> Self {
        Transport {
            inner: Arc::new(Inner {
                store_id,
                pd,
                links: Mutex::new(HashMap::new()),
                filter,
                runtime,
                on_unreachable,
                reported: Mutex::new(HashMap::new()),
                snapshots,
                snapshot_sends: Arc::new(tokio::sync::Semaphore::new(SNAPSHOT_SENDS_MAX)),
            }),
        }
    }

    /// Queues messages for sending; never blocks.
    pub fn send_all(&self, messages: Vec<RaftMessage>) {
        for msg in messages {
            self.send(msg);
        }
    }

    /// Streams a message carrying a snapshot, then the snapshot's generated file, to its store
    /// in chunks, on its own connection so it does not hold up other messages; `report` hears
    /// whether it arrived. At most [`SNAPSHOT_SENDS_MAX`] go at once.
    pub fn send_snapshot(&self, msg: RaftMessage, report: SnapshotReport) {
        let Some(to) = msg.to_peer.map(|p| p.store_id) else {
            report(false);
            return;
        };
        if !self.inner.filter.allows(self.inner.store_id, to) {
            report(false);
            return;
        }
        let region_id = msg.region_id;
        // Opened now: a newer snapshot of the region may replace (remove) the file later, and
        // the open file stays readable.
        let file = match generated_file(&self.inner.snapshots, &msg) {
            Ok(file) => file,
            Err(e) => {
                tracing::info!(region = region_id, to, error = %e, "snapshot not sent");
                report(false);
                return;
            }
        };
        let (pd, slots) = (self.inner.pd.clone(), self.inner.snapshot_sends.clone());
        self.inner.runtime.spawn(async move {
            let send = async {
                let _slot = slots.acquire_owned().await.map_err(|e| e.to_string())?;
                send_snapshot_to(&pd, to, msg, file).await
            };
            let outcome = tokio::time::timeout(SNAPSHOT_SEND_TIMEOUT, send).await;
            let delivered = matches!(outcome, Ok(Ok(())));
            if !delivered {
                tracing::info!(region = region_id, to, ?outcome, "snapshot not delivered");
            }
            report(delivered);
        });
    }

    fn send(&self, msg: RaftMessage) {
        let Some(to) = msg.to_peer.map(|p| p.store_id) else {
            return;
        };
        if !self.inner.filter.allows(self.inner.store_id, to) {
            self.inner.report_unreachable(to);
            return;
        }
        let mut links = self.inner.links.lock();
        let link = links.entry(to).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(LINK_QUEUE_MESSAGES_MAX);
            self.inner
                .runtime
                .spawn(run_link(self.inner.clone(), to, rx));
            tx
        });
        if let Err(mpsc::error::TrySendError::Closed(_)) = link.try_send(msg) {
            links.remove(&to);
        }
    }
}

/// The generated file of the snapshot `msg` carries.
fn generated_file(
    snapshots: &crate::snapshot::SnapshotDir,
    msg: &RaftMessage,
) -> Result<std::fs::File, String> {
    use protobuf::Message as _;
    let inner = raft::eraftpb::Message::parse_from_bytes(&msg.message)
        .map_err(|e| format!("undecodable snapshot message: {e}"))?;
    let meta = inner.get_snapshot().get_metadata();
    let path = snapshots.generated(msg.region_id, meta.term, meta.index);
    std::fs::File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))
}

async fn send_snapshot_to(
    pd: &PdClient,
    to: u64,
    msg: RaftMessage,
    file: std::fs::File,
) -> Result<(), String> {
    let store = pd.get_store(to).await.map_err(|e| e.to_string())?;
    let channel = ringkv_client::pd::channel_to(&store.address).map_err(|e| e.to_string())?;
    let mut client = RaftClient::new(channel);
    // The file is read on a blocking thread, a few chunks ahead of the network.
    let (tx, rx) = mpsc::channel(SNAPSHOT_READ_AHEAD_CHUNKS);
    let first = SnapshotChunk {
        message: msg.encode_to_vec(),
        data: Vec::new(),
    };
    tx.send(first).await.map_err(|e| e.to_string())?;
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Read as _;
        let mut file = file;
        loop {
            let mut data = vec![0u8; SNAPSHOT_CHUNK_BYTES];
            let mut filled = 0;
            while filled < data.len() {
                match file.read(&mut data[filled..])? {
                    0 => break,
                    n => filled += n,
                }
            }
            if filled == 0 {
                return Ok(());
            }
            data.truncate(filled);
            let chunk = SnapshotChunk {
                data,
                message: Vec::new(),
            };
            if tx.blocking_send(chunk).is_err() {
                // The stream ended early; its error is the one to report.
                return Ok(());
            }
        }
    });
    let sent = client
        .snapshot(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string());
    let read = reader.await.map_err(|e| e.to_string())?;
    sent?;
    read.map_err(|e| format!("cannot read the snapshot file: {e}"))
}

/// Keeps one stream to store `to` open and pumps batches into it.
async fn run_link(inner: Arc<Inner>, to: u64, mut rx: mpsc::Receiver<RaftMessage>) {
    let (from, pd) = (inner.store_id, inner.pd.clone());
    let mut backoff = Duration::from_millis(50);
    loop {
        let address = match pd.get_store(to).await {
            Ok(store) => store.address,
            Err(e) => {
                tracing::debug!(from, to, error = %e, "cannot resolve store address");
                if !drain_for(&mut rx, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let channel = match ringkv_client::pd::channel_to(&address) {
            Ok(ch) => ch,
            Err(e) => {
                tracing::warn!(to, %address, error = %e, "bad store address");
                if !drain_for(&mut rx, Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
        };
        let mut client = RaftClient::new(channel).max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
        let (stream_tx, stream_rx) = mpsc::channel::<RaftMessageBatch>(64);
        let mut call = tokio::spawn(async move {
            client
                .raft(tokio_stream::wrappers::ReceiverStream::new(stream_rx))
                .await
        });
        let mut sent_any = false;
        let mut ended = None;
        loop {
            // Watch the call too: a peer that goes away must be noticed even when nothing is
            // being sent (quiet regions send nothing).
            let first = tokio::select! {
                m = rx.recv() => m,
                r = &mut call => {
                    ended = Some(r);
                    break;
                }
            };
            let Some(first) = first else {
                call.abort();
                return;
            };
            let mut messages = vec![first];
            while messages.len() < BATCH_MESSAGES_MAX {
                match rx.try_recv() {
                    Ok(m) => messages.push(m),
                    Err(_) => break,
                }
            }
            if call.is_finished() || stream_tx.send(RaftMessageBatch { messages }).await.is_err() {
                break;
            }
            sent_any = true;
        }
        drop(stream_tx);
        let outcome = match ended {
            Some(r) => r,
            None => call.await,
        };
        tracing::debug!(from, to, %address, ?outcome, "raft link closed; reconnecting");
        inner.report_unreachable(to);
        if sent_any {
            backoff = Duration::from_millis(50);
        }
        if !drain_for(&mut rx, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Waits `wait`, dropping messages that arrive meanwhile (Raft resends what matters). Returns
/// false if the transport is gone.
async fn drain_for(rx: &mut mpsc::Receiver<RaftMessage>, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(_)) => continue,
            Ok(None) => return false,
            Err(_) => return true,
        }
    }
}
