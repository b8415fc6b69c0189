//! Percolator transactions on an in-process cluster: snapshot reads, atomic multi-region
//! commits, one-phase commits, conflicts, lock resolution after a client dies, GC, and a bank
//! workload under node restarts and leader partitions.

use ringkv_client::{ClientError, TxnConfig};
use ringkv_proto::kvrpcpb::kv_client::KvClient;
use ringkv_proto::kvrpcpb::*;
use ringkv_tests::bank;
use ringkv_tests::cluster::ClusterBuilder;
use ringkv_tests::cluster_checks::{self, presplit};
use ringkv_tests::txn_rpc::{commit_key, encoded, prewrite_and_die};
use ringkv_tests::wait_until;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn num(v: Option<Vec<u8>>) -> i64 {
    v.map(|v| String::from_utf8(v).unwrap().parse().unwrap())
        .unwrap_or(0)
}

#[test]
fn transactions_read_their_snapshot_and_commit_atomically_across_regions() {
    let cluster = ClusterBuilder::default().start();
    presplit(&cluster, &[b"m", b"t"]);
    let client = cluster.txn_client();
    cluster.rt.block_on(async {
        let before = client.begin().await.unwrap();
        let mut writer = client.begin().await.unwrap();
        for k in ["a", "m", "z", "q", "b"] {
            writer.put(k, format!("v-{k}")).unwrap();
        }
        // A transaction sees its own writes before commit.
        assert_eq!(writer.get("q").await.unwrap(), Some(b"v-q".to_vec()));
        let commit_ts = writer.commit().await.unwrap();
        assert!(commit_ts > writer.start_ts());

        let mut before = before;
        assert_eq!(
            before.get("a").await.unwrap(),
            None,
            "snapshot before the commit"
        );
        let mut after = client.begin().await.unwrap();
        let got = after
            .batch_get(
                ["a", "b", "m", "q", "z", "nope"]
                    .map(|k| k.as_bytes().to_vec())
                    .to_vec(),
            )
            .await
            .unwrap();
        assert_eq!(
            got.len(),
            5,
            "every key of the commit is visible at once: {got:?}"
        );
        let scanned = after.scan("", "", 100).await.unwrap();
        let keys: Vec<_> = scanned.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(
            keys,
            ["a", "b", "m", "q", "z"]
                .map(|k| k.as_bytes().to_vec())
                .to_vec()
        );
    });
}

#[test]
fn a_single_region_transaction_commits_in_one_phase_and_leaves_no_lock() {
    let cluster = ClusterBuilder::default().start();
    let client = cluster.txn_client();
    let commit_ts = cluster.rt.block_on(async {
        let mut txn = client.begin().await.unwrap();
        txn.put("one", "1").unwrap();
        txn.put("two", "2").unwrap();
        txn.commit().await.unwrap()
    });
    let leader = cluster.leader().expect("a leader");
    let kv = cluster.node_kv(leader);
    let reader = ringkv_txn::MvccReader::new(kv.as_ref());
    for k in [&b"one"[..], b"two"] {
        assert!(
            reader.load_lock(&encoded(k)).unwrap().is_none(),
            "no lock left"
        );
        let writes = reader.all_writes(&encoded(k)).unwrap();
        assert_eq!(writes.len(), 1);
        assert_eq!(
            writes[0].0, commit_ts,
            "committed at the returned commit_ts"
        );
    }
}

