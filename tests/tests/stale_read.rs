//! Stale reads on an in-process cluster: snapshots at a past timestamp served by followers from
//! their own state once their safe timestamp has passed it — exactly the data committed at or
//! before the timestamp, even with no quorum left; a transaction in flight holds the safe
//! timestamp below its start; a replica that is not ready answers `DataIsNotReady` and the SDK
//! reads at the leader instead.

use ringkv_client::{ClientError, TransactionClient};
use ringkv_proto::errorpb::region_error::Kind;
use ringkv_proto::kvrpcpb::{Context, KvGetRequest};
use ringkv_tests::cluster::{ClusterBuilder, TestCluster};
use ringkv_tests::txn_rpc::{commit_key, encoded, prewrite_and_die};
use ringkv_tests::{debug, wait_until};
use std::time::Duration;

const KEYS: usize = 8;

fn key(i: usize) -> Vec<u8> {
    format!("k{i}").into_bytes()
}

/// The lowest safe timestamp of any replica of any region on the running nodes, if every
/// running node answers.
fn lowest_safe_ts(cluster: &TestCluster) -> Option<u64> {
    let mut lowest = u64::MAX;
    for i in (0..cluster.node_count()).filter(|&i| cluster.is_running(i)) {
        let regions = cluster.rt.block_on(debug::regions(&cluster.node_addr(i)))?;
        for r in regions {
            lowest = lowest.min(r.safe_ts);
        }
    }
    Some(lowest)
}

/// Reads every key and scans them all in a stale snapshot at `ts`.
async fn snapshot_at(
    client: &TransactionClient,
    ts: u64,
) -> (Vec<(Vec<u8>, Vec<u8>)>, Vec<(Vec<u8>, Vec<u8>)>) {
    let mut snap = client
        .stale_snapshot_at(ts)
        .await
        .expect("a stale snapshot");
    assert!(snap.is_stale());
    let got = snap
        .batch_get((0..KEYS).map(key).collect())
        .await
        .expect("stale batch get");
    let scanned = snap.scan("k", "l", 100).await.expect("stale scan");
    (got, scanned)
}

/// What a snapshot must hold after round `round` (None: before the first).
fn expected(round: Option<usize>) -> Vec<(Vec<u8>, Vec<u8>)> {
    match round {
        None => Vec::new(),
        Some(r) => (0..KEYS)
            .map(|i| (key(i), format!("r{r}").into_bytes()))
            .collect(),
    }
}

async fn check_every_snapshot(client: &TransactionClient, commits: &[u64]) {
    for (r, &commit_ts) in commits.iter().enumerate() {
        let (got, scanned) = snapshot_at(client, commit_ts).await;
        assert_eq!(got, expected(Some(r)), "batch get at round {r}'s commit");
        assert_eq!(scanned, expected(Some(r)), "scan at round {r}'s commit");
        let (got, scanned) = snapshot_at(client, commit_ts - 1).await;
        let before = r.checked_sub(1);
        assert_eq!(got, expected(before), "batch get just before round {r}");
        assert_eq!(scanned, expected(before), "scan just before round {r}");
    }
}

#[test]
fn followers_serve_stale_snapshots_exactly_as_of_their_timestamp_even_without_a_quorum() {
    let mut cluster = ClusterBuilder::default().start();
    cluster
        .rt
        .block_on(cluster.client().split_region(encoded(b"k4")))
        .expect("split");
    let client = cluster.txn_client();
    let commits: Vec<u64> = cluster.rt.block_on(async {
        let mut commits = Vec::new();
        for r in 0..4 {
            let mut t = client.begin().await.unwrap();
            for i in 0..KEYS {
                t.put(key(i), format!("r{r}")).unwrap();
            }
            commits.push(t.commit().await.unwrap());
        }
        commits
    });
    let last = *commits.last().unwrap();
    wait_until(
        "every replica's safe timestamp to pass the last commit",
        Duration::from_secs(30),
        || lowest_safe_ts(&cluster).filter(|&ts| ts >= last),
    );
    cluster.rt.block_on(check_every_snapshot(&client, &commits));

    // Two of three nodes down (every leader among them or not): no quorum, so no leader and
    // no linearizable read anywhere; the survivor still serves every snapshot it is safe for.
    cluster.stop_node(0);
    cluster.stop_node(1);
    cluster.rt.block_on(check_every_snapshot(&client, &commits));

    // A write cannot get through without a quorum, so the data really is frozen. The survivor
    // may have led a region when the others stopped, and may still claim timestamps while its
    // lease runs (rightly: nothing can commit without a quorum); once the lease is over it
    // claims nothing more. Then a snapshot above its safe timestamp is not served by it, and
    // the leader it falls back to is gone — the read fails rather than answer from a state
    // that may be out of date.
    std::thread::sleep(Duration::from_secs(2));
    let quick = cluster.txn_client_with(ringkv_client::TxnConfig {
        timeout: Duration::from_secs(2),
        attempt_timeout: Duration::from_millis(500),
        ..Default::default()
    });
    let now = cluster.rt.block_on(quick.current_ts()).unwrap();
    let safe = lowest_safe_ts(&cluster).unwrap();
    assert!(safe < now, "the survivor cannot be safe for the present");
    let outcome = cluster.rt.block_on(async {
        let mut snap = quick.stale_snapshot_at(now).await.unwrap();
        snap.get(key(0)).await
    });
    assert!(
        matches!(outcome, Err(ClientError::Timeout { .. })),
        "{outcome:?}"
    );
}

