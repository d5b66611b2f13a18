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

Optional hooks, all with do-nothing defaults:

- ``training_stages()`` / ``start_stage(name)``: a model trained in several stages (LADMIM: tokenizer,
  then masked image modeling) names them; the engine runs them in order, calling ``start_stage`` first,
  and builds a fresh optimiser over the parameters that then require gradients.
- ``calibrate(batches)``: after fitting, statistics from held-out normal images (score standardisation).
- ``feature_key()``: a string that identifies what ``extract`` computes (backbone, weights, taps, image
  size), so the engine may cache frozen features on disk across runs; None (the default) disables it.

Models import neither ``adlib.engine`` nor ``adlib.papers``: they are pure modules, and how they are
trained (optimiser, epochs, the paper's recipe) is the engine's and the papers layer's business.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Iterable, NamedTuple

import torch
from torch import nn


class Prediction(NamedTuple):
    maps: torch.Tensor  # (B, H, W) anomaly maps at input resolution
    scores: torch.Tensor  # (B,) image scores


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

    def training_stages(self) -> tuple[str, ...]:
        """Names of the training stages, run in order by the engine (one stage by default)."""
        return ("main",)

    def start_stage(self, name: str) -> None:
        """Called by the engine before stage ``name`` (freeze what the stage does not train)."""

    def calibrate(self, batches: Iterable[Any]) -> None:
        """Called once after fitting with extracted features of held-out normal images, when given."""

    def feature_key(self) -> str | None:
        """Identity of the frozen features ``extract`` returns, for the on-disk feature cache; None: no cache.

        Models whose ``extract`` is exactly ``self.tokenizer(images)`` at a fixed input size return
        ``self.tokenizer_key()``; a model whose ``extract`` does more must add what else it depends on."""
        return None

    def tokenizer_key(self, *extra: Any) -> str | None:
        """``feature_key`` for ``extract = self.tokenizer(images)``: the model class, the tokenizer's identity
        (backbone, taps, weights hash), the input size and ``extra``; None with random weights."""
        tokenizer = getattr(self, "tokenizer", None)
        identity = getattr(tokenizer, "identity", None)
        if identity is None or not self.cacheable:
            return None
        size = getattr(self.config, "image_size", None)
        return "|".join([type(self).__name__, identity, f"image_size={size}", *map(str, extra)])

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
        """Load ``checkpoint_state()``'s tensors and leave the model as a fit leaves it: in eval mode and in its
        last training stage (``start_stage``), so that what the mode and the stage set beside the weights
        (dropout, which parameters require gradients) is the fitted model's too. Either may send an attention
        layer down another kernel (PyTorch's fast path), which differs from the fitted model in the last bits."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        frozen = self.frozen_keys()
        missing = [k for k in missing if k not in frozen]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match {self.name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.start_stage(self.training_stages()[-1])
        self.eval()

    def train(self, mode: bool = True) -> "AnomalyModel":
        super().train(mode)
        tokenizer = getattr(self, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.eval()  # the frozen backbone stays in eval mode (BatchNorm statistics, dropout)
        return self
