"""`python -m adlib reproduce --profile paper --plan`: what each notebook needs, before anything runs.

Per notebook: the datasets it reads (present here, with how many of the paper's categories; or missing, with
where they were looked for and how to get them), the pretrained weights its models need (here, downloadable,
or missing with how to get them), and an estimate of the GPU hours it takes, from the paper's own training
times (``PaperSpec.train_times``, each citing where the paper states it) and what the notebook fits
(``PaperSpec.notebook_runs``); "not stated" where the paper gives no time. Nothing is generated or downloaded.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from adlib.app.notebooks import notebook_metadata


def _real_root(data_root: str | None) -> Path | None:
    if data_root is not None:
        root = Path(data_root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"--data-root {data_root}: not a folder; expected a folder holding dataset "
                                    "folders such as mvtec_ad/")
        return root
    env = os.environ.get("ADLIB_DATA")
    return Path(env).expanduser() if env and Path(env).expanduser().is_dir() else None


def dataset_status(folder: str, root: Path | None, check: bool = False) -> tuple[bool, str]:
    """(present, one line): a dataset folder under the data root, with its categories, or why it is missing."""
    from adlib.data import DatasetError, list_categories
    from adlib.data.standins import info, standin_folders

    data = info(folder)
    if root is not None and (root / folder).is_dir():
        try:
            found = list_categories(root / folder)
        except DatasetError as error:
            return False, f"{data.name}: {root / folder} is not readable: {error}"
        of = f" of the paper's {data.paper_categories}" if data.paper_categories else ""
        reader = "" if data.readable else " (adlib has no reader for its layout yet: its rows stay not run)"
        return data.readable, f"{data.name}: here, {len(found)}{of} categories ({', '.join(found[:6])}" \
                     f"{', ...' if len(found) > 6 else ''}) in {root / folder}{reader}"
    where = f"no {folder}/ under {root}" if root is not None else "no data root (set ADLIB_DATA or --data-root)"
    standin = " — the path check stands in a tiny synthetic copy in its layout" \
        if check and folder in standin_folders() else ""
    reader = "" if data.readable else "; adlib has no reader for its layout yet"
    return False, f"{data.name}: MISSING ({where}); get it: {data.how_to_get(root)}{reader}{standin}"


def weights_status(name: str, notes: dict[str, str]) -> tuple[bool, str, str]:
    """(available, one line, how to get them) for a backbone's pretrained weights; a name adlib.backbones does
    not know (the PDN of LADMIM) is explained by its recipe's note."""
    from adlib import backbones

    if name not in backbones.SPECS:
        note = notes.get("weights") or f"{name} is built by its model, not by adlib.backbones"
        return False, f"{name}: MISSING unless given: {note}", note
    ok, text, how = backbones.weights_status(name)
    return ok, f"{name}: {'here, ' + text if ok else 'MISSING: ' + text}", how


def _variants(runs, profile_spec) -> int:
    count = 0
    for item in runs.variants:
        if isinstance(item, int):
            count += item
        else:
            grid = profile_spec.grids.get(item, ())
            count += len(grid)
    return max(count, 1)


def _backbone(paper, profile_spec, model: str, profile: str) -> str | None:
    if model == paper.method or profile_spec.shared_backbone:
        return profile_spec.backbone
    recipe = paper.recipe(model, profile)
    if recipe is not None and recipe.model.get("backbone"):
        return recipe.model["backbone"]
    from adlib.models import config_class

    return getattr(config_class(model)(), "backbone", None)


