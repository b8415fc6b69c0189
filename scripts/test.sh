#!/usr/bin/env bash
# Runs every test of ringkv: formatting, lints, then the whole workspace's tests (unit, in-process
# cluster, and multi-process tests of the real binaries, which are built first).
# Needs the Rust toolchain and root (the Ansible deployment test creates network namespaces;
# scripts/ansible-deps.sh installs its Debian and PyPI packages). cargo-nextest is used when
# installed, cargo test otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
# The Ansible deployment test's hosts and tools (sshd, iproute2, ansible-core, ansible-lint).
./scripts/ansible-deps.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
