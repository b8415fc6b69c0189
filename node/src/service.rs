//! The node's gRPC services: raw KV (validated at the edge, then proposed or read through the
//! raftstore), Raft (incoming message streams) and Debug (local diagnostics).

use crate::apply::{scan_span, user_in_range, CmdOutput};
use crate::router::StoreRouter;
use prost::Message as _;
use ringkv_proto::errorpb::{region_error, RegionError};
use ringkv_proto::keys;
use ringkv_proto::kvrpcpb::kv_server::Kv;
use ringkv_proto::kvrpcpb::*;
use ringkv_proto::limits::*;
use ringkv_proto::metapb::Region;
use ringkv_proto::raftpb::debug_server::Debug;
use ringkv_proto::raftpb::raft_server::Raft;
use ringkv_proto::raftpb::{
    self, request::Cmd, CompareAndSwapRequest, DeleteRangeRequest, DeleteRequest, Done,
    LocalGetRequest, LocalGetResponse, PutRequest, RaftCmdRequest, RaftMessageBatch,
    RegionInfoRequest, RegionInfoResponse, SetNetFilterRequest, SetNetFilterResponse,
    SnapshotChunk, StoreInfoRequest, StoreInfoResponse,
};
use ringkv_storage::layout::{data_key, origin_key};
use ringkv_storage::KvEngine;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status, Streaming};

mod txn;
pub use txn::{GcProgress, TxnContext, TxnOutcome};

/// How long a request waits for the raftstore before answering "try again".
const REQUEST_WAIT: Duration = Duration::from_secs(10);

/// Shared by the node's services.
#[derive(Clone)]
pub struct NodeContext {
    pub store_id: u64,
    pub cluster_id: u64,
    pub router: StoreRouter,
    pub kv: Arc<dyn KvEngine>,
    pub pd: ringkv_client::PdClient,
    /// The transport's message filter, which `Debug/SetNetFilter` sets when fault injection
    /// is on (None: off).
    pub fault_injection: Option<Arc<crate::NetFilter>>,
    /// Latches, one-phase commits in flight and the GC safe point.
    pub txn: Arc<TxnContext>,
    /// Timestamps for one-phase commits, batched across concurrent requests.
    pub tso: Arc<ringkv_client::TsoBatcher>,
    /// Where scans and other long reads run, off the runtime's worker threads.
    pub reads: crate::read_pool::ReadPool,
    /// Where incoming snapshot files are written.
    pub snapshots: crate::snapshot::SnapshotDir,
    /// Receive slots for snapshot streams (permits: [`SNAPSHOT_RECEIVES_MAX`]).
    pub snapshot_receives: Arc<tokio::sync::Semaphore>,
}

#[derive(Clone)]
pub struct KvService {
    ctx: NodeContext,
}

impl KvService {
    pub fn new(ctx: NodeContext) -> Self {
        KvService { ctx }
    }

    pub fn context(&self) -> &NodeContext {
        &self.ctx
    }
}

/// The wall clock (ms since the Unix epoch), which request timestamps are checked against.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

fn storage_failed(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("storage failure on this node: {e}"))
}

/// An admin operation's outcome as an RPC answer: a region's refusal goes back in the
/// response, an unavailable raftstore or placement driver is a gRPC `Unavailable`.
fn admin_outcome<T>(
    outcome: Result<T, crate::admin::AdminFailure>,
) -> Result<(Option<RegionError>, Option<T>), Status> {
    match outcome {
        Ok(value) => Ok((None, Some(value))),
        Err(crate::admin::AdminFailure::Region(e)) => Ok((Some(e), None)),
        Err(crate::admin::AdminFailure::Unavailable(m)) => Err(Status::unavailable(m)),
    }
}

/// Runs a transactional write command to its end even if the client goes away. tonic drops
/// a request's future when its client cancels (a client's attempt timeout, a broken
/// connection); dropped mid-way, a command would release its latches (and a one-phase
/// commit its memory locks) while its proposal may still be applied, and the next command on
/// those keys would be computed without it — a lost update. Spawned, it keeps them until its
/// proposal is answered.
async fn detached<T: Send + 'static>(
    command: impl std::future::Future<Output = Result<T, Status>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(command)
        .await
        .map_err(|e| Status::internal(format!("transactional command failed on this node: {e}")))?
}

/// The command of `requests` for the region `context` names.
fn command(context: &Context, requests: Vec<raftpb::Request>) -> RaftCmdRequest {
    RaftCmdRequest {
        region_id: context.region_id,
        region_epoch: context.region_epoch,
        requests,
        ..Default::default()
    }
}

/// This node's wall clock, in ms since the Unix epoch.
fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// The shared request rules (`ringkv_proto::limits`), as a gRPC status.
fn rule(check: Result<(), String>) -> Result<(), Status> {
    check.map_err(invalid)
}

