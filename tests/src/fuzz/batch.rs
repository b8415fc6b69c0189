//! One batch of requests of every type.

use super::{channel, Call, Gen};
use futures::future::BoxFuture;
use protobuf::Message as _;
use raft::eraftpb;
use rand::Rng;
use ringkv_proto::kvrpcpb::kv_client::KvClient;
use ringkv_proto::kvrpcpb::*;
use ringkv_proto::metapb::Store;
use ringkv_proto::pdpb::placement_client::PlacementClient;
use ringkv_proto::pdpb::placement_member_client::PlacementMemberClient;
use ringkv_proto::pdpb::*;
use ringkv_proto::raftpb::debug_client::DebugClient;
use ringkv_proto::raftpb::raft_client::RaftClient;
use ringkv_proto::raftpb::{self, RaftCmdRequest, RaftMessageBatch, SnapshotChunk};
use ringkv_proto::Message as _;
use std::collections::HashMap;
use tonic::transport::Channel;

/// Pushes one request of kind `$kind` to `$calls`: `$client` over `$chan`, method `$method`.
macro_rules! push {
    ($calls:expr, $kind:literal, $client:ident, $chan:expr, $method:ident, $req:expr) => {{
        let mut c = $client::new($chan.clone())
            .max_decoding_message_size(ringkv_proto::limits::GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(ringkv_proto::limits::GRPC_MESSAGE_BYTES_MAX);
        let req = $req;
        $calls.push((
            $kind,
            Box::pin(async move { c.$method(req).await.map(|_| None) }) as BoxFuture<'static, _>,
        ));
    }};
}

/// Like `push!` for a placement call, whose errors travel in the response header: the
/// outcome names the header's error type.
macro_rules! push_pd {
    ($calls:expr, $kind:literal, $chan:expr, $method:ident, $req:expr) => {{
        let mut c = PlacementClient::new($chan.clone())
            .max_decoding_message_size(ringkv_proto::limits::GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(ringkv_proto::limits::GRPC_MESSAGE_BYTES_MAX);
        let req = $req;
        $calls.push((
            $kind,
            Box::pin(async move {
                let r = c.$method(req).await?.into_inner();
                Ok(r.header.and_then(|h| h.error).map(|e| e.r#type))
            }) as BoxFuture<'static, _>,
        ));
    }};
}

/// One batch: `per_kind` requests of every kind, in a seeded order.
pub fn batch(g: &mut Gen, per_kind: usize) -> Vec<Call> {
    let nodes: Vec<(Channel, u64)> = g
        .world
        .stores
        .iter()
        .map(|(a, s)| (channel(a), *s))
        .collect();
    let members: Vec<Channel> = g.world.members.iter().map(|m| channel(&m.2)).collect();
    let leader = g.world.placement_leader.as_deref().map(channel);
    let node_channels: HashMap<String, Channel> = g
        .world
        .stores
        .iter()
        .map(|(a, _)| (a.clone(), channel(a)))
        .collect();
    let mut calls: Vec<Call> = Vec::new();
    for _ in 0..per_kind {
        let (node, store_id) = g.pick(&nodes);
        let pd = match (&leader, g.chance(75)) {
            (Some(l), true) => l.clone(),
            _ => g.pick(&members),
        };
        let member = g.pick(&members);

        // Kv: raw.
        push!(
            calls,
            "Kv/RawGet",
            KvClient,
            g.kv_node(&node_channels),
            raw_get,
            RawGetRequest {
                context: g.context(true),
                key: g.read_key(),
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/RawBatchGet",
            KvClient,
            g.kv_node(&node_channels),
            raw_batch_get,
            RawBatchGetRequest {
                context: g.context(true),
                keys: g.keys(false),
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/RawPut",
            KvClient,
            g.kv_node(&node_channels),
            raw_put,
            RawPutRequest {
                context: g.context(true),
                key: g.write_key(),
                value: g.bytes(),
            }
        );
        g.begin();
        let keys = g.keys(true);
        let many = keys.len() > 100;
        let pairs = keys
            .into_iter()
            .map(|key| KvPair {
                key,
                // A batch too long to take stays small in bytes.
                value: if many { Vec::new() } else { g.bytes() },
            })
            .collect();
        push!(
            calls,
            "Kv/RawBatchPut",
            KvClient,
            g.kv_node(&node_channels),
            raw_batch_put,
            RawBatchPutRequest {
                context: g.context(true),
                pairs,
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/RawDelete",
            KvClient,
            g.kv_node(&node_channels),
            raw_delete,
            RawDeleteRequest {
                context: g.context(true),
                key: g.write_key(),
            }
        );
        g.begin();
        let keyspace = g.keyspace();
        let (start_key, end_key) = g.delete_range(&keyspace);
        push!(
            calls,
            "Kv/RawDeleteRange",
            KvClient,
            g.kv_node(&node_channels),
            raw_delete_range,
            RawDeleteRangeRequest {
                context: g.context(true),
                keyspace,
                start_key,
                end_key,
            }
        );
        g.begin();
        let expect_exists = g.chance(50);
        push!(
            calls,
            "Kv/RawCompareAndSwap",
            KvClient,
            g.kv_node(&node_channels),
            raw_compare_and_swap,
            RawCompareAndSwapRequest {
                context: g.context(true),
                key: g.write_key(),
                expect_exists,
                expected_value: if expect_exists || g.wild() {
                    g.bytes()
                } else {
                    Vec::new()
                },
                value: g.bytes(),
                delete: g.chance(20),
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/RawScan",
            KvClient,
            g.kv_node(&node_channels),
            raw_scan,
            RawScanRequest {
                context: g.context(true),
                keyspace: g.keyspace(),
                start_key: g.bytes(),
                end_key: g.bytes(),
                limit: g.u32(),
                key_only: g.chance(50),
            }
        );
        // Kv: admin.
        g.begin();
        push!(
            calls,
            "Kv/SplitRegion",
            KvClient,
            g.kv_node(&node_channels),
            split_region,
            SplitRegionRequest {
                context: g.context(true),
                split_key: if g.chance(50) {
                    g.write_key()
                } else {
                    g.bytes()
                },
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/MergeRegion",
            KvClient,
            g.kv_node(&node_channels),
            merge_region,
            MergeRegionRequest {
                source_region_id: g.u64(),
                source_epoch: g.epoch(),
                target_region_id: g.u64(),
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/ChangePeer",
            KvClient,
            g.kv_node(&node_channels),
            change_peer,
            ChangePeerRegionRequest {
                context: g.context(false),
                kind: g.enum_value(),
                peer: Some(g.peer()),
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/TransferLeader",
            KvClient,
            g.kv_node(&node_channels),
            transfer_leader,
            TransferLeaderRequest {
                context: g.context(true),
                to: Some(g.peer()),
            }
        );
        // Kv: transactional.
        g.begin();
        push!(
            calls,
            "Kv/KvGet",
            KvClient,
            g.kv_node(&node_channels),
            kv_get,
            KvGetRequest {
                context: g.context(true),
                key: g.read_key(),
                version: g.ts(),
                resolved_locks: (0..g.rng.gen_range(0..3)).map(|_| g.ts()).collect(),
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/KvBatchGet",
            KvClient,
            g.kv_node(&node_channels),
            kv_batch_get,
            KvBatchGetRequest {
                context: g.context(true),
                keys: g.keys(false),
                version: g.ts(),
                resolved_locks: if g.chance(5) {
                    vec![1; 5_000]
                } else {
                    vec![g.ts()]
                },
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/KvScan",
            KvClient,
            g.kv_node(&node_channels),
            kv_scan,
            KvScanRequest {
                context: g.context(true),
                keyspace: g.keyspace(),
                start_key: g.bytes(),
                end_key: g.bytes(),
                limit: g.u32(),
                version: g.ts(),
                key_only: g.chance(50),
                resolved_locks: vec![],
            }
        );
        g.begin();
        let keys = g.keys(true);
        let many = keys.len() > 100;
        let mutations = keys
            .into_iter()
            .map(|key| Mutation {
                op: g.enum_value(),
                key,
                value: if many { Vec::new() } else { g.bytes() },
            })
            .collect();
        push!(
            calls,
            "Kv/KvPrewrite",
            KvClient,
            g.kv_node(&node_channels),
            kv_prewrite,
            KvPrewriteRequest {
                context: g.context(true),
                mutations,
                primary_lock: g.write_key(),
                start_version: g.ts(),
                lock_ttl: g.ttl(),
                txn_size: g.u64(),
                try_one_pc: g.chance(20),
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/KvCommit",
            KvClient,
            g.kv_node(&node_channels),
            kv_commit,
            KvCommitRequest {
                context: g.context(true),
                start_version: g.ts(),
                keys: g.keys(false),
                commit_version: g.ts(),
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/KvBatchRollback",
            KvClient,
            g.kv_node(&node_channels),
            kv_batch_rollback,
            KvBatchRollbackRequest {
                context: g.context(true),
                start_version: g.ts(),
                keys: g.keys(false),
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/KvCheckTxnStatus",
            KvClient,
            g.kv_node(&node_channels),
            kv_check_txn_status,
            KvCheckTxnStatusRequest {
                context: g.context(true),
                primary_key: g.read_key(),
                lock_ts: g.ts(),
                caller_start_ts: g.ts(),
                current_ts: g.ts(),
                rollback_if_not_exist: g.chance(50),
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/KvResolveLock",
            KvClient,
            g.kv_node(&node_channels),
            kv_resolve_lock,
            KvResolveLockRequest {
                context: g.context(true),
                start_version: g.ts(),
                commit_version: g.ts(),
                keys: g.keys(false),
            }
        );
        g.begin();
        push!(
            calls,
            "Kv/KvTxnHeartBeat",
            KvClient,
            g.kv_node(&node_channels),
            kv_txn_heart_beat,
            KvTxnHeartBeatRequest {
                context: g.context(true),
                primary_lock: g.read_key(),
                start_version: g.ts(),
                advise_lock_ttl: g.ttl(),
            }
        );

        // Raft.
        g.begin();
        let messages = (0..g.rng.gen_range(1..4))
            .map(|_| g.node_raft_message(store_id))
            .collect();
        push!(
            calls,
            "Raft/Raft",
            RaftClient,
            node,
            raft,
            futures::stream::iter(vec![RaftMessageBatch { messages }])
        );
        g.begin();
        let chunks: Vec<SnapshotChunk> = if g.chance(50) {
            (0..g.rng.gen_range(0..3))
                .map(|_| SnapshotChunk {
                    data: g.bytes(),
                    message: if g.chance(30) { g.bytes() } else { Vec::new() },
                })
                .collect()
        } else {
            let mut m = g.node_raft_message(store_id);
            let mut inner = g.raft_message();
            inner.set_msg_type(eraftpb::MessageType::MsgSnapshot);
            m.message = inner.write_to_bytes().expect("encodes");
            // The message, then bytes that claim to be its file.
            let mut chunks = vec![SnapshotChunk {
                message: m.encode_to_vec(),
                data: Vec::new(),
            }];
            for _ in 0..g.rng.gen_range(0..3) {
                chunks.push(SnapshotChunk {
                    data: g.bytes(),
                    message: Vec::new(),
                });
            }
            chunks
        };
        push!(
            calls,
            "Raft/Snapshot",
            RaftClient,
            node,
            snapshot,
            futures::stream::iter(chunks)
        );
        g.begin();
        let source = match g.real_region() {
            Some(r) if g.chance(50) => r,
            _ => g.forged_region(),
        };
        let target = g.real_region().map_or_else(|| g.u64(), |r| r.id);
        let admin = raftpb::AdminRequest {
            cmd: Some(match g.rng.gen_range(0..4) {
                0 => raftpb::admin_request::Cmd::CompactLog(raftpb::CompactLogRequest {
                    compact_index: g.u64(),
                    compact_term: g.u64(),
                }),
                _ => raftpb::admin_request::Cmd::CommitMerge(raftpb::CommitMergeRequest {
                    source: Some(source),
                    commit: g.u64(),
                    commit_term: g.u64(),
                    source_merged_sources: vec![g.u64()],
                }),
            }),
        };
        push!(
            calls,
            "Raft/ProposeMerge",
            RaftClient,
            node,
            propose_merge,
            raftpb::ProposeMergeRequest {
                cmd: if g.chance(10) {
                    None
                } else {
                    Some(RaftCmdRequest {
                        region_id: if g.chance(70) { target } else { g.u64() },
                        region_epoch: g.epoch(),
                        requests: vec![],
                        admin: Some(admin),
                        ..Default::default()
                    })
                },
            }
        );

        // Debug.
        g.begin();
        push!(
            calls,
            "Debug/RegionInfo",
            DebugClient,
            node,
            region_info,
            raftpb::RegionInfoRequest { region_id: g.u64() }
        );
        g.begin();
        push!(
            calls,
            "Debug/LocalGet",
            DebugClient,
            node,
            local_get,
            raftpb::LocalGetRequest { key: g.read_key() }
        );
        g.begin();
        push!(
            calls,
            "Debug/StoreInfo",
            DebugClient,
            node,
            store_info,
            raftpb::StoreInfoRequest {}
        );
        g.begin();
        push!(
            calls,
            "Debug/SetNetFilter",
            DebugClient,
            node,
            set_net_filter,
            raftpb::SetNetFilterRequest {
                blocked_to: vec![g.u64()],
            }
        );

        // Placement.
        g.begin();
        push_pd!(
            calls,
            "Placement/GetMembers",
            pd,
            get_members,
            GetMembersRequest { header: g.header() }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/GetClusterInfo",
            pd,
            get_cluster_info,
            GetClusterInfoRequest { header: g.header() }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/AllocId",
            pd,
            alloc_id,
            AllocIdRequest {
                header: g.header(),
                count: g.u32(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/Tso",
            pd,
            tso,
            TsoRequest {
                header: g.header(),
                count: g.u32(),
            }
        );
        g.begin();
        let address = g.pick(&[
            String::new(),
            "127.0.0.1:1".into(),
            "host:0".into(),
            "no-port".into(),
            ":::".into(),
            "h".repeat(300) + ":1",
        ]);
        push_pd!(
            calls,
            "Placement/PutStore",
            pd,
            put_store,
            PutStoreRequest {
                header: g.header(),
                store: g.chance(90).then(|| Store {
                    // Never a real store's id: a forged registration of a real store is an
                    // authorised operation's business (issue 22).
                    id: if g.chance(20) {
                        0
                    } else {
                        g.rng.gen_range(1_000_000..u64::MAX)
                    },
                    address,
                    state: g.enum_value(),
                    labels: g.labels(),
                    version: g.string(),
                }),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/GetStore",
            pd,
            get_store,
            GetStoreRequest {
                header: g.header(),
                store_id: g.u64(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/GetAllStores",
            pd,
            get_all_stores,
            GetAllStoresRequest { header: g.header() }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/SetStoreLabels",
            pd,
            set_store_labels,
            SetStoreLabelsRequest {
                header: g.header(),
                store_id: g.u64(),
                labels: g.labels(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/StoreHeartbeat",
            pd,
            store_heartbeat,
            StoreHeartbeatRequest {
                header: g.header(),
                stats: g.chance(90).then(|| StoreStats {
                    store_id: g.u64(),
                    capacity_bytes: g.u64(),
                    available_bytes: g.u64(),
                    region_count: g.u32(),
                    leader_count: g.u32(),
                    start_time_s: g.u64(),
                    read_bytes_per_sec: g.u64(),
                    read_keys_per_sec: g.u64(),
                    written_bytes_per_sec: g.u64(),
                    written_keys_per_sec: g.u64(),
                }),
            }
        );
        g.begin();
        let (region, leader) = match g.real_region() {
            // A real region as it is, with a leader that may or may not be one of its peers.
            Some(r) if g.chance(40) => {
                let leader = if g.chance(50) {
                    r.peers.first().copied()
                } else {
                    Some(g.peer())
                };
                (Some(r), leader)
            }
            _ => (g.chance(90).then(|| g.forged_region()), Some(g.peer())),
        };
        push_pd!(
            calls,
            "Placement/RegionHeartbeat",
            pd,
            region_heartbeat,
            RegionHeartbeatRequest {
                header: g.header(),
                region,
                leader,
                term: g.u64(),
                approximate_keys: g.u64(),
                approximate_size_bytes: g.u64(),
                stats_known: g.chance(50),
                pending_peers: vec![g.peer()],
                flow: Some(RegionFlow {
                    read_bytes: g.u64(),
                    read_keys: g.u64(),
                    written_bytes: g.u64(),
                    written_keys: g.u64(),
                    interval_ms: g.u64(),
                }),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/CreateKeyspace",
            pd,
            create_keyspace,
            CreateKeyspaceRequest {
                header: g.header(),
                name: g.string(),
                mode: g.enum_value(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/GetKeyspace",
            pd,
            get_keyspace,
            GetKeyspaceRequest {
                header: g.header(),
                name: g.string(),
            }
        );
        g.begin();
        let region = match g.real_region() {
            Some(r) if g.chance(50) => Some(r),
            _ => g.chance(90).then(|| g.forged_region()),
        };
        push_pd!(
            calls,
            "Placement/AskSplit",
            pd,
            ask_split,
            AskSplitRequest {
                header: g.header(),
                region,
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/ReportSplit",
            pd,
            report_split,
            ReportSplitRequest {
                header: g.header(),
                left: g.chance(90).then(|| g.forged_region()),
                right: g.chance(90).then(|| g.forged_region()),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/GetRegion",
            pd,
            get_region,
            GetRegionRequest {
                header: g.header(),
                region_key: g.bytes(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/GetRegionById",
            pd,
            get_region_by_id,
            GetRegionByIdRequest {
                header: g.header(),
                region_id: g.u64(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/ScanRegions",
            pd,
            scan_regions,
            ScanRegionsRequest {
                header: g.header(),
                start_key: g.bytes(),
                end_key: g.bytes(),
                limit: g.u32(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/DecommissionStore",
            pd,
            decommission_store,
            DecommissionStoreRequest {
                header: g.header(),
                store_id: g.u64(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/GetGcSafePoint",
            pd,
            get_gc_safe_point,
            GetGcSafePointRequest { header: g.header() }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/UpdateGcSafePoint",
            pd,
            update_gc_safe_point,
            UpdateGcSafePointRequest {
                header: g.header(),
                safe_point: g.ts(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/UpdateServiceGcSafePoint",
            pd,
            update_service_gc_safe_point,
            UpdateServiceGcSafePointRequest {
                header: g.header(),
                service_id: g.string(),
                ttl_ms: g.i64(),
                safe_point: g.ts(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/GetOperators",
            pd,
            get_operators,
            GetOperatorsRequest { header: g.header() }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/CancelOperator",
            pd,
            cancel_operator,
            CancelOperatorRequest {
                header: g.header(),
                region_id: g.u64(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/AddOperator",
            pd,
            add_operator,
            AddOperatorRequest {
                header: g.header(),
                region_id: g.u64(),
                kind: g
                    .pick(&[
                        "transfer-leader",
                        "move-peer",
                        "split",
                        "merge",
                        "",
                        "explode"
                    ])
                    .into(),
                from_store: g.u64(),
                to_store: g.u64(),
                split_key: g.bytes(),
                target_region_id: g.u64(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/GetScheduleConfig",
            pd,
            get_schedule_config,
            GetScheduleConfigRequest { header: g.header() }
        );
        g.begin();
        let key = g.pick(&[
            "balance_leader",
            "leader_schedule_limit",
            "balance_tolerance_ratio",
            "max_store_down_time_ms",
            "operator_timeout_ms",
            "hot_region_min_bytes_per_sec",
            "",
            "no_such_setting",
        ]);
        let value = g.pick(&[
            "0",
            "1",
            "-1",
            "true",
            "",
            "1e309",
            "NaN",
            "inf",
            "99999999999999999999",
            "0.5",
            "1025",
        ]);
        push_pd!(
            calls,
            "Placement/SetScheduleConfig",
            pd,
            set_schedule_config,
            SetScheduleConfigRequest {
                header: g.header(),
                key: key.into(),
                value: value.into(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/TransferPlacementLeader",
            pd,
            transfer_placement_leader,
            TransferPlacementLeaderRequest {
                header: g.header(),
                to_name: g.string(),
            }
        );
        g.begin();
        push_pd!(
            calls,
            "Placement/EvictLeader",
            pd,
            evict_leader,
            EvictLeaderRequest {
                header: g.header(),
                store_id: g.u64(),
                evict: false,
            }
        );

        // PlacementMember.
        g.begin();
        let messages = (0..g.rng.gen_range(0..3))
            .map(|_| g.raft_message_bytes())
            .collect();
        push!(
            calls,
            "PlacementMember/Raft",
            PlacementMemberClient,
            member,
            raft,
            MemberRaftRequest {
                from_member_id: g.u64(),
                to_member_id: g.u64(),
                messages,
            }
        );
        g.begin();
        push!(
            calls,
            "PlacementMember/SetMemberNetFilter",
            PlacementMemberClient,
            member,
            set_member_net_filter,
            SetMemberNetFilterRequest {
                blocked_member_ids: vec![g.u64()],
            }
        );
    }
    // Interleave the kinds so one slow kind does not hold a batch's tail.
    let mut order: Vec<usize> = (0..calls.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, g.rng.gen_range(0..=i));
    }
    let mut slots: Vec<Option<Call>> = calls.into_iter().map(Some).collect();
    order
        .into_iter()
        .map(|i| slots[i].take().expect("each once"))
        .collect()
}
