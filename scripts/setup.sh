#!/usr/bin/env bash
# Installs what ct-harmonizer's demo and tests need on a fresh Debian 12 machine. Safe to re-run:
# every step checks first and does nothing when its result is already there.
#   - Debian packages: DCMTK and Orthanc (real DICOM peers), cmake (builds CharLS for JPEG-LS), dicom3tools (dciodvfy/dcentvfy),
#     invesalius-examples (a real head CT), systemd (systemd-analyze checks the unit), curl, fonts-dejavu-core (text in the training loss plots)
#   - ONNX Runtime 1.31.1's shared library from the PyPI wheel, into .deps/ort (project-local)
#   - pydicom's wheel (no dependencies), into .deps/pydicom: its tiny real CT series are test data
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[[ -x /usr/bin/storescu ]] || need_apt+=(dcmtk)
command -v dciodvfy >/dev/null 2>&1 || need_apt+=(dicom3tools)
[[ -f /usr/share/doc/invesalius-examples/examples/Cranium.inv3 ]] || need_apt+=(invesalius-examples)
[[ -x /usr/sbin/Orthanc ]] || need_apt+=(orthanc)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# cmake: dicom-rs's `charls` feature builds CharLS (JPEG-LS) from its bundled C++ sources.
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
[[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || need_apt+=(fonts-dejavu-core)
# promtool checks config/monitoring/ (tests/ops.rs); Debian ships it in prometheus (~96 MB installed).
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
if ((${#need_apt[@]})); then
  echo "setup: installing Debian packages: ${need_apt[*]}" >&2
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

ORT_DIR=.deps/ort
ORT_LIB=$ORT_DIR/onnxruntime/capi/libonnxruntime.so.1.31.1
if [[ ! -f $ORT_LIB ]]; then
  echo "setup: installing ONNX Runtime 1.31.1 (PyPI wheel, library only) into $ORT_DIR" >&2
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    # GPU machines: the CUDA build with its CUDA 13 and cuDNN runtime wheels (1.27+ are CUDA 13).
    python3 -m pip install -q --target "$ORT_DIR" "onnxruntime-gpu[cuda,cudnn]==1.31.1"
  else
    python3 -m pip install -q --no-deps --target "$ORT_DIR" "onnxruntime==1.31.1"
  fi
fi
[[ -f $ORT_LIB ]] || { echo "setup: $ORT_LIB missing after install" >&2; exit 1; }

PYDICOM_DIR=.deps/pydicom
if [[ ! -d $PYDICOM_DIR/pydicom/data/test_files/dicomdirtests ]]; then
  echo "setup: installing pydicom 3.0.2 (test data) into $PYDICOM_DIR" >&2
  python3 -m pip install -q --no-deps --target "$PYDICOM_DIR" "pydicom==3.0.2"
fi
