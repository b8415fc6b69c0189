//! Running a node: open storage, join the cluster through the placement driver, start the
//! raftstore thread, serve gRPC, and report to the placement driver.

use crate::raftstore::{RaftStore, StoreContext, StoreEvent};
use crate::router::{StoreMsg, StoreRouter};
use crate::service::{DebugService, KvService, NodeContext, RaftService};
use crate::split_check::SplitChecker;
use crate::transport::{NetFilter, Transport};
use crate::{NodeConfig, NodeError};
use ringkv_client::PdClient;
use ringkv_proto::kvrpcpb::kv_server::KvServer;
use ringkv_proto::limits::GRPC_MESSAGE_BYTES_MAX;
use ringkv_proto::metapb::{Region, Store, StoreState};
use ringkv_proto::pdpb::StoreStats;
use ringkv_proto::raftpb::debug_server::DebugServer;
use ringkv_proto::raftpb::raft_server::RaftServer;
use ringkv_proto::raftpb::StoreIdent;
use ringkv_storage::{layout, FjallKv, KvEngine, KvWriteBatch, RaftEngineLog, RaftLogEngine};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// How long a starting node keeps trying to reach its placement group.
const PLACEMENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Messages one peer's mailbox holds; past it the peer answers `ServerIsBusy`.
const PEER_MAILBOX_CAPACITY: usize = 4096;

/// A running node.
pub struct NodeServer {
    store_id: u64,
    addr: SocketAddr,
    raftstore: Option<RaftStore>,
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: Option<oneshot::Sender<()>>,
    kv: Arc<FjallKv>,
}

/// Checks the store identity in the data directory against the cluster, creating it on first
/// start. Refuses data of another cluster, and log data without an identity.
async fn store_ident(
    kv: &FjallKv,
    log: &dyn RaftLogEngine,
    pd: &PdClient,
    dir: &str,
) -> Result<StoreIdent, NodeError> {
    let cluster_id = pd.cluster_id();
    if let Some(ident) = layout::read_ident(kv)? {
        if ident.cluster_id != cluster_id {
            return Err(NodeError::ClusterMismatch {
                dir: dir.to_string(),
                found: ident.cluster_id,
                expected: cluster_id,
            });
        }
        return Ok(ident);
    }
    if !log.region_ids().is_empty() || !layout::all_region_states(kv)?.is_empty() {
        return Err(NodeError::Config(format!(
            "data directory {dir} holds region data but no store identity; it is damaged or mixed from several stores, refusing to start"
        )));
    }
    let store_id = pd.alloc_ids(1).await?;
    let ident = StoreIdent {
        cluster_id,
        store_id,
    };
    let mut batch = KvWriteBatch::default();
    layout::write_ident(&mut batch, &ident);
    kv.write(batch)?;
    kv.flush()?;
    tracing::info!(store_id, cluster_id, "new store identity written");
    Ok(ident)
}

fn disk_stats(path: &std::path::Path) -> (u64, u64) {
    let Ok(c_path) = std::ffi::CString::new(path.to_string_lossy().as_bytes()) else {
        return (0, 0);
    };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and st a properly sized out-parameter.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        return (0, 0);
    }
    let block = st.f_frsize as u64;
    (st.f_blocks as u64 * block, st.f_bavail as u64 * block)
}

impl NodeServer {
    /// Starts a node. `filter` is the fault-injection hook of tests; pass `NetFilter::new()`.
    pub fn start(config: NodeConfig, filter: Arc<NetFilter>) -> Result<Self, NodeError> {
        config.validate()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("node")
            .enable_all()
            .build()?;
        std::fs::create_dir_all(&config.data_dir)?;
        let data_dir = config.data_dir.display().to_string();
        let log: Arc<dyn RaftLogEngine> =
            Arc::new(RaftEngineLog::open(&config.data_dir.join("raft"))?);
        if config.data_dir.join("kv").exists() && !config.data_dir.join("state").exists() {
            return Err(crate::NodeError::Config(format!(
                "{} holds a state store in the old format (sled, before 2026-12-03), which this \
                 version cannot read: start this store with an empty data directory (the \
                 placement driver rebuilds its replicas from their peers)",
                config.data_dir.display()
            )));
        }
        let kv = Arc::new(FjallKv::open(&config.data_dir.join("state"))?);
        let snapshots = crate::snapshot::SnapshotDir::open(&config.data_dir.join("snap"))?;
        // A node started together with its placement group waits for the group's first
        // leader (an election, then the cluster's identity) rather than giving up at once.
        let pd = runtime.block_on(PdClient::connect_within(
            &config.placement_endpoints,
            PLACEMENT_CONNECT_TIMEOUT,
        ))?;
        let ident = runtime.block_on(store_ident(&kv, log.as_ref(), &pd, &data_dir))?;
        let store_id = ident.store_id;

        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(config.listen_addr))
            .map_err(|e| {
                NodeError::Config(format!("cannot listen on {}: {e}", config.listen_addr))
            })?;
        let addr = listener.local_addr()?;
        let advertise = config
            .advertise_addr
            .clone()
            .unwrap_or_else(|| addr.to_string());