#[test]
fn insert_delete_scan_and_lock_keys_follow_their_rules() {
    let cluster = ClusterBuilder::default().start();
    presplit(&cluster, &[b"k"]);
    let client = cluster.txn_client();
    cluster.rt.block_on(async {
        let mut t = client.begin().await.unwrap();
        t.insert("x", "1").unwrap();
        t.put("y", "2").unwrap();
        t.commit().await.unwrap();

        let mut t = client.begin().await.unwrap();
        t.insert("x", "again").unwrap();
        let err = t.commit().await.unwrap_err();
        assert!(
            matches!(err, ClientError::KeyExists { ref key } if key == b"x"),
            "{err}"
        );
        // Buffered twice in one transaction: refused at once.
        let mut t = client.begin().await.unwrap();
        t.put("fresh", "1").unwrap();
        assert!(matches!(
            t.insert("fresh", "2"),
            Err(ClientError::KeyExists { .. })
        ));

        let mut t = client.begin().await.unwrap();
        t.delete("x").unwrap();
        t.put("z", "3").unwrap();
        assert_eq!(t.get("x").await.unwrap(), None);
        let seen: Vec<_> = t
            .scan("", "", 10)
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            seen,
            vec![b"y".to_vec(), b"z".to_vec()],
            "scan overlays the buffer"
        );
        t.commit().await.unwrap();
        let mut t = client.begin().await.unwrap();
        t.insert("x", "back").unwrap();
        t.commit().await.unwrap();

        // lock_keys: a write to a locked key by someone else makes this commit fail.
        let mut guard = client.begin().await.unwrap();
        assert_eq!(guard.get("y").await.unwrap(), Some(b"2".to_vec()));
        guard.lock_keys([b"y".to_vec()]).unwrap();
        guard.put("w", "derived from y").unwrap();
        let mut other = client.begin().await.unwrap();
        other.put("y", "changed").unwrap();
        other.commit().await.unwrap();
        let err = guard.commit().await.unwrap_err();
        assert!(err.is_txn_conflict(), "{err}");
        let mut t = client.begin().await.unwrap();
        assert_eq!(
            t.get("w").await.unwrap(),
            None,
            "the failed transaction left nothing"
        );
        // A finished transaction refuses more work.
        t.commit().await.unwrap();
        assert!(matches!(
            t.put("a", "b"),
            Err(ClientError::TxnFinished { .. })
        ));
    });
}

#[test]
fn concurrent_increments_of_one_counter_lose_no_update() {
    let cluster = ClusterBuilder::default().start();
    let client = cluster.txn_client();
    let (workers, per_worker) = (8, 25);
    cluster.rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..per_worker {
                    client
                        .run(|txn| {
                            Box::pin(async move {
                                let n = num(txn.get("counter").await?);
                                txn.put("counter", (n + 1).to_string())?;
                                Ok(())
                            })
                        })
                        .await
                        .expect("increment commits");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mut t = client.begin().await.unwrap();
        assert_eq!(num(t.get("counter").await.unwrap()), workers * per_worker);
    });
}

#[test]
fn a_client_killed_between_prewrite_and_commit_is_resolved_by_later_readers() {
    let cluster = ClusterBuilder::default().start();
    presplit(&cluster, &[b"m"]);
    let client = cluster.txn_client();
    let pd = cluster.pd();
    cluster.rt.block_on(async {
        let mut t = client.begin().await.unwrap();
        t.put("p1", "old").unwrap();
        t.put("s1", "old").unwrap();
        t.put("p2", "old").unwrap();
        t.put("z2", "old").unwrap();
        t.commit().await.unwrap();

        // Dead before its commit point: readers wait out the TTL, then roll it back.
        let start = client.current_ts().await.unwrap();
        prewrite_and_die(
            &pd,
            &[(b"p1", b"new"), (b"s1", b"new")],
            b"p1",
            start,
            1_500,
        )
        .await;
        let mut reader = client.begin().await.unwrap();
        assert_eq!(reader.get("s1").await.unwrap(), Some(b"old".to_vec()));
        let mut later = client.begin().await.unwrap();
        assert_eq!(
            later.get("p1").await.unwrap(),
            Some(b"old".to_vec()),
            "rolled back"
        );
        assert_eq!(later.get("s1").await.unwrap(), Some(b"old".to_vec()));
        // Its late commit now fails: the rollback is final.
        let mut writer = client.begin().await.unwrap();
        writer.put("s1", "after").unwrap();
        writer.commit().await.unwrap();

        // Dead after its commit point (primary committed, secondary still locked): readers
        // commit the secondary.
        let start = client.current_ts().await.unwrap();
        prewrite_and_die(
            &pd,
            &[(b"p2", b"new"), (b"z2", b"new")],
            b"p2",
            start,
            60_000,
        )
        .await;
        let commit_ts = client.current_ts().await.unwrap();
        commit_key(&pd, b"p2", start, commit_ts).await;
        let mut reader = client.begin().await.unwrap();
        assert_eq!(reader.get("z2").await.unwrap(), Some(b"new".to_vec()));
        assert_eq!(reader.get("p2").await.unwrap(), Some(b"new".to_vec()));
    });
    // The secondary lock is gone on the leader once resolved.
    let leader = cluster.leader().unwrap();
    let kv = cluster.node_kv(leader);
    let reader = ringkv_txn::MvccReader::new(kv.as_ref());
    wait_until("z2 resolved on the leader", Duration::from_secs(10), || {
        reader
            .load_lock(&encoded(b"z2"))
            .unwrap()
            .is_none()
            .then_some(())
    });
}

