//! The placement driver client: finds the serving member, learns the cluster id, and retries
//! unreachable members within a deadline.

use crate::backoff::Backoff;
use crate::{ClientError, Result};
use parking_lot::Mutex;
use ringkv_proto::kvrpcpb::KeyspaceMode;
use ringkv_proto::limits::GRPC_MESSAGE_BYTES_MAX;
use ringkv_proto::metapb::{Peer, Region, Store};
use ringkv_proto::pdpb::placement_client::PlacementClient;
use ringkv_proto::pdpb::*;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

/// How long one call to the placement driver keeps retrying by default.
const PD_TIMEOUT: Duration = Duration::from_secs(10);
/// One attempt's limit.
const PD_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

/// A client of the placement driver. Cheap to clone.
#[derive(Clone)]
pub struct PdClient {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<String>,
    state: Mutex<State>,
}

struct State {
    cluster_id: u64,
    /// The member calls go to now, by endpoint: one of `endpoints`, or a leader one named.
    channel: Option<(String, Channel)>,
    next_endpoint: usize,
}

/// gRPC metadata key in which a placement member that does not serve names the leader.
const LEADER_METADATA_KEY: &str = "ringkv-placement-leader";
/// Redirects to a named leader one call follows before it backs off.
const LEADER_REDIRECTS_MAX: u32 = 3;

/// The region holding a key, with its leader if one has reported.
#[derive(Debug, Clone)]
pub struct RegionRoute {
    pub region: Region,
    pub leader: Option<Peer>,
    /// Size, pending and down peers as the placement driver knows them (region scans only).
    pub health: Option<RegionHealth>,
}

pub fn channel_to(addr: &str) -> Result<Channel> {
    let uri = if addr.starts_with("http://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    Ok(Endpoint::from_shared(uri)
        .map_err(|e| ClientError::InvalidArgument(format!("bad address {addr:?}: {e}")))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_lazy())
}

fn keyspace_of(r: KeyspaceResponse) -> Result<KeyspaceMeta> {
    check_header(r.header.as_ref())?;
    r.keyspace
        .ok_or_else(|| ClientError::Server("placement driver returned no keyspace".into()))
}

fn check_header(header: Option<&ResponseHeader>) -> Result<()> {
    match header.and_then(|h| h.error.as_ref()) {
        Some(e) if e.r#type != ErrorType::Ok as i32 => Err(ClientError::Placement {
            kind: e.r#type,
            message: e.message.clone(),
        }),
        _ => Ok(()),
    }
}

impl PdClient {
    /// Connects to the placement driver at any of `endpoints` (host:port) and learns the
    /// cluster id.
    pub async fn connect(endpoints: &[impl AsRef<str>]) -> Result<Self> {
        Self::connect_within(endpoints, PD_TIMEOUT).await
    }

    /// Like [`PdClient::connect`], retrying for up to `timeout` (a server starting with its
    /// placement group waits for the group's first leader).
    pub async fn connect_within(endpoints: &[impl AsRef<str>], timeout: Duration) -> Result<Self> {
        let endpoints: Vec<String> = endpoints.iter().map(|e| e.as_ref().to_string()).collect();
        if endpoints.is_empty() {
            return Err(ClientError::InvalidArgument(
                "no placement endpoints given".into(),
            ));
        }
        for e in &endpoints {
            channel_to(e)?;
        }
        let client = PdClient {
            inner: Arc::new(Inner {
                endpoints,
                state: Mutex::new(State {
                    cluster_id: 0,
                    channel: None,
                    next_endpoint: 0,
                }),
            }),
        };
        let members = client
            .call_within("get_members", timeout, |mut c, h| async move {
                let r = c
                    .get_members(GetMembersRequest { header: Some(h) })
                    .await?
                    .into_inner();
                Ok(r)
            })
            .await?;
        let cluster_id = members.header.map(|h| h.cluster_id).unwrap_or(0);
        client.inner.state.lock().cluster_id = cluster_id;
        if let (Some(leader), Some(current)) = (members.leader, client.current_endpoint()) {
            if !leader.endpoint.is_empty() && leader.endpoint != current {
                client.follow_leader(&current, &leader.endpoint)?;
            }
        }
        Ok(client)
    }

