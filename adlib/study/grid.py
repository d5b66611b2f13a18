"""Fit and evaluate grids of (model, variant, seed, data) through the one engine; long-format rows.

- ``configs(setting, model, **overrides)``: the model config and ``FitConfig`` a run uses: the paper's recipe
  for (model, profile), then the setting (image size, backbone rule, epochs, seed), then the overrides.
- ``run_one(setting, sources, model, ...)``: one fit and its evaluation, the one path every fitted number
  takes (notebooks, ``adlib run``, ``adlib compare``, the benchmarks). One source (or the one-class
  setting) fits on that category; several sources in the multi-class setting fit one model on the union of
  their normal training images (no category label) and evaluate it per category. Fits (and evaluations)
  are read from the run cache on disk when it holds them (``adlib.study.runcache``).
- ``run_grid(setting, variants, sources, models, seeds, ...)``: every combination, as one long table.

Rows have the columns of ``adlib.results`` (dataset, method, setting, level, metric, value, backbone, data)
plus ``seed``, ``protocol``, ``class_setting``, ``image_size``, ``scope`` ("category"; for a multi-class
run also "mean" over its categories and "pooled" over all their images, whose ``dataset`` is the dataset's
name alone) and ``fit`` ("trained", "cache", "reused" or "weights"). ``setting`` is the variant's label.
Values are in percent for quality metrics.

Quality rows also carry the test-image evidence the claims need (``TEST_COLUMNS``): ``boot``, the metric on
each test-image resample (a float32 array in percent, in memory only: ``adlib.results.write_table`` leaves it
out of the CSV), ``chance``, what a detector that sees nothing scores on these images (percent), and
``test_id``, the identity of the test images (equal ids: the resamples are the same, the comparison paired).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from adlib.study.setting import DataSource, Setting, datasets_for

QUALITY_METRICS = ("auroc", "ap", "f1max", "aupro")
RUN_COLUMNS = ("seed", "protocol", "class_setting", "image_size", "scope")
TEST_COLUMNS = ("boot", "chance", "test_id")  # test-image evidence of quality rows (see the module docstring)


def method_name(setting: Setting, model: str) -> str:
    return setting.paper.display(model)


def recipe(setting: Setting, model: str):
    """The paper's recipe for (model, profile); a model without one gets its config defaults."""
    from adlib.study.spec import Recipe

    found = setting.paper.recipe(model, setting.profile)
    return found if found is not None else Recipe()


def model_backbone(setting: Setting, model: str, overrides: Mapping[str, Any] | None = None) -> str:
    """The backbone a run of ``model`` gets: an explicit override, else the setting's (the paper's method
    always; every model when the profile shares one backbone or the notebook set it), else the recipe's."""
    from adlib.models import config_class

    overrides = dict(overrides or {})
    if "backbone" in overrides:
        return overrides["backbone"]
    if setting.spec.shared_backbone or setting.backbone_explicit or model == setting.paper.method:
        return setting.backbone
    own = recipe(setting, model).model.get("backbone")
    return own or config_class(model)().backbone


def configs(setting: Setting, model: str, image_size: int | None = None, seed: int | None = None, **overrides: Any):
    """(model config, FitConfig) for one run, see the module docstring.

    Overrides may name model-config fields (``m=2``, ``adapter="resblock"``) or engine fields (``epochs``,
    ``lr``). A backbone other than the recipe's resets ``layers`` to that backbone's default taps unless
    ``layers`` is given.
    """
    from adlib.engine import FitConfig
    from adlib.models import config_class, model_config, typed_overrides

    base = recipe(setting, model)
    fit = base.fit or FitConfig()
    model_fields = {f.name for f in fields(config_class(model))}
    fit_fields = {f.name for f in fields(fit)}
    unknown = sorted(set(overrides) - model_fields - fit_fields)
    if unknown:
        raise ValueError(f"{model}: unknown setting(s) {unknown}; expected fields of "
                         f"{config_class(model).__name__} or FitConfig")
    model_values, fit_values = typed_overrides(model, overrides, FitConfig)  # each value of its field's type
    overrides = {**fit_values, **model_values}
    values = dict(base.model)
    backbone = model_backbone(setting, model, overrides)
    if "backbone" in model_fields:
        if backbone != values.get("backbone", config_class(model)().backbone) and "layers" in model_fields:
            values["layers"] = None
        values["backbone"] = backbone
    if "image_size" in model_fields:
        values["image_size"] = int(image_size or setting.image_size)
    run_seed = setting.seed if seed is None else int(seed)
    if "seed" in model_fields:  # a model's own randomness (a coreset's start, a projection) follows the run seed
        values["seed"] = run_seed
    values.update({k: v for k, v in overrides.items() if k in model_fields})
    engine_values = {"seed": run_seed, "progress": False}
    if setting.check is not None:  # a path check: one optimiser step per training stage, whatever the recipe
        engine_values["max_steps"] = setting.check.max_steps
    if setting.epochs is not None:
        engine_values["epochs"] = setting.epochs
    if setting.batch_size is not None:
        engine_values["batch_size"] = setting.batch_size
    engine_values.update({k: v for k, v in overrides.items() if k in fit_fields})
    return model_config(model, None, **values), replace(fit, **engine_values)


