"""Issue 10 targets: smoke-profile VarAD against PatchCore on the embedded synthetic data (and real bottle).

    python benchmarks/varad_smoke.py                 # synthetic_ad, all 5 categories, all images, 3 seeds
    python benchmarks/varad_smoke.py --caps          # the notebooks' caps (the smoke ProfileSpec's max_train/max_test)
    ADLIB_DATA=/work/shared/data python benchmarks/varad_smoke.py --bottle   # real MVTec AD bottle
    python benchmarks/varad_smoke.py --dataset synthetic_hr --categories washer --size 512
    python benchmarks/varad_smoke.py --set m=2 --models varad   # a recipe override (model or FitConfig field)

Each run is ``adlib.study.run_one`` in the smoke profile (the paper's recipe for the model, the seed before the
model is built and in the ``FitConfig``, evaluation under the exact protocol); without ``--caps`` the setting
takes every image of a category. Prints, per category and for the mean over categories, mean ± std over seeds
of image AUROC, pixel AUROC, pixel max-F1 and the share of defective test images whose map peaks in the defect
(``study.peak_hits``; percent), the seconds of one fit (training, including feature
extraction unless the on-disk feature cache already holds them, and calibration) and of one evaluation, and the
process CPU seconds of the whole run (with OMP_NUM_THREADS=1 about the wall time it would take on one idle core).
Wall times are noisy on a shared machine; the load average is printed.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

METRICS = (("image", "auroc"), ("pixel", "auroc"), ("pixel", "f1max"), ("peak", "in_defect"))
LABELS = {("image", "auroc"): "img AUROC", ("pixel", "auroc"): "px AUROC", ("pixel", "f1max"): "px F1max",
          ("peak", "in_defect"): "peak in def %"}


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


def smoke_setting(caps: bool = False, data_root: str | None = None):
    """VarAD's smoke ``Setting``: the notebooks' image caps with ``caps``, else every image."""
    from adlib import papers, study

    limits = {} if caps else {"max_train": None, "max_test": None}
    return study.resolve_setting(papers.get("varad"), "smoke", data_root=data_root, **limits)


def sources(setting, dataset: str = "synthetic_ad", categories=None, bottle: bool = False):
    """The data sources of a run: the synthetic set's categories (all by default) or real MVTec AD bottle."""
    if bottle:
        return [s for s in setting.real_sources(["mvtec_ad"]) if s.category == "bottle"]
    return setting.synthetic_sources(dataset, categories, limit=None)


def build(model_name: str, seed: int, size: int, overrides: dict | None = None, caps: bool = True):
    """(model, FitConfig) exactly as ``study.run_one`` builds them in the smoke setting (for timing one fit)."""
    from adlib import study

    return study.build(smoke_setting(caps), model_name, image_size=size, seed=seed, **dict(overrides or {}))


def datasets(root: Path, category: str, size: int, caps: bool):
    """(train, test) of a synthetic category as ``study.run_one`` takes them (the notebooks' caps with ``caps``)."""
    from adlib import study

    setting = smoke_setting(caps)
    (source,) = setting.synthetic_sources(Path(root).name, [category])
    return study.datasets_for(source, setting, size)


def run_row(setting, source, model_name: str, seed: int, size: int, overrides: dict | None = None) -> dict:
    """One ``study.run_one``: metrics in percent, fit / evaluation seconds, CPU seconds and image counts."""
    from adlib import study

    cpu = time.process_time()
    run = study.run_one(setting, source, model_name, seed=seed, image_size=size, **dict(overrides or {}))
    cpu = time.process_time() - cpu
    row = {f"{level}_{metric}": 100 * getattr(run.evaluation, level)[metric] for level, metric in METRICS[:3]}
    row["peak_in_defect"] = 100 * float(study.peak_hits(run)["peak_in_defect"].mean())
    row.update(fit_s=run.fit.train_seconds, fit_cpu_s=cpu, eval_s=run.evaluation.seconds,
               n_train=run.train_images, n_test=len(run.test))
    return row


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
            cpu_s = np.mean([r["fit_cpu_s"] for r in sel])
            eval_s = np.mean([r["eval_s"] for r in sel])
            counts = f"{sel[0]['n_train']}/{sel[0]['n_test']}" if cat != "MEAN" else ""
            lines.append(f"{cat:<10} {model:<10} " + " ".join(cells) + f" {fit_s:6.1f} {cpu_s:6.1f} {eval_s:6.1f} {counts:>10}")
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
    parser.add_argument("--bottle", action="store_true", help="real MVTec AD bottle under $ADLIB_DATA instead")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a VarAD recipe field (model config or FitConfig)")
    parser.add_argument("--out", default=None, help="JSON-lines file: rows are appended as they finish, and rows "
                                                    "already in it (same settings) are not run again")
    args = parser.parse_args()

    if args.bottle:
        data = os.environ.get("ADLIB_DATA")
        if not data or not (Path(data) / "mvtec_ad" / "bottle").is_dir():
            print("--bottle: set ADLIB_DATA to a folder with mvtec_ad/bottle", file=sys.stderr)
            return 2
    setting = smoke_setting(args.caps)
    chosen = sources(setting, args.dataset, args.categories, args.bottle)
    categories = [s.category for s in chosen]
    overrides = parse_overrides(args.overrides)
    from adlib import study

    study.configs(setting, "varad", **overrides)  # an unknown field fails here, before any fit
    mode = "caps" if args.caps else "all"
    load = os.getloadavg()[0]
    print(f"smoke profile, {chosen[0].dataset} {categories}, {args.size}px, images: {mode}, seeds {args.seeds}, "
          f"VarAD overrides {overrides or 'none'}; load {load:.1f} on {os.cpu_count()} cores", flush=True)
    rows, done = [], {}
    key = dict(dataset=chosen[0].dataset, size=args.size, images=mode, overrides=repr(sorted(overrides.items())))
    if args.out and Path(args.out).exists():
        for line in Path(args.out).read_text().splitlines():
            row = json.loads(line)
            if all(row.get(k) == v for k, v in key.items()):
                done[(row["model"], row["category"], row["seed"])] = row
    for source in chosen:
        for model in args.models:
            for seed in args.seeds:
                row = done.get((model, source.category, seed))
                if row is None:
                    row = run_row(setting, source, model, seed, args.size, overrides if model == "varad" else None)
                    row.update(model=model, category=source.category, seed=seed, **key)
                    if args.out:
                        with open(args.out, "a") as f:
                            f.write(json.dumps(row) + "\n")
                    print(f"  {source.category:<8} {model:<9} seed {seed}: " +
                          " ".join(f"{LABELS[m]} {row[f'{m[0]}_{m[1]}']:5.1f}" for m in METRICS) +
                          f"  fit {row['fit_s']:.1f} s (run CPU {row['fit_cpu_s']:.1f} s), eval {row['eval_s']:.1f} s",
                          flush=True)
                rows.append(row)
    print(f"\n{'notebook caps' if args.caps else 'all images'}:")
    print(summarise(rows, args.models, categories, args.seeds))
    print()
    print(targets(rows, args.seeds))
    print(f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