    /// The placement members, the leader as the answering member sees it, and that member's
    /// view of the placement Raft group.
    pub async fn get_members(&self) -> Result<GetMembersResponse> {
        let r = self
            .call("get_members", |mut c, h| async move {
                Ok(c.get_members(GetMembersRequest { header: Some(h) })
                    .await?
                    .into_inner())
            })
            .await?;
        check_header(r.header.as_ref())?;
        Ok(r)
    }

    /// The same, asked of one member by endpoint (which need not lead).
    pub async fn get_members_from(&self, endpoint: &str) -> Result<GetMembersResponse> {
        let mut c = PlacementClient::new(channel_to(endpoint)?);
        let cluster_id = self.cluster_id();
        let r = tokio::time::timeout(
            PD_ATTEMPT_TIMEOUT,
            c.get_members(GetMembersRequest {
                header: Some(RequestHeader { cluster_id }),
            }),
        )
        .await
        .map_err(|_| ClientError::PlacementUnreachable {
            endpoints: vec![endpoint.to_string()],
            detail: format!("no answer within {PD_ATTEMPT_TIMEOUT:?}"),
        })?
        .map_err(|s| ClientError::PlacementUnreachable {
            endpoints: vec![endpoint.to_string()],
            detail: format!("{}: {}", s.code(), s.message()),
        })?
        .into_inner();
        check_header(r.header.as_ref())?;
        Ok(r)
    }

    /// Asks the placement leader to hand leadership to the member named `to_name`; returns
    /// once the leader has stepped down.
    pub async fn transfer_placement_leader(&self, to_name: &str) -> Result<()> {
        let r = self
            .call("transfer_placement_leader", |mut c, h| {
                let to_name = to_name.to_string();
                async move {
                    Ok(c.transfer_placement_leader(TransferPlacementLeaderRequest {
                        header: Some(h),
                        to_name,
                    })
                    .await?
                    .into_inner())
                }
            })
            .await?;
        check_header(r.header.as_ref())
    }

    pub fn cluster_id(&self) -> u64 {
        self.inner.state.lock().cluster_id
    }

    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    fn channel(&self) -> Result<(String, Channel, u64)> {
        let mut state = self.inner.state.lock();
        if let Some((endpoint, ch)) = &state.channel {
            return Ok((endpoint.clone(), ch.clone(), state.cluster_id));
        }
        let i = state.next_endpoint % self.inner.endpoints.len();
        state.next_endpoint += 1;
        let endpoint = self.inner.endpoints[i].clone();
        let ch = channel_to(&endpoint)?;
        state.channel = Some((endpoint.clone(), ch.clone()));
        Ok((endpoint, ch, state.cluster_id))
    }

    fn drop_channel(&self, endpoint: &str) {
        let mut state = self.inner.state.lock();
        if matches!(&state.channel, Some((e, _)) if e == endpoint) {
            state.channel = None;
        }
    }

    /// Sends the following calls to `leader` (named by a member that does not serve).
    fn follow_leader(&self, from: &str, leader: &str) -> Result<()> {
        let ch = channel_to(leader)?;
        let mut state = self.inner.state.lock();
        if matches!(&state.channel, Some((e, _)) if e == from) {
            state.channel = Some((leader.to_string(), ch));
        }
        Ok(())
    }

    /// The placement endpoint calls go to now (the leader once one answered).
    pub fn current_endpoint(&self) -> Option<String> {
        self.inner
            .state
            .lock()
            .channel
            .as_ref()
            .map(|(e, _)| e.clone())
    }

    /// Runs one placement call, retrying transport failures on the next member until the
    /// deadline. Errors in the response header are returned as they are.
    async fn call<T, F, Fut>(&self, operation: &'static str, f: F) -> Result<T>
    where
        F: Fn(PlacementClient<Channel>, RequestHeader) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        self.call_within(operation, PD_TIMEOUT, f).await
    }

