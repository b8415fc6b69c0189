//! The gRPC face of the placement core. Every handler: check the cluster id, run the core under
//! its lock, persist what it asked for, reply. Errors travel in the response header, typed.

use crate::cluster::{MetaWrites, PlacementCore};
use crate::merge_checker::RegionStats;
use crate::meta_store::MetaStore;
use crate::replica_checker::Step;
use crate::PlacementError;
use parking_lot::Mutex;
use ringkv_proto::pdpb::placement_server::Placement;
use ringkv_proto::pdpb::*;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tonic::{Request, Response, Status};

pub(crate) struct PlacementService {
    pub core: Arc<Mutex<PlacementCore>>,
    pub meta: Arc<MetaStore>,
    pub name: String,
    pub endpoint: String,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
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

impl PlacementService {
    /// Runs `f` on the core with this request's cluster check and persistence, and returns the
    /// response header plus `f`'s value (default on error).
    fn run<T: Default>(
        &self,
        header: Option<RequestHeader>,
        f: impl FnOnce(&mut PlacementCore, &mut MetaWrites, i64) -> Result<T, PlacementError>,
    ) -> (Option<ResponseHeader>, T) {
        let mut core = self.core.lock();
        let cluster_id = core.cluster_id();
        let mut writes = MetaWrites::default();
        let result = core
            .check_cluster(header.map(|h| h.cluster_id).unwrap_or(0))
            .and_then(|()| f(&mut core, &mut writes, now_ms()));
        // Persist before replying: a reply may only promise what survives a restart.
        let result = match result {
            Ok(value) => self.meta.apply(writes).map(|()| value),
            Err(e) => {
                // Writes of a failed call are still facts (e.g. an id range consumed).
                let _ = self.meta.apply(writes);
                Err(e)
            }
        };
        match result {
            Ok(value) => (header_of(cluster_id, &Ok(())), value),
            Err(e) => {
                tracing::debug!(error = %e, "placement request failed");
                (header_of(cluster_id, &Err(e)), T::default())
            }
        }
    }
}

#[tonic::async_trait]
impl Placement for PlacementService {
    async fn get_members(
        &self,
        request: Request<GetMembersRequest>,
    ) -> Result<Response<GetMembersResponse>, Status> {
        let me = Member {
            name: self.name.clone(),
            endpoint: self.endpoint.clone(),
        };
        let (header, ()) = self.run(request.into_inner().header, |_, _, _| Ok(()));
        Ok(Response::new(GetMembersResponse {
            header,
            members: vec![me.clone()],
            leader: Some(me),
        }))
    }

    async fn get_cluster_info(
        &self,
        request: Request<GetClusterInfoRequest>,
    ) -> Result<Response<GetClusterInfoResponse>, Status> {
        let (header, info) = self.run(request.into_inner().header, |core, _, _| {
            Ok((
                core.is_bootstrapped(),
                core.replicas(),
                core.store_count() as u32,
                core.region_count() as u32,
            ))
        });
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
        let (header, first_id) = self.run(req.header, |core, w, _| core.alloc_ids(req.count, w));
        Ok(Response::new(AllocIdResponse {
            header,
            first_id,
            count: if first_id == 0 { 0 } else { req.count },
        }))
    }

    async fn tso(&self, request: Request<TsoRequest>) -> Result<Response<TsoResponse>, Status> {
        let req = request.into_inner();
        let (header, batch) = self.run(req.header, |core, w, now| {
            core.tso(req.count, now, w).map(Some)
        });
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
        let (header, bootstrap_regions) = self.run(req.header, |core, w, now| {
            let store = req.store.ok_or_else(|| {
                PlacementError::InvalidArgument("put_store without a store".into())
            })?;
            core.put_store(store, now, w)
        });
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
        let (header, info) = self.run(req.header, |core, _, _| {
            core.get_store(req.store_id).map(|s| Some(s.clone()))
        });
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
        let (header, stores) = self.run(request.into_inner().header, |core, _, _| {
            Ok(core.stores().map(|s| s.store.clone()).collect())
        });
        Ok(Response::new(GetAllStoresResponse { header, stores }))
    }