def estimate(paper, runs, profile_spec, folders: Iterable[str]) -> str:
    """GPU hours of one notebook from the paper's training times, in words."""
    from adlib.data.standins import info

    folders = list(folders)
    if not runs.models:
        return "no training"
    if not folders:
        return "synthetic data only: the paper's training times do not apply (small)"
    variants = _variants(runs, profile_spec)
    seeds = len(profile_spec.seeds) if runs.seeds else 1
    parts, total, unstated = [], 0.0, []
    for model in runs.models:
        time = runs.train_time or paper.train_times.get(model)
        if time is None or time.hours is None:
            unstated.append(f"{model} ({time.note if time is not None else 'not declared'})")
            continue
        counts = [info(f).paper_categories for f in folders] if time.per == "category" else [1] * len(folders)
        if None in counts:
            unstated.append(f"{model} (the number of categories of {', '.join(folders)} is not known)")
            continue
        units = sum(counts)
        fits = variants * seeds * units
        hours = fits * time.hours
        total += hours
        parts.append(f"{model}: {variants} variant(s) x {seeds} seed(s) x {units} {time.per}(ies) = {fits} fits x "
                     f"{time.hours:.3g} h = {hours:.1f} h on {time.hardware} ({time.where})")
    text = "; ".join(parts)
    if unstated:
        text += ("; " if text else "") + "not stated for " + ", ".join(unstated)
    return f"about {total:.1f} GPU hours ({text})" if parts else text


def plan_text(notebooks: list[Path], profile: str, data_root: str | None = None, check: bool = False) -> str:
    """The plan of ``notebooks`` in ``profile`` (see the module docstring)."""
    from adlib import papers
    from adlib.data.standins import info
    from adlib.study.spec import CHECK_SUFFIX

    root = _real_root(data_root)
    run_profile = profile + CHECK_SUFFIX if check else profile
    lines = [f"adlib reproduce --plan: profile {run_profile}, data root {root or '(none: set ADLIB_DATA or --data-root)'}",
             "GPU hours are estimates from each paper's own training times for its full datasets at its settings; "
             "the smoke profile and the path check run on a CPU (minutes per notebook).", ""]
    missing_data: dict[str, str] = {}
    missing_weights: dict[str, str] = {}
    hours_by_paper: dict[str, float] = {}
    weight_cache: dict[str, tuple[bool, str]] = {}
    for path in notebooks:
        name = path.parent.name
        title, _ = notebook_metadata(path, run_profile)
        lines.append(f"{name}/{path.stem} — {title}")
        try:
            paper = papers.get(name)
            profile_spec = paper.profile(profile)
        except ValueError as error:
            lines += [f"  no paper spec: {error}", ""]
            continue
        runs = paper.notebook_runs.get(path.stem)
        if runs is None:
            lines += [f"  not declared in adlib/papers/{name}.py (notebook_runs): needs unknown", ""]
            continue
        folders = list(runs.datasets if runs.datasets is not None else profile_spec.real_datasets)
        lines.append(f"  synthetic data: {', '.join(profile_spec.synthetic)} (generated here on first use)")
        for folder in folders:
            present, text = dataset_status(folder, root, check)
            lines.append(f"  data: {text}")
            if not present:
                missing_data[folder] = info(folder).layout
        notes = {}
        names: list[str] = []
        for model in runs.models:
            backbone = _backbone(paper, profile_spec, model, profile)
            recipe = paper.recipe(model, profile)
            if backbone:
                names.append(backbone)
                notes.update(recipe.notes if recipe is not None else {})
        names += list(runs.weights)
        for backbone in dict.fromkeys(names):
            if backbone not in weight_cache:
                weight_cache[backbone] = weights_status(backbone, notes)
            ok, text, how = weight_cache[backbone]
            lines.append(f"  weights: {text}" + ("" if ok or not check else " — the path check uses random weights"))
            if not ok:
                missing_weights[backbone] = how
        text = estimate(paper, runs, profile_spec, folders)
        lines.append(f"  GPU time: {text}" + (f" — {runs.note}" if runs.note else ""))
        if text.startswith("about "):
            hours_by_paper[name] = hours_by_paper.get(name, 0.0) + float(text.split()[1])
        lines.append("")
    if hours_by_paper:
        lines.append("estimated GPU hours per paper (notebooks with stated times only): "
                     + ", ".join(f"{k} {v:.1f} h" for k, v in hours_by_paper.items()))
    if missing_data:
        lines.append("missing datasets (rows that need them are written as not run, with the reason):")
        lines += [f"  {info(f).name} ({f}/): expected {layout}" for f, layout in missing_data.items()]
    if missing_weights:
        lines.append("missing weights (rows that need them are written as not run, with how to get them):")
        lines += [f"  {name}: {how}" for name, how in missing_weights.items()]
    return "\n".join(lines)
