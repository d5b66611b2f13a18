"""The one fit/evaluate loop for every model (see ``adlib.models.base.AnomalyModel``).

- ``fit(model, dataset, config)``: gradient models (``model.trainable``) get AdamW or Adam with a constant,
  cosine or step learning rate, stage by stage; one-pass models (memory banks) get ``fit_memory`` over all
  training batches. When the model's feature extractor is frozen (``model.cacheable``) its features are
  computed once, one image at a time (``extract_frozen``: the same bits whatever batch an image is in), and
  reused every epoch, unless they would exceed ``cache_budget_mb``; with a ``feature_key()`` they are also
  kept on disk across runs (``adlib.featcache``).
- ``evaluate(model, dataset, protocol=...)``: streams maps batch by batch into the named protocol's
  accumulators (``adlib.metrics.PROTOCOLS``), one category at a time for a multi-class test set; keeps
  image scores and, on request, a few downsampled maps for figures.

The engine knows no paper and no model by name: recipes come from ``adlib.papers``.
- ``save_checkpoint`` / ``load_checkpoint`` (a fit's checkpoints carry its ``FitResult.run_id`` in
  ``extra["run_id"]``), ``seed_everything``.
"""
from __future__ import annotations

import math
import os
import random
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset


@dataclass
class FitConfig:
    """Engine settings. A paper's recipe (``adlib.papers``) sets them per model and profile; these defaults
    are only a plain AdamW loop (lr 5e-4, 10 epochs, batch 8, constant learning rate)."""

    epochs: int = 10
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 1e-2
    optimizer: str = "adamw"  # "adamw" or "adam"
    betas: tuple[float, float] = (0.9, 0.999)
    # "constant"; "cosine" (to 0 over all steps); "step" (x step_gamma once step_at of the steps are done,
    # as ADer's and UniAD's StepLR recipes)
    schedule: str = "constant"
    step_at: float = 0.8  # fraction of the training steps after which "step" multiplies the lr by step_gamma
    step_gamma: float = 0.1
    grad_clip: float | None = None  # max gradient norm; None = no clipping
    max_train_images: int | None = None  # use only the first N training images (seeded random subset)
    cache_features: bool = True  # cache frozen features (when the model allows it and they fit)
    cache_budget_mb: float = 4096.0  # largest feature cache; above it the extractor runs every epoch
    disk_cache: bool = True  # also keep frozen features on disk across runs (models with a ``feature_key``)
    seed: int = 0
    num_workers: int = 0
    progress: bool = True  # tqdm progress bars
    checkpoint: str | None = None  # path: save after every epoch (atomic)
    max_steps: int | None = None  # stop a training stage after this many optimiser steps (path checks); None: all
    # Per training stage (``model.training_stages()``), overrides of the fields above, e.g.
    # {"first": {"epochs": 20}, "second": {"lr": 1e-4}}.
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from adlib.config import coerce_fields

        for name, value in coerce_fields([FitConfig], {f.name: getattr(self, f.name) for f in fields(self)}).items():
            setattr(self, name, value)  # each field's type (betas=1 is not a pair; a list of betas is a tuple)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r}: expected one of {SCHEDULES}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r}: expected one of {sorted(OPTIMIZERS)}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "epochs" else 1):
                raise ValueError(f"{name}={value!r}: expected a positive integer")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr={self.lr!r}: expected a positive number")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay!r}: expected a number >= 0")
        if not 0 < self.step_at <= 1:
            raise ValueError(f"step_at={self.step_at!r}: expected a fraction in (0, 1]")
        for stage, overrides in self.stages.items():  # a stage's overrides: known fields of the right type and range
            try:
                if "stages" in overrides:
                    raise ValueError("a stage cannot set stages")
                replace(self, stages={}, **coerce_fields([FitConfig], overrides))
            except ValueError as error:
                raise ValueError(f"stages={self.stages!r}: stage {stage!r}: {error}") from None

    def for_stage(self, stage: str) -> "FitConfig":
        """This config with the overrides of ``stage`` applied."""
        overrides = dict(self.stages.get(stage, {}))
        if not overrides:
            return self
        unknown = sorted(set(overrides) - {f.name for f in fields(self)} | ({"stages"} & set(overrides)))
        if unknown:
            raise ValueError(f"stages[{stage!r}]: unknown field(s) {unknown}")
        return replace(self, **overrides)


