//! `ringkv playground`: a local cluster of real processes (one placement member, N nodes) on
//! 127.0.0.1, for trying ringkv out.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Options of the playground.
#[derive(Debug, Clone)]
pub struct PlaygroundOptions {
    pub nodes: u32,
    pub dir: PathBuf,
    pub placement_port: u16,
    pub node_port_base: u16,
    pub log_level: String,
}

struct Member {
    name: String,
    child: Child,
}

/// Starts the cluster, prints its endpoints, waits for Ctrl-C, stops it. Errors say what to do.
pub fn run(opts: PlaygroundOptions) -> Result<(), String> {
    if opts.nodes == 0 || opts.nodes > 7 {
        return Err(format!("--nodes {} is outside 1..=7", opts.nodes));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    std::fs::create_dir_all(&opts.dir)
        .map_err(|e| format!("cannot create {}: {e}", opts.dir.display()))?;
    let logs = opts.dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("cannot create {}: {e}", logs.display()))?;
    let replicas = opts.nodes.min(3);
    let pd_addr = format!("127.0.0.1:{}", opts.placement_port);
    let mut members = Vec::new();
    let spawn = |name: &str, args: Vec<String>| -> Result<Member, String> {
        let log_path = logs.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&exe)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        Ok(Member {
            name: name.to_string(),
            child,
        })
    };
    members.push(spawn(
        "placement",
        vec![
            "placement".into(),
            "--data-dir".into(),
            path_arg(&opts.dir.join("placement")),
            "--listen-addr".into(),
            pd_addr.clone(),
            "--replicas".into(),
            replicas.to_string(),
            "--log-level".into(),
            opts.log_level.clone(),
        ],
    )?);
    let result = (|| {
        wait_for_port(&pd_addr, Duration::from_secs(20), &mut members)?;
        let mut node_addrs = Vec::new();
        for i in 1..=opts.nodes {
            let addr = format!("127.0.0.1:{}", opts.node_port_base + i as u16 - 1);
            members.push(spawn(
                &format!("node{i}"),
                vec![
                    "node".into(),
                    "--data-dir".into(),
                    path_arg(&opts.dir.join(format!("node{i}"))),
                    "--listen-addr".into(),
                    addr.clone(),
                    "--placement".into(),
                    pd_addr.clone(),
                    "--log-level".into(),
                    opts.log_level.clone(),
                ],
            )?);
            node_addrs.push(addr);
        }
        for addr in &node_addrs {
            wait_for_port(addr, Duration::from_secs(30), &mut members)?;
        }
        println!(
            "ringkv playground is up ({} nodes, {} replicas per region)",
            opts.nodes, replicas
        );
        println!("  placement: {pd_addr}");
        for (i, a) in node_addrs.iter().enumerate() {
            println!("  node{}:     {a}", i + 1);
        }
        println!("  data:      {}", opts.dir.display());
        println!("  logs:      {}", logs.display());
        println!("Connect with RawClient::connect(&[\"{pd_addr}\"]). Press Ctrl-C to stop.");
        wait_for_signal_or_exit(&mut members)
    })();
    stop_all(&mut members);
    result
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn wait_for_port(addr: &str, limit: Duration, members: &mut [Member]) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        check_alive(members)?;
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "nothing listens on {addr} after {limit:?}; see the logs directory"
    ))
}

fn check_alive(members: &mut [Member]) -> Result<(), String> {
    for m in members.iter_mut() {
        if let Ok(Some(status)) = m.child.try_wait() {
            return Err(format!(
                "{} exited with {status}; see its log in the logs directory",
                m.name
            ));
        }
    }
    Ok(())
}

fn wait_for_signal_or_exit(members: &mut [Member]) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| e.to_string())?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = term.recv() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(500)) => check_alive(members)?,
            }
        }
    })
}

fn stop_all(members: &mut [Member]) {
    println!("stopping the playground...");
    // Nodes first, placement last, each with SIGTERM and then SIGKILL after 10 s.
    for m in members.iter_mut().rev() {
        // SAFETY: sending a signal to our own child's pid.
        unsafe { libc::kill(m.child.id() as libc::pid_t, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for m in members.iter_mut().rev() {
        loop {
            match m.child.try_wait() {
                Ok(Some(_)) => break,
                _ if Instant::now() > deadline => {
                    let _ = m.child.kill();
                    let _ = m.child.wait();
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    println!("stopped");
}
