"""Cost of a model: parameters, FLOPs and speed (architecture-only numbers need no trained weights)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

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


# ------------------------------------------------------------------ architecture-only counts (random weights)

ATTENTION_NOTE = "FlopCounterMode, with PyTorch's CPU flash attention counted by PyTorch's own attention formula"


def multiply_adds_g(model, image_size: int) -> float:
    """G multiply-adds (fvcore's unit, the one papers' efficiency tables print) of one ``predict`` on one image:
    ``flops_g`` counts two FLOPs per multiply-add (attention included, by PyTorch's own formula on CPU)."""
    return flops_g(model, image_size, next(model.parameters()).device) / 2


def architecture_model(setting: Setting, model: str, profile: str = "paper", image_size: int | None = None):
    """``(model, config)``: ``model`` as the paper's ``profile`` recipe builds it, with random weights (counts and
    structure do not depend on the weights, so no download is needed), in eval mode on ``setting.device``."""
    from adlib.models import create_model

    recipe = setting.paper.recipes.get((model, profile))
    config = {**(recipe.model if recipe else {}), "pretrained": False}
    if image_size is not None:
        config["image_size"] = int(image_size)
    return create_model(model, **config).to(setting.device).eval(), config


def architecture_rows(setting: Setting, model: str | None = None, profile: str = "paper",
                      not_measured: Mapping[str, str] | None = None) -> pd.DataFrame:
    """An efficiency table's counts for a method's paper architecture (``architecture_model``) as long-format
    model rows: ``params_m`` (millions, a frozen encoder included) and ``flops_g`` (G multiply-adds at the
    recipe's image size, ``multiply_adds_g``). ``not_measured`` maps further metrics (training memory, hours) to
    the reason they are not measured here: NaN rows with that reason in ``note``."""
    model = model or setting.paper.method
    net, config = architecture_model(setting, model, profile)
    size = int(config.get("image_size") or setting.image_size)
    values = {"params_m": (count_params(net) / 1e6, ""), "flops_g": (multiply_adds_g(net, size), ATTENTION_NOTE),
              **{metric: (float("nan"), why) for metric, why in (not_measured or {}).items()}}
    return model_rows(setting, setting.paper.methods.get(model, model), values, backbone=config.get("backbone", ""),
                      image_size=size)


def model_rows(setting: Setting, method: str, values: Mapping[str, tuple[float, str]], backbone: str = "",
               image_size: int | None = None, data: str = "architecture only (random weights)") -> pd.DataFrame:
    """Long-format ``level="model"`` rows of one method, one per ``metric: (value, note)``, for numbers measured
    on a built model rather than on test images (counts, properties)."""
    base = {"dataset": "", "method": method, "setting": "default", "level": "model", "backbone": backbone,
            "data": data, "seed": setting.seed, "protocol": "", "class_setting": "",
            "image_size": int(image_size or setting.image_size), "scope": "mean"}
    return pd.DataFrame([{**base, "metric": metric, "value": float(value), "note": note}
                         for metric, (value, note) in values.items()])


@dataclass(frozen=True)
class StructureProbe:
    """How to read one model's structure (a paper file declares one per compared method):
    ``decoded(model, features)``: what its decoder gives from the encoder features (a list of tensors, empty for a
    model without a decoder); ``parts(model)``: (fuser modules, decoder modules), the trainable modules between
    encoder and decoder and the decoder itself; ``augments(config)``: whether training augments images or
    features."""

    decoded: Callable[[Any, Any], Sequence]
    parts: Callable[[Any], tuple[Sequence, Sequence]]
    augments: Callable[[Any], bool] = lambda config: False


def _grids(tensors) -> set[tuple[int, ...]]:
    """The spatial grids of a list of (B, C, h, w) maps or (B, L, C) token tensors."""
    return {tuple(t.shape[-2:]) if t.dim() == 4 else (int(t.shape[1]),) for t in tensors}


STRUCTURE_RULES = {
    "pyramidal_encoder": "encoder is a CNN whose taps have more than one stride",
    "heavy_fuser": "fuser holds more than {share:.0%} of the trained parameters",
    "pyramidal_decoder": "decoder outputs on more than one grid",
    "multi_resolution_features": "encoder taps at more than one stride",
    "image_feature_augmentation": "training augments images or features (config)",
    "category_aug": "training augments images or features (config)",
    "category_emb": "no gradient training (memory bank)",
    "category_rec": "trained to reconstruct the encoder's features",
}


def structure_rows(setting: Setting, probes: Mapping[str, StructureProbe], image_size: int = 128,
                   heavy_share: float = 0.1) -> pd.DataFrame:
    """Architecture properties (1 yes, 0 no; ``STRUCTURE_RULES`` says how each is derived, and goes to ``note``)
    of each probed method's paper architecture (``architecture_model`` at ``image_size``: the structure does not
    depend on the weights or the size), as long-format model rows. "Heavy" fuser: more than ``heavy_share`` of
    the trained parameters (fuser + decoder)."""
    import torch

    def count(modules) -> int:
        return sum(count_params(m) for m in modules if m is not None)

    frames = []
    for name, probe in probes.items():
        torch.manual_seed(0)
        model, config = architecture_model(setting, name, image_size=image_size)
        encoder = model.tokenizer
        with torch.no_grad():
            features = model.extract(torch.zeros(1, 3, image_size, image_size, device=setting.device))
            decoded = probe.decoded(model, features)
        fusers, decoders = probe.parts(model)
        fuser, decoder = count(fusers), count(decoders)
        augments = bool(probe.augments(model.config))
        cells = {"pyramidal_encoder": encoder.kind == "cnn" and len(set(encoder.strides)) > 1,
                 "heavy_fuser": fuser > heavy_share * max(fuser + decoder, 1),
                 "pyramidal_decoder": len(_grids(decoded)) > 1,
                 "multi_resolution_features": len(set(encoder.strides)) > 1,
                 "image_feature_augmentation": augments, "category_aug": augments,
                 "category_emb": not model.trainable, "category_rec": model.trainable}
        frames.append(model_rows(setting, setting.paper.methods.get(name, name),
                                 {m: (float(v), STRUCTURE_RULES[m].format(share=heavy_share)) for m, v in cells.items()},
                                 backbone=config.get("backbone", ""), image_size=image_size))
    return pd.concat(frames, ignore_index=True)
