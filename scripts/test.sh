#!/usr/bin/env bash
# Runs every check and test of the workspace on a fresh machine: installs what the tests need
# (scripts/setup.sh), then format, lint (with the CUDA features on, so the GPU paths must compile even
# where no GPU exists; they fall back to the CPU at run time), the whole test suite, and a bounded
# fuzzing run of every input path (scripts/fuzz.sh). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked --features ct-harmonizer/cuda,ct-training/cuda -- -D warnings
cargo test --workspace --locked
# Coverage-guided fuzzing of every input path (PDU, DIMSE command, C-STORE data set, watched-folder
# file, configuration, manifest): each target for FUZZ_SECONDS; a crash fails the run.
FUZZ_SECONDS=${FUZZ_SECONDS:-20} bash scripts/fuzz.sh