#[test]
fn a_reader_pushes_a_live_transaction_instead_of_waiting_for_it() {
    let cluster = ClusterBuilder::default().start();
    let client = cluster.txn_client();
    let pd = cluster.pd();
    cluster.rt.block_on(async {
        let mut t = client.begin().await.unwrap();
        t.put("k", "old").unwrap();
        t.commit().await.unwrap();
        let start = client.current_ts().await.unwrap();
        prewrite_and_die(&pd, &[(b"k", b"new")], b"k", start, 600_000).await;
        let mut reader = client.begin().await.unwrap();
        // Its lock lives ten minutes; the reader pushes min_commit_ts past itself and reads on.
        assert_eq!(reader.get("k").await.unwrap(), Some(b"old".to_vec()));
        // The pushed transaction must commit later than the reader.
        let commit_ts = reader.start_ts();
        let r = {
            let route = pd.get_region(&encoded(b"k")).await.unwrap();
            let leader = route.leader.unwrap();
            let store = pd.get_store(leader.store_id).await.unwrap();
            let mut c = KvClient::connect(format!("http://{}", store.address))
                .await
                .unwrap();
            c.kv_commit(KvCommitRequest {
                context: Some(Context {
                    region_id: route.region.id,
                    region_epoch: route.region.region_epoch,
                    replica_read: false,
                    stale_read: false,
                    ..Default::default()
                }),
                start_version: start,
                keys: vec![encoded(b"k")],
                commit_version: commit_ts,
            })
            .await
            .unwrap()
            .into_inner()
        };
        assert!(
            r.error.and_then(|e| e.commit_ts_expired).is_some(),
            "commit below the pushed min_commit_ts is refused"
        );
    });
}

