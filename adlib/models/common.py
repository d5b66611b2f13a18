"""Helpers shared by the models: Gaussian smoothing of anomaly maps, image-score rules, parameter counts."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    radius = max(int(truncate * sigma + 0.5), 1)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) maps with reflect padding; ``sigma <= 0`` returns the input."""
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel1d(sigma).to(maps)
    radius = kernel.numel() // 2
    x = maps.unsqueeze(1)
    mode = "reflect" if min(maps.shape[-2:]) > radius else "replicate"
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode=mode), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode=mode), kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def _max_score(maps: torch.Tensor, topk_ratio: float) -> torch.Tensor:
    return maps.flatten(1).amax(dim=1)


def _topk_mean_score(maps: torch.Tensor, topk_ratio: float) -> torch.Tensor:
    flat = maps.flatten(1)
    k = max(1, math.ceil(topk_ratio * flat.shape[1]))
    return flat.topk(k, dim=1).values.mean(dim=1)


SCORE_RULES: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "max": _max_score,
    "topk_mean": _topk_mean_score,
}


def image_score(maps: torch.Tensor, rule: str = "max", topk_ratio: float = 0.01) -> torch.Tensor:
    """Image scores (B,) from (B, H, W) maps by a named rule (see ``SCORE_RULES``)."""
    if rule not in SCORE_RULES:
        raise ValueError(f"score rule {rule!r} unknown; expected one of {sorted(SCORE_RULES)}")
    return SCORE_RULES[rule](maps, topk_ratio)


def check_choice(parameter: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{parameter}={value!r} is not valid; expected one of {sorted(choices)}")


def count_params(module, trainable_only: bool = False) -> int:
    """Parameters of a module (only those that require gradients with ``trainable_only``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def local_patch_features(features: list[torch.Tensor], patch_size: int) -> torch.Tensor:
    """Every tap averaged over p x p neighbourhoods, resampled (bilinear) to the first tap's grid and
    concatenated over channels: (B, sum C, h, w)."""
    size = features[0].shape[-2:]
    parts = []
    for feat in features:
        feat = F.avg_pool2d(feat, patch_size, stride=1, padding=patch_size // 2, count_include_pad=False)
        if feat.shape[-2:] != size:
            feat = F.interpolate(feat, size=size, mode="bilinear", align_corners=False)
        parts.append(feat)
    return torch.cat(parts, dim=1)
