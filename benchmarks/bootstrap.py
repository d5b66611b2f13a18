"""What the test-image resamples cost and how close the binned pixel replicates are to the exact metric.

    python benchmarks/bootstrap.py [--replicates 500] [--check 100] [--sizes 16x128 40x128 40x256 80x512]

For each (images x pixels) case: the time of the exact pixel metrics alone (``PixelAccumulator.compute()``), the
time with the resamples (``compute(resample=...)``: per-image counts on common bins, B replicates), and the
exact image replicates (``image_replicates``); then, on ``--check`` of the resamples, the largest difference
between the binned replicate and the exact metric recomputed on the resampled maps, and the two spreads. The
smoke collection's evaluations are 8 to 40 test images per category at 128-512 px. Times on a shared 2-core
machine are upper bounds.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from adlib import metrics  # noqa: E402
from test_metrics import blob_masks, smooth_maps  # noqa: E402


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def case(n: int, size: int, replicates: int, check: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng, n, size)
    maps = smooth_maps(rng, masks, noise=1.2)
    keys = [f"set/c/test/x/{i:03d}.png" for i in range(n)]
    labels = masks.reshape(n, -1).any(axis=1)
    counts = metrics.resample_counts(keys, labels, replicates)
    scores = maps.reshape(n, -1).max(axis=1)

    def exact():
        acc = metrics.PixelAccumulator()
        acc.update(maps, masks)
        return acc.compute()

    def resampled():
        acc = metrics.PixelAccumulator()
        acc.update(maps, masks)
        acc.compute(resample=counts)
        return acc

    out = {"images": n, "size": size, "exact_s": best_of(exact), "with_resamples_s": best_of(resampled),
           "image_replicates_s": best_of(lambda: metrics.image_replicates(scores, labels, counts))}
    acc = resampled()
    for key in ("auroc", "ap", "f1max", "aupro"):
        brute = np.array([metrics.pixel_metrics(maps[np.repeat(np.arange(n), c)], masks[np.repeat(np.arange(n), c)])[key]
                          for c in counts[:check]])
        reps = acc.replicates[key][:check]
        out[f"{key}_max_diff"] = float(np.abs(reps - brute).max())
        out[f"{key}_sd_exact"], out[f"{key}_sd_binned"] = float(brute.std()), float(reps.std())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=metrics.BOOTSTRAP)
    parser.add_argument("--check", type=int, default=50, help="resamples checked against the exact metric")
    parser.add_argument("--sizes", nargs="+", default=["16x128", "40x128", "40x256", "20x512"])
    args = parser.parse_args()
    print(f"B = {args.replicates} resamples, {metrics.PIXEL_BINS} bins; times in seconds (best of 3)")
    print(f"{'images':>6} {'px':>5} {'exact':>7} {'+resamples':>10} {'overhead':>8} {'image B':>8}  "
          f"largest |binned − exact| (AUROC, AP, max-F1, AU-PRO, in points)  spread exact/binned (AP)")
    for spec in args.sizes:
        n, size = (int(v) for v in spec.split("x"))
        r = case(n, size, args.replicates, args.check)
        diffs = ", ".join(f"{100 * r[f'{k}_max_diff']:.3f}" for k in ("auroc", "ap", "f1max", "aupro"))
        print(f"{n:>6} {size:>5} {r['exact_s']:>7.3f} {r['with_resamples_s']:>10.3f} "
              f"{r['with_resamples_s'] - r['exact_s']:>8.3f} {r['image_replicates_s']:>8.4f}  {diffs}  "
              f"{100 * r['ap_sd_exact']:.2f}/{100 * r['ap_sd_binned']:.2f}")


if __name__ == "__main__":
    main()
