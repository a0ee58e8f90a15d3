#!/usr/bin/env bash
# Daemon benchmarks (ingest, forward, latency, memory under load) against DCMTK in one run.
# Results: printed and written to out/bench-daemon/results.txt. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked -p ct-harmonizer
# BENCH_IMAGES (300), BENCH_REPS (3), BENCH_ONLY=ingest (ingest and durable-limit rows only)
python3 scripts/bench_daemon.py
