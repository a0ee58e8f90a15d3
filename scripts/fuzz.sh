#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz / libFuzzer, AddressSanitizer) of every input path: the PDU readers (dicom-ul's, and ours of an association's stream),
# DIMSE command sets, C-STORE datasets as received (up to the Success decision), watched-folder files,
# what the processor does with a series after the guard (pixel decoders, geometry, the derived
# series' writer), the configuration file and model manifests. Each target runs for FUZZ_SECONDS (default 30) from the
# committed seed corpus in fuzz/corpus/<target>/ (new inputs go to out/fuzz/corpus/, not the committed
# one); any crash, leak, timeout or out-of-memory fails the run, and the crashing input is kept in
# fuzz/artifacts/<target>/. Prints executions and coverage per target. Safe to re-run.
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh            # longer runs
#   FUZZ_TARGETS="dataset pdu_read" bash scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-30}
TARGETS=${FUZZ_TARGETS:-$(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' fuzz/Cargo.toml | grep -v -e '^ct-harmonizer-fuzz$' -e '^make_corpus$')}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz 0.13.2 from crates.io" >&2
  cargo install cargo-fuzz --version 0.13.2 --locked >&2
fi
# Seeds from the project's own writers: an example of the main crate, built by the tests already
# (before RUSTC_BOOTSTRAP, which would make cargo rebuild the workspace).
cargo run -q -p ct-harmonizer --example make_fuzz_corpus
# cargo fuzz passes -Z flags (sanitizers, coverage): allowed on the stable toolchain with RUSTC_BOOTSTRAP.
# The fuzzed library loads nothing from ONNX Runtime; the targets never touch the network.
export RUSTC_BOOTSTRAP=1
mkdir -p out/fuzz
summary=out/fuzz/summary.txt
: >"$summary"
status=0
for t in $TARGETS; do
  work=out/fuzz/corpus/$t
  mkdir -p "$work" "fuzz/corpus/$t"
  log=out/fuzz/$t.log
  echo "fuzz: $t for ${SECONDS_EACH}s" >&2
  if cargo fuzz run -O --fuzz-dir fuzz "$t" "$work" "fuzz/corpus/$t" -- \
      -max_total_time="$SECONDS_EACH" -rss_limit_mb=1024 -malloc_limit_mb=512 -timeout=20 -max_len=1048576 \
      -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    status=1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  printf '%-16s %-6s executions %-10s coverage (edges) %-6s features %s\n' \
    "$t" "$result" "${execs:-?}" "${cov:-?}" "${ft:-?}" | tee -a "$summary"
  if [[ $result == FAILED ]]; then
    grep -E 'ERROR|panicked|SUMMARY|Test unit written' "$log" | head -20 >&2 || true
  fi
done
exit $status