SCHEDULES = ("constant", "cosine", "step")
OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}


@dataclass
class FitResult:
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch (all stages in order)
    stage_losses: dict[str, list[float]] = field(default_factory=dict)  # the same, per training stage
    epochs: int = 0
    train_seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time during the fit (all threads together)
    cached: bool = False  # frozen features were held in memory for the epochs
    disk_hits: int = 0  # training images whose frozen features came from the on-disk cache
    train_images: int = 0
    history: list[dict] = field(default_factory=list)  # what the per-epoch callback returned, per epoch
    # A new id per fit, written into every checkpoint the fit saves (``extra["run_id"]``): a run record that
    # gives it names the checkpoint that goes with it (a killed run's later checkpoint has another id).
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])


@dataclass
class Metrics:
    """Image and pixel metrics of one group of test images (a category, or all categories pooled).

    A metric that is undefined for the data (pixel metrics without an anomalous pixel, image metrics with
    one class only) is absent, and ``undefined`` says why. ``replicates`` holds, per level and metric, the
    values on the test-image resamples (``adlib.metrics.resample_counts``; empty when not requested) and
    ``chance`` what a detector that sees nothing scores on these images (``adlib.metrics.chance_level``)."""

    image: dict[str, float] = field(default_factory=dict)
    pixel: dict[str, float] = field(default_factory=dict)
    images: int = 0
    undefined: dict[str, str] = field(default_factory=dict)  # level -> reason
    replicates: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # level -> metric -> (B,) fractions
    chance: dict[str, dict[str, float]] = field(default_factory=dict)  # level -> metric -> fraction
    test_id: str = ""  # adlib.metrics.test_identity of the images: equal for evaluations of the same images

    @property
    def mad(self) -> float:
        """ViTAD's mAD (mean of the 7 image and pixel metrics), NaN when one of them is missing."""
        from adlib import metrics

        try:
            return metrics.mad(self.image, self.pixel)
        except KeyError:
            return float("nan")


@dataclass
class EvalResult:
    """``image``/``pixel``: over one dataset, or the mean over categories when categories were given (the
    papers' "m" metrics); ``categories``: per category; ``pooled``: all categories' images together."""

    image: dict[str, float]
    pixel: dict[str, float]
    scores: np.ndarray
    labels: np.ndarray
    paths: list[str]
    seconds: float
    fps: float
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # path -> downsampled map, when requested
    protocol: str = "exact"
    categories: dict[str, Metrics] = field(default_factory=dict)
    pooled: Metrics | None = None
    groups: list[str] = field(default_factory=list)  # per image: "good", "defect", LOCO "logical"/"structural"
    image_categories: list[str] = field(default_factory=list)  # per image: its category
    undefined: dict[str, str] = field(default_factory=dict)
    parts: dict[str, np.ndarray] = field(default_factory=dict)  # per image: a model's named score parts (predict_parts)
    # test-image noise (see ``Metrics``): of ``image``/``pixel`` (the category means for several categories)
    replicates: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    chance: dict[str, dict[str, float]] = field(default_factory=dict)
    test_id: str = ""
    resample: np.ndarray | None = None  # (B, images) counts per resample, stratified per category and image group


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch. With the same seed, inputs and thread count, CPU runs repeat exactly
    (bit for bit: the native selective scan reduces its gradients in a fixed order; see
    tests/test_determinism.py). Another thread count may differ in the last bits."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _progress(iterable, enabled: bool, **kwargs):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, leave=False, **kwargs)


def _to_device(features: Any, device: torch.device) -> Any:
    if isinstance(features, torch.Tensor):
        return features.to(device, non_blocking=True)
    if isinstance(features, (list, tuple)):
        return type(features)(_to_device(f, device) for f in features)
    if isinstance(features, dict):
        return {k: _to_device(v, device) for k, v in features.items()}
    return features


def _nbytes(features: Any) -> int:
    if isinstance(features, torch.Tensor):
        return features.numel() * features.element_size()
    if isinstance(features, (list, tuple)):
        return sum(_nbytes(f) for f in features)
    if isinstance(features, dict):
        return sum(_nbytes(f) for f in features.values())
    return 0


