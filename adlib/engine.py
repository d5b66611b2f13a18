"""The one fit/evaluate loop for every model (see ``adlib.models.base.AnomalyModel``).

- ``fit(model, dataset, config)``: gradient models (``model.trainable``) get AdamW with a constant or cosine
  learning rate; one-pass models (PatchCore) get ``fit_memory`` over all training batches. When the model's
  feature extractor is frozen (``model.cacheable``) its features are computed once and reused every epoch,
  unless they would exceed ``cache_budget_mb``.
- ``evaluate(model, dataset)``: streams maps batch by batch into ``adlib.metrics.PixelAccumulator``; keeps
  image scores and, on request, a few downsampled maps for figures.
- ``save_checkpoint`` / ``load_checkpoint``, ``seed_everything``.
"""
from __future__ import annotations

import math
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset


@dataclass
class FitConfig:
    """Engine settings. Paper (VarAD Sec. IV.A.2): AdamW, lr 5e-4, 10 epochs; no schedule, batch size or
    weight decay stated, so the defaults are a constant learning rate, batch size 8 and AdamW's usual 1e-2."""

    epochs: int = 10
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 1e-2
    schedule: str = "constant"  # "constant" (paper states none) or "cosine" (to 0 over all steps)
    grad_clip: float | None = None  # max gradient norm; None = no clipping
    max_train_images: int | None = None  # use only the first N training images (seeded random subset)
    cache_features: bool = True  # cache frozen features (when the model allows it and they fit)
    cache_budget_mb: float = 4096.0  # largest feature cache; above it the extractor runs every epoch
    seed: int = 0
    num_workers: int = 0
    progress: bool = True  # tqdm progress bars
    checkpoint: str | None = None  # path: save after every epoch (atomic)


@dataclass
class FitResult:
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    epochs: int = 0
    train_seconds: float = 0.0
    cached: bool = False
    train_images: int = 0


