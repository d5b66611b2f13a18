"""`python -m adlib run MODEL ...`: fit and evaluate one model on one category, print and save the metrics.

Example: ``python -m adlib run varad --data-root $ADLIB_DATA/mvtec_ad --category bottle --profile smoke``.
Without ``--data-root`` the embedded synthetic benchmark (``synthetic_ad``) is used.
"""
from __future__ import annotations

import argparse
import ast
import sys
import time
from pathlib import Path
from typing import Any

from adlib.models import available_models


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", choices=available_models(), help="model to fit")
    parser.add_argument("--data-root", default=None,
                        help="dataset folder in the MVTec layout (e.g. $ADLIB_DATA/mvtec_ad); default: embedded synthetic_ad")
    parser.add_argument("--category", default=None, help="category to run (e.g. bottle)")
    parser.add_argument("--profile", default="smoke", choices=["smoke", "paper"], help="preset (default: smoke)")
    parser.add_argument("--image-size", type=int, default=None, help="square input size in pixels (overrides the profile)")
    parser.add_argument("--backbone", default=None, help="backbone name (overrides the profile)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (overrides the profile)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (overrides the profile)")
    parser.add_argument("--max-train-images", type=int, default=None, help="use at most N training images")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="any model or engine config field, e.g. --set m=2 --set adapter=resblock (repeatable)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--json", default=None, help="write metrics, timings, config and provenance to this file")
    parser.add_argument("--checkpoint", default=None, help="save the fitted model here")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


class UsageError(ValueError):
    pass


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise UsageError(f"--set {text!r}: expected KEY=VALUE")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip().replace("-", "_"), value


class _Preset:
    def __init__(self, model, fit, notes):
        self.model, self.fit, self.notes = model, fit, notes


def _apply(model: str, recipe, overrides: dict[str, Any]) -> _Preset:
    """The recipe's model config and FitConfig with ``overrides`` set on whichever has the field."""
    from dataclasses import fields, replace

    from adlib.engine import FitConfig
    from adlib.models import config_class, model_config

    fit = recipe.fit or FitConfig()
    model_fields = {f.name for f in fields(config_class(model))}
    fit_fields = {f.name for f in fields(fit)}
    unknown = sorted(set(overrides) - model_fields - fit_fields)
    if unknown:
        raise UsageError(f"--set: unknown parameter(s) {unknown}; valid: {sorted(model_fields | fit_fields)}")
    norm = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    config = model_config(model, None, **{**dict(recipe.model), **{k: v for k, v in norm.items() if k in model_fields}})
    fit = replace(fit, **{k: v for k, v in norm.items() if k in fit_fields})
    return _Preset(config, fit, dict(recipe.notes))


def _results():
    from adlib import results  # pandas: imported only when a run happens, not for `adlib --help`

    return results


def execute(args: argparse.Namespace) -> dict:
    """Run one fit + evaluation from parsed arguments; returns the JSON record."""
    from dataclasses import asdict

    import torch

    from adlib import engine
    from adlib.data import AnomalyDataset, list_categories, synthetic_root
    from adlib import papers
    from adlib.models import create_model, model_config

    if args.data_root is None:
        root = Path(synthetic_root()) / "synthetic_ad"
        data_name = "synthetic_ad"
    else:
        root = Path(args.data_root)
        if not root.is_dir():
            raise UsageError(f"--data-root {root}: not a folder")
        data_name = root.name
    categories = list_categories(root)
    if args.category is None or args.category not in categories:
        what = "missing" if args.category is None else f"{args.category!r} not found in {root}"
        raise UsageError(f"--category {what}; available: {', '.join(categories) or '(none)'}")

    overrides: dict[str, Any] = dict(_parse_override(o) for o in args.overrides)
    for key, value in {"image_size": args.image_size, "backbone": args.backbone, "epochs": args.epochs,
                       "batch_size": args.batch_size, "max_train_images": args.max_train_images}.items():
        if value is not None:
            overrides[key] = value
    for key, value in overrides.items():
        if key in ("image_size", "epochs", "batch_size", "max_train_images") and (not isinstance(value, int) or value < 1):
            raise UsageError(f"--{key.replace('_', '-')} {value!r}: expected a positive integer")
    overrides["seed"] = args.seed
    overrides["progress"] = not args.no_progress
    if args.checkpoint:
        overrides["checkpoint"] = args.checkpoint
    recipe = papers.home_recipe(args.model, args.profile)
    preset = _apply(args.model, recipe, overrides)
    try:
        device = torch.device(args.device)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:
        raise UsageError(f"--device {args.device!r} cannot be used here: {str(error).splitlines()[0]}") from None

    engine.seed_everything(args.seed)
    model = create_model(args.model, preset.model).to(device)
    size = preset.model.image_size
    train = AnomalyDataset(root, args.category, "train", image_size=size)
    test = AnomalyDataset(root, args.category, "test", image_size=size)
    start = time.perf_counter()
    fitted = engine.fit(model, train, preset.fit, device=device)
    result = engine.evaluate(model, test, batch_size=preset.fit.batch_size, device=device, progress=preset.fit.progress)
    record = {
        "model": args.model,
        "profile": args.profile,
        "data": data_name,
        "data_root": str(root),
        "category": args.category,
        "image": result.image,
        "pixel": result.pixel,
        "timing": {"train_s": fitted.train_seconds, "eval_s": result.seconds, "fps": result.fps,
                   "total_s": time.perf_counter() - start},
        "fit": {"losses": fitted.losses, "epochs": fitted.epochs, "cached_features": fitted.cached,
                "train_images": fitted.train_images, "test_images": len(test)},
        "config": {"model": asdict(preset.model), "fit": asdict(preset.fit)},
        "notes": preset.notes,
        "provenance": _results().provenance(device=str(device), seed=args.seed),
    }
    return record


def _format(record: dict) -> str:
    def row(level: str, keys: tuple[str, ...]) -> str:
        values = record[level]
        return f"{level:>6}: " + "  ".join(f"{k} {100 * values[k]:.1f}" for k in keys if k in values)

    t = record["timing"]
    return "\n".join([
        f"{record['model']} on {record['data']}/{record['category']} ({record['profile']} profile)",
        row("image", ("auroc", "ap", "f1max")),
        row("pixel", ("auroc", "ap", "f1max", "aupro")),
        f"  time: train {t['train_s']:.1f} s, inference {t['fps']:.2f} images/s, total {t['total_s']:.1f} s",
    ])


def main(args: argparse.Namespace) -> int:
    try:
        record = execute(args)
    except (UsageError, ValueError, FileNotFoundError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"adlib run: error: {message}", file=sys.stderr)
        return 2
    except Exception as error:  # a missing backbone's weights and the like: one line, not a traceback
        if type(error).__name__ != "WeightsUnavailableError":
            raise
        print(f"adlib run: error: {error}", file=sys.stderr)
        return 2
    print(_format(record))
    if args.json:
        _results().atomic_write_json(args.json, record)
        print(f"wrote {args.json}")
    return 0