def build(setting: Setting, model: str, image_size: int | None = None, seed: int | None = None, **overrides: Any):
    """(model, FitConfig) for one run, see ``configs``; the model's initial weights follow the seed."""
    from adlib import engine
    from adlib.models import create_model

    config, fit = configs(setting, model, image_size, seed, **overrides)
    engine.seed_everything(fit.seed)
    return create_model(model, config), fit


@dataclass
class Run:
    """One fitted model and its evaluation (one category, or a multi-class group of categories)."""

    model_name: str
    method: str
    label: str  # the variant label: the table's `setting` ("default", "m=2", "res=512")
    sources: list[DataSource]
    image_size: int
    seed: int
    class_setting: str
    model: Any
    fit: Any  # adlib.engine.FitResult
    evaluations: dict[str, Any]  # protocol -> adlib.engine.EvalResult
    test: Any  # the (capped) test dataset, or {category: dataset} for a multi-class run
    train_images: int
    backbone: str
    seconds: float = 0.0
    fit_from: str = "trained"  # "trained"; "cache": read from the run cache (``adlib.study.runcache``); "weights"
    fit_config: Any = None  # the engine's FitConfig the fit used
    calibration: str = ""  # which held-out images the model was calibrated on, in words ("" when none)
    evaluation_from: str = "computed"  # or "cache"
    eval_seconds: float = 0.0  # wall seconds of the evaluation (reading the test images included)
    eval_cpu_seconds: float = 0.0  # this process's CPU seconds during the evaluation

    @property
    def source(self) -> DataSource:
        return self.sources[0]

    @property
    def evaluation(self):
        """The evaluation under the first protocol run."""
        return next(iter(self.evaluations.values()))

    def test_set(self, category: str | None = None):
        if isinstance(self.test, dict):
            return self.test[category or self.sources[0].category]
        return self.test

    @property
    def dataset_name(self) -> str:
        return self.sources[0].dataset

    @property
    def data(self) -> str:
        tests = sum(len(t) for t in self.test.values()) if isinstance(self.test, dict) else len(self.test)
        names = self.sources[0].name if len(self.sources) == 1 else \
            f"{self.dataset_name} ({len(self.sources)} categories, {self.class_setting})"
        synthetic = "synthetic, " if self.sources[0].synthetic else \
            "synthetic stand-in for a missing dataset (path check), " if self.sources[0].standin else ""
        return f"{names} ({synthetic}{self.train_images} train / {tests} test images, {self.image_size}px)"

    def rows(self, metrics: Sequence[str] = QUALITY_METRICS) -> list[dict]:
        from adlib.models.common import count_params

        base = {"method": self.method, "setting": self.label, "backbone": self.backbone, "data": self.data,
                "seed": self.seed, "class_setting": self.class_setting, "image_size": self.image_size,
                "fit": self.fit_from}
        out: list[dict] = []

        def evidence(m, level: str, metric: str) -> dict:
            boot = m.replicates.get(level, {}).get(metric)
            return {"boot": None if boot is None else (100.0 * np.asarray(boot)).astype(np.float32),
                    "chance": 100.0 * m.chance.get(level, {}).get(metric, float("nan")), "test_id": m.test_id}

        def add(dataset: str, scope: str, protocol: str, m) -> None:
            image, pixel, undefined = m.image, m.pixel, m.undefined
            row = {**base, "dataset": dataset, "scope": scope, "protocol": protocol}
            for level, values in (("pixel", pixel), ("image", image)):
                if not values and level in undefined:
                    out.extend({**row, "level": level, "metric": k, "value": float("nan"), "note": undefined[level]}
                               for k in metrics if level == "pixel" or k != "aupro")
                    continue
                out.extend({**row, "level": level, "metric": k, "value": 100.0 * values[k], **evidence(m, level, k)}
                           for k in metrics if k in values)
            if all(k in image for k in ("auroc", "ap", "f1max")) and all(k in pixel for k in QUALITY_METRICS):
                from adlib import metrics as metric_fns

                seven = [evidence(m, lv, k) for lv, keys in (("image", ("auroc", "ap", "f1max")), ("pixel", QUALITY_METRICS))
                         for k in keys]
                boots = [e["boot"] for e in seven]
                out.append({**row, "level": "summary", "metric": "mad", "value": 100.0 * metric_fns.mad(image, pixel),
                            "boot": None if any(b is None for b in boots) else np.mean(boots, axis=0),
                            "chance": float(np.mean([e["chance"] for e in seven])), "test_id": m.test_id})

        for protocol, result in self.evaluations.items():
            if result.categories:
                for category, m in result.categories.items():
                    add(f"{self.dataset_name}/{category}", "category", protocol, m)
                add(self.dataset_name, "mean", protocol, result)
                if result.pooled is not None:
                    add(self.dataset_name, "pooled", protocol, result.pooled)
            else:
                add(self.source.name, "category", protocol, result)
        where = self.source.name if len(self.sources) == 1 else self.dataset_name
        model_row = {**base, "dataset": where, "scope": "category" if len(self.sources) == 1 else "mean",
                     "protocol": "", "level": "model"}
        out += [
            {**model_row, "metric": "params_m", "value": count_params(self.model) / 1e6},
            {**model_row, "metric": "train_s", "value": float(self.fit.train_seconds)},
            {**model_row, "metric": "fps", "value": float(self.evaluation.fps)},
        ]
        return out


