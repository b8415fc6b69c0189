//! The gRPC face of the placement core. Every handler: check that this member serves and the
//! cluster id, run the core under the member's lock, propose what it changed to the placement
//! group, wait for the commit when a reply depends on it, reply. Errors travel in the response
//! header, typed; a member that does not serve answers `UNAVAILABLE` naming the leader.

use crate::cluster::{AdminOperator, MetaWrites, PlacementCore};
use crate::member;
use crate::replica_checker::Step;
use crate::server::{wall_ms, Shared};
use crate::PlacementError;
use ringkv_proto::pdpb::placement_member_server::PlacementMember;
use ringkv_proto::pdpb::placement_server::Placement;
use ringkv_proto::pdpb::*;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// gRPC metadata key naming the leader's endpoint on an `UNAVAILABLE` answer.
pub const LEADER_METADATA_KEY: &str = "ringkv-placement-leader";

/// How long a leadership transfer may take before its request gives up.
const COMMIT_TIMEOUT_TRANSFER: Duration = Duration::from_secs(5);

pub(crate) struct PlacementService {
    pub shared: Arc<Shared>,
}

/// The placement members' Raft traffic.
pub(crate) struct MemberService {
    pub shared: Arc<Shared>,
}

fn header_of(cluster_id: u64, result: &Result<(), PlacementError>) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        cluster_id,
        error: result.as_ref().err().map(|e| Error {
            r#type: e.error_type() as i32,
            message: e.to_string(),
        }),
    })
}

/// `UNAVAILABLE`, with the leader's endpoint attached when known: the client retries there.
fn unavailable(e: PlacementError) -> Status {
    let mut status = Status::unavailable(e.to_string());
    if let PlacementError::NotLeader {
        leader: Some(leader),
        ..
    } = &e
    {
        if let Ok(v) = leader.parse() {
            status.metadata_mut().insert(LEADER_METADATA_KEY, v);
        }
    }
    status
}

impl PlacementService {
    /// Runs `f` on the serving core with this request's cluster check, proposes what it
    /// changed, and returns the response header plus `f`'s value (default on error) once every
    /// change a reply may rely on has committed.
    async fn run<T: Default>(
        &self,
        header: Option<RequestHeader>,
        f: impl FnOnce(&mut PlacementCore, &mut MetaWrites, i64) -> Result<T, PlacementError>,
    ) -> Result<(Option<ResponseHeader>, T), Status> {
        let shared = &self.shared;
        let (cluster_id, result, wait_for) = {
            let mut st = shared.state.lock();
            let mut writes = MetaWrites::default();
            let core = shared.serving(&mut st).map_err(unavailable)?;
            let cluster_id = core.cluster_id();
            let result = core
                .check_cluster(header.map(|h| h.cluster_id).unwrap_or(0))
                .and_then(|()| f(core, &mut writes, wall_ms()));
            // Writes of a failed call are still facts (e.g. an id range consumed).
            st.propose(&writes).map_err(unavailable)?;
            (cluster_id, result, (st.sync_index, st.raft.term()))
        };
        shared.wake.notify_one();
        shared
            .wait_applied(wait_for.0, wait_for.1)
            .await
            .map_err(unavailable)?;
        Ok(match result {
            Ok(value) => (header_of(cluster_id, &Ok(())), value),
            Err(e) => {
                tracing::debug!(error = %e, "placement request failed");
                (header_of(cluster_id, &Err(e)), T::default())
            }
        })
    }
}

#[tonic::async_trait]
impl PlacementMember for MemberService {
    async fn raft(
        &self,
        request: Request<MemberRaftRequest>,
    ) -> Result<Response<MemberRaftResponse>, Status> {
        let req = request.into_inner();
        let shared = &self.shared;
        if req.to_member_id != shared.self_id {
            return Err(Status::invalid_argument(format!(
                "placement raft message for member {} reached member {}; the members' initial_members lists differ",
                req.to_member_id, shared.self_id
            )));
        }
        if shared.blocked.lock().contains(&req.from_member_id) {
            return Err(Status::unavailable(
                "dropped by fault injection (SetMemberNetFilter)",
            ));
        }
        let messages = member::decode_messages(&req.messages);
        {
            let mut st = shared.state.lock();
            let now = shared.mono_ms();
            for m in messages {
                if let Err(e) = st.raft.step(m, now) {
                    tracing::debug!(error = %e, from = req.from_member_id, "placement raft message refused");
                }
            }
        }
        shared.wake.notify_one();
        Ok(Response::new(MemberRaftResponse {}))
    }

