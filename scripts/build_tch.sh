#!/usr/bin/env bash
# Builds `ct-train` with Burn's LibTorch backend (`--features tch`, issue 13 §2) as
# target/release/ct-train-tch, linked against the libtorch inside a PyPI PyTorch wheel (never a
# download by the build: tch's own download is bypassed with LIBTORCH_USE_PYTORCH). The wheel lives
# in the venv .deps/torch-venv (torch==2.9.1 by default, about 3 GB with its CUDA wheels; installed
# here if missing). tch 0.22 is written for PyTorch 2.9.0; 2.9.1 is a patch release of the same ABI,
# so the version check is bypassed (LIBTORCH_BYPASS_VERSION_CHECK).
# Not part of the tests or CI. Safe to re-run. Prints the binary's path.
# target/release/ct-train-tch is a small wrapper that puts the wheel's torch/lib on LD_LIBRARY_PATH
# (the build adds no rpath) and runs target/release/ct-train-tch.bin.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_PYPI_VERSION=${TORCH_PYPI_VERSION:-2.9.1}
VENV=.deps/torch-venv
PY=$VENV/bin/python
if ! "$PY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_PYPI_VERSION')" 2>/dev/null; then
  echo "build-tch: installing torch==$TORCH_PYPI_VERSION from PyPI into $VENV (about 3 GB)" >&2
  python3 -m venv "$VENV"
  "$PY" -m pip install -q "torch==$TORCH_PYPI_VERSION"
fi
VENV_ABS=$(cd "$VENV" && pwd -P)
export VIRTUAL_ENV=$VENV_ABS PATH="$VENV_ABS/bin:$PATH" LIBTORCH_USE_PYTORCH=1 LIBTORCH_BYPASS_VERSION_CHECK=1
cargo build --release --locked -p ct-training --features tch >&2
TORCH_LIB=$("$PY" -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")
cp target/release/ct-train target/release/ct-train-tch.bin
cat >target/release/ct-train-tch <<WRAP
#!/bin/sh
# ct-train built with --features tch (scripts/build_tch.sh): libtorch from $VENV_ABS
export LD_LIBRARY_PATH="$TORCH_LIB\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$PWD/target/release/ct-train-tch.bin" "\$@"
WRAP
chmod +x target/release/ct-train-tch
# Put back the ordinary binary (other scripts run target/release/ct-train; only ct-training is
# recompiled).
env -u LIBTORCH_USE_PYTORCH cargo build --release --locked -p ct-training >&2
echo "$PWD/target/release/ct-train-tch"