_CHECKED: dict[tuple, Any] = {}


def _check_split(test):
    """Fail before training on a test split that cannot be evaluated (``adlib.data.check_split``); each
    category's split is checked once per process, whatever subset of it a run uses. Returns the
    ``SplitCheck`` (None for a dataset that is not read from a folder)."""
    from adlib.data import check_split

    base = test
    while hasattr(base, "dataset") and not hasattr(base, "samples"):  # a Subset
        base = base.dataset
    if not hasattr(base, "samples"):
        return None
    key = (str(base.category_dir), base.split, base.layout.mask_threshold)
    if key not in _CHECKED:
        _CHECKED[key] = check_split(base)
    return _CHECKED[key]


def split_check(source: DataSource, image_size: int | None = None):
    """The ``SplitCheck`` of a source's test split (unreadable files and bad masks raise ``DatasetError``)."""
    from adlib.data import AnomalyDataset

    return _check_split(AnomalyDataset(source.root, source.category, "test", image_size=image_size,
                                       mask_threshold=source.mask_threshold))


def calibration_set(model, sources: Sequence[DataSource], parts: Sequence[tuple], image_size: int):
    """Held-out images for ``model.calibrate`` (``engine.fit(..., calibration=)``) when the model names the
    split it expects through ``calibration_split()``: "train" or "test" (the run's own, capped, datasets), or
    another split folder of the layout (MVTec LOCO's "validation"), read per source; None for a model without
    the hook. A layout without that split raises ``DatasetError`` (``calibration_plan`` then holds out part of
    the training images)."""
    from torch.utils.data import ConcatDataset

    from adlib.data import AnomalyDataset

    hook = getattr(model, "calibration_split", None)
    if not callable(hook):
        return None
    split = hook()
    if split is None:  # the model's configuration needs no calibration
        return None
    if split in ("train", "test"):
        sets = [part[0 if split == "train" else 1] for part in parts]
    else:
        sets = [AnomalyDataset(s.root, s.category, split, image_size=image_size) for s in sources]
    return sets[0] if len(sets) == 1 else ConcatDataset(sets)


HELD_OUT_FRACTION = 0.1  # of train/good, when a model's calibration split is missing
HELD_OUT_MIN = 2  # a standardisation needs a spread


def calibration_plan(model, sources: Sequence[DataSource], parts: Sequence[tuple], setting: Setting,
                     image_size: int) -> tuple[list[tuple], Any, str]:
    """(parts, calibration images, what they are in words) for a run: ``calibration_set`` when the data has
    the split the model names; else, for a split other than train/test, a held-out part of each source's
    train/good (every tenth image, at least two, spread evenly and set aside before the training cap), which
    the model then does not train on. ValueError when too few training images remain to hold any out."""
    from torch.utils.data import ConcatDataset, Subset

    from adlib.data import AnomalyDataset, DatasetError
    from adlib.study.setting import spread

    hook = getattr(model, "calibration_split", None)
    split = hook() if callable(hook) else None
    if split is None:  # no hook, or a configuration that needs no calibration
        return list(parts), None, ""
    try:
        calibration = calibration_set(model, sources, parts, image_size)
        what = {"train": "the training images", "test": "the test images"}.get(split, f"the {split} split")
        return list(parts), calibration, f"{what} ({len(calibration)} normal images)" if split != "test" else \
            f"{what} ({len(calibration)} images, the released code's test-set statistics)"
    except DatasetError:
        if split in ("train", "test"):
            raise
    new_parts, held = [], []
    for source, (_, test) in zip(sources, parts):
        full = AnomalyDataset(source.root, source.category, "train", image_size=image_size)
        k = max(HELD_OUT_MIN, math.ceil(HELD_OUT_FRACTION * len(full)))
        if len(full) - k < 1:
            raise ValueError(f"{model.name} calibrates on held-out normal images: {source.name} has no {split} "
                             f"split and only {len(full)} training image(s), too few to hold {k} out")
        out = set(spread(len(full), k))
        rest = [i for i in range(len(full)) if i not in out]
        new_parts.append((Subset(full, [rest[j] for j in spread(len(rest), setting.max_train)]), test))
        held.append(Subset(full, sorted(out)))
    calibration = held[0] if len(held) == 1 else ConcatDataset(held)
    total = sum(len(p[0].dataset) for p in new_parts)
    return new_parts, calibration, (f"held out from train/good: {len(calibration)} of {total} normal images "
                                    f"(the data has no {split} split)")


