//! The placement driver's own high availability: three members in one Raft group; losing the
//! leader elects another, the cluster keeps serving, and timestamps never go back.

use ringkv_tests::cluster::ClusterBuilder;
use ringkv_tests::wait_until;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn losing_the_placement_leader_elects_another_and_timestamps_keep_increasing() {
    let mut cluster = ClusterBuilder::default().placement_members(3).start();
    let client = cluster.client();
    for i in 0..50u32 {
        cluster
            .rt
            .block_on(client.put(format!("before-{i}").into_bytes(), b"v".to_vec()))
            .expect("put before the failover");
    }
    let old_leader = wait_until("a placement leader", Duration::from_secs(30), || {
        cluster.placement_leader()
    });
    let regions_before = cluster
        .rt
        .block_on(cluster.pd().scan_regions(b"", b"", 0))
        .expect("regions")
        .len();

    // One client takes timestamps back to back through the failover: each must be above the
    // one before it, whichever member handed it out.
    let pd = cluster.pd();
    let stop = Arc::new(AtomicBool::new(false));
    let taker = {
        let stop = stop.clone();
        let handle = cluster.rt.handle().clone();
        std::thread::spawn(move || {
            let mut taken: Vec<u64> = Vec::new();
            let mut failures = 0u32;
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                match handle.block_on(pd.tso(1)) {
                    Ok(ts) => taken.push(ts),
                    Err(_) => failures += 1,
                }
            }
            (taken, failures)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    cluster.stop_placement(old_leader);
    let new_leader = wait_until("a new placement leader", Duration::from_secs(30), || {
        cluster.placement_leader().filter(|&l| l != old_leader)
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (taken, failures) = taker.join().expect("timestamp taker");
    assert!(
        taken.len() > 10,
        "timestamps were taken on both sides of the failover ({} taken, {failures} calls failed)",
        taken.len()
    );
    for pair in taken.windows(2) {
        assert!(
            pair[1] > pair[0],
            "timestamp {} came after {}: time went back across the failover",
            pair[1],
            pair[0]
        );
    }

    // The new leader knows every region, and the cluster serves reads and writes through it.
    let pd = cluster.pd();
    let regions_after = cluster
        .rt
        .block_on(pd.scan_regions(b"", b"", 0))
        .expect("regions after the failover")
        .len();
    assert_eq!(regions_after, regions_before);
    let client = cluster.client();
    for i in 0..50u32 {
        let key = format!("before-{i}").into_bytes();
        assert_eq!(
            cluster.rt.block_on(client.get(key)).expect("get"),
            Some(b"v".to_vec())
        );
        cluster
            .rt
            .block_on(client.put(format!("after-{i}").into_bytes(), b"w".to_vec()))
            .expect("put after the failover");
    }
    let first_id = cluster.rt.block_on(pd.alloc_ids(1)).expect("ids");

    // The old leader comes back as a follower and catches up with the new leader's log.
    cluster.restart_placement(old_leader);
    wait_until(
        "the restarted member to catch up",
        Duration::from_secs(30),
        || {
            let leader = cluster.placement_status(new_leader)?;
            let back = cluster.placement_status(old_leader)?;
            (back.applied_index == leader.applied_index
                && back.leader_id == leader.leader_id
                && cluster.placement_leader() == Some(new_leader))
            .then_some(())
        },
    );
    assert!(
        cluster.rt.block_on(pd.alloc_ids(1)).expect("ids") > first_id,
        "ids are never handed out twice"
    );
}

#[test]
fn without_a_quorum_nothing_is_served_and_with_it_back_everything_is_there() {
    let mut cluster = ClusterBuilder::default().placement_members(3).start();
    let leader = wait_until("a placement leader", Duration::from_secs(30), || {
        cluster.placement_leader()
    });
    let pd = cluster.pd();
    let before = cluster.rt.block_on(pd.tso(1)).expect("a timestamp");
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for &i in &others {
        cluster.stop_placement(i);
    }
    // The leader alone loses its lease within a second and stops serving: a timestamp from a
    // member that could be cut off from a newer leader would break snapshot isolation.
    wait_until(
        "the leader alone to stop serving",
        Duration::from_secs(10),
        || cluster.placement_leader().is_none().then_some(()),
    );
    for &i in &others {
        cluster.restart_placement(i);
    }
    wait_until("a placement leader again", Duration::from_secs(30), || {
        cluster.placement_leader()
    });
    let after = cluster.rt.block_on(pd.tso(1)).expect("a timestamp");
    assert!(after > before);
    assert!(
        cluster
            .rt
            .block_on(pd.get_cluster_info())
            .expect("info")
            .bootstrapped,
        "the cluster's state survived"
    );
}
