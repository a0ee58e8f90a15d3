#!/usr/bin/env bash
# The tile-size effect of a model whose graph normalises per tile (the RevGANs' instance norm,
# issue 11): runs MODEL on every case of PAIRS (ct-train synth folders: CASE/sharp, CASE/soft)
# through the daemon's tiling at each tile size of TILES, with
#   1) `ct-train eval --config` (the same Translator and tiling as the daemon; every figure of eval
#      beside the identity and the least-squares filter), and
#   2) `ct-harmonizer process --config` of each case's sharp series, whose outputs
#      scripts/tile_effect.py compares with the target (PSNR, the seed window as eval) and with the
#      output of the first tile size (max and mean |difference| in HU).
# Environment: MODEL (default revgan-kernel-realistic), PAIRS (held-out pairs), TUNE (tuning pairs
# for eval's baselines), TILES (";"-separated "z, y, x", default whole volume, 96 and 64 in-plane
# for the 32x128x128 phantoms), OUT (default out/tile-effect), CT_TRAIN (default
# target/release/ct-train), PY (a Python with numpy and pydicom, default .deps/bench-venv's).
# Needs release builds of ct-harmonizer and ct-training. Output: OUT/diff-MODEL.txt, OUT/eval-*.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-revgan-kernel-realistic}
PAIRS=${PAIRS:?held-out pairs folder (ct-train synth output)}
TUNE=${TUNE:?tuning pairs folder}
TILES=${TILES:-32, 128, 128;32, 96, 96;32, 64, 64}
OUT=${OUT:-out/tile-effect}
CT_TRAIN=${CT_TRAIN:-target/release/ct-train}
PY=${PY:-.deps/bench-venv/bin/python}
H=target/release/ct-harmonizer
mkdir -p "$OUT"
tags=()
IFS=';' read -ra tiles <<<"$TILES"
for T in "${tiles[@]}"; do
  tag=$(echo "$T" | tr -d ' ' | tr ',' 'x'); tags+=("$tag")
  printf '[runtime]\nintra_threads = 1\n[translate]\ntile = [%s]\n' "$T" >"$OUT/tile-$tag.toml"
  "$CT_TRAIN" eval --pairs "$PAIRS" --tune "$TUNE" --model "models/$MODEL" --baselines identity,linear \
    --roi 16 --config "$OUT/tile-$tag.toml" --csv "$OUT/eval-$MODEL-$tag.csv" >"$OUT/eval-$MODEL-$tag.log" 2>&1
  for c in "$PAIRS"/*/; do
    c=$(basename "$c"); o="$OUT/out-$MODEL-$tag/$c"; rm -rf "$o"; mkdir -p "$o"
    "$H" process --config "$OUT/tile-$tag.toml" --model "$MODEL" --stats --out "$o" "$PAIRS/$c/sharp" >"$o.log" 2>&1
  done
  echo "tile $T done" >&2
done
"$PY" scripts/tile_effect.py "$OUT" "$MODEL" "$PAIRS" "${tags[@]}" | tee "$OUT/diff-$MODEL.txt"