    async fn store_heartbeat(
        &self,
        request: Request<StoreHeartbeatRequest>,
    ) -> Result<Response<StoreHeartbeatResponse>, Status> {
        let req = request.into_inner();
        let (header, bootstrap_regions) = self.run(req.header, |core, w, now| {
            let stats = req.stats.ok_or_else(|| {
                PlacementError::InvalidArgument("store heartbeat without stats".into())
            })?;
            let store_id = stats.store_id;
            let regions = core.store_heartbeat(stats, now)?;
            core.finish_decommission(store_id, w);
            Ok(regions)
        });
        Ok(Response::new(StoreHeartbeatResponse {
            header,
            bootstrap_regions,
        }))
    }

    async fn region_heartbeat(
        &self,
        request: Request<RegionHeartbeatRequest>,
    ) -> Result<Response<RegionHeartbeatResponse>, Status> {
        let req = request.into_inner();
        let (header, (merge, change_peer, transfer_leader)) =
            self.run(req.header, |core, w, now| {
                let region = req.region.ok_or_else(|| {
                    PlacementError::InvalidArgument("region heartbeat without a region".into())
                })?;
                let (region_id, epoch) = (region.id, region.region_epoch);
                core.region_heartbeat(region, req.leader, req.term, w)?;
                if core.region_by_id(region_id).map(|i| i.region.region_epoch) != Some(epoch) {
                    // A stale report: its figures describe another range.
                    return Ok((None, None, None));
                }
                let stats = req.stats_known.then_some(RegionStats {
                    size_bytes: req.approximate_size_bytes,
                    keys: req.approximate_keys,
                    pending_peers: req.pending_peers.len(),
                });
                core.region_stats(region_id, stats, now);
                // Operators first; no merge while one moves the region.
                match core.operator_step(region_id, now, w) {
                    Some(Step::ChangePeer { kind, peer }) => {
                        let order = ChangePeerOrder {
                            kind: kind as i32,
                            peer: Some(peer),
                        };
                        return Ok((None, Some(order), None));
                    }
                    Some(Step::TransferLeader { to }) => {
                        let order = TransferLeaderOrder { to: Some(to) };
                        return Ok((None, None, Some(order)));
                    }
                    None => {}
                }
                let merge = core.merge_order(region_id, now).map(|target| MergeOrder {
                    target: Some(target),
                });
                Ok((merge, None, None))
            });
        Ok(Response::new(RegionHeartbeatResponse {
            header,
            merge,
            change_peer,
            transfer_leader,
        }))
    }

    async fn create_keyspace(
        &self,
        request: Request<CreateKeyspaceRequest>,
    ) -> Result<Response<KeyspaceResponse>, Status> {
        let req = request.into_inner();
        let (header, keyspace) = self.run(req.header, |core, w, _| {
            core.create_keyspace(&req.name, req.mode, w).map(Some)
        });
        Ok(Response::new(KeyspaceResponse { header, keyspace }))
    }

    async fn get_keyspace(
        &self,
        request: Request<GetKeyspaceRequest>,
    ) -> Result<Response<KeyspaceResponse>, Status> {
        let req = request.into_inner();
        let (header, keyspace) = self.run(req.header, |core, _, _| {
            core.keyspace(&req.name).map(|k| Some(k.clone()))
        });
        Ok(Response::new(KeyspaceResponse { header, keyspace }))
    }

    async fn ask_split(
        &self,
        request: Request<AskSplitRequest>,
    ) -> Result<Response<AskSplitResponse>, Status> {
        let req = request.into_inner();
        let (header, (new_region_id, new_peer_ids)) = self.run(req.header, |core, w, _| {
            let region = req.region.ok_or_else(|| {
                PlacementError::InvalidArgument("ask split without a region".into())
            })?;
            core.ask_split(&region, w)
        });
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
        let (header, ()) = self.run(req.header, |core, w, _| {
            let (Some(left), Some(right)) = (req.left, req.right) else {
                return Err(PlacementError::InvalidArgument(
                    "split report needs both regions".into(),
                ));
            };
            core.report_split(left, right, None, 0, w)
        });
        Ok(Response::new(ReportSplitResponse { header }))
    }

