#!/usr/bin/env bash
# Runs every check and test of the workspace on a fresh machine: installs what the tests need
# (scripts/setup.sh), then format, layering (scripts/layers.sh), lint (with the CUDA features on, so the GPU paths must compile even
# where no GPU exists; they fall back to the CPU at run time), the whole test suite, and a bounded
# fuzzing run of every input path (scripts/fuzz.sh). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
# Layering of src/ (a module imports only from layers below it) and the training crate without the
# daemon's dependencies (issue 10).
bash scripts/layers.sh
# The benchmark driver's skip logic (issue 13: an unmeasured row never prints a ratio).
python3 scripts/test_bench_driver.py
if cargo tree -p ct-training -e normal --locked | grep -E ' (tokio|axum|dicom-ul|prometheus-client|sd-notify) '; then
  echo "test.sh: ct-training pulls in the daemon's dependencies (see above)" >&2
  exit 1
fi
cargo check -p ct-harmonizer --no-default-features --locked
# The association stream reader alone, as the fuzz crate builds it (fuzz target pdu_stream).
cargo check -p ct-harmonizer --no-default-features --features wire --locked
cargo clippy --workspace --all-targets --locked --features ct-harmonizer/cuda,ct-training/cuda -- -D warnings
cargo test --workspace --locked
# Coverage-guided fuzzing of every input path (PDU, association stream, DIMSE command, C-STORE data set, watched-folder
# file, configuration, manifest): each target for FUZZ_SECONDS; a crash fails the run.
FUZZ_SECONDS=${FUZZ_SECONDS:-20} bash scripts/fuzz.sh
