"""Compares the `process` outputs of scripts/tile_effect.sh: per case and tile size, PSNR against
the target (the seed window [-1150, 350] HU mapped onto [-1, 1], as `ct-train eval`) and the max and
mean |difference| in HU against the output of the first tile size.

Usage: tile_effect.py OUT MODEL PAIRS TAG...   (TAG: "32x128x128" for tile [32, 128, 128])"""
import glob
import os
import sys

import numpy as np
import pydicom


def load(folder):
    """HU volume of the one series under `folder` (slices sorted along z)."""
    files = [f for f in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
             if os.path.isfile(f) and not f.endswith(".log")]
    ds = [d for d in (pydicom.dcmread(f) for f in files) if hasattr(d, "PixelData")]
    ds.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    return np.stack([d.pixel_array.astype(np.float64) * float(getattr(d, "RescaleSlope", 1))
                     + float(getattr(d, "RescaleIntercept", 0)) for d in ds])


def psnr(a, b, lo=-1150.0, hi=350.0):
    f = lambda v: (np.clip(v, lo, hi) - lo) / (hi - lo) * 2 - 1
    return 10 * np.log10(4.0 / np.mean((f(a) - f(b)) ** 2))


def main():
    out, model, pairs, tags = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    print(f"case          tile          PSNR dB   max|d| HU  mean|d| HU  (d: against the {tags[0]} output)")
    for case in sorted(os.path.basename(p.rstrip("/")) for p in glob.glob(os.path.join(pairs, "*/"))):
        tgt = load(os.path.join(pairs, case, "soft"))
        ref = None
        for t in tags:
            o = load(os.path.join(out, f"out-{model}-{t}", case))
            ref = o if ref is None else ref
            d = np.abs(o - ref)
            print(f"{case:13s} {t:12s} {psnr(o, tgt):8.2f} {d.max():10.1f} {d.mean():11.3f}")


if __name__ == "__main__":
    main()