/// Checks an encoded key from a request: well-formed, and its user key within the rules.
fn check_key(encoded: &[u8]) -> Result<(), Status> {
    let (_, user) = keys::decode(encoded).map_err(|e| invalid(format!("malformed key: {e}")))?;
    rule(check_user_key(user))
}

fn check_context(context: Option<Context>) -> Result<Context, Status> {
    let c = context.ok_or_else(|| invalid("request has no context (region id and epoch)"))?;
    if c.region_id == 0 {
        return Err(invalid("context names region 0, which does not exist"));
    }
    if c.region_epoch.is_none() {
        return Err(invalid(format!(
            "context for region {} has no region epoch",
            c.region_id
        )));
    }
    Ok(c)
}

fn check_keyspace(keyspace: Option<Keyspace>) -> Result<Keyspace, Status> {
    let ks = keyspace.ok_or_else(|| invalid("request has no keyspace"))?;
    if KeyspaceMode::try_from(ks.mode).is_err() {
        return Err(invalid(format!("unknown keyspace mode {}", ks.mode)));
    }
    Ok(ks)
}

impl KvService {
    /// Proposes a raw write: with the client's session when it names one, stamped with this
    /// node's wall clock (the region's session clock, see `crate::session`).
    async fn propose(
        &self,
        context: Context,
        requests: Vec<raftpb::Request>,
    ) -> Result<Option<RegionError>, Status> {
        Ok(self.propose_raw(context, requests).await?.err())
    }

    async fn propose_raw(
        &self,
        context: Context,
        requests: Vec<raftpb::Request>,
    ) -> Result<Result<CmdOutput, RegionError>, Status> {
        let mut cmd = command(&context, requests);
        if let Some(session) = context.session {
            rule(crate::session::check_session(&session))?;
            let now = wall_clock_ms();
            let start = crate::session::session_start_ms(session.id);
            if start > now.saturating_add(SESSION_AHEAD_MS) {
                return Err(invalid(format!(
                    "session.id {} began at {start} ms, more than {SESSION_AHEAD_MS} ms ahead of this node's clock ({now} ms); a session id is a TSO timestamp",
                    session.id
                )));
            }
            cmd.session = Some(session);
            cmd.proposed_ms = now;
        }
        self.propose_cmd(cmd, ()).await
    }