    async fn get_region(
        &self,
        request: Request<GetRegionRequest>,
    ) -> Result<Response<GetRegionResponse>, Status> {
        let req = request.into_inner();
        let (header, info) = self.run(req.header, |core, _, _| {
            if !core.is_bootstrapped() {
                return Err(PlacementError::NotBootstrapped {
                    registered: core.store_count(),
                    replicas: core.replicas(),
                });
            }
            Ok(core.region_by_key(&req.region_key).cloned())
        });
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
        let (header, info) = self.run(req.header, |core, _, _| {
            core.region_by_id(req.region_id).cloned().map(Some).ok_or(
                PlacementError::RegionNotFound {
                    region_id: req.region_id,
                },
            )
        });
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
        let (header, regions) = self.run(req.header, |core, _, _| {
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
                })
                .collect())
        });
        Ok(Response::new(ScanRegionsResponse { header, regions }))
    }

    async fn decommission_store(
        &self,
        request: Request<DecommissionStoreRequest>,
    ) -> Result<Response<DecommissionStoreResponse>, Status> {
        let req = request.into_inner();
        let (header, store) = self.run(req.header, |core, w, _| {
            core.decommission_store(req.store_id, w).map(Some)
        });
        Ok(Response::new(DecommissionStoreResponse { header, store }))
    }

    async fn get_operators(
        &self,
        request: Request<GetOperatorsRequest>,
    ) -> Result<Response<GetOperatorsResponse>, Status> {
        let (header, operators) = self.run(request.into_inner().header, |core, _, _| {
            Ok(core.operator_infos())
        });
        Ok(Response::new(GetOperatorsResponse { header, operators }))
    }

    async fn cancel_operator(
        &self,
        request: Request<CancelOperatorRequest>,
    ) -> Result<Response<CancelOperatorResponse>, Status> {
        let req = request.into_inner();
        let (header, ()) = self.run(req.header, |core, _, _| core.cancel_operator(req.region_id));
        Ok(Response::new(CancelOperatorResponse { header }))
    }

    async fn add_operator(
        &self,
        request: Request<AddOperatorRequest>,
    ) -> Result<Response<AddOperatorResponse>, Status> {
        let req = request.into_inner();
        let (header, operator) = self.run(req.header, |core, w, now| {
            core.add_operator(
                req.region_id,
                &req.kind,
                req.from_store,
                req.to_store,
                now,
                w,
            )
            .map(Some)
        });
        Ok(Response::new(AddOperatorResponse { header, operator }))
    }

    async fn get_schedule_config(
        &self,
        request: Request<GetScheduleConfigRequest>,
    ) -> Result<Response<ScheduleConfigResponse>, Status> {
        let (header, config) = self.run(request.into_inner().header, |core, _, _| {
            Ok(Some(core.schedule_config()))
        });
        Ok(Response::new(ScheduleConfigResponse { header, config }))
    }

    async fn set_schedule_config(
        &self,
        request: Request<SetScheduleConfigRequest>,
    ) -> Result<Response<ScheduleConfigResponse>, Status> {
        let req = request.into_inner();
        let (header, config) = self.run(req.header, |core, w, _| {
            core.set_schedule_config(&req.key, &req.value, w).map(Some)
        });
        Ok(Response::new(ScheduleConfigResponse { header, config }))
    }

    async fn get_gc_safe_point(
        &self,
        request: Request<GetGcSafePointRequest>,
    ) -> Result<Response<GetGcSafePointResponse>, Status> {
        let (header, safe_point) = self.run(request.into_inner().header, |core, w, now| {
            Ok(core.gc_safe_point(now, w))
        });
        Ok(Response::new(GetGcSafePointResponse { header, safe_point }))
    }

    async fn update_gc_safe_point(
        &self,
        request: Request<UpdateGcSafePointRequest>,
    ) -> Result<Response<UpdateGcSafePointResponse>, Status> {
        let req = request.into_inner();
        let (header, new_safe_point) = self.run(req.header, |core, w, now| {
            core.set_gc_safe_point(req.safe_point, now, w)
        });
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
        let (header, gc_safe_point) = self.run(req.header, |core, _, now| {
            core.update_service_gc_safe_point(&req.service_id, req.safe_point, req.ttl_ms, now)
        });
        Ok(Response::new(UpdateServiceGcSafePointResponse {
            header,
            gc_safe_point,
        }))
    }
}
