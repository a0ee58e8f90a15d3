#!/usr/bin/env bash
# The attainable ceiling of the kernel evaluation (issue 11): what a perfect translator could at
# best score against targets that carry their own, independent noise. `ct-train synth` with the
# same seeds as the held-out set and the TARGET's protocol as the source protocol writes the same
# phantoms and the same targets (bit for bit: checked below) with, as `sharp`, a second,
# independent acquisition reconstructed exactly like the target. `ct-train eval`'s identity row on
# that set is then "the target protocol re-acquired": every figure of it (PSNR, noise ratio, NPS,
# texture CCC...) is the best any method can reach on the held-out set, since no method can
# predict the target's own noise.
# Environment: SEED (2000) and CASES (2): the held-out set's `synth --seed/--cases`; HELDOUT
# (optional: that set, whose targets are compared with the ones written here); TUNE (tuning pairs
# for eval's baselines, required); OUT (default out/ceiling); CT_TRAIN (default
# target/release/ct-train); SYNTH_ARGS (the held-out set's other synth options, default the
# realistic phantoms of README: --source phantom --size 128 --slices 32). The target protocol is
# synth's default (hann:0.8, 50 000 photons, TV blend 0.5); change TARGET_ARGS with it.
# Output: OUT/reacquired (the pairs), OUT/eval.log and OUT/eval.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${SEED:-2000}
CASES=${CASES:-2}
TUNE=${TUNE:?tuning pairs folder (ct-train synth output)}
OUT=${OUT:-out/ceiling}
CT_TRAIN=${CT_TRAIN:-target/release/ct-train}
SYNTH_ARGS=${SYNTH_ARGS:---source phantom --size 128 --slices 32}
TARGET_ARGS=${TARGET_ARGS:---source-photons 50000 --source-filters hann:0.8 --source-ir 0.5}
mkdir -p "$OUT"
rm -rf "$OUT/reacquired"
# shellcheck disable=SC2086
"$CT_TRAIN" synth --out "$OUT/reacquired" --cases "$CASES" --seed "$SEED" $SYNTH_ARGS $TARGET_ARGS \
  --no-thick >"$OUT/synth.log" 2>&1
if [[ -n ${HELDOUT:-} ]]; then
  for c in "$OUT"/reacquired/*/; do
    c=$(basename "$c")
    if ! diff -rq "$HELDOUT/$c/soft" "$OUT/reacquired/$c/soft" >/dev/null; then
      echo "the target of $c differs from $HELDOUT/$c/soft: not the same held-out set (seed, cases, synth options?)" >&2
      exit 1
    fi
  done
  echo "targets identical to $HELDOUT's" >&2
fi
"$CT_TRAIN" eval --pairs "$OUT/reacquired" --tune "$TUNE" --baselines linear --roi 16 \
  --csv "$OUT/eval.csv" >"$OUT/eval.log" 2>&1
grep -E '^(case|mean)' "$OUT/eval.log"
