"""Smoke-profile VarAD variants over categories x seeds: the diagnoses of issues 10 and 24, the Fig. 4 ablations.

    python benchmarks/varad_variants.py --categories capsule wood --variant base --variant m1 m=1 \
        --variant long epochs=16
    python benchmarks/varad_variants.py --preset m --categories wood --size 256      # m = 1, 2, 4, 6
    python benchmarks/varad_variants.py --preset fig4 --categories wood              # all Fig. 4 variants
    python benchmarks/varad_variants.py --preset issue24 --categories capsule --seeds 0   # issue 24's candidates

A variant is a label followed by KEY=VALUE overrides of the VarAD smoke recipe (model config or FitConfig
fields). Every variant is fitted per category and seed with ``study.run_one``, as ``benchmarks/varad_smoke.py``
does (every image of a category unless ``--caps``: the notebooks' caps); variants that resolve to the same
configuration are fitted once. The table gives, per variant, the mean ± std over seeds of the category mean of
image AUROC, pixel AUROC, pixel max-F1 and the share of defective images whose map peaks in the defect
(percent), the mean fit seconds and the mean CPU seconds of a whole run.
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
# Issue 24: each candidate cause of missed tiny defects and lit outlines that needs its own training, scored with
# Eq. 9's squared error ("L2") and with the whitened residual (error="mahalanobis", the smoke recipe's); the
# map's aggregation and smoothing on one fitted model are benchmarks/varad_diagnose.py's
_CANDIDATES = [("recipe", []), ("m=1", ["m=1"]), ("m=2", ["m=2"]), ("bos=broadcast", ["bos='broadcast'"]),
               ("token_norm=channel", ["token_norm='channel'"]), ("token_norm=none", ["token_norm='none'"]),
               ("layers=(2,)", ["layers=(2,)"]), ("tokens=patchcore", ["tokens='patchcore'"]),
               ("epochs=16", ["epochs=16"]), ("batch_size=2", ["batch_size=2"])]
PRESETS["issue24"] = [(f"{label} | L2", items + ["error='l2'"]) for label, items in _CANDIDATES] + \
    [(f"{label} | whitened", items + ["error='mahalanobis'"]) for label, items in _CANDIDATES]


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

    from adlib import study

    setting = vs.smoke_setting(args.caps)
    chosen = vs.sources(setting, args.dataset, args.categories)
    categories = [s.category for s in chosen]
    variants = list(PRESETS.get(args.preset, [])) + [(v[0], v[1:]) for v in args.variant]
    if not variants:
        variants = [("recipe", [])]
    common = vs.parse_overrides(args.common)
    for _, items in variants:  # an unknown field fails here, before any fit
        study.configs(setting, "varad", **{**common, **vs.parse_overrides(items)})
    print(f"VarAD smoke variants on {args.dataset} {categories}, {args.size}px, "
          f"{'notebook caps' if args.caps else 'all images'}, seeds {args.seeds}, common overrides {common or 'none'}; "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for source in chosen:
        category = source.category
        fitted: dict[str, dict] = {}  # variants that resolve to the same configuration are fitted once
        for label, items in variants:
            overrides = {**common, **vs.parse_overrides(items)}
            for seed in args.seeds:
                same = repr(study.configs(setting, "varad", args.size, seed, **overrides))
                if same not in fitted:
                    fitted[same] = vs.run_row(setting, source, "varad", seed, args.size, overrides)
                row = dict(fitted[same])
                row.update(variant=label, category=category, seed=seed)
                rows.append(row)
                print(f"  {category:<8} {label:<18} seed {seed}: img {row['image_auroc']:5.1f} px {row['pixel_auroc']:5.1f} "
                      f"F1 {row['pixel_f1max']:5.1f} peak {row['peak_in_defect']:5.1f}  fit {row['fit_s']:.1f} s, "
                      f"run CPU {row['fit_cpu_s']:.1f} s", flush=True)
    print()
    width = max(20, *(len(label) + 1 for label, _ in variants))
    header = f"{'variant':<{width}} " + " ".join(f"{vs.LABELS[m]:>13}" for m in vs.METRICS) + f" {'fit s':>6} {'CPU s':>6}"
    print(header)
    print("-" * len(header))
    for label, _ in variants:
        sel = [r for r in rows if r["variant"] == label]
        cells = []
        for level, metric in vs.METRICS:
            key = f"{level}_{metric}"
            per_seed = [np.mean([r[key] for r in sel if r["seed"] == s]) for s in args.seeds]
            cells.append(f"{vs.mean_std(per_seed):>13}")
        print(f"{label:<{width}} " + " ".join(cells) + f" {np.mean([r['fit_s'] for r in sel]):6.1f}"
              f" {np.mean([r['fit_cpu_s'] for r in sel]):6.1f}")
    print(f"load average now {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
