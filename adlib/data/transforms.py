"""Image and mask resizing (interpolation stated explicitly) and an optional normalization helper.

Images are float tensors (3, H, W) in [0, 1]; masks are float tensors (1, H, W) in {0, 1}.
Backbones normalize their inputs themselves; `Normalize` is only for users who want it elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MASK_MODES = ("nearest", "bilinear")


def as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """(H, W) from an int (square) or a pair; ValueError for anything else."""
    if isinstance(size, int) and not isinstance(size, bool):
        pair = (size, size)
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        pair = (int(size[0]), int(size[1]))
    else:
        raise ValueError(f"image_size must be None, an int or (H, W); got {size!r}")
    if min(pair) < 1:
        raise ValueError(f"image_size must be positive; got {size!r}")
    return pair


@dataclass(frozen=True)
class ResizeImage:
    """Bilinear resize with antialiasing (so downscaling averages instead of skipping pixels)."""

    size: tuple[int, int]
    antialias: bool = True

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if tuple(image.shape[-2:]) == tuple(self.size):
            return image
        out = F.interpolate(image[None], size=self.size, mode="bilinear", align_corners=False,
                            antialias=self.antialias)[0]
        return out.clamp_(0.0, 1.0)


@dataclass(frozen=True)
class ResizeMask:
    """Resize a binary mask: `nearest`, or `bilinear` (antialiased) followed by a threshold."""

    size: tuple[int, int]
    mode: str = "nearest"
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in MASK_MODES:
            raise ValueError(f"mask_interpolation must be one of {MASK_MODES}; got {self.mode!r}")

    def __call__(self, mask: torch.Tensor) -> torch.Tensor:
        if tuple(mask.shape[-2:]) == tuple(self.size):
            return mask
        if self.mode == "nearest":
            return F.interpolate(mask[None], size=self.size, mode="nearest-exact")[0]
        soft = F.interpolate(mask[None], size=self.size, mode="bilinear", align_corners=False, antialias=True)[0]
        return (soft >= self.threshold).to(mask.dtype)


@dataclass(frozen=True)
class Normalize:
    """(x - mean) / std per channel."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
        return (image - mean) / std
