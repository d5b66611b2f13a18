"""Smoke-profile VarAD variants over categories x seeds: the diagnosis of issue 10 and the Fig. 4 ablations.

    python benchmarks/varad_variants.py --categories capsule wood --variant base --variant m1 m=1 \
        --variant long epochs=16
    python benchmarks/varad_variants.py --preset m --categories wood --size 256      # m = 1, 2, 4, 6
    python benchmarks/varad_variants.py --preset fig4 --categories wood              # all Fig. 4 variants

A variant is a label followed by KEY=VALUE overrides of the VarAD smoke recipe (model config or FitConfig
fields; ``varad_smoke.build``). Every variant is fitted per category and seed exactly as
``benchmarks/varad_smoke.py`` does; the table gives, per variant, the mean ± std over seeds of the category
mean of image AUROC, pixel AUROC, pixel max-F1 (percent) and the mean fit seconds. ``--caps`` uses the
notebooks' image caps.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import varad_smoke as vs  # noqa: E402

PRESETS = {
    "m": [("m=1", ["m=1"]), ("m=2", ["m=2"]), ("m=4", ["m=4"]), ("m=6", ["m=6"])],
    "directions": [("dirs=all", [])] + [(f"dirs={d}", [f"directions=('{d}',)"])
                                         for d in ("row_tl", "row_br", "col_tr", "col_bl")],
    "adapters": [("adapter=linear", []), ("adapter=w/o", ["adapter='none'"]), ("adapter=resblock", ["adapter='resblock'"])],
    "hierarchies": [("layers=all", []), ("layers=(2,)", ["layers=(2,)"]), ("layers=(3,)", ["layers=(3,)"])],
}
PRESETS["fig4"] = [v for name in ("directions", "m", "adapters", "hierarchies") for v in PRESETS[name]]


def recipe_value(key: str):
    """The smoke recipe's value of a model-config or FitConfig field (to tell a no-op override)."""
    from dataclasses import fields

    from adlib import papers
    from adlib.models.varad import VarADConfig

    recipe = papers.home_recipe("varad", "smoke")
    if key in recipe.model:
        return recipe.model[key]
    defaults = {f.name: getattr(VarADConfig(), f.name) for f in fields(VarADConfig)}
    if key in defaults:
        return defaults[key]
    return getattr(recipe.fit, key, None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic_ad")
    parser.add_argument("--categories", nargs="+", default=None, help="default: all of the set")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--caps", action="store_true")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None)
    parser.add_argument("--variant", nargs="+", action="append", default=[], metavar="LABEL [KEY=VALUE ...]")
    parser.add_argument("--set", dest="common", action="append", default=[], metavar="KEY=VALUE",
                        help="override applied to every variant")
    args = parser.parse_args()

    from adlib.data import list_categories, synthetic_root

    root = Path(synthetic_root()) / args.dataset
    categories = args.categories or list_categories(root)
    variants = list(PRESETS.get(args.preset, [])) + [(v[0], v[1:]) for v in args.variant]
    if not variants:
        variants = [("recipe", [])]
    common = vs.parse_overrides(args.common)
    print(f"VarAD smoke variants on {root.name} {categories}, {args.size}px, "
          f"{'notebook caps' if args.caps else 'all images'}, seeds {args.seeds}, common overrides {common or 'none'}; "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for category in categories:
        data = vs.datasets(root, category, args.size, args.caps)
        fitted: dict[tuple, dict] = {}  # variants that resolve to the same overrides are fitted once
        for label, items in variants:
            overrides = {**common, **vs.parse_overrides(items)}
            for seed in args.seeds:
                same = (repr(sorted((k, v) for k, v in overrides.items() if recipe_value(k) != v)), seed)
                if same not in fitted:
                    fitted[same] = vs.run_one("varad", data[0], {"test": data[1]}, seed, args.size, overrides)["test"]
                row = dict(fitted[same])
                row.update(variant=label, category=category, seed=seed)
                rows.append(row)
                print(f"  {category:<8} {label:<18} seed {seed}: img {row['image_auroc']:5.1f} px {row['pixel_auroc']:5.1f} "
                      f"F1 {row['pixel_f1max']:5.1f}  fit {row['fit_s']:.1f} s", flush=True)
    print()
    header = f"{'variant':<20} " + " ".join(f"{vs.LABELS[m]:>13}" for m in vs.METRICS) + f" {'fit s':>6}"
    print(header)
    print("-" * len(header))
    for label, _ in variants:
        sel = [r for r in rows if r["variant"] == label]
        cells = []
        for level, metric in vs.METRICS:
            key = f"{level}_{metric}"
            per_seed = [np.mean([r[key] for r in sel if r["seed"] == s]) for s in args.seeds]
            cells.append(f"{vs.mean_std(per_seed):>13}")
        print(f"{label:<20} " + " ".join(cells) + f" {np.mean([r['fit_s'] for r in sel]):6.1f}")
    print(f"load average now {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
