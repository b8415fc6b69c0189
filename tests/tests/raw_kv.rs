//! The raw KV API end to end on an in-process 3-node cluster: every operation, and every kind of
//! bad input answered with a clear error and nothing half-written.

use ringkv_client::ClientError;
use ringkv_proto::keys::{self, default_keyspace};
use ringkv_proto::kvrpcpb::*;
use ringkv_proto::limits::*;
use ringkv_tests::cluster::{ClusterBuilder, TestCluster};
use std::time::Duration;

fn cluster() -> TestCluster {
    ClusterBuilder::default().start()
}

#[test]
fn every_raw_operation_works_and_replicates() {
    let c = cluster();
    let client = c.client();
    c.rt.block_on(async {
        client.put(b"k1".to_vec(), b"v1".to_vec()).await.unwrap();
        assert_eq!(
            client.get(b"k1".to_vec()).await.unwrap(),
            Some(b"v1".to_vec())
        );
        assert_eq!(client.get(b"missing".to_vec()).await.unwrap(), None);
        client.put(b"k1".to_vec(), b"v1b".to_vec()).await.unwrap();
        assert_eq!(
            client.get(b"k1".to_vec()).await.unwrap(),
            Some(b"v1b".to_vec())
        );
        client.delete(b"k1".to_vec()).await.unwrap();
        assert_eq!(client.get(b"k1".to_vec()).await.unwrap(), None);
        // Deleting what is not there is fine.
        client.delete(b"k1".to_vec()).await.unwrap();

        let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..100u32)
            .map(|i| {
                (
                    format!("key{i:03}").into_bytes(),
                    format!("value{i}").into_bytes(),
                )
            })
            .collect();
        client.batch_put(pairs.clone()).await.unwrap();
        let got = client
            .batch_get(vec![
                b"key005".to_vec(),
                b"nope".to_vec(),
                b"key099".to_vec(),
            ])
            .await
            .unwrap();
        assert_eq!(
            got,
            vec![
                (b"key005".to_vec(), b"value5".to_vec()),
                (b"key099".to_vec(), b"value99".to_vec())
            ]
        );

        // Scans come back in user-key order although storage is in hash order.
        let scanned = client
            .scan(b"key010".to_vec(), b"key020".to_vec(), 100)
            .await
            .unwrap();
        let expect: Vec<(Vec<u8>, Vec<u8>)> = pairs[10..20].to_vec();
        assert_eq!(scanned, expect);
        let limited = client
            .scan(b"key000".to_vec(), Vec::new(), 7)
            .await
            .unwrap();
        assert_eq!(limited, pairs[..7].to_vec());

        client
            .delete_range(b"key010".to_vec(), b"key090".to_vec())
            .await
            .unwrap();
        let left = client
            .scan(b"key".to_vec(), Vec::new(), 1000)
            .await
            .unwrap();
        let left_keys: Vec<Vec<u8>> = left.into_iter().map(|(k, _)| k).collect();
        let expect: Vec<Vec<u8>> = pairs[..10]
            .iter()
            .chain(&pairs[90..])
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(left_keys, expect);
    });
    // Every replica applied the writes.
    c.wait_replicated(b"key095", b"value95", Duration::from_secs(10));
    for i in 0..3 {
        assert_eq!(
            c.local_get(i, b"key050"),
            None,
            "node {i} applied the delete range"
        );
    }
}

fn expect_invalid<T: std::fmt::Debug>(r: Result<T, ClientError>, needle: &str) {
    match r {
        Err(ClientError::InvalidArgument(msg)) => {
            assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}")
        }
        other => panic!("expected InvalidArgument containing {needle:?}, got {other:?}"),
    }
}

