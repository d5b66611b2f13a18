"""The small interface every model shares with `adlib.engine`.

A model takes (B, 3, H, W) images in [0, 1] and returns anomaly maps (B, H, W) at input resolution plus
image scores (B,). Training is split into two steps so that the engine can cache frozen features:

- ``extract(images)``: what the frozen part of the model computes (backbone features). When
  ``cacheable`` is true the engine computes it once per training image and reuses it every epoch.
- gradient models (``trainable = True``) give ``loss(features) -> scalar``; the engine owns the optimiser.
- one-pass models (``trainable = False``, e.g. PatchCore) give ``fit_memory(batches)``, called once with an
  iterator over the extracted features of all training batches.

``predict(images) -> Prediction`` is used for evaluation. ``checkpoint_state()`` is the state worth
saving (everything except the frozen backbone).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, NamedTuple

import torch
from torch import nn


class Prediction(NamedTuple):
    maps: torch.Tensor  # (B, H, W) anomaly maps at input resolution
    scores: torch.Tensor  # (B,) image scores


@dataclass
class RunProfile:
    """A preset: the model config plus the engine settings that go with it."""

    model: Any
    fit: Any  # adlib.engine.FitConfig
    notes: dict[str, str] = field(default_factory=dict)


class AnomalyModel(nn.Module):
    """Base class; subclasses set ``name``, ``trainable`` and implement the methods below."""

    name: str = "model"
    trainable: bool = True

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    @property
    def cacheable(self) -> bool:
        """True when ``extract`` is frozen (no trainable parameter), so its output can be cached."""
        return True

    def extract(self, images: torch.Tensor) -> Any:
        raise NotImplementedError

    def loss(self, features: Any) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} is not a gradient-trained model")

    def fit_memory(self, batches: Iterable[Any]) -> None:
        raise NotImplementedError(f"{self.name} is trained by gradients, not in one pass")

    def predict(self, images: torch.Tensor) -> Prediction:
        raise NotImplementedError

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)

    def frozen_keys(self) -> set[str]:
        """State-dict keys of the frozen backbone, left out of checkpoints because its pretrained weights can
        be loaded again. A backbone with random weights (``pretrained=False``) is saved whole."""
        tokenizer = getattr(self, "tokenizer", None)
        if tokenizer is None or not getattr(self.config, "pretrained", True):
            return set()
        keys = {f"tokenizer.{k}" for k, _ in tokenizer.named_buffers()}
        keys |= {f"tokenizer.{k}" for k, p in tokenizer.named_parameters() if not p.requires_grad}
        return keys

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        frozen = self.frozen_keys()
        return {k: v for k, v in self.state_dict().items() if k not in frozen}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        frozen = self.frozen_keys()
        missing = [k for k in missing if k not in frozen]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match {self.name}: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def train(self, mode: bool = True) -> "AnomalyModel":
        super().train(mode)
        tokenizer = getattr(self, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.eval()  # the frozen backbone stays in eval mode (BatchNorm statistics, dropout)
        return self


def apply_overrides(preset: RunProfile, overrides: dict[str, Any]) -> RunProfile:
    """Set each override on the model config and/or the engine config that has a field of that name."""
    from dataclasses import fields, replace

    model_fields = {f.name for f in fields(preset.model)}
    fit_fields = {f.name for f in fields(preset.fit)}
    unknown = sorted(set(overrides) - model_fields - fit_fields)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; valid: {sorted(model_fields | fit_fields)}")
    norm = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    preset.model = replace(preset.model, **{k: v for k, v in norm.items() if k in model_fields})
    preset.fit = replace(preset.fit, **{k: v for k, v in norm.items() if k in fit_fields})
    return preset