    /// Proposes `requests` and waits for them to be applied, keeping `hold` (latches, locks)
    /// until the outcome is known, even past the wait: a write that times out here may still
    /// be applied later, and what guards it must not be released before.
    async fn propose_holding<H: Send + 'static>(
        &self,
        context: Context,
        requests: Vec<raftpb::Request>,
        hold: H,
    ) -> Result<Option<RegionError>, Status> {
        let cmd = command(&context, requests);
        Ok(self.propose_cmd(cmd, hold).await?.err())
    }

    async fn propose_cmd<H: Send + 'static>(
        &self,
        cmd: RaftCmdRequest,
        hold: H,
    ) -> Result<Result<CmdOutput, RegionError>, Status> {
        let keys: Vec<Vec<u8>> = cmd
            .requests
            .iter()
            .filter_map(|r| match &r.cmd {
                Some(Cmd::Put(p)) => Some(p.key.clone()),
                Some(Cmd::Delete(d)) => Some(d.key.clone()),
                Some(Cmd::CompareAndSwap(c)) => Some(c.key.clone()),
                _ => None,
            })
            .collect();
        let region_id = cmd.region_id;
        let (tx, mut rx) = oneshot::channel();
        self.ctx.router.send_command(cmd, tx);
        match tokio::time::timeout(REQUEST_WAIT, &mut rx).await {
            Ok(Ok(Ok(output))) => Ok(Ok(output)),
            Ok(Ok(Err(region_error))) => Ok(Err(self.with_current_regions(region_error, &keys))),
            Ok(Err(_)) => Err(Status::unavailable("node is shutting down")),
            Err(_) => {
                // The proposal is answered once its log index is applied (or found stale),
                // or dropped with the peer.
                tokio::spawn(async move {
                    let _ = rx.await;
                    drop(hold);
                });
                Err(Status::deadline_exceeded(format!(
                    "write to region {region_id} not applied within {REQUEST_WAIT:?}; its outcome is unknown"
                )))
            }
        }
    }

    /// Waits until a linearizable read of `keys` in the region may proceed.
    async fn clear_read(
        &self,
        context: Context,
        keys: Vec<Vec<u8>>,
    ) -> Result<Result<Region, RegionError>, Status> {
        let (tx, rx) = oneshot::channel();
        self.ctx.router.send_read(
            context.region_id,
            context.region_epoch,
            keys.clone(),
            tx,
            context.replica_read,
        );
        self.read_cleared(context.region_id, &keys, rx).await
    }

    /// Clears a stale read at `read_ts` (see [`crate::safe_ts`]): no leader contact.
    async fn clear_stale_read(
        &self,
        context: Context,
        keys: Vec<Vec<u8>>,
        read_ts: u64,
    ) -> Result<Result<Region, RegionError>, Status> {
        let (tx, rx) = oneshot::channel();
        self.ctx.router.send_stale_read(
            context.region_id,
            context.region_epoch,
            keys.clone(),
            read_ts,
            tx,
        );
        self.read_cleared(context.region_id, &keys, rx).await
    }

    async fn read_cleared(
        &self,
        region_id: u64,
        keys: &[Vec<u8>],
        cleared: oneshot::Receiver<Result<Region, RegionError>>,
    ) -> Result<Result<Region, RegionError>, Status> {
        match tokio::time::timeout(REQUEST_WAIT, cleared).await {
            Ok(Ok(r)) => Ok(r.map_err(|e| self.with_current_regions(e, keys))),
            Ok(Err(_)) => Err(Status::unavailable("node is shutting down")),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "read of region {region_id} could not be confirmed within {REQUEST_WAIT:?}"
            ))),
        }
    }

    /// An `EpochNotMatch` names the regions that now hold the request's keys as far as this
    /// store knows (after a split, the new region too), so the client need not ask the
    /// placement driver, which may lag.
    fn with_current_regions(&self, mut error: RegionError, keys: &[Vec<u8>]) -> RegionError {
        if let Some(region_error::Kind::EpochNotMatch(e)) = &mut error.kind {
            let meta = self.ctx.router.meta();
            for region in meta.regions.values() {
                let holds = keys
                    .iter()
                    .any(|k| keys::in_range(k, &region.start_key, &region.end_key));
                if holds && !e.current_regions.iter().any(|r| r.id == region.id) {
                    e.current_regions.push(region.clone());
                }
            }
        }
        error
    }

    /// Counts a read served from `region_id` in the store's flow (for the hot-region
    /// scheduler): `bytes` of keys and values returned, `keys` keys looked up or returned.
    fn record_read(&self, region_id: u64, bytes: usize, keys: usize) {
        self.ctx
            .router
            .flow()
            .record_read(region_id, bytes as u64, keys as u64);
    }

    /// Whether some region's data on this node was replaced or deleted outside its log since
    /// `epoch` ([`crate::router::StoreRouter::data_epoch`]).
    fn data_epoch_moved(&self, epoch: usize) -> bool {
        self.ctx.router.data_epoch() != epoch
    }

    /// The error that makes a client read again, when what a read took from the engine after
    /// its replica cleared it (at `epoch` or later) may be part of a snapshot install or a
    /// destroyed replica's deletion.
    fn replaced_since(&self, epoch: usize) -> Option<RegionError> {
        self.data_epoch_moved(epoch).then(|| {
            crate::region_error::server_is_busy(
                "a replica's data on this node was being replaced while the read ran; read again",
            )
        })
    }

    fn get_local(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        self.ctx.kv.get(&data_key(key)).map_err(storage_failed)
    }
}

