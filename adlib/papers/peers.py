"""Recipes of the baselines the papers run beside their own method, from the baselines' own papers.

A paper file takes these and changes what its own comparison changed (VarAD runs PatchCore at 1024 px).
Every value the smoke profile changes from the baseline's paper says why in ``notes``.
"""
from __future__ import annotations

from adlib.engine import FitConfig
from adlib.study.spec import Recipe

OWNS = ("patchcore",)

RECIPES: dict[tuple[str, str], Recipe] = {
    # PatchCore (Roth et al. 2022): Wide-ResNet-50 layers 2+3, 10% coreset, 1024-d embedding, one pass.
    ("patchcore", "paper"): Recipe(
        model={"backbone": "wide_resnet50", "layers": (2, 3), "image_size": 256, "embed_dim": 1024,
               "coreset_ratio": 0.1},
        fit=FitConfig(epochs=1, batch_size=8),
    ),
    ("patchcore", "smoke"): Recipe(
        model={"coreset_ratio": 0.01},
        fit=FitConfig(epochs=1, batch_size=8),
        notes={"coreset_ratio": "1% (the paper's PatchCore-1%): greedy selection over all patches is the cost on a CPU",
               "backbone": "offline ImageNet EfficientNet-Lite0 instead of Wide-ResNet-50 (no hub weights offline)"},
    ),
}
