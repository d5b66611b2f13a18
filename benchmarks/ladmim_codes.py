"""What LADMIM's codes can see: does the trained HVQ-Trans give a part of another colour, or a pin turned another
way, other codes? If not, no histogram of codes (the MIM target, Eq. 11) can tell a logical anomaly of that kind
from a normal image.

    python benchmarks/ladmim_codes.py [--category pins] [--seed 0] [--pairs 20]

Fits the smoke-recipe LADMIM on one category of the embedded ``synthetic_loco`` (both stages, through
``adlib.study.run_one``, the notebooks' run path: a fit the run cache holds is read), then renders pairs
of scenes with the generator that differ in one thing only (every part's colour swapped to the other normal
colour; one pin turned by 60-120 degrees; one part removed), and prints, per HVQ level, the fraction of the token
positions under the changed parts whose code changes, and the L1 distance between the two images' code
histograms over the whole grid (0: the codes do not see the change; 2: disjoint).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--category", default="pins", choices=("pins", "tray"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pairs", type=int, default=20)
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from adlib import papers
    from adlib.data import synth, synthetic_root
    from adlib.papers.ladmim import RECIPES
    from adlib.study import DataSource, resolve_setting, run_one

    size = RECIPES[("ladmim", "smoke")].model["image_size"]
    root = synthetic_root() / "synthetic_loco"
    setting = resolve_setting(papers.get("ladmim"), "smoke", synthetic=False, image_size=size, max_train=None,
                              max_test=None)
    start = time.perf_counter()
    run = run_one(setting, DataSource("synthetic_loco", root, args.category, synthetic=True), "ladmim", seed=args.seed)
    model, config = run.model, run.model.config
    print(f"LADMIM smoke recipe on synthetic_loco/{args.category}, seed {args.seed}: fitted in "
          f"{run.fit.train_seconds:.0f} s ({'read from the run cache' if run.fit_from == 'cache' else 'trained'}; "
          f"{time.perf_counter() - start:.0f} s with the evaluation); calibration: {run.calibration}; grid "
          f"{config.grid} x {config.grid}, {config.codebook_size} codes per level")
    spec = synth.LOCO_CATEGORIES[args.category]
    side = 256  # the embedded set's rendering size; resized to the model's as the reader does

    def codes_and_mask(items, changed, rng):
        img = spec.scene(copy.deepcopy(rng), side, items)
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        mask = np.logical_or.reduce([synth._footprint(i, side, grow=0.01 * side) for i in changed]) if changed else None
        with torch.no_grad():
            codes = model.hvq.codes(model.tokens_of(model.extract(x)))[0].numpy()  # (L, N)
        return codes, mask

    def token_mask(mask):
        m = torch.from_numpy(mask.astype(np.float32))[None, None]
        return (F.adaptive_max_pool2d(m, config.grid)[0, 0].flatten() > 0).numpy()

    def other_colour(items):
        out = copy.deepcopy(items)
        for item in out:
            if args.category == "pins":
                item.colour = synth.GOLD if item.colour == synth.SILVER else synth.SILVER
            elif item.shape == "square":
                item.colour = synth.GREEN if item.colour == synth.BLUE else synth.BLUE
            else:
                item.colour = synth.YELLOW if item.colour == synth.ORANGE else synth.ORANGE
        return out, out

    def turned(items):
        out = copy.deepcopy(items)
        out[0].angle += np.deg2rad(90.0)
        return out, [items[0], out[0]]

    def removed(items):
        return copy.deepcopy(items[1:]), [items[0]]

    changes = {"colour of every part": other_colour, "one part turned 90 degrees": turned, "one part removed": removed}
    levels = config.hvq_layers
    for name, change in changes.items():
        if name.startswith("one part turned") and args.category != "pins":
            continue
        flips, dists = [], []
        for k in range(args.pairs):
            rng = synth._rng(99, "codes", args.category, k)
            items = spec.items(copy.deepcopy(rng), side)
            changed_items, parts = change(items)
            a, _ = codes_and_mask(items, [], rng)
            b, mask = codes_and_mask(changed_items, parts, rng)
            under = token_mask(mask)
            flips.append([(a[l][under] != b[l][under]).mean() for l in range(levels)])
            ha = [np.bincount(a[l], minlength=config.codebook_size) / a.shape[1] for l in range(levels)]
            hb = [np.bincount(b[l], minlength=config.codebook_size) / b.shape[1] for l in range(levels)]
            dists.append([np.abs(x - y).sum() for x, y in zip(ha, hb)])
        flips, dists = np.mean(flips, axis=0), np.mean(dists, axis=0)
        print(f"  {name:<28} codes changed under the part, per level: "
              + ", ".join(f"{100 * f:4.0f} %" for f in flips)
              + " | histogram L1 per level: " + ", ".join(f"{d:.2f}" for d in dists))
    return 0


if __name__ == "__main__":
    sys.exit(main())
