#!/usr/bin/env python3
"""ONNX Runtime session settings side by side, per model (issue 13 §3): the figures behind the
choices written in config/ct-harmonizer.toml's [runtime] and [translate] comments.

For every model in --models-dir (each folder with a model.toml) it times Session::run on one tile of
the manifest's patch (random input in model units) with each combination of intra-op threads (1, 2),
graph optimisation level (all, basic, disabled) and CPU memory arena (on, off), round-robin so that
load from other processes spreads over all of them; then, with the default settings, tiles of other
sizes, as seconds per voxel of the tile's valid core (what the tiler keeps). Medians of --reps runs
after one untimed warm-up run per session. The same onnxruntime (1.31.1) the daemon loads, through
its Python binding: the settings are the library's, not the binding's.

Usage: .deps/bench-venv/bin/python scripts/bench_ort_settings.py [--models-dir models] [--reps 3]
       [--out out/bench/ort-settings.txt] [--only NAME]
"""

import argparse
import os
import statistics
import time
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort

LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}


def session(path, threads, level, arena):
    o = ort.SessionOptions()
    o.graph_optimization_level = LEVELS[level]
    o.intra_op_num_threads = threads
    o.enable_cpu_mem_arena = arena
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def core_voxels(shape, margin):
    """Voxels of a tile's valid core when the tile is inside a larger volume."""
    n = 1
    for s, m in zip(shape, margin):
        n *= max(s - 2 * m, 1)
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models-dir", default="models")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="out/bench/ort-settings.txt")
    ap.add_argument("--only", action="append", help="model name (repeatable); default: every model")
    args = ap.parse_args()
    lines = [f"ONNX Runtime settings, onnxruntime {ort.__version__}, {len(os.sched_getaffinity(0))} CPUs, "
             f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, load average at start "
             f"{' '.join(open('/proc/loadavg').read().split()[:3])}; medians of {args.reps} runs", ""]
    rng = np.random.default_rng(0)
    for d in sorted(Path(args.models_dir).iterdir()):
        if not (d / "model.toml").is_file() or (args.only and d.name not in args.only):
            continue
        m = tomllib.loads((d / "model.toml").read_text())
        if m.get("stages"):
            lines.append(f"{d.name}: skipped (multi-stage)")
            continue
        t = m["tensors"]
        patch, margin = t["patch"], t["valid_margin"]
        onnx = d / m["onnx_file"]
        x = rng.uniform(-1, 0, size=[1, 1] + patch).astype(np.float32)
        combos = [(th, lv, ar) for th in (1, 2) for lv in LEVELS for ar in (True, False)]
        sessions = {c: session(onnx, *c) for c in combos}
        for s in sessions.values():
            s.run(None, {t["input"]: x})
        times = {c: [] for c in combos}
        for _ in range(args.reps):
            for c in combos:
                t0 = time.perf_counter()
                sessions[c].run(None, {t["input"]: x})
                times[c].append(time.perf_counter() - t0)
        del sessions
        lines.append(f"{d.name} {m['version']}: one tile {patch}, Session::run seconds (ratio to optimisation "
                     f"'all' + arena on, same threads)")
        for th in (1, 2):
            base = statistics.median(times[(th, "all", True)])
            cells = [f"{lv}/{'arena' if ar else 'no arena'} {statistics.median(times[(th, lv, ar)]):.3f} s "
                     f"({statistics.median(times[(th, lv, ar)]) / base:.2f})" for lv in LEVELS for ar in (True, False)]
            lines.append(f"    {th} thread(s): " + "; ".join(cells))
        # Tile sizes with the default settings: seconds per kept (valid-core) voxel.
        alternatives = [patch]
        if t.get("dynamic_spatial"):
            z, y, xw = patch
            for cand in ([max(z // 2, 2 * margin[0] + 1), y, xw], [z * 2, y, xw], [z, min(y * 2, 512), min(xw * 2, 512)]):
                if cand != patch and cand not in alternatives:
                    alternatives.append(cand)
        for th in (1, 2):
            cells = []
            for shape in alternatives:
                s = session(onnx, th, "all", True)
                xi = rng.uniform(-1, 0, size=[1, 1] + shape).astype(np.float32)
                s.run(None, {t["input"]: xi})
                ts = []
                for _ in range(args.reps):
                    t0 = time.perf_counter()
                    s.run(None, {t["input"]: xi})
                    ts.append(time.perf_counter() - t0)
                med = statistics.median(ts)
                cells.append(f"{shape}: {med:.3f} s, {1e9 * med / core_voxels(shape, margin):.1f} ns per core voxel")
            lines.append(f"    tiles, {th} thread(s): " + "; ".join(cells))
        print("\n".join(lines[-5:]), flush=True)
    lines.append("")
    lines.append(f"load average at the end {' '.join(open('/proc/loadavg').read().split()[:3])}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
