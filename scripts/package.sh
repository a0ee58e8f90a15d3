#!/usr/bin/env bash
# Builds the Debian package target/debian/ct-harmonizer_<version>-1_<arch>.deb with cargo-deb
# (metadata: [package.metadata.deb] in Cargo.toml; maintainer scripts and snippets: debian/), then
# checks it with lintian (zero errors, or this script fails; warnings are justified in
# debian/lintian-overrides). Installs what it needs on demand: cargo-deb (pinned, from crates.io),
# ONNX Runtime's CPU wheel (the version scripts/setup.sh pins, from PyPI), lintian (apt).
#
#   bash scripts/package.sh [--debug] [--no-build] [--fast] [--no-lintian]
#
#   --debug       package target/debug/ct-harmonizer (tests: no release build) instead of target/release
#   --no-build    do not run cargo build (the binary must be there)
#   --fast        lighter compression (tests)
#   --no-lintian  skip the lintian check
#
# Prints the path of the .deb as its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
profile=release build=1 fast=() lint=1
for arg in "$@"; do
  case $arg in
    --debug) profile=debug ;;
    --no-build) build=0 ;;
    --fast) fast=(--fast) ;;
    --no-lintian) lint=0 ;;
    *) echo "package: unknown option $arg (see the header of $0)" >&2; exit 2 ;;
  esac
done

say() { echo "package: $*" >&2; }

if [[ $(cargo deb --version 2>/dev/null) != *"$CARGO_DEB_VERSION"* ]]; then
  say "installing cargo-deb $CARGO_DEB_VERSION (crates.io) into ~/.cargo/bin"
  cargo install --locked --quiet "cargo-deb@$CARGO_DEB_VERSION"
fi

if ((build)); then
  if [[ $profile == release ]]; then
    cargo build --release -p ct-harmonizer
  else
    cargo build -p ct-harmonizer
  fi
fi
bin=target/$profile/ct-harmonizer
[[ -x $bin ]] || { say "$bin missing: build it first (or drop --no-build)"; exit 1; }

# ONNX Runtime: the CPU library of the same PyPI wheel scripts/setup.sh installs (version read from it).
ORT_VERSION=$(grep -oE 'onnxruntime==[0-9.]+' scripts/setup.sh | head -n1 | cut -d= -f3)
[[ -n $ORT_VERSION ]] || { say "cannot read the ONNX Runtime version from scripts/setup.sh"; exit 1; }
ort=.deps/ort
if [[ ! -d $ort/onnxruntime-$ORT_VERSION.dist-info ]]; then
  # .deps/ort is missing or holds the GPU wheel: fetch the CPU wheel for the package.
  ort=target/deb-wheel/ort-$ORT_VERSION
  if [[ ! -f $ort/onnxruntime/capi/libonnxruntime.so.$ORT_VERSION ]]; then
    say "installing ONNX Runtime $ORT_VERSION (PyPI wheel, CPU) into $ort"
    python3 -m pip install -q --no-deps --target "$ort" "onnxruntime==$ORT_VERSION"
  fi
fi
lib=$ort/onnxruntime/capi/libonnxruntime.so.$ORT_VERSION
[[ -f $lib ]] || { say "$lib missing"; exit 1; }

# Stage what cargo-deb packs (paths in Cargo.toml), stripped the way dh_strip does it.
stage=target/deb-stage
rm -rf "$stage"
mkdir -p "$stage"
install -m 755 "$bin" "$stage/ct-harmonizer"
strip --remove-section=.comment --remove-section=.note "$stage/ct-harmonizer"
install -m 644 "$lib" "$stage/libonnxruntime.so"
strip --remove-section=.comment --remove-section=.note --strip-unneeded "$stage/libonnxruntime.so"
install -m 644 "$ort/onnxruntime/ThirdPartyNotices.txt" "$stage/ThirdPartyNotices.txt"

out=target/debian
mkdir -p "$out"
deb=$(cargo deb -p ct-harmonizer --no-build --no-strip "${fast[@]}" --output "$out" --quiet 2>&1 | tail -n1)
[[ -f $deb ]] || { say "cargo deb failed: $deb"; exit 1; }

if ((lint)); then
  if ! command -v lintian >/dev/null 2>&1; then
    say "installing lintian (apt)"
    SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends lintian >/dev/null
  fi
  say "lintian $deb"
  # --fail-on error: any error fails (warnings too would show here: there are none). The tags
  # overridden in debian/lintian-overrides, each with its reason, are not shown (--show-overrides
  # would show them, and then counts the overridden errors as failures).
  lintian --fail-on error --display-info --tag-display-limit 0 "$deb" >&2
  say "lintian: no errors; overridden with reasons (debian/lintian-overrides): $(grep -c '^ct-harmonizer:' debian/lintian-overrides)"
fi
echo "$deb"