#[test]
fn gc_drops_versions_below_the_safe_point_and_reads_above_it_are_unaffected() {
    let cluster = ClusterBuilder::default().start();
    let client = cluster.txn_client();
    let pd = cluster.pd();
    let old_ts = cluster.rt.block_on(async {
        for i in 0..5 {
            let mut t = client.begin().await.unwrap();
            t.put("g", format!("v{i}")).unwrap();
            t.put("gone", format!("v{i}")).unwrap();
            t.commit().await.unwrap();
        }
        let mut t = client.begin().await.unwrap();
        t.delete("gone").unwrap();
        t.commit().await.unwrap();
        let old = client.begin().await.unwrap().start_ts();
        let mut t = client.begin().await.unwrap();
        t.put("g", "newest").unwrap();
        t.commit().await.unwrap();
        old
    });
    cluster.rt.block_on(async {
        let sp = client.current_ts().await.unwrap();
        let set = pd.update_gc_safe_point(sp).await.unwrap();
        assert_eq!(set, sp);
        assert!(
            pd.update_gc_safe_point(sp - 1).await.is_err(),
            "never goes back"
        );
    });
    let leader = cluster.leader().unwrap();
    let kv = cluster.node_kv(leader);
    let reader = ringkv_txn::MvccReader::new(kv.as_ref());
    wait_until("GC to drop old versions", Duration::from_secs(20), || {
        let g = reader.all_writes(&encoded(b"g")).unwrap();
        let gone = reader.all_writes(&encoded(b"gone")).unwrap();
        (g.len() == 1 && gone.is_empty()).then_some(())
    });
    cluster.rt.block_on(async {
        let mut t = client.begin().await.unwrap();
        assert_eq!(t.get("g").await.unwrap(), Some(b"newest".to_vec()));
        assert_eq!(t.get("gone").await.unwrap(), None);
        // A read below the safe point is refused rather than answered from missing versions.
        let raw = KvGetRequest {
            key: encoded(b"g"),
            version: old_ts,
            ..Default::default()
        };
        let route = pd.get_region(&encoded(b"g")).await.unwrap();
        let store = pd.get_store(route.leader.unwrap().store_id).await.unwrap();
        let mut c = KvClient::connect(format!("http://{}", store.address))
            .await
            .unwrap();
        let r = c
            .kv_get(KvGetRequest {
                context: Some(Context {
                    region_id: route.region.id,
                    region_epoch: route.region.region_epoch,
                    replica_read: false,
                    stale_read: false,
                    ..Default::default()
                }),
                ..raw
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.error.is_some_and(|e| e.gc_safe_point_passed > 0));
    });
}

/// A bank: 16 clients move money between 10 accounts in transactions while a nemesis restarts
/// nodes and cuts the leader off; every snapshot of all accounts sums to the starting total.
#[test]
fn bank_transfers_keep_the_total_under_node_restarts_and_leader_partitions() {
    let mut cluster = ClusterBuilder::default().start();
    presplit(&cluster, &[b"acct03", b"acct07"]);
    let client = cluster.txn_client_with(TxnConfig {
        timeout: Duration::from_secs(10),
        attempt_timeout: Duration::from_secs(1),
        lock_ttl_ms: 1_000,
        ..Default::default()
    });
    cluster
        .rt
        .block_on(bank::open_accounts(&client))
        .expect("accounts open");
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(bank::BankStats::default());
    let workers = {
        let _guard = cluster.rt.enter();
        bank::start_workers(&client, 16, &stop, &stats)
    };
    cluster_checks::restart_and_partition_nemesis(&mut cluster);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = cluster.rt.block_on(w);
    }
    let violations = stats.violations.lock().clone();
    assert!(violations.is_empty(), "{violations:#?}");
    let balances = cluster.rt.block_on(async {
        let mut txn = client.begin().await.unwrap();
        bank::balances(&mut txn).await.unwrap()
    });
    assert_eq!(balances.iter().sum::<i64>(), bank::TOTAL, "{balances:?}");
    let (t, s) = (
        stats.transfers.load(Ordering::Relaxed),
        stats.snapshots.load(Ordering::Relaxed),
    );
    eprintln!("bank: {t} transfers, {s} snapshots checked");
    assert!(
        t > 0 && s > 0,
        "the workload made progress: {t} transfers, {s} snapshots"
    );
}

/// A transaction larger than one request may carry goes in several prewrites (two phases),
/// and one past the configured size is refused before it uses any node's memory.
#[test]
fn a_large_transaction_commits_in_several_requests_and_an_oversized_one_is_refused() {
    let cluster = ClusterBuilder::default().start();
    let client = cluster.txn_client();
    cluster.rt.block_on(async {
        let mut t = client.begin().await.unwrap();
        for i in 0..10_000 {
            t.put(format!("big{i:05}"), "v").unwrap();
        }
        t.commit().await.unwrap();
        let mut r = client.begin().await.unwrap();
        let keys: Vec<Vec<u8>> = (0..10_000)
            .map(|i| format!("big{i:05}").into_bytes())
            .collect();
        assert_eq!(r.batch_get(keys).await.unwrap().len(), 10_000);
    });
    let small = cluster.txn_client_with(TxnConfig {
        txn_size_bytes_max: 1_000,
        ..Default::default()
    });
    cluster.rt.block_on(async {
        let mut t = small.begin().await.unwrap();
        t.put("a", vec![0u8; 900]).unwrap();
        let err = t.put("b", vec![0u8; 200]).unwrap_err();
        assert!(
            matches!(err, ClientError::InvalidArgument(ref m) if m.contains("txn_size_bytes_max")),
            "{err}"
        );
        // Overwriting a key counts its new size only.
        t.put("a", vec![0u8; 950]).unwrap();
    });
}
