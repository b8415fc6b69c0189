//! Quiet regions: an idle region stops ticking on every replica, wakes on a request, and a
//! leader stopped while its region is quiet is still replaced (the broken links wake the
//! followers) without losing a write.

use ringkv_tests::cluster::ClusterBuilder;
use ringkv_tests::debug;
use ringkv_tests::wait_until;
use std::time::Duration;

/// Per running node, whether every region it holds is quiet.
fn all_quiet(c: &ringkv_tests::cluster::TestCluster) -> Option<bool> {
    let mut quiet = true;
    for i in 0..c.node_count() {
        if !c.is_running(i) {
            continue;
        }
        let regions = c.rt.block_on(debug::regions(&c.node_addr(i)))?;
        quiet &= !regions.is_empty() && regions.iter().all(|r| r.quiet);
    }
    Some(quiet)
}

#[test]
fn idle_region_goes_quiet_and_wakes_on_a_request() {
    let c = ClusterBuilder::default().start();
    let client = c.client();
    c.rt.block_on(client.put(b"q1".to_vec(), b"1".to_vec()))
        .unwrap();
    wait_until("every replica to go quiet", Duration::from_secs(20), || {
        all_quiet(&c)?.then_some(())
    });
    // A quiet region serves at once: the request wakes it.
    c.rt.block_on(client.put(b"q2".to_vec(), b"2".to_vec()))
        .unwrap();
    assert_eq!(
        c.rt.block_on(client.get(b"q1".to_vec())).unwrap(),
        Some(b"1".to_vec())
    );
    c.wait_replicated(b"q2", b"2", Duration::from_secs(10));
    // And goes quiet again once idle.
    wait_until(
        "the region to go quiet again",
        Duration::from_secs(20),
        || all_quiet(&c)?.then_some(()),
    );
}

#[test]
fn leader_stopped_while_quiet_is_replaced() {
    let mut c = ClusterBuilder::default().start();
    let client = c.client();
    c.rt.block_on(client.put(b"before".to_vec(), b"1".to_vec()))
        .unwrap();
    wait_until("every replica to go quiet", Duration::from_secs(20), || {
        all_quiet(&c)?.then_some(())
    });
    let old = c.wait_for_leader(Duration::from_secs(5));
    c.stop_node(old);
    let new = c.wait_for_new_leader(old, Duration::from_secs(30));
    assert_ne!(new, old);
    c.rt.block_on(client.put(b"after".to_vec(), b"2".to_vec()))
        .unwrap();
    assert_eq!(
        c.rt.block_on(client.get(b"before".to_vec())).unwrap(),
        Some(b"1".to_vec())
    );
    c.restart_node(old);
    c.wait_replicated(b"after", b"2", Duration::from_secs(20));
}