        let (router, receivers) = StoreRouter::new(config.mailbox_capacity, PEER_MAILBOX_CAPACITY);
        let (events_tx, events_rx) =
            crate::raftstore::StoreEvents::channel(crate::raftstore::STORE_EVENTS_MAX);
        let unreachable_router = router.clone();
        let fault_injection = config.fault_injection.then(|| filter.clone());
        let transport = Transport::new(
            store_id,
            pd.clone(),
            filter,
            runtime.handle().clone(),
            snapshots.clone(),
            Box::new(move |store| {
                let _ = unreachable_router.send_control(StoreMsg::StoreUnreachable(store));
            }),
        );
        let kv_dyn: Arc<dyn KvEngine> = kv.clone();
        let store_cfg = config.raftstore_config();
        let split_checker = SplitChecker::start(kv_dyn.clone(), store_cfg.split, router.clone())?;
        let raftstore = RaftStore::start(
            StoreContext {
                clock: Arc::new(crate::clock::MonotonicClock::new()),
                store_id,
                log,
                kv: kv_dyn.clone(),
                snapshots: snapshots.clone(),
                transport: Arc::new(transport),
                events: events_tx,
                cfg: store_cfg,
                split_checker,
                router: router.clone(),
            },
            receivers,
        )?;

        let tso = {
            let _rt = runtime.enter();
            Arc::new(ringkv_client::TsoBatcher::start(pd.clone()))
        };
        let ctx = NodeContext {
            store_id,
            cluster_id: ident.cluster_id,
            router: router.clone(),
            kv: kv_dyn,
            pd: pd.clone(),
            fault_injection,
            txn: Arc::new(crate::service::TxnContext::default()),
            tso,
            reads: crate::read_pool::ReadPool::default(),
            snapshots: snapshots.clone(),
            snapshot_receives: Arc::new(tokio::sync::Semaphore::new(
                crate::service::SNAPSHOT_RECEIVES_MAX,
            )),
        };
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let incoming = ringkv_placement::server::incoming_nodelay(listener);
        let gc_worker = crate::gc_worker::GcWorker::new(
            KvService::new(ctx.clone()),
            Duration::from_millis(config.gc_interval_ms),
        );
        let resolver = crate::resolved_ts::Resolver::new(
            ctx.clone(),
            Duration::from_millis(config.resolved_ts_interval_ms),
        );
        let (kv_svc, raft_svc, debug_svc) = (
            KvService::new(ctx.clone()),
            RaftService::new(ctx.clone()),
            DebugService::new(ctx),
        );
        runtime.spawn(async move {
            let result = ringkv_placement::server::grpc_server()
                .add_service(
                    KvServer::new(kv_svc)
                        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
                        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX),
                )
                .add_service(
                    RaftServer::new(raft_svc).max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX),
                )
                .add_service(DebugServer::new(debug_svc))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = shutdown_rx.await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "node gRPC server failed");
            }
        });

        let store = Store {
            id: store_id,
            address: advertise.clone(),
            state: StoreState::Up as i32,
            labels: config.labels.clone().into_iter().collect(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let bootstrap = runtime.block_on(pd.put_store(store))?;
        create_bootstrap_peers(&router, bootstrap);
        runtime.spawn(report_to_placement(
            pd,
            router.clone(),
            events_rx,
            store_id,
            Duration::from_millis(config.store_heartbeat_ms),
            config.data_dir.clone(),
        ));
        runtime.spawn(gc_worker.run());
        runtime.spawn(resolver.run());
        tracing::info!(store_id, %addr, %advertise, dir = %data_dir, "node serving");
        Ok(NodeServer {
            store_id,
            addr,
            raftstore: Some(raftstore),
            runtime: Some(runtime),
            shutdown: Some(shutdown),
            kv,
        })
    }

    pub fn store_id(&self) -> u64 {
        self.store_id
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node's applied-state engine, for inspection (tests, tools).
    pub fn kv_engine(&self) -> Arc<dyn KvEngine> {
        self.kv.clone()
    }

    /// Stops serving, stops the raftstore, and flushes storage.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(raftstore) = self.raftstore.take() {
            raftstore.stop();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
        if let Err(e) = self.kv.flush() {
            tracing::error!(error = %e, "flush at shutdown failed");
        }
        tracing::info!(store = self.store_id, "node stopped");
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

fn create_bootstrap_peers(router: &StoreRouter, regions: Vec<Region>) {
    for region in regions {
        if router
            .send_control(StoreMsg::CreateBootstrapPeer(region))
            .is_err()
        {
            tracing::warn!(
                "raftstore mailbox full; bootstrap peer creation retried at next heartbeat"
            );
        }
    }
}

/// Placement calls of region events in flight at most; more wait (a burst of thousands of
/// new regions must not open thousands of calls).
const REGION_EVENTS_IN_FLIGHT_MAX: usize = 32;

/// What the placement task keeps between events.
struct PlacementTask {
    pd: PdClient,
    router: StoreRouter,
    store_id: u64,
    in_flight: Arc<tokio::sync::Semaphore>,
    merges: MergesUnderWay,
}

/// Sources whose merge step (prepare or commit) is under way on this node.
type MergesUnderWay = Arc<parking_lot::Mutex<std::collections::HashSet<u64>>>;

/// Runs `step` for merge source `source_id` unless one is under way, so a repeated order or a
/// timer's retry does not start a second one.
fn spawn_merge_step<F>(merges: &MergesUnderWay, source_id: u64, step: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    if !merges.lock().insert(source_id) {
        return;
    }
    let merges = merges.clone();
    tokio::spawn(async move {
        step.await;
        merges.lock().remove(&source_id);
    });
}

async fn on_store_event(task: &PlacementTask, event: StoreEvent) {
    let (pd, router) = (&task.pd, &task.router);
    match event {
        StoreEvent::RegionHeartbeat(hb) => {
            // Concurrent, so a split report or a new leader is not queued behind thousands of
            // heartbeats.
            let Ok(permit) = task.in_flight.clone().acquire_owned().await else {
                return;
            };
            let (pd, router, merges, store_id) = (
                pd.clone(),
                router.clone(),
                task.merges.clone(),
                task.store_id,
            );
            let source = hb.region.clone().unwrap_or_default();
            tokio::spawn(async move {
                match pd.region_heartbeat(hb).await {
                    Ok(answer) if answer.transfer_leader.is_some() => {
                        let Some(to) = answer.transfer_leader.and_then(|o| o.to) else {
                            return;
                        };
                        tracing::info!(
                            region = source.id,
                            to = to.id,
                            to_store = to.store_id,
                            "placement driver orders a leader transfer"
                        );
                        let _ = router.send(
                            source.id,
                            crate::router::PeerMsg::TransferLeader { to_peer_id: to.id },
                        );
                    }
                    Ok(answer) if answer.split.is_some() => {
                        let key = answer.split.expect("checked").split_key;
                        tracing::info!(
                            region = source.id,
                            halve = key.is_empty(),
                            "placement driver orders a split"
                        );
                        if key.is_empty() {
                            let _ = router.send(source.id, crate::router::PeerMsg::HalveSplit);
                            return;
                        }
                        // One split attempt at a time: the order repeats with every heartbeat
                        // until the split shows.
                        let pd = pd.clone();
                        spawn_merge_step(&merges, source.id, async move {
                            if let Err(e) =
                                crate::split::split_region(&pd, &router, &source, key).await
                            {
                                tracing::info!(region = source.id, reason = %e, "ordered split did not happen");
                            }
                        });
                    }
                    Ok(answer) if answer.change_peer.is_some() => {
                        let order = answer.change_peer.expect("checked");
                        let Some(peer) = order.peer else { return };
                        let removes_leader = order.kind
                            == ringkv_proto::metapb::ConfChangeKind::Remove as i32
                            && peer.store_id == store_id;
                        if removes_leader {
                            // A leader cannot remove itself: hand leadership to another
                            // voter; its next heartbeat gets the removal again.
                            let to = source.peers.iter().find(|p| {
                                p.id != peer.id
                                    && p.role == ringkv_proto::metapb::PeerRole::Voter as i32
                            });
                            if let Some(to) = to {
                                let _ = router.send(
                                    source.id,
                                    crate::router::PeerMsg::TransferLeader { to_peer_id: to.id },
                                );
                            }
                            return;
                        }
                        tracing::info!(
                            region = source.id,
                            kind = order.kind,
                            peer = peer.id,
                            peer_store = peer.store_id,
                            "placement driver orders a membership change"
                        );
                        // One change at a time per region (they share the merge guard: a
                        // region does not merge while its membership changes).
                        spawn_merge_step(&merges, source.id, async move {
                            let cmd = ringkv_proto::raftpb::RaftCmdRequest {
                                region_id: source.id,
                                region_epoch: source.region_epoch,
                                requests: vec![],
                                admin: Some(ringkv_proto::raftpb::AdminRequest {
                                    cmd: Some(
                                        ringkv_proto::raftpb::admin_request::Cmd::ChangePeer(
                                            ringkv_proto::raftpb::ChangePeerRequest {
                                                kind: order.kind,
                                                peer: Some(peer),
                                            },
                                        ),
                                    ),
                                }),
                                ..Default::default()
                            };
                            if let Err(e) = crate::admin::propose(&router, cmd).await {
                                tracing::info!(region = source.id, store = store_id, reason = %e, "membership change not made");
                            }
                        });
                    }
                    Ok(answer) => {
                        let Some(order) = answer.merge else { return };
                        let Some(target) = order.target else { return };
                        tracing::info!(
                            region = source.id,
                            target = target.id,
                            "placement driver orders a merge"
                        );
                        spawn_merge_step(&merges, source.id, async move {
                            let prepared = crate::merge::prepare_merge(
                                &router,
                                source.id,
                                source.region_epoch,
                                target.id,
                            )
                            .await;
                            if let Err(e) = prepared {
                                tracing::info!(region = source.id, target = target.id, store = store_id, reason = %e, "merge not prepared");
                            }
                        });
                    }
                    Err(e) => tracing::debug!(error = %e, "region heartbeat failed"),
                }
                drop(permit);
            });
        }
        StoreEvent::ProposeCommitMerge { source, cmd } => {
            let (pd, router, store_id) = (pd.clone(), router.clone(), task.store_id);
            let source_id = source.id;
            spawn_merge_step(&task.merges, source_id, async move {
                crate::merge::commit_merge(&pd, &router, store_id, source, cmd).await;
            });
        }
        StoreEvent::AskSplit { region, split_key } => {
            // Its own task: a split waits for Raft, heartbeats must not wait for it.
            let (pd, router) = (pd.clone(), router.clone());
            tokio::spawn(async move {
                match crate::split::split_region(&pd, &router, &region, split_key).await {
                    Ok((left, right)) => tracing::info!(
                        region = left.id,
                        new_region = right.id,
                        "split proposed and applied"
                    ),
                    Err(e) => {
                        tracing::info!(region = region.id, reason = %e, "split did not happen")
                    }
                }
            });
        }
        StoreEvent::CheckStalePeer { region, peer } => {
            let (pd, router) = (pd.clone(), router.clone());
            let Ok(permit) = task.in_flight.clone().acquire_owned().await else {
                return;
            };
            tokio::spawn(async move {
                let _permit = permit;
                match pd.get_region_by_id(region.id).await {
                    Ok(route) if removed_from(&region, &peer, &route.region) => {
                        tracing::warn!(
                            region = region.id,
                            peer = peer.id,
                            "this replica was removed from its region while cut off; destroying it"
                        );
                        let _ = router.send(
                            region.id,
                            crate::router::PeerMsg::Destroy { tombstone: true },
                        );
                    }
                    Ok(_) => tracing::debug!(region = region.id, "still a member of its region"),
                    Err(e) => {
                        tracing::info!(region = region.id, error = %e, "stale replica check failed")
                    }
                }
            });
        }
        StoreEvent::ReportSplit { left, right } => {
            let pd = pd.clone();
            tokio::spawn(async move {
                if let Err(e) = pd.report_split(&left, &right).await {
                    tracing::warn!(region = left.id, new_region = right.id, error = %e, "split report failed; heartbeats will catch up");
                }
            });
        }
    }
}

/// Whether the placement driver's view of a region (`current`) shows that `peer`, a replica
/// of `local`, was removed from it: the same region at a newer membership without that peer.
/// Anything else (an older or equal view, or the peer still listed) keeps the replica.
pub fn removed_from(local: &Region, peer: &ringkv_proto::metapb::Peer, current: &Region) -> bool {
    let conf_ver = |r: &Region| r.region_epoch.unwrap_or_default().conf_ver;
    current.id == local.id
        && conf_ver(current) > conf_ver(local)
        && !current.peers.iter().any(|p| p.id == peer.id)
}

/// Sends store heartbeats on a timer and region heartbeats as the raftstore reports them.
async fn report_to_placement(
    pd: PdClient,
    router: StoreRouter,
    mut events: mpsc::Receiver<StoreEvent>,
    store_id: u64,
    interval: Duration,
    data_dir: std::path::PathBuf,
) {
    let start_time_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let task = PlacementTask {
        pd: pd.clone(),
        router: router.clone(),
        store_id,
        in_flight: Arc::new(tokio::sync::Semaphore::new(REGION_EVENTS_IN_FLIGHT_MAX)),
        merges: Default::default(),
    };
    let mut timer = tokio::time::interval(interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_flow = (router.flow().store_totals(), tokio::time::Instant::now());
    loop {
        tokio::select! {
            _ = timer.tick() => {
                let (regions, leaders) = {
                    let meta = router.meta();
                    (meta.regions.len() as u32, meta.leaders.len() as u32)
                };
                let (capacity_bytes, available_bytes) = disk_stats(&data_dir);
                let (totals, now) = (router.flow().store_totals(), tokio::time::Instant::now());
                let elapsed_ms = now.duration_since(last_flow.1).as_millis() as u64;
                let flow = crate::flow::rates(last_flow.0, totals, elapsed_ms);
                last_flow = (totals, now);
                let stats = StoreStats {
                    store_id,
                    capacity_bytes,
                    available_bytes,
                    region_count: regions,
                    leader_count: leaders,
                    start_time_s,
                    read_bytes_per_sec: flow.read_bytes,
                    read_keys_per_sec: flow.read_keys,
                    written_bytes_per_sec: flow.written_bytes,
                    written_keys_per_sec: flow.written_keys,
                };
                match pd.store_heartbeat(stats).await {
                    Ok(answer) => {
                        create_bootstrap_peers(&router, answer.bootstrap_regions);
                        for region in answer.wake_regions {
                            // A quiet leader reports rarely; awake, it reports within a few
                            // ticks and picks up its operator's step.
                            let _ = router.send(region, crate::router::PeerMsg::Wake);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "store heartbeat failed"),
                }
            }
            event = events.recv() => {
                let Some(event) = event else { return };
                on_store_event(&task, event).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_proto::metapb::{Peer, RegionEpoch};

    fn region(conf_ver: u64, peer_ids: &[u64]) -> Region {
        Region {
            id: 7,
            region_epoch: Some(RegionEpoch {
                conf_ver,
                version: 1,
            }),
            peers: peer_ids
                .iter()
                .map(|&id| Peer {
                    id,
                    store_id: id,
                    role: 0,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_replica_is_stale_only_if_a_newer_membership_leaves_it_out() {
        let local = region(3, &[1, 2, 3]);
        let me = local.peers[2];
        assert!(removed_from(&local, &me, &region(5, &[1, 2, 4])));
        assert!(
            !removed_from(&local, &me, &region(5, &[1, 2, 3])),
            "still listed"
        );
        assert!(
            !removed_from(&local, &me, &region(3, &[1, 2, 4])),
            "not newer"
        );
        assert!(!removed_from(&local, &me, &region(2, &[1, 2])), "older");
        let mut other = region(9, &[1, 2]);
        other.id = 8;
        assert!(!removed_from(&local, &me, &other), "another region");
    }
}
