#!/usr/bin/env python3
"""The pipeline a user would write instead of ct-harmonizer: the benchmark's reference.

Straightforward Python, whole volume in memory:
  pydicom reads every file, slices are sorted by ImagePositionPatient along the slice normal,
  RescaleSlope/Intercept give HU, the manifest's HU window maps HU linearly onto [-1, 1] (clipped
  first when the manifest says clip_input), an onnxruntime InferenceSession runs the same ONNX file
  over a NumPy sliding window with the same tile size and valid-core stitching as the Rust tiler
  (src/model/tiling.rs), and every derived slice is written back with pydicom as int16 HU
  (RescaleSlope 1, RescaleIntercept 0).

A super-resolution model (manifest scale other than 1) gets the same tiles, each tile's output
core scaled by the model's factors, and every input slice is written as scale_z derived slices
(positions spread over the input slice's extent along the normal, pixel spacing divided in-plane).

Usage: bench_reference.py INPUT_DIR --model models/NAME --out OUT_DIR [--threads N] [--dump-npy FILE]
--threads sets onnxruntime's intra-op threads (0, the default: one per core, as the Rust side).
--dump-npy also saves the float HU volume (before int16 rounding, in sorted slice order) and the
slices' positions along the normal (FILE with .pos.npy) so the benchmark can compare voxels.
Phase times go to stderr as one line: "reference: read_s=.. infer_s=.. run_s=.. write_s=.. total_s=..".
"""

import argparse
import copy
import os
import sys
import time
import tomllib
from pathlib import Path

# NumPy, onnxruntime and pydicom are imported in main(): scripts/bench_driver.py imports axis_tiles
# from here under a Python that may have none of them.


