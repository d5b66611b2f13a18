"""Fit and evaluate grids of (model, variant, seed, data) through the one engine; long-format rows.

- ``configs(setting, model, **overrides)``: the model config and ``FitConfig`` a run uses: the paper's recipe
  for (model, profile), then the setting (image size, backbone rule, epochs, seed), then the overrides.
- ``run_one(setting, sources, model, ...)``: one fit and its evaluation. One source (or the one-class
  setting) fits on that category; several sources in the multi-class setting fit one model on the union of
  their normal training images (no category label) and evaluate it per category.
- ``run_grid(setting, variants, sources, models, seeds, ...)``: every combination, as one long table.

Rows have the columns of ``adlib.results`` (dataset, method, setting, level, metric, value, backbone, data)
plus ``seed``, ``protocol``, ``class_setting``, ``image_size`` and ``scope`` ("category"; for a multi-class
run also "mean" over its categories and "pooled" over all their images, whose ``dataset`` is the dataset's
name alone). ``setting`` is the variant's label. Values are in percent for quality metrics.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping, Sequence

import pandas as pd

from adlib.study.setting import DataSource, Setting, datasets_for

QUALITY_METRICS = ("auroc", "ap", "f1max", "aupro")
RUN_COLUMNS = ("seed", "protocol", "class_setting", "image_size", "scope")


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
    from adlib.models import config_class, model_config

    base = recipe(setting, model)
    fit = base.fit or FitConfig()
    model_fields = {f.name for f in fields(config_class(model))}
    fit_fields = {f.name for f in fields(fit)}
    unknown = sorted(set(overrides) - model_fields - fit_fields)
    if unknown:
        raise ValueError(f"{model}: unknown setting(s) {unknown}; expected fields of "
                         f"{config_class(model).__name__} or FitConfig")
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
        synthetic = "synthetic, " if self.sources[0].synthetic else ""
        return f"{names} ({synthetic}{self.train_images} train / {tests} test images, {self.image_size}px)"

    def rows(self, metrics: Sequence[str] = QUALITY_METRICS) -> list[dict]:
        from adlib.models.common import count_params

        base = {"method": self.method, "setting": self.label, "backbone": self.backbone, "data": self.data,
                "seed": self.seed, "class_setting": self.class_setting, "image_size": self.image_size}
        out: list[dict] = []

        def add(dataset: str, scope: str, protocol: str, image: dict, pixel: dict, undefined: dict) -> None:
            row = {**base, "dataset": dataset, "scope": scope, "protocol": protocol}
            for level, values in (("pixel", pixel), ("image", image)):
                if not values and level in undefined:
                    out.extend({**row, "level": level, "metric": m, "value": float("nan"), "note": undefined[level]}
                               for m in metrics if level == "pixel" or m != "aupro")
                    continue
                out.extend({**row, "level": level, "metric": m, "value": 100.0 * values[m]} for m in metrics if m in values)
            if all(k in image for k in ("auroc", "ap", "f1max")) and all(k in pixel for k in QUALITY_METRICS):
                from adlib import metrics as metric_fns

                out.append({**row, "level": "summary", "metric": "mad", "value": 100.0 * metric_fns.mad(image, pixel)})

        for protocol, result in self.evaluations.items():
            if result.categories:
                for category, m in result.categories.items():
                    add(f"{self.dataset_name}/{category}", "category", protocol, m.image, m.pixel, m.undefined)
                add(self.dataset_name, "mean", protocol, result.image, result.pixel, result.undefined)
                if result.pooled is not None:
                    add(self.dataset_name, "pooled", protocol, result.pooled.image, result.pooled.pixel,
                        result.pooled.undefined)
            else:
                add(self.source.name, "category", protocol, result.image, result.pixel, result.undefined)
        where = self.source.name if len(self.sources) == 1 else self.dataset_name
        model_row = {**base, "dataset": where, "scope": "category" if len(self.sources) == 1 else "mean",
                     "protocol": "", "level": "model"}
        out += [
            {**model_row, "metric": "params_m", "value": count_params(self.model) / 1e6},
            {**model_row, "metric": "train_s", "value": float(self.fit.train_seconds)},
            {**model_row, "metric": "fps", "value": float(self.evaluation.fps)},
        ]
        return out


_CHECKED: set[tuple[str, str]] = set()


def _check_split(test) -> None:
    """Fail before training on a test split that cannot be evaluated (``adlib.data.check_split``); each
    category's split is checked once per process, whatever subset of it a run uses."""
    from adlib.data import check_split

    base = test
    while hasattr(base, "dataset") and not hasattr(base, "samples"):  # a Subset
        base = base.dataset
    if not hasattr(base, "samples"):
        return
    key = (str(base.category_dir), base.split)
    if key not in _CHECKED:
        check_split(base)
        _CHECKED.add(key)


def calibration_set(model, sources: Sequence[DataSource], parts: Sequence[tuple], image_size: int):
    """Held-out images for ``model.calibrate`` (``engine.fit(..., calibration=)``) when the model names the
    split it expects through ``calibration_split()``: "train" or "test" (the run's own, capped, datasets), or
    another split folder of the layout (MVTec LOCO's "validation"), read per source; None for a model without
    the hook. A layout without that split raises ``DatasetError`` (a ValueError: run_grid records the run as
    not run, with the reason)."""
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


