"""`python -m adlib run MODEL ...`: fit and evaluate a model, print and save the metrics.

Examples::

    python -m adlib run varad --data-root $ADLIB_DATA/mvtec_ad --category bottle --profile smoke
    python -m adlib run patchcore --setting multi-class --categories all --protocol both

Without ``--data-root`` the embedded synthetic benchmark is used: ``synthetic_ad`` one-class,
``synthetic_multi`` multi-class (``--synthetic NAME`` picks another embedded set). ``--setting one-class``
fits one model per category; ``multi-class`` fits one model on the union of the categories' normal training
images (no category label is given to the model) and evaluates it per category. Results give per-category
rows, their mean (the papers' "m" metrics) and, for several categories, the pooled numbers, labelled as
pooled. ``--protocol exact|ader|both`` names the metric protocol (``adlib.metrics.PROTOCOLS``).

A thin command line over ``adlib.study.run_one``, the one run path the notebooks take: the Setting is the
model's home paper's recipe for the profile (``recipe_setting``), on every image of the data unless capped. A
model that calibrates on held-out normal images (LADMIM) gets the data's validation split, or a held-out tenth
of train/good when there is none; the output says which. Fits are read from the run cache on disk when it holds
them (``adlib.study.runcache``; ``--no-cache`` fits afresh); the output says whether the fit was trained or
read. ``--weights-from FILE`` evaluates a checkpoint without training (``--weights-format authors``: the
authors' key names, through ``adlib.models.authors.load``).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

from adlib.models import available_models


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", choices=available_models(), help="model to fit")
    parser.add_argument("--data-root", default=None,
                        help="dataset folder in the MVTec layout (e.g. $ADLIB_DATA/mvtec_ad); default: an embedded "
                             "synthetic set (synthetic_ad one-class, synthetic_multi multi-class)")
    parser.add_argument("--synthetic", default=None, metavar="NAME",
                        help="embedded synthetic set to use without --data-root (synthetic_ad, synthetic_multi, ...)")
    parser.add_argument("--category", default=None, help="one category to run (e.g. bottle)")
    parser.add_argument("--categories", default=None, metavar="all|a,b",
                        help="several categories: 'all' or a comma-separated list")
    parser.add_argument("--setting", default="one-class", choices=["one-class", "multi-class"],
                        help="one model per category, or one model for all the categories (default: one-class)")
    parser.add_argument("--protocol", default="exact", choices=["exact", "ader", "both"],
                        help="metric protocol: exact (default), ader (ADer's evaluator, ViTAD/MambaAD), or both")
    parser.add_argument("--profile", default="smoke", choices=["smoke", "paper"], help="preset (default: smoke)")
    parser.add_argument("--image-size", type=int, default=None, help="square input size in pixels (overrides the profile)")
    parser.add_argument("--backbone", default=None, help="backbone name (overrides the profile)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs (overrides the profile; a model trained in stages: every stage)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (overrides the profile)")
    parser.add_argument("--max-train-images", type=int, default=None,
                        help="use at most N training images (in total, for multi-class)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="any model or engine config field, e.g. --set m=2 --set adapter=resblock "
                             "--set betas=0.9,0.999 (repeatable; each value is checked against the field's type)")
    parser.add_argument("--mask-threshold", type=float, default=None, metavar="T",
                        help="read masks as 'defect wherever the value is above T' (e.g. 127 for antialiased or "
                             "JPEG-saved masks); default: the layout's rule (MVTec: masks must be binary)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: 0; or --set seed=N)")
    parser.add_argument("--json", default=None, help="write metrics, timings, config and provenance to this file")
    parser.add_argument("--checkpoint", default=None,
                        help="save the fitted model here (one-class with several categories: one file per category, "
                             "named <stem>-<category><suffix>)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--no-cache", action="store_true",
                        help="fit afresh: neither read nor write the run cache ($ADLIB_RUN_CACHE=0 does it for all)")
    parser.add_argument("--weights-from", default=None, metavar="PATH",
                        help="evaluate the model held in this checkpoint instead of training it")
    parser.add_argument("--weights-format", default="adlib", choices=["adlib", "authors"],
                        help="adlib: a --checkpoint file of adlib; authors: a released checkpoint in the authors' "
                             "key names (adlib.models.authors)")


class UsageError(ValueError):
    pass


def _parse_override(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` -> (key, the value's text); the value is typed against its field in ``_overrides``."""
    if "=" not in text:
        raise UsageError(f"--set {text!r}: expected KEY=VALUE")
    key, raw = text.split("=", 1)
    return key.strip().replace("-", "_"), raw