@dataclass
class EvalResult:
    image: dict[str, float]
    pixel: dict[str, float]
    scores: np.ndarray
    labels: np.ndarray
    paths: list[str]
    seconds: float
    fps: float
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # path -> downsampled map, when requested


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch so that CPU runs repeat exactly."""
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


def _index(features: Any, idx: torch.Tensor) -> Any:
    if isinstance(features, torch.Tensor):
        return features[idx]
    if isinstance(features, (list, tuple)):
        return type(features)(_index(f, idx) for f in features)
    return {k: _index(v, idx) for k, v in features.items()}


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


def extract_all(model, dataset: Dataset, config: FitConfig, device: torch.device) -> Any | None:
    """Frozen features of the whole training set on the CPU, or None when they exceed the budget."""
    loader = _loader(dataset, config.batch_size, False, config.seed, config.num_workers)
    chunks, total, budget = [], 0, config.cache_budget_mb * 2**20
    with torch.no_grad():
        for i, batch in enumerate(_progress(loader, config.progress, desc="features")):
            feats = _to_device(model.extract(_images(batch).to(device)), torch.device("cpu"))
            if i == 0 and _nbytes(feats) / len(_images(batch)) * len(dataset) > budget:
                need = _nbytes(feats) / len(_images(batch)) * len(dataset) / 2**20
                warnings.warn(f"feature cache would need {need:.0f} MiB > cache_budget_mb={config.cache_budget_mb:.0f}; "
                              "computing features every epoch instead")
                return None
            chunks.append(feats)
            total += _nbytes(feats)
    return _concat(chunks)


def _feature_batches(model, dataset: Dataset, cache: Any | None, config: FitConfig, epoch: int,
                     device: torch.device, shuffle: bool) -> Iterator[Any]:
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
        with torch.set_grad_enabled(model.trainable and not model.cacheable):
            features = model.extract(_images(batch).to(device))
        yield features


def fit(model, dataset: Dataset, config: FitConfig | None = None, device: str | torch.device = "cpu") -> FitResult:
    """Fit ``model`` on the normal images of ``dataset`` (items are dicts with ``image`` or image tensors)."""
    config = config or FitConfig()
    if config.schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule={config.schedule!r}: expected 'constant' or 'cosine'")
    if config.epochs < 1 and model.trainable:
        raise ValueError(f"epochs={config.epochs}: need at least one epoch")
    device = torch.device(device)
    seed_everything(config.seed)
    model.to(device)
    dataset = _train_subset(dataset, config)
    result = FitResult(train_images=len(dataset))
    start = time.perf_counter()
    cache = None
    if model.cacheable and config.cache_features and (model.trainable and config.epochs > 1):
        cache = extract_all(model, dataset, config, device)
    result.cached = cache is not None

    if not model.trainable:  # one pass: PatchCore-like models
        model.eval()
        with torch.no_grad():
            batches = _feature_batches(model, dataset, cache, config, 0, device, shuffle=False)
            model.fit_memory(_progress(batches, config.progress, desc="memory"))
        result.epochs = 1
        result.train_seconds = time.perf_counter() - start
        if config.checkpoint:
            save_checkpoint(model, config.checkpoint, epoch=1)
        return result

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * math.ceil(len(dataset) / config.batch_size)
    scheduler = None
    if config.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    for epoch in _progress(range(config.epochs), config.progress, desc="epochs"):
        model.train()
        total, count = 0.0, 0
        batches = _feature_batches(model, dataset, cache, config, epoch, device, shuffle=True)
        for features in _progress(batches, config.progress, desc=f"epoch {epoch + 1}", total=math.ceil(len(dataset) / config.batch_size)):
            loss = model.loss(features)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += float(loss.detach())
            count += 1
        result.losses.append(total / max(count, 1))
        result.epochs = epoch + 1
        if config.checkpoint:
            save_checkpoint(model, config.checkpoint, epoch=epoch + 1)
    model.eval()
    result.train_seconds = time.perf_counter() - start
    return result


@torch.no_grad()
def evaluate(model, dataset: Dataset, batch_size: int = 8, device: str | torch.device = "cpu", keep_maps: int = 0,
             map_size: int = 128, progress: bool = True, num_workers: int = 0, pixel: bool = True) -> EvalResult:
    """Image and pixel metrics on ``dataset`` (items with ``image``, ``mask``, ``label``, ``path``).

    Maps are streamed into ``adlib.metrics.PixelAccumulator`` and dropped; only image scores stay, plus the
    first ``keep_maps`` maps of anomalous images and of good images (downsampled to ``map_size``), for figures.
    """
    from adlib import metrics

    device = torch.device(device)
    model.to(device).eval()
    loader = _loader(dataset, batch_size, False, 0, num_workers)
    accumulator = metrics.PixelAccumulator() if pixel else None
    scores, labels, paths, kept = [], [], [], {}
    kept_counts = {0: 0, 1: 0}
    seconds = 0.0
    for batch in _progress(loader, progress, desc="evaluate"):
        images = batch["image"].to(device)
        start = time.perf_counter()
        maps, image_scores = model.predict(images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - start
        maps = maps.float().cpu()
        if accumulator is not None:
            accumulator.update(maps, batch["mask"].squeeze(1))
        scores.append(image_scores.float().cpu())
        labels.append(torch.as_tensor(batch["label"]))
        batch_paths = list(batch.get("path", [str(len(paths) + i) for i in range(len(images))]))
        paths.extend(batch_paths)
        for i, label in enumerate(torch.as_tensor(batch["label"]).tolist()):
            if kept_counts[int(label)] < keep_maps:
                kept_counts[int(label)] += 1
                small = F.interpolate(maps[i][None, None], size=(map_size, map_size), mode="bilinear", align_corners=False)
                kept[batch_paths[i]] = small[0, 0].numpy()
    scores_np = torch.cat(scores).numpy()
    labels_np = torch.cat(labels).numpy()
    image = metrics.image_metrics(scores_np, labels_np)
    pixel_result = accumulator.compute() if accumulator is not None else {}
    n = len(scores_np)
    return EvalResult(image={k: float(v) for k, v in image.items()}, pixel={k: float(v) for k, v in pixel_result.items()},
                      scores=scores_np, labels=labels_np, paths=paths, seconds=seconds,
                      fps=n / seconds if seconds > 0 else float("nan"), maps=kept)


# ---------------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(model, path: str | os.PathLike, epoch: int, extra: dict[str, Any] | None = None) -> Path:
    """Write the model's trainable state, config and epoch atomically (temp file + ``os.replace``)."""
    from adlib.results import atomic_path

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
