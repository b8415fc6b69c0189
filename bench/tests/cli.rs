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
        (vec!["run", "--no-ringkv"], "--no-ringkv"),
        (
            vec!["run", "--read-mode", "read-index", "--pd", "127.0.0.1:1"],
            "read-index",
        ),
        (vec!["run", "--distribution", "gaussian"], "gaussian"),
    ] {
        let (code, text) = bench(&args);
        assert_ne!(code, 0, "{args:?} was accepted");
        assert!(text.contains(needle), "{args:?}: {text}");
    }
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
    ] {
        assert!(
            text.contains(word),
            "--help does not mention {word}:\n{text}"
        );
    }
}
