//! The load generator's command line: bad options are refused before anything starts, with
//! the option named; `--help` explains every workload.

use std::process::Command;

fn bench(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringkv-bench"))
        .args(args)
        .output()
        .expect("ringkv-bench runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn bad_run_options_are_refused_with_the_option_named() {
    for (args, needle) in [
        (vec!["run", "--workload", "ycsb-z"], "unknown workload"),
        (vec!["run", "--records", "0"], "--records"),
        (vec!["run", "--clients", "0"], "--clients"),
        (vec!["run", "--seconds", "0"], "--seconds"),
        (vec!["run", "--ops", "0"], "--ops"),
        (vec!["run", "--workload", "txn-3"], "unknown workload"),
        (vec!["run", "--txn-commit", "three-pc"], "three-pc"),
        (vec!["run", "--no-ringkv"], "--no-ringkv"),
        (
            vec!["run", "--read-mode", "read-index", "--pd", "127.0.0.1:1"],
            "read-index",
        ),
        (vec!["run", "--distribution", "gaussian"], "gaussian"),
        (
            vec!["run", "--read-mode", "stale", "--staleness-ms", "0"],
            "--staleness-ms",
        ),
    ] {
        let (code, text) = bench(&args);
        assert_ne!(code, 0, "{args:?} was accepted");
        assert!(text.contains(needle), "{args:?}: {text}");
    }
}

#[test]
fn report_renders_saved_runs_and_refuses_what_is_not_one() {
    let dir = tempfile::tempdir().unwrap();
    let doc = r#"{"results":[{"operations":[{"errors":0,"max_ms":3.0,"operation":"txn","ops":10,"ops_per_second":5.0,"p50_ms":1.0,"p90_ms":2.0,"p999_ms":3.0,"p99_ms":2.5}],"target":"etcd"}],"spec":{"clients":2,"records":10,"scan_length_max":100,"seconds":2,"value_bytes":100,"workload":{"name":"txn-2"}}}"#;
    std::fs::write(dir.path().join("a.json"), doc).unwrap();
    let (code, text) = bench(&["report", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("#### txn-2: 2 clients") && text.contains("| etcd | txn | 5 |"),
        "{text}"
    );
    std::fs::write(dir.path().join("b.json"), "{}").unwrap();
    let (code, text) = bench(&["report", dir.path().to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(text.contains("b.json"), "{text}");
    let empty = tempfile::tempdir().unwrap();
    let (code, text) = bench(&["report", empty.path().to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(text.contains("no JSON files"), "{text}");
}

#[test]
fn help_lists_the_workloads_and_read_modes() {
    let (code, text) = bench(&["run", "--help"]);
    assert_eq!(code, 0, "{text}");
    for word in [
        "ycsb-a",
        "ycsb-f",
        "zipfian",
        "latest",
        "follower",
        "read-index",
        "--etcd",
        "txn-10",
        "two-pc",
        "--ops",
        "stale",
        "--staleness-ms",
    ] {
        assert!(
            text.contains(word),
            "--help does not mention {word}:\n{text}"
        );
    }
}
