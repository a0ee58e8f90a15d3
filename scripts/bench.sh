#!/usr/bin/env bash
# Benchmark of ct-harmonizer `process` (4-6 minutes on a quiet 2-core machine, plus the build; safe to re-run).
#   1. tiling overhead: process wall time / summed Session::run time (300-slice 512x512 phantom)
#   2. memory: peak RSS on 600 slices / on 100 slices (/usr/bin/time -v)
#   3. the same series through scripts/bench_reference.py (pydicom + NumPy + onnxruntime, what a
#      user would write instead): end-to-end wall-time ratio python/rust, and output agreement
# Every figure is a median of several repetitions. Prints a table and writes it to out/bench/results.txt.
#
# Installs what it needs: scripts/setup.sh (Debian packages, ONNX Runtime), Debian's `time`, a venv
# in .deps/bench-venv (pydicom, numpy, onnxruntime 1.31.1 from PyPI), the release build.
# Environment: BENCH_MODEL (default gaussian-soft-baseline), BENCH_MODELS_DIR (default models),
# BENCH_REPS_TILING / BENCH_REPS_MEMORY / BENCH_REPS_COMPARE (defaults 9 / 5 / 7, at least 3),
# BENCH_QUIET_WAIT (default 120: seconds, in all, to wait before timed runs while other processes
# use more than a quarter of the CPUs; their share during the runs is reported either way).
#
# BENCH_SUITE=inference (issue 13 §3) measures instead the inference cost of EVERY model in
# BENCH_MODELS_DIR (each folder with a model.toml) with ONNX Runtime threads 1 and 2, the Python
# reference beside it (table in out/bench/inference.txt; scripts/bench_driver.py's docs say what each
# column is). Environment: BENCH_REPS (default 5) repetitions per model and thread count,
# BENCH_REPS_SLOW (default 3) on BENCH_SLICES_SLOW output slices (default 300) for a model estimated
# to take over BENCH_SLOW_SECONDS (default 60) per run,
# BENCH_REF_PYTHON (default the venv's Python): a Python that cannot run the reference, or a venv that
# cannot be made, makes its columns say "skipped" instead of ending the run.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

if [[ ! -x /usr/bin/time ]]; then
  echo "bench: installing Debian's time" >&2
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends time >/dev/null
fi

SUITE=${BENCH_SUITE:-process}
VENV=.deps/bench-venv
if ! "$VENV/bin/python" -c 'import pydicom, numpy, onnxruntime as o; assert o.__version__ == "1.31.1"' 2>/dev/null; then
  echo "bench: creating $VENV (pydicom, numpy, onnxruntime 1.31.1)" >&2
  if [[ $SUITE == inference ]]; then
    # The inference suite reports the Python columns as skipped rather than stopping.
    { python3 -m venv "$VENV" && "$VENV/bin/python" -m pip install -q pydicom numpy "onnxruntime==1.31.1"; } ||
      echo "bench: the venv could not be made; the Python reference will be skipped" >&2
  else
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q pydicom numpy "onnxruntime==1.31.1"
  fi
fi

# The tree may be mid-edit by someone else: retry a failed build a few times before giving up.
for try in 1 2 3 4 5; do
  cargo build --release -p ct-harmonizer && break
  ((try < 5)) || { echo "bench: release build failed" >&2; exit 1; }
  echo "bench: build failed (try $try of 5); retrying in 60 s" >&2
  sleep 60
done

MODELS_DIR=${BENCH_MODELS_DIR:-models}
if [[ $SUITE == inference ]]; then
  # Runs under the system Python (3.11: tomllib) so that a broken venv is reported, not fatal.
  exec python3 scripts/bench_driver.py --suite inference \
    --bin target/release/ct-harmonizer --models-dir "$MODELS_DIR" --work out/bench \
    --ref-python "${BENCH_REF_PYTHON-$VENV/bin/python}" \
    --reps "${BENCH_REPS:-5}" --reps-slow "${BENCH_REPS_SLOW:-3}" \
    --slices-slow "${BENCH_SLICES_SLOW:-300}" --slow-seconds "${BENCH_SLOW_SECONDS:-60}" --quiet-wait "${BENCH_QUIET_WAIT:-120}"
fi
MODEL=${BENCH_MODEL:-gaussian-soft-baseline}
if [[ ! -f $MODELS_DIR/$MODEL/model.toml ]]; then
  echo "bench: no model $MODELS_DIR/$MODEL/model.toml; the default baseline is written by" >&2
  echo "       cargo run --release -p ct-training -- export-baseline --out models/gaussian-soft-baseline" >&2
  exit 1
fi

exec "$VENV/bin/python" scripts/bench_driver.py \
  --bin target/release/ct-harmonizer \
  --models-dir "$MODELS_DIR" --model "$MODEL" --work out/bench \
  --reps-tiling "${BENCH_REPS_TILING:-9}" \
  --reps-memory "${BENCH_REPS_MEMORY:-5}" \
  --reps-compare "${BENCH_REPS_COMPARE:-7}" \
  --quiet-wait "${BENCH_QUIET_WAIT:-120}"