    /// [`PdClient::call`] with its own deadline.
    async fn call_within<T, F, Fut>(
        &self,
        operation: &'static str,
        timeout: Duration,
        f: F,
    ) -> Result<T>
    where
        F: Fn(PlacementClient<Channel>, RequestHeader) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let mut backoff = Backoff::new(Instant::now() + timeout);
        let mut redirects = 0;
        loop {
            let (endpoint, channel, cluster_id) = self.channel()?;
            let client = PlacementClient::new(channel)
                .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
            let attempt =
                tokio::time::timeout(PD_ATTEMPT_TIMEOUT, f(client, RequestHeader { cluster_id }))
                    .await;
            let error = match attempt {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(status)) if status.code() == tonic::Code::InvalidArgument => {
                    return Err(ClientError::InvalidArgument(status.message().to_string()))
                }
                Ok(Err(status)) => {
                    let leader = status
                        .metadata()
                        .get(LEADER_METADATA_KEY)
                        .and_then(|v| v.to_str().ok())
                        .filter(|l| *l != endpoint)
                        .map(str::to_string);
                    if let Some(leader) = leader {
                        if redirects < LEADER_REDIRECTS_MAX {
                            redirects += 1;
                            tracing::debug!(operation, from = %endpoint, to = %leader, "following the placement leader");
                            self.follow_leader(&endpoint, &leader)?;
                            continue;
                        }
                    }
                    format!("{}: {}", status.code(), status.message())
                }
                Err(_) => format!("no answer within {PD_ATTEMPT_TIMEOUT:?}"),
            };
            tracing::debug!(operation, %endpoint, %error, "placement call failed");
            self.drop_channel(&endpoint);
            if !backoff.wait().await {
                return Err(ClientError::PlacementUnreachable {
                    endpoints: self.inner.endpoints.clone(),
                    detail: format!("{operation}: {error}"),
                });
            }
        }
    }

    pub async fn get_cluster_info(&self) -> Result<GetClusterInfoResponse> {
        let r = self
            .call("get_cluster_info", |mut c, h| async move {
                Ok(
                    c.get_cluster_info(GetClusterInfoRequest { header: Some(h) })
                        .await?
                        .into_inner(),
                )
            })
            .await?;
        check_header(r.header.as_ref())?;
        Ok(r)
    }

    /// Allocates `count` consecutive ids; returns the first.
    pub async fn alloc_ids(&self, count: u32) -> Result<u64> {
        let r = self
            .call("alloc_id", |mut c, h| async move {
                Ok(c.alloc_id(AllocIdRequest {
                    header: Some(h),
                    count,
                })
                .await?
                .into_inner())
            })
            .await?;
        check_header(r.header.as_ref())?;
        Ok(r.first_id)
    }

    /// Takes `count` timestamps; returns the last one (`ringkv_proto::tso`).
    pub async fn tso(&self, count: u32) -> Result<u64> {
        let r = self
            .call("tso", |mut c, h| async move {
                Ok(c.tso(TsoRequest {
                    header: Some(h),
                    count,
                })
                .await?
                .into_inner())
            })
            .await?;
        check_header(r.header.as_ref())?;
        let ts = r.timestamp.unwrap_or_default();
        Ok(ringkv_proto::tso::compose(
            ts.physical as u64,
            ts.logical as u64,
        ))
    }

    /// Registers or updates a store; returns the regions it must create at bootstrap state.
    pub async fn put_store(&self, store: Store) -> Result<Vec<Region>> {
        let r = self
            .call("put_store", |mut c, h| {
                let store = store.clone();
                async move {
                    Ok(c.put_store(PutStoreRequest {
                        header: Some(h),
                        store: Some(store),
                    })
                    .await?
                    .into_inner())
                }
            })
            .await?;
        check_header(r.header.as_ref())?;
        Ok(r.bootstrap_regions)
    }

    pub async fn get_store(&self, store_id: u64) -> Result<Store> {
        let r = self
            .call("get_store", |mut c, h| async move {
                Ok(c.get_store(GetStoreRequest {
                    header: Some(h),
                    store_id,
                })
                .await?
                .into_inner())
            })
            .await?;
        check_header(r.header.as_ref())?;
        r.store
            .ok_or_else(|| ClientError::Server(format!("placement returned no store {store_id}")))
    }

    /// A store with the figures of its last heartbeat (None before the first).
    pub async fn get_store_with_stats(&self, store_id: u64) -> Result<(Store, Option<StoreStats>)> {
        let r = self
            .call("get_store", |mut c, h| async move {
                Ok(c.get_store(GetStoreRequest {
                    header: Some(h),
                    store_id,
                })
                .await?
                .into_inner())
            })
            .await?;
        check_header(r.header.as_ref())?;
        let store = r.store.ok_or_else(|| {
            ClientError::Server(format!("placement returned no store {store_id}"))
        })?;
        Ok((store, r.stats))
    }

    /// Sets labels of a store (an empty value removes one); returns the store as it now is.
    pub async fn set_store_labels(
        &self,
        store_id: u64,
        labels: std::collections::HashMap<String, String>,
    ) -> Result<Store> {
        let r = self
            .call("set_store_labels", |mut c, h| {
                let labels = labels.clone();
                async move {
                    Ok(c.set_store_labels(SetStoreLabelsRequest {
                        header: Some(h),
                        store_id,
                        labels,
                    })
                    .await?
                    .into_inner())
                }
            })
            .await?;
        check_header(r.header.as_ref())?;
        r.store.ok_or_else(|| {
            ClientError::Server("set_store_labels answered without the store".into())
        })
    }

    pub async fn get_all_stores(&self) -> Result<Vec<Store>> {
        let r = self
            .call("get_all_stores", |mut c, h| async move {
                Ok(c.get_all_stores(GetAllStoresRequest { header: Some(h) })
                    .await?
                    .into_inner())
            })
            .await?;
        check_header(r.header.as_ref())?;
        Ok(r.stores)
    }

    /// Reports a store's figures; the answer names regions to create at their bootstrap state
    /// and regions to wake (an operator waits for their report).
    pub async fn store_heartbeat(&self, stats: StoreStats) -> Result<StoreHeartbeatResponse> {
        let r = self
            .call("store_heartbeat", |mut c, h| async move {
                Ok(c.store_heartbeat(StoreHeartbeatRequest {
                    header: Some(h),
                    stats: Some(stats),
                })
                .await?
                .into_inner())
            })
            .await?;
        check_header(r.header.as_ref())?;
        Ok(r)
    }

    /// Reports a region's leader and figures; the answer may order the region merged into an
    /// adjacent one.
    pub async fn region_heartbeat(
        &self,
        request: RegionHeartbeatRequest,
    ) -> Result<RegionHeartbeatResponse> {
        let r = self
            .call("region_heartbeat", |mut c, h| {
                let mut req = request.clone();
                req.header = Some(h);
                async move { Ok(c.region_heartbeat(req).await?.into_inner()) }
            })
            .await?;
        check_header(r.header.as_ref())?;
        Ok(r)
    }

    /// Starts decommissioning `store_id`; returns the store as it now is.
    pub async fn decommission_store(&self, store_id: u64) -> Result<Store> {
        let r = self
            .call("decommission_store", |mut c, h| async move {
                Ok(c.decommission_store(DecommissionStoreRequest {
                    header: Some(h),
                    store_id,
                })
                .await?
                .into_inner())
            })
            .await?;
        check_header(r.header.as_ref())?;
        r.store
            .ok_or_else(|| ClientError::Server("decommission answered without the store".into()))
    }

    /// The operators in flight (admin CLI).
    pub async fn get_operators(&self) -> Result<Vec<OperatorInfo>> {
        let r = self
            .call("get_operators", |mut c, h| async move {
                Ok(c.get_operators(GetOperatorsRequest { header: Some(h) })
                    .await?
                    .into_inner())
            })
            .await?;
        check_header(r.header.as_ref())?;
        Ok(r.operators)
    }

    /// Drops the operator of `region_id`.
    pub async fn cancel_operator(&self, region_id: u64) -> Result<()> {
        let r = self
            .call("cancel_operator", |mut c, h| async move {
                Ok(c.cancel_operator(CancelOperatorRequest {
                    header: Some(h),
                    region_id,
                })
                .await?
                .into_inner())
            })
            .await?;
        check_header(r.header.as_ref())
    }

    /// Starts an admin operator (see [`AddOperatorRequest`] for the kinds and their fields;
    /// the header is filled in here).
    pub async fn add_operator(&self, request: AddOperatorRequest) -> Result<OperatorInfo> {
        let r = self
            .call("add_operator", |mut c, h| {
                let request = AddOperatorRequest {
                    header: Some(h),
                    ..request.clone()
                };
                async move { Ok(c.add_operator(request).await?.into_inner()) }
            })
            .await?;
        check_header(r.header.as_ref())?;
        r.operator
            .ok_or_else(|| ClientError::Server("add_operator answered without the operator".into()))
    }

    /// The scheduling settings in force.
    pub async fn get_schedule_config(&self) -> Result<ScheduleConfig> {
        let r = self
            .call("get_schedule_config", |mut c, h| async move {
                Ok(
                    c.get_schedule_config(GetScheduleConfigRequest { header: Some(h) })
                        .await?
                        .into_inner(),
                )
            })
            .await?;
        check_header(r.header.as_ref())?;
        r.config
            .ok_or_else(|| ClientError::Server("answered without the configuration".into()))
    }

    /// Changes one scheduling setting (persisted by the placement driver).
    pub async fn set_schedule_config(&self, key: &str, value: &str) -> Result<ScheduleConfig> {
        let r = self
            .call("set_schedule_config", |mut c, h| {
                let (key, value) = (key.to_string(), value.to_string());
                async move {
                    Ok(c.set_schedule_config(SetScheduleConfigRequest {
                        header: Some(h),
                        key,
                        value,
                    })
                    .await?
                    .into_inner())
                }
            })
            .await?;
        check_header(r.header.as_ref())?;
        r.config
            .ok_or_else(|| ClientError::Server("answered without the configuration".into()))
    }

    /// Adds (`evict`) or removes the evict-leader scheduler of a store: while it runs, the
    /// store's leaders are moved away and it gets none.
    pub async fn evict_leader(&self, store_id: u64, evict: bool) -> Result<ScheduleConfig> {
        let r = self
            .call("evict_leader", |mut c, h| async move {
                Ok(c.evict_leader(EvictLeaderRequest {
                    header: Some(h),
                    store_id,
                    evict,
                })
                .await?
                .into_inner())
            })
            .await?;
        check_header(r.header.as_ref())?;
        r.config
            .ok_or_else(|| ClientError::Server("answered without the configuration".into()))
    }

    /// The GC safe point (advanced first when its life time allows).
    pub async fn gc_safe_point(&self) -> Result<u64> {
        let r = self
            .call("get_gc_safe_point", |mut c, h| async move {
                Ok(
                    c.get_gc_safe_point(GetGcSafePointRequest { header: Some(h) })
                        .await?
                        .into_inner(),
                )
            })
            .await?;
        check_header(r.header.as_ref())?;
        Ok(r.safe_point)
    }

    /// Sets the GC safe point by hand; returns it.
    pub async fn update_gc_safe_point(&self, safe_point: u64) -> Result<u64> {
        let r = self
            .call("update_gc_safe_point", |mut c, h| async move {
                Ok(c.update_gc_safe_point(UpdateGcSafePointRequest {
                    header: Some(h),
                    safe_point,
                })
                .await?
                .into_inner())
            })
            .await?;
        check_header(r.header.as_ref())?;
        Ok(r.new_safe_point)
    }

    /// Registers the oldest start_ts `service_id` reads at for `ttl_ms` (0: unregisters);
    /// returns the GC safe point.
    pub async fn update_service_gc_safe_point(
        &self,
        service_id: &str,
        safe_point: u64,
        ttl_ms: i64,
    ) -> Result<u64> {
        let r = self
            .call("update_service_gc_safe_point", |mut c, h| {
                let service_id = service_id.to_string();
                async move {
                    Ok(
                        c.update_service_gc_safe_point(UpdateServiceGcSafePointRequest {
                            header: Some(h),
                            service_id,
                            ttl_ms,
                            safe_point,
                        })
                        .await?
                        .into_inner(),
                    )
                }
            })
            .await?;
        check_header(r.header.as_ref())?;
        Ok(r.gc_safe_point)
    }

    /// Creates keyspace `name`, hash- or range-ordered; fails if it exists.
    pub async fn create_keyspace(&self, name: &str, mode: KeyspaceMode) -> Result<KeyspaceMeta> {
        let r = self
            .call("create_keyspace", |mut c, h| {
                let name = name.to_string();
                async move {
                    Ok(c.create_keyspace(CreateKeyspaceRequest {
                        header: Some(h),
                        name,
                        mode: mode as i32,
                    })
                    .await?
                    .into_inner())
                }
            })
            .await?;
        keyspace_of(r)
    }

    /// The keyspace called `name`.
    pub async fn get_keyspace(&self, name: &str) -> Result<KeyspaceMeta> {
        let r = self
            .call("get_keyspace", |mut c, h| {
                let name = name.to_string();
                async move {
                    Ok(c.get_keyspace(GetKeyspaceRequest {
                        header: Some(h),
                        name,
                    })
                    .await?
                    .into_inner())
                }
            })
            .await?;
        keyspace_of(r)
    }

    /// Ids for splitting `region`: the new region's id and one new peer id per peer.
    pub async fn ask_split(&self, region: &Region) -> Result<(u64, Vec<u64>)> {
        let r = self
            .call("ask_split", |mut c, h| {
                let region = Some(region.clone());
                async move {
                    Ok(c.ask_split(AskSplitRequest {
                        header: Some(h),
                        region,
                    })
                    .await?
                    .into_inner())
                }
            })
            .await?;
        check_header(r.header.as_ref())?;
        Ok((r.new_region_id, r.new_peer_ids))
    }

    /// Tells the placement driver about a split that was applied.
    pub async fn report_split(&self, left: &Region, right: &Region) -> Result<()> {
        let r = self
            .call("report_split", |mut c, h| {
                let (left, right) = (Some(left.clone()), Some(right.clone()));
                async move {
                    Ok(c.report_split(ReportSplitRequest {
                        header: Some(h),
                        left,
                        right,
                    })
                    .await?
                    .into_inner())
                }
            })
            .await?;
        check_header(r.header.as_ref())
    }

    /// The region holding encoded `key`.
    pub async fn get_region(&self, key: &[u8]) -> Result<RegionRoute> {
        let r = self
            .call("get_region", |mut c, h| {
                let region_key = key.to_vec();
                async move {
                    Ok(c.get_region(GetRegionRequest {
                        header: Some(h),
                        region_key,
                    })
                    .await?
                    .into_inner())
                }
            })
            .await?;
        check_header(r.header.as_ref())?;
        let region = r.region.ok_or_else(|| {
            ClientError::Server("placement driver knows no region for the key".into())
        })?;
        Ok(RegionRoute {
            region,
            leader: r.leader,
            health: None,
        })
    }

    pub async fn get_region_by_id(&self, region_id: u64) -> Result<RegionRoute> {
        let r = self
            .call("get_region_by_id", |mut c, h| async move {
                Ok(c.get_region_by_id(GetRegionByIdRequest {
                    header: Some(h),
                    region_id,
                })
                .await?
                .into_inner())
            })
            .await?;
        check_header(r.header.as_ref())?;
        let region = r
            .region
            .ok_or_else(|| ClientError::Server(format!("no region {region_id}")))?;
        Ok(RegionRoute {
            region,
            leader: r.leader,
            health: None,
        })
    }

    /// Regions overlapping encoded range `[start, end)` (empty `end`: unbounded), in order.
    pub async fn scan_regions(
        &self,
        start: &[u8],
        end: &[u8],
        limit: u32,
    ) -> Result<Vec<RegionRoute>> {
        let r = self
            .call("scan_regions", |mut c, h| {
                let (start_key, end_key) = (start.to_vec(), end.to_vec());
                async move {
                    Ok(c.scan_regions(ScanRegionsRequest {
                        header: Some(h),
                        start_key,
                        end_key,
                        limit,
                    })
                    .await?
                    .into_inner())
                }
            })
            .await?;
        check_header(r.header.as_ref())?;
        Ok(r.regions
            .into_iter()
            .filter_map(|r| {
                Some(RegionRoute {
                    region: r.region?,
                    leader: r.leader,
                    health: r.health,
                })
            })
            .collect())
    }
}