def load_weights(setting: Setting, model: str, path: str, weights_format: str, seed: int,
                 overrides: Mapping[str, Any]):
    """(model, FitConfig) for a run that evaluates a checkpoint instead of fitting: ``weights_format`` "authors"
    (the authors' key names, ``adlib.models.authors.load``; model-config overrides become its config) or
    "adlib" (``engine.save_checkpoint``'s files, which hold their config)."""
    from adlib import engine
    from adlib.models import config_class

    model_fields = {f.name for f in fields(config_class(model))}
    chosen = {k: v for k, v in overrides.items() if k in model_fields}
    if weights_format == "authors":
        from adlib.models import authors

        net = authors.load(model, path, **chosen)
    elif weights_format == "adlib":
        net, _ = engine.load_checkpoint(path)
        if net.name != model:
            raise ValueError(f"weights {path} hold a {net.name!r} model, not {model!r}")
        differ = [k for k, v in chosen.items() if k != "seed" and getattr(net.config, k) != v]
        if differ:
            raise ValueError(f"weights {path}: the checkpoint holds its own config; {differ} differ from it")
    else:
        raise ValueError(f"weights_format={weights_format!r}: expected 'adlib' or 'authors'")
    size = getattr(net.config, "image_size", None)
    fit_overrides = {k: v for k, v in overrides.items() if k not in model_fields}
    _, fit = configs(setting, model, image_size=size, seed=seed, **fit_overrides)
    net.eval()
    return net, fit


