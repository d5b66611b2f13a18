"""Issue 10 targets: smoke-profile VarAD against PatchCore on the embedded synthetic data (and real bottle).

    python benchmarks/varad_smoke.py                 # synthetic_ad, all 5 categories, all images, 3 seeds
    python benchmarks/varad_smoke.py --caps          # the notebooks' caps (the smoke ProfileSpec's max_train/max_test)
    ADLIB_DATA=/work/shared/data python benchmarks/varad_smoke.py --bottle   # real MVTec AD bottle
    python benchmarks/varad_smoke.py --dataset synthetic_hr --categories washer --size 512
    python benchmarks/varad_smoke.py --set m=2 --models varad   # a recipe override (model or FitConfig field)

Each fit is what ``python -m adlib run MODEL --profile smoke`` does: the model's home recipe
(``adlib.papers.home_recipe``), ``engine.seed_everything(seed)`` before the model is built, the seed in the
``FitConfig``, ``engine.fit`` then ``engine.evaluate`` (exact protocol). ``--caps`` takes the images the
notebooks take (``adlib.study.setting.spread`` / ``test_indices``). Prints, per category and for the mean over
categories, mean ± std over seeds of image AUROC, pixel AUROC and pixel max-F1 (percent), and the seconds of
one fit (training, including feature extraction unless the on-disk feature cache already holds them) and of
one evaluation, and the process CPU seconds of the fit (with OMP_NUM_THREADS=1 about the wall time the fit would
take on one idle core). Wall times are noisy on a shared machine; the load average is printed.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

METRICS = (("image", "auroc"), ("pixel", "auroc"), ("pixel", "f1max"))
LABELS = {("image", "auroc"): "img AUROC", ("pixel", "auroc"): "px AUROC", ("pixel", "f1max"): "px F1max"}


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, raw = item.partition("=")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out[key.strip()] = tuple(value) if isinstance(value, list) else value
    return out


def build(model_name: str, seed: int, size: int, overrides: dict | None = None):
    """(model, FitConfig) of the smoke home recipe with ``overrides`` on the model config or the FitConfig."""
    from adlib import engine, papers
    from adlib.models import config_class, create_model

    recipe = papers.home_recipe(model_name, "smoke")
    overrides = dict(overrides or {})
    model_fields = {f.name for f in fields(config_class(model_name))}
    fit_fields = {f.name for f in fields(recipe.fit)}
    unknown = sorted(set(overrides) - model_fields - fit_fields)
    if unknown:
        raise SystemExit(f"--set: unknown field(s) {unknown} for {model_name}")
    model_over = {**dict(recipe.model), "image_size": size, **{k: v for k, v in overrides.items() if k in model_fields}}
    fit = replace(recipe.fit, seed=seed, progress=False, **{k: v for k, v in overrides.items() if k in fit_fields})
    engine.seed_everything(seed)
    return create_model(model_name, **model_over), fit


def datasets(root: Path, category: str, size: int, caps: bool):
    """(train, test) of a category, capped as the notebooks cap them when ``caps``."""
    import torch

    from adlib.data import AnomalyDataset
    from adlib.papers.varad import PAPER
    from adlib.study.setting import spread, test_indices

    train = AnomalyDataset(root, category, "train", image_size=size)
    test = AnomalyDataset(root, category, "test", image_size=size)
    if caps:
        spec = PAPER.profile("smoke")
        train = torch.utils.data.Subset(train, spread(len(train), spec.max_train))
        test = torch.utils.data.Subset(test, test_indices(test.labels, spec.max_test))
    return train, test


def _indices(dataset) -> list[int]:
    return list(dataset.indices) if hasattr(dataset, "indices") else list(range(len(dataset)))


def run_one(model_name: str, train, tests: dict, seed: int, size: int, overrides: dict | None = None) -> dict:
    """One fit on ``train``, evaluated on each of ``tests`` (name -> test set): name -> row of metrics in
    percent and the seconds of the fit and of each evaluation."""
    from adlib import engine

    model, fit = build(model_name, seed, size, overrides)
    start, cpu = time.perf_counter(), time.process_time()
    engine.fit(model, train, fit)
    fit_s, fit_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    rows = {}
    for name, test in tests.items():
        start = time.perf_counter()
        result = engine.evaluate(model, test, batch_size=8, progress=False)
        row = {f"{level}_{metric}": 100 * getattr(result, level)[metric] for level, metric in METRICS}
        row.update(fit_s=fit_s, fit_cpu_s=fit_cpu_s, eval_s=time.perf_counter() - start, n_train=len(train),
                   n_test=len(test))
        rows[name] = row
    return rows


def mean_std(values) -> str:
    values = np.asarray(values, float)
    return f"{values.mean():5.1f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:4.1f}"


def summarise(rows: list[dict], models: list[str], categories: list[str], seeds: list[int]) -> str:
    """The targets table: per category and for the mean over categories, mean ± std over seeds."""
    lines = []
    header = f"{'category':<10} {'model':<10} " + " ".join(f"{LABELS[m]:>13}" for m in METRICS) + \
        f" {'fit s':>6} {'CPU s':>6} {'eval s':>6} {'train/test':>10}"
    lines.append(header)
    lines.append("-" * len(header))
    for cat in categories + ["MEAN"]:
        for model in models:
            sel = [r for r in rows if r["model"] == model and (cat == "MEAN" or r["category"] == cat)]
            if not sel:
                continue
            cells = []
            for level, metric in METRICS:
                key = f"{level}_{metric}"
                # the mean row: per seed the mean over categories, then mean ± std over seeds
                per_seed = [np.mean([r[key] for r in sel if r["seed"] == s]) for s in seeds
                            if any(r["seed"] == s for r in sel)]
                cells.append(f"{mean_std(per_seed):>13}")
            fit_s = np.mean([r["fit_s"] for r in sel])
            cpu = [r["fit_cpu_s"] for r in sel if "fit_cpu_s" in r]
            cpu_s = f"{np.mean(cpu):6.1f}" if cpu else f"{'':>6}"
            eval_s = np.mean([r["eval_s"] for r in sel])
            counts = f"{sel[0]['n_train']}/{sel[0]['n_test']}" if cat != "MEAN" else ""
            lines.append(f"{cat:<10} {model:<10} " + " ".join(cells) + f" {fit_s:6.1f} {cpu_s} {eval_s:6.1f} {counts:>10}")
    return "\n".join(lines)


def targets(rows: list[dict], seeds: list[int]) -> str:
    """The issue's three target lines (VarAD vs PatchCore, means over categories and seeds)."""
    def mean(model, key):
        return float(np.mean([np.mean([r[key] for r in rows if r["model"] == model and r["seed"] == s]) for s in seeds]))

    if not any(r["model"] == "varad" for r in rows):
        return ""
    v = {k: mean("varad", k) for k in ("image_auroc", "pixel_auroc", "pixel_f1max")}
    lines = [f"target VarAD pixel AUROC >= 95: {v['pixel_auroc']:.1f} -> {'met' if v['pixel_auroc'] >= 95 else 'NOT met'}"]
    if any(r["model"] == "patchcore" for r in rows):
        p = {k: mean("patchcore", k) for k in ("image_auroc", "pixel_f1max")}
        for key, label in (("pixel_f1max", "pixel max-F1"), ("image_auroc", "image AUROC")):
            gap = v[key] - p[key]
            lines.append(f"target VarAD {label} within 5 of PatchCore: {v[key]:.1f} vs {p[key]:.1f} (gap {gap:+.1f}) -> "
                         f"{'met' if gap >= -5 else 'NOT met'}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["varad", "patchcore"])
    parser.add_argument("--dataset", default="synthetic_ad", help="embedded synthetic set (default synthetic_ad)")
    parser.add_argument("--categories", nargs="+", default=None, help="default: all of the set")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--caps", action="store_true", help="the notebooks' image caps (smoke ProfileSpec)")
    parser.add_argument("--both", action="store_true", help="all images and the notebooks' caps: one fit serves "
                                                            "both where the train cap keeps every image")
    parser.add_argument("--bottle", action="store_true", help="real MVTec AD bottle under $ADLIB_DATA instead")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a VarAD recipe field (model config or FitConfig)")
    parser.add_argument("--out", default=None, help="JSON-lines file: rows are appended as they finish, and rows "
                                                    "already in it (same settings) are not run again")
    args = parser.parse_args()

    from adlib.data import list_categories, synthetic_root

    if args.bottle:
        data = os.environ.get("ADLIB_DATA")
        if not data or not (Path(data) / "mvtec_ad" / "bottle").is_dir():
            print("--bottle: set ADLIB_DATA to a folder with mvtec_ad/bottle", file=sys.stderr)
            return 2
        root, categories = Path(data) / "mvtec_ad", ["bottle"]
    else:
        root = Path(synthetic_root()) / args.dataset
        categories = args.categories or list_categories(root)
    overrides = parse_overrides(args.overrides)
    modes = ["all", "caps"] if args.both else (["caps"] if args.caps else ["all"])
    load = os.getloadavg()[0]
    print(f"smoke profile, {root.name} {categories}, {args.size}px, images: {' and '.join(modes)}, seeds {args.seeds}, "
          f"VarAD overrides {overrides or 'none'}; load {load:.1f} on {os.cpu_count()} cores", flush=True)
    rows, done = [], {}
    key = dict(dataset=root.name, size=args.size, overrides=repr(sorted(overrides.items())))
    if args.out and Path(args.out).exists():
        for line in Path(args.out).read_text().splitlines():
            row = json.loads(line)
            if all(row.get(k) == v for k, v in key.items()):
                done[(row["images"], row["model"], row["category"], row["seed"])] = row
    for category in categories:
        data = {mode: datasets(root, category, args.size, mode == "caps") for mode in modes}
        # modes whose training sets are the same images share one fit
        fits: dict[tuple, list[str]] = {}
        for mode in modes:
            fits.setdefault(tuple(_indices(data[mode][0])), []).append(mode)
        for model in args.models:
            for seed in args.seeds:
                for shared in fits.values():
                    todo = [m for m in shared if (m, model, category, seed) not in done]
                    rows += [done[(m, model, category, seed)] for m in shared if m not in todo]
                    if not todo:
                        continue
                    out = run_one(model, data[todo[0]][0], {m: data[m][1] for m in todo}, seed, args.size,
                                  overrides if model == "varad" else None)
                    for mode, row in out.items():
                        row.update(images=mode, model=model, category=category, seed=seed, **key)
                        rows.append(row)
                        if args.out:
                            with open(args.out, "a") as f:
                                f.write(json.dumps(row) + "\n")
                        print(f"  {category:<8} {model:<9} seed {seed} {mode:<4}: " +
                              " ".join(f"{LABELS[m]} {row[f'{m[0]}_{m[1]}']:5.1f}" for m in METRICS) +
                              f"  fit {row['fit_s']:.1f} s (CPU {row['fit_cpu_s']:.1f} s), eval {row['eval_s']:.1f} s", flush=True)
    for mode in modes:
        sel = [r for r in rows if r["images"] == mode]
        print(f"\n{'notebook caps' if mode == 'caps' else 'all images'}:")
        print(summarise(sel, args.models, categories, args.seeds))
        print()
        print(targets(sel, args.seeds))
    print(f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