class _Preset:
    def __init__(self, model, fit, notes):
        self.model, self.fit, self.notes = model, fit, notes


OPTION_FIELDS = {"image_size": "--image-size", "backbone": "--backbone", "epochs": "--epochs",
                 "batch_size": "--batch-size", "max_train_images": "--max-train-images"}


def _option(key: str, args: argparse.Namespace | None) -> str:
    """The command-line option that set config field ``key``: ``--epochs`` or ``--set key``."""
    if args is not None and key in OPTION_FIELDS and getattr(args, key, None) is not None:
        return OPTION_FIELDS[key]
    return f"--set {key}"


def _apply(model: str, recipe, overrides: dict[str, Any], args: argparse.Namespace | None = None) -> _Preset:
    """The recipe's model config and FitConfig with ``overrides`` set on whichever has the field; a value
    the config refuses is a UsageError naming the option that gave it (``--set lr``, ``--epochs``)."""
    try:
        return _apply_fields(model, recipe, overrides)
    except (ValueError, TypeError) as error:
        if isinstance(error, UsageError):
            raise
        message = str(error)
        named = [k for k in overrides if k not in ("progress",) and re.search(rf"(^|\W){re.escape(k)}\s*=", message)]
        if not named:
            raise
        key = named[0]
        raise UsageError(f"{_shown(key, overrides[key], args)} is refused: {message}") from None


def _shown(key: str, value: Any, args: argparse.Namespace | None) -> str:
    """How the command line gave config field ``key``: ``--set m=40`` as typed, or ``--epochs 0``."""
    option = _option(key, args)
    texts = dict(_parse_override(o) for o in getattr(args, "overrides", None) or [])
    if option == f"--set {key}" and key in texts:
        return f"{option}={texts[key].strip()}"
    return f"{option}={value!r}" if option.startswith("--set") else f"{option} {value!r}"


def _apply_fields(model: str, recipe, overrides: dict[str, Any]) -> _Preset:
    from dataclasses import replace

    from adlib.engine import FitConfig
    from adlib.models import model_config

    fit = recipe.fit or FitConfig()
    model_values, fit_values = _typed(model, overrides)
    config = model_config(model, None, **{**dict(recipe.model), **model_values})
    fit = replace(fit, **fit_values)
    return _Preset(config, fit, dict(recipe.notes))


def _typed(model: str, values: dict[str, Any], from_text: bool = False) -> list[dict[str, Any]]:
    """``values`` split over the model's config and FitConfig, each checked against its field's type; one
    UsageError line naming ``--set KEY``, the value and what is expected otherwise."""
    from adlib.config import ConfigValueError
    from adlib.engine import FitConfig
    from adlib.models import typed_overrides

    try:
        return typed_overrides(model, values, FitConfig, from_text=from_text)
    except ConfigValueError as error:
        raise UsageError(f"--set {error}") from None
    except ValueError as error:  # unknown names
        raise UsageError(f"--set: {error}") from None


def _results():
    from adlib import results  # pandas: imported only when a run happens, not for `adlib --help`

    return results


def _data_root(args: argparse.Namespace) -> tuple[Path, str]:
    from adlib.data import synthetic_root

    if args.data_root is None:
        name = args.synthetic or ("synthetic_multi" if args.setting == "multi-class" else "synthetic_ad")
        root = Path(synthetic_root()) / name
        if not root.is_dir():
            found = sorted(p.name for p in root.parent.iterdir() if p.is_dir())
            raise UsageError(f"--synthetic {name}: no such embedded set; available: {', '.join(found)}")
        return root, name
    if args.synthetic is not None:
        raise UsageError("--synthetic picks an embedded set; it cannot be combined with --data-root")
    root = Path(args.data_root)
    if not root.is_dir():
        raise UsageError(f"--data-root {root}: not a folder")
    if (root / "train").is_dir() and not any((p / "train").is_dir() for p in root.iterdir() if p.is_dir()):
        raise UsageError(f"--data-root {root} is a category folder; pass its parent: --data-root {root.parent} "
                         f"--category {root.name}")
    return root, root.name