def _concat(chunks: list[Any]) -> Any:
    first = chunks[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(chunks)
    if isinstance(first, (list, tuple)):
        return type(first)(_concat([c[i] for c in chunks]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _concat([c[k] for c in chunks]) for k in first}
    raise TypeError(f"cannot cache features of type {type(first).__name__}")


def _index(features: Any, idx: torch.Tensor | int | slice) -> Any:
    if isinstance(features, torch.Tensor):
        return features[idx]
    if isinstance(features, (list, tuple)):
        return type(features)(_index(f, idx) for f in features)
    return {k: _index(v, idx) for k, v in features.items()}


def _stack_items(items: list[Any]) -> Any:
    """Per-image feature structures (no batch dimension) -> one batched structure."""
    first = items[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(items)
    if isinstance(first, (list, tuple)):
        return type(first)(_stack_items([it[i] for it in items]) for i in range(len(first)))
    return {k: _stack_items([it[k] for it in items]) for k in first}


def _train_subset(dataset: Dataset, config: FitConfig) -> Dataset:
    if config.max_train_images is None or config.max_train_images >= len(dataset):
        return dataset
    generator = torch.Generator().manual_seed(config.seed)
    keep = torch.randperm(len(dataset), generator=generator)[: config.max_train_images].sort().values
    return Subset(dataset, keep.tolist())


def _loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=num_workers)


def _images(batch: Any) -> torch.Tensor:
    return batch["image"] if isinstance(batch, dict) else batch


def _disk_store(model, config: FitConfig, device: torch.device):
    from adlib import featcache

    if not (config.disk_cache and featcache.enabled() and model.cacheable):
        return None
    key = model.feature_key()
    return featcache.FeatureStore(featcache.bits_key(key, device)) if key else None


def _extract_one(model, image: torch.Tensor, device: torch.device) -> Any:
    """One image's frozen features on the CPU, without the batch dimension."""
    return _index(_to_device(model.extract(image[None].to(device)), torch.device("cpu")), 0)


def extract_frozen(model, images: torch.Tensor, device: str | torch.device = "cpu", store=None) -> tuple[Any, int]:
    """Frozen features of a batch on the CPU, computed one image at a time, so that an image's features have the
    same bits whatever batch it came in (a batched convolution may sum in another order for another batch
    size: a cache filled from other batches would change a run's results in the last digits; the cost is
    measured by ``benchmarks/feature_extraction.py``). With a ``featcache.FeatureStore``, entries it has are
    used and the rest computed and stored; the first image of a store's first batch is always computed, to
    check the store's entries against (``FeatureStore.verify``). Returns (features, images the store gave)."""
    device = torch.device(device)
    if store is None:
        return _stack_items([_extract_one(model, image, device) for image in images]), 0
    from adlib.featcache import image_hash

    digests = [image_hash(image) for image in images]
    found: list[Any] = [None] * len(images)
    hits = 0
    if store.expected is None:
        found[0] = _extract_one(model, images[0], device)
        if store.verify(digests[0], found[0]):
            hits += 1
        else:
            store.put(digests[0], found[0])
    for i, digest in enumerate(digests):
        if found[i] is None:
            found[i] = store.get(digest)
            if found[i] is None:
                found[i] = _extract_one(model, images[i], device)
                store.put(digest, found[i])
            else:
                hits += 1
    return _stack_items(found), hits


def extract_all(model, dataset: Dataset, config: FitConfig, device: torch.device, store=None) -> tuple[Any | None, int]:
    """Frozen features of the whole training set on the CPU, or None when they exceed the budget; and the
    number of images the disk cache supplied."""
    loader = _loader(dataset, config.batch_size, False, config.seed, config.num_workers)
    chunks, budget, hits = [], config.cache_budget_mb * 2**20, 0
    with torch.no_grad():
        for i, batch in enumerate(_progress(loader, config.progress, desc="features")):
            feats, found = extract_frozen(model, _images(batch), device, store)
            hits += found
            if i == 0 and _nbytes(feats) / len(_images(batch)) * len(dataset) > budget:
                need = _nbytes(feats) / len(_images(batch)) * len(dataset) / 2**20
                warnings.warn(f"feature cache would need {need:.0f} MiB > cache_budget_mb={config.cache_budget_mb:.0f}; "
                              "computing features every epoch instead")
                return None, hits
            chunks.append(feats)
    return _concat(chunks), hits


def _feature_batches(model, dataset: Dataset, cache: Any | None, config: FitConfig, epoch: int,
                     device: torch.device, shuffle: bool, store=None) -> Iterator[Any]:
    """Training batches of features: from the cache, or extracted on the fly (with gradients if not frozen)."""
    n = len(dataset)
    order = torch.arange(n)
    if shuffle:  # the same order with or without the cache
        order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
    if cache is not None:
        for start in range(0, n, config.batch_size):
            yield _to_device(_index(cache, order[start : start + config.batch_size]), device)
        return
    for batch in _loader(Subset(dataset, order.tolist()), config.batch_size, False, 0, config.num_workers):
        # The grad mode is set around the extraction only: a `with` around `yield` would hold for the consumer.
        if model.cacheable:  # frozen: image by image, the bits of the cached path (see extract_frozen)
            with torch.no_grad():
                features = _to_device(extract_frozen(model, _images(batch), device, store)[0], device)
        else:
            with torch.set_grad_enabled(model.trainable):
                features = model.extract(_images(batch).to(device))
        yield features


def _scheduler(optimizer, config: FitConfig, steps: int):
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    if config.schedule == "step":
        milestone = max(1, int(round(config.step_at * steps)))
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[milestone], gamma=config.step_gamma)
    return None


def fit(model, dataset: Dataset, config: FitConfig | None = None, device: str | torch.device = "cpu",
        callback: Callable[[int, Any], dict | None] | None = None, calibration: Dataset | None = None) -> FitResult:
    """Fit ``model`` on the normal images of ``dataset`` (items are dicts with ``image`` or image tensors).

    Gradient models are trained stage by stage (``model.training_stages()``, one stage by default), each
    with a fresh optimiser over the parameters that require gradients once ``model.start_stage`` ran and
    with ``config.for_stage(stage)``'s settings. ``callback(epoch, model)`` runs after every epoch (epochs
    counted over all stages, from 1); what it returns is kept in ``FitResult.history``. ``calibration``
    (normal held-out images) is passed to ``model.calibrate`` as feature batches after training. The engine does
    not choose calibration images: the caller does (``adlib.study.run_one`` through
    ``study.grid.calibration_plan``, from the model's ``calibration_split()``).
    """
    config = config or FitConfig()
    device = torch.device(device)
    seed_everything(config.seed)
    model.to(device)
    dataset = _train_subset(dataset, config)
    result = FitResult(train_images=len(dataset))
    start, cpu = time.perf_counter(), time.process_time()
    store = _disk_store(model, config, device)

    if not model.trainable:  # one pass: memory-bank models
        model.eval()
        with torch.no_grad():
            batches = _feature_batches(model, dataset, None, config, 0, device, shuffle=False, store=store)
            model.fit_memory(_progress(batches, config.progress, desc="memory"))
        result.epochs = 1
        result.disk_hits = store.hits if store is not None else 0
    else:
        cache = None
        total_epochs = sum(config.for_stage(s).epochs for s in model.training_stages())
        if total_epochs < 1:
            raise ValueError(f"epochs={config.epochs}: need at least one epoch")
        if model.cacheable and config.cache_features and total_epochs > 1:
            cache, result.disk_hits = extract_all(model, dataset, config, device, store)
        result.cached = cache is not None
        for stage in model.training_stages():
            stage_config = config.for_stage(stage)
            model.start_stage(stage)
            _train_stage(model, dataset, _stage_cache(model, cache), stage, stage_config, device, result, callback,
                         store)
        if store is not None and cache is None:
            result.disk_hits = store.hits
    if calibration is not None:
        calibrate(model, calibration, config, device, store)
    model.eval()
    result.train_seconds = time.perf_counter() - start
    result.cpu_seconds = time.process_time() - cpu
    if config.checkpoint and not model.trainable:
        save_checkpoint(model, config.checkpoint, epoch=1, extra={"run_id": result.run_id})
    return result


def calibrate(model, calibration: Dataset, config: FitConfig | None = None, device: str | torch.device = "cpu",
              store=None) -> None:
    """``model.calibrate`` on the feature batches of ``calibration`` (normal held-out images), in eval mode;
    ``fit`` calls it after training, and a model loaded from weights gets it alone."""
    config = config or FitConfig(progress=False)
    device = torch.device(device)
    model.to(device).eval()
    with torch.no_grad():
        model.calibrate(_feature_batches(model, calibration, None, config, 0, device, shuffle=False, store=store))


def _stage_cache(model, cache):
    """The cached features a stage trains on. A model whose stage reads a function of the features that is
    frozen during that stage (e.g. the codes of a tokenizer trained in an earlier stage) may add it once, for the
    whole cache, through the optional hook ``stage_features(features) -> features`` (no gradients, eval mode),
    instead of computing it again in every step of every epoch. The cache is on the CPU (``extract_all``): the
    hook computes on the model's device and returns CPU tensors; batches move to the device as they are drawn."""
    hook = getattr(model, "stage_features", None)
    if cache is None or hook is None:
        return cache
    was_training = model.training
    model.eval()
    with torch.no_grad():
        cache = hook(cache)
    model.train(was_training)
    return cache


def _train_stage(model, dataset, cache, stage: str, config: FitConfig, device, result: FitResult, callback,
                 store) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{model.name}: no trainable parameter in stage {stage!r}")
    kwargs = {"lr": config.lr, "weight_decay": config.weight_decay, "betas": tuple(config.betas)}
    optimizer = OPTIMIZERS[config.optimizer](params, **kwargs)
    per_epoch = math.ceil(len(dataset) / config.batch_size)
    scheduler = _scheduler(optimizer, config, config.epochs * per_epoch)
    losses = result.stage_losses.setdefault(stage, [])
    steps = 0
    for epoch in _progress(range(config.epochs), config.progress, desc=f"{stage} epochs"):
        model.train()
        total, count = 0.0, 0
        batches = _feature_batches(model, dataset, cache, config, result.epochs, device, shuffle=True, store=store)
        for features in _progress(batches, config.progress, desc=f"epoch {result.epochs + 1}", total=per_epoch):
            loss = model.loss(features)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{model.name}: the training loss became {float(loss)} in stage {stage!r}, "
                                         f"epoch {epoch + 1} (lr={config.lr}); lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += float(loss.detach())
            count += 1
            steps += 1
            if config.max_steps is not None and steps >= config.max_steps:
                break
        losses.append(total / max(count, 1))
        result.losses.append(losses[-1])
        result.epochs += 1
        if config.checkpoint:
            save_checkpoint(model, config.checkpoint, epoch=result.epochs, extra={"run_id": result.run_id})
        if callback is not None:
            model.eval()
            entry = callback(result.epochs, model)
            if entry is not None:
                result.history.append({"epoch": result.epochs, "stage": stage, **entry})
        if config.max_steps is not None and steps >= config.max_steps:
            break


# ------------------------------------------------------------------------------------------- evaluation


def _compute(accumulator, scores: list, labels: list, resample: np.ndarray | None = None, test_id: str = "") -> Metrics:
    """Metrics of one group; a metric undefined for this data is left out with the reason. With ``resample``
    ((B, images) counts), each metric's values on the B test-image resamples too."""
    from adlib import metrics

    out = Metrics(images=int(sum(len(s) for s in scores)), test_id=test_id)
    s = torch.cat(scores).numpy() if scores else np.zeros(0)
    y = torch.cat(labels).numpy() if labels else np.zeros(0, dtype=int)
    if len(np.unique(y)) < 2:
        out.undefined["image"] = (f"image metrics need good and anomalous test images; this set has only "
                                  f"{'anomalous' if len(y) and y.all() else 'good'} ones")
    else:
        out.image = {k: float(v) for k, v in metrics.image_metrics(s, y).items()}
        out.chance["image"] = {k: metrics.chance_level(k, float(np.mean(y))) for k in out.image}
        if resample is not None:
            out.replicates["image"] = metrics.image_replicates(s, y, resample)
    if accumulator is not None:
        try:
            out.pixel = {k: float(v) for k, v in accumulator.compute(resample=resample).items()}
            out.chance["pixel"] = {k: metrics.chance_level(k, accumulator.prevalence) for k in out.pixel}
            if resample is not None:
                out.replicates["pixel"] = dict(accumulator.replicates)
        except ValueError as error:
            out.undefined["pixel"] = str(error)
    return out


def _category_of(batch: dict, i: int) -> str:
    cats = batch.get("category")
    return str(cats[i]) if cats is not None else ""


def evaluate(model, dataset: Dataset | Mapping[str, Dataset], batch_size: int = 8,
             device: str | torch.device = "cpu", keep_maps: int = 0, map_size: int = 128, progress: bool = True,
             num_workers: int = 0, pixel: bool = True, protocol: str = "exact", pooled: bool | None = None) -> EvalResult:
    """Image and pixel metrics under a named ``protocol`` (``adlib.metrics.PROTOCOLS``: "exact", "ader").

    ``dataset`` is one test set, or a mapping category -> test set (the multi-class setting): categories
    are then evaluated one after another, each with its own accumulator that is dropped once its metrics
    are computed, and ``image``/``pixel`` are the means over categories. ``pooled`` (default: on for more
    than one category) also scores all categories' images together. Maps are streamed into the protocol's
    accumulators and never held; only image scores stay, plus the first ``keep_maps`` maps of anomalous
    and of good images per category (downsampled to ``map_size``), for figures.
    """
    return evaluate_protocols(model, dataset, (protocol,), batch_size, device, keep_maps, map_size, progress,
                              num_workers, pixel, pooled)[protocol]


@torch.no_grad()
def evaluate_protocols(model, dataset: Dataset | Mapping[str, Dataset], protocols: Sequence[str] = ("exact",),
                       batch_size: int = 8, device: str | torch.device = "cpu", keep_maps: int = 0,
                       map_size: int = 128, progress: bool = True, num_workers: int = 0, pixel: bool = True,
                       pooled: bool | None = None, bootstrap: int | None = None) -> dict[str, EvalResult]:
    """``evaluate`` under several protocols at once: one prediction pass, one result per protocol.

    ``bootstrap`` (default ``adlib.metrics.BOOTSTRAP``; 0: none) test-image resamples per category, drawn from
    the images' identity (``adlib.metrics.resample_counts``, stratified by image group), give every metric its
    values on each resample (``Metrics.replicates``): the same resamples for both protocols and for any other
    evaluation of the same images, so that two sides of a comparison are resampled in pairs."""
    from adlib import metrics

    bootstrap = metrics.BOOTSTRAP if bootstrap is None else int(bootstrap)

    specs = {name: metrics.protocol(name) for name in dict.fromkeys(protocols)}
    if not specs:
        raise ValueError("evaluate: no protocol given")
    device = torch.device(device)
    model.to(device).eval()
    named = dict(dataset) if isinstance(dataset, Mapping) else {"": dataset}
    if not named:
        raise ValueError("evaluate: no test set given")
    pooled = len(named) > 1 if pooled is None else pooled
    state = {p: {"pooled_acc": spec.pixel_accumulator() if (pixel and pooled) else None, "scores": [],
                 "labels": [], "categories": {}} for p, spec in specs.items()}
    paths, groups, cats, kept = [], [], [], {}
    parts: dict[str, list[torch.Tensor]] = {}
    # a model whose image score combines several per-image scores may return them on the way (``predict_parts``:
    # (Prediction, {name: (B,) tensor})); they are kept in ``EvalResult.parts``, so that readings of the score's
    # parts (e.g. each scorer alone) need no second pass over the test set
    predict_parts = getattr(model, "predict_parts", None)
    seconds = 0.0
    resamples, identities = [], []
    for name, part in named.items():
        first = len(paths)
        accumulators = {p: spec.pixel_accumulator() if pixel else None for p, spec in specs.items()}
        scores: list[torch.Tensor] = []
        labels = {p: [] for p in specs}
        kept_counts = {0: 0, 1: 0}
        loader = _loader(part, batch_size, False, 0, num_workers)
        for batch in _progress(loader, progress, desc=f"evaluate {name}".strip()):
            images = batch["image"].to(device)
            start = time.perf_counter()
            if predict_parts is not None:
                (maps, image_scores), named_parts = predict_parts(images)
                for key, value in named_parts.items():
                    parts.setdefault(key, []).append(value.float().cpu())
            else:
                maps, image_scores = model.predict(images)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds += time.perf_counter() - start
            maps = maps.float().cpu()
            masks = batch["mask"].squeeze(1)
            folder_labels = torch.as_tensor(batch["label"]).long()
            for p, spec in specs.items():
                labels[p].append(spec.image_labels(folder_labels, masks))
                for acc in (accumulators[p], state[p]["pooled_acc"]):
                    if acc is not None:
                        acc.update(maps, masks)
            scores.append(image_scores.float().cpu())
            batch_paths = list(batch.get("path", [str(len(paths) + i) for i in range(len(images))]))
            paths.extend(batch_paths)
            groups.extend(batch.get("group", ["good" if int(y) == 0 else "defect" for y in folder_labels]))
            cats.extend([name or _category_of(batch, i) for i in range(len(images))])
            for i, label in enumerate(folder_labels.tolist()):
                if kept_counts[int(label)] < keep_maps:
                    kept_counts[int(label)] += 1
                    small = F.interpolate(maps[i][None, None], size=(map_size, map_size), mode="bilinear", align_corners=False)
                    kept[batch_paths[i]] = small[0, 0].numpy()
        keys = metrics.image_keys(paths[first:])
        identities.append(metrics.test_identity(keys))
        resample = metrics.resample_counts(keys, groups[first:], bootstrap) if bootstrap and keys else None
        resamples.append(resample)
        for p in specs:
            state[p]["categories"][name] = _compute(accumulators[p], scores, labels[p], resample, identities[-1])
            state[p]["scores"] += scores
            state[p]["labels"] += labels[p]
        del accumulators
    everything = np.concatenate(resamples, axis=1) if resamples and all(r is not None for r in resamples) else None
    test_id = identities[0] if len(identities) == 1 else metrics.test_identity(identities)
    out = {}
    for p in specs:
        scores_np = torch.cat(state[p]["scores"]).numpy()
        labels_np = torch.cat(state[p]["labels"]).numpy()
        n = len(scores_np)
        result = EvalResult(image={}, pixel={}, scores=scores_np, labels=labels_np, paths=list(paths), seconds=seconds,
                            fps=n / seconds if seconds > 0 else float("nan"), maps=kept, protocol=p,
                            groups=[str(g) for g in groups], image_categories=list(cats),
                            parts={k: torch.cat(v).numpy() for k, v in parts.items()}, test_id=test_id,
                            resample=everything)
        if pooled:
            result.pooled = _compute(state[p]["pooled_acc"], state[p]["scores"], state[p]["labels"], everything, test_id)
        per_category = state[p]["categories"]
        if list(named) == [""]:
            only = per_category[""]
            result.image, result.pixel, result.undefined = only.image, only.pixel, dict(only.undefined)
            result.replicates, result.chance = only.replicates, only.chance
        else:
            result.categories = per_category
            _category_means(result)
        out[p] = result
    return out


def _category_means(result: EvalResult) -> None:
    """``image``/``pixel`` of a multi-category result: the means over categories (the papers' m-metrics)."""
    for level in ("image", "pixel"):
        values = [getattr(m, level) for m in result.categories.values()]
        missing = [c for c, m in result.categories.items() if not getattr(m, level)]
        if missing:
            result.undefined[level] = f"no mean over categories: undefined for {', '.join(missing)}"
            continue
        keys = [k for k in values[0] if all(k in v for v in values)]
        setattr(result, level, {k: float(np.mean([v[k] for v in values])) for k in keys})
        categories = list(result.categories.values())  # each category resampled on its own: mean per resample
        result.chance[level] = {k: float(np.mean([m.chance.get(level, {}).get(k, np.nan) for m in categories]))
                                for k in keys}
        if all(level in m.replicates for m in categories):
            result.replicates[level] = {k: np.mean([m.replicates[level][k] for m in categories], axis=0)
                                        for k in keys if all(k in m.replicates[level] for m in categories)}


# ---------------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(model, path: str | os.PathLike, epoch: int, extra: dict[str, Any] | None = None) -> Path:
    """Write the model's trainable state, config and epoch atomically (temp file + ``os.replace``)."""
    from adlib.io import atomic_path

    payload = {"model": model.name, "config": asdict(model.config), "epoch": epoch,
               "state": model.checkpoint_state(), "extra": extra or {}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, model=None, device: str | torch.device = "cpu"):
    """Load a checkpoint; builds the model from the saved name and config unless ``model`` is given.

    Returns ``(model, epoch)``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if model is None:
        from adlib.models import create_model

        model = create_model(payload["model"], **payload["config"])
    elif model.name != payload["model"]:
        raise ValueError(f"checkpoint {path} holds a {payload['model']!r} model, not {model.name!r}")
    model.load_checkpoint_state(payload["state"])
    return model.to(torch.device(device)), int(payload["epoch"])
