//! Running a placement member: open the metadata store and the placement log, drive the
//! placement Raft group, and serve gRPC on its own runtime until stopped. Only the leader
//! serves the placement API (with its core loaded from the replicated metadata); the other
//! members answer with the leader's address.

use crate::cluster::{MetaWrites, PlacementCore};
use crate::member::{self, MemberRaft, MemberSpec, TICK_MS};
use crate::member_state::{encode_members, MemberState, Progress};
use crate::meta_store::{keys, MetaStore};
use crate::service::{MemberService, PlacementService};
use crate::{PlacementConfig, PlacementError};
use parking_lot::Mutex;
use prost::Message as _;
use raft::eraftpb::{Message, MessageType};
use ringkv_proto::limits::GRPC_MESSAGE_BYTES_MAX;
use ringkv_proto::pdpb::placement_member_client::PlacementMemberClient;
use ringkv_proto::pdpb::placement_member_server::PlacementMemberServer;
use ringkv_proto::pdpb::placement_server::PlacementServer as PlacementGrpc;
use ringkv_proto::pdpb::{Member, MemberRaftRequest, MetaSnapshot};
use ringkv_storage::{RaftEngineLog, RaftLogEngine};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};

/// Raft message batches queued for one member at most; more are dropped (raft resends).
const OUTBOX_BATCHES_MAX: usize = 256;
/// One send to another member gives up after this long.
const MEMBER_SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// A reply that waits for its change to commit gives up after this long.
const COMMIT_WAIT: Duration = Duration::from_secs(5);

/// A running placement member. Dropping it without `stop` stops it too.
pub struct PlacementServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: Option<watch::Sender<bool>>,
}

/// What the member's tasks and handlers share.
pub(crate) struct Shared {
    pub state: Mutex<MemberState>,
    /// Wakes the driver for a round (a proposal, a message, a transfer).
    pub wake: tokio::sync::Notify,
    pub progress: watch::Sender<Progress>,
    pub members: Vec<MemberSpec>,
    pub self_id: u64,
    pub meta: Arc<MetaStore>,
    started: Instant,
    /// Whether `SetMemberNetFilter` is allowed (`fault_injection`).
    pub fault_injection: bool,
    /// Members whose Raft traffic to and from this one is dropped (fault injection).
    pub blocked: Mutex<Vec<u64>>,
}

/// Wall-clock milliseconds since the Unix epoch: the core's time (TSO, heartbeats).
/// Requests one client connection may have in flight at once; more wait for a turn.
pub const GRPC_REQUESTS_PER_CONNECTION_MAX: usize = 1024;
/// HTTP/2 keepalive: a peer silent for the interval is pinged, and dropped if the ping goes
/// unanswered for the timeout, so a vanished client's requests and streams are given up.
const GRPC_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const GRPC_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The gRPC server every ringkv process serves with: bounded concurrent requests per
/// connection and streams, keepalives on idle connections.
pub fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .concurrency_limit_per_connection(GRPC_REQUESTS_PER_CONNECTION_MAX)
        .max_concurrent_streams(GRPC_REQUESTS_PER_CONNECTION_MAX as u32)
        .http2_keepalive_interval(Some(GRPC_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(GRPC_KEEPALIVE_TIMEOUT))
        .tcp_keepalive(Some(GRPC_KEEPALIVE_INTERVAL))
}

pub(crate) fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Shared {
    /// Monotonic milliseconds since start: the lease's clock.
    pub fn mono_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn member(&self, id: u64) -> Option<&MemberSpec> {
        self.members.iter().find(|m| m.id == id)
    }

    pub fn wire_member(&self, spec: &MemberSpec) -> Member {
        Member {
            name: spec.name.clone(),
            endpoint: spec.endpoint.clone(),
            member_id: spec.id,
        }
    }

    /// The core, if this member serves now (see [`MemberState::serving`]).
    pub fn serving<'a>(
        &self,
        st: &'a mut MemberState,
    ) -> Result<&'a mut PlacementCore, PlacementError> {
        st.serving(self.mono_ms())
    }

    /// Waits until the log is applied up to `index` while this member still leads in `term`.
    pub async fn wait_applied(&self, index: u64, term: u64) -> Result<(), PlacementError> {
        let mut rx = self.progress.subscribe();
        let deadline = tokio::time::Instant::now() + COMMIT_WAIT;
        loop {
            {
                let p = *rx.borrow_and_update();
                if p.term != term || !p.leader {
                    return Err(PlacementError::NotLeader {
                        leader: None,
                        reason: "leadership changed before the change committed",
                    });
                }
                if p.applied >= index {
                    return Ok(());
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(PlacementError::NotLeader {
                        leader: None,
                        reason: "a change did not commit in time (no quorum?)",
                    })
                }
            }
        }
    }

    fn publish(&self, st: &MemberState) {
        let p = st.progress();
        self.progress.send_if_modified(|old| {
            let changed = *old != p;
            *old = p;
            changed
        });
    }
}

