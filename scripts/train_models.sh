#!/usr/bin/env bash
# Reproduces the trained models in models/ and their evaluation table (issue 4): simulated data,
# training on the CPU, ONNX export, evaluation on held-out volumes, figures recorded in the
# manifests. Hours on a 2-core machine (each training step is 2-4 s): run it in the background,
# watch out/train/runs/*/losses.png and val/ as it goes.
#
#   bash scripts/train_models.sh            # everything: data, 2 default models, 8 ablation runs
#   STAGES="data defaults eval" bash scripts/train_models.sh   # a subset
#
# Stages (each safe to re-run; a finished run is resumed, not repeated):
#   data      ct-train synth: 4 training phantoms (seeds 3000-3003), 2 tuning phantoms for the
#             Gaussian baseline (1000-1001), 3 held-out phantoms (2000-2002) and the held-out
#             InVesalius head CT, 32 x 256 x 256 each, 3e4 photons, ramp vs Hann
#   defaults  the shipped models: residual RevGAN, paired, 2 reversible blocks, patch 32, ngf 16,
#             ndf 32, HU window [-1150, 3000] (bone is not clipped), skip filters started at the
#             least-squares linear filters of the training pairs. Kernel: 1x9x9 learnable skip,
#             branch scale 0.01, lr 2e-5, 350 steps. Super-resolution: 13x9x9 skip (on the
#             trilinear grid) kept fixed, L1 only (--lambda-gan 0), branch scale 0.1, lr 1e-4,
#             1200 steps
#   ablation  seed 000 Table 1 rows with the architecture exactly as specified (no residual, seed
#             window): paired / unpaired x 0 / 2 blocks, kernel (250 steps), super-resolution (100)
#   eval      ct-train eval of every run against identity, the tuned Gaussian, the least-squares
#             3x9x9 FIR, TV + Gaussian and tri-linear / -cubic upsampling, with the physics
#             figures, CSV in out/train/eval.csv; with RECORD=1 the figures go into
#             models/revgan-*/model.toml (and the models are re-exported from the default runs)
set -euo pipefail
cd "$(dirname "$0")/.."

STAGES=${STAGES:-"data defaults ablation eval"}
W=out/train
D=$W/data
R=$W/runs
BIN=target/release/ct-train
KERNEL_STEPS=${KERNEL_STEPS:-350}
SR_STEPS=${SR_STEPS:-1200}

bash scripts/setup.sh
cargo build --release -p ct-training
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.deps/ort/onnxruntime/capi/libonnxruntime.so.1.31.1}
mkdir -p "$D" "$R"

has() { [[ " $STAGES " == *" $1 "* ]]; }

synth() { # synth OUT ARGS...: once
  local out=$1; shift
  [[ -f $out/synth.toml ]] || "$BIN" synth --out "$out" --mode shared --size 256 --slices 32 "$@"
}

# train RUN ARGS...: a new run, or the resumption of an unfinished one
train() {
  local run=$1; shift
  if [[ -f $run/checkpoint/state.json ]]; then
    "$BIN" train --data "$D/train" --out "$run" "$@" --resume
  else
    "$BIN" train --data "$D/train" --out "$run" "$@" --force
  fi
}

COMMON=(--mode paired --blocks 2 --residual --skip-init lsq --hu-window=-1150,3000 --patch 32 --ngf 16
  --ndf 32 --seed 11)

if has data; then
  synth "$D/train" --source phantom --cases 4 --seed 3000
  synth "$D/tune" --source phantom --cases 2 --seed 1000 --format nifti
  synth "$D/heldout" --source phantom --cases 3 --seed 2000
  if [[ ! -d $D/heldout/cranium ]]; then
    synth "$D/heldout-cranium" --source cranium --seed 3000
    cp -r "$D/heldout-cranium/cranium" "$D/heldout/cranium"
  fi
fi

if has defaults; then
  train "$R/kernel" --task kernel "${COMMON[@]}" --lr 2e-5 --checkpoint-every 100 --skip-kernel 9 \
    --branch-scale 0.01 --steps "$KERNEL_STEPS"
  # One thread, as the shipped run (more threads sum in another order: a slightly different run).
  RAYON_NUM_THREADS=1 train "$R/superres" --task superres "${COMMON[@]}" --lr 1e-4 \
    --checkpoint-every 200 --skip-kernel 9 --skip-depth 13 --freeze-skip --lambda-gan 0 \
    --branch-scale 0.1 --steps "$SR_STEPS"
fi

if has ablation; then
  for task in kernel superres; do
    steps=$([[ $task == kernel ]] && echo 250 || echo 100)
    for mode in paired unpaired; do
      for b in 0 2; do
        train "$R/$task-$mode-$b" --task "$task" --mode "$mode" --blocks "$b" --steps "$steps" \
          --patch 32 --ngf 16 --ndf 32 --seed 7 --checkpoint-every 100
      done
    done
  done
fi

if has eval; then
  models=()
  for run in "$R"/*/; do
    run=${run%/}
    [[ -f $run/checkpoint/state.json ]] || continue
    name=$(basename "$run")
    "$BIN" export --checkpoint "$run" --out "$W/models/$name" --force >/dev/null
    models+=(--model "$W/models/$name")
  done
  # The held-out head CT is on another voxel grid than the chest tuning phantoms: allowed, warned.
  "$BIN" eval --pairs "$D/heldout" --tune "$D/tune" --allow-grid-mismatch \
    --model models/gaussian-soft-baseline "${models[@]}" --csv "$W/eval.csv"
  if [[ ${RECORD:-0} == 1 ]]; then
    "$BIN" export --checkpoint "$R/kernel" --out models/revgan-kernel --force
    "$BIN" export --checkpoint "$R/superres" --out models/revgan-superres --version 1.1.0 --force
    "$BIN" eval --pairs "$D/heldout" --tune "$D/tune" --allow-grid-mismatch --model models/revgan-kernel \
      --model models/revgan-superres --model models/gaussian-soft-baseline \
      --csv "$W/eval-shipped.csv" --record
  fi
fi
