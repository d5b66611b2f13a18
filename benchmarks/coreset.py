"""PatchCore's greedy coreset at the size of a large category: the pruned selection against the reference.

    ADLIB_DATA=/work/shared/data python benchmarks/coreset.py                  # 761 images, reference timed on 200 picks
    ADLIB_DATA=/work/shared/data python benchmarks/coreset.py --reference-picks all   # the whole reference run
    python benchmarks/coreset.py --images 100 --reference-picks all            # small, synthetic images

The bank is what the smoke PatchCore builds: EfficientNet-Lite0 (offline weights) strides 8 + 16, 3 x 3
local averaging, 152 channels per patch at 256 px, 32 x 32 patches per image. ``--images 761`` gives the
779,264 patches of the category that took the old selection over 14 minutes; the images are MVTec AD
bottle's 209 training images and their flips (left-right, up-down, both), taken in that order, or the
embedded synthetic images without ADLIB_DATA. Frozen features go through the on-disk feature cache.
The coreset keeps 1 % (``--ratio``), on the 128-d random projection, seed 0, as ``PatchCore.fit_memory``.

Printed: wall and CPU seconds of ``greedy_coreset`` and of ``greedy_coreset_reference`` (the old code,
unchanged). The reference does the same full pass for every pick, so with ``--reference-picks N`` its time
for all picks is extrapolated from the first N (labelled "extrapolated"); with ``all`` it runs to the end and
the two index lists are compared. Wall times on a shared machine are noisy: the load average is printed,
and CPU seconds (``time.process_time``) are less affected by other processes than wall seconds.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch


def bank_images(count: int, size: int) -> torch.Tensor:
    from adlib.data import AnomalyDataset, list_categories, synthetic_root

    data = os.environ.get("ADLIB_DATA")
    if data and (Path(data) / "mvtec_ad" / "bottle").is_dir():
        sets = [AnomalyDataset(Path(data) / "mvtec_ad", "bottle", "train", image_size=size)]
    else:
        root = Path(synthetic_root()) / "synthetic_ad"
        sets = [AnomalyDataset(root, c, "train", image_size=size) for c in list_categories(root)]
    images = torch.stack([ds[i]["image"] for ds in sets for i in range(len(ds))])
    views = torch.cat([images, images.flip(-1), images.flip(-2), images.flip(-1, -2)])
    if count > len(views):
        raise SystemExit(f"--images {count}: only {len(views)} images (with flips) available")
    return views[:count]


def patch_bank(images: torch.Tensor, batch_size: int = 16) -> tuple[torch.Tensor, str]:
    """The smoke PatchCore's training patches (N * 32 * 32, 152), through the on-disk feature cache."""
    from adlib import engine, featcache
    from adlib.models.patchcore import PatchCore, PatchCoreConfig

    model = PatchCore(PatchCoreConfig(image_size=images.shape[-1], coreset_ratio=0.01)).eval()
    key = model.feature_key()
    store = featcache.FeatureStore(featcache.bits_key(key, "cpu")) if featcache.enabled() and key else None
    patches, hits = [], 0
    with torch.no_grad():
        for batch in images.split(batch_size):
            feats, found = engine.extract_frozen(model, batch, "cpu", store)  # the engine's bits and cache
            hits += found
            x = model.embed(feats)
            patches.append(x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]))
    return torch.cat(patches), f"{hits}/{len(images)} images from the feature cache"


def timed(fn, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=761, help="training images in the bank (default 761)")
    parser.add_argument("--size", type=int, default=256, help="image size (default 256, the smoke profile)")
    parser.add_argument("--ratio", type=float, default=0.01, help="coreset fraction (default 0.01)")
    parser.add_argument("--reference-picks", default="200",
                        help="picks to time the reference on ('all': run it to the end and compare indices)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from adlib.models.patchcore import PatchCoreConfig, greedy_coreset, greedy_coreset_reference

    start = time.perf_counter()
    bank, cache_note = patch_bank(bank_images(args.images, args.size))
    count = max(1, int(round(args.ratio * len(bank))))
    projection = PatchCoreConfig().projection_dim
    print(f"bank: {len(bank):,} patches x {bank.shape[1]} channels from {args.images} images at {args.size} px "
          f"({cache_note}, {time.perf_counter() - start:.0f} s); coreset {count:,} picks ({args.ratio:.0%}) on a "
          f"{projection}-d projection; torch threads {torch.get_num_threads()}", flush=True)

    load = os.getloadavg()[0]
    new, new_wall, new_cpu = timed(greedy_coreset, bank, count, projection, 0)
    print(f"new greedy_coreset:       wall {new_wall:8.1f} s   cpu {new_cpu:8.1f} s   "
          f"(load average {load:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)", flush=True)

    load = os.getloadavg()[0]
    picks = count if args.reference_picks == "all" else min(count, int(args.reference_picks))
    old, old_wall, old_cpu = timed(greedy_coreset_reference, bank, picks, projection, 0)
    label = "measured"
    if picks < count:  # picks 2..picks are full passes like every later one
        old_wall, old_cpu = old_wall * (count - 1) / max(picks - 1, 1), old_cpu * (count - 1) / max(picks - 1, 1)
        label = f"extrapolated from {picks} picks"
    print(f"old greedy_coreset_reference: wall {old_wall:8.1f} s   cpu {old_cpu:8.1f} s   ({label}; load average "
          f"{load:.1f} -> {os.getloadavg()[0]:.1f})", flush=True)
    same = torch.equal(new[:picks], old)
    print(f"speed-up: wall {old_wall / new_wall:.1f}x, cpu {old_cpu / new_cpu:.1f}x; "
          f"identical indices: {same} (first {picks:,} of {count:,} picks compared)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
