//! Region merge in an in-process cluster: merges ordered by an admin bring the region count
//! back down with every key still there, a merge waits for a replica that is down and
//! completes when it returns, bad merge orders are refused with reasons, and the placement
//! driver merges small regions by itself.

use ringkv_client::ClientError;
use ringkv_proto::metapb::Region;
use ringkv_tests::cluster::{ClusterBuilder, TestCluster};
use ringkv_tests::cluster_checks::{
    assert_nodes_agree, ring_position, wait_for_region_count, wait_for_regions,
};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn pairs(range: std::ops::Range<u32>) -> Vec<(Vec<u8>, Vec<u8>)> {
    range
        .map(|i| {
            (
                format!("k{i:04}").into_bytes(),
                format!("v{i}").into_bytes(),
            )
        })
        .collect()
}

/// Splits the default keyspace into `arcs` equal arcs of the ring (the first region also
/// covers what precedes the keyspace).
fn split(c: &TestCluster, arcs: u64) {
    let client = c.client();
    let step = u64::MAX / arcs + 1;
    for i in 1..arcs {
        c.rt.block_on(client.split_region(ring_position(i * step)))
            .unwrap();
    }
}

fn split_into(c: &TestCluster, arcs: u64) -> Vec<Region> {
    split(c, arcs);
    wait_for_regions(c, arcs as usize, WAIT)
        .into_iter()
        .map(|(r, _)| r)
        .collect()
}

#[test]
fn ordered_merges_bring_regions_back_and_keep_every_key() {
    let c = ClusterBuilder::default().start();
    let client = c.client();
    let before = pairs(0..300);
    c.rt.block_on(client.batch_put(before.clone())).unwrap();
    let regions = split_into(&c, 8);
    assert_eq!(regions.len(), 8);

    // Merge every second region into its left neighbour, then again, while writing.
    let mut expected = before;
    let mut count = regions.len();
    let mut next_key = 300;
    while count > 1 {
        let regions: Vec<Region> = wait_for_region_count(&c, count, WAIT)
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        let mut merged = 0;
        for pair in regions.chunks(2) {
            if let [target, source] = pair {
                c.rt.block_on(client.merge_region(source.id, target.id))
                    .unwrap_or_else(|e| panic!("merge of {} into {}: {e}", source.id, target.id));
                merged += 1;
            }
        }
        let batch = pairs(next_key..next_key + 50);
        next_key += 50;
        c.rt.block_on(client.batch_put(batch.clone())).unwrap();
        expected.extend(batch);
        count -= merged;
        wait_for_region_count(&c, count, WAIT);
    }
    let all = c.rt.block_on(client.scan("", "", 10_000)).unwrap();
    assert_eq!(all, expected, "every key survives the merges, in order");
    for (k, v) in expected.iter().step_by(7) {
        assert_eq!(
            c.rt.block_on(client.get(k.clone())).unwrap().as_ref(),
            Some(v)
        );
    }
    assert_nodes_agree(&c, WAIT);
}

#[test]
fn a_merge_waits_for_a_replica_that_is_down_and_completes_when_it_returns() {
    let mut c = ClusterBuilder::default().start();
    let client = c.client();
    let first = pairs(0..200);
    c.rt.block_on(client.batch_put(first.clone())).unwrap();
    let regions = split_into(&c, 4);
    assert_eq!(regions.len(), 4);

    // A follower of both regions goes down; the leaders stay up.
    let down = (0..c.node_count())
        .find(|&i| {
            let store = c.store_id(i);
            let leads = |r: &Region| {
                c.rt.block_on(c.pd().get_region_by_id(r.id))
                    .ok()
                    .and_then(|route| route.leader)
                    .is_some_and(|l| l.store_id == store)
            };
            !leads(&regions[1]) && !leads(&regions[2])
        })
        .expect("some node leads neither region");
    c.stop_node(down);
    c.rt.block_on(client.merge_region(regions[2].id, regions[1].id))
        .unwrap();
    // Writes to the rest of the keyspace go on; the prepared source waits for the replica.
    let second = pairs(200..260);
    let outside: Vec<_> = second
        .iter()
        .filter(|(k, _)| {
            let encoded = ringkv_proto::keys::encode(&ringkv_proto::keys::default_keyspace(), k);
            let inside =
                |r: &Region| ringkv_proto::keys::in_range(&encoded, &r.start_key, &r.end_key);
            !inside(&regions[1]) && !inside(&regions[2])
        })
        .cloned()
        .collect();
    c.rt.block_on(client.batch_put(outside)).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    c.restart_node(down);
    wait_for_region_count(&c, 3, WAIT);
    c.rt.block_on(client.batch_put(second.clone())).unwrap();
    let mut expected = first;
    expected.extend(second);
    expected.sort();
    let all = c.rt.block_on(client.scan("", "", 10_000)).unwrap();
    assert_eq!(all, expected);
    assert_nodes_agree(&c, WAIT);
}

#[test]
fn bad_merge_orders_are_refused_with_reasons() {
    let c = ClusterBuilder::default().start();
    let client = c.client();
    let regions = split_into(&c, 4);
    let (a, b, d) = (&regions[0], &regions[1], &regions[3]);
    let refused =
        |source: u64, target: u64| match c.rt.block_on(client.merge_region(source, target)) {
            Err(ClientError::InvalidArgument(m)) => m,
            other => panic!("merge of {source} into {target} should be refused, got {other:?}"),
        };
    assert!(refused(a.id, a.id).contains("itself"));
    assert!(refused(0, a.id).contains("region id"));
    assert!(refused(a.id, d.id).contains("not adjacent"));
    assert!(c.rt.block_on(client.merge_region(999_999, a.id)).is_err());
    // Nothing changed; a good merge still works.
    wait_for_region_count(&c, 4, WAIT);
    c.rt.block_on(client.merge_region(b.id, a.id)).unwrap();
    wait_for_region_count(&c, 3, WAIT);
}

#[test]
fn the_placement_driver_merges_small_regions_by_itself() {
    let c = ClusterBuilder::default().auto_merge(1 << 20).start();
    let client = c.client();
    let data = pairs(0..100);
    c.rt.block_on(client.batch_put(data.clone())).unwrap();
    split(&c, 8);
    // Each split returned once applied, so there were eight regions. Everything is tiny:
    // merges continue until one region is left.
    wait_for_region_count(&c, 1, Duration::from_secs(90));
    let all = c.rt.block_on(client.scan("", "", 10_000)).unwrap();
    assert_eq!(all, data);
    assert_nodes_agree(&c, WAIT);
}
