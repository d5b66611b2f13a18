"""PatchCore's image AUROC on the embedded logical-anomaly set, split into logical and structural anomalies.

    python benchmarks/loco_patchcore.py [--root FOLDER] [--image-size 256] [--generate OUT]

A local method (nearest-neighbour patches) should do well on structural anomalies and poorly on logical
ones (every part normal; their count, position or combination wrong): that is LADMIM's premise, and this
prints whether the embedded ``synthetic_loco`` set has it, per kind of anomaly too (from the set's
``anomaly_kinds.json``). PatchCore runs with its smoke recipe
(``adlib.papers.peers``: EfficientNet-Lite0 strides 8+16, 1% coreset) through ``adlib.study.run_one`` (the
notebooks' run path and its run cache), on every image of each category. ``--generate OUT``
first writes a fresh ``synthetic_loco`` with the generator in this checkout into OUT (to compare generator
versions); the default is the cached ``adlib.data.synthetic_root()``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def run(root: Path, image_size: int, categories: list[str] | None = None) -> dict:
    from adlib import loco
    from adlib.app.run import recipe_setting
    from adlib.data import list_categories
    from adlib.study import DataSource, run_one

    setting = recipe_setting("patchcore", "smoke", image_size=image_size)
    out = {}
    for category in categories or list_categories(root):
        run = run_one(setting, DataSource(root.name, root, category), "patchcore", seed=0)
        result = run.evaluation
        kinds = loco.anomaly_kinds(run.test)
        out[category] = (loco.from_eval(result), loco.per_kind(result.scores, result.groups, kinds) if kinds else {})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="a synthetic_loco (or MVTec LOCO) folder")
    parser.add_argument("--generate", default=None, metavar="OUT", help="generate synthetic_loco into OUT first")
    parser.add_argument("--image-size", type=int, default=256, help="PatchCore input size (adlib run: 256)")
    args = parser.parse_args()
    from adlib import loco
    from adlib.data import synth, synthetic_root

    if args.generate:
        root = synth.generate(args.generate, datasets=("synthetic_loco",)) / "synthetic_loco"
    elif args.root:
        root = Path(args.root)
    else:
        root = Path(synthetic_root()) / "synthetic_loco"
    print(f"data {root} (generator version {synth.GENERATOR_VERSION}), PatchCore smoke recipe, "
          f"{args.image_size} px; load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    start = time.perf_counter()
    per_category = run(root, args.image_size)
    summary = loco.combine({name: groups for name, (groups, _) in per_category.items()})
    for name, c in summary.categories.items():
        print(f"  {name:>8}: logical {100 * c.logical:5.1f}  structural {100 * c.structural:5.1f}  "
              f"all {100 * c.whole:5.1f}  (test images {c.counts})")
        kinds = per_category[name][1]
        if kinds:
            print("            per kind: " + ", ".join(f"{g} {k} {100 * v:.0f}" for (g, k), v in kinds.items()))
    print(f"  {'mean':>8}: logical {100 * summary.logical:5.1f}  structural {100 * summary.structural:5.1f}  "
          f"overall {100 * summary.overall:5.1f}  ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
