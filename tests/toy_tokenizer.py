"""A tiny deterministic tokenizer for the tests: two conv hierarchies at strides 4 and 8.

It has the same interface as ``adlib.backbones.create(...)``: (B, 3, H, W) in [0, 1] -> list of
(B, C_i, H / s_i, W / s_i), with ``name``, ``channels`` and ``strides``.
"""
from __future__ import annotations

import torch
from torch import nn


class ToyTokenizer(nn.Module):
    def __init__(self, channels: tuple[int, int] = (8, 12), seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.name = "toy"
        self.channels = list(channels)
        self.strides = [4, 8]
        self.conv1 = nn.Conv2d(3, channels[0], 4, stride=4)
        self.conv2 = nn.Conv2d(channels[0], channels[1], 2, stride=2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        a = torch.tanh(self.conv1(images - 0.5))
        return [a, torch.tanh(self.conv2(a))]
