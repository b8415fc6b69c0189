//! `ringkv-placement`: runs one placement member.

use clap::Parser;

#[derive(Parser)]
#[command(name = "ringkv-placement", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    args: ringkv_placement::cli::PlacementArgs,
}

fn main() {
    std::process::exit(Cli::parse().args.run());
}
