#!/usr/bin/env python3
"""Runs the ct-harmonizer benchmark; called by scripts/bench.sh (which builds and installs first).

Measures, with medians of paired repetitions (never single times):
  1. tiling overhead: `process` wall time / summed Session::run time, 300-slice 512x512 phantom;
  2. memory: peak RSS (/usr/bin/time -v) of `process` on 600 slices / on 100 slices;
  3. rust vs python: end-to-end wall time of scripts/bench_reference.py / of `process` on the same
     300-slice series, run alternately, plus agreement of the output voxels.
Prints a table and writes it (with every repetition's raw figures) to out/bench/results.txt.
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

import numpy as np
import pydicom

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
    def phantom(self, n):
        d = self.work / "data" / f"phantom-{n}"
        if d.is_dir() and len(list(d.glob("slice_*.dcm"))) == n:
            return d
        log(f"writing a {n}-slice 512x512 phantom series into {d}")
        shutil.rmtree(d, ignore_errors=True)
        tmp = d.with_name(d.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run([str(self.bin), "sample", "--kind", "phantom", "--slices", str(n), "--size", "512",
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

    def timed(self, cmd, out_dir):
        """Runs cmd under /usr/bin/time -v after clearing out_dir and syncing; returns
        (wall seconds measured here, peak RSS KiB, stdout, stderr, extra figures)."""
        shutil.rmtree(out_dir, ignore_errors=True)
        os.sync()  # no dirty pages from the previous run are flushed on this run's time
        self.wait_quiet()
        tfile = self.work / "time-v.txt"
        b0 = busy_jiffies()
        t0 = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-v", "-o", str(tfile)] + cmd, cwd=ROOT, env=self.env,
                           capture_output=True, text=True)
        wall = time.perf_counter() - t0
        busy = (busy_jiffies() - b0) / CLK_TCK
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


def main():
    ap = argparse.ArgumentParser()
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
    for k in ("reps_tiling", "reps_memory", "reps_compare"):
        if getattr(args, k) < 3:
            fail(f"--{k.replace('_', '-')} must be at least 3")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    Bench(args).run()


if __name__ == "__main__":
    main()
