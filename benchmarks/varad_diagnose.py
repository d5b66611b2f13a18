"""Where VarAD's smoke-profile anomaly maps put their mass: per hierarchy, on object outlines, on the defect.

    python benchmarks/varad_diagnose.py --dataset synthetic_hr --categories washer --size 512 --seeds 0 1 2
    python benchmarks/varad_diagnose.py --categories capsule --seeds 0 1 2
    python benchmarks/varad_diagnose.py --categories capsule --set tokens="'patchcore'"   # PatchCore's features
    python benchmarks/varad_diagnose.py --categories capsule --set error="'l2'" --set batch_size=4 --set m=2

For each category and seed VarAD is fitted with ``study.run_one`` in the smoke setting (the notebooks' caps of
training and test images unless ``--all``; ``--set KEY=VALUE`` overrides a field of the recipe). On its test
images it prints the training loss of the first and the last epoch, then one line per map of the same fitted
model, each upsampled and smoothed as the model does:

- ``hN L2``: hierarchy N's Eq. 9 error (squared L2 norm of the residual F_bar - F_hat, summed over channels);
  ``L2 sum``: their plain sum (Eq. 9); ``L2 sum/C``: the sum of each divided by its channel count;
- with ``error="mahalanobis"`` (the smoke recipe) also ``hN whitened``, each hierarchy's whitened residual, and
  ``whitened sum``, the map the model gives;

with, per map: image AUROC of the map's maximum, pixel AUROC and max-F1, ``peak%`` (defective test images whose
map maximum lies within 8 px of the defect, ``study.peak_hits``'s rule) and ``edge%`` (of the top 1 % pixels of
the good test images' maps, the share on an edge band: pixels within 8 px of a strong image gradient; the band's
share of the image is printed). Per hierarchy, token by token: the mean score of the defective tokens (holding
a defect pixel) and of the good images' tokens on the edge band, each over that of the good images' tokens off it,
under Eq. 9's error and, for a calibrated model, the whitened one. Then the model's map under smoothing sigma 0, 2, 4 (the default) and 8 px, with
the max and top-1 %-mean image scores.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

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


def collect(model, test) -> dict:
    """Per-hierarchy Eq. 9 errors and token scores (B, h, w), images, masks and labels of a test set."""
    loader = torch.utils.data.DataLoader(test, batch_size=8, shuffle=False)
    parts = {"errors": [], "token_scores": [], "images": [], "masks": [], "labels": []}
    for batch in loader:
        out = model.explain(batch["image"])
        parts["errors"].append(out["errors"])
        parts["token_scores"].append(out["token_scores"])
        parts["images"].append(batch["image"])
        parts["masks"].append(batch["mask"][:, 0] > 0.5)
        parts["labels"].append(torch.as_tensor(batch["label"]))
    for key in ("errors", "token_scores"):
        parts[key] = [torch.cat(per_h) for per_h in zip(*parts[key])]
    for key in ("images", "masks", "labels"):
        parts[key] = torch.cat(parts[key])
    parts["labels"] = parts["labels"].long()
    return parts


def token_contrast(parts: dict, band: torch.Tensor, whitened: bool) -> list[dict]:
    """Per hierarchy and token score (Eq. 9's "L2"; "whitened" for a calibrated model): the mean score of
    defective tokens (holding a defect pixel) and of good images' tokens on the edge band (holding a band pixel),
    each over the mean score of good images' tokens off the band."""
    good = parts["labels"] == 0
    out = []
    for h, errors in enumerate(parts["errors"]):
        grid = errors.shape[-2:]
        defect = F.adaptive_max_pool2d(parts["masks"].float()[:, None], grid)[:, 0] > 0
        edge = F.adaptive_max_pool2d(band.float()[:, None], grid)[:, 0] > 0
        row = {}
        scores = {"L2": errors}
        if whitened:
            scores["whitened"] = parts["token_scores"][h]
        for name, score in scores.items():
            plain = score[good][~edge[good]].mean()
            row[name] = (float(score[defect].mean() / plain), float(score[good][edge[good]].mean() / plain))
        out.append(row)
    return out


def maps_of(model, parts: dict) -> dict[str, torch.Tensor]:
    """The maps compared (see the module docstring), each upsampled, summed and smoothed as the model does."""
    whitened = model.whiteners is not None
    maps = {}
    for h, e in enumerate(parts["errors"]):
        maps[f"h{h} L2"] = model.anomaly_map([e])[1]
    if len(parts["errors"]) > 1:
        maps["L2 sum"] = model.anomaly_map(parts["errors"])[1]
        maps["L2 sum/C"] = model.anomaly_map([e / c for e, c in zip(parts["errors"], model.channels)])[1]
    if whitened:
        for h, s in enumerate(parts["token_scores"]):
            maps[f"h{h} whitened"] = model.anomaly_map([s])[1]
        if len(parts["token_scores"]) > 1:
            maps["whitened sum"] = model.anomaly_map(parts["token_scores"])[1]
    return maps


def measures(amap: torch.Tensor, parts: dict, band: torch.Tensor) -> dict:
    from adlib import metrics
    from adlib.models.common import image_score

    masks, labels = parts["masks"], parts["labels"]
    good, bad = labels == 0, labels != 0
    image = metrics.image_metrics(image_score(amap, "max").numpy(), labels.numpy())
    pixel = metrics.pixel_metrics(amap.numpy(), masks.numpy())
    g = amap[good].flatten(1)
    top = g >= g.quantile(0.99, dim=1, keepdim=True)
    edge = 100 * float((top & band[good].flatten(1)).sum() / top.sum())
    where = amap[bad].flatten(1).argmax(dim=1)
    peak = 100 * float(dilate(masks[bad]).flatten(1).gather(1, where[:, None]).float().mean())
    return dict(img=100 * image["auroc"], px=100 * pixel["auroc"], f1=100 * pixel["f1max"], peak=peak, edge=edge)


def analyse(model, test) -> tuple[dict, dict, float, list]:
    """(measures per map, measures of the model's map per smoothing sigma, the edge band's share in %,
    ``token_contrast``)."""
    from adlib import metrics
    from adlib.models.common import gaussian_blur, image_score

    parts = collect(model, test)
    band = edge_band(parts["images"])
    contrast = token_contrast(parts, band, model.whiteners is not None)
    per_map = {name: measures(m, parts, band) for name, m in maps_of(model, parts).items()}
    up, _ = model.anomaly_map(parts["token_scores"])
    raw = torch.stack(up).sum(dim=0)
    per_sigma = {}
    for sigma in SIGMAS:
        smoothed = gaussian_blur(raw, sigma)
        per_sigma[sigma] = measures(smoothed, parts, band)
        per_sigma[sigma]["img_topk"] = 100 * metrics.image_metrics(
            image_score(smoothed, "topk_mean", 0.01).numpy(), parts["labels"].numpy())["auroc"]
    return per_map, per_sigma, 100 * float(band[parts["labels"] == 0].float().mean()), contrast


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic_ad")
    parser.add_argument("--categories", nargs="+", default=["capsule"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--all", action="store_true", help="every image of a category (default: the notebooks' caps)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    from adlib import study

    setting = vs.smoke_setting(caps=not args.all)
    overrides = vs.parse_overrides(args.overrides)
    study.configs(setting, "varad", **overrides)  # an unknown field fails here, before any fit
    print(f"VarAD smoke diagnosis on {args.dataset}, {args.size}px, {setting.caps}, overrides {overrides or 'none'}")
    for source in vs.sources(setting, args.dataset, args.categories):
        for seed in args.seeds:
            run = study.run_one(setting, source, "varad", seed=seed, image_size=args.size, **overrides)
            per_map, per_sigma, band, contrast = analyse(run.model, run.test)
            print(f"{source.category} seed {seed}: loss {run.fit.losses[0]:.3f} -> {run.fit.losses[-1]:.3f} "
                  f"({run.fit.epochs} epochs, {run.fit.train_seconds:.1f} s); grids {run.model.grids}, channels "
                  f"{run.model.channels}; the edge band covers {band:.0f}% of the good images")
            for name, r in per_map.items():
                print(f"    {name:<13} img AUROC {r['img']:5.1f}  px AUROC {r['px']:5.1f}  px F1 {r['f1']:5.1f}  "
                      f"peak% {r['peak']:5.1f}  edge% {r['edge']:5.1f}", flush=True)
            for h, row in enumerate(contrast):
                print(f"    h{h} tokens, mean score over good tokens off edges: " + "; ".join(
                    f"{name}: defect x{d:.1f}, good on edges x{e:.1f}" for name, (d, e) in row.items()), flush=True)
            for sigma, r in per_sigma.items():
                print(f"    model's map, smoothing sigma {sigma:g}: img AUROC max {r['img']:5.1f} / top-1% mean "
                      f"{r['img_topk']:5.1f}  px AUROC {r['px']:5.1f}  px F1 {r['f1']:5.1f}  peak% {r['peak']:5.1f}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