def run_one(setting: Setting, sources: DataSource | Sequence[DataSource], model: str | None = None,
            label: str = "default", seed: int | None = None, class_setting: str | None = None,
            protocols: Sequence[str] | None = None, keep_maps: int = 0, callback=None, cache: bool | None = None,
            weights: str | None = None, weights_format: str = "adlib", **overrides: Any) -> Run:
    """Fit on the sources' (capped) normal training images and evaluate on their (capped) test images.

    One-class: one source. Multi-class: several sources of one dataset, one model for all of them (a group
    of one source is a one-class run). A model that calibrates on held-out normal images gets them from
    ``calibration_plan``. The fit is read from the run cache (``adlib.study.runcache``) when it holds it:
    ``cache`` True/False forces it on/off (None: ``$ADLIB_RUN_CACHE``); a run with a per-epoch ``callback``
    is always trained. ``weights`` (a file) evaluates a checkpoint instead of fitting (``load_weights``).
    ``Run.fit_from`` says which happened."""
    from torch.utils.data import ConcatDataset

    from adlib import engine
    from adlib.study import runcache

    model = model or setting.paper.method
    sources = [sources] if isinstance(sources, DataSource) else list(sources)
    if not sources:
        raise ValueError("run_one: no data source given")
    class_setting = class_setting or setting.class_setting
    if class_setting == "one-class" and len(sources) > 1:
        raise ValueError(f"run_one: the one-class setting fits one category at a time, got {len(sources)} sources")
    if len(sources) == 1:
        # a "multi-class" group of one category (e.g. a dataset of which only one category is on disk) fits a
        # one-category model: the rows say so, and the tables do not pair it with a paper's multi-class number
        class_setting = "one-class"
    protocols = list(protocols or [setting.protocol])
    seed = setting.seed if seed is None else int(seed)
    start = time.perf_counter()
    net = None
    if weights is not None:
        net, fit_config = load_weights(setting, model, weights, weights_format, seed, overrides)
        overrides.pop("image_size", None)
    size = int(getattr(getattr(net, "config", None), "image_size", None) or overrides.pop("image_size", None)
               or setting.image_size)
    parts = [datasets_for(s, setting, size) for s in sources]
    for _, test in parts:
        _check_split(test)
    if net is None:
        net, fit_config = build(setting, model, image_size=size, seed=seed, **overrides)
    parts, calibration, calibration_note = calibration_plan(net, sources, parts, setting, size)
    train = parts[0][0] if len(parts) == 1 else ConcatDataset([p[0] for p in parts])
    test = parts[0][1] if len(parts) == 1 else {s.category: p[1] for s, p in zip(sources, parts)}
    if setting.check is not None and weights is None and 0 < len(train) < fit_config.batch_size:
        # a path check's few training images: a larger batch is a batch of all of them, so runs that differ only
        # in the batch size (another notebook's recipe) are one computation and share one fit (the run cache)
        fit_config = replace(fit_config, batch_size=len(train))
    batch = setting.batch_size or fit_config.batch_size
    timing: dict[str, float] = {}

    def evaluate():
        wall, cpu = time.perf_counter(), time.process_time()
        out = engine.evaluate_protocols(net, test, protocols, batch_size=batch, device=setting.device,
                                        progress=False, keep_maps=keep_maps)
        timing.update(wall=time.perf_counter() - wall, cpu=time.process_time() - cpu)
        return out

    if weights is not None:
        fitted, fit_from = engine.FitResult(), "weights"
        if calibration is not None:
            engine.calibrate(net, calibration, fit_config, setting.device)
        evaluations, evaluation_from = evaluate(), "computed"
    else:
        reason = "a per-epoch callback watches the training" if callback is not None else ""
        with runcache.entry(net, fit_config, train, calibration, setting.device, cache, reason) as stored:
            found = stored.read_fit(net)
            fitted, fit_from = (engine.FitResult(**found) if found is not None else None), "cache"
            if fitted is None:
                fitted, fit_from = engine.fit(net, train, fit_config, device=setting.device, callback=callback,
                                              calibration=calibration), "trained"
                stored.write_fit(net, fitted)
            elif fit_config.checkpoint:  # what the engine would have written after training
                engine.save_checkpoint(net, fit_config.checkpoint, epoch=fitted.epochs)
            key = runcache.eval_key(stored.key, test, protocols, keep_maps, batch) if stored.active else None
            evaluations, evaluation_from = stored.read_evaluations(key), "cache"
            if evaluations is None:
                evaluations, evaluation_from = evaluate(), "computed"
                stored.write_evaluations(key, evaluations)
    backbone = getattr(net.config, "backbone", "")
    label_backbone = setting.backbone_label(backbone) if model == setting.paper.method or backbone == setting.backbone \
        or setting.check is not None else backbone
    return Run(model, method_name(setting, model), label, sources, size, seed, class_setting, net, fitted,
               evaluations, test, 0 if weights is not None else len(train), label_backbone,
               time.perf_counter() - start, fit_from=fit_from, fit_config=fit_config, calibration=calibration_note,
               evaluation_from=evaluation_from, eval_seconds=timing.get("wall", 0.0),
               eval_cpu_seconds=timing.get("cpu", 0.0))


def try_run(setting: Setting, sources: DataSource | Sequence[DataSource], model: str | None = None,
            **kwargs: Any) -> tuple[Run | None, str]:
    """``run_one``, or (None, why) when it cannot be run here: no data source (the reasons of the missing
    datasets), weights that cannot be had, a setting the model refuses. For notebooks that show one run
    (walkthroughs): their figures then say why instead of failing."""
    given = [sources] if isinstance(sources, DataSource) else list(sources)
    if not given:
        missing = list(getattr(sources, "missing", [])) or setting.missing_sources()
        return None, "; ".join(m.reason for m in missing) or "no data source given"
    try:
        return run_one(setting, sources, model, **kwargs), ""
    except (ValueError, _weights_error()) as error:
        if "unknown setting" in str(error):
            raise
        return None, f"cannot be run in this setting: {error}"


def _groups(sources: Sequence[DataSource], class_setting: str) -> list[list[DataSource]]:
    if class_setting == "one-class":
        return [[s] for s in sources]
    by_dataset: dict[Any, list[DataSource]] = {}
    for s in sources:
        by_dataset.setdefault((s.dataset, str(s.root)), []).append(s)
    return list(by_dataset.values())


def _weights_error() -> type:
    from adlib.backbones import WeightsUnavailableError

    return WeightsUnavailableError


def not_run_rows(setting: Setting, model: str, label: str, group: Sequence[DataSource], seed: int,
                 class_setting: str, protocols: Sequence[str], reason: str, overrides: Mapping[str, Any],
                 metrics: Sequence[str] = QUALITY_METRICS) -> list[dict]:
    """NaN rows with the reason in ``note``, for a variant that was not (or could not be) run."""
    backbone = model_backbone(setting, model, overrides)
    where = group[0].name if len(group) == 1 else group[0].dataset
    size = int(overrides.get("image_size") or setting.image_size)
    return [{"dataset": where, "method": method_name(setting, model), "setting": label, "level": level,
             "metric": m, "value": float("nan"), "backbone": backbone, "data": where, "seed": seed,
             "protocol": p, "class_setting": class_setting, "image_size": size,
             "scope": "category" if len(group) == 1 else "mean", "note": reason}
            for p in protocols for level, m in _levels(metrics)]


