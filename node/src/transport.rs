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
/// How long sending one snapshot may take.
const SNAPSHOT_SEND_TIMEOUT: Duration = Duration::from_secs(300);

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
            }),
        }
    }

    /// Queues messages for sending; never blocks.
    pub fn send_all(&self, messages: Vec<RaftMessage>) {
        for msg in messages {
            self.send(msg);
        }
    }

    /// Streams a message carrying a snapshot to its store in chunks, on its own connection so
    /// it does not hold up other messages; `report` hears whether it arrived.
    pub fn send_snapshot(&self, msg: RaftMessage, report: SnapshotReport) {
        let Some(to) = msg.to_peer.map(|p| p.store_id) else {
            report(false);
            return;
        };
        if !self.inner.filter.allows(self.inner.store_id, to) {
            report(false);
            return;
        }
        let pd = self.inner.pd.clone();
        let region_id = msg.region_id;
        self.inner.runtime.spawn(async move {
            let outcome =
                tokio::time::timeout(SNAPSHOT_SEND_TIMEOUT, send_snapshot_to(&pd, to, msg)).await;
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

async fn send_snapshot_to(pd: &PdClient, to: u64, msg: RaftMessage) -> Result<(), String> {
    let store = pd.get_store(to).await.map_err(|e| e.to_string())?;
    let channel = ringkv_client::pd::channel_to(&store.address).map_err(|e| e.to_string())?;
    let mut client = RaftClient::new(channel);
    let bytes = msg.encode_to_vec();
    let chunks: Vec<SnapshotChunk> = bytes
        .chunks(SNAPSHOT_CHUNK_BYTES)
        .map(|c| SnapshotChunk { data: c.to_vec() })
        .collect();
    client
        .snapshot(futures::stream::iter(chunks))
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
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