#[test]
fn client_rejects_bad_input_before_sending() {
    let c = cluster();
    let client = c.client();
    c.rt.block_on(async {
        expect_invalid(client.put(Vec::new(), b"v".to_vec()).await, "key is empty");
        expect_invalid(client.get(Vec::new()).await, "key is empty");
        expect_invalid(
            client
                .put(vec![b'k'; KEY_BYTES_MAX + 1], b"v".to_vec())
                .await,
            "limit is 8192",
        );
        expect_invalid(
            client
                .put(b"k".to_vec(), vec![0; VALUE_BYTES_MAX + 1])
                .await,
            "value is",
        );
        expect_invalid(
            client.scan(b"z".to_vec(), b"a".to_vec(), 10).await,
            "inverted range",
        );
        expect_invalid(
            client.scan(b"a".to_vec(), b"z".to_vec(), 0).await,
            "scan limit 0",
        );
        expect_invalid(
            client
                .scan(b"a".to_vec(), b"z".to_vec(), SCAN_LIMIT_MAX + 1)
                .await,
            "scan limit",
        );
        expect_invalid(
            client.delete_range(b"z".to_vec(), b"a".to_vec()).await,
            "inverted range",
        );
        // A batch with one bad pair writes nothing.
        let batch = vec![
            (b"good".to_vec(), b"v".to_vec()),
            (Vec::new(), b"v".to_vec()),
        ];
        expect_invalid(client.batch_put(batch).await, "key is empty");
        assert_eq!(client.get(b"good".to_vec()).await.unwrap(), None);
        // Values at exactly the limits are fine.
        client
            .put(vec![b'k'; KEY_BYTES_MAX], vec![7; VALUE_BYTES_MAX])
            .await
            .unwrap();
        assert_eq!(
            client
                .get(vec![b'k'; KEY_BYTES_MAX])
                .await
                .unwrap()
                .map(|v| v.len()),
            Some(VALUE_BYTES_MAX)
        );
    });
}

