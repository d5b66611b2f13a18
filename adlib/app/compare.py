"""`python -m adlib compare --data-root MINE`: every registered model (or ``--models a,b``) on one dataset.

Examples::

    python -m adlib compare --data-root $ADLIB_DATA/mvtec_ad --categories bottle --seeds 0
    python -m adlib compare --data-root my_parts --models patchcore,rd4ad --seeds 0,1,2 --out runs/my_parts
    python -m adlib compare --data-root my_parts --setting multi-class --max-train-images 40 --epochs 2

Each model runs with its home paper's recipe for the profile (as ``adlib run MODEL``), through the one run path
(``adlib.study.run_grid`` / ``run_one``) and so through the run cache: a model fitted before on the same images
with the same settings is read, not trained again. ``--set KEY=VALUE`` goes to every model that has the field.
A model that cannot run on the data (LADMIM without held-out normal images, a backbone without weights here, a
refused setting) is listed with the reason; the others still run.

Written into ``--out`` (default ``compare-<dataset>``):

- ``results.csv``: every row of every run (long format, ``adlib.study`` columns, one row per seed);
- ``summary.csv``: per model and category, and their mean over the categories, the mean and std over seeds of
  the image and pixel metrics (percent), the seconds per fit and the inference speed, where the fits came from;
- ``index.html``: one self-contained page with that table and one row of anomaly maps per model on the same
  test images (defective and good, per category), the image and its ground truth above them.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from adlib.app.run import (UsageError, _apply, _categories, _data_root, _device, _epochs_per_stage, _overrides,
                           _parse_override, recipe_setting)

# (level, metric) columns of the summary, in order
COLUMNS = (("image", "auroc"), ("image", "ap"), ("pixel", "auroc"), ("pixel", "aupro"), ("pixel", "f1max"))
MAP_SIZE = 128


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from adlib.models import available_models

    parser.add_argument("--data-root", default=None,
                        help="dataset folder in the MVTec layout (folders of categories); default: the embedded "
                             "synthetic set (--synthetic)")
    parser.add_argument("--synthetic", default=None, metavar="NAME", help="an embedded synthetic set instead")
    parser.add_argument("--categories", default="all", metavar="all|a,b", help="categories to run (default: all)")
    parser.add_argument("--models", default=None, metavar="a,b",
                        help=f"models to compare (default: every registered one: {', '.join(available_models())})")
    parser.add_argument("--setting", default="one-class", choices=["one-class", "multi-class"],
                        help="one model per category, or one model for all the categories (default: one-class)")
    parser.add_argument("--seeds", default="0", metavar="0,1,2", help="seeds, comma-separated (default: 0)")
    parser.add_argument("--out", default=None, help="output folder (default: compare-<dataset>)")
    parser.add_argument("--profile", default="smoke", choices=["smoke", "paper"], help="recipes (default: smoke)")
    parser.add_argument("--protocol", default="exact", choices=["exact", "ader"], help="metric protocol")
    parser.add_argument("--image-size", type=int, default=None, help="input size for every model (default: each recipe's)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs for every model (every stage)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size for every model")
    parser.add_argument("--max-train-images", type=int, default=None, help="use at most N training images per fit")
    parser.add_argument("--backbone", default=None, help="backbone for every model that has one")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a model or engine config field, for every model that has it (repeatable)")
    parser.add_argument("--examples", type=int, default=2,
                        help="test images per kind (defective, good) and category whose maps the page shows")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--mask-threshold", type=float, default=None, metavar="T",
                        help="read masks as 'defect wherever the value is above T' (antialiased or JPEG-saved masks); "
                             "default: masks must be binary")
    parser.add_argument("--no-cache", action="store_true", help="fit afresh: neither read nor write the run cache")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _list(text: str | None, what: str, known: list[str] | None = None) -> list[str]:
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    if not items:
        raise UsageError(f"--{what}: empty; expected a comma-separated list")
    unknown = [t for t in items if known is not None and t not in known]
    if unknown:
        raise UsageError(f"--{what} {', '.join(unknown)}: unknown; available: {', '.join(known)}")
    return list(dict.fromkeys(items))


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in _list(text, "seeds")]
    except ValueError:
        raise UsageError(f"--seeds {text!r}: expected integers such as 0,1,2") from None


def _model_overrides(models: list[str], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per model, the overrides whose field it has, each ``--set`` typed against that model's field (``_typed``);
    a key no model has is a UsageError."""
    from adlib.engine import FitConfig
    from adlib.models import config_class

    texts = dict(_parse_override(o) for o in args.overrides)
    fit_fields = {f.name for f in fields(FitConfig)}
    known = {model: fit_fields | {f.name for f in fields(config_class(model))} for model in models}
    unused = sorted(k for k in texts if not any(k in fields_ for fields_ in known.values()))
    if unused:
        raise UsageError(f"--set: {unused} is a field of none of the models {', '.join(models)}")
    out = {}
    for model in models:
        own = [o for o in args.overrides if _parse_override(o)[0] in known[model]]
        mine = argparse.Namespace(**{**vars(args), "model": model, "overrides": own})
        overrides = _overrides(mine)
        overrides.pop("seed")
        overrides["progress"] = False  # one bar per model instead of the engine's
        out[model] = {k: v for k, v in overrides.items() if k in known[model] or k == "progress"}
    return out