def _levels(metrics: Sequence[str]) -> list[tuple[str, str]]:
    """(level, metric) of the rows a run would have written: every metric at pixel level, all but AU-PRO at
    image level, and mAD when all seven are there."""
    summary = [("summary", "mad")] if set(QUALITY_METRICS) <= set(metrics) else []  # the mean of the seven
    return [("pixel", m) for m in metrics] + [("image", m) for m in metrics if m != "aupro"] + summary


# A path check runs every (model, variant) of a grid on the first data source (group) and every other source once
# per check run, with the first grid that reaches it (its first model and variant): every model's and variant's code
# and every dataset's reader run, the grid's repetition does not.
COVERING = ("path check: every model and variant runs on the grid's first data source, and every data source once "
            "per check run with the first model and variant that reach it; this combination is left out to fit the "
            "CPU budget (a real run has it)")
# and, on a CPU, a variant whose values differ from an earlier one's only in numbers, or in a backbone of the same
# kind (a ViT for a ViT, a CNN for a CNN: the same extractor code with other sizes; in a check their weights are
# random anyway), runs the same code: one of them runs (the default configuration, else the first; a GPU check runs
# them all)
SAME_CODE = ("path check on a CPU: the same code as variant {label} with other numbers or another backbone of the "
             "same kind; left out to fit the CPU budget (the GPU check, benchmarks/gpu_check.py, and a real run have "
             "it)")
# and a variant whose option combines others ("lora+resblock", "zigzag+hilbert") runs the code of the variants that
# ran each part
COMBINED = ("path check on a CPU: combines options that ran as variants {labels}, through the same code; left out "
            "to fit the CPU budget (the GPU check, benchmarks/gpu_check.py, and a real run have it)")
# and, in the one-class setting, one category per dataset: the others are read and fitted through the same code
ONE_CATEGORY = ("path check: one category per dataset runs in the one-class setting (the others go through the same "
                "reader and code); left out to fit the CPU budget (a real run has it)")


def _code_signature(overrides: Mapping[str, Any]) -> tuple:
    """What of a variant's overrides selects code: the names, and every value that is not a number or a sequence
    of numbers (strings, flags, None); of a backbone, its kind ("vit", "cnn")."""
    from adlib import backbones

    def kind(value, key=""):
        if key == "backbone" and isinstance(value, str) and value in backbones.SPECS:
            return f"<{backbones.SPECS[value].kind} backbone>"
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return value
        if isinstance(value, (int, float)):
            return "<number>"
        if isinstance(value, (tuple, list)):
            return "<sequence>"
        if isinstance(value, Mapping):
            return _code_signature(value)
        return repr(value)

    return tuple(sorted((key, kind(value, key)) for key, value in overrides.items()))


def _resolved(setting: Setting, model: str, overrides: Mapping[str, Any], keys) -> dict[str, Any]:
    """The values a run of ``model`` gets for ``keys`` under these overrides: the resolved model or engine
    config's, so that a default variant ({}) is compared with the others on the same fields."""
    try:
        model_config, fit_config = configs(setting, model, **dict(overrides))
    except Exception:  # a variant that cannot be built here: compare its overrides as given
        return dict(overrides)
    out = {}
    for key in keys:
        owner = next((c for c in (model_config, fit_config) if hasattr(c, key)), None)
        out[key] = getattr(owner, key) if owner is not None else overrides.get(key)
    return out


def same_code_as(setting: Setting, variants: Mapping[str, Mapping[str, Any]],
                 model: str | None = None) -> dict[str, str]:
    """On a CPU path check: label -> why the variant is left out: it runs the same code as another variant of
    ``model`` (``SAME_CODE``) or combines options that other variants ran (``COMBINED``). Of variants that run the
    same code, the one with the default configuration runs (other notebooks run it too: often a run-cache hit),
    else the first. Empty elsewhere."""
    if setting.check is None or not str(setting.device).startswith("cpu"):
        return {}
    model = model or setting.paper.method
    keys = list(dict.fromkeys(key for overrides in variants.values() for key in overrides))
    resolved = {label: _resolved(setting, model, overrides, keys) for label, overrides in variants.items()}
    default = _resolved(setting, model, {}, keys)
    runs: dict[tuple, str] = {}  # code signature -> the variant that runs it
    for label, values in resolved.items():
        runs.setdefault(_code_signature(values), label)
    default_label = next((label for label, values in resolved.items() if values == default), None)
    if default_label is not None:
        runs[_code_signature(default)] = default_label
    out = {}
    for label, values in resolved.items():
        signature = _code_signature(values)
        if runs[signature] != label:
            out[label] = SAME_CODE.format(label=runs[signature])
            continue
        parts = _combined_from(values, runs)
        if parts:
            out[label] = COMBINED.format(labels=", ".join(parts))
    return out