/// Bytes of keys and values in `pairs`.
fn pairs_bytes(pairs: &[KvPair]) -> usize {
    pairs.iter().map(|p| p.key.len() + p.value.len()).sum()
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn raw_get(
        &self,
        request: Request<RawGetRequest>,
    ) -> Result<Response<RawGetResponse>, Status> {
        let req = request.into_inner();
        let context = check_context(req.context)?;
        check_key(&req.key)?;
        let region_id = context.region_id;
        let epoch = self.ctx.router.data_epoch();
        let resp = match self.clear_read(context, vec![req.key.clone()]).await? {
            Err(region_error) => RawGetResponse {
                region_error: Some(region_error),
                ..Default::default()
            },
            Ok(_) => match self.get_local(&req.key)? {
                _ if self.data_epoch_moved(epoch) => RawGetResponse {
                    region_error: self.replaced_since(epoch),
                    ..Default::default()
                },
                Some(value) => {
                    self.record_read(region_id, req.key.len() + value.len(), 1);
                    RawGetResponse {
                        value,
                        ..Default::default()
                    }
                }
                None => RawGetResponse {
                    not_found: true,
                    ..Default::default()
                },
            },
        };
        Ok(Response::new(resp))
    }

    async fn raw_batch_get(
        &self,
        request: Request<RawBatchGetRequest>,
    ) -> Result<Response<RawBatchGetResponse>, Status> {
        let req = request.into_inner();
        let context = check_context(req.context)?;
        if req.keys.is_empty() {
            return Err(invalid("batch get with no keys"));
        }
        rule(check_batch(req.keys.len(), "keys", 0))?;
        for k in &req.keys {
            check_key(k)?;
        }
        let region_id = context.region_id;
        let epoch = self.ctx.router.data_epoch();
        let resp = match self.clear_read(context, req.keys.clone()).await? {
            Err(region_error) => RawBatchGetResponse {
                region_error: Some(region_error),
                pairs: vec![],
            },
            Ok(_) => {
                let kv = self.ctx.kv.clone();
                let pairs = self
                    .ctx
                    .reads
                    .run(move || {
                        let mut pairs = Vec::new();
                        for key in req.keys {
                            if let Some(value) = kv.get(&data_key(&key))? {
                                pairs.push(KvPair { key, value });
                            }
                        }
                        Ok::<_, ringkv_storage::StorageError>(pairs)
                    })
                    .await?
                    .map_err(storage_failed)?;
                match self.replaced_since(epoch) {
                    Some(e) => RawBatchGetResponse {
                        region_error: Some(e),
                        pairs: vec![],
                    },
                    None => {
                        self.record_read(region_id, pairs_bytes(&pairs), pairs.len());
                        RawBatchGetResponse {
                            region_error: None,
                            pairs,
                        }
                    }
                }
            }
        };
        Ok(Response::new(resp))
    }

    async fn raw_put(
        &self,
        request: Request<RawPutRequest>,
    ) -> Result<Response<RawPutResponse>, Status> {
        let req = request.into_inner();
        let context = check_context(req.context)?;
        check_key(&req.key)?;
        rule(check_value(&req.value))?;
        let put = raftpb::Request {
            cmd: Some(Cmd::Put(PutRequest {
                key: req.key,
                value: req.value,
                ..Default::default()
            })),
        };
        let region_error = self.propose(context, vec![put]).await?;
        Ok(Response::new(RawPutResponse { region_error }))
    }

    async fn raw_batch_put(
        &self,
        request: Request<RawBatchPutRequest>,
    ) -> Result<Response<RawBatchPutResponse>, Status> {
        let req = request.into_inner();
        let context = check_context(req.context)?;
        if req.pairs.is_empty() {
            return Err(invalid("batch put with no pairs"));
        }
        let mut bytes = 0;
        for p in &req.pairs {
            check_key(&p.key)?;
            rule(check_value(&p.value))?;
            bytes += p.key.len() + p.value.len();
        }
        rule(check_batch(req.pairs.len(), "pairs", bytes))?;
        let requests = req
            .pairs
            .into_iter()
            .map(|p| raftpb::Request {
                cmd: Some(Cmd::Put(PutRequest {
                    key: p.key,
                    value: p.value,
                    ..Default::default()
                })),
            })
            .collect();
        let region_error = self.propose(context, requests).await?;
        Ok(Response::new(RawBatchPutResponse { region_error }))
    }

    async fn raw_delete(
        &self,
        request: Request<RawDeleteRequest>,
    ) -> Result<Response<RawDeleteResponse>, Status> {
        let req = request.into_inner();
        let context = check_context(req.context)?;
        check_key(&req.key)?;
        let del = raftpb::Request {
            cmd: Some(Cmd::Delete(DeleteRequest {
                key: req.key,
                ..Default::default()
            })),
        };
        let region_error = self.propose(context, vec![del]).await?;
        Ok(Response::new(RawDeleteResponse { region_error }))
    }

    async fn raw_delete_range(
        &self,
        request: Request<RawDeleteRangeRequest>,
    ) -> Result<Response<RawDeleteRangeResponse>, Status> {
        let req = request.into_inner();
        let context = check_context(req.context)?;
        let keyspace = check_keyspace(req.keyspace)?;
        rule(check_user_range(&req.start_key, &req.end_key))?;
        let del = raftpb::Request {
            cmd: Some(Cmd::DeleteRange(DeleteRangeRequest {
                keyspace: Some(keyspace),
                start_key: req.start_key,
                end_key: req.end_key,
            })),
        };
        let region_error = self.propose(context, vec![del]).await?;
        Ok(Response::new(RawDeleteRangeResponse { region_error }))
    }

    async fn raw_compare_and_swap(
        &self,
        request: Request<RawCompareAndSwapRequest>,
    ) -> Result<Response<RawCompareAndSwapResponse>, Status> {
        let req = request.into_inner();
        let context = check_context(req.context)?;
        check_key(&req.key)?;
        rule(check_value(&req.expected_value))?;
        rule(check_value(&req.value))?;
        if !req.expect_exists && !req.expected_value.is_empty() {
            return Err(invalid(
                "expected_value is set but expect_exists is false (put-if-absent expects no value)",
            ));
        }
        if req.delete && !req.value.is_empty() {
            return Err(invalid("value is set but delete is true"));
        }
        let cas = raftpb::Request {
            cmd: Some(Cmd::CompareAndSwap(CompareAndSwapRequest {
                key: req.key,
                expect_exists: req.expect_exists,
                expected_value: req.expected_value,
                value: req.value,
                delete: req.delete,
            })),
        };
        let resp = match self.propose_raw(context, vec![cas]).await? {
            Ok(CmdOutput::Done) => RawCompareAndSwapResponse {
                swapped: true,
                ..Default::default()
            },
            Ok(CmdOutput::CasMismatch { current }) => RawCompareAndSwapResponse {
                swapped: false,
                exists: current.is_some(),
                current_value: current.unwrap_or_default(),
                ..Default::default()
            },
            Err(region_error) => RawCompareAndSwapResponse {
                region_error: Some(region_error),
                ..Default::default()
            },
        };
        Ok(Response::new(resp))
    }

    async fn raw_scan(
        &self,
        request: Request<RawScanRequest>,
    ) -> Result<Response<RawScanResponse>, Status> {
        let req = request.into_inner();
        let context = check_context(req.context)?;
        let keyspace = check_keyspace(req.keyspace)?;
        rule(check_user_range(&req.start_key, &req.end_key))?;
        rule(check_scan_limit(req.limit))?;
        let region_id = context.region_id;
        let epoch = self.ctx.router.data_epoch();
        let region = match self.clear_read(context, Vec::new()).await? {
            Err(region_error) => {
                return Ok(Response::new(RawScanResponse {
                    region_error: Some(region_error),
                    pairs: vec![],
                }))
            }
            Ok(region) => region,
        };
        let kv = self.ctx.kv.clone();
        let pairs = self
            .ctx
            .reads
            .run(move || {
                scan_region(
                    kv.as_ref(),
                    &region,
                    &keyspace,
                    &req.start_key,
                    &req.end_key,
                    req.limit as usize,
                    req.key_only,
                )
            })
            .await?
            .map_err(storage_failed)?;
        if let Some(e) = self.replaced_since(epoch) {
            return Ok(Response::new(RawScanResponse {
                region_error: Some(e),
                pairs: vec![],
            }));
        }
        self.record_read(region_id, pairs_bytes(&pairs), pairs.len());
        Ok(Response::new(RawScanResponse {
            region_error: None,
            pairs,
        }))
    }

    async fn split_region(
        &self,
        request: Request<SplitRegionRequest>,
    ) -> Result<Response<SplitRegionResponse>, Status> {
        let req = request.into_inner();
        let context = check_context(req.context)?;
        if req.split_key.is_empty() {
            return Err(invalid("split key is empty"));
        }
        // Any byte string is a valid boundary: a ring position splits a hash keyspace cleanly.
        rule(check_user_key(&req.split_key))?;
        let outcome = crate::split::split_local_region(
            &self.ctx.pd,
            &self.ctx.router,
            context.region_id,
            context.region_epoch,
            req.split_key,
        )
        .await;
        let (region_error, halves) = admin_outcome(outcome)?;
        let (left, right) = halves.unzip();
        Ok(Response::new(SplitRegionResponse {
            region_error,
            left,
            right,
        }))
    }

    async fn merge_region(
        &self,
        request: Request<MergeRegionRequest>,
    ) -> Result<Response<MergeRegionResponse>, Status> {
        let req = request.into_inner();
        rule(check_merge_ids(req.source_region_id, req.target_region_id))?;
        if req.source_epoch.is_none() {
            return Err(invalid(format!(
                "merge of region {} names no source epoch",
                req.source_region_id
            )));
        }
        let outcome = crate::merge::prepare_merge(
            &self.ctx.router,
            req.source_region_id,
            req.source_epoch,
            req.target_region_id,
        )
        .await;
        let (region_error, _) = admin_outcome(outcome)?;
        Ok(Response::new(MergeRegionResponse { region_error }))
    }

    async fn change_peer(
        &self,
        request: Request<ChangePeerRegionRequest>,
    ) -> Result<Response<ChangePeerRegionResponse>, Status> {
        let req = request.into_inner();
        let context = check_context(req.context)?;
        let peer = req
            .peer
            .ok_or_else(|| invalid("membership change names no peer"))?;
        if peer.id == 0 || peer.store_id == 0 {
            return Err(invalid(format!(
                "peer {} on store {}: both need to be set (allocate the peer id from the placement driver)",
                peer.id, peer.store_id
            )));
        }
        if ringkv_proto::metapb::ConfChangeKind::try_from(req.kind).is_err() {
            return Err(invalid(format!(
                "unknown membership change kind {}",
                req.kind
            )));
        }
        let router = &self.ctx.router;
        if let Err(f) =
            crate::admin::local_leader(router, context.region_id, context.region_epoch).await
        {
            let (region_error, _) = admin_outcome::<()>(Err(f))?;
            return Ok(Response::new(ChangePeerRegionResponse {
                region_error,
                region: None,
            }));
        }
        let cmd = RaftCmdRequest {
            region_id: context.region_id,
            region_epoch: context.region_epoch,
            requests: vec![],
            admin: Some(raftpb::AdminRequest {
                cmd: Some(raftpb::admin_request::Cmd::ChangePeer(
                    raftpb::ChangePeerRequest {
                        kind: req.kind,
                        peer: Some(peer),
                    },
                )),
            }),
            ..Default::default()
        };
        let (region_error, done) = admin_outcome(crate::admin::propose(router, cmd).await)?;
        let region = match done {
            Some(()) => crate::admin::local_region(router, context.region_id)
                .await
                .map(|(r, _)| r),
            None => None,
        };
        Ok(Response::new(ChangePeerRegionResponse {
            region_error,
            region,
        }))
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        let req = request.into_inner();
        let context = check_context(req.context)?;
        let to = req
            .to
            .ok_or_else(|| invalid("leader transfer names no peer to hand over to"))?;
        let router = &self.ctx.router;
        let region =
            match crate::admin::local_leader(router, context.region_id, context.region_epoch).await
            {
                Ok(region) => region,
                Err(f) => {
                    let (region_error, _) = admin_outcome::<()>(Err(f))?;
                    return Ok(Response::new(TransferLeaderResponse { region_error }));
                }
            };
        let voter = region
            .peers
            .iter()
            .any(|p| p.id == to.id && p.role == ringkv_proto::metapb::PeerRole::Voter as i32);
        if !voter || to.store_id == self.ctx.store_id {
            return Err(Status::failed_precondition(format!(
                "peer {} is not a voter of region {} on another store; pick one of its followers",
                to.id, region.id
            )));
        }
        router
            .send(
                region.id,
                crate::router::PeerMsg::TransferLeader { to_peer_id: to.id },
            )
            .map_err(|_| Status::unavailable("the region's mailbox is full; retry"))?;
        Ok(Response::new(TransferLeaderResponse { region_error: None }))
    }

    async fn kv_get(&self, r: Request<KvGetRequest>) -> Result<Response<KvGetResponse>, Status> {
        let req = r.into_inner();
        let (region_id, key_len) = (req.context.map_or(0, |c| c.region_id), req.key.len());
        let epoch = self.ctx.router.data_epoch();
        let mut resp = self.txn_get(req).await?;
        if let Some(e) = self.replaced_since(epoch) {
            resp = KvGetResponse {
                region_error: Some(e),
                ..Default::default()
            };
        }
        if resp.region_error.is_none() && resp.error.is_none() {
            self.record_read(region_id, key_len + resp.value.len(), 1);
        }
        Ok(Response::new(resp))
    }

    async fn kv_batch_get(
        &self,
        r: Request<KvBatchGetRequest>,
    ) -> Result<Response<KvBatchGetResponse>, Status> {
        let req = r.into_inner();
        let region_id = req.context.map_or(0, |c| c.region_id);
        let epoch = self.ctx.router.data_epoch();
        let mut resp = self.txn_batch_get(req).await?;
        if let Some(e) = self.replaced_since(epoch) {
            resp = KvBatchGetResponse {
                region_error: Some(e),
                ..Default::default()
            };
        }
        self.record_read(region_id, pairs_bytes(&resp.pairs), resp.pairs.len());
        Ok(Response::new(resp))
    }

    async fn kv_scan(&self, r: Request<KvScanRequest>) -> Result<Response<KvScanResponse>, Status> {
        let req = r.into_inner();
        let region_id = req.context.map_or(0, |c| c.region_id);
        let epoch = self.ctx.router.data_epoch();
        let mut resp = self.txn_scan(req).await?;
        if let Some(e) = self.replaced_since(epoch) {
            resp = KvScanResponse {
                region_error: Some(e),
                ..Default::default()
            };
        }
        self.record_read(region_id, pairs_bytes(&resp.pairs), resp.pairs.len());
        Ok(Response::new(resp))
    }

    async fn kv_prewrite(
        &self,
        r: Request<KvPrewriteRequest>,
    ) -> Result<Response<KvPrewriteResponse>, Status> {
        let svc = self.clone();
        let req = r.into_inner();
        detached(async move { svc.txn_prewrite(req).await })
            .await
            .map(Response::new)
    }

    async fn kv_commit(
        &self,
        r: Request<KvCommitRequest>,
    ) -> Result<Response<KvCommitResponse>, Status> {
        let svc = self.clone();
        let req = r.into_inner();
        detached(async move { svc.txn_commit(req).await })
            .await
            .map(Response::new)
    }

    async fn kv_batch_rollback(
        &self,
        r: Request<KvBatchRollbackRequest>,
    ) -> Result<Response<KvBatchRollbackResponse>, Status> {
        let svc = self.clone();
        let req = r.into_inner();
        detached(async move { svc.txn_batch_rollback(req).await })
            .await
            .map(Response::new)
    }

    async fn kv_check_txn_status(
        &self,
        r: Request<KvCheckTxnStatusRequest>,
    ) -> Result<Response<KvCheckTxnStatusResponse>, Status> {
        let svc = self.clone();
        let req = r.into_inner();
        detached(async move { svc.txn_check_txn_status(req).await })
            .await
            .map(Response::new)
    }

    async fn kv_resolve_lock(
        &self,
        r: Request<KvResolveLockRequest>,
    ) -> Result<Response<KvResolveLockResponse>, Status> {
        let svc = self.clone();
        let req = r.into_inner();
        detached(async move { svc.txn_resolve_lock(req).await })
            .await
            .map(Response::new)
    }

    async fn kv_txn_heart_beat(
        &self,
        r: Request<KvTxnHeartBeatRequest>,
    ) -> Result<Response<KvTxnHeartBeatResponse>, Status> {
        let svc = self.clone();
        let req = r.into_inner();
        detached(async move { svc.txn_heart_beat(req).await })
            .await
            .map(Response::new)
    }
}

