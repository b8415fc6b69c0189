//! `ringkv-ctl` against an in-process cluster: every command, readable and `--json`, and its
//! errors (bad values, refused changes, an unreachable placement driver).

use ringkv_tests::cluster::{ClusterBuilder, TestCluster};
use ringkv_tests::process::binary;
use std::process::Command;

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn ctl(pd: &str, args: &[&str]) -> Out {
    let out = Command::new(binary("ringkv-ctl"))
        .arg("--pd")
        .arg(pd)
        .args(args)
        .output()
        .expect("ringkv-ctl runs");
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn json(out: &Out) -> serde_json::Value {
    assert!(out.ok, "failed: {}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.stdout))
}

fn start() -> TestCluster {
    ClusterBuilder::default().start()
}

#[test]
fn cluster_and_tso_report_in_tables_and_json() {
    let cluster = start();
    let pd = cluster.pd_addr();
    let table = ctl(&pd, &["cluster"]);
    assert!(table.ok, "{}", table.stderr);
    assert!(table.stdout.contains("bootstrapped") && table.stdout.contains("true"));
    let j = ringkv_tests::wait_until(
        "the cluster to report healthy",
        std::time::Duration::from_secs(30),
        || {
            let j = json(&ctl(&pd, &["--json", "cluster"]));
            (j["healthy"] == true).then_some(j)
        },
    );
    assert_eq!(j["bootstrapped"], true);
    assert_eq!(j["stores"], 3);
    assert_eq!(j["stores_up"], 3);
    assert_eq!(j["stores_down"], serde_json::json!([]));
    assert_eq!(j["regions_without_leader"], 0);
    assert!(j["regions"].as_u64().unwrap() >= 1);
    let table = ctl(&pd, &["cluster"]);
    assert!(
        table.ok && table.stdout.contains("healthy") && table.stdout.contains("3 up"),
        "{}",
        table.stdout
    );

    let first = json(&ctl(&pd, &["tso", "--json"]))["timestamp"]
        .as_u64()
        .unwrap();
    let second = json(&ctl(&pd, &["tso", "--json"]))["timestamp"]
        .as_u64()
        .unwrap();
    assert!(second > first, "timestamps strictly increase");
    let line = ctl(&pd, &["tso"]);
    assert!(line.ok && line.stdout.contains("physical") && line.stdout.contains('Z'));
}

#[test]
fn gc_safe_point_shows_sets_and_refuses_bad_values() {
    let cluster = start();
    let pd = cluster.pd_addr();
    let shown = json(&ctl(&pd, &["gc-safe-point", "--json"]));
    let before = shown["gc_safe_point"]["timestamp"].as_u64().unwrap();
    let ts = json(&ctl(&pd, &["tso", "--json"]))["timestamp"]
        .as_u64()
        .unwrap();
    let set = json(&ctl(
        &pd,
        &["--json", "gc-safe-point", "set", &ts.to_string()],
    ));
    assert_eq!(set["gc_safe_point"]["timestamp"].as_u64().unwrap(), ts);
    assert!(ts >= before);
    let now = ctl(&pd, &["gc-safe-point", "set", "now"]);
    assert!(now.ok, "{}", now.stderr);
    assert!(now.stdout.contains("gc safe point"));

    let back = ctl(&pd, &["gc-safe-point", "set", &(ts - 1).to_string()]);
    assert!(!back.ok);
    assert!(back.stderr.contains("never goes back"), "{}", back.stderr);
    let future = ctl(&pd, &["gc-safe-point", "set", &u64::MAX.to_string()]);
    assert!(!future.ok);
    assert!(future.stderr.contains("future"), "{}", future.stderr);
    let garbage = ctl(&pd, &["gc-safe-point", "set", "yesterday"]);
    assert!(!garbage.ok);
    assert!(
        garbage.stderr.contains("not a timestamp"),
        "{}",
        garbage.stderr
    );
}

#[test]
fn an_unreachable_placement_driver_is_a_clear_error() {
    let port = ringkv_tests::process::free_port();
    let out = ctl(&format!("127.0.0.1:{port}"), &["tso"]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("cannot reach the placement driver") && out.stderr.contains("--pd"),
        "{}",
        out.stderr
    );
    let usage = Command::new(binary("ringkv-ctl"))
        .arg("no-such-command")
        .output()
        .unwrap();
    assert!(!usage.status.success());
}

#[test]
fn store_list_and_decommission_with_their_errors() {
    let cluster = start();
    let pd = cluster.pd_addr();
    let table = ctl(&pd, &["store", "list"]);
    assert!(table.ok, "{}", table.stderr);
    assert!(
        table.stdout.contains("replicas") && table.stdout.contains(" up "),
        "{}",
        table.stdout
    );
    let j = json(&ctl(&pd, &["--json", "store", "list"]));
    let stores = j["stores"].as_array().unwrap();
    assert_eq!(stores.len(), 3);
    assert!(
        stores
            .iter()
            .all(|s| s["replicas"] == 1 && s["state"] == "up"),
        "{j}"
    );
    assert_eq!(
        stores
            .iter()
            .map(|s| s["leaders"].as_u64().unwrap())
            .sum::<u64>(),
        1,
        "one region, one leader"
    );

    let unknown = ctl(&pd, &["store", "decommission", "999999"]);
    assert!(!unknown.ok);
    assert!(
        unknown.stderr.contains("999999") && unknown.stderr.contains("not registered"),
        "{}",
        unknown.stderr
    );
    let id = cluster.store_id(0).to_string();
    let too_few = ctl(&pd, &["store", "decommission", &id]);
    assert!(!too_few.ok);
    assert!(
        too_few.stderr.contains("cannot be decommissioned"),
        "{}",
        too_few.stderr
    );
    let bad = ctl(&pd, &["store", "decommission", "abc"]);
    assert!(!bad.ok);
}

#[test]
fn region_commands_list_show_find_and_check() {
    let cluster = start();
    let pd = cluster.pd_addr();
    let client = cluster.client();
    let split_at =
        ringkv_proto::keys::encode(&ringkv_proto::keys::default_keyspace(), b"somewhere");
    cluster.rt.block_on(client.split_region(split_at)).unwrap();
    let j = json(&ctl(&pd, &["--json", "region", "list"]));
    let regions = j["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 2, "{j}");
    assert!(regions
        .iter()
        .all(|r| r["peers"].as_array().unwrap().len() == 3));
    let table = ctl(&pd, &["region", "list"]);
    assert!(
        table.ok && table.stdout.contains("replicas"),
        "{}",
        table.stderr
    );

    let id = regions[0]["id"].as_u64().unwrap();
    let shown = json(&ctl(&pd, &["--json", "region", "show", &id.to_string()]));
    assert_eq!(shown["id"].as_u64(), Some(id));
    let found = json(&ctl(&pd, &["--json", "region", "by-key", "some-user-key"]));
    assert!(found["id"].as_u64().is_some());
    let missing = ctl(&pd, &["region", "show", "999999"]);
    assert!(
        !missing.ok && missing.stderr.contains("999999"),
        "{}",
        missing.stderr
    );
    let bad = ctl(&pd, &["region", "show", "x"]);
    assert!(!bad.ok);

    let healthy = json(&ctl(&pd, &["--json", "region", "check", "miss-peer"]));
    assert_eq!(healthy["regions"].as_array().unwrap().len(), 0);
    let unknown = ctl(&pd, &["region", "check", "sadness"]);
    assert!(
        !unknown.ok && unknown.stderr.contains("miss-peer"),
        "{}",
        unknown.stderr
    );
}

#[test]
fn operators_are_added_listed_shown_cancelled_and_refused_with_reasons() {
    let cluster = ClusterBuilder {
        nodes: 4,
        ..ClusterBuilder::default()
    }
    .start();
    let pd = cluster.pd_addr();
    let route = cluster
        .rt
        .block_on(cluster.pd().get_region(&ringkv_proto::keys::encode(
            &ringkv_proto::keys::default_keyspace(),
            b"k",
        )))
        .unwrap();
    let region = route.region.id.to_string();
    let leader = route.leader.unwrap().store_id;
    let follower = route
        .region
        .peers
        .iter()
        .find(|p| p.store_id != leader)
        .unwrap()
        .store_id;
    let outsider = cluster
        .store_ids()
        .into_iter()
        .find(|s| !route.region.peers.iter().any(|p| p.store_id == *s))
        .unwrap();

    // A leader transfer runs to its end: the follower leads.
    let added = json(&ctl(
        &pd,
        &[
            "--json",
            "operator",
            "add",
            "transfer-leader",
            &region,
            &follower.to_string(),
        ],
    ));
    assert_eq!(added["operators"][0]["steps"].as_array().unwrap().len(), 1);
    ringkv_tests::wait_until(
        "the follower to lead",
        std::time::Duration::from_secs(30),
        || {
            let r = cluster
                .rt
                .block_on(cluster.pd().get_region_by_id(route.region.id))
                .ok()?;
            (r.leader?.store_id == follower).then_some(())
        },
    );

    // A move to the store without a replica; listed and shown while in flight, then cancelled.
    let moved = json(&ctl(
        &pd,
        &[
            "--json",
            "operator",
            "add",
            "move-peer",
            &region,
            &leader.to_string(),
            &outsider.to_string(),
        ],
    ));
    assert_eq!(moved["operators"][0]["steps"].as_array().unwrap().len(), 3);
    let again = ctl(
        &pd,
        &[
            "operator",
            "add",
            "transfer-leader",
            &region,
            &leader.to_string(),
        ],
    );
    assert!(
        !again.ok && again.stderr.contains("already has an operator"),
        "{}",
        again.stderr
    );
    let listed = ctl(&pd, &["operator", "list"]);
    assert!(listed.ok, "{}", listed.stderr);
    let shown = ctl(&pd, &["operator", "show", &region]);
    assert!(
        shown.ok && shown.stdout.contains("admin: move-peer"),
        "{}",
        shown.stdout
    );
    let cancelled = ctl(&pd, &["operator", "cancel", &region]);
    assert!(cancelled.ok, "{}", cancelled.stderr);
    let none = ctl(&pd, &["operator", "show", &region]);
    assert!(
        !none.ok && none.stderr.contains("no operator"),
        "{}",
        none.stderr
    );
    let twice = ctl(&pd, &["operator", "cancel", &region]);
    assert!(
        !twice.ok && twice.stderr.contains("no operator"),
        "{}",
        twice.stderr
    );

    // Refusals name what is wrong.
    for (args, needle) in [
        (
            vec!["operator", "add", "transfer-leader", "999999", "1"],
            "no region 999999",
        ),
        (
            vec![
                "operator",
                "add",
                "transfer-leader",
                &region,
                &outsider.to_string(),
            ],
            "no voter on store",
        ),
        (
            vec![
                "operator",
                "add",
                "move-peer",
                &region,
                &outsider.to_string(),
                &leader.to_string(),
            ],
            "no replica on store",
        ),
        (
            vec![
                "operator",
                "add",
                "move-peer",
                &region,
                &leader.to_string(),
                "999999",
            ],
            "999999",
        ),
    ] {
        let out = ctl(&pd, &args);
        assert!(!out.ok, "{args:?} was accepted");
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
    }
}

#[test]
fn schedulers_pause_and_resume_and_config_is_shown_set_and_validated() {
    let cluster = start();
    let pd = cluster.pd_addr();
    let list = json(&ctl(&pd, &["--json", "scheduler", "list"]));
    let names: Vec<&str> = list["schedulers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"balance-leader") && names.contains(&"replica-repair"));
    let paused = json(&ctl(
        &pd,
        &["--json", "scheduler", "pause", "balance-region"],
    ));
    assert!(!state(&paused, "balance-region"));
    let resumed = json(&ctl(
        &pd,
        &["--json", "scheduler", "resume", "balance-region"],
    ));
    assert!(state(&resumed, "balance-region"));
    let unknown = ctl(&pd, &["scheduler", "pause", "balance-mood"]);
    assert!(!unknown.ok);

    // A per-store scheduler: added, listed, removed; errors name the store.
    let store = cluster.store_id(1).to_string();
    let added = json(&ctl(
        &pd,
        &["--json", "scheduler", "add", "evict-leader", &store],
    ));
    assert!(state(&added, &format!("evict-leader-{store}")));
    let table = ctl(&pd, &["scheduler", "list"]);
    assert!(table.ok && table.stdout.contains(&format!("evict-leader-{store}")));
    let removed = json(&ctl(
        &pd,
        &["--json", "scheduler", "remove", "evict-leader", &store],
    ));
    assert!(!removed["schedulers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == format!("evict-leader-{store}").as_str()));
    let again = ctl(&pd, &["scheduler", "remove", "evict-leader", &store]);
    assert!(
        !again.ok && again.stderr.contains(&store),
        "{}",
        again.stderr
    );
    let unknown_store = ctl(&pd, &["scheduler", "add", "evict-leader", "999"]);
    assert!(!unknown_store.ok && unknown_store.stderr.contains("999"));

    let shown = json(&ctl(&pd, &["--json", "config", "show"]));
    assert_eq!(shown["region_schedule_limit"], 4);
    let set = json(&ctl(
        &pd,
        &["--json", "config", "set", "region_schedule_limit", "16"],
    ));
    assert_eq!(set["region_schedule_limit"], 16);
    let table = ctl(&pd, &["config", "show"]);
    assert!(
        table.ok && table.stdout.contains("region_schedule_limit"),
        "{}",
        table.stdout
    );
    for (key, value, needle) in [
        ("region_schedule_limit", "5000", "0..=1024"),
        ("balance_tolerance_ratio", "2", "0.0..=1.0"),
        ("balance_leader", "maybe", "true or false"),
        ("replicas", "5", "only 3 stores are up"),
        ("replica_count", "3", "unknown setting"),
    ] {
        let out = ctl(&pd, &["config", "set", key, value]);
        assert!(!out.ok, "{key} = {value} was accepted");
        assert!(out.stderr.contains(needle), "{key}: {}", out.stderr);
    }
}

#[test]
fn members_are_listed_with_roles_and_leadership_moves_on_request() {
    let mut cluster = ClusterBuilder::default().placement_members(3).start();
    let pd = cluster.pd_endpoints().join(",");
    let leader = ringkv_tests::wait_until(
        "a placement leader",
        std::time::Duration::from_secs(30),
        || cluster.placement_leader(),
    );
    let leader_name = format!("pd-{}", leader + 1);
    let j = json(&ctl(&pd, &["member", "list", "--json"]));
    let members = j["members"].as_array().expect("members");
    assert_eq!(members.len(), 3);
    for m in members {
        let expected = if m["name"] == leader_name.as_str() {
            "leader"
        } else {
            "follower"
        };
        assert_eq!(m["role"], expected, "{m}");
    }
    let table = ctl(&pd, &["member", "list"]);
    assert!(table.ok, "{}", table.stderr);
    assert!(table.stdout.contains("ROLE") && table.stdout.contains(&leader_name));

    // Hand leadership to another member by name.
    let target = (leader + 1) % 3;
    let target_name = format!("pd-{}", target + 1);
    let out = ctl(&pd, &["member", "transfer-leader", &target_name]);
    assert!(out.ok, "{}", out.stderr);
    ringkv_tests::wait_until(
        "the target to lead",
        std::time::Duration::from_secs(30),
        || (cluster.placement_leader() == Some(target)).then_some(()),
    );
    // Errors: an unknown member; a stopped member is shown as down.
    let out = ctl(&pd, &["member", "transfer-leader", "pd-9"]);
    assert!(!out.ok && out.stderr.contains("pd-9") && out.stderr.contains("pd-1"));
    let stopped = (target + 1) % 3;
    cluster.stop_placement(stopped);
    let j = json(&ctl(&pd, &["member", "list", "--json"]));
    let down: Vec<_> = j["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["role"] == "down")
        .map(|m| m["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(down, vec![format!("pd-{}", stopped + 1)]);
}

#[test]
fn region_checks_find_pending_down_oversized_and_undersized_regions() {
    let mut cluster = start();
    let pd = cluster.pd_addr();
    let client = cluster.client();
    let split_at = ringkv_proto::keys::encode(&ringkv_proto::keys::default_keyspace(), b"m");
    cluster.rt.block_on(client.split_region(split_at)).unwrap();
    cluster.rt.block_on(async {
        for i in 0..100 {
            client
                .put(format!("key{i:03}"), vec![b'v'; 1024])
                .await
                .unwrap();
        }
    });
    let count = |args: &[&str]| -> usize {
        let mut all = vec!["--json", "region", "check"];
        all.extend_from_slice(args);
        json(&ctl(&pd, &all))["regions"].as_array().unwrap().len()
    };
    // Every region measured by its leader (sizes are reported with the heartbeats).
    ringkv_tests::wait_until(
        "every region measured",
        std::time::Duration::from_secs(60),
        || {
            let j = json(&ctl(&pd, &["--json", "region", "list"]));
            j["regions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["health"]["measured"] == true)
                .then_some(())
        },
    );
    assert_eq!(count(&["undersized"]), 2, "both regions are below 20 MiB");
    assert_eq!(count(&["oversized"]), 0);
    assert!(
        count(&["oversized", "--size-max-mib", "0"]) >= 1,
        "the data is somewhere"
    );
    assert_eq!(count(&["undersized", "--size-min-mib", "0"]), 0);
    assert_eq!(count(&["pending-peer"]), 0);
    assert_eq!(count(&["down-peer"]), 0);
    let bad = ctl(
        &pd,
        &["region", "check", "oversized", "--size-max-mib", "lots"],
    );
    assert!(!bad.ok && bad.stderr.contains("lots"), "{}", bad.stderr);

    // A stopped node's replicas show as down peers once its store is silent for 20 s.
    let stopped_store = cluster.store_id(2);
    cluster.stop_node(2);
    ringkv_tests::wait_until(
        "both regions to show a down peer",
        std::time::Duration::from_secs(90),
        || (count(&["down-peer"]) == 2).then_some(()),
    );
    let health = json(&ctl(&pd, &["--json", "cluster"]));
    assert_eq!(health["healthy"], false, "{health}");
    assert_eq!(health["stores_down"], serde_json::json!([stopped_store]));
    assert_eq!(health["regions_with_down_replicas"], 2);
    let table = ctl(&pd, &["cluster"]);
    assert!(
        table.ok && table.stdout.contains("degraded"),
        "{}",
        table.stdout
    );
    let j = json(&ctl(&pd, &["--json", "region", "check", "down-peer"]));
    for r in j["regions"].as_array().unwrap() {
        let down = r["health"]["down_peer_ids"].as_array().unwrap();
        let on_stopped: Vec<_> = r["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["store_id"] == stopped_store)
            .map(|p| p["id"].clone())
            .collect();
        assert_eq!(down, &on_stopped, "{r}");
    }
}

#[test]
fn store_show_and_label_with_their_errors() {
    let cluster = start();
    let pd = cluster.pd_addr();
    let id = cluster.store_id(0).to_string();
    let shown = json(&ctl(&pd, &["--json", "store", "show", &id]));
    assert_eq!(shown["id"].as_u64(), Some(cluster.store_id(0)));
    assert_eq!(shown["state"], "up");
    assert_eq!(shown["address"], cluster.node_addr(0).as_str());
    // Figures come with the store heartbeats (one a second in tests).
    ringkv_tests::wait_until(
        "the store's first heartbeat",
        std::time::Duration::from_secs(30),
        || {
            let j = json(&ctl(&pd, &["--json", "store", "show", &id]));
            (j["capacity_bytes"].as_u64()? > 0 && j["region_count"] == 1).then_some(())
        },
    );
    let table = ctl(&pd, &["store", "show", &id]);
    assert!(
        table.ok && table.stdout.contains("capacity") && table.stdout.contains("written"),
        "{}",
        table.stdout
    );

    let labelled = json(&ctl(
        &pd,
        &["--json", "store", "label", &id, "zone=z1", "rack=r-7"],
    ));
    assert_eq!(labelled["labels"]["zone"], "z1");
    assert_eq!(labelled["labels"]["rack"], "r-7");
    let listed = ctl(&pd, &["store", "list"]);
    assert!(
        listed.ok && listed.stdout.contains("rack=r-7,zone=z1"),
        "{}",
        listed.stdout
    );
    let removed = json(&ctl(&pd, &["--json", "store", "label", &id, "rack="]));
    assert_eq!(removed["labels"]["zone"], "z1");
    assert!(removed["labels"].get("rack").is_none(), "{removed}");
    let table = ctl(&pd, &["store", "label", &id, "host=h1"]);
    assert!(
        table.ok && table.stdout.contains("host=h1,zone=z1"),
        "{}",
        table.stdout
    );

    for (args, needle) in [
        (vec!["store", "show", "999999"], "999999"),
        (vec!["store", "label", "999999", "zone=z1"], "999999"),
        (vec!["store", "label", &id, "zone"], "KEY=VALUE"),
        (vec!["store", "label", &id, "zo ne=x"], "letters, digits"),
        (vec!["store", "label", &id, "=x"], "letters, digits"),
    ] {
        let out = ctl(&pd, &args);
        assert!(!out.ok, "{args:?} was accepted");
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
    }
    let no_labels = ctl(&pd, &["store", "label", &id]);
    assert!(!no_labels.ok, "a label is required");
}

/// Whether scheduler `name` runs, in a `scheduler … --json` answer.
fn state(j: &serde_json::Value, name: &str) -> bool {
    j["schedulers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()["running"]
        .as_bool()
        .unwrap()
}

/// Asserts `key000`.. read back as `value0`..
fn read_back(cluster: &TestCluster, n: usize) {
    let client = cluster.client();
    cluster.rt.block_on(async {
        for i in 0..n {
            let v = client.get(format!("key{i:03}")).await.expect("read");
            assert_eq!(v, Some(format!("value{i}").into_bytes()), "key{i:03}");
        }
    });
}

/// Regions in key order, as `region list --json` shows them.
fn region_ids(pd: &str) -> Vec<u64> {
    json(&ctl(pd, &["--json", "region", "list"]))["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect()
}

#[test]
fn split_and_merge_operators_run_to_their_end_and_bad_ones_are_refused() {
    let cluster = start();
    let pd = cluster.pd_addr();
    let client = cluster.client();
    cluster.rt.block_on(async {
        for i in 0..100 {
            client
                .put(format!("key{i:03}"), format!("value{i}"))
                .await
                .unwrap();
        }
    });
    let wait_regions = |n: usize| {
        ringkv_tests::wait_until(
            &format!("{n} regions"),
            std::time::Duration::from_secs(60),
            || {
                let ids = region_ids(&pd);
                let ops = cluster.rt.block_on(cluster.pd().get_operators()).ok()?;
                (ids.len() == n && ops.is_empty()).then_some(ids)
            },
        )
    };
    let first = region_ids(&pd)[0].to_string();

    // Halving: the data is split where it halves.
    let halve = json(&ctl(&pd, &["--json", "operator", "add", "split", &first]));
    assert_eq!(
        halve["operators"][0]["steps"][0], "split where the data halves",
        "{halve}"
    );
    let two = wait_regions(2);
    // At a key: the split lands inside the region holding it.
    let at = ctl(&pd, &["operator", "add", "split", &first, "--key", "zzz"]);
    let holder = json(&ctl(&pd, &["--json", "region", "by-key", "zzz"]))["id"]
        .as_u64()
        .unwrap();
    let three = if holder.to_string() == first {
        assert!(at.ok, "{}", at.stderr);
        wait_regions(3)
    } else {
        assert!(
            !at.ok && at.stderr.contains("not inside region"),
            "{}",
            at.stderr
        );
        let at = ctl(
            &pd,
            &[
                "operator",
                "add",
                "split",
                &holder.to_string(),
                "--key",
                "zzz",
            ],
        );
        assert!(at.ok, "{}", at.stderr);
        wait_regions(3)
    };
    assert!(two.iter().all(|id| three.contains(id)));
    read_back(&cluster, 100);

    // Merges: only into an adjacent region.
    let (a, c) = (three[0].to_string(), three[2].to_string());
    let far = ctl(&pd, &["operator", "add", "merge", &a, &c]);
    assert!(
        !far.ok && far.stderr.contains("not adjacent"),
        "{}",
        far.stderr
    );
    let itself = ctl(&pd, &["operator", "add", "merge", &a, &a]);
    assert!(!itself.ok && itself.stderr.contains("not adjacent"));
    let unknown = ctl(&pd, &["operator", "add", "merge", &a, "999999"]);
    assert!(!unknown.ok && unknown.stderr.contains("no region 999999"));
    let merged = json(&ctl(
        &pd,
        &[
            "--json",
            "operator",
            "add",
            "merge",
            &a,
            &three[1].to_string(),
        ],
    ));
    assert_eq!(
        merged["operators"][0]["steps"][0],
        format!("merge into region {}", three[1]).as_str()
    );
    let left = wait_regions(2);
    assert!(!left.contains(&three[0]), "the source is gone: {left:?}");
    read_back(&cluster, 100);

    let bad_key_region = ctl(&pd, &["operator", "add", "split", "999999"]);
    assert!(!bad_key_region.ok && bad_key_region.stderr.contains("no region 999999"));
    let not_a_number = ctl(&pd, &["operator", "add", "merge", "x", "1"]);
    assert!(!not_a_number.ok);
}

#[test]
fn hot_regions_are_listed_and_the_hot_region_scheduler_is_added_and_removed() {
    let cluster = start();
    let pd = cluster.pd_addr();
    let added = json(&ctl(&pd, &["--json", "scheduler", "add", "hot-region"]));
    assert!(state(&added, "hot-region"));
    let removed = json(&ctl(&pd, &["--json", "scheduler", "remove", "hot-region"]));
    assert!(!state(&removed, "hot-region"));
    let resumed = json(&ctl(&pd, &["--json", "scheduler", "resume", "hot-region"]));
    assert!(state(&resumed, "hot-region"));
    let table = ctl(&pd, &["scheduler", "list"]);
    assert!(
        table.ok && table.stdout.contains("hot-region"),
        "{}",
        table.stdout
    );
    let paused = json(&ctl(
        &pd,
        &["--json", "scheduler", "pause", "balance-leader"],
    ));
    assert!(!state(&paused, "balance-leader"));
    let readded = json(&ctl(&pd, &["--json", "scheduler", "add", "balance-leader"]));
    assert!(state(&readded, "balance-leader"));
    for (args, needle) in [
        (
            vec!["scheduler", "add", "hot-region", "3"],
            "takes no store id",
        ),
        (vec!["scheduler", "add", "evict-leader"], "needs a store"),
        (
            vec!["config", "set", "hot_region_min_bytes_per_sec", "0"],
            "1..=",
        ),
        (
            vec!["config", "set", "balance_hot_region", "often"],
            "true or false",
        ),
        (vec!["region", "hot", "sideways"], "read"),
    ] {
        let out = ctl(&pd, &args);
        assert!(!out.ok, "{args:?} was accepted");
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
    }
    let set = json(&ctl(
        &pd,
        &["--json", "config", "set", "hot_region_schedule_limit", "8"],
    ));
    assert_eq!(set["hot_region_schedule_limit"], 8);

    // Flow shows up with the leaders' heartbeats: writes, then reads.
    let client = cluster.client();
    let hot = |by: &str| -> Option<u64> {
        let j = json(&ctl(&pd, &["--json", "region", "hot", by]));
        let first = j["regions"].as_array()?.first()?.clone();
        let field = if by == "read" {
            "read_bytes_per_sec"
        } else {
            "written_bytes_per_sec"
        };
        first["health"][field].as_u64()
    };
    ringkv_tests::wait_until(
        "written flow to be reported",
        std::time::Duration::from_secs(60),
        || {
            cluster.rt.block_on(async {
                for i in 0..20 {
                    client
                        .put(format!("key{i:03}"), vec![b'w'; 512])
                        .await
                        .unwrap();
                }
            });
            hot("write").filter(|b| *b > 0)
        },
    );
    ringkv_tests::wait_until(
        "read flow to be reported",
        std::time::Duration::from_secs(60),
        || {
            cluster.rt.block_on(async {
                for i in 0..20 {
                    client.get(format!("key{i:03}")).await.unwrap();
                }
            });
            hot("read").filter(|b| *b > 0)
        },
    );
    let table = ctl(&pd, &["region", "hot", "read"]);
    assert!(
        table.ok && table.stdout.contains("read flow") && table.stdout.contains("B/s"),
        "{}",
        table.stdout
    );
    ringkv_tests::wait_until(
        "the store heartbeat to carry flow",
        std::time::Duration::from_secs(60),
        || {
            cluster.rt.block_on(async {
                for i in 0..20 {
                    client.get(format!("key{i:03}")).await.unwrap();
                }
            });
            // Every store holds a replica; the leader's store serves the reads.
            let stores = (0..3).map(|i| cluster.store_id(i).to_string());
            stores
                .into_iter()
                .any(|s| {
                    json(&ctl(&pd, &["--json", "store", "show", &s]))["read_bytes_per_sec"]
                        .as_u64()
                        .is_some_and(|b| b > 0)
                })
                .then_some(())
        },
    );
}

#[test]
fn replicas_are_set_at_runtime_and_repair_and_merging_pause_and_resume() {
    let cluster = ClusterBuilder {
        nodes: 4,
        ..ClusterBuilder::default()
    }
    .start();
    let pd = cluster.pd_addr();
    let too_many = ctl(&pd, &["config", "set", "replicas", "5"]);
    assert!(
        !too_many.ok && too_many.stderr.contains("only 4 stores are up"),
        "{}",
        too_many.stderr
    );
    for bad in ["0", "8", "three"] {
        let out = ctl(&pd, &["config", "set", "replicas", bad]);
        assert!(
            !out.ok && out.stderr.contains("1..=7"),
            "{bad}: {}",
            out.stderr
        );
    }
    // Repair paused: asking for four replicas plans nothing yet.
    let paused = json(&ctl(
        &pd,
        &["--json", "scheduler", "pause", "replica-repair"],
    ));
    assert!(!state(&paused, "replica-repair"));
    let set = json(&ctl(&pd, &["--json", "config", "set", "replicas", "4"]));
    assert_eq!(set["replicas"], 4);
    assert_eq!(set["replica_repair"], false);
    let replicas = || -> usize {
        json(&ctl(&pd, &["--json", "region", "list"]))["regions"][0]["peers"]
            .as_array()
            .unwrap()
            .len()
    };
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(replicas(), 3, "repair is paused");
    let missing = json(&ctl(&pd, &["--json", "region", "check", "miss-peer"]));
    assert_eq!(missing["regions"].as_array().unwrap().len(), 1);
    let resumed = json(&ctl(
        &pd,
        &["--json", "scheduler", "resume", "replica-repair"],
    ));
    assert!(state(&resumed, "replica-repair"));
    ringkv_tests::wait_until(
        "the region to get a fourth replica",
        std::time::Duration::from_secs(60),
        || (replicas() == 4).then_some(()),
    );
    let info = json(&ctl(&pd, &["--json", "cluster"]));
    assert_eq!(info["replicas"], 4);

    let off = json(&ctl(
        &pd,
        &["--json", "scheduler", "remove", "merge-checker"],
    ));
    assert!(!state(&off, "merge-checker"));
    let shown = json(&ctl(&pd, &["--json", "config", "show"]));
    assert_eq!(shown["merge_checker"], false);
    let on = json(&ctl(&pd, &["--json", "scheduler", "add", "merge-checker"]));
    assert!(state(&on, "merge-checker"));
}
