#!/usr/bin/env bash
# The main job on the bundled default: converts the real head CT shipped in Debian's
# invesalius-examples into a DICOM series (with the project's own writer), harmonizes it with the
# default model in models/, and writes an input | output | difference PNG. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked -p ct-harmonizer
BIN=target/release/ct-harmonizer
OUT=out/demo
if [[ ! -d $OUT/input ]]; then
  $BIN sample --kind cranium --out "$OUT/input.tmp"
  mv "$OUT/input.tmp" "$OUT/input"
fi
$BIN process "$OUT/input" --out "$OUT/derived" --preview "$OUT/preview.png"
