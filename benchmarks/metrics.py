"""Time adlib's exact pixel metrics against scikit-learn and a reference AU-PRO, on generated maps.

    python benchmarks/metrics.py [--n 100 --size 1024] [--skip-sklearn]

Every method runs in its own subprocess on the same generated data (saved once as .npy), so each peak
memory (ru_maxrss, which includes the ~5 bytes/pixel of loaded maps and masks) is its own.

What is measured:
- adlib: ``pixel_metrics`` (AUROC + AP + max-F1 + AU-PRO together) on the whole set, and the same through
  ``PixelAccumulator`` fed 8 maps at a time from a memory-mapped file (the streaming path).
- scikit-learn: ``roc_auc_score`` + ``average_precision_score`` + ``precision_recall_curve`` (max-F1).
- reference AU-PRO (the tests' definition: binarise at a threshold, label the ground truth with
  ``scipy.ndimage.label``, measure every region's overlap): an exact sweep visits every distinct score,
  which at full size is out of reach, so the time of one full-size threshold step is measured (median of
  ``--ref-steps`` steps) and multiplied by the number of distinct scores; the exact agreement with adlib
  is checked on a small version of the same generator (``--check-n`` maps of ``--check-size`` px).
- one ``np.sort`` of all pixels, the yardstick for "AU-PRO costs no more than one sort".
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]


def generate(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth-noise anomaly maps with a raised blob at each defect; about half the images defective,
    each with 1-5 regions (round and elongated, from a few pixels to 1/8 of the image) and some
    false-positive blobs on normal images."""
    rng = np.random.default_rng(seed)
    maps = np.empty((n, size, size), dtype=np.float32)
    masks = np.zeros((n, size, size), dtype=bool)
    yy, xx = np.ogrid[:size, :size]
    coarse = max(size // 16, 4)
    for i in range(n):
        noise = ndimage.gaussian_filter(rng.standard_normal((coarse, coarse)), 1.0)
        noise = ndimage.zoom(noise, size / coarse, order=1)[:size, :size]
        noise = (noise - noise.mean()) / (noise.std() + 1e-12)
        bumps = np.zeros((size, size))
        if i % 2 == 0:
            for _ in range(rng.integers(1, 6)):
                cy, cx = rng.uniform(0, size, 2)
                a = rng.uniform(2, size / 8)
                b = a * rng.uniform(0.1, 1.0)
                t = rng.uniform(0, np.pi)
                u = (yy - cy) * np.cos(t) + (xx - cx) * np.sin(t)
                v = -(yy - cy) * np.sin(t) + (xx - cx) * np.cos(t)
                region = (u / a) ** 2 + (v / b) ** 2 <= 1.0
                masks[i] |= region
                bumps += rng.uniform(0.5, 2.5) * region
        for _ in range(rng.integers(0, 3)):
            cy, cx = rng.uniform(0, size, 2)
            r = rng.uniform(2, size / 16)
            bumps += rng.uniform(0.3, 1.5) * (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r)
        smooth = ndimage.gaussian_filter(bumps, size / 256 + 1.0)
        maps[i] = 0.35 * noise + smooth + 0.02 * rng.standard_normal((size, size))
    return maps, masks


# ---------------------------------------------------------------------------------------------- workers


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def worker_adlib(data: Path) -> dict:
    from adlib.metrics import pixel_metrics

    maps, masks = np.load(data / "maps.npy"), np.load(data / "masks.npy")
    loaded = _rss_gib()
    t0 = time.perf_counter()
    result = pixel_metrics(maps, masks)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "metrics": result, "peak_rss_gib": _rss_gib(), "rss_after_load_gib": loaded}


def worker_stream(data: Path) -> dict:
    from adlib.metrics import PixelAccumulator

    maps, masks = np.load(data / "maps.npy", mmap_mode="r"), np.load(data / "masks.npy", mmap_mode="r")
    t0 = time.perf_counter()
    acc = PixelAccumulator()
    for start in range(0, maps.shape[0], 8):
        acc.update(np.array(maps[start : start + 8]), np.array(masks[start : start + 8]))
    result = acc.compute()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "metrics": result, "peak_rss_gib": _rss_gib()}