def _combined_from(values: Mapping[str, Any], ran: Mapping[tuple, str]) -> list[str] | None:
    """The variants that ran each part of ``values``' combined options ("a+b"), the rest the same code; None
    when there is no combined option or a part has not run."""
    combined = [key for key, value in values.items() if isinstance(value, str) and "+" in value]
    if not combined:
        return None
    labels = []
    for key in combined:
        for part in values[key].split("+"):
            label = ran.get(_code_signature({**values, key: part}))
            if label is None:
                return None
            labels.append(label)
    return list(dict.fromkeys(labels))


# (model, data source names) a path check has fitted: a later grid's first variant need not read and fit the same
# source again (its reader and the model's code on it have run). Kept in this process and, for the notebooks of one
# `adlib reproduce --check` run (which empties it first), in CHECK_FITTED_FILE under the check's results folder.
CHECK_FITTED_FILE = ".check-fitted.json"
_CHECK_FITTED: set[tuple[str, tuple[str, ...]]] = set()


def _fitted_file(setting: Setting):
    from adlib import results

    return results.output_root(setting.output_root) / "results" / setting.profile / CHECK_FITTED_FILE


def _check_fitted(setting: Setting) -> set[tuple[str, tuple[str, ...]]]:
    import json

    try:
        entries = json.loads(_fitted_file(setting).read_text())
    except (OSError, ValueError):
        entries = []
    return _CHECK_FITTED | {(model, tuple(names)) for model, names in entries}


def _note_fitted(setting: Setting, fitted: tuple[str, tuple[str, ...]]) -> None:
    from adlib import io

    _CHECK_FITTED.add(fitted)
    try:
        io.atomic_write_json(_fitted_file(setting), sorted([m, list(n)] for m, n in _check_fitted(setting)))
    except OSError:  # an unwritable output folder: the process-wide memory still holds it
        pass


def _check_read(setting: Setting) -> set[str]:
    """The data sources some fit of this check run has read, alone or in a multi-class group."""
    return {name for _, names in _check_fitted(setting) for name in names}


def _check_cut(setting: Setting, index: int, first_of_dataset: list[bool], first: bool,
               names: tuple[str, ...]) -> str | None:
    """Why a path check leaves (model and variant, group ``index``) out (``ONE_CATEGORY``, ``COVERING``), or
    None; ``first``: the grid's first model and variant."""
    if setting.check is None:
        return None
    if not first_of_dataset[index]:
        return ONE_CATEGORY
    if index > 0 and (not first or set(names) <= _check_read(setting)):
        return COVERING
    return None


def _absent(setting: Setting, models, variants, seeds, class_setting, protocols, missing, metrics, log) -> pd.DataFrame:
    """Not-run rows for a grid given no data source: one set per missing dataset (its reason) or, with none
    named, one saying that no data source was given."""
    from adlib.study.setting import MissingData

    missing = missing or [MissingData("", "no data", "no data source given: the notebook selected none "
                                                     "(see the setting's description for what is here)")]
    rows = []
    for item in missing:
        log(f"not run on {item.dataset}: {item.reason}")
        for model in models:
            for label, overrides in variants.items():
                backbone = model_backbone(setting, model, overrides)
                size = int(overrides.get("image_size") or setting.image_size)
                rows += [{"dataset": item.dataset, "method": method_name(setting, model), "setting": label,
                          "level": level, "metric": m, "value": float("nan"), "backbone": backbone,
                          "data": item.dataset, "seed": seed, "protocol": p, "class_setting": class_setting,
                          "image_size": size, "scope": "mean", "note": f"not run: {item.reason}"}
                         for seed in seeds for p in protocols for level, m in _levels(metrics)]
    return pd.DataFrame(rows)


