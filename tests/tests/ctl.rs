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
    let j = json(&ctl(&pd, &["--json", "cluster"]));
    assert_eq!(j["bootstrapped"], true);
    assert_eq!(j["stores"], 3);
    assert!(j["regions"].as_u64().unwrap() >= 1);

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