def worker_sklearn(data: Path) -> dict:
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

    maps, masks = np.load(data / "maps.npy"), np.load(data / "masks.npy")
    scores, labels = maps.reshape(-1), masks.reshape(-1)
    loaded = _rss_gib()
    t0 = time.perf_counter()
    auroc = roc_auc_score(labels, scores)
    t1 = time.perf_counter()
    ap = average_precision_score(labels, scores)
    t2 = time.perf_counter()
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    f1max = float(np.max(f1[np.isfinite(f1)]))
    t3 = time.perf_counter()
    return {
        "seconds": t3 - t0,
        "split": {"auroc": t1 - t0, "ap": t2 - t1, "f1max": t3 - t2},
        "metrics": {"auroc": float(auroc), "ap": float(ap), "f1max": f1max},
        "peak_rss_gib": _rss_gib(),
        "rss_after_load_gib": loaded,
    }


def reference_sweep_step(maps: np.ndarray, masks: np.ndarray, regions: list, threshold: float) -> tuple:
    predicted = maps >= threshold
    fpr = np.count_nonzero(predicted & ~masks) / np.count_nonzero(~masks)
    pro = np.mean([predicted[i][region].mean() for i, region in regions])
    return fpr, pro


def worker_reference(data: Path, steps: int) -> dict:
    maps, masks = np.load(data / "maps.npy"), np.load(data / "masks.npy")
    regions = []
    for i, mask in enumerate(masks):
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(i, labels == r) for r in range(1, n + 1)]
    t0 = time.perf_counter()
    distinct = np.unique(maps)
    t_sort = time.perf_counter() - t0
    times = []
    for threshold in distinct[np.linspace(0, distinct.size - 1, steps).astype(int)]:
        t = time.perf_counter()
        reference_sweep_step(maps, masks, regions, float(threshold))
        times.append(time.perf_counter() - t)
    per_step = float(np.median(times))
    return {
        "seconds_per_threshold": per_step,
        "distinct_scores": int(distinct.size),
        "estimated_seconds": per_step * distinct.size,
        "np_unique_seconds": t_sort,
        "peak_rss_gib": _rss_gib(),
    }


def worker_sort(data: Path) -> dict:
    maps = np.load(data / "maps.npy")
    t0 = time.perf_counter()
    np.sort(maps.reshape(-1))
    return {"seconds": time.perf_counter() - t0, "peak_rss_gib": _rss_gib()}


WORKERS = {"adlib": worker_adlib, "stream": worker_stream, "sklearn": worker_sklearn, "sort": worker_sort}


