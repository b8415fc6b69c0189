//! Running a placement member: open the metadata store, restore the core, serve gRPC on its own
//! runtime until stopped.

use crate::cluster::PlacementCore;
use crate::meta_store::MetaStore;
use crate::service::PlacementService;
use crate::{PlacementConfig, PlacementError};
use parking_lot::Mutex;
use ringkv_proto::limits::GRPC_MESSAGE_BYTES_MAX;
use ringkv_proto::pdpb::placement_server::PlacementServer as PlacementGrpc;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// A running placement member. Dropping it without `stop` leaves it running until the process
/// ends.
pub struct PlacementServer {
    addr: SocketAddr,
    cluster_id: u64,
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: Option<oneshot::Sender<()>>,
}

/// Runs the balance schedulers every `interval`, persisting what they consumed (peer ids).
async fn run_schedulers(
    core: Arc<Mutex<PlacementCore>>,
    meta: Arc<MetaStore>,
    interval: std::time::Duration,
) {
    loop {
        tokio::time::sleep(interval).await;
        let mut writes = crate::cluster::MetaWrites::default();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let mut core = core.lock();
        let started = core.schedule(now_ms, &mut writes);
        // Under the lock, as every handler persists: ids handed out are durable before use.
        if let Err(e) = meta.apply(writes) {
            tracing::error!(error = %e, "cannot persist what the schedulers allocated; their operators are dropped");
            core.cancel_operators(&started);
        }
    }
}

fn fresh_cluster_id() -> u64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1);
    (secs << 32) | u64::from(rand_u32())
}

fn rand_u32() -> u32 {
    // The cluster id only has to differ between clusters; the process id and a clock reading
    // mixed through the std hasher's random keys are enough.
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish() as u32
}

impl PlacementServer {
    /// Starts a member with `config`; returns once it is listening.
    pub fn start(config: PlacementConfig) -> Result<Self, PlacementError> {
        config.validate()?;
        let meta = Arc::new(MetaStore::open(&config.data_dir)?);
        let cluster_id = meta.cluster_id_or_init(fresh_cluster_id)?;
        let state = meta.load()?;
        let mut core = PlacementCore::new(
            cluster_id,
            config.replicas,
            config.tso_save_window_ms,
            state,
        );
        core.set_merge_config(config.merge_config());
        core.set_gc_life_time_ms(config.gc_life_time_ms);
        core.set_replica_timing(config.max_store_down_time_ms, config.operator_timeout_ms);
        core.set_balance_config(config.balance_config());
        core.apply_persisted_schedule();
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
        let endpoint = config
            .advertise_addr
            .clone()
            .unwrap_or_else(|| addr.to_string());
        let core = Arc::new(Mutex::new(core));
        runtime.spawn(run_schedulers(
            core.clone(),
            meta.clone(),
            std::time::Duration::from_millis(config.schedule_interval_ms),
        ));
        let service = PlacementService {
            core,
            meta,
            name: config.name.clone(),
            endpoint,
        };
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let incoming = incoming_nodelay(listener);
        runtime.spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(
                    PlacementGrpc::new(service)
                        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
                        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX),
                )
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = shutdown_rx.await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "placement gRPC server failed");
            }
        });
        tracing::info!(%addr, cluster_id, name = %config.name, "placement member serving");
        Ok(PlacementServer {
            addr,
            cluster_id,
            runtime: Some(runtime),
            shutdown: Some(shutdown),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// Stops serving and closes the metadata store.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
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
