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
# Two PyTorch builds are the reference, each on its own rows (issue 13 §2): Debian's python3-torch
# (1.13, CPU build; installed with apt if missing) and a current PyPI release (torch==2.9.1, installed
# on demand into the venv .deps/torch-venv: about 3 GB with its CUDA wheels, which run on the CPU
# here). Neither is used by the tests or the daemon, and neither is installed in CI. A side that
# cannot be installed or imported is reported as skipped, and no ratio is printed for it.
# BENCH_SPEED_TORCH picks the sides ("pypi debian" by default); PY=/path/to/python adds no install
# and uses that interpreter as the only PyTorch side. Safe to re-run: the data set is made once
# (out/bench-speed/data); run directories are temporary. Prints the table and writes it to
# out/bench-speed/results.txt.
# Environment: BENCH_SPEED_PATCH (32), BENCH_SPEED_NGF (32), BENCH_SPEED_NDF (64),
# BENCH_SPEED_BLOCKS (2), BENCH_SPEED_STEPS (6), BENCH_SPEED_WARMUP (2), BENCH_SPEED_REPS (3),
# BENCH_SPEED_TORCH ("pypi debian"), PY, TORCH_PYPI_VERSION (2.9.1), BENCH_SPEED_TCH (1: also time
# Burn on its LibTorch backend, `ct-train --backend tch`, built by scripts/build_tch.sh; 0 skips it).
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
TORCH_PYPI_VERSION=${TORCH_PYPI_VERSION:-2.9.1}
TORCH_VENV=.deps/torch-venv

# torch_python KIND: prints the interpreter of that PyTorch side, installing it if needed; fails
# (with the reason on stderr) when it cannot be made.
torch_python() {
  case $1 in
  custom)
    "$PY" -c "import torch" >&2 || { echo "bench-speed: $PY cannot import torch" >&2; return 1; }
    echo "$PY" ;;
  debian)
    if ! /usr/bin/python3 -c "import torch" 2>/dev/null; then
      echo "bench-speed: installing Debian's python3-torch (CPU build)" >&2
      local sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
      { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
        --no-install-recommends python3-torch >/dev/null; } >&2 || return 1
    fi
    /usr/bin/python3 -c "import torch" >&2 || return 1
    echo /usr/bin/python3 ;;
  pypi)
    local py=$TORCH_VENV/bin/python
    if ! "$py" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_PYPI_VERSION')" 2>/dev/null; then
      echo "bench-speed: installing torch==$TORCH_PYPI_VERSION from PyPI into $TORCH_VENV (about 3 GB)" >&2
      { python3 -m venv "$TORCH_VENV" && "$py" -m pip install -q "torch==$TORCH_PYPI_VERSION"; } >&2 || return 1
      "$py" -c "import torch" >&2 || return 1
    fi
    echo "$py" ;;
  *) echo "bench-speed: unknown PyTorch side $1 (use pypi, debian)" >&2; return 1 ;;
  esac
}

if [[ -n ${PY:-} ]]; then SIDES=(custom); else read -r -a SIDES <<<"${BENCH_SPEED_TORCH:-pypi debian}"; fi
declare -A TPY TVER
TORCH_SIDES=()
SKIPPED=()
for side in "${SIDES[@]}"; do
  if py=$(torch_python "$side"); then
    TPY[$side]=$py
    TVER[$side]=$("$py" -c "import torch; print(torch.__version__)")
    TORCH_SIDES+=("$side")
  else
    echo "bench-speed: the $side PyTorch could not be installed or imported: its rows are skipped" >&2
    SKIPPED+=("$side")
  fi
done

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

# Burn on LibTorch's CPU kernels (a second binary: the feature links libtorch).
TCH_BIN=""
if [[ ${BENCH_SPEED_TCH:-1} == 1 ]]; then
  if TCH_BIN=$(bash scripts/build_tch.sh); then :; else
    echo "bench-speed: ct-train with --features tch could not be built: its rows are skipped" >&2
    TCH_BIN=""
  fi
fi

# burn_step THREADS [--naive] [--bin B] [train options]: median seconds per step after the
# warm-up (losses.csv column 9). The threads bound rayon (burn-flex) and OpenMP (LibTorch).
burn_step() {
  local threads=$1; shift
  local bin=$BIN backend=(--backend flex)
  if [[ ${1:-} == --bin ]]; then bin=$2; backend=(); shift 2; fi
  rm -rf "$TMP/run"
  RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads RUST_LOG=warn "$bin" train --data "$DATA" --out "$TMP/run" --task kernel --mode paired \
    --blocks "$BLOCKS" --steps "$STEPS" --patch "$PATCH" --ngf "$NGF" --ndf "$NDF" --seed 1 \
    --checkpoint-every 1000000 "${backend[@]}" "$@" >/dev/null 2>&1
  tail -n +2 "$TMP/run/losses.csv" | awk -F, -v w="$WARMUP" '$1 > w {print $9}' | median
}

