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


def _symmetric_index(n: int, radius: int) -> torch.Tensor:
    """Indices of a length-n axis padded by ``radius`` on both sides as scipy.ndimage's "reflect" mode
    (d c b a | a b c d | d c b a, the edge sample repeated), at any radius, larger than n too."""
    i = torch.arange(-radius, n + radius) % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


def gaussian_blur(maps: torch.Tensor, sigma: float, padding: str = "reflect") -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) maps (truncated at 4 sigma); ``sigma <= 0`` returns the input.

    ``padding``: "reflect" is PyTorch's (d c b | a b c d, the edge sample not repeated; "replicate" where a
    side is not longer than the radius); "symmetric" is scipy.ndimage.gaussian_filter's default mode (also
    called "reflect" there: the edge sample repeated), what the reference code of ViTAD, MambaAD and RD4AD
    calls."""
    if sigma <= 0:
        return maps
    check_choice("padding", padding, ("reflect", "symmetric"))
    kernel = gaussian_kernel1d(sigma).to(maps)
    radius = kernel.numel() // 2
    x = maps.unsqueeze(1)
    if padding == "symmetric":
        h, w = maps.shape[-2:]
        x = F.conv2d(x[..., _symmetric_index(w, radius).to(maps.device)], kernel.view(1, 1, 1, -1))
        x = F.conv2d(x[..., _symmetric_index(h, radius).to(maps.device), :], kernel.view(1, 1, -1, 1))
        return x.squeeze(1)
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


def local_patch_features(features: list[torch.Tensor], patch_size: int,
                         include_pad: bool = True) -> torch.Tensor:
    """Every tap averaged over p x p neighbourhoods, resampled (bilinear) to the first tap's grid and
    concatenated over channels: (B, sum C, h, w). ``include_pad``: the border's mean counts the zero padding."""
    size = features[0].shape[-2:]
    parts = []
    for feat in features:
        feat = F.avg_pool2d(feat, patch_size, stride=1, padding=patch_size // 2,
                            count_include_pad=include_pad)
        if feat.shape[-2:] != size:
            feat = F.interpolate(feat, size=size, mode="bilinear", align_corners=False)
        parts.append(feat)
    return torch.cat(parts, dim=1)