def axis_tiles(n, tile, margin):
    """Same plan as src/model/tiling.rs axis_tiles: (start, len, core_start, core_end)."""
    if n == 0:
        return []
    if tile >= n:
        return [(0, n, 0, n)]
    if tile <= 2 * margin:
        raise ValueError(f"tile {tile} leaves no core with margin {margin}")
    tiles, core_start = [], 0
    while True:
        start = max(core_start - margin, 0)
        if start + tile >= n:
            tiles.append((n - tile, tile, core_start, n))
            return tiles
        core_end = start + tile - margin
        tiles.append((start, tile, core_start, core_end))
        core_start = core_end


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("input")
    ap.add_argument("--model", required=True, help="model directory (model.toml + ONNX file)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dump-npy")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    import numpy as np
    import onnxruntime as ort
    import pydicom
    from pydicom.uid import generate_uid

    with open(Path(args.model) / "model.toml", "rb") as f:
        manifest = tomllib.load(f)
    tensors, intensity = manifest["tensors"], manifest["intensity"]
    lo, hi = intensity["hu_window"]
    scale = [int(round(s)) for s in tensors["scale"]]
    if manifest.get("stages"):
        sys.exit("reference pipeline handles single-stage models only (this one has [[stages]])")

    # Read and sort.
    files = sorted(p for p in Path(args.input).rglob("*") if p.is_file())
    datasets = [pydicom.dcmread(p) for p in files]
    iop = np.array(datasets[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    datasets.sort(key=lambda d: float(np.dot(np.array(d.ImagePositionPatient, dtype=np.float64), normal)))
    positions = np.array([np.dot(np.array(d.ImagePositionPatient, dtype=np.float64), normal) for d in datasets])
    hu = np.stack([
        d.pixel_array.astype(np.float32) * np.float32(float(getattr(d, "RescaleSlope", 1)))
        + np.float32(float(getattr(d, "RescaleIntercept", 0)))
        for d in datasets
    ])
    t_read = time.perf_counter()

    # HU window -> [-1, 1]
    if intensity["clip_input"]:
        hu = np.clip(hu, lo, hi)
    unit = ((hu - np.float32(lo)) / np.float32(hi - lo) * np.float32(2.0) - np.float32(1.0)).astype(np.float32)
    del hu

    # Sliding window with valid-core stitching.
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # as the Rust side: one thread per core unless told
    opts.intra_op_num_threads = args.threads or len(os.sched_getaffinity(0))
    session = ort.InferenceSession(str(Path(args.model) / manifest["onnx_file"]), opts,
                                   providers=["CPUExecutionProvider"])
    nz, ny, nx = unit.shape
    sz, sy, sx = scale
    out_unit = np.empty((nz * sz, ny * sy, nx * sx), dtype=np.float32)
    run_s = 0.0
    plans = [axis_tiles(n, t, m) for n, t, m in zip(unit.shape, tensors["patch"], tensors["valid_margin"])]
    for zs, zl, zc0, zc1 in plans[0]:
        for ys, yl, yc0, yc1 in plans[1]:
            for xs, xl, xc0, xc1 in plans[2]:
                tile = np.ascontiguousarray(unit[zs:zs + zl, ys:ys + yl, xs:xs + xl])[None, None]
                r0 = time.perf_counter()
                (res,) = session.run([tensors["output"]], {tensors["input"]: tile})
                run_s += time.perf_counter() - r0
                out_unit[zc0 * sz:zc1 * sz, yc0 * sy:yc1 * sy, xc0 * sx:xc1 * sx] = res[
                    0, 0, (zc0 - zs) * sz:(zc1 - zs) * sz, (yc0 - ys) * sy:(yc1 - ys) * sy,
                    (xc0 - xs) * sx:(xc1 - xs) * sx]
    out_hu = (out_unit + np.float32(1.0)) * np.float32(0.5) * np.float32(hi - lo) + np.float32(lo)
    del out_unit, unit
    t_infer = time.perf_counter()
    if args.dump_npy:
        np.save(args.dump_npy, out_hu)
        np.save(str(Path(args.dump_npy).with_suffix(".pos.npy")), positions)
    t_dump = time.perf_counter()

    # Write the derived series.
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    pixels = np.clip(np.round(out_hu), -32768, 32767).astype(np.int16)
    gap = float(positions[1] - positions[0]) if nz > 1 else float(getattr(datasets[0], "SliceThickness", 1) or 1)
    for k in range(nz * sz):
        d = datasets[k // sz] if sz == 1 else copy.deepcopy(datasets[k // sz])
        if sz != 1 or sy != 1 or sx != 1:
            ipp = np.array(d.ImagePositionPatient, dtype=np.float64)
            ipp = ipp + normal * gap * ((k % sz + 0.5) / sz - 0.5)
            d.ImagePositionPatient = [float(v) for v in ipp]
            d.SliceThickness = float(getattr(d, "SliceThickness", gap) or gap) / sz
            d.Rows, d.Columns = ny * sy, nx * sx
            d.PixelSpacing = [float(d.PixelSpacing[0]) / sy, float(d.PixelSpacing[1]) / sx]
        d.SeriesInstanceUID = series_uid
        d.SOPInstanceUID = generate_uid()
        d.file_meta.MediaStorageSOPInstanceUID = d.SOPInstanceUID
        d.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        d.ConvolutionKernel = manifest["kernels"]["produces"]
        d.SeriesDescription = (str(getattr(d, "SeriesDescription", "")) + " HARMONIZED")[:64]
        d.BitsAllocated, d.BitsStored, d.HighBit, d.PixelRepresentation = 16, 16, 15, 1
        d.RescaleSlope, d.RescaleIntercept = 1, 0
        d.PixelData = pixels[k].tobytes()
        d.save_as(out_dir / f"IM{k + 1:05d}.dcm")
    t_end = time.perf_counter()
    print(f"reference: slices={nz} tiles={sum(1 for _ in plans[0]) * len(plans[1]) * len(plans[2])} "
          f"read_s={t_read - t0:.3f} infer_s={t_infer - t_read:.3f} run_s={run_s:.3f} "
          f"write_s={t_end - t_dump:.3f} total_s={t_end - t0 - (t_dump - t_infer):.3f}", file=sys.stderr)


if __name__ == "__main__":
    main()
