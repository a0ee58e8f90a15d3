#!/usr/bin/env bash
# Training speed against the reference (issue 4, "Benchmarks"): seconds per training step of the
# same 3D RevGAN (paired mode, same patch, ngf, ndf and blocks) in Burn (`ct-train train`, flex CPU
# backend) and in PyTorch on the CPU (scripts/bench_speed_torch.py, plain autograd), side by side
# in one run. Both sides are timed on 1 thread (RAYON_NUM_THREADS=1 for Burn's flex backend,
# torch.set_num_threads(1)) and on all cores: the ratios compare like with like.
#
# Each repetition runs every side once, interleaved, for BENCH_SPEED_STEPS steps and takes the
# median of the per-step times after the first BENCH_SPEED_WARMUP; the figures are the medians
# over repetitions of the per-repetition ratios (the machine is shared and noisy).
#
# PyTorch comes from Debian's python3-torch (CPU build, installed here if missing; it is used only
# by this benchmark, never by the tests or the daemon). Safe to re-run: the data set is made once
# (out/bench-speed/data); run directories are temporary. Prints the table and writes it to
# out/bench-speed/results.txt.
# Environment: BENCH_SPEED_PATCH (32), BENCH_SPEED_NGF (32), BENCH_SPEED_NDF (64),
# BENCH_SPEED_BLOCKS (2), BENCH_SPEED_STEPS (6), BENCH_SPEED_WARMUP (2), BENCH_SPEED_REPS (3).
set -euo pipefail
cd "$(dirname "$0")/.."

PATCH=${BENCH_SPEED_PATCH:-32}
NGF=${BENCH_SPEED_NGF:-32}
NDF=${BENCH_SPEED_NDF:-64}
BLOCKS=${BENCH_SPEED_BLOCKS:-2}
STEPS=${BENCH_SPEED_STEPS:-6}
WARMUP=${BENCH_SPEED_WARMUP:-2}
REPS=${BENCH_SPEED_REPS:-3}
WORK=out/bench-speed
DATA=$WORK/data
SIZE=$((PATCH > 64 ? PATCH : 64))
SLICES=$((PATCH > 32 ? PATCH : 32))
BIN=target/release/ct-train
PY=/usr/bin/python3

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "bench-speed: installing Debian's python3-torch (CPU build)" >&2
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-torch >/dev/null
fi
TORCH_VERSION=$("$PY" -c "import torch; print(torch.__version__)")

cargo build --release -p ct-training

mkdir -p "$WORK"
STAMP="$DATA/.bench-speed-${SIZE}x${SLICES}"
if [[ ! -f $STAMP ]]; then
  echo "bench-speed: making the paired phantom data set (${SIZE}^2 x $SLICES, 1 case) in $DATA" >&2
  rm -rf "$DATA"
  "$BIN" synth --out "$DATA" --source phantom --size "$SIZE" --slices "$SLICES" --cases 1 \
    --seed 0 --no-thick >&2
  touch "$STAMP"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench-speed.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# median of the numbers on stdin
median() { sort -g | awk '{v[NR]=$1} END {if (NR == 0) {print "nan"} else if (NR % 2) {print v[(NR+1)/2]} else {print (v[NR/2]+v[NR/2+1])/2}}'; }

# burn_step THREADS [--naive]: median seconds per step after the warm-up (losses.csv column 9).
burn_step() {
  local threads=$1; shift
  rm -rf "$TMP/run"
  RAYON_NUM_THREADS=$threads RUST_LOG=warn "$BIN" train --data "$DATA" --out "$TMP/run" --task kernel --mode paired \
    --blocks "$BLOCKS" --steps "$STEPS" --patch "$PATCH" --ngf "$NGF" --ndf "$NDF" --seed 1 \
    --checkpoint-every 1000000 "$@" >/dev/null 2>&1
  tail -n +2 "$TMP/run/losses.csv" | awk -F, -v w="$WARMUP" '$1 > w {print $9}' | median
}

# torch_step THREADS: median seconds per step after the warm-up.
torch_step() {
  "$PY" scripts/bench_speed_torch.py --patch "$PATCH" --ngf "$NGF" --ndf "$NDF" \
    --blocks "$BLOCKS" --steps "$STEPS" --threads "$1" |
    awk -v w="$WARMUP" '$1 == "step" && $2 > w {print $3}' | median
}

CORES=$(nproc)
declare -a R_N1 R_NN R_REV R_T1 R_TN Q1 QN QREV
for ((r = 1; r <= REPS; r++)); do
  b1=$(burn_step 1 --naive)
  bn=$(burn_step "$CORES" --naive)
  br=$(burn_step "$CORES")
  t1=$(torch_step 1)
  tn=$(torch_step "$CORES")
  echo "bench-speed: rep $r: burn naive $b1 s (1 thread) $bn s ($CORES), burn reversible $br s ($CORES), torch $t1 s (1 thread) $tn s ($CORES)" >&2
  R_N1+=("$b1"); R_NN+=("$bn"); R_REV+=("$br"); R_T1+=("$t1"); R_TN+=("$tn")
  Q1+=("$(awk -v a="$b1" -v b="$t1" 'BEGIN {print a / b}')")
  QN+=("$(awk -v a="$bn" -v b="$tn" 'BEGIN {print a / b}')")
  QREV+=("$(awk -v a="$br" -v b="$tn" 'BEGIN {print a / b}')")
done
med() { printf '%s\n' "$@" | median; }

{
  echo "Training speed, 3D RevGAN paired step, patch ${PATCH}^3, ngf $NGF, ndf $NDF, $BLOCKS reversible blocks"
  echo "(median of $REPS interleaved repetitions of $STEPS steps, first $WARMUP dropped; $(date -u +%F), $CORES cores)"
  echo
  printf '| %-44s | %10s |\n' "side" "s / step"
  printf '|%s|%s|\n' "----------------------------------------------" "------------"
  printf '| %-44s | %10.3f |\n' "Burn 0.21 flex, --naive, 1 thread" "$(med "${R_N1[@]}")"
  printf '| %-44s | %10.3f |\n' "Burn 0.21 flex, --naive, $CORES threads" "$(med "${R_NN[@]}")"
  printf '| %-44s | %10.3f |\n' "Burn 0.21 flex, reversible, $CORES threads" "$(med "${R_REV[@]}")"
  printf '| %-44s | %10.3f |\n' "PyTorch $TORCH_VERSION CPU, 1 thread" "$(med "${R_T1[@]}")"
  printf '| %-44s | %10.3f |\n' "PyTorch $TORCH_VERSION CPU, $CORES threads" "$(med "${R_TN[@]}")"
  echo
  printf 'ratio Burn naive / PyTorch, 1 thread:          %.2f (goal <= 2)\n' "$(med "${Q1[@]}")"
  printf 'ratio Burn naive / PyTorch, %s threads:         %.2f (goal <= 2)\n' "$CORES" "$(med "${QN[@]}")"
  printf 'ratio Burn reversible / PyTorch, %s threads:    %.2f\n' "$CORES" "$(med "${QREV[@]}")"
} | tee "$WORK/results.txt"
