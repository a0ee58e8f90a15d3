#!/usr/bin/env bash
# Memory against depth (issue 4, "Benchmarks"; seed 000, Table 2): peak RSS of one training step of
# the 3D RevGAN for N = 0, 1, 2, 4, 8 reversible blocks, reversible backward vs `--naive` autodiff,
# same patch size. Goal: reversible grows <= 10% from 0 to 8 blocks while naive grows with depth.
#
# Each figure is the median "Maximum resident set size" (/usr/bin/time -v) of BENCH_MEM_REPS
# separate `ct-train train --steps 1` processes. That is the peak of the whole process, so it holds
# a fixed part (binary, allocator, the loaded volumes, model and optimizer state, the checkpoint
# write). To show it, the same command with `--steps 0` (everything but the step) is measured too,
# and the table also gives the step's own share: peak(steps 1) - peak(steps 0).
#
# Safe to re-run: the data set is made once (out/bench-memory/data); run directories are temporary.
# Prints the table and writes it to out/bench-memory/results.txt.
# Environment: BENCH_MEM_PATCH (default 32; 48 keeps a step under ~30 s on 2 cores, but the whole
# sweep then takes ~20 min), BENCH_MEM_NGF (default 32, the reference), BENCH_MEM_REPS (default 3),
# BENCH_MEM_BLOCKS (default "0 1 2 4 8").
set -euo pipefail
cd "$(dirname "$0")/.."

PATCH=${BENCH_MEM_PATCH:-32}
NGF=${BENCH_MEM_NGF:-32}
REPS=${BENCH_MEM_REPS:-3}
BLOCKS=${BENCH_MEM_BLOCKS:-"0 1 2 4 8"}
WORK=out/bench-memory
DATA=$WORK/data
# The phantom's in-plane size and slice count: at least the patch edge (and 64 x 32 at least).
SIZE=$((PATCH > 64 ? PATCH : 64))
SLICES=$((PATCH > 32 ? PATCH : 32))
BIN=target/release/ct-train

if [[ ! -x /usr/bin/time ]]; then
  echo "bench-memory: installing Debian's time" >&2
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends time >/dev/null
fi

cargo build --release -p ct-training

mkdir -p "$WORK"
STAMP="$DATA/.bench-memory-${SIZE}x${SLICES}"
if [[ ! -f $STAMP ]]; then
  echo "bench-memory: making the paired phantom data set (${SIZE}^2 x $SLICES, 1 case) in $DATA" >&2
  rm -rf "$DATA"
  "$BIN" synth --out "$DATA" --source phantom --size "$SIZE" --slices "$SLICES" --cases 1 \
    --seed 0 --no-thick >&2
  touch "$STAMP"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench-memory.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# peak_kib STEPS BLOCKS [--naive]: median max RSS (KiB) of REPS processes; the last run's
# directory stays in $TMP/run (its losses.csv gives the step's seconds).
peak_kib() {
  local steps=$1 blocks=$2 naive=${3:-} vals=() i run log kib
  for ((i = 0; i < REPS; i++)); do
    run="$TMP/run"
    log="$TMP/time.log"
    rm -rf "$run"
    # shellcheck disable=SC2086
    if ! /usr/bin/time -v -o "$log" "$BIN" train --data "$DATA" --out "$run" --task kernel \
      --mode paired --blocks "$blocks" $naive --steps "$steps" --patch "$PATCH" --ngf "$NGF" \
      --seed 1 --force >"$TMP/stdout" 2>"$TMP/stderr"; then
      echo "bench-memory: ct-train train failed (steps $steps, blocks $blocks $naive):" >&2
      cat "$TMP/stderr" >&2
      exit 1
    fi
    kib=$(awk -F': *' '/Maximum resident set size/ {print $2}' "$log")
    vals+=("$kib")
  done
  printf '%s\n' "${vals[@]}" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'
}

mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%+.1f%%", (b - a) / a * 100}'; }

declare -A REV NAI BASE REV_S NAI_S
for n in $BLOCKS; do
  echo "bench-memory: N = $n" >&2
  BASE[$n]=$(peak_kib 0 "$n")
  REV[$n]=$(peak_kib 1 "$n")
  REV_S[$n]=$(awk -F, 'NR == 2 {print $9}' "$TMP/run/losses.csv")
  NAI[$n]=$(peak_kib 1 "$n" --naive)
  NAI_S[$n]=$(awk -F, 'NR == 2 {print $9}' "$TMP/run/losses.csv")
done

set -- $BLOCKS
FIRST=$1
LAST=${!#}
{
  echo "Memory against depth: ct-train train --task kernel --mode paired --steps 1 --patch $PATCH --ngf $NGF --seed 1"
  echo "data: ct-train synth phantom ${SIZE}x${SIZE}, $SLICES slices, 1 case; median of $REPS runs; $(nproc) CPUs"
  echo "peak = Maximum resident set size of the whole process (/usr/bin/time -v);"
  echo "fixed = the same with --steps 0 (binary, data, model, optimizers, checkpoint: no step);"
  echo "step = peak - fixed."
  echo
  printf '%3s | %14s | %9s | %12s | %9s | %9s | %6s | %6s\n' \
    N "reversible MiB" "naive MiB" "fixed MiB" "rev step" "naive step" "rev s" "naive s"
  printf '%s\n' "----+----------------+-----------+--------------+-----------+------------+--------+--------"
  for n in $BLOCKS; do
    printf '%3s | %14s | %9s | %12s | %9s | %10s | %6s | %6s\n' "$n" "$(mib "${REV[$n]}")" \
      "$(mib "${NAI[$n]}")" "$(mib "${BASE[$n]}")" \
      "$(mib $((REV[$n] - BASE[$n])))" "$(mib $((NAI[$n] - BASE[$n])))" \
      "${REV_S[$n]}" "${NAI_S[$n]}"
  done
  echo
  echo "growth of the process peak $FIRST -> $LAST blocks: reversible $(pct "${REV[$FIRST]}" "${REV[$LAST]}"), naive $(pct "${NAI[$FIRST]}" "${NAI[$LAST]}")"
  echo "growth of the step's share $FIRST -> $LAST blocks: reversible $(pct $((REV[$FIRST] - BASE[$FIRST])) $((REV[$LAST] - BASE[$LAST]))), naive $(pct $((NAI[$FIRST] - BASE[$FIRST])) $((NAI[$LAST] - BASE[$LAST])))"
  goal=$(awk -v a="${REV[$FIRST]}" -v b="${REV[$LAST]}" -v c="${NAI[$FIRST]}" -v d="${NAI[$LAST]}" \
    'BEGIN {r = (b - a) / a * 100; q = (d - c) / c * 100; print (r <= 10 && q > r) ? "met" : "not met"}')
  echo "goal (reversible peak grows <= 10% while naive grows more): $goal"
} | tee "$WORK/results.txt"
