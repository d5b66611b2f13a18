"""Where VarAD's smoke-profile anomaly maps put their mass: per hierarchy, on object outlines, on the defect.

    python benchmarks/varad_diagnose.py --categories capsule washer --seeds 0 1 2 [--set KEY=VALUE ...]

For each category and seed, VarAD is fitted as ``benchmarks/varad_smoke.py`` does (all images unless
``--caps``), then on the test images it prints:

- the training loss of the first and the last epoch;
- per hierarchy h, for the summed map (Eq. 9) and for the sum of each hierarchy's map divided by its
  channel count (``sum/C``, what ``channel_reduction="mean"`` gives): image AUROC of the map's max, pixel AUROC / max-F1 of the
  map upsampled and smoothed as the model does, and the mean error of good test images;
- for the summed map smoothed with sigma 0, 2, 4 (the default), 8 px: image AUROC with the max rule and with
  the mean of the top 1 % pixels, pixel AUROC / max-F1;
- ``edge%``: of the top 1 % pixels of the good test images' summed maps, the percent on an edge band (pixels
  within 8 px of a strong image gradient, about 15-25 % of an object image); ``max in defect``: the percent
  of defective images whose map maximum lies in the defect mask (dilated by 8 px).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import varad_smoke as vs  # noqa: E402


SIGMAS = (0.0, 2.0, 4.0, 8.0)


def edge_band(images: torch.Tensor, radius: int = 8, quantile: float = 0.97) -> torch.Tensor:
    """(B, H, W) bool: within ``radius`` px of a pixel whose grey-level gradient is above the image's quantile."""
    grey = images.mean(dim=1, keepdim=True)
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
    gx = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kx)
    gy = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kx.transpose(2, 3))
    mag = (gx ** 2 + gy ** 2).sqrt().flatten(1)
    strong = (mag >= mag.quantile(quantile, dim=1, keepdim=True)).float().view_as(grey)
    return F.max_pool2d(strong, 2 * radius + 1, stride=1, padding=radius)[:, 0] > 0


def dilate(masks: torch.Tensor, radius: int = 8) -> torch.Tensor:
    return F.max_pool2d(masks.float()[:, None], 2 * radius + 1, stride=1, padding=radius)[:, 0] > 0


def analyse(model, test) -> dict:
    from adlib import metrics
    from adlib.models.common import gaussian_blur, image_score

    loader = torch.utils.data.DataLoader(test, batch_size=8, shuffle=False)
    per_h, total, raw, masks, labels, images = None, [], [], [], [], []
    for batch in loader:
        out = model.explain(batch["image"])
        raw.append(torch.stack(out["error_maps"]).sum(dim=0))  # Eq. 9 before smoothing
        smoothed = [gaussian_blur(m, model.config.smoothing_sigma) for m in out["error_maps"]]
        per_h = [[] for _ in smoothed] if per_h is None else per_h
        for acc, m in zip(per_h, smoothed):
            acc.append(m)
        total.append(out["map"])
        masks.append(batch["mask"][:, 0] > 0.5)
        labels.append(torch.as_tensor(batch["label"]))
        images.append(batch["image"])
    maps = {f"h{i}": torch.cat(m) for i, m in enumerate(per_h)}
    maps["sum"] = torch.cat(total)
    if len(per_h) > 1:  # the same errors summed after dividing each hierarchy by its channel count
        maps["sum/C"] = sum(maps[f"h{i}"] / c for i, c in enumerate(model.channels))
    masks, labels, images = torch.cat(masks), torch.cat(labels).long(), torch.cat(images)
    good = labels == 0
    res = {}
    for name, m in maps.items():
        im = metrics.image_metrics(image_score(m, "max").numpy(), labels.numpy())
        px = metrics.pixel_metrics(m.numpy(), masks.numpy())
        res[name] = dict(img=100 * im["auroc"], px=100 * px["auroc"], f1=100 * px["f1max"],
                         good_mean=float(m[good].mean()))
    raw = torch.cat(raw)
    for sigma in SIGMAS:  # the map's smoothing and the image-score rule, on the same errors
        m = gaussian_blur(raw, sigma)
        px = metrics.pixel_metrics(m.numpy(), masks.numpy())
        rule = {name: 100 * metrics.image_metrics(image_score(m, name, 0.01).numpy(), labels.numpy())["auroc"]
                for name in ("max", "topk_mean")}
        res[f"sigma={sigma:g}"] = dict(img=rule["max"], img_topk=rule["topk_mean"], px=100 * px["auroc"],
                                       f1=100 * px["f1max"])
    band = edge_band(images)
    g = maps["sum"][good].flatten(1)
    top = g >= g.quantile(0.99, dim=1, keepdim=True)
    res["edge_pct"] = 100 * float((top & band[good].flatten(1)).sum() / top.sum())
    res["band_pct"] = 100 * float(band[good].float().mean())
    bad = ~good
    flat = maps["sum"][bad].flatten(1)
    where = flat.argmax(dim=1)
    hit = dilate(masks[bad]).flatten(1).gather(1, where[:, None])[:, 0]
    res["max_in_defect"] = 100 * float(hit.float().mean())
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic_ad")
    parser.add_argument("--categories", nargs="+", default=["capsule"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--caps", action="store_true")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    from adlib import engine
    from adlib.data import synthetic_root

    root = Path(synthetic_root()) / args.dataset
    overrides = vs.parse_overrides(args.overrides)
    print(f"VarAD smoke diagnosis on {root.name}, {args.size}px, overrides {overrides or 'none'}")
    for category in args.categories:
        train, test = vs.datasets(root, category, args.size, args.caps)
        for seed in args.seeds:
            model, fit = vs.build("varad", seed, args.size, overrides)
            result = engine.fit(model, train, fit)
            res = analyse(model, test)
            names = [k for k in res if k.startswith("h")] + [k for k in ("sum", "sum/C") if k in res]
            print(f"{category} seed {seed}: loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f} "
                  f"({result.epochs} epochs, {result.train_seconds:.1f} s); edge% {res['edge_pct']:.0f} "
                  f"(band covers {res['band_pct']:.0f}%), max in defect {res['max_in_defect']:.0f}%")
            for name in names:
                r = res[name]
                print(f"    {name:<5} img AUROC {r['img']:5.1f}  px AUROC {r['px']:5.1f}  px F1 {r['f1']:5.1f}  "
                      f"good mean error {r['good_mean']:.3f}", flush=True)
            for sigma in SIGMAS:
                r = res[f"sigma={sigma:g}"]
                print(f"    summed map, smoothing sigma {sigma:g}: img AUROC max {r['img']:5.1f} / top-1% mean "
                      f"{r['img_topk']:5.1f}  px AUROC {r['px']:5.1f}  px F1 {r['f1']:5.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