class _Bar:
    """A progress bar per model over its runs (seeds x category groups), fed by ``run_grid``'s log lines."""

    def __init__(self, model: str, total: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=f"{model:>9}", unit="fit", disable=not enabled, file=sys.stderr)
        self.lines: list[str] = []

    def log(self, line: str) -> None:
        self.lines.append(line)
        self.bar.update(1)
        self.bar.set_postfix_str("cache" if "run cache" in line else ("not run" if "not run" in line else "trained"))

    def close(self) -> None:
        self.bar.close()


def run_models(args: argparse.Namespace) -> dict:
    """Run every model; returns {"rows": DataFrame, "runs": {model: [Run]}, "not_run": {model: reason},
    "notes": {model: [str]}, "sources": [DataSource], ...}."""
    import pandas as pd

    from adlib import papers
    from adlib.models import available_models
    from adlib.study import DataSource, run_grid
    from adlib.study.grid import split_check

    args.category, args.seed = None, None
    root, data_name = _data_root(args)
    categories = _categories(args, root)
    models = _list(args.models, "models", available_models()) if args.models else available_models()
    seeds = _seeds(args.seeds)
    if args.examples < 0:
        raise UsageError(f"--examples {args.examples}: expected a number >= 0")
    per_model = _model_overrides(models, args)
    device = _device(args.device)
    sources = [DataSource(data_name, root, c, synthetic=args.data_root is None, mask_threshold=args.mask_threshold)
               for c in categories]
    for source in sources:  # unreadable files, bad masks: before any training
        check = split_check(source)
        if not (check.image_metrics and check.pixel_metrics):
            print(f"note: {source.name}: {check.statement()}", file=sys.stderr)
    groups = 1 if args.setting == "multi-class" else len(sources)
    tables, runs, not_run, notes = [], {}, {}, {}
    for model in models:
        keep: dict = {}
        bar = _Bar(model, len(seeds) * groups, not args.no_progress)
        try:
            recipe = papers.home_recipe(model, args.profile)
            chosen = _epochs_per_stage(recipe, per_model[model])
            preset = _apply(model, recipe, chosen, args)
            setting = recipe_setting(model, args.profile, image_size=getattr(preset.model, "image_size", None),
                                     backbone=getattr(preset.model, "backbone", None), device=str(device),
                                     class_setting=args.setting, protocol=args.protocol)
            table = run_grid(setting, {"default": chosen}, sources, models=(model,), seeds=seeds,
                             class_setting=args.setting, protocols=(args.protocol,), keep=keep,
                             keep_maps=args.examples, log=bar.log, fit_cache=False if args.no_cache else None)
        except Exception as error:  # anything a model cannot do here: named, and the others still run
            if isinstance(error, (KeyboardInterrupt, MemoryError)):
                raise
            not_run[model] = f"{type(error).__name__}: {error}".splitlines()[0]
            continue
        finally:
            bar.close()
        missing = table[table["note"].astype(str) != ""]
        reasons = {f"{dataset}: {note}" for dataset, note in zip(missing["dataset"], missing["note"])}
        if reasons:
            not_run[model] = ("" if not keep else "some runs only; not run on ") + "; ".join(sorted(reasons))
        if not keep:
            continue
        tables.append(table)
        runs[model] = [keep[k] for k in sorted(keep, key=lambda k: (k[3], k[2]))]
        first = runs[model][0]
        notes[model] = [n for n in (f"backbone {first.backbone}" if first.backbone else "",
                                    f"calibration: {first.calibration}" if first.calibration else "") if n]
    rows = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return {"rows": rows, "runs": runs, "not_run": not_run, "notes": notes, "sources": sources, "models": models,
            "seeds": seeds, "data": data_name, "root": root}


