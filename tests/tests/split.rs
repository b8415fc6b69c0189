//! Region split in an in-process cluster: ordered splits at given keys, splits by size under
//! load with a node restarting, routing that follows, and how sequential keys spread over the
//! regions of a hash keyspace.

use ringkv_client::{RawClient, RawConfig};
use ringkv_proto::keys;
use ringkv_proto::kvrpcpb::{Keyspace, KeyspaceMode};
use ringkv_tests::cluster::{ClusterBuilder, TestCluster};
use ringkv_tests::cluster_checks::{assert_nodes_agree, ring_position, wait_for_regions};
use ringkv_tests::regions::count_keys;
use std::time::Duration;

/// A client of keyspace 0 in range mode.
fn range_client(c: &TestCluster) -> (Keyspace, RawClient) {
    let keyspace = Keyspace {
        id: 0,
        mode: KeyspaceMode::Range as i32,
    };
    let config = RawConfig {
        keyspace,
        ..RawConfig::default()
    };
    let client =
        c.rt.block_on(RawClient::connect_with_config(&[c.pd_addr()], config))
            .unwrap();
    (keyspace, client)
}

#[test]
fn ordered_splits_route_reads_writes_and_scans() {
    let c = ClusterBuilder::default().start();
    let client = c.client();
    let before: Vec<(Vec<u8>, Vec<u8>)> = (0..300)
        .map(|i| {
            (
                format!("k{i:04}").into_bytes(),
                format!("v{i}").into_bytes(),
            )
        })
        .collect();
    c.rt.block_on(client.batch_put(before.clone())).unwrap();

    // Eight arcs of the ring; splitting twice at the same key is a no-op.
    for i in 1..8u64 {
        c.rt.block_on(client.split_region(ring_position(i << 61)))
            .unwrap();
    }
    c.rt.block_on(client.split_region(ring_position(1 << 61)))
        .unwrap();
    let regions = wait_for_regions(&c, 8, Duration::from_secs(20));
    assert_eq!(regions.len(), 8, "seven splits make eight regions");

    // The client's cached routing is stale for the first region: it must follow EpochNotMatch.
    for (k, v) in &before {
        assert_eq!(
            c.rt.block_on(client.get(k.clone())).unwrap().as_ref(),
            Some(v)
        );
    }
    let after: Vec<(Vec<u8>, Vec<u8>)> = (300..600)
        .map(|i| {
            (
                format!("k{i:04}").into_bytes(),
                format!("v{i}").into_bytes(),
            )
        })
        .collect();
    c.rt.block_on(client.batch_put(after.clone())).unwrap();
    let all = c.rt.block_on(client.scan("", "", 10_000)).unwrap();
    let mut expected = before;
    expected.extend(after);
    assert_eq!(
        all, expected,
        "a scan merges every region in user-key order"
    );
    let some = c.rt.block_on(client.scan("k0100", "k0110", 5)).unwrap();
    assert_eq!(some, expected[100..105].to_vec());

    c.rt.block_on(client.delete_range("k0200", "k0400"))
        .unwrap();
    let left = c.rt.block_on(client.scan("", "", 10_000)).unwrap();
    assert_eq!(left.len(), 400);
    assert_nodes_agree(&c, Duration::from_secs(20));
}

#[test]
fn bad_split_requests_are_refused_or_harmless() {
    let c = ClusterBuilder::default().start();
    let client = c.client();
    assert!(c.rt.block_on(client.split_region(Vec::new())).is_err());
    c.rt.block_on(client.split_region(ring_position(1 << 63)))
        .unwrap();
    // Now a boundary: splitting there again changes nothing.
    c.rt.block_on(client.split_region(ring_position(1 << 63)))
        .unwrap();
    let regions = wait_for_regions(&c, 2, Duration::from_secs(20));
    assert_eq!(regions.len(), 2);
}

#[test]
fn sequential_keys_spread_evenly_over_hash_regions_and_not_over_range_regions() {
    let c = ClusterBuilder::default().start();
    let hash = c.client();
    let regions_wanted = 8u64;
    for i in 1..regions_wanted {
        c.rt.block_on(hash.split_region(ring_position(i * (u64::MAX / regions_wanted))))
            .unwrap();
    }
    let keys_total = 4000usize;
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..keys_total)
        .map(|i| (format!("user{i:08}").into_bytes(), vec![1u8; 16]))
        .collect();
    for chunk in pairs.chunks(500) {
        c.rt.block_on(hash.batch_put(chunk.to_vec())).unwrap();
    }
    let (range_keyspace, ranged) = range_client(&c);
    c.rt.block_on(ranged.batch_put(pairs[..1000].to_vec()))
        .unwrap();

    let regions = wait_for_regions(&c, regions_wanted as usize, Duration::from_secs(20));
    let mut hash_counts = Vec::new();
    let mut range_counts = Vec::new();
    for (region, leader) in &regions {
        hash_counts.push(c.rt.block_on(count_keys(leader, region, keys::default_keyspace())));
        range_counts.push(c.rt.block_on(count_keys(leader, region, range_keyspace)));
    }
    println!("sequential keys per region, hash keyspace:  {hash_counts:?}");
    println!("sequential keys per region, range keyspace: {range_counts:?}");
    assert_eq!(hash_counts.iter().sum::<usize>(), keys_total);
    let mean = keys_total / regions.len();
    for (i, n) in hash_counts.iter().enumerate() {
        assert!(
            n.abs_diff(mean) * 5 <= mean,
            "region {i} holds {n} of {keys_total} sequential keys; an even spread is {mean} ± 20%: {hash_counts:?}"
        );
    }
    // In a range keyspace the same keys are one contiguous run: one region holds them all.
    assert_eq!(range_counts.iter().sum::<usize>(), 1000);
    assert_eq!(range_counts.iter().filter(|n| **n > 0).count(), 1);
}

