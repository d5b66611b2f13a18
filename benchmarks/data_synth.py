"""Time the embedded synthetic benchmark's generation and check it is neither trivial nor hopeless.

    python benchmarks/data_synth.py [--seed 0 --size 256 --workers 2] [--knn] [--knn-datasets synthetic_ad]

Prints wall and CPU seconds of one default generation into a fresh temporary folder, the file count and
disk size per dataset, and with --knn a nearest-neighbour patch baseline (offline ImageNet
EfficientNet-Lite0, blocks 2-3, memory bank of 20k train patches) per category: image AUROC from the
maximum of the anomaly map, pixel AUROC over all test pixels. synthetic_hr is scored at 256 px and at
its native size, to show its defects fading at low resolution.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path


def knn_scores(root: Path, category: str, size: int) -> tuple[float, float]:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from sklearn.metrics import roc_auc_score

    from adlib import backbones
    from adlib.data import AnomalyDataset

    net = backbones.create("efficientnet_lite0", layers=[2, 3])

    def features(dataset):
        out = []
        with torch.no_grad():
            for start in range(0, len(dataset), 8):
                batch = torch.stack([dataset[i]["image"] for i in range(start, min(start + 8, len(dataset)))])
                maps = net(batch)
                h, w = maps[0].shape[-2:]
                out.append(torch.cat([F.interpolate(F.avg_pool2d(m, 3, 1, 1), size=(h, w), mode="bilinear")
                                      for m in maps], 1))
        return torch.cat(out)

    train = AnomalyDataset(root, category, "train", image_size=size)
    test = AnomalyDataset(root, category, "test", image_size=size)
    bank = features(train)
    bank = bank.permute(0, 2, 3, 1).reshape(-1, bank.shape[1])
    bank = bank[torch.randperm(len(bank), generator=torch.Generator().manual_seed(0))[:20000]]
    query = features(test)
    n, c, h, w = query.shape
    flat = query.permute(0, 2, 3, 1).reshape(-1, c)
    dist = torch.cat([torch.cdist(flat[i:i + 4096], bank).min(1).values for i in range(0, len(flat), 4096)])
    maps = F.interpolate(dist.reshape(n, 1, h, w), size=(size, size), mode="bilinear")[:, 0]
    masks = torch.stack([test[i]["mask"][0] for i in range(len(test))]).numpy().ravel()
    image_auroc = roc_auc_score(np.array(test.labels), maps.flatten(1).max(1).values.numpy())
    return image_auroc, roc_auc_score(masks, maps.numpy().ravel())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--knn", action="store_true", help="also score the kNN baseline (slow: minutes)")
    parser.add_argument("--knn-datasets", nargs="+", default=["synthetic_ad", "synthetic_hr"])
    args = parser.parse_args()

    from adlib.data import dataset_stats, generate_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        cpu0 = resource.getrusage(resource.RUSAGE_SELF).ru_utime + resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
        wall = time.perf_counter()
        root = generate_synthetic(Path(tmp) / "synthetic", seed=args.seed, size=args.size, workers=args.workers)
        wall = time.perf_counter() - wall
        cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime + resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - cpu0
        print(f"generation: {wall:.1f} s wall, {cpu:.1f} s CPU (user), seed {args.seed}, size {args.size}")
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            files = [p for p in folder.rglob("*.png")]
            megabytes = sum(p.stat().st_size for p in files) / 2**20
            print(f"  {folder.name}: {len(files)} PNG files, {megabytes:.1f} MiB")
        rows = dataset_stats(root)
        print("dataset          category  train  test good  test defective  validation")
        for r in rows:
            print(f"  {r['dataset']:<15} {r['category']:<8} {r['train_normal']:>5} {r['test_normal']:>10} "
                  f"{r['test_abnormal']:>15} {r['validation_normal']:>11}")
        if args.knn:
            import torch

            torch.set_num_threads(max(1, torch.get_num_threads()))
            for r in rows:
                if r["dataset"] not in args.knn_datasets:
                    continue
                sizes = [args.size] if r["dataset"] != "synthetic_hr" else [args.size, 2 * args.size]
                for size in sizes:
                    image, pixel = knn_scores(root / r["dataset"], r["category"], size)
                    print(f"knn {r['dataset']}/{r['category']} at {size} px: image AUROC {image:.3f}, "
                          f"pixel AUROC {pixel:.3f}", flush=True)


if __name__ == "__main__":
    main()