def _categories(args: argparse.Namespace, root: Path) -> list[str]:
    from adlib.data import list_categories

    available = list_categories(root)
    if args.category is not None and args.categories is not None:
        raise UsageError("give --category or --categories, not both")
    if args.category is not None:
        wanted = [args.category]
    elif args.categories is not None:
        wanted = available if args.categories == "all" else [c for c in args.categories.split(",") if c]
    elif args.setting == "multi-class":
        wanted = available
    else:
        raise UsageError(f"--category missing; available: {', '.join(available)} (or --categories all)")
    unknown = [c for c in wanted if c not in available]
    if unknown or not wanted:
        what = f"{', '.join(map(repr, unknown))} not found in {root}" if unknown else "empty"
        raise UsageError(f"--categor{'y' if args.category else 'ies'} {what}; available: {', '.join(available)}")
    return wanted


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config values the command line sets: every ``--set`` typed against its field (before any data is
    read), then the options that name a field (``--epochs``), then the seed."""
    texts = dict(_parse_override(o) for o in args.overrides)
    overrides: dict[str, Any] = {}
    for part in _typed(args.model, texts, from_text=True):
        overrides.update(part)
    for key in OPTION_FIELDS:
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    for key, value in overrides.items():  # their types are checked: here, that they are positive
        if key in ("image_size", "epochs", "batch_size", "max_train_images") and value is not None and (
                min(value if isinstance(value, tuple) else (value,)) < 1):
            raise UsageError(f"{_shown(key, value, args)}: expected a positive integer")
    threshold = getattr(args, "mask_threshold", None)
    if threshold is not None and not threshold >= 0:
        raise UsageError(f"--mask-threshold {threshold}: expected a number >= 0")
    if args.seed is not None and "seed" in overrides and overrides["seed"] != args.seed:
        raise UsageError(f"--seed {args.seed} and --set seed={overrides['seed']} disagree; give one of them")
    seed = args.seed if args.seed is not None else overrides.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UsageError(f"--set seed={seed!r}: expected an integer")
    overrides["seed"] = seed
    overrides["progress"] = not args.no_progress
    return overrides


def _epochs_per_stage(recipe, overrides: dict[str, Any]) -> dict[str, Any]:
    """``--epochs N`` for a model trained in stages whose recipe sets epochs per stage (LADMIM): every stage
    gets N (a plain FitConfig ``epochs`` would not change them), unless ``--set stages=...`` says otherwise."""
    stages = dict(recipe.fit.stages) if recipe.fit is not None else {}
    if "epochs" in overrides and "stages" not in overrides and any("epochs" in v for v in stages.values()):
        overrides = {**overrides, "stages": {name: {**dict(v), "epochs": overrides["epochs"]}
                                             for name, v in stages.items()}}
    return overrides


def _device(name: str):
    """The torch device ``name``, checked by allocating on it; one short UsageError line otherwise."""
    import torch

    available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        available.append("mps")
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        reason = first if len(first) <= 100 else f"this torch build has no {name.split(':')[0]!r} support"
        raise UsageError(f"--device {name!r} cannot be used here ({reason}); available: {', '.join(available)}") from None
    return device


def _checkpoint_path(base: str | None, category: str | None) -> str | None:
    if base is None or category is None:
        return base
    path = Path(base)
    return str(path.with_name(f"{path.stem}-{category}{path.suffix}"))


def _metrics_record(evaluation) -> dict:
    """Per protocol: the headline numbers, per category, and pooled (when several categories)."""
    out = {"image": evaluation.image, "pixel": evaluation.pixel, "undefined": evaluation.undefined}
    if evaluation.categories:
        out["categories"] = {c: {"image": m.image, "pixel": m.pixel, "images": m.images, "undefined": m.undefined}
                             for c, m in evaluation.categories.items()}
    if evaluation.pooled is not None:
        out["pooled"] = {"image": evaluation.pooled.image, "pixel": evaluation.pooled.pixel,
                         "undefined": evaluation.pooled.undefined}
    return out


def recipe_setting(model: str, profile: str = "smoke", paper: str | None = None, *, image_size: int | None = None,
                   backbone: str | None = None, seed: int = 0, device: str = "cpu", class_setting: str = "one-class",
                   protocol: str = "exact", max_train: int | None = None, max_test: int | None = None):
    """The ``Setting`` in which ``adlib run MODEL`` (and ``adlib compare``, and the benchmarks) run a model: the
    recipe of ``paper`` for (model, profile) (default: the model's home paper, ``adlib.papers.home``; a
    baseline's own recipes, ``adlib.papers.peers``, as a paper of its own) at the recipe's image size and
    backbone (or ``image_size``/``backbone``), on every image of the data unless capped (``max_train``,
    ``max_test``: per category, as the notebooks cap). Data sources are given to ``run_one`` by the caller."""
    from adlib import papers
    from adlib.models import config_class
    from adlib.study import resolve_setting

    if paper is None:
        recipe = papers.home_recipe(model, profile)  # a ValueError naming the profiles that exist
        spec = None
    else:
        spec = papers.get(paper)
        recipe = spec.recipe(model, profile)
        if recipe is None:
            raise ValueError(f"{model}: paper {paper} has no {profile!r} recipe for it")
    defaults = config_class(model)()
    size = image_size or recipe.model.get("image_size") or getattr(defaults, "image_size", None)
    backbone = backbone or recipe.model.get("backbone") or getattr(defaults, "backbone", None)
    spec = spec or _home_paper(model, profile, size, backbone)
    return resolve_setting(spec, profile, synthetic=False, image_size=size, backbone=backbone, seed=seed,
                           device=device, class_setting=class_setting, protocol=protocol, max_train=max_train,
                           max_test=max_test)


def _home_paper(model: str, profile: str, size: int | None, backbone: str | None):
    """The model's home ``PaperSpec``; for a baseline (whose recipes live in ``adlib.papers.peers``, not in a
    paper) one made of its own recipe, whose paper backbone is that of its paper-profile recipe."""
    from adlib import papers
    from adlib.study.spec import PaperSpec, ProfileSpec

    name = papers.home(model)
    if name in papers.PAPERS:
        return papers.get(name)
    recipe = papers.home_recipe(model, profile)
    try:
        paper_backbone = papers.home_recipe(model, "paper").model.get("backbone") or backbone
    except ValueError:
        paper_backbone = backbone
    spec = ProfileSpec(description=f"{model}'s own {profile} recipe (adlib.papers.{name})", image_size=size or 256,
                       backbone=backbone or "", paper_backbone=paper_backbone or "", max_train=None, max_test=None)
    return PaperSpec(name=name, title=f"{model}: the recipes of its own paper", method=model,
                     profiles={profile: spec}, recipes={(model, profile): recipe})


def _sources(root: Path, data_name: str, categories: list[str], synthetic: bool, mask_threshold: float | None = None):
    from adlib.study import DataSource

    return [DataSource(data_name, root, c, synthetic=synthetic, mask_threshold=mask_threshold) for c in categories]


def _fit_record(run) -> dict:
    fit = run.fit
    return {"categories": [s.category for s in run.sources], "run_id": fit.run_id, "losses": fit.losses,
            "epochs": fit.epochs,
            "cached_features": fit.cached, "disk_cache_hits": fit.disk_hits, "train_images": fit.train_images,
            "train_s": fit.train_seconds, "train_cpu_s": fit.cpu_seconds, "from": run.fit_from,
            "calibration": run.calibration}


def _loco_record(runs: list, protocol: str) -> dict | None:
    """Image AUROC per anomaly group (MVTec LOCO's protocol, ``adlib.loco``) when the test images have groups
    beyond good/defect; None otherwise."""
    from adlib import loco

    evaluations = [run.evaluations[protocol] for run in runs]
    if not any(set(e.groups) & set(loco.GROUPS) for e in evaluations):
        return None
    try:
        summary = loco.combine({run.sources[0].category: loco.from_eval(e) for run, e in zip(runs, evaluations)})
    except ValueError as error:  # no normal test image, say
        return {"undefined": str(error)}
    out = {"logical": summary.logical, "structural": summary.structural, "whole": summary.mean("whole"),
           "categories": {c: {"logical": r.logical, "structural": r.structural, "whole": r.whole, "counts": r.counts}
                          for c, r in summary.categories.items()}}
    if all(v == v for v in (summary.logical, summary.structural)):  # both groups present: the paper's Overall
        out["overall"] = summary.overall
    return out


def execute(args: argparse.Namespace) -> dict:
    """Fit and evaluate from parsed arguments (through ``adlib.study.run_one``); returns the JSON record."""
    from dataclasses import asdict

    from adlib import papers
    from adlib.data import AnomalyDataset
    from adlib.study.grid import run_one, split_check

    root, data_name = _data_root(args)
    categories = _categories(args, root)
    protocols = ["exact", "ader"] if args.protocol == "both" else [args.protocol]
    recipe = papers.home_recipe(args.model, args.profile)
    overrides = _epochs_per_stage(recipe, _overrides(args))
    preset = _apply(args.model, recipe, overrides, args)  # a refused value names its option, before any work
    if args.weights_from is not None and not Path(args.weights_from).is_file():
        raise UsageError(f"--weights-from {args.weights_from}: no such file")
    results = _results()
    for option, path in (("--json", args.json), ("--checkpoint", args.checkpoint)):  # fail before training
        if path is not None:
            results.remove_stale([Path(path).parent], recursive=False)
            results.check_writable(path, option)
    device = _device(args.device)
    seed = overrides.pop("seed")
    setting = recipe_setting(args.model, args.profile, image_size=getattr(preset.model, "image_size", None),
                             backbone=getattr(preset.model, "backbone", None), seed=seed, device=str(device),
                             class_setting=args.setting, protocol=protocols[0])
    threshold = getattr(args, "mask_threshold", None)  # --mask-threshold: defect wherever a mask value is above it
    sources = _sources(root, data_name, categories, synthetic=args.data_root is None, mask_threshold=threshold)
    size = getattr(preset.model, "image_size", None)
    checks = {s.category: split_check(s, size) for s in sources}  # unreadable files, bad masks: before training
    for check in checks.values():
        if not (check.image_metrics and check.pixel_metrics):
            print(f"note: {check.statement()}", file=sys.stderr)
    start = time.perf_counter()
    groups = [sources] if args.setting == "multi-class" else [[s] for s in sources]
    runs = []
    for group in groups:
        options = dict(overrides)
        if args.checkpoint:
            options["checkpoint"] = _checkpoint_path(args.checkpoint, None if len(groups) == 1 else group[0].category)
        runs.append(run_one(setting, group, args.model, seed=seed, class_setting=args.setting, protocols=protocols,
                            cache=False if args.no_cache else None, weights=args.weights_from,
                            weights_format=args.weights_format, **options))
    evaluations = {p: [([s.category for s in run.sources], run.evaluations[p]) for run in runs] for p in protocols}
    by_protocol = {p: _combine(parts, args.setting) for p, parts in evaluations.items()}
    eval_seconds = sum(r.seconds for _, r in evaluations[protocols[0]])  # one prediction pass serves every protocol
    n_test = sum(len(r.scores) for _, r in evaluations[protocols[0]])
    first = by_protocol[protocols[0]]
    fits = [_fit_record(run) for run in runs]
    tests = {s.category: AnomalyDataset(s.root, s.category, "test", mask_threshold=s.mask_threshold) for s in sources}
    record = {
        "model": args.model,
        "profile": args.profile,
        "setting": runs[0].class_setting,
        "protocols": protocols,
        "data": data_name,
        "data_root": str(root),
        "category": categories[0] if len(categories) == 1 else None,
        "categories": categories,
        "image": first["image"],
        "pixel": first["pixel"],
        "metrics": by_protocol,
        "timing": {"train_s": sum(f["train_s"] for f in fits), "train_cpu_s": sum(f["train_cpu_s"] for f in fits),
                   "eval_s": eval_seconds, "fps": n_test / eval_seconds if eval_seconds > 0 else float("nan"),
                   "total_s": time.perf_counter() - start},
        "fit": fits[0] if len(fits) == 1 else {"runs": fits, "train_images": sum(f["train_images"] for f in fits)},
        "fits": {"trained": sum(r.fit_from == "trained" for r in runs), "cache": sum(r.fit_from == "cache" for r in runs),
                 "weights": sum(r.fit_from == "weights" for r in runs)},
        "calibration": runs[0].calibration if len(runs) == 1 else {f["categories"][0]: f["calibration"] for f in fits},
        "weights": {"path": args.weights_from, "format": args.weights_format} if args.weights_from else None,
        "backbone": runs[0].backbone,
        "test_images": n_test,
        "test_split": {c: {"statement": k.statement(), "image_metrics": k.image_metrics,
                           "pixel_metrics": k.pixel_metrics, "layout": tests[c].layout.name,
                           "mask_encoding": tests[c].layout.mask_encoding,
                           "mask_threshold": tests[c].layout.mask_threshold} for c, k in checks.items()},
        "config": {"model": asdict(runs[0].model.config), "fit": asdict(runs[0].fit_config)},
        "notes": preset.notes,
        "provenance": results.provenance(device=str(device), seed=seed),
    }
    loco = _loco_record(runs, protocols[0])
    if loco is not None:
        record["loco"] = loco
    if args.setting == "multi-class" and record["setting"] == "one-class":
        record["notes"] = {**record["notes"], "setting": "one category: a multi-class group of one is a one-class "
                                                         "run (adlib.study.run_one)"}
    if len(fits) == 1:
        record["fit"]["test_images"] = n_test
    return record


def _combine(parts: list, setting: str) -> dict:
    """One protocol's record over all fitted groups: a single result as is; one-class over several categories:
    per-category rows and their mean (no pooled numbers: the models differ per category)."""
    import numpy as np

    if len(parts) == 1:
        return _metrics_record(parts[0][1])
    categories = {group[0]: {"image": r.image, "pixel": r.pixel, "images": len(r.scores), "undefined": r.undefined}
                  for group, r in parts}
    mean = {}
    for level in ("image", "pixel"):
        rows = [c[level] for c in categories.values()]
        keys = [k for k in (rows[0] if rows else {}) if all(k in r for r in rows)]
        mean[level] = {k: float(np.mean([r[k] for r in rows])) for k in keys} if all(rows) else {}
    return {"image": mean["image"], "pixel": mean["pixel"], "categories": categories, "undefined": {}}


def _format(record: dict) -> str:
    def cells(values: dict, keys: tuple[str, ...]) -> str:
        return "  ".join(f"{k} {100 * values[k]:.1f}" for k in keys if k in values)

    image_keys, pixel_keys = ("auroc", "ap", "f1max"), ("auroc", "ap", "f1max", "aupro")
    t = record["timing"]
    where = record["category"] or f"{len(record['categories'])} categories"
    lines = [f"{record['model']} on {record['data']}/{where} ({record['profile']} profile, {record['setting']})"]
    for protocol, m in record["metrics"].items():
        label = f"[{protocol}] " if len(record["metrics"]) > 1 or protocol != "exact" else ""
        for category, values in m.get("categories", {}).items():
            lines.append(f"  {label}{category:>16}: image {cells(values['image'], image_keys)} | "
                         f"pixel {cells(values['pixel'], pixel_keys)}")
        head = "mean over categories" if m.get("categories") else ""
        if head:
            lines.append(f"  {label}{head}:")
        lines.append(f"  {label} image: {cells(m['image'], image_keys)}")
        lines.append(f"  {label} pixel: {cells(m['pixel'], pixel_keys)}")
        if "pooled" in m:
            lines.append(f"  {label}pooled over categories: image {cells(m['pooled']['image'], image_keys)} | "
                         f"pixel {cells(m['pooled']['pixel'], pixel_keys)}")
        for level, reason in m.get("undefined", {}).items():
            lines.append(f"  {label}{level} metrics undefined: {reason}")
    if record.get("loco") and "logical" in record["loco"]:
        loco = record["loco"]
        groups = "  ".join(f"{g} {100 * loco[g]:.1f}" for g in ("logical", "structural", "overall")
                           if g in loco and loco[g] == loco[g])
        lines.append(f"  LOCO image AUROC by anomaly group (adlib.loco): {groups}")
    calibration = record.get("calibration")
    for where, text in (calibration.items() if isinstance(calibration, dict) else [("", calibration)]):
        if text:
            lines.append(f"  calibration{' ' + where if where else ''}: {text}")
    fits = record.get("fits", {})
    source = ", ".join(f"{n} {'read from the run cache' if k == 'cache' else k}" for k, n in fits.items() if n)
    if record.get("weights"):
        source = f"weights from {record['weights']['path']} ({record['weights']['format']} format), not trained"
    thresholds = sorted({s["mask_threshold"] for s in record.get("test_split", {}).values()} - {None})
    if thresholds:
        lines.append(f"  masks read with --mask-threshold {thresholds[0]:g}: defect wherever the mask value is above it")
    lines.append(f"  time: train {t['train_s']:.1f} s, inference {t['fps']:.2f} images/s, total {t['total_s']:.1f} s"
                 f" (fit: {source or 'none'})")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    try:
        record = execute(args)
    except (UsageError, ValueError, FileNotFoundError, KeyError, PermissionError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"adlib run: error: {message}", file=sys.stderr)
        return 2
    except OSError as error:  # a disk filling up while a checkpoint is written, and the like: name the path
        where = f"{error.filename}: " if error.filename else ""
        print(f"adlib run: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except Exception as error:  # a missing backbone's weights and the like: one line, not a traceback
        if type(error).__name__ != "WeightsUnavailableError":
            raise
        print(f"adlib run: error: {error}", file=sys.stderr)
        return 2
    print(_format(record))
    if args.json:
        try:
            _results().atomic_write_json(args.json, record)
        except OSError as error:
            print(f"adlib run: error: cannot write --json {args.json}: {error.strerror or error}", file=sys.stderr)
            return 2
        print(f"wrote {args.json}")
    return 0
