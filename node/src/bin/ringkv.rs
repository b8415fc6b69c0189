//! `ringkv`: the all-in-one binary. `ringkv playground` starts a local cluster; `ringkv node`
//! and `ringkv placement` run single members like `ringkv-node` and `ringkv-placement`.

use clap::{Parser, Subcommand};
use ringkv_node::playground::{self, PlaygroundOptions};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "ringkv", version, about = "ringkv: a distributed, transactional key-value database", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local cluster (one placement member and N nodes, as separate processes) on
    /// 127.0.0.1, print its endpoints, and stop it cleanly on Ctrl-C.
    Playground {
        /// Number of nodes (1..=7); regions get min(nodes, 3) replicas.
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Directory for all data and logs; reused across runs (delete it for a fresh cluster).
        #[arg(long, default_value = ".ringkv-playground")]
        dir: PathBuf,
        /// Port of the placement member.
        #[arg(long, default_value_t = 2379)]
        placement_port: u16,
        /// Port of the first node; the others follow.
        #[arg(long, default_value_t = 20160)]
        node_port: u16,
        /// Log filter for every member.
        #[arg(long, default_value = "info")]
        log_level: String,
    },
    /// Run one storage node (same options as ringkv-node).
    Node(ringkv_node::cli::NodeArgs),
    /// Run one placement member (same options as ringkv-placement).
    Placement(ringkv_placement::cli::PlacementArgs),
}

fn main() {
    let code = match Cli::parse().command {
        Command::Playground {
            nodes,
            dir,
            placement_port,
            node_port,
            log_level,
        } => {
            match playground::run(PlaygroundOptions {
                nodes,
                dir,
                placement_port,
                node_port_base: node_port,
                log_level,
            }) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("ringkv playground: {e}");
                    1
                }
            }
        }
        Command::Node(args) => args.run(),
        Command::Placement(args) => args.run(),
    };
    std::process::exit(code);
}