/// The smallest `limit` user keys of `keyspace` in `[start, end)` within `region`, ascending.
/// A hash keyspace is walked whole with a bounded heap: user order is not storage order.
pub fn scan_region(
    kv: &dyn KvEngine,
    region: &Region,
    keyspace: &Keyspace,
    start: &[u8],
    end: &[u8],
    limit: usize,
    key_only: bool,
) -> ringkv_storage::Result<Vec<KvPair>> {
    let Some((lo, hi)) = scan_span(region, keyspace, start, end) else {
        return Ok(Vec::new());
    };
    let ordered = keyspace.mode == KeyspaceMode::Range as i32;
    let mut heap: BinaryHeap<(Vec<u8>, Vec<u8>)> = BinaryHeap::with_capacity(limit + 1);
    kv.scan(&lo, &hi, &mut |k, v| {
        let Some(user) = keys::user_key_unchecked(origin_key(k)) else {
            return true;
        };
        if !user_in_range(user, start, end) {
            return !ordered || user < start;
        }
        if heap.len() == limit && heap.peek().is_some_and(|(top, _)| top.as_slice() <= user) {
            return !ordered;
        }
        heap.push((
            user.to_vec(),
            if key_only { Vec::new() } else { v.to_vec() },
        ));
        if heap.len() > limit {
            heap.pop();
        }
        true
    })?;
    Ok(heap
        .into_sorted_vec()
        .into_iter()
        .map(|(key, value)| KvPair { key, value })
        .collect())
}