def run_grid(setting: Setting, variants: Mapping[str, Mapping[str, Any]] | None = None,
             sources: Sequence[DataSource] | None = None, models: Sequence[str] | None = None,
             seeds: Sequence[int] | None = None, class_setting: str | None = None,
             protocols: Sequence[str] | None = None, skip: Mapping[str, str] | None = None,
             keep: dict | None = None, cache: dict | None = None, metrics: Sequence[str] = QUALITY_METRICS,
             keep_maps: int = 0, log=print, fit_cache: bool | None = None) -> pd.DataFrame:
    """Fit and evaluate every (model, variant, seed, source group); one long table (see the module docstring).

    ``variants`` maps a label (the table's ``setting``, e.g. "m=2") to overrides for ``configs`` (model or
    engine fields, or ``image_size``); default ``{"default": {}}``. ``seeds`` default to ``(setting.seed,)``:
    pass ``setting.seeds`` for a claim. ``skip`` maps labels to a reason: those variants are recorded as rows
    with NaN values and the reason in ``note``, as is a variant that cannot be built here (an m too large for
    the token grid, weights that cannot be had). ``keep`` (a dict) receives the ``Run`` objects keyed by
    (model, label, group name, seed); ``cache`` (a dict) lets a notebook reuse the rows of the same resolved
    configuration under another label (their ``fit`` column says "reused"). Fits are shared across notebooks
    and commands by the run cache on disk anyway (``adlib.study.runcache``): the ``fit`` column says whether
    each was "trained" or read from the "cache" (``fit_cache``: ``run_one``'s ``cache``). Given no data source
    (the data is not here), every row is not run, with the reason of each missing dataset
    (``Setting.real_sources(...).missing``). In a path check, ``COVERING``.
    """
    variants = dict(variants or {"default": {}})
    given = sources if sources is not None else setting.sources()
    sources = list(given)
    models = list(models or [setting.paper.method])
    seeds = list(seeds if seeds is not None else [setting.seed])
    class_setting = class_setting or setting.class_setting
    protocols = list(protocols or [setting.protocol])
    skip = dict(skip or {})
    if not sources:
        missing = list(getattr(given, "missing", [])) or setting.missing_sources()
        return _absent(setting, models, variants, seeds, class_setting, protocols, missing, metrics, log)
    rows: list[dict] = []
    groups = _groups(sources, class_setting)
    same_code = {model: same_code_as(setting, variants, model) for model in models}
    # the first variant that runs (a CPU check may leave out the grid's first as the same code as another)
    first_variant = next((label for label in variants if label not in same_code[models[0]]), next(iter(variants)))
    seen: set = set()
    first_of_dataset = []  # per group: the first group of its dataset (path checks run only those one-class)
    for group in groups:
        first_of_dataset.append((group[0].dataset, str(group[0].root)) not in seen)
        seen.add((group[0].dataset, str(group[0].root)))
    for model in models:
        method = method_name(setting, model)
        for label, overrides in variants.items():
            for seed in seeds:
                for index, group in enumerate(groups):
                    name = group[0].name if len(group) == 1 else f"{group[0].dataset} ({len(group)} categories)"
                    try:  # the same resolved configuration under another label is fitted once
                        resolved = repr(configs(setting, model, seed=seed, **dict(overrides)))
                    except ValueError as error:
                        if "unknown setting" in str(error):
                            raise
                        resolved = label
                    key = (model, tuple(s.name for s in group), seed, class_setting, tuple(protocols), resolved)
                    if cache is not None and key in cache and label not in skip:
                        rows += [{**row, "setting": label, "fit": "reused"} for row in cache[key]]
                        log(f"{method:9s} {label:18s} seed {seed} {name}: same configuration as an earlier run, reused")
                        continue
                    fitted = (model, tuple(s.name for s in group))
                    reason = skip.get(label) or _check_cut(setting, index, first_of_dataset,
                                                           label == first_variant and model == models[0], fitted[1])
                    if reason is None and label in same_code[model]:
                        reason = same_code[model][label]
                    run = None
                    if reason is None:
                        try:
                            run = run_one(setting, group, model, label, seed=seed, class_setting=class_setting,
                                          protocols=protocols, keep_maps=keep_maps, cache=fit_cache,
                                          **dict(overrides))
                        except (ValueError, _weights_error()) as error:
                            if "unknown setting" in str(error):
                                raise
                            reason = f"cannot be run in this setting: {error}"
                    if run is None:
                        short = reason if len(reason) <= 160 else reason[:157] + "..."
                        log(f"{method:9s} {label:18s} seed {seed} {name}: not run ({short})")
                        new = not_run_rows(setting, model, label, group, seed, class_setting, protocols, reason,
                                           overrides, metrics)
                    else:
                        new = run.rows(metrics)
                        evaluation = run.evaluation
                        pixel, image = evaluation.pixel, evaluation.image
                        log(f"{method:9s} {label:18s} seed {seed} {name}: pixel AUROC {100 * pixel.get('auroc', float('nan')):.1f} "
                            f"max-F1 {100 * pixel.get('f1max', float('nan')):.1f} | image AUROC "
                            f"{100 * image.get('auroc', float('nan')):.1f} ({run.seconds:.0f}s"
                            f"{', fit read from the run cache' if run.fit_from == 'cache' else ''})")
                        if keep is not None:
                            keep[(model, label, name, seed)] = run
                        if setting.check is not None:
                            _note_fitted(setting, fitted)
                    if cache is not None and run is not None:
                        cache[key] = new
                    rows += new
    table = pd.DataFrame(rows)
    if "note" not in table.columns:
        table["note"] = ""
    table["note"] = table["note"].fillna("")
    return table
