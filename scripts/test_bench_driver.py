#!/usr/bin/env python3
"""Tests of scripts/bench_driver.py's inference suite without running a model (issue 13 §3, "Bad
inputs"), and of scripts/bench_daemon.py's direct-write row: a Python that cannot run the reference and a model that does not load make their rows say
"skipped" and why, and no ratio is printed for them; the halo figure follows the Rust tiler's plan.
Runs under the system Python 3.11 (no NumPy): python3 scripts/test_bench_driver.py
"""

import argparse
import errno
import os
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_daemon  # noqa: E402
import bench_driver  # noqa: E402


def args(work, ref_python, models_dir):
    return argparse.Namespace(
        work=str(work), bin="/nonexistent/ct-harmonizer", models_dir=str(models_dir), model="x",
        ref_python=ref_python, reps=1, reps_slow=1, slow_seconds=60.0, slices=300, slices_slow=300, size=512,
        quiet_wait=0, quiet_share=0.25)


class InferenceSuite(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)
        self.models = self.dir / "models"
        (self.models / "broken").mkdir(parents=True)
        (self.models / "broken" / "model.toml").write_text("name = 'broken'\n")  # no [tensors]
        (self.models / "not-a-model").mkdir()

    def tearDown(self):
        self.tmp.cleanup()

    def test_missing_reference_python_is_reported_not_fatal(self):
        b = bench_driver.InferenceBench(args(self.dir / "work", "/nonexistent/python", self.models))
        self.assertIn("cannot run", b.ref_missing)
        b.work.mkdir(parents=True)
        b.run()  # the broken manifest is skipped before any process run
        text = (b.work / "inference.txt").read_text()
        self.assertIn("broken", text)
        self.assertIn("skipped", text)
        self.assertNotIn("not-a-model", text)

    def test_rows_without_measurements_print_no_ratio(self):
        b = bench_driver.InferenceBench(args(self.dir / "work", "", self.models))
        self.assertIn("--ref-python empty", b.ref_missing)
        b.work.mkdir(parents=True)
        run = dict(wall=2.0, wall_s=2.0, run_s=1.0, others=0.1)
        b.results = [
            dict(model="measured", version="1", skipped=None, ref_skipped=b.ref_missing, in_slices=10,
                 in_size=512, out_slices=10, out_size=512, tile=[8, 512, 512], margin=[0, 1, 1], halo=1.0,
                 halo_full=1.0, rows={1: dict(rust=[run], ref=[])}),
            dict(model="failed", version="1", skipped="process failed: model file missing", ref_skipped=None,
                 rows={}),
        ]
        b.report(0.0)
        lines = (b.work / "inference.txt").read_text().splitlines()
        measured = next(ln for ln in lines if ln.startswith("measured"))
        failed = next(ln for ln in lines if ln.startswith("failed"))
        self.assertIn("2.00", measured)  # its own wall/run
        self.assertIn("skipped", measured)  # the Python columns
        self.assertEqual(measured.split().count("-"), 2)  # no Python wall, no py/rust ratio
        self.assertIn("skipped", failed)
        self.assertFalse(any(ch.isdigit() for ch in failed.split("skipped", 1)[1]), failed)
        self.assertTrue(any("process failed: model file missing" in ln for ln in lines))

    def test_halo_follows_the_tiler(self):
        self.assertEqual(bench_driver.halo_factor([32, 512, 512], [32, 512, 512], [0, 3, 3]), 1.0)
        # 300 slices, 80-slice tiles, margin 23: 8 tiles along z; 512 with 160/23: 5 tiles in-plane.
        h = bench_driver.halo_factor([300, 512, 512], [80, 160, 160], [23, 23, 23])
        self.assertAlmostEqual(h, (8 * 80 / 300) * (5 * 160 / 512) ** 2, places=9)


class DaemonBench(unittest.TestCase):
    """scripts/bench_daemon.py's direct-write row (issue 13 §1): measured where the file system
    takes direct I/O, skipped (None: no row, no bound from it) where it does not."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.series = Path(self.tmp.name) / "series"
        self.series.mkdir()
        for k in range(3):
            (self.series / f"{k}.dcm").write_bytes(bytes(range(256)) * (20 + k))
        bench_daemon.STATE = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def test_direct_write_is_measured(self):
        try:
            fd = os.open(Path(self.tmp.name) / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
            os.close(fd)
        except OSError:
            self.skipTest("this file system refuses O_DIRECT")
        t = bench_daemon.direct_write(self.series, reps=1)
        self.assertIsNotNone(t)
        self.assertGreater(t, 0)

    def test_direct_write_refused_is_skipped(self):
        real_open = os.open

        def refusing(path, flags, *a, **kw):
            if flags & os.O_DIRECT:
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_open(path, flags, *a, **kw)

        os.open = refusing
        try:
            self.assertIsNone(bench_daemon.direct_write(self.series, reps=1))
        finally:
            os.open = real_open
        self.assertEqual([p.name for p in Path(self.tmp.name).iterdir()], ["series"])


if __name__ == "__main__":
    unittest.main()