def run_one(setting: Setting, sources: DataSource | Sequence[DataSource], model: str | None = None,
            label: str = "default", seed: int | None = None, class_setting: str | None = None,
            protocols: Sequence[str] | None = None, keep_maps: int = 0, callback=None, **overrides: Any) -> Run:
    """Fit on the sources' (capped) normal training images and evaluate on their (capped) test images.

    One-class: one source. Multi-class: several sources of one dataset, one model for all of them."""
    from torch.utils.data import ConcatDataset

    from adlib import engine

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
    size = int(overrides.pop("image_size", None) or setting.image_size)
    parts = [datasets_for(s, setting, size) for s in sources]
    for _, test in parts:
        _check_split(test)
    net, fit_config = build(setting, model, image_size=size, seed=seed, **overrides)
    start = time.perf_counter()
    train = parts[0][0] if len(parts) == 1 else ConcatDataset([p[0] for p in parts])
    test = parts[0][1] if len(parts) == 1 else {s.category: p[1] for s, p in zip(sources, parts)}
    calibration = calibration_set(net, sources, parts, size)
    fitted = engine.fit(net, train, fit_config, device=setting.device, callback=callback, calibration=calibration)
    batch = setting.batch_size or fit_config.batch_size
    evaluations = engine.evaluate_protocols(net, test, protocols, batch_size=batch, device=setting.device,
                                            progress=False, keep_maps=keep_maps)
    backbone = getattr(net.config, "backbone", "")
    label_backbone = setting.backbone_label(backbone) if model == setting.paper.method or backbone == setting.backbone \
        else backbone
    return Run(model, method_name(setting, model), label, sources, size, seed, class_setting, net, fitted,
               evaluations, test, len(train), label_backbone, time.perf_counter() - start)


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
    return [{"dataset": where, "method": method_name(setting, model), "setting": label, "level": "pixel",
             "metric": m, "value": float("nan"), "backbone": backbone, "data": where, "seed": seed,
             "protocol": p, "class_setting": class_setting, "image_size": size,
             "scope": "category" if len(group) == 1 else "mean", "note": reason}
            for p in protocols for m in metrics]


def run_grid(setting: Setting, variants: Mapping[str, Mapping[str, Any]] | None = None,
             sources: Sequence[DataSource] | None = None, models: Sequence[str] | None = None,
             seeds: Sequence[int] | None = None, class_setting: str | None = None,
             protocols: Sequence[str] | None = None, skip: Mapping[str, str] | None = None,
             keep: dict | None = None, cache: dict | None = None, metrics: Sequence[str] = QUALITY_METRICS,
             keep_maps: int = 0, log=print) -> pd.DataFrame:
    """Fit and evaluate every (model, variant, seed, source group); one long table (see the module docstring).

    ``variants`` maps a label (the table's ``setting``, e.g. "m=2") to overrides for ``configs`` (model or
    engine fields, or ``image_size``); default ``{"default": {}}``. ``seeds`` default to ``(setting.seed,)``:
    pass ``setting.seeds`` for a claim. ``skip`` maps labels to a reason: those variants are recorded as rows
    with NaN values and the reason in ``note``, as is a variant that cannot be built here (an m too large for
    the token grid, weights that cannot be had). ``keep`` (a dict) receives the ``Run`` objects keyed by
    (model, label, group name, seed); ``cache`` (a dict) lets a notebook fit the same resolved configuration
    once whatever its labels.
    """
    variants = dict(variants or {"default": {}})
    sources = list(sources if sources is not None else setting.sources())
    if not sources:
        raise ValueError("run_grid: no data sources; expected the synthetic data or a data_root with datasets")
    models = list(models or [setting.paper.method])
    seeds = list(seeds if seeds is not None else [setting.seed])
    class_setting = class_setting or setting.class_setting
    protocols = list(protocols or [setting.protocol])
    skip = dict(skip or {})
    rows: list[dict] = []
    for model in models:
        method = method_name(setting, model)
        for label, overrides in variants.items():
            for seed in seeds:
                for group in _groups(sources, class_setting):
                    name = group[0].name if len(group) == 1 else f"{group[0].dataset} ({len(group)} categories)"
                    try:  # the same resolved configuration under another label is fitted once
                        resolved = repr(configs(setting, model, seed=seed, **dict(overrides)))
                    except ValueError as error:
                        if "unknown setting" in str(error):
                            raise
                        resolved = label
                    key = (model, tuple(s.name for s in group), seed, class_setting, tuple(protocols), resolved)
                    if cache is not None and key in cache and label not in skip:
                        rows += [{**row, "setting": label} for row in cache[key]]
                        log(f"{method:9s} {label:18s} seed {seed} {name}: same configuration as an earlier run, reused")
                        continue
                    reason = skip.get(label)
                    run = None
                    if reason is None:
                        try:
                            run = run_one(setting, group, model, label, seed=seed, class_setting=class_setting,
                                          protocols=protocols, keep_maps=keep_maps, **dict(overrides))
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
                            f"{100 * image.get('auroc', float('nan')):.1f} ({run.seconds:.0f}s)")
                        if keep is not None:
                            keep[(model, label, name, seed)] = run
                    if cache is not None and run is not None:
                        cache[key] = new
                    rows += new
    table = pd.DataFrame(rows)
    if "note" not in table.columns:
        table["note"] = ""
    table["note"] = table["note"].fillna("")
    return table