/// Receives Raft message streams from other nodes.
pub struct RaftService {
    ctx: NodeContext,
}

impl RaftService {
    pub fn new(ctx: NodeContext) -> Self {
        RaftService { ctx }
    }
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn propose_merge(
        &self,
        request: Request<raftpb::ProposeMergeRequest>,
    ) -> Result<Response<raftpb::ProposeMergeResponse>, Status> {
        let cmd = request
            .into_inner()
            .cmd
            .ok_or_else(|| invalid("propose merge carries no command"))?;
        let is_commit_merge = matches!(
            cmd.admin.as_ref().and_then(|a| a.cmd.as_ref()),
            Some(raftpb::admin_request::Cmd::CommitMerge(_))
        );
        if !is_commit_merge || !cmd.requests.is_empty() {
            return Err(invalid(
                "propose merge takes exactly one CommitMerge command",
            ));
        }
        use crate::merge::SourceNotPrepared;
        let result = match crate::merge::propose_commit_merge(&self.ctx.router, cmd).await {
            Ok(result) => result,
            Err(SourceNotPrepared::Behind(why)) => Err(crate::region_error::server_is_busy(&why)),
            Err(SourceNotPrepared::Refused(why)) => return Err(invalid(why)),
        };
        Ok(Response::new(raftpb::ProposeMergeResponse {
            region_error: result.err(),
        }))
    }