#[test]
fn regions_split_by_size_under_load_with_a_node_restart() {
    let mut c = ClusterBuilder::default().small_regions(24 * 1024).start();
    let client = c.client();
    let value = vec![b'x'; 200];
    let total = 3000usize;
    let key = |i: usize| format!("load{i:06}").into_bytes();
    let mut written = 0;
    let follower = (c.leader().expect("a leader") + 1) % c.node_count();
    while written < total {
        let batch: Vec<(Vec<u8>, Vec<u8>)> = (written..written + 100)
            .map(|i| (key(i), value.clone()))
            .collect();
        c.rt.block_on(client.batch_put(batch)).unwrap();
        written += 100;
        if written == 1000 {
            c.stop_node(follower);
        }
        if written == 2000 {
            c.restart_node(follower);
        }
    }
    // About 650 KB over 24 KiB regions: a dozen splits at least.
    let regions = wait_for_regions(&c, 12, Duration::from_secs(60));
    println!("{} regions after the load", regions.len());
    let keys: Vec<Vec<u8>> = (0..total).map(key).collect();
    for chunk in keys.chunks(1000) {
        let got = c.rt.block_on(client.batch_get(chunk.to_vec())).unwrap();
        assert_eq!(
            got.len(),
            chunk.len(),
            "every acknowledged write is readable"
        );
    }
    let scanned = c.rt.block_on(client.scan("load", "loae", 10_000)).unwrap();
    assert_eq!(scanned.len(), total, "a scan sees every key exactly once");
    assert_nodes_agree(&c, Duration::from_secs(60));
}

#[test]
fn scans_merge_many_hash_regions_and_walk_range_regions_in_order() {
    let c = ClusterBuilder::default().start();
    let hash = c.client();
    for i in 1..32u64 {
        c.rt.block_on(hash.split_region(ring_position(i * (u64::MAX / 32))))
            .unwrap();
    }
    let (range_keyspace, ranged) = range_client(&c);
    // Range keyspace regions cut at user keys k0250, k0500, k0750.
    for boundary in ["k0250", "k0500", "k0750"] {
        c.rt.block_on(ranged.split_region(keys::encode(&range_keyspace, boundary.as_bytes())))
            .unwrap();
    }
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..1000)
        .map(|i| {
            (
                format!("k{i:04}").into_bytes(),
                format!("v{i}").into_bytes(),
            )
        })
        .collect();
    for chunk in pairs.chunks(250) {
        c.rt.block_on(hash.batch_put(chunk.to_vec())).unwrap();
        c.rt.block_on(ranged.batch_put(chunk.to_vec())).unwrap();
    }
    wait_for_regions(&c, 35, Duration::from_secs(20));
    for client in [&hash, &ranged] {
        let all = c.rt.block_on(client.scan("", "", 10_240)).unwrap();
        assert_eq!(all, pairs, "a whole scan is every pair once, in order");
        // Limits smaller than the region count, and ranges across region boundaries.
        for (start, end, limit) in [
            ("k0100", "k0110", 3u32),
            ("k0240", "k0260", 15),
            ("k0499", "", 7),
            ("k0745", "k0755", 100),
            ("k0990", "", 50),
            ("", "k0003", 10),
        ] {
            let got = c.rt.block_on(client.scan(start, end, limit)).unwrap();
            let want: Vec<_> = pairs
                .iter()
                .filter(|(k, _)| {
                    k.as_slice() >= start.as_bytes()
                        && (end.is_empty() || k.as_slice() < end.as_bytes())
                })
                .take(limit as usize)
                .cloned()
                .collect();
            assert_eq!(got, want, "scan [{start}, {end}) limit {limit}");
        }
    }
}

#[test]
fn scans_during_splits_see_every_earlier_key_once() {
    let c = ClusterBuilder::default().small_regions(16 * 1024).start();
    let client = c.client();
    let value = vec![b'z'; 200];
    let mut written: Vec<Vec<u8>> = Vec::new();
    for round in 0..10 {
        let batch: Vec<(Vec<u8>, Vec<u8>)> = (0..100)
            .map(|i| {
                (
                    format!("s{:05}", round * 100 + i).into_bytes(),
                    value.clone(),
                )
            })
            .collect();
        written.extend(batch.iter().map(|(k, _)| k.clone()));
        c.rt.block_on(client.batch_put(batch)).unwrap();
        // Regions split while this scan runs (the writes above trigger checks).
        let seen = c.rt.block_on(client.scan("s", "t", 10_240)).unwrap();
        let keys: Vec<Vec<u8>> = seen.iter().map(|(k, _)| k.clone()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(keys, sorted, "scan output is sorted with no duplicates");
        written.sort();
        assert_eq!(keys, written, "every key written before the scan, once");
    }
}