def run_worker(name: str, data: Path, extra: list[str] | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--data", str(data)] + (extra or [])
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    load = os.getloadavg()[0]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["load_before"] = load
    return result


def check_small(n: int, size: int) -> float:
    """Largest |adlib - reference| AU-PRO on a small version of the data (exact sweep feasible)."""
    sys.path.insert(0, str(ROOT))
    from adlib.metrics import pixel_metrics

    maps, masks = generate(n, size, seed=1)
    regions = []
    for i, mask in enumerate(masks):
        labels, k = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(i, labels == r) for r in range(1, k + 1)]
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        fpr, pro = reference_sweep_step(maps, masks, regions, float(t))
        fprs.append(fpr)
        pros.append(pro)
    fprs, pros = np.array(fprs), np.array(pros)
    j = int(np.searchsorted(fprs, 0.3, side="right"))
    x, y = list(fprs[:j]), list(pros[:j])
    if x[-1] < 0.3 and j < fprs.size:
        x.append(0.3)
        y.append(pros[j - 1] + (pros[j] - pros[j - 1]) * (0.3 - fprs[j - 1]) / (fprs[j] - fprs[j - 1]))
    reference = float(np.trapezoid(y, x) / 0.3)
    return abs(pixel_metrics(maps, masks)["aupro"] - reference)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="number of maps (default 100)")
    parser.add_argument("--size", type=int, default=1024, help="map side in pixels (default 1024)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ref-steps", type=int, default=5, help="full-size reference threshold steps timed")
    parser.add_argument("--check-n", type=int, default=4, help="maps in the exact AU-PRO agreement check")
    parser.add_argument("--check-size", type=int, default=48, help="their size in pixels")
    parser.add_argument("--skip-sklearn", action="store_true", help="leave out scikit-learn (slow, memory-hungry)")
    parser.add_argument("--worker", choices=[*WORKERS, "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        sys.path.insert(0, str(ROOT))
        if args.worker == "reference":
            result = worker_reference(args.data, args.ref_steps)
        else:
            result = WORKERS[args.worker](args.data)
        print(json.dumps(result))
        return 0

    pixels = args.n * args.size * args.size
    print(f"data: {args.n} maps of {args.size}x{args.size} = {pixels / 1e6:.1f} M pixels, seed {args.seed}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory(prefix="adlib-bench-") as tmp:
        data = Path(tmp)
        t0 = time.perf_counter()
        maps, masks = generate(args.n, args.size, args.seed)
        np.save(data / "maps.npy", maps)
        np.save(data / "masks.npy", masks)
        n_regions = sum(ndimage.label(m, structure=np.ones((3, 3)))[1] for m in masks)
        print(f"generated in {time.perf_counter() - t0:.1f} s: {masks.mean() * 100:.2f}% anomalous pixels, "
              f"{int(masks.any(axis=(1, 2)).sum())} defective maps, {n_regions} regions")
        del maps, masks

        results = {"adlib": run_worker("adlib", data), "stream": run_worker("stream", data)}
        results["sort"] = run_worker("sort", data)
        results["reference"] = run_worker("reference", data, ["--ref-steps", str(args.ref_steps)])
        if not args.skip_sklearn:
            results["sklearn"] = run_worker("sklearn", data)
            # Other work on the machine changes the load during the long scikit-learn run: time adlib
            # again right after it and compare with the slower of the two adlib runs.
            again = run_worker("adlib", data)
            print(f"adlib timed twice, before and after scikit-learn: {results['adlib']['seconds']:.2f} s, "
                  f"{again['seconds']:.2f} s (the slower one is used below)")
            if again["seconds"] > results["adlib"]["seconds"]:
                results["adlib"] = again

    ours, stream = results["adlib"], results["stream"]
    print(f"\nadlib pixel_metrics (AUROC+AP+F1max+AU-PRO): {ours['seconds']:8.2f} s, "
          f"peak RSS {ours['peak_rss_gib']:.2f} GiB ({ours['rss_after_load_gib']:.2f} GiB after loading the data), "
          f"load {ours['load_before']:.1f}")
    print(f"adlib PixelAccumulator, 8 maps a batch:       {stream['seconds']:8.2f} s, "
          f"peak RSS {stream['peak_rss_gib']:.2f} GiB (maps read from a memory-mapped file)")
    print("  " + ", ".join(f"{k} {v:.6f}" for k, v in ours["metrics"].items()))
    print(f"one np.sort of all pixels:                    {results['sort']['seconds']:8.2f} s")
    if "sklearn" in results:
        sk = results["sklearn"]
        split = ", ".join(f"{k} {v:.1f} s" for k, v in sk["split"].items())
        print(f"scikit-learn AUROC+AP+F1max:                  {sk['seconds']:8.2f} s ({split}), "
              f"peak RSS {sk['peak_rss_gib']:.2f} GiB ({sk['rss_after_load_gib']:.2f} after loading), "
              f"load {sk['load_before']:.1f}")
        diff = max(abs(ours["metrics"][k] - sk["metrics"][k]) for k in ("auroc", "ap", "f1max"))
        print(f"  ratio sklearn / adlib (adlib also did AU-PRO): {sk['seconds'] / ours['seconds']:.1f}x; "
              f"largest |adlib - sklearn| over AUROC, AP, F1max: {diff:.2e}")
        stream_diff = max(abs(ours["metrics"][k] - stream["metrics"][k]) for k in ours["metrics"])
        print(f"  largest |one-shot - accumulator|: {stream_diff:.2e}")
    ref = results["reference"]
    print(f"reference AU-PRO sweep: {ref['seconds_per_threshold']:.3f} s per threshold (median of "
          f"{args.ref_steps} full-size steps) x {ref['distinct_scores']} distinct scores = "
          f"{ref['estimated_seconds']:.3g} s estimated")
    print(f"  ratio reference (estimated) / adlib all four metrics: {ref['estimated_seconds'] / ours['seconds']:.3g}x; "
          f"adlib's whole call costs as much as {ours['seconds'] / ref['seconds_per_threshold']:.0f} reference "
          f"threshold steps")
    diff = check_small(args.check_n, args.check_size)
    print(f"  exact AU-PRO agreement on {args.check_n} maps of {args.check_size} px (full reference sweep): "
          f"largest |adlib - reference| = {diff:.2e}")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