    async fn raft(
        &self,
        request: Request<Streaming<RaftMessageBatch>>,
    ) -> Result<Response<Done>, Status> {
        let mut stream = request.into_inner();
        while let Some(batch) = stream.message().await? {
            for msg in batch.messages {
                if msg.to_peer.map(|p| p.store_id) != Some(self.ctx.store_id) {
                    continue;
                }
                // A full mailbox drops the message; Raft resends.
                self.ctx.router.send_raft(msg);
            }
        }
        Ok(Response::new(Done {}))
    }

    async fn snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<Done>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| invalid("an empty snapshot stream"))?;
        if first.message.is_empty() {
            return Err(invalid(
                "the first chunk of a snapshot stream must carry the raft message",
            ));
        }
        let msg = raftpb::RaftMessage::decode(first.message.as_slice())
            .map_err(|e| invalid(format!("malformed snapshot message: {e}")))?;
        if msg.to_peer.map(|p| p.store_id) != Some(self.ctx.store_id) {
            return Err(invalid("snapshot for another store"));
        }
        // The file goes to disk a chunk at a time: a stream holds one chunk in memory, and at
        // most SNAPSHOT_RECEIVES_MAX streams are received at once.
        let slot = self.ctx.snapshot_receives.clone().acquire_owned();
        let _slot = match tokio::time::timeout(SNAPSHOT_RECEIVE_WAIT, slot).await {
            Ok(Ok(slot)) => slot,
            _ => {
                return Err(Status::resource_exhausted(format!(
                    "this node is receiving {SNAPSHOT_RECEIVES_MAX} snapshots already; sending again later"
                )))
            }
        };
        let dir = self.ctx.snapshots.clone();
        let header_msg = msg.clone();
        let mut incoming = blocking(move || crate::snapshot::Incoming::begin(&dir, &header_msg))
            .await?
            .map_err(|e| invalid(format!("refused snapshot: {e}")))?;
        let mut chunks = vec![first.data];
        loop {
            for data in chunks.drain(..).filter(|d| !d.is_empty()) {
                incoming = blocking(move || incoming.write(&data).map(|()| incoming))
                    .await?
                    .map_err(|e| invalid(format!("refused snapshot: {e}")))?;
            }
            // A sender that stops sending gives its slot back.
            let next = tokio::time::timeout(SNAPSHOT_CHUNK_WAIT, stream.message())
                .await
                .map_err(|_| {
                    Status::deadline_exceeded(format!(
                        "no snapshot chunk for {SNAPSHOT_CHUNK_WAIT:?}; stream dropped"
                    ))
                })??;
            match next {
                Some(chunk) if chunk.message.is_empty() => chunks.push(chunk.data),
                Some(_) => return Err(invalid("a snapshot stream carries one raft message")),
                None => break,
            }
        }
        blocking(move || incoming.finish())
            .await?
            .map_err(|e| invalid(format!("refused snapshot: {e}")))?;
        self.ctx.router.send_raft(msg);
        Ok(Response::new(Done {}))
    }
}

