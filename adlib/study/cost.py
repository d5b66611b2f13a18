"""Cost of a model: parameters, FLOPs and speed (architecture-only numbers need no trained weights)."""
from __future__ import annotations

import time
from typing import Any

import pandas as pd

from adlib.models.common import count_params  # noqa: F401 (part of this module's interface)
from adlib.study.setting import Setting


def flops_g(model, image_size: int, device: str = "cpu") -> float:
    """GFLOPs of one ``predict`` on one image, counted by ``torch.utils.flop_counter.FlopCounterMode``.

    It counts matrix multiplications, convolutions and attention; element-wise work (a selective scan's
    recurrence, normalisations) is not counted, so this is a lower bound for scan-based models. PyTorch's CPU
    flash-attention kernel has no formula in torch's registry, so it is given PyTorch's own attention formula
    (``count_cpu_attention``); before, attention on CPU counted zero, or not, depending on whether another
    counter had registered it earlier in the same process.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    count_cpu_attention()
    image = torch.rand(1, 3, image_size, image_size, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.predict(image)
    return counter.get_total_flops() / 1e9


def count_cpu_attention() -> None:
    """Register PyTorch's attention FLOP formula for its CPU flash-attention kernel (idempotent)."""
    import torch
    import torch.utils.flop_counter as fc

    kernel = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if kernel is not None and kernel not in fc.flop_registry:
        fc.register_flop_formula(kernel, get_raw=True)(fc.sdpa_flop)


def backbone_params_m(name: str) -> float:
    """Parameters (millions) of a backbone as ``adlib.backbones.create`` builds it (random weights: no download)."""
    from adlib import backbones

    return count_params(backbones.create(name, pretrained=False)) / 1e6


def speed(setting: Setting, model: str | None = None, images: int = 2, image_size: int | None = None,
          **overrides: Any) -> dict[str, float]:
    """Parameters (M), FLOPs (G, see ``flops_g``) and FPS of a model built with random weights.

    Speed does not depend on the weight values, so backbones whose weights cannot be had still get their
    cost measured; no quality metric comes from this. One-pass models need a fitted memory: measure them
    after fitting instead.
    """
    import torch

    from adlib.study.grid import build

    model = model or setting.paper.method
    size = int(image_size or setting.image_size)
    net, _ = build(setting, model, image_size=size, pretrained=False, **overrides)
    net.to(setting.device).eval()
    if not getattr(net, "trainable", True):
        raise ValueError(f"speed: {model} needs a fitted memory bank; measure it after fitting")
    batch = torch.rand(1, 3, size, size, device=setting.device)
    hook = getattr(net, "calibration_split", None)
    if callable(hook) and hook() is not None:  # scored with statistics of normal images: random ones here (untimed)
        from adlib import engine

        engine.calibrate(net, [torch.rand(3, size, size) for _ in range(2)], device=setting.device)
    with torch.no_grad():
        net.predict(batch)  # warm-up
        start = time.perf_counter()
        for _ in range(images):
            net.predict(batch)
        seconds = time.perf_counter() - start
    return {"params_m": count_params(net) / 1e6, "flops_g": flops_g(net, size, setting.device), "fps": images / seconds}


def cost_rows(run, device: str = "cpu") -> pd.DataFrame:
    """FLOPs and epochs of a fitted run as long-format model rows."""
    base = {"dataset": run.source.name if len(run.sources) == 1 else run.dataset_name, "method": run.method,
            "setting": run.label, "level": "model", "backbone": run.backbone, "data": run.data, "seed": run.seed,
            "class_setting": run.class_setting, "image_size": run.image_size, "protocol": "",
            "scope": "category" if len(run.sources) == 1 else "mean"}
    return pd.DataFrame([
        {**base, "metric": "flops_g", "value": flops_g(run.model, run.image_size, device),
         "note": "FlopCounterMode: matrix products and convolutions only"},
        {**base, "metric": "epochs", "value": float(run.fit.epochs), "note": ""},
    ])