    async fn set_member_net_filter(
        &self,
        request: Request<SetMemberNetFilterRequest>,
    ) -> Result<Response<SetMemberNetFilterResponse>, Status> {
        let shared = &self.shared;
        if !shared.fault_injection {
            return Err(Status::failed_precondition(
                "fault injection is off on this placement member; start it with fault_injection = true (tests only)",
            ));
        }
        let blocked = request.into_inner().blocked_member_ids;
        tracing::warn!(
            ?blocked,
            "fault injection: placement raft traffic to and from these members is dropped"
        );
        *shared.blocked.lock() = blocked;
        Ok(Response::new(SetMemberNetFilterResponse {}))
    }
}

#[tonic::async_trait]
impl Placement for PlacementService {
    /// Answered by every member, leader or not, once the cluster has an id: how clients find
    /// the leader.
    async fn get_members(
        &self,
        request: Request<GetMembersRequest>,
    ) -> Result<Response<GetMembersResponse>, Status> {
        let shared = &self.shared;
        let cluster_id = shared
            .meta
            .cluster_id()
            .map_err(|e| Status::internal(e.to_string()))?;
        if cluster_id == 0 {
            return Err(Status::unavailable(
                "the placement group has not elected its first leader yet; retry shortly",
            ));
        }
        let asked = request
            .into_inner()
            .header
            .map(|h| h.cluster_id)
            .unwrap_or(0);
        let result = if asked != 0 && asked != cluster_id {
            Err(PlacementError::ClusterMismatch {
                expected: cluster_id,
                got: asked,
            })
        } else {
            Ok(())
        };
        let status = shared.state.lock().raft.status();
        let me = shared.member(shared.self_id).expect("self is a member");
        Ok(Response::new(GetMembersResponse {
            header: header_of(cluster_id, &result),
            members: shared
                .members
                .iter()
                .map(|m| shared.wire_member(m))
                .collect(),
            leader: shared
                .member(status.leader_id)
                .map(|m| shared.wire_member(m)),
            answered_by: Some(shared.wire_member(me)),
            term: status.term,
            commit_index: status.commit_index,
            applied_index: status.applied_index,
        }))
    }