/// The node checks everything itself too: a client that skips validation gets a clear status.
#[test]
fn node_rejects_bad_requests_with_clear_status() {
    let c = cluster();
    let leader = c.wait_for_leader(Duration::from_secs(10));
    let client = c.client();
    c.rt.block_on(async {
        let route = client
            .pd()
            .get_region(&keys::encode(&default_keyspace(), b"x"))
            .await
            .unwrap();
        let plain_ctx = Context {
            region_id: route.region.id,
            region_epoch: route.region.region_epoch,
            replica_read: false,
            stale_read: false,
            ..Default::default()
        };
        let ctx = Some(plain_ctx);
        let mut kv = ringkv_tests::debug::kv_client(&c.node_addr(leader)).await;
        let ks = Some(default_keyspace());
        let enc = |k: &[u8]| keys::encode(&default_keyspace(), k);

        let status = |r: Result<tonic::Response<_>, tonic::Status>, needle: &str| {
            let s = r
                .map(|_: tonic::Response<()>| ())
                .expect_err("must be refused");
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
            assert!(
                s.message().contains(needle),
                "message {:?} lacks {needle:?}",
                s.message()
            );
        };
        let unit = |r: Result<tonic::Response<RawPutResponse>, tonic::Status>| {
            r.map(|_| tonic::Response::new(()))
        };
        status(
            unit(
                kv.raw_put(RawPutRequest {
                    context: ctx,
                    key: enc(b""),
                    value: vec![],
                })
                .await,
            ),
            "key is empty",
        );
        status(
            unit(
                kv.raw_put(RawPutRequest {
                    context: ctx,
                    key: enc(&vec![1; KEY_BYTES_MAX + 1]),
                    value: vec![],
                })
                .await,
            ),
            "limit is 8192",
        );
        status(
            unit(
                kv.raw_put(RawPutRequest {
                    context: ctx,
                    key: enc(b"k"),
                    value: vec![0; VALUE_BYTES_MAX + 1],
                })
                .await,
            ),
            "value is",
        );
        status(
            unit(
                kv.raw_put(RawPutRequest {
                    context: None,
                    key: enc(b"k"),
                    value: vec![],
                })
                .await,
            ),
            "no context",
        );
        status(
            unit(
                kv.raw_put(RawPutRequest {
                    context: ctx,
                    key: b"garbage".to_vec(),
                    value: vec![],
                })
                .await,
            ),
            "malformed key",
        );
        // Write sessions: numbered from 1, within the window, an id no later than the clock.
        let now_ts = ringkv_proto::tso::from_physical_ms(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64,
        );
        for (session, needle) in [
            ((0, 1, 1), "session.id"),
            ((now_ts, 0, 0), "session.seq"),
            ((now_ts, 5, 6), "lowest_unanswered"),
            ((now_ts, 5000, 1), "ahead of session.lowest_unanswered"),
            (
                (
                    now_ts + ringkv_proto::tso::from_physical_ms(3_600_000),
                    1,
                    1,
                ),
                "ahead of this node's clock",
            ),
        ] {
            let mut with_session = plain_ctx;
            with_session.session = Some(WriteSession {
                id: session.0,
                seq: session.1,
                lowest_unanswered: session.2,
            });
            status(
                unit(
                    kv.raw_put(RawPutRequest {
                        context: Some(with_session),
                        key: enc(b"k"),
                        value: vec![],
                    })
                    .await,
                ),
                needle,
            );
        }
        let cas = |expect_exists, expected: &[u8], value: &[u8], delete| RawCompareAndSwapRequest {
            context: ctx,
            key: enc(b"k"),
            expect_exists,
            expected_value: expected.to_vec(),
            value: value.to_vec(),
            delete,
        };
        let s = kv
            .raw_compare_and_swap(cas(false, b"x", b"v", false))
            .await
            .expect_err("expected value without expect_exists");
        assert!(s.message().contains("expect_exists is false"), "{s:?}");
        let s = kv
            .raw_compare_and_swap(cas(true, b"x", b"v", true))
            .await
            .expect_err("a value to delete");
        assert!(s.message().contains("delete is true"), "{s:?}");
        let mut bad_hash = enc(b"k");
        bad_hash[6] ^= 0xff;
        status(
            unit(
                kv.raw_put(RawPutRequest {
                    context: ctx,
                    key: bad_hash,
                    value: vec![],
                })
                .await,
            ),
            "ring hash",
        );
        let scan = |start: &[u8], end: &[u8], limit| RawScanRequest {
            context: ctx,
            keyspace: ks,
            start_key: start.to_vec(),
            end_key: end.to_vec(),
            limit,
            key_only: false,
        };
        let s = kv
            .raw_scan(scan(b"z", b"a", 10))
            .await
            .expect_err("inverted");
        assert!(s.message().contains("inverted range"), "{s:?}");
        let s = kv.raw_scan(scan(b"a", b"z", 0)).await.expect_err("limit 0");
        assert!(s.message().contains("scan limit 0"), "{s:?}");
        let s = kv
            .raw_scan(scan(b"a", b"z", SCAN_LIMIT_MAX + 1))
            .await
            .expect_err("limit too big");
        assert!(s.message().contains("scan limit"), "{s:?}");
        let s = kv
            .raw_delete_range(RawDeleteRangeRequest {
                context: ctx,
                keyspace: ks,
                start_key: b"z".to_vec(),
                end_key: b"a".to_vec(),
            })
            .await
            .expect_err("inverted");
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        // A batch with one bad key is refused whole.
        let pairs = vec![
            KvPair {
                key: enc(b"fine"),
                value: b"v".to_vec(),
            },
            KvPair {
                key: enc(b""),
                value: vec![],
            },
        ];
        let s = kv
            .raw_batch_put(RawBatchPutRequest {
                context: ctx,
                pairs,
            })
            .await
            .expect_err("bad batch");
        assert!(s.message().contains("key is empty"), "{s:?}");
        assert_eq!(
            client.get(b"fine".to_vec()).await.unwrap(),
            None,
            "nothing of a refused batch is written"
        );

        // Unknown region and stale epoch: in-band region errors that say what happened.
        let unknown = Some(Context {
            region_id: 999_999,
            region_epoch: route.region.region_epoch,
            replica_read: false,
            stale_read: false,
            ..Default::default()
        });
        let r = kv
            .raw_put(RawPutRequest {
                context: unknown,
                key: enc(b"k"),
                value: vec![],
            })
            .await
            .unwrap()
            .into_inner();
        let e = r.region_error.expect("region error");
        assert!(
            matches!(
                e.kind,
                Some(ringkv_proto::errorpb::region_error::Kind::RegionNotFound(_))
            ),
            "{e:?}"
        );
        assert!(e.message.contains("999999"), "{}", e.message);
        let stale = Some(Context {
            region_id: route.region.id,
            region_epoch: Some(ringkv_proto::metapb::RegionEpoch {
                conf_ver: 1,
                version: 0,
            }),
            replica_read: false,
            stale_read: false,
            ..Default::default()
        });
        let r = kv
            .raw_get(RawGetRequest {
                context: stale,
                key: enc(b"k"),
            })
            .await
            .unwrap()
            .into_inner();
        let e = r.region_error.expect("region error");
        match e.kind {
            Some(ringkv_proto::errorpb::region_error::Kind::EpochNotMatch(m)) => {
                assert_eq!(m.current_regions.len(), 1)
            }
            other => panic!("expected EpochNotMatch, got {other:?}"),
        }
        // A follower names the leader.
        let follower = (0..3).find(|&i| i != leader).unwrap();
        let mut fkv = ringkv_tests::debug::kv_client(&c.node_addr(follower)).await;
        let r = fkv
            .raw_get(RawGetRequest {
                context: ctx,
                key: enc(b"k"),
            })
            .await
            .unwrap()
            .into_inner();
        match r.region_error.and_then(|e| e.kind) {
            Some(ringkv_proto::errorpb::region_error::Kind::NotLeader(nl)) => {
                assert_eq!(nl.leader.map(|l| l.store_id), Some(c.store_id(leader)));
            }
            other => panic!("expected NotLeader, got {other:?}"),
        }
    });
    // The node is still healthy after all of that.
    c.rt.block_on(async { client.put(b"after".to_vec(), b"ok".to_vec()).await.unwrap() });
}

