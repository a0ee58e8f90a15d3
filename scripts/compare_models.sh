#!/usr/bin/env bash
# The comparison table of issue 12: every seed family and option trained on the same realistic
# simulated pairs (issue 11, `ct-train synth` default mode) with ONE step budget per row, then
# evaluated by one `ct-train eval` call on the same held-out cases beside the identity, the tuned
# Gaussian, the least-squares 3x9x9 FIR and TV + Gaussian (all tuned on the tuning cases).
#
#   bash scripts/compare_models.sh                 # data (once), rows (resumed), eval, table
#   COMPARE_STEPS=300 COMPARE_ROWS="paired-0 megan" bash scripts/compare_models.sh
#
# Rows (RevGAN: ngf 16, ndf 32, patch 32, seed 7, global residual with the identity skip so every
# row starts at the input; the as-specified plain generator is in the README's issue-4 table):
#   paired-0 / paired-2        paired pix2pix loss, 0 / 2 reversible blocks
#   unpaired-0 / unpaired-2    CycleGAN loss on UNPAIRED data (`synth --unpaired`: different
#                              cases per domain), 0 / 2 blocks
#   amortised                  paired-2 + HA-GAN amortised training (seed 002)
#   cycle-medgan               unpaired-2 + cycle-perceptual and cycle-style (seed 003), weights 1
#   cyclegan-report            unpaired-2 + SSIM cycle, identity 0.5, k 4:1, lr G 1e-4 / D 1e-3
#                              (seed 004)
#   megan                      MEGAN, 2 stages, ngf 8, 1 residual block, LR factor 2 (as
#                              models/megan-kernel; seed 001; trains on burn-flex only)
# Quality runs on LibTorch's CPU kernels when target/release/ct-train-tch exists
# (scripts/build_tch.sh), else burn-flex; the figures of one row do not depend on the backend
# beyond float rounding (trainer::run::libtorch_tests). Peak training memory is measured for every
# row on burn-flex, so the column compares like with like: the median "Maximum resident set
# size" (/usr/bin/time -v) of 3 separate `--steps 2` processes of the row's command.
#
# Data: COMPARE_DATA (default out/compare/data) holds train/, tune/, heldout/ and unpaired/ as
# `ct-train synth` writes them (made here if missing: 128^2 x 32 phantoms, source doses 6e3-4e4
# photons). Outputs: out/compare/{runs,models}/, eval.csv, table.md (printed at the end).
# Safe to re-run: finished rows are kept, unfinished ones resumed.
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=${COMPARE_STEPS:-300}
ROWS=${COMPARE_ROWS:-"paired-0 paired-2 unpaired-0 unpaired-2 amortised cycle-medgan cyclegan-report megan"}
W=out/compare
D=${COMPARE_DATA:-$W/data}
R=$W/runs
M=$W/models
BIN=target/release/ct-train
TCH=target/release/ct-train-tch

if [[ ! -x /usr/bin/time ]]; then
  echo "compare: installing Debian's time" >&2
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends time >/dev/null
fi
bash scripts/setup.sh
cargo build --release -p ct-training
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.deps/ort/onnxruntime/capi/libonnxruntime.so.1.31.1}
mkdir -p "$D" "$R" "$M"

C=(--source phantom --size 128 --slices 32 --source-photons 6000,40000)
mk() { # mk OUT ARGS...: once
  local out=$1; shift
  [[ -f $D/$out/synth.toml ]] || "$BIN" synth --out "$D/$out" "${C[@]}" "$@"
}
mk train --cases 8 --seed 3000
mk tune --cases 2 --seed 1000 --format nifti
mk heldout --cases 2 --seed 2000
mk unpaired --unpaired --cases 8 --seed 4000