def summary(rows, runs: dict) -> "pd.DataFrame":
    """Per model and category (and "mean" over the categories, per seed first): mean and std over seeds of
    each metric in ``COLUMNS`` (percent), seconds per fit, inference images/s, where the fits came from."""
    import numpy as np
    import pandas as pd

    if rows.empty:
        return pd.DataFrame()
    out = []
    cats = rows[(rows["scope"] == "category") & (rows["level"].isin(["image", "pixel"]))]
    model_rows = rows[rows["level"] == "model"]
    for method, part in cats.groupby("method", sort=False):
        per_seed = {}  # (category, seed) -> {column: value}
        for (dataset, seed), group in part.groupby(["dataset", "seed"], sort=False):
            values = {f"{level}_{metric}": float(group[(group["level"] == level) & (group["metric"] == metric)]["value"]
                                                 .mean()) for level, metric in COLUMNS}
            per_seed[(dataset, seed)] = values
        datasets = list(dict.fromkeys(d for d, _ in per_seed))
        seeds = list(dict.fromkeys(s for _, s in per_seed))
        mine = model_rows[model_rows["method"] == method]
        fits = mine[mine["metric"] == "train_s"]
        sources = ", ".join(f"{n} {k}" for k, n in fits["fit"].value_counts().items())
        for dataset in datasets + (["mean"] if len(datasets) > 1 else []):
            if dataset == "mean":
                samples = [{c: float(np.mean([per_seed[(d, s)][c] for d in datasets])) for c in per_seed[(datasets[0], s)]}
                           for s in seeds]
                timing = mine
            else:
                samples = [per_seed[(dataset, s)] for s in seeds if (dataset, s) in per_seed]
                timing = mine[mine["dataset"] == dataset] if (mine["dataset"] == dataset).any() else mine
            row = {"method": method, "category": dataset.split("/", 1)[-1] if dataset != "mean" else "mean",
                   "seeds": len(samples)}
            for column in samples[0]:
                values = np.array([s[column] for s in samples], dtype=float)
                row[column] = float(values.mean())
                row[f"{column}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            row["fit_s"] = float(timing[timing["metric"] == "train_s"]["value"].mean())
            row["images_per_s"] = float(timing[timing["metric"] == "fps"]["value"].mean())
            row["fits"] = sources
            out.append(row)
    return pd.DataFrame(out)


# ---------------------------------------------------------------------------------------------- the page
def _png(array, cmap: str | None = None) -> str:
    """A data: URI of an image: (H, W, 3) in [0, 1], or (H, W) through ``cmap`` (gray without one)."""
    import numpy as np
    from PIL import Image

    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:
        if cmap is not None:
            from matplotlib import colormaps

            array = colormaps[cmap](np.clip(array, 0, 1))[..., :3]
        else:
            array = np.repeat(array[..., None], 3, axis=2)
    image = Image.fromarray((np.clip(array, 0, 1) * 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _test_item(run, category: str, path: str) -> dict | None:
    """The test item (image, mask, label, defect) of ``path`` in the run's test set of ``category``."""
    dataset = run.test_set(category)
    base, indices = dataset, None
    if hasattr(dataset, "indices"):
        base, indices = dataset.dataset, list(dataset.indices)
    for i in indices if indices is not None else range(len(base)):
        if str(base.samples[i].image_path) == path:
            return base[i]
    return None


def _resize(array, size: int = MAP_SIZE):
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(array, dtype=torch.float32)
    t = t[None, None] if t.ndim == 2 else t[None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0].squeeze(0).numpy()


def maps_section(runs: dict, sources: list, seed: int) -> str:
    """Per category: a row of test images, their ground truth, then one row of maps per model (its run of that
    category at the first seed), each model's maps scaled to its own range over the images shown."""
    import numpy as np

    parts = []
    for source in sources:
        category = source.category
        chosen = {m: next((r for r in rs if r.seed == seed and category in [s.category for s in r.sources]), None)
                  for m, rs in runs.items()}
        chosen = {m: r for m, r in chosen.items() if r is not None}
        shown = None  # the images every model kept a map of (the same test order for every model)
        for run in chosen.values():
            kept = _kept_for(run, category)
            shown = kept if shown is None else [p for p in shown if p in kept]
        if not shown:
            continue
        reference = next(iter(chosen.values()))
        items = {p: _test_item(reference, category, p) for p in shown}
        shown = sorted((p for p in shown if items[p] is not None), key=lambda p: int(items[p]["label"]) == 0)
        head = "".join(f"<th>{html.escape(items[p]['defect'] if int(items[p]['label']) else 'good')}<br>"
                       f"<span class=meta>{html.escape(Path(p).name)}</span></th>" for p in shown)
        rows = ["<tr><th>image</th>" + "".join(
                    f"<td><img src='{_png(_resize(items[p]['image']).transpose(1, 2, 0))}'></td>" for p in shown)
                + "</tr>",
                "<tr><th>ground truth</th>" + "".join(
                    f"<td><img src='{_png(_resize(items[p]['mask'][0]) > 0.5)}'></td>" for p in shown) + "</tr>"]
        for model, run in chosen.items():
            maps = [np.asarray(run.evaluation.maps[p], dtype=np.float32) for p in shown]
            low, high = min(float(m.min()) for m in maps), max(float(m.max()) for m in maps)
            scaled = [(m - low) / (high - low) if high > low else np.zeros_like(m) for m in maps]
            rows.append(f"<tr><th>{html.escape(run.method)}</th>" + "".join(
                f"<td><img src='{_png(m, 'inferno')}'></td>" for m in scaled) + "</tr>")
        parts.append(f"<h3>{html.escape(source.name)}</h3><table class=maps><tr><th></th>{head}</tr>"
                     + "".join(rows) + "</table>")
    return "".join(parts)


def _kept_for(run, category: str) -> list[str]:
    """Paths of the test images of ``category`` whose maps the run's evaluation kept, in test order."""
    evaluation = run.evaluation
    cats = evaluation.image_categories
    return [p for i, p in enumerate(evaluation.paths)
            if p in evaluation.maps and (len(run.sources) == 1 or (cats and cats[i] == category))]


def _cell(value: float, std: float, seeds: int) -> str:
    if value != value:
        return "<td class='num blank'>n/a</td>"
    return f"<td class=num>{value:.1f}" + (f" ± {std:.1f}" if seeds > 1 else "") + "</td>"


def page(result: dict, table, args: argparse.Namespace, seconds: float) -> str:
    from adlib.app.report import CSS

    heads = "".join(f"<th>{level} {metric}</th>" for level, metric in COLUMNS)
    body = []
    for _, row in table.iterrows():
        cells = "".join(_cell(row[f"{level}_{metric}"], row[f"{level}_{metric}_std"], row["seeds"])
                        for level, metric in COLUMNS)
        body.append(f"<tr{' class=sub' if row['category'] == 'mean' else ''}><td>{html.escape(row['method'])}</td>"
                    f"<td>{html.escape(row['category'])}</td>{cells}<td class=num>{row['fit_s']:.1f}</td>"
                    f"<td class=num>{row['images_per_s']:.1f}</td><td>{html.escape(row['fits'])}</td></tr>")
    metrics = (f"<table><tr><th>method</th><th>category</th>{heads}<th>fit s</th><th>images/s</th><th>fits</th></tr>"
               + "".join(body) + "</table>") if body else "<p>No model ran.</p>"
    notes = "".join(f"<li><b>{html.escape(m)}</b>: {html.escape('; '.join(n))}</li>"
                    for m, n in result["notes"].items() if n)
    missing = "".join(f"<li><b>{html.escape(m)}</b>: {html.escape(r)}</li>" for m, r in result["not_run"].items())
    seeds = ", ".join(map(str, result["seeds"]))
    cats = ", ".join(s.category for s in result["sources"])
    return (f"<!doctype html><html><head><meta charset=utf-8><title>adlib compare: {html.escape(result['data'])}"
            f"</title><style>{CSS}table.maps img{{width:{MAP_SIZE}px;height:{MAP_SIZE}px;display:block}}</style>"
            f"</head><body><main><h1>adlib compare: {html.escape(result['data'])}</h1>"
            f"<p class=meta>data {html.escape(str(result['root']))} (categories {html.escape(cats)}), "
            f"{args.setting}, profile {args.profile} (each model's home recipe), protocol {args.protocol}, "
            f"seeds {seeds}; {seconds:.0f} s in all. Values in percent, mean ± std over the seeds; the mean row "
            f"averages the categories per seed first. Fit seconds and images/s are those of the fit and "
            f"evaluation that made the numbers (a fit read from the run cache keeps the seconds it took).</p>"
            f"<h2>Metrics</h2>{metrics}"
            + (f"<h2>Models not run</h2><ul>{missing}</ul>" if missing else "")
            + (f"<h2>Notes</h2><ul class=notes>{notes}</ul>" if notes else "")
            + f"<h2>Anomaly maps</h2><p class=meta>The same test images for every model (its run with seed "
              f"{result['seeds'][0]}); each model's maps are scaled to its own range over the images shown (inferno: "
              "dark low, bright high).</p>"
            + maps_section(result["runs"], result["sources"], result["seeds"][0]) + "</main></body></html>\n")


def main(args: argparse.Namespace) -> int:
    from adlib.io import atomic_write_text, check_writable_dir

    start = time.perf_counter()
    try:
        if args.data_root is None and args.synthetic is None:
            raise UsageError("--data-root missing: the dataset folder to compare the models on (or --synthetic NAME)")
        out = Path(args.out or f"compare-{Path(args.data_root).name if args.data_root else args.synthetic}")
        check_writable_dir(out, "--out")
        result = run_models(args)
    except (UsageError, ValueError, FileNotFoundError, PermissionError) as error:
        print(f"adlib compare: error: {error}", file=sys.stderr)
        return 2
    table = summary(result["rows"], result["runs"])
    seconds = time.perf_counter() - start
    if not result["rows"].empty:
        atomic_write_text(out / "results.csv", result["rows"].to_csv(index=False))
    atomic_write_text(out / "summary.csv", table.to_csv(index=False))
    atomic_write_text(out / "index.html", page(result, table, args, seconds))
    if not table.empty:
        view = table[["method", "category", *[f"{l}_{m}" for l, m in COLUMNS], "fit_s", "images_per_s", "fits"]]
        print(view.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    for model, reason in result["not_run"].items():
        print(f"not run: {model}: {reason}")
    print(f"wrote {out / 'summary.csv'}, {out / 'index.html'}" + (f", {out / 'results.csv'}" if not result["rows"].empty
                                                                   else "") + f" ({seconds:.0f} s)")
    return 0 if result["runs"] else 1