/// Runs file work on the blocking pool, off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Status::internal(format!("snapshot file task failed: {e}")))
}

/// Snapshot streams one node receives at once.
pub const SNAPSHOT_RECEIVES_MAX: usize = 8;
/// How long an incoming stream waits for a receive slot before it is refused (the sender tries
/// again later, as after any failed send).
const SNAPSHOT_RECEIVE_WAIT: Duration = Duration::from_secs(10);
/// How long a snapshot stream may go without a chunk before it is dropped.
const SNAPSHOT_CHUNK_WAIT: Duration = Duration::from_secs(30);

/// Local diagnostics of this node.
pub struct DebugService {
    ctx: NodeContext,
}

impl DebugService {
    pub fn new(ctx: NodeContext) -> Self {
        DebugService { ctx }
    }

    async fn status(&self, region_id: Option<u64>) -> Result<Vec<RegionInfoResponse>, Status> {
        Ok(match region_id {
            Some(id) => self
                .ctx
                .router
                .region_status(id, REQUEST_WAIT)
                .await
                .into_iter()
                .collect(),
            None => self.ctx.router.all_status(REQUEST_WAIT).await,
        })
    }
}

#[tonic::async_trait]
impl Debug for DebugService {
    async fn region_info(
        &self,
        request: Request<RegionInfoRequest>,
    ) -> Result<Response<RegionInfoResponse>, Status> {
        let id = request.into_inner().region_id;
        let info = self.status(Some(id)).await?.pop().unwrap_or_default();
        Ok(Response::new(info))
    }

    async fn local_get(
        &self,
        request: Request<LocalGetRequest>,
    ) -> Result<Response<LocalGetResponse>, Status> {
        let key = request.into_inner().key;
        check_key(&key)?;
        let value = self.ctx.kv.get(&data_key(&key)).map_err(storage_failed)?;
        Ok(Response::new(LocalGetResponse {
            found: value.is_some(),
            value: value.unwrap_or_default(),
        }))
    }

    async fn set_net_filter(
        &self,
        request: Request<SetNetFilterRequest>,
    ) -> Result<Response<SetNetFilterResponse>, Status> {
        let Some(filter) = &self.ctx.fault_injection else {
            return Err(Status::failed_precondition(
                "fault injection is off on this node; it is for tests only and needs \
                 `fault_injection = true` in the node's configuration",
            ));
        };
        let blocked = request.into_inner().blocked_to;
        filter.heal();
        for to in &blocked {
            filter.block(self.ctx.store_id, *to);
        }
        tracing::warn!(
            ?blocked,
            "fault injection: raft messages to these stores are dropped"
        );
        Ok(Response::new(SetNetFilterResponse {}))
    }

    async fn store_info(
        &self,
        _request: Request<StoreInfoRequest>,
    ) -> Result<Response<StoreInfoResponse>, Status> {
        let regions = self.status(None).await?;
        Ok(Response::new(StoreInfoResponse {
            cluster_id: self.ctx.cluster_id,
            store_id: self.ctx.store_id,
            regions,
        }))
    }
}
