#!/usr/bin/env bash
# Runs every check and test of the workspace on a fresh machine: installs what the tests need
# (scripts/setup.sh), then format, lint, the CUDA build path, and the whole test suite. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The GPU path must compile even where no GPU exists (it falls back to the CPU at run time).
cargo check --workspace --locked --features ct-harmonizer/cuda
cargo test --workspace --locked