# torch_step SIDE THREADS: median seconds per step after the warm-up.
torch_step() {
  local py=${TPY[$1]}; shift
  "$py" scripts/bench_speed_torch.py --patch "$PATCH" --ngf "$NGF" --ndf "$NDF" \
    --blocks "$BLOCKS" --steps "$STEPS" --threads "$1" |
    awk -v w="$WARMUP" '$1 == "step" && $2 > w {print $3}' | median
}

CORES=$(nproc)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {print a / b}'; }
declare -a R_N1 R_NN R_REV R_L1 R_LN
declare -A T1 TN Q1 QN QREV L1 LN
for ((r = 1; r <= REPS; r++)); do
  b1=$(burn_step 1 --naive)
  bn=$(burn_step "$CORES" --naive)
  br=$(burn_step "$CORES")
  R_N1+=("$b1"); R_NN+=("$bn"); R_REV+=("$br")
  msg="bench-speed: rep $r: burn naive $b1 s (1 thread) $bn s ($CORES), burn reversible $br s ($CORES)"
  if [[ -n $TCH_BIN ]]; then
    l1=$(burn_step 1 --bin "$TCH_BIN" --naive --backend tch)
    ln=$(burn_step "$CORES" --bin "$TCH_BIN" --naive --backend tch)
    R_L1+=("$l1"); R_LN+=("$ln")
    msg+=", burn libtorch naive $l1 s (1 thread) $ln s ($CORES)"
  fi
  for side in "${TORCH_SIDES[@]}"; do
    t1=$(torch_step "$side" 1)
    tn=$(torch_step "$side" "$CORES")
    msg+=", torch ${TVER[$side]} $t1 s (1 thread) $tn s ($CORES)"
    T1[$side]+=" $t1"; TN[$side]+=" $tn"
    Q1[$side]+=" $(ratio "$b1" "$t1")"; QN[$side]+=" $(ratio "$bn" "$tn")"; QREV[$side]+=" $(ratio "$br" "$tn")"
    if [[ -n $TCH_BIN ]]; then
      L1[$side]+=" $(ratio "$l1" "$t1")"; LN[$side]+=" $(ratio "$ln" "$tn")"
    fi
  done
  echo "$msg" >&2
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
  if [[ -n $TCH_BIN ]]; then
    printf '| %-44s | %10.3f |\n' "Burn 0.21 LibTorch (tch), --naive, 1 thread" "$(med "${R_L1[@]}")"
    printf '| %-44s | %10.3f |\n' "Burn 0.21 LibTorch (tch), --naive, $CORES threads" "$(med "${R_LN[@]}")"
  else
    printf '| %-44s | %10s |\n' "Burn 0.21 LibTorch (tch): not built" "skipped"
  fi
  for side in "${TORCH_SIDES[@]}"; do
    # shellcheck disable=SC2086 # the per-side lists are space-separated numbers
    printf '| %-44s | %10.3f |\n' "PyTorch ${TVER[$side]} ($side) CPU, 1 thread" "$(med ${T1[$side]})"
    # shellcheck disable=SC2086
    printf '| %-44s | %10.3f |\n' "PyTorch ${TVER[$side]} ($side) CPU, $CORES threads" "$(med ${TN[$side]})"
  done
  for side in "${SKIPPED[@]}"; do
    printf '| %-44s | %10s |\n' "PyTorch ($side): could not be installed" "skipped"
  done
  echo
  for side in "${TORCH_SIDES[@]}"; do
    # shellcheck disable=SC2086
    {
      printf 'ratio Burn naive / PyTorch %s, 1 thread:        %.2f (goal <= 1.5)\n' "${TVER[$side]}" "$(med ${Q1[$side]})"
      printf 'ratio Burn naive / PyTorch %s, %s threads:       %.2f (goal <= 1.5)\n' "${TVER[$side]}" "$CORES" "$(med ${QN[$side]})"
      printf 'ratio Burn reversible / PyTorch %s, %s threads:  %.2f\n' "${TVER[$side]}" "$CORES" "$(med ${QREV[$side]})"
      if [[ -n $TCH_BIN ]]; then
        printf 'ratio Burn LibTorch / PyTorch %s, 1 thread:     %.2f (goal <= 1.5)\n' "${TVER[$side]}" "$(med ${L1[$side]})"
        printf 'ratio Burn LibTorch / PyTorch %s, %s threads:    %.2f (goal <= 1.5)\n' "${TVER[$side]}" "$CORES" "$(med ${LN[$side]})"
      fi
    }
  done
  ((${#TORCH_SIDES[@]})) || echo "no PyTorch side could be run: no ratio is printed"
} | tee "$WORK/results.txt"