/// Compare-and-swap through the SDK: put-if-absent, a swap, a mismatch that names what the key
/// holds, delete-if-equal; and concurrent increments of one counter that lose nothing and never
/// swap twice from one value.
#[test]
fn compare_and_swap_put_if_absent_and_delete_if_equal() {
    let c = cluster();
    let client = c.client();
    c.rt.block_on(async {
        let first = client.put_if_absent(b"cas", b"1".to_vec()).await.unwrap();
        assert!(first.swapped);
        let again = client.put_if_absent(b"cas", b"x".to_vec()).await.unwrap();
        assert_eq!((again.swapped, again.current), (false, Some(b"1".to_vec())));
        let swap = client
            .compare_and_swap(b"cas".to_vec(), Some(b"1".to_vec()), Some(b"2".to_vec()))
            .await
            .unwrap();
        assert!(swap.swapped && swap.current.is_none());
        let stale = client
            .compare_and_swap(b"cas".to_vec(), Some(b"1".to_vec()), Some(b"3".to_vec()))
            .await
            .unwrap();
        assert_eq!((stale.swapped, stale.current), (false, Some(b"2".to_vec())));
        let wrong = client.delete_if_equal(b"cas", b"1".to_vec()).await.unwrap();
        assert!(!wrong.swapped);
        let gone = client.delete_if_equal(b"cas", b"2".to_vec()).await.unwrap();
        assert!(gone.swapped);
        assert_eq!(client.get(b"cas".to_vec()).await.unwrap(), None);
        let absent = client
            .compare_and_swap(b"cas".to_vec(), Some(b"2".to_vec()), None)
            .await
            .unwrap();
        assert_eq!((absent.swapped, absent.current), (false, None));

        // Eight clients, 25 increments each, by read-compare-swap.
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    let mut from = Vec::new();
                    let mut seen: Option<u64> = None;
                    while from.len() < 25 {
                        let next = seen.map_or(1, |n| n + 1);
                        let outcome = client
                            .compare_and_swap(
                                b"counter".to_vec(),
                                seen.map(|n| n.to_string().into_bytes()),
                                Some(next.to_string().into_bytes()),
                            )
                            .await
                            .unwrap();
                        if outcome.swapped {
                            from.push(seen.unwrap_or(0));
                            seen = Some(next);
                        } else {
                            seen = outcome
                                .current
                                .map(|v| String::from_utf8(v).unwrap().parse().unwrap());
                        }
                    }
                    from
                })
            })
            .collect();
        let mut from = Vec::new();
        for t in tasks {
            from.extend(t.await.unwrap());
        }
        from.sort_unstable();
        assert_eq!(
            from,
            (0..200).collect::<Vec<u64>>(),
            "each value swapped from once"
        );
        assert_eq!(
            client.get(b"counter".to_vec()).await.unwrap(),
            Some(b"200".to_vec())
        );
    });
}
