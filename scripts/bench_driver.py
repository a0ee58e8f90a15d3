#!/usr/bin/env python3
"""Runs the ct-harmonizer benchmark; called by scripts/bench.sh (which builds and installs first).

Measures, with medians of paired repetitions (never single times):
  1. tiling overhead: `process` wall time / summed Session::run time, 300-slice 512x512 phantom;
  2. memory: peak RSS (/usr/bin/time -v) of `process` on 600 slices / on 100 slices;
  3. rust vs python: end-to-end wall time of scripts/bench_reference.py / of `process` on the same
     300-slice series, run alternately, plus agreement of the output voxels.
Prints a table and writes it (with every repetition's raw figures) to out/bench/results.txt.

With --suite inference (issue 13 §3) it measures instead the inference cost of every model under
--models-dir (each folder with a model.toml, so a model added later is included), with ONNX Runtime
intra-op threads 1 and 2: `process` wall / summed Session::run, seconds per input and per output
slice, the tiles' computed voxels per output voxel (overlap recomputed by the valid-core tiling), and
scripts/bench_reference.py (Python onnxruntime, --ref-python) beside it on the same series. A kernel
model gets a 300-slice 512x512 phantom; a super-resolution model of factors (sz, sy, sx) a phantom of
300/sz slices of 512/sy, whose output is 300 slices of 512x512. A model whose first timed run takes
longer than --slow-seconds (estimated from an untimed 16-slice probe, 1 thread) gets --reps-slow
repetitions instead of --reps, on --slices-slow output slices instead of --slices. A row or a Python column
that cannot be measured (the model does not load, the Python venv or the reference cannot run it)
says "skipped" and why; no ratio is printed for it. Table in out/bench/inference.txt.
"""

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import tomllib
from datetime import datetime, timezone
from pathlib import Path

# NumPy and pydicom are imported where the agreement check needs them: the inference suite runs
# under any Python 3.11 (it must be able to report a missing venv).

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