/// Refuses a data directory made for another member list.
fn check_stored_members(meta: &MetaStore, members: &[MemberSpec]) -> Result<(), PlacementError> {
    let Some(stored) = meta.get(keys::MEMBERS)? else {
        return Ok(());
    };
    if stored != encode_members(members) {
        let list = MetaSnapshot::decode(stored.as_slice())
            .map(|s| {
                s.kvs
                    .iter()
                    .map(|kv| {
                        format!(
                            "{}={}",
                            String::from_utf8_lossy(&kv.key),
                            String::from_utf8_lossy(&kv.value)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_else(|_| "(undecodable)".into());
        return Err(PlacementError::Config(format!(
            "this data directory belongs to the placement group {list}; initial_members names another. Use the original list, or a fresh data directory for a new cluster"
        )));
    }
    Ok(())
}

/// Ticks the group, runs its rounds, sends what they produce, publishes progress.
async fn drive(
    shared: Arc<Shared>,
    outboxes: HashMap<u64, mpsc::Sender<Vec<Message>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(Duration::from_millis(TICK_MS));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let tick = tokio::select! {
            _ = ticker.tick() => true,
            _ = shared.wake.notified() => false,
            _ = shutdown.changed() => return,
        };
        let messages = {
            let mut st = shared.state.lock();
            if st.failed() {
                continue;
            }
            let messages = st.round(tick, shared.mono_ms(), wall_ms());
            if st.raft.has_ready() {
                shared.wake.notify_one();
            }
            shared.publish(&st);
            messages
        };
        let mut by_member: HashMap<u64, Vec<Message>> = HashMap::new();
        for m in messages {
            by_member.entry(m.to).or_default().push(m);
        }
        for (to, batch) in by_member {
            if let Some(tx) = outboxes.get(&to) {
                if tx.try_send(batch).is_err() {
                    tracing::debug!(to, "placement outbox full; raft will resend");
                }
            }
        }
    }
}

/// Sends batches to one member in order; failures are reported to raft.
async fn send_to(shared: Arc<Shared>, to: MemberSpec, mut rx: mpsc::Receiver<Vec<Message>>) {
    let uri = format!("http://{}", to.endpoint);
    let channel = match tonic::transport::Endpoint::from_shared(uri) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy(),
        Err(e) => {
            tracing::error!(member = %to.name, endpoint = %to.endpoint, error = %e, "bad member endpoint; nothing will be sent to it");
            return;
        }
    };
    let mut client = PlacementMemberClient::new(channel)
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
    while let Some(mut batch) = rx.recv().await {
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        if shared.blocked.lock().contains(&to.id) {
            // Fault injection: lost on the way, as across a partition.
            continue;
        }
        let has_snapshot = batch
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgSnapshot);
        let request = MemberRaftRequest {
            from_member_id: shared.self_id,
            to_member_id: to.id,
            messages: member::encode_messages(&batch),
        };
        let sent = tokio::time::timeout(MEMBER_SEND_TIMEOUT, client.raft(request)).await;
        if !matches!(sent, Ok(Ok(_))) {
            tracing::debug!(member = %to.name, "placement raft message not delivered");
            shared
                .state
                .lock()
                .raft
                .report_unreachable(to.id, has_snapshot);
        }
    }
}

/// Runs the balance schedulers every `interval` on the serving leader; what they allocate
/// (peer ids) is proposed like any change, and replies wait for it as for any id.
async fn run_schedulers(shared: Arc<Shared>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let mut st = shared.state.lock();
        let mut writes = MetaWrites::default();
        let started = match shared.serving(&mut st) {
            Ok(core) => core.schedule(wall_ms(), &mut writes),
            Err(_) => continue,
        };
        if st.propose(&writes).is_err() {
            if let Some(core) = st.core.as_mut() {
                core.cancel_operators(&started);
            }
        }
        drop(st);
        shared.wake.notify_one();
    }
}

fn fresh_cluster_id() -> u64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1);
    (secs << 32) | u64::from(rand_u32()) | 1
}

fn rand_u32() -> u32 {
    // The cluster id only has to differ between clusters; the process id and a clock reading
    // mixed through the std hasher's random keys are enough.
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish() as u32
}

/// The metadata store's and the placement log's directories under `data_dir`; refuses the
/// layout of versions before the placement group (metadata directly in `data_dir`).
fn open_stores(
    config: &PlacementConfig,
) -> Result<(Arc<MetaStore>, Arc<dyn RaftLogEngine>), PlacementError> {
    let dir = &config.data_dir;
    if dir.join("db").exists() && !dir.join("meta").exists() {
        return Err(PlacementError::Config(format!(
            "{} holds placement metadata of an older ringkv without a placement log; start with a fresh data directory",
            dir.display()
        )));
    }
    let meta = Arc::new(MetaStore::open(&dir.join("meta"))?);
    let log: Arc<dyn RaftLogEngine> = Arc::new(RaftEngineLog::open(&dir.join("raft-log"))?);
    Ok((meta, log))
}