REV=(--task kernel --patch 32 --ngf 16 --ndf 32 --seed 7 --residual --checkpoint-every 100)
UNP=(--mode unpaired --unpaired-a "$D/unpaired/unpaired/a" --unpaired-b "$D/unpaired/unpaired/b")
row_args() { # the training options of a row (without --out / --steps)
  case $1 in
    paired-0) echo --data "$D/train" --mode paired --blocks 0 "${REV[@]}" ;;
    paired-2) echo --data "$D/train" --mode paired --blocks 2 "${REV[@]}" ;;
    unpaired-0) echo "${UNP[@]}" --blocks 0 "${REV[@]}" ;;
    unpaired-2) echo "${UNP[@]}" --blocks 2 "${REV[@]}" ;;
    amortised) echo --data "$D/train" --mode paired --blocks 2 --amortised "${REV[@]}" ;;
    cycle-medgan) echo "${UNP[@]}" --blocks 2 --lambda-perceptual 1 --lambda-style 1 "${REV[@]}" ;;
    cyclegan-report) echo "${UNP[@]}" --blocks 2 --cycle-loss ssim --lambda-identity 0.5 --k 4 \
      --lr-g 1e-4 --lr-d 1e-3 "${REV[@]}" ;;
    megan) echo --data "$D/train" --arch megan --megan-lr-factor 2 --megan-res-blocks 1 --task kernel \
      --mode paired --patch 32 --hu-window=-1150,3000 --seed 7 --checkpoint-every 100 ;;
    *) echo "compare: unknown row $1" >&2; return 1 ;;
  esac
}

peak_mib() { # peak_mib ARGS...: median max RSS (MiB) of 3 burn-flex processes of 2 steps
  local vals=() i tmp
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/compare-mem.XXXXXX")
  for i in 1 2 3; do
    /usr/bin/time -v -o "$tmp/time" "$BIN" train --out "$tmp/run" --force --backend flex --steps 2 \
      "$@" >/dev/null 2>&1 || { rm -rf "$tmp"; echo "failed"; return 0; }
    vals+=("$(awk -F': ' '/Maximum resident set size/ {print int($2 / 1024)}' "$tmp/time")")
  done
  rm -rf "$tmp"
  printf '%s\n' "${vals[@]}" | sort -n | sed -n 2p
}

: >"$W/memory.txt.new"
models=()
for row in $ROWS; do
  read -r -a args <<<"$(row_args "$row")"
  run=$R/$row
  bin=$BIN
  [[ $row != megan && -x $TCH ]] && bin=$TCH
  if [[ ! -f $run/done-$STEPS ]]; then
    resume=(--force)
    [[ -f $run/checkpoint/state.json && $row != megan ]] && resume=(--resume)
    echo "compare: training $row ($STEPS steps, $(basename "$bin"))" >&2
    start=$(date +%s)
    "$bin" train --out "$run" --steps "$STEPS" "${args[@]}" "${resume[@]}" >"$W/$row.log" 2>&1
    echo "$(($(date +%s) - start))" >"$run/done-$STEPS"
  fi
  "$BIN" export --checkpoint "$run" --out "$M/$row" --force >/dev/null
  models+=(--model "$M/$row")
  echo "$row $(peak_mib "${args[@]}") $(cat "$run/done-$STEPS")" >>"$W/memory.txt.new"
done
mv "$W/memory.txt.new" "$W/memory.txt"

"$BIN" eval --pairs "$D/heldout" --tune "$D/tune" "${models[@]}" --roi 16 --csv "$W/eval.csv" \
  >"$W/eval.log" 2>&1

# The table: mean rows of eval.csv, memory and wall time from memory.txt.
python3 - "$W/eval.csv" "$W/memory.txt" "$STEPS" >"$W/table.md" <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["case"] == "mean" and r["task"] == "kernel"]
mem = {}
for line in open(sys.argv[2]):
    name, mib, secs = line.split()
    mem[name] = (mib, secs)
steps = sys.argv[3]
def f(v, d):
    return "" if v in ("", None) else f"{float(v):.{d}f}"
print(f"| row | steps | MAE | PSNR dB | SSIM | EI error (pp) | noise std ratio (soft) | peak RSS per step, MiB (burn-flex) | training wall s |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    name = r["method"].split(" ")[0]
    m = mem.get(name)
    print(f"| {r['method']} | {steps if m else ''} | {f(r['mae'], 4)} | {f(r['psnr'], 2)} | {f(r['ssim'], 4)} | "
          f"{f(r['ei_error'], 2)} | {f(r['noise_soft_ratio'], 2)} | {m[0] if m else ''} | {m[1] if m else ''} |")
PY
cat "$W/table.md"