def busy_jiffies():
    """Busy time of all CPUs so far (user nice system irq softirq steal), in clock ticks."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def fail(msg):
    print(f"bench: ERROR: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


class RunFailed(Exception):
    """A timed command of the inference suite failed; the message says why (its last output line)."""


def last_line(text):
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.work)
        self.bin = Path(args.bin).resolve()
        self.models_dir = Path(args.models_dir).resolve()
        self.model_dir = self.models_dir / args.model
        self.python = sys.executable
        self.reference = ROOT / "scripts" / "bench_reference.py"
        # The model both sides run: the Rust side takes it as its default model (without it,
        # `process` ran the configured default, revgan-kernel, against the reference's baseline).
        self.env = dict(
            os.environ,
            CT_HARMONIZER__MODELS__DIR=str(self.models_dir),
            CT_HARMONIZER__MODELS__DEFAULT=args.model,
        )
        self.raw = []  # (label, dict) of every timed run
        self.quiet_budget = float(args.quiet_wait)
        self.waited = 0.0
        self.warned_busy = False

    # ---- data -------------------------------------------------------------------------------------
    def phantom(self, n, size=512):
        d = self.work / "data" / (f"phantom-{n}" if size == 512 else f"phantom-{n}x{size}")
        if d.is_dir() and len(list(d.glob("slice_*.dcm"))) == n:
            return d
        log(f"writing a {n}-slice {size}x{size} phantom series into {d}")
        shutil.rmtree(d, ignore_errors=True)
        tmp = d.with_name(d.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run([str(self.bin), "sample", "--kind", "phantom", "--slices", str(n), "--size", str(size),
                        "--out", str(tmp)], check=True, env=self.env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        tmp.rename(d)
        return d

    # ---- one timed run ----------------------------------------------------------------------------
    def wait_quiet(self):
        """Waits (from a budget shared by the whole run) while other processes keep the CPUs busy."""
        while self.quiet_budget > 0:
            a = busy_jiffies()
            time.sleep(1.0)
            share = (busy_jiffies() - a) / CLK_TCK / NCPU
            if share <= self.args.quiet_share:
                return
            if not self.warned_busy:
                log(f"other processes use {share:.0%} of the CPUs; waiting up to {self.quiet_budget:.0f} s "
                    f"(in all) for them to calm down before timed runs")
                self.warned_busy = True
            time.sleep(4.0)
            self.quiet_budget -= 5.0
            self.waited += 5.0

    def timed(self, cmd, out_dir, env=None):
        """Runs cmd under /usr/bin/time -v after clearing out_dir and syncing; returns
        (wall seconds measured here, peak RSS KiB, stdout, stderr, extra figures). A failed command
        ends the benchmark unless `env` is given (the inference suite), where it raises RunFailed."""
        shutil.rmtree(out_dir, ignore_errors=True)
        os.sync()  # no dirty pages from the previous run are flushed on this run's time
        self.wait_quiet()
        tfile = self.work / "time-v.txt"
        b0 = busy_jiffies()
        t0 = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-v", "-o", str(tfile)] + cmd, cwd=ROOT, env=env or self.env,
                           capture_output=True, text=True)
        wall = time.perf_counter() - t0
        busy = (busy_jiffies() - b0) / CLK_TCK
        if p.returncode != 0 and env is not None:
            raise RunFailed(last_line(p.stderr) or last_line(p.stdout) or f"exit status {p.returncode}")
        if p.returncode != 0:
            fail(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        tv = tfile.read_text()
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", tv)
        if not m:
            fail(f"no peak RSS in /usr/bin/time output {tfile}")
        cpu = sum(float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", tv))
        # CPU used by everything else on the machine during the run, as a share of all CPUs
        others = max(busy - cpu, 0.0) / (wall * NCPU)
        return wall, int(m.group(1)), p.stdout, p.stderr, dict(cpu_s=cpu, others=others)

    def rust(self, series, n, label):
        out = self.work / "out-rust"
        wall, rss, so, se, extra = self.timed([str(self.bin), "process", str(series), "--out", str(out), "--stats"],
                                              out)
        m = re.search(r"stats: wall_s=([\d.]+) run_s=([\d.]+) runs=(\d+) device=(\S+)", so)
        if not m:
            fail(f"no stats line in the output of process:\n{so}\n{se[-2000:]}")
        pub = re.search(r"\((\d+) slices, ", so)
        if not pub or int(pub.group(1)) != n:
            fail(f"process did not publish {n} slices:\n{so}")
        r = dict(wall=wall, rss_kib=rss, wall_s=float(m.group(1)), run_s=float(m.group(2)),
                 runs=int(m.group(3)), device=m.group(4), **extra)
        self.raw.append((label, r))
        return r

    def python_ref(self, series, label, dump=None):
        out = self.work / "out-python"
        cmd = [self.python, str(self.reference), str(series), "--model", str(self.model_dir), "--out", str(out)]
        if dump:
            cmd += ["--dump-npy", str(dump)]
        wall, rss, _, se, extra = self.timed(cmd, out)
        m = re.search(r"reference: (.*)", se)
        if not m:
            fail(f"no reference line in the Python pipeline's stderr:\n{se[-2000:]}")
        r = dict(wall=wall, rss_kib=rss, **extra)
        r.update({k: float(v) for k, v in (kv.split("=") for kv in m.group(1).split())})
        self.raw.append((label, r))
        return r

    # ---- agreement --------------------------------------------------------------------------------
    def agreement(self, npy, lo, hi):
        """Compares Rust's output DICOM (int16 HU) with the Python pipeline's float HU volume."""
        import numpy as np
        import pydicom
        py = np.load(npy)
        py_pos = np.load(Path(npy).with_suffix(".pos.npy"))
        pub = [d for d in (self.work / "out-rust").iterdir() if d.is_dir() and not d.name.startswith(".")]
        if len(pub) != 1:
            fail(f"expected one published series in {self.work / 'out-rust'}, found {len(pub)}")
        files = sorted(pub[0].glob("*.dcm"))
        if len(files) != py.shape[0]:
            fail(f"rust wrote {len(files)} slices, python {py.shape[0]}")
        max_float = 0.0
        n_diff = 0  # rust int16 != python float rounded as Rust rounds (half away from zero)
        n_diff_np = 0  # rust int16 != python's own int16 (numpy rounds half to even)
        matched = set()
        for f in files:
            d = pydicom.dcmread(f)
            iop = np.array(d.ImageOrientationPatient, dtype=np.float64)
            pos = float(np.dot(np.array(d.ImagePositionPatient, dtype=np.float64), np.cross(iop[:3], iop[3:])))
            k = int(np.argmin(np.abs(py_pos - pos)))
            if abs(py_pos[k] - pos) > 1e-3 or k in matched:
                fail(f"{f.name}: position {pos} matches no Python slice")
            matched.add(k)
            rust_hu = d.pixel_array.astype(np.float64) * float(d.RescaleSlope) + float(d.RescaleIntercept)
            ref = py[k].astype(np.float64)
            max_float = max(max_float, float(np.max(np.abs(rust_hu - ref))))
            away = np.clip(np.sign(ref) * np.floor(np.abs(ref) + 0.5), -32768, 32767)
            n_diff += int(np.count_nonzero(rust_hu != away))
            n_diff_np += int(np.count_nonzero(rust_hu != np.clip(np.round(ref), -32768, 32767)))
        return dict(max_abs_hu=max_float, max_abs_unit=max_float * 2.0 / (hi - lo), voxels_diff=n_diff,
                    voxels_diff_numpy_round=n_diff_np, voxels=int(py.size), slices=len(files))

    # ---- the benchmark ----------------------------------------------------------------------------
    def run(self):
        a = self.args
        manifest = tomllib.loads((self.model_dir / "model.toml").read_text())
        lo, hi = manifest["intensity"]["hu_window"]
        s100, s300, s600 = self.phantom(100), self.phantom(300), self.phantom(600)
        started = time.perf_counter()

        log("warm-up + agreement: one untimed run of each pipeline on 300 slices")
        npy = self.work / "python-float.npy"
        self.rust(s300, 300, "warmup rust 300")
        self.python_ref(s300, "warmup python 300 (with --dump-npy)", dump=npy)
        agree = self.agreement(npy, lo, hi)
        npy.unlink()
        npy.with_suffix(".pos.npy").unlink()

        log(f"1/3 tiling overhead: {a.reps_tiling} x process on 300 slices")
        t = [self.rust(s300, 300, f"tiling rust 300 #{i + 1}") for i in range(a.reps_tiling)]

        log(f"2/3 memory: {a.reps_memory} x (process on 100 slices, process on 600 slices), alternating")
        m100, m600 = [], []
        for i in range(a.reps_memory):
            m100.append(self.rust(s100, 100, f"memory rust 100 #{i + 1}"))
            m600.append(self.rust(s600, 600, f"memory rust 600 #{i + 1}"))

        log(f"3/3 rust vs python: {a.reps_compare} x (python, rust) on 300 slices, alternating")
        cr, cp = [], []
        for i in range(a.reps_compare):
            # alternate which goes first so neither always follows the other
            if i % 2 == 0:
                cp.append(self.python_ref(s300, f"compare python 300 #{i + 1}"))
                cr.append(self.rust(s300, 300, f"compare rust 300 #{i + 1}"))
            else:
                cr.append(self.rust(s300, 300, f"compare rust 300 #{i + 1}"))
                cp.append(self.python_ref(s300, f"compare python 300 #{i + 1}"))
        elapsed = time.perf_counter() - started
        self.report(manifest, agree, t, m100, m600, cr, cp, elapsed)

    def report(self, manifest, agree, t, m100, m600, cr, cp, elapsed):
        med = statistics.median
        rows = []

        def row(name, values, fmt, goal="", met=""):
            rows.append((name, str(len(values)), fmt.format(med(values)),
                         f"{fmt.format(min(values))} .. {fmt.format(max(values))}", goal, met))

        def sub(name, values, fmt):
            row("    " + name, values, fmt)

        tiling = [r["wall_s"] / r["run_s"] for r in t]
        row("1. tiling overhead: process wall / run_s, 300 sl", tiling, "{:.2f}", "<= 1.10",
            "yes" if med(tiling) <= 1.10 else "NO")
        sub("process wall_s (s, from --stats)", [r["wall_s"] for r in t], "{:.2f}")
        sub("summed Session::run run_s (s)", [r["run_s"] for r in t], "{:.2f}")
        sub(f"Session::run calls per series", [r["runs"] for r in t], "{:.0f}")
        mem = [b["rss_kib"] / a["rss_kib"] for a, b in zip(m100, m600)]
        row("2. memory: peak RSS 600 sl / 100 sl", mem, "{:.2f}", "<= 1.25",
            "yes" if med(mem) <= 1.25 else "NO")
        sub("peak RSS, 100 slices (MiB)", [r["rss_kib"] / 1024 for r in m100], "{:.0f}")
        sub("peak RSS, 600 slices (MiB)", [r["rss_kib"] / 1024 for r in m600], "{:.0f}")
        sub("peak RSS, 300 slices (MiB, runs of 1.)", [r["rss_kib"] / 1024 for r in t], "{:.0f}")
        sub("600 sl / 300 sl (ratio of medians)", [med([r["rss_kib"] for r in m600]) / med([r["rss_kib"] for r in t])],
            "{:.2f}")
        sub("process wall, 100 slices (s)", [r["wall"] for r in m100], "{:.2f}")
        sub("process wall, 600 slices (s)", [r["wall"] for r in m600], "{:.2f}")
        speed = [p["wall"] / r["wall"] for p, r in zip(cp, cr)]
        row("3. python / rust end-to-end wall, 300 sl", speed, "{:.2f}", ">= 1.50",
            "yes" if med(speed) >= 1.5 else "NO")
        sub("rust `process` wall (s)", [r["wall"] for r in cr], "{:.2f}")
        sub("rust summed Session::run (s)", [r["run_s"] for r in cr], "{:.2f}")
        sub("python reference wall (s)", [p["wall"] for p in cp], "{:.2f}")
        sub("python: read + sort + rescale (s)", [p["read_s"] for p in cp], "{:.2f}")
        sub("python: HU window, tiles, stitch, to HU (s)", [p["infer_s"] for p in cp], "{:.2f}")
        sub("python: of which session.run (s)", [p["run_s"] for p in cp], "{:.2f}")
        sub("python: write DICOM (s)", [p["write_s"] for p in cp], "{:.2f}")
        sub("peak RSS python / rust", [p["rss_kib"] / r["rss_kib"] for p, r in zip(cp, cr)], "{:.2f}")
        sub("peak RSS python (MiB)", [p["rss_kib"] / 1024 for p in cp], "{:.0f}")
        row("noise: other processes' CPU share, all runs (%)", [100 * r["others"] for _, r in self.raw], "{:.0f}")

        head = ("measure", "reps", "median", "min .. max", "goal", "met")
        widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
        line = lambda r: "  ".join(c.ljust(w) if i in (0, 3) else c.rjust(w)
                                   for i, (c, w) in enumerate(zip(r, widths))).rstrip()
        cpus = len(os.sched_getaffinity(0))
        git = subprocess.run(["git", "describe", "--always", "--dirty=+uncommitted"], cwd=ROOT,
                             capture_output=True, text=True).stdout.strip() or "unknown"
        out = [
            f"ct-harmonizer benchmark, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}: "
            f"{cpus} CPUs, {os.cpu_count()} online; tree {git}; model {manifest['name']} {manifest['version']} "
            f"(patch {manifest['tensors']['patch']}, valid_margin {manifest['tensors']['valid_margin']}), "
            f"device {t[0]['device']}; 512x512 synthetic phantom series; warm page cache",
            "",
            line(head),
            line(tuple("-" * w for w in widths)),
        ] + [line(r) for r in rows] + [
            "",
            f"output agreement (rust DICOM int16 vs python float HU before rounding, {agree['slices']} slices, "
            f"{agree['voxels']} voxels):",
            f"    max |rust - python float| = {agree['max_abs_hu']:.4f} HU = {agree['max_abs_unit']:.2e} in [-1,1] units"
            f" (<= 0.5 HU: equal up to the int16 rounding)",
            f"    voxels where rust int16 != python float rounded half away from zero (Rust's rule): "
            f"{agree['voxels_diff']}",
            f"    voxels where rust int16 != python's own int16 files (np.round, half to even; differ by 1 HU "
            f"only at exact .5): {agree['voxels_diff_numpy_round']}",
            "",
            f"ratios are medians of per-repetition ratios (memory: each 100/600 pair run back to back; "
            f"rust/python: alternated); timed runs: {len(self.raw)}, {elapsed / 60:.1f} min "
            f"(of which {self.waited:.0f} s waiting for other processes to leave the CPUs)",
        ]
        text = "\n".join(out) + "\n"
        print(text, end="")
        raw = "\nraw figures of every run:\n" + "\n".join(f"  {label}: {json.dumps(r)}" for label, r in self.raw)
        (self.work / "results.txt").write_text(text + raw + "\n")
        log(f"written to {self.work / 'results.txt'}")


def axis_plan(n, tile, margin):
    """Tiles along one axis as the Rust tiler plans them (the reference's copy of its plan)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_reference import axis_tiles
    return axis_tiles(n, tile, margin)


def halo_factor(dims, patch, margin):
    """Input voxels the tiles read per voxel of the volume: 1.0 when nothing is recomputed."""
    f = 1.0
    for n, t, m in zip(dims, patch, margin):
        f *= sum(length for _, length, _, _ in axis_plan(n, t, m)) / n
    return f


class InferenceBench(Bench):
    """Inference cost of every model in --models-dir, ONNX Runtime threads 1 and 2 (module docs)."""

    OUT_SLICES, OUT_SIZE, THREADS = 300, 512, (1, 2)

    def __init__(self, args):
        super().__init__(args)
        self.ref_python = args.ref_python
        self.ref_missing = self.check_ref_python()
        self.results = []  # one dict per model

    def check_ref_python(self):
        """None when --ref-python can run the reference, else why not."""
        if not self.ref_python:
            return "no Python for the reference (--ref-python empty)"
        try:
            p = subprocess.run([self.ref_python, "-c", "import pydicom, numpy, onnxruntime"],
                               capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"reference Python {self.ref_python} cannot run: {e}"
        if p.returncode != 0:
            return f"reference Python {self.ref_python} lacks pydicom/numpy/onnxruntime: {last_line(p.stderr)}"
        return None

    def models(self):
        return sorted(d.name for d in self.models_dir.iterdir() if (d / "model.toml").is_file())

    def rust_run(self, name, series, threads, label):
        env = dict(self.env, CT_HARMONIZER__MODELS__DEFAULT=name,
                   CT_HARMONIZER__RUNTIME__INTRA_THREADS=str(threads))
        out = self.work / "out-rust"
        wall, rss, so, _, extra = self.timed([str(self.bin), "process", str(series), "--out", str(out), "--stats"],
                                             out, env=env)
        m = re.search(r"stats: wall_s=([\d.]+) run_s=([\d.]+) runs=(\d+) device=(\S+)", so)
        if not m:
            raise RunFailed(f"no stats line in the output of process: {last_line(so)}")
        r = dict(wall=wall, rss_kib=rss, wall_s=float(m.group(1)), run_s=float(m.group(2)),
                 runs=int(m.group(3)), device=m.group(4), **extra)
        self.raw.append((label, r))
        return r

    def ref_run(self, model_dir, series, threads, label):
        out = self.work / "out-python"
        cmd = [self.ref_python, str(self.reference), str(series), "--model", str(model_dir), "--out", str(out),
               "--threads", str(threads)]
        wall, rss, _, se, extra = self.timed(cmd, out, env=self.env)
        m = re.search(r"reference: (.*)", se)
        if not m:
            raise RunFailed(f"no reference line in its stderr: {last_line(se)}")
        r = dict(wall=wall, rss_kib=rss, **extra)
        r.update({k: float(v) for k, v in (kv.split("=") for kv in m.group(1).split())})
        self.raw.append((label, r))
        return r

    def run(self):
        a = self.args
        started = time.perf_counter()
        names = self.models()
        log(f"inference cost of {len(names)} model(s) in {self.models_dir}: {', '.join(names)}")
        if self.ref_missing:
            log(f"Python reference skipped: {self.ref_missing}")
        for name in names:
            model_dir = self.models_dir / name
            res = dict(model=name, skipped=None, ref_skipped=self.ref_missing, rows={})
            self.results.append(res)
            try:
                manifest = tomllib.loads((model_dir / "model.toml").read_text())
                t = manifest["tensors"]
                scale = [int(round(v)) for v in t["scale"]]
                res["version"] = manifest.get("version", "?")
            except (OSError, KeyError, ValueError, TypeError) as e:
                res["skipped"] = f"manifest unreadable: {e}"
                log(f"{name}: skipped ({res['skipped']})")
                continue
            size_in = a.size // scale[1]
            # A short untimed probe (also the warm-up) decides whether the model is slow: its
            # estimated time on the full series exceeds --slow-seconds.
            n_probe = -(-16 // scale[0])
            try:
                probe = self.rust_run(name, self.phantom(n_probe, size_in), 1, f"{name} probe t1")
            except RunFailed as e:
                res["skipped"] = f"process failed: {e}"
                log(f"{name}: skipped ({res['skipped']})")
                continue
            estimate = probe["wall_s"] * a.slices / (n_probe * scale[0])
            slow = estimate > a.slow_seconds
            reps = a.reps_slow if slow else a.reps
            n_out = a.slices_slow if slow else a.slices
            n_in = -(-n_out // scale[0])
            log(f"{name}: about {estimate:.0f} s for {a.slices} slices on 1 thread: "
                f"{'slow, ' if slow else ''}{reps} repetition(s) on {n_in} input slices")
            series = self.phantom(n_in, size_in)
            res.update(in_slices=n_in, in_size=size_in, out_slices=n_in * scale[0], out_size=size_in * scale[1],
                       tile=t["patch"], margin=t["valid_margin"],
                       halo=halo_factor([n_in, size_in, size_in], t["patch"], t["valid_margin"]),
                       halo_full=halo_factor([-(-a.slices // scale[0]), size_in, size_in], t["patch"],
                                             t["valid_margin"]))
            res["slow"] = slow
            for rep in range(reps):
                for threads in self.THREADS:
                    row = res["rows"].setdefault(threads, dict(rust=[], ref=[]))
                    log(f"{name}: repetition {rep + 1} of {reps}, {threads} thread(s)")
                    # alternate which side goes first so neither always follows the other
                    for side in (("rust", "ref") if rep % 2 == 0 else ("ref", "rust")):
                        if res["skipped"]:
                            break
                        if side == "rust":
                            try:
                                row["rust"].append(self.rust_run(name, series, threads,
                                                                 f"{name} rust t{threads} #{rep + 1}"))
                            except RunFailed as e:
                                res["skipped"] = f"process failed: {e}"
                                log(f"{name}: skipped ({res['skipped']})")
                        elif not res["ref_skipped"]:
                            try:
                                row["ref"].append(self.ref_run(model_dir, series, threads,
                                                               f"{name} python t{threads} #{rep + 1}"))
                            except RunFailed as e:
                                res["ref_skipped"] = f"reference failed: {e}"
                                log(f"{name}: Python reference skipped ({res['ref_skipped']})")
        self.report(time.perf_counter() - started)

    def report(self, elapsed):
        med = statistics.median
        head = ("model", "thr", "reps", "wall/run", "wall s", "run s", "s/in slice", "s/out slice", "halo",
                "py reps", "py wall/run", "py wall s", "py/rust wall", "others %")
        rows, notes = [], []
        for res in self.results:
            name = f"{res['model']} {res.get('version', '')}".strip()
            if res["skipped"] and not any(r["rust"] for r in res["rows"].values()):
                rows.append((name, "-", "0", "skipped") + ("-",) * (len(head) - 4))
                notes.append(f"{name}: skipped: {res['skipped']}")
                continue
            if res["skipped"]:
                notes.append(f"{name}: later runs failed ({res['skipped']}); rows hold the runs that succeeded")
            notes.append(f"{name}: input {res['in_slices']} slices of {res['in_size']}x{res['in_size']}, output "
                         f"{res['out_slices']} of {res['out_size']}x{res['out_size']}; tile {res['tile']}, valid "
                         f"margin {res['margin']}: tiles read {res['halo']:.2f} input voxels per volume voxel"
                         + (f" ({res['halo_full']:.2f} on {self.args.slices} output slices)"
                            if res["halo_full"] != res["halo"] else ""))
            if res["ref_skipped"]:
                notes.append(f"{name}: Python reference skipped: {res['ref_skipped']}")
            for threads, row in sorted(res["rows"].items()):
                rr, pr = row["rust"], row["ref"]
                if not rr:
                    continue
                cells = [name, str(threads), str(len(rr)),
                         f"{med([r['wall_s'] / r['run_s'] for r in rr]):.2f}",
                         f"{med([r['wall_s'] for r in rr]):.2f}", f"{med([r['run_s'] for r in rr]):.2f}",
                         f"{med([r['wall_s'] for r in rr]) / res['in_slices']:.4f}",
                         f"{med([r['wall_s'] for r in rr]) / res['out_slices']:.4f}", f"{res['halo']:.2f}"]
                if pr:
                    pairs = list(zip(pr, rr))
                    cells += [str(len(pr)), f"{med([p['wall'] / p['run_s'] for p in pr]):.2f}",
                              f"{med([p['wall'] for p in pr]):.2f}",
                              f"{med([p['wall'] / r['wall'] for p, r in pairs]):.2f}"]
                else:
                    cells += ["0", "skipped", "-", "-"]
                cells.append(f"{100 * med([r['others'] for r in rr + pr]):.0f}")
                rows.append(tuple(cells))
        widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
        line = lambda r: "  ".join(c.ljust(w) if i in (0,) else c.rjust(w)
                                   for i, (c, w) in enumerate(zip(r, widths))).rstrip()
        cpus = len(os.sched_getaffinity(0))
        git = subprocess.run(["git", "describe", "--always", "--dirty=+uncommitted"], cwd=ROOT,
                             capture_output=True, text=True).stdout.strip() or "unknown"
        with open("/proc/loadavg") as f:
            load = " ".join(f.read().split()[:3])
        out = [
            f"ct-harmonizer inference cost, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}: "
            f"{cpus} CPUs; tree {git}; CPU execution provider; synthetic phantom series; warm page cache",
            "",
            line(head),
            line(tuple("-" * w for w in widths)),
        ] + [line(r) for r in rows] + [""] + notes + [
            "",
            "wall/run: `process` wall (its --stats wall_s) / summed Session::run, median of per-run ratios; "
            "wall s, run s: medians; s/in slice, s/out slice: median wall / slices in, out; halo: input voxels "
            "the tiles read per volume voxel (the overlap that valid-core tiling recomputes, inside run s); "
            "py: scripts/bench_reference.py (pydicom, NumPy tiles, onnxruntime) on the same series with the "
            "same threads, its wall/run = wall / its summed session.run; py/rust wall: median of paired ratios; "
            "others %: CPU share of other processes during the runs (median).",
            f"repetitions: --reps {self.args.reps} on {self.args.slices} output slices; --reps-slow "
            f"{self.args.reps_slow} on {self.args.slices_slow} output slices for a model estimated (16-slice "
            f"probe, 1 thread) to take over {self.args.slow_seconds:.0f} s on {self.args.slices}; timed runs: {len(self.raw)}, {elapsed / 60:.1f} min "
            f"(of which {self.waited:.0f} s waiting for other processes); load average at the end {load}",
        ]
        text = "\n".join(out) + "\n"
        print(text, end="")
        raw = "\nraw figures of every run:\n" + "\n".join(f"  {label}: {json.dumps(r)}" for label, r in self.raw)
        (self.work / "inference.txt").write_text(text + raw + "\n")
        log(f"written to {self.work / 'inference.txt'}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", choices=("process", "inference"), default="process")
    ap.add_argument("--ref-python", default=sys.executable,
                    help="inference suite: Python with pydicom, numpy and onnxruntime for the reference")
    ap.add_argument("--reps", type=int, default=5, help="inference suite: repetitions per model and threads")
    ap.add_argument("--reps-slow", type=int, default=3, help="inference suite: repetitions for slow models")
    ap.add_argument("--slow-seconds", type=float, default=60.0,
                    help="inference suite: a model whose first run takes longer is slow")
    ap.add_argument("--slices", type=int, default=300, help="inference suite: output slices")
    ap.add_argument("--slices-slow", type=int, default=300, help="inference suite: output slices for slow models")
    ap.add_argument("--size", type=int, default=512, help="inference suite: output rows and columns")
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "ct-harmonizer"))
    ap.add_argument("--models-dir", default=str(ROOT / "models"))
    ap.add_argument("--model", default="gaussian-soft-baseline")
    ap.add_argument("--work", default=str(ROOT / "out" / "bench"))
    ap.add_argument("--reps-tiling", type=int, default=9)
    ap.add_argument("--reps-memory", type=int, default=5)
    ap.add_argument("--reps-compare", type=int, default=7)
    ap.add_argument("--quiet-wait", type=float, default=120,
                    help="seconds (in all) to wait for other processes to leave the CPUs before timed runs")
    ap.add_argument("--quiet-share", type=float, default=0.25,
                    help="share of all CPUs other processes may use for the machine to count as quiet")
    args = ap.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.suite == "inference":
        if args.reps < 1 or args.reps_slow < 1:
            fail("--reps and --reps-slow must be at least 1")
        InferenceBench(args).run()
        return
    for k in ("reps_tiling", "reps_memory", "reps_compare"):
        if getattr(args, k) < 3:
            fail(f"--{k.replace('_', '-')} must be at least 3")
    Bench(args).run()


if __name__ == "__main__":
    main()