    async fn transfer_placement_leader(
        &self,
        request: Request<TransferPlacementLeaderRequest>,
    ) -> Result<Response<TransferPlacementLeaderResponse>, Status> {
        let req = request.into_inner();
        let shared = &self.shared;
        let to = shared.members.iter().find(|m| m.name == req.to_name);
        let (header, target) = self
            .run(req.header, |_, _, _| match to {
                None => Err(PlacementError::InvalidArgument(format!(
                    "no placement member is named {:?}; members: {}",
                    req.to_name,
                    shared
                        .members
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
                Some(m) => Ok(Some(m.id)),
            })
            .await?;
        if let Some(id) = target.filter(|&id| id != shared.self_id) {
            let term = {
                let mut st = shared.state.lock();
                st.raft.transfer_leader(id);
                st.raft.term()
            };
            shared.wake.notify_one();
            // Answer once this member has stepped down (or the transfer failed).
            let mut rx = shared.progress.subscribe();
            let deadline = tokio::time::Instant::now() + COMMIT_TIMEOUT_TRANSFER;
            loop {
                let p = *rx.borrow_and_update();
                if !p.leader || p.term != term {
                    break;
                }
                if tokio::time::timeout_at(deadline, rx.changed())
                    .await
                    .is_err()
                {
                    let error = PlacementError::NotLeader {
                        leader: None,
                        reason: "the leadership transfer did not finish in time; the target may be behind or down",
                    };
                    return Ok(Response::new(TransferPlacementLeaderResponse {
                        header: header_of(header.map(|h| h.cluster_id).unwrap_or(0), &Err(error)),
                    }));
                }
            }
        }
        Ok(Response::new(TransferPlacementLeaderResponse { header }))
    }

    async fn get_cluster_info(
        &self,
        request: Request<GetClusterInfoRequest>,
    ) -> Result<Response<GetClusterInfoResponse>, Status> {
        let (header, info) = self
            .run(request.into_inner().header, |core, _, _| {
                Ok((
                    core.is_bootstrapped(),
                    core.replicas(),
                    core.store_count() as u32,
                    core.region_count() as u32,
                ))
            })
            .await?;
        Ok(Response::new(GetClusterInfoResponse {
            header,
            bootstrapped: info.0,
            replicas: info.1,
            store_count: info.2,
            region_count: info.3,
        }))
    }

    async fn alloc_id(
        &self,
        request: Request<AllocIdRequest>,
    ) -> Result<Response<AllocIdResponse>, Status> {
        let req = request.into_inner();
        let (header, first_id) = self
            .run(req.header, |core, w, _| core.alloc_ids(req.count, w))
            .await?;
        Ok(Response::new(AllocIdResponse {
            header,
            first_id,
            count: if first_id == 0 { 0 } else { req.count },
        }))
    }

    async fn tso(&self, request: Request<TsoRequest>) -> Result<Response<TsoResponse>, Status> {
        let req = request.into_inner();
        let (header, batch) = self
            .run(req.header, |core, w, now| {
                core.tso(req.count, now, w).map(Some)
            })
            .await?;
        Ok(Response::new(TsoResponse {
            header,
            timestamp: batch.map(|b| Timestamp {
                physical: b.physical_ms,
                logical: b.logical,
            }),
            count: batch.map(|b| b.count).unwrap_or(0),
        }))
    }

    async fn put_store(
        &self,
        request: Request<PutStoreRequest>,
    ) -> Result<Response<PutStoreResponse>, Status> {
        let req = request.into_inner();
        let (header, bootstrap_regions) = self
            .run(req.header, |core, w, now| {
                let store = req.store.ok_or_else(|| {
                    PlacementError::InvalidArgument("put_store without a store".into())
                })?;
                core.put_store(store, now, w)
            })
            .await?;
        Ok(Response::new(PutStoreResponse {
            header,
            bootstrap_regions,
        }))
    }

    async fn get_store(
        &self,
        request: Request<GetStoreRequest>,
    ) -> Result<Response<GetStoreResponse>, Status> {
        let req = request.into_inner();
        let (header, info) = self
            .run(req.header, |core, _, _| {
                core.get_store(req.store_id).map(|s| Some(s.clone()))
            })
            .await?;
        Ok(Response::new(GetStoreResponse {
            header,
            store: info.as_ref().map(|i| i.store.clone()),
            stats: info.and_then(|i| i.stats),
        }))
    }

    async fn get_all_stores(
        &self,
        request: Request<GetAllStoresRequest>,
    ) -> Result<Response<GetAllStoresResponse>, Status> {
        let (header, stores) = self
            .run(request.into_inner().header, |core, _, _| {
                Ok(core.stores().map(|s| s.store.clone()).collect())
            })
            .await?;
        Ok(Response::new(GetAllStoresResponse { header, stores }))
    }

    async fn set_store_labels(
        &self,
        request: Request<SetStoreLabelsRequest>,
    ) -> Result<Response<SetStoreLabelsResponse>, Status> {
        let req = request.into_inner();
        let (header, store) = self
            .run(req.header, |core, w, _| {
                core.set_store_labels(req.store_id, &req.labels, w)
                    .map(Some)
            })
            .await?;
        Ok(Response::new(SetStoreLabelsResponse { header, store }))
    }

    async fn store_heartbeat(
        &self,
        request: Request<StoreHeartbeatRequest>,
    ) -> Result<Response<StoreHeartbeatResponse>, Status> {
        let req = request.into_inner();
        let (header, (bootstrap_regions, wake_regions)) = self
            .run(req.header, |core, w, now| {
                let stats = req.stats.ok_or_else(|| {
                    PlacementError::InvalidArgument("store heartbeat without stats".into())
                })?;
                let store_id = stats.store_id;
                let regions = core.store_heartbeat(stats, now)?;
                core.finish_decommission(store_id, w);
                Ok((regions, core.regions_to_wake(store_id)))
            })
            .await?;
        Ok(Response::new(StoreHeartbeatResponse {
            header,
            bootstrap_regions,
            wake_regions,
        }))
    }

    async fn region_heartbeat(
        &self,
        request: Request<RegionHeartbeatRequest>,
    ) -> Result<Response<RegionHeartbeatResponse>, Status> {
        let req = request.into_inner();
        let (header, (merge, change_peer, transfer_leader, split)) = self
            .run(req.header, |core, w, now| {
                let region = req.region.clone().ok_or_else(|| {
                    PlacementError::InvalidArgument("region heartbeat without a region".into())
                })?;
                let (region_id, epoch) = (region.id, region.region_epoch);
                core.region_heartbeat(region, req.leader, req.term, w)?;
                if core.region_by_id(region_id).map(|i| i.region.region_epoch) != Some(epoch) {
                    // A stale report: its figures describe another range.
                    return Ok((None, None, None, None));
                }
                if let Some(flow) = &req.flow {
                    core.region_flow(region_id, flow, now);
                }
                core.region_stats(&req, now);
                // Operators first; no merge while one moves the region.
                match core.operator_step(region_id, now, w) {
                    Some(Step::ChangePeer { kind, peer }) => {
                        let order = ChangePeerOrder {
                            kind: kind as i32,
                            peer: Some(peer),
                        };
                        return Ok((None, Some(order), None, None));
                    }
                    Some(Step::TransferLeader { to }) => {
                        let order = TransferLeaderOrder { to: Some(to) };
                        return Ok((None, None, Some(order), None));
                    }
                    Some(Step::Split { key, .. }) => {
                        return Ok((None, None, None, Some(SplitOrder { split_key: key })));
                    }
                    Some(Step::Merge { target }) => {
                        let Some(target) = core.region_by_id(target).map(|i| i.region.clone())
                        else {
                            // The target left routing (split or merged itself): the order
                            // cannot be carried out as asked.
                            core.cancel_operators(&[region_id]);
                            return Ok((None, None, None, None));
                        };
                        let order = MergeOrder {
                            target: Some(target),
                        };
                        return Ok((Some(order), None, None, None));
                    }
                    None => {}
                }
                let merge = core.merge_order(region_id, now).map(|target| MergeOrder {
                    target: Some(target),
                });
                Ok((merge, None, None, None))
            })
            .await?;
        Ok(Response::new(RegionHeartbeatResponse {
            header,
            merge,
            change_peer,
            transfer_leader,
            split,
        }))
    }

    async fn create_keyspace(
        &self,
        request: Request<CreateKeyspaceRequest>,
    ) -> Result<Response<KeyspaceResponse>, Status> {
        let req = request.into_inner();
        let (header, keyspace) = self
            .run(req.header, |core, w, _| {
                core.create_keyspace(&req.name, req.mode, w).map(Some)
            })
            .await?;
        Ok(Response::new(KeyspaceResponse { header, keyspace }))
    }

    async fn get_keyspace(
        &self,
        request: Request<GetKeyspaceRequest>,
    ) -> Result<Response<KeyspaceResponse>, Status> {
        let req = request.into_inner();
        let (header, keyspace) = self
            .run(req.header, |core, _, _| {
                core.keyspace(&req.name).map(|k| Some(k.clone()))
            })
            .await?;
        Ok(Response::new(KeyspaceResponse { header, keyspace }))
    }

    async fn ask_split(
        &self,
        request: Request<AskSplitRequest>,
    ) -> Result<Response<AskSplitResponse>, Status> {
        let req = request.into_inner();
        let (header, (new_region_id, new_peer_ids)) = self
            .run(req.header, |core, w, _| {
                let region = req.region.ok_or_else(|| {
                    PlacementError::InvalidArgument("ask split without a region".into())
                })?;
                core.ask_split(&region, w)
            })
            .await?;
        Ok(Response::new(AskSplitResponse {
            header,
            new_region_id,
            new_peer_ids,
        }))
    }

    async fn report_split(
        &self,
        request: Request<ReportSplitRequest>,
    ) -> Result<Response<ReportSplitResponse>, Status> {
        let req = request.into_inner();
        let (header, ()) = self
            .run(req.header, |core, w, _| {
                let (Some(left), Some(right)) = (req.left, req.right) else {
                    return Err(PlacementError::InvalidArgument(
                        "split report needs both regions".into(),
                    ));
                };
                core.report_split(left, right, None, 0, w)
            })
            .await?;
        Ok(Response::new(ReportSplitResponse { header }))
    }

    async fn get_region(
        &self,
        request: Request<GetRegionRequest>,
    ) -> Result<Response<GetRegionResponse>, Status> {
        let req = request.into_inner();
        let (header, info) = self
            .run(req.header, |core, _, _| {
                if !core.is_bootstrapped() {
                    return Err(PlacementError::NotBootstrapped {
                        registered: core.store_count(),
                        replicas: core.replicas(),
                    });
                }
                Ok(core.region_by_key(&req.region_key).cloned())
            })
            .await?;
        Ok(Response::new(GetRegionResponse {
            header,
            region: info.as_ref().map(|i| i.region.clone()),
            leader: info.and_then(|i| i.leader),
        }))
    }

    async fn get_region_by_id(
        &self,
        request: Request<GetRegionByIdRequest>,
    ) -> Result<Response<GetRegionResponse>, Status> {
        let req = request.into_inner();
        let (header, info) = self
            .run(req.header, |core, _, _| {
                core.region_by_id(req.region_id).cloned().map(Some).ok_or(
                    PlacementError::RegionNotFound {
                        region_id: req.region_id,
                    },
                )
            })
            .await?;
        Ok(Response::new(GetRegionResponse {
            header,
            region: info.as_ref().map(|i| i.region.clone()),
            leader: info.and_then(|i| i.leader),
        }))
    }

    async fn scan_regions(
        &self,
        request: Request<ScanRegionsRequest>,
    ) -> Result<Response<ScanRegionsResponse>, Status> {
        let req = request.into_inner();
        let (header, regions) = self
            .run(req.header, |core, _, now| {
                let core = &*core;
                let limit = if req.limit == 0 {
                    usize::MAX
                } else {
                    req.limit as usize
                };
                Ok(core
                    .scan_regions(&req.start_key, &req.end_key, limit)
                    .into_iter()
                    .map(|i| RegionWithLeader {
                        region: Some(i.region.clone()),
                        leader: i.leader,
                        health: Some(core.region_health(i, now)),
                    })
                    .collect())
            })
            .await?;
        Ok(Response::new(ScanRegionsResponse { header, regions }))
    }

    async fn decommission_store(
        &self,
        request: Request<DecommissionStoreRequest>,
    ) -> Result<Response<DecommissionStoreResponse>, Status> {
        let req = request.into_inner();
        let (header, store) = self
            .run(req.header, |core, w, _| {
                core.decommission_store(req.store_id, w).map(Some)
            })
            .await?;
        Ok(Response::new(DecommissionStoreResponse { header, store }))
    }

    async fn get_operators(
        &self,
        request: Request<GetOperatorsRequest>,
    ) -> Result<Response<GetOperatorsResponse>, Status> {
        let (header, operators) = self
            .run(request.into_inner().header, |core, _, _| {
                Ok(core.operator_infos())
            })
            .await?;
        Ok(Response::new(GetOperatorsResponse { header, operators }))
    }

    async fn cancel_operator(
        &self,
        request: Request<CancelOperatorRequest>,
    ) -> Result<Response<CancelOperatorResponse>, Status> {
        let req = request.into_inner();
        let (header, ()) = self
            .run(req.header, |core, _, _| core.cancel_operator(req.region_id))
            .await?;
        Ok(Response::new(CancelOperatorResponse { header }))
    }

    async fn add_operator(
        &self,
        request: Request<AddOperatorRequest>,
    ) -> Result<Response<AddOperatorResponse>, Status> {
        let req = request.into_inner();
        let (header, operator) = self
            .run(req.header, |core, w, now| {
                let wanted = match req.kind.as_str() {
                    "transfer-leader" => AdminOperator::TransferLeader {
                        to_store: req.to_store,
                    },
                    "move-peer" => AdminOperator::MovePeer {
                        from_store: req.from_store,
                        to_store: req.to_store,
                    },
                    "split" => AdminOperator::Split { key: req.split_key },
                    "merge" => AdminOperator::Merge {
                        target: req.target_region_id,
                    },
                    other => {
                        return Err(PlacementError::InvalidArgument(format!(
                            "unknown operator kind {other:?}: transfer-leader, move-peer, split or merge"
                        )))
                    }
                };
                core.add_operator(req.region_id, wanted, now, w).map(Some)
            })
            .await?;
        Ok(Response::new(AddOperatorResponse { header, operator }))
    }

    async fn get_schedule_config(
        &self,
        request: Request<GetScheduleConfigRequest>,
    ) -> Result<Response<ScheduleConfigResponse>, Status> {
        let (header, config) = self
            .run(request.into_inner().header, |core, _, _| {
                Ok(Some(core.schedule_config()))
            })
            .await?;
        Ok(Response::new(ScheduleConfigResponse { header, config }))
    }

    async fn set_schedule_config(
        &self,
        request: Request<SetScheduleConfigRequest>,
    ) -> Result<Response<ScheduleConfigResponse>, Status> {
        let req = request.into_inner();
        let (header, config) = self
            .run(req.header, |core, w, _| {
                core.set_schedule_config(&req.key, &req.value, w).map(Some)
            })
            .await?;
        Ok(Response::new(ScheduleConfigResponse { header, config }))
    }

    async fn evict_leader(
        &self,
        request: Request<EvictLeaderRequest>,
    ) -> Result<Response<ScheduleConfigResponse>, Status> {
        let req = request.into_inner();
        let (header, config) = self
            .run(req.header, |core, w, _| {
                core.set_evict_leader(req.store_id, req.evict, w).map(Some)
            })
            .await?;
        Ok(Response::new(ScheduleConfigResponse { header, config }))
    }

    async fn get_gc_safe_point(
        &self,
        request: Request<GetGcSafePointRequest>,
    ) -> Result<Response<GetGcSafePointResponse>, Status> {
        let (header, safe_point) = self
            .run(request.into_inner().header, |core, w, now| {
                Ok(core.gc_safe_point(now, w))
            })
            .await?;
        Ok(Response::new(GetGcSafePointResponse { header, safe_point }))
    }

    async fn update_gc_safe_point(
        &self,
        request: Request<UpdateGcSafePointRequest>,
    ) -> Result<Response<UpdateGcSafePointResponse>, Status> {
        let req = request.into_inner();
        let (header, new_safe_point) = self
            .run(req.header, |core, w, now| {
                core.set_gc_safe_point(req.safe_point, now, w)
            })
            .await?;
        Ok(Response::new(UpdateGcSafePointResponse {
            header,
            new_safe_point,
        }))
    }

    async fn update_service_gc_safe_point(
        &self,
        request: Request<UpdateServiceGcSafePointRequest>,
    ) -> Result<Response<UpdateServiceGcSafePointResponse>, Status> {
        let req = request.into_inner();
        let (header, gc_safe_point) = self
            .run(req.header, |core, _, now| {
                core.update_service_gc_safe_point(&req.service_id, req.safe_point, req.ttl_ms, now)
            })
            .await?;
        Ok(Response::new(UpdateServiceGcSafePointResponse {
            header,
            gc_safe_point,
        }))
    }
}