impl PlacementServer {
    /// Starts a member with `config`; returns once it is listening. It serves once its group
    /// has a leader (at once for a group of one).
    pub fn start(config: PlacementConfig) -> Result<Self, PlacementError> {
        config.validate()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("placement")
            .enable_all()
            .build()?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(config.listen_addr))
            .map_err(|e| {
                PlacementError::Config(format!("cannot listen on {}: {e}", config.listen_addr))
            })?;
        let addr = listener.local_addr()?;
        let members = if config.initial_members.is_empty() {
            vec![MemberSpec {
                id: 1,
                name: config.name.clone(),
                endpoint: config
                    .advertise_addr
                    .clone()
                    .unwrap_or_else(|| addr.to_string()),
            }]
        } else {
            member::member_specs(&config.initial_members)?
        };
        let me = members
            .iter()
            .find(|m| m.name == config.name)
            .cloned()
            .ok_or_else(|| PlacementError::Config("initial_members lacks this member".into()))?;
        let (meta, log) = open_stores(&config)?;
        // A group of one that was started with an ephemeral port keeps working on another.
        if config.initial_members.is_empty() {
            let mut stored = members.clone();
            if let Some(bytes) = meta.get(keys::MEMBERS)? {
                if let Ok(s) = MetaSnapshot::decode(bytes.as_slice()) {
                    if s.kvs.len() == 1 && s.kvs[0].key == me.name.as_bytes() {
                        stored[0].endpoint = String::from_utf8_lossy(&s.kvs[0].value).into();
                    }
                }
            }
            check_stored_members(&meta, &stored)?;
        } else {
            check_stored_members(&meta, &members)?;
        }
        let voters: Vec<u64> = members.iter().map(|m| m.id).collect();
        let started = Instant::now();
        let mut raft = MemberRaft::open(me.id, voters, log, meta.clone(), 0)?;
        if members.len() == 1 {
            raft.campaign()?;
        }
        let (progress, _) = watch::channel(Progress::default());
        let shared = Arc::new(Shared {
            state: Mutex::new(MemberState::new(
                raft,
                config.clone(),
                members.clone(),
                me.id,
                meta.clone(),
                fresh_cluster_id,
            )),
            wake: tokio::sync::Notify::new(),
            progress,
            members: members.clone(),
            self_id: me.id,
            meta,
            started,
            fault_injection: config.fault_injection,
            blocked: Mutex::new(Vec::new()),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut outboxes = HashMap::new();
        for m in members.iter().filter(|m| m.id != me.id) {
            let (tx, rx) = mpsc::channel(OUTBOX_BATCHES_MAX);
            outboxes.insert(m.id, tx);
            runtime.spawn(send_to(shared.clone(), m.clone(), rx));
        }
        runtime.spawn(drive(shared.clone(), outboxes, shutdown_rx.clone()));
        shared.wake.notify_one();
        runtime.spawn(run_schedulers(
            shared.clone(),
            Duration::from_millis(config.schedule_interval_ms),
        ));
        let service = PlacementService {
            shared: shared.clone(),
        };
        let member_service = MemberService {
            shared: shared.clone(),
        };
        let incoming = incoming_nodelay(listener);
        let mut stop_rx = shutdown_rx;
        runtime.spawn(async move {
            let result = grpc_server()
                .add_service(
                    PlacementGrpc::new(service)
                        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
                        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX),
                )
                .add_service(
                    PlacementMemberServer::new(member_service)
                        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
                        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX),
                )
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop_rx.changed().await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "placement gRPC server failed");
            }
        });
        tracing::info!(%addr, name = %config.name, member_id = me.id, members = members.len(), "placement member started");
        Ok(PlacementServer {
            addr,
            shared,
            runtime: Some(runtime),
            shutdown: Some(shutdown),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The cluster id, once a leader has chosen it (0 before).
    pub fn cluster_id(&self) -> u64 {
        self.shared.meta.cluster_id().unwrap_or(0)
    }

    /// Whether this member serves the placement API now (it leads and holds a lease).
    pub fn is_serving(&self) -> bool {
        let mut st = self.shared.state.lock();
        self.shared.serving(&mut st).is_ok()
    }

    /// This member's view of its group.
    pub fn group_status(&self) -> member::GroupStatus {
        self.shared.state.lock().raft.status()
    }

    /// Stops serving and closes the stores.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
        }
    }
}

impl Drop for PlacementServer {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

/// Sets up `tracing` output on stderr with `filter` (EnvFilter syntax; `RUST_LOG` wins if set).
pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Blocks until SIGINT or SIGTERM.
pub fn wait_for_shutdown_signal() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a signal-waiting runtime");
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    });
}

/// The connections accepted on `listener`, with Nagle's algorithm off. (tonic applies its own
/// `tcp_nodelay` only to listeners it binds itself; without this, a small answer written while
/// an earlier segment is unacknowledged waits for the peer's delayed ACK, ~40 ms on Linux.)
pub fn incoming_nodelay(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot turn Nagle's algorithm off on a connection");
            }
        }
        accepted
    })
}