#[test]
fn a_transaction_in_flight_holds_the_safe_timestamp_below_its_start_and_readers_fall_back_to_the_leader(
) {
    let cluster = ClusterBuilder::default().start();
    let client = cluster.txn_client();
    let pd = cluster.pd();
    let start = cluster.rt.block_on(async {
        let mut t = client.begin().await.unwrap();
        t.put("k", "old").unwrap();
        t.commit().await.unwrap();
        let start = client.current_ts().await.unwrap();
        // A client that prewrote and went quiet (its lock lives a minute).
        prewrite_and_die(&pd, &[(b"k", b"new")], b"k", start, 60_000).await;
        // Later commits elsewhere do not move the safe timestamp past the lock.
        let mut t = client.begin().await.unwrap();
        t.put("other", "x").unwrap();
        t.commit().await.unwrap();
        start
    });
    wait_until(
        "every replica's safe timestamp to stop just below the lock",
        Duration::from_secs(30),
        || lowest_safe_ts(&cluster).filter(|&ts| ts == start - 1),
    );
    std::thread::sleep(Duration::from_millis(500));
    let region = cluster.rt.block_on(pd.get_region(&encoded(b"k"))).unwrap();
    let highest = (0..3)
        .filter_map(|i| cluster.region_info(i, region.region.id))
        .map(|r| r.safe_ts)
        .max()
        .unwrap();
    assert_eq!(
        highest,
        start - 1,
        "no replica's safe timestamp passes a live lock"
    );

    // A follower asked for a stale read above its safe timestamp says it is not ready.
    let leader = region.leader.expect("a leader").store_id;
    let follower = (0..3).find(|&i| cluster.store_id(i) != leader).unwrap();
    let now = cluster.rt.block_on(client.current_ts()).unwrap();
    let answer = cluster.rt.block_on(async {
        debug::kv_client(&cluster.node_addr(follower))
            .await
            .kv_get(KvGetRequest {
                context: Some(Context {
                    region_id: region.region.id,
                    region_epoch: region.region.region_epoch,
                    replica_read: false,
                    stale_read: true,
                    ..Default::default()
                }),
                key: encoded(b"k"),
                version: now,
                resolved_locks: vec![],
            })
            .await
            .unwrap()
            .into_inner()
    });
    match answer.region_error.and_then(|e| e.kind) {
        Some(Kind::DataIsNotReady(e)) => assert_eq!(e.safe_ts, start - 1),
        other => panic!("expected DataIsNotReady, got {other:?}"),
    }

    // The SDK reads at the leader instead: the live lock is pushed past the read, which sees
    // the old value; below the lock a follower serves the same snapshot by itself.
    cluster.rt.block_on(async {
        let mut snap = client.stale_snapshot_at(now).await.unwrap();
        assert_eq!(snap.get("k").await.unwrap(), Some(b"old".to_vec()));
        let mut snap = client.stale_snapshot_at(start - 1).await.unwrap();
        assert_eq!(snap.get("k").await.unwrap(), Some(b"old".to_vec()));
        assert!(snap.put("k", "x").is_err(), "a stale snapshot is read-only");
    });

    // Once the transaction commits, the safe timestamp moves on past it.
    let commit_ts = cluster.rt.block_on(client.current_ts()).unwrap();
    cluster.rt.block_on(commit_key(&pd, b"k", start, commit_ts));
    wait_until(
        "every replica's safe timestamp to pass the commit",
        Duration::from_secs(30),
        || lowest_safe_ts(&cluster).filter(|&ts| ts >= commit_ts),
    );
    cluster.rt.block_on(async {
        let mut snap = client.stale_snapshot_at(commit_ts).await.unwrap();
        assert_eq!(snap.get("k").await.unwrap(), Some(b"new".to_vec()));
        let mut snap = client.stale_snapshot_at(commit_ts - 1).await.unwrap();
        assert_eq!(snap.get("k").await.unwrap(), Some(b"old".to_vec()));
    });
}

#[test]
fn a_stale_snapshot_refuses_a_timestamp_in_the_future() {
    let cluster = ClusterBuilder::default().start();
    let client = cluster.txn_client();
    cluster.rt.block_on(async {
        let now = client.current_ts().await.unwrap();
        let future = now + (10_000 << 18);
        assert!(matches!(
            client.stale_snapshot_at(future).await,
            Err(ClientError::InvalidArgument(_))
        ));
        assert!(matches!(
            client.stale_snapshot_at(0).await,
            Err(ClientError::InvalidArgument(_))
        ));
        assert!(client
            .stale_snapshot(Duration::from_millis(1500))
            .await
            .unwrap()
            .is_stale());
    });
}
