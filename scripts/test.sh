#!/usr/bin/env bash
# Runs every test of ringkv: formatting, lints, then the whole workspace's tests (unit, in-process
# cluster, and multi-process tests of the real binaries, which are built first).
# Needs only the Rust toolchain; cargo-nextest is used when installed, cargo test otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
