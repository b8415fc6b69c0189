//! `ringkv-node`: runs one storage node.

use clap::Parser;

#[derive(Parser)]
#[command(name = "ringkv-node", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    args: ringkv_node::cli::NodeArgs,
}

fn main() {
    std::process::exit(Cli::parse().args.run());
}
