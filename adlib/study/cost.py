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
    hook = getattr(net, "calibration_split", None)
    if callable(hook) and hook() is not None:  # scored with statistics of normal images: random ones here (untimed)
        from adlib import engine

        engine.calibrate(net, [torch.rand(3, size, size) for _ in range(2)], device=setting.device)
    with torch.no_grad():
        if setting.check is None:  # a path check's speed is not a result: no warm-up pass
            net.predict(batch)  # warm-up
        start = time.perf_counter()
        for _ in range(images):
            net.predict(batch)
        seconds = time.perf_counter() - start
    return {"params_m": count_params(net) / 1e6, "flops_g": flops_g(net, size, setting.device), "fps": images / seconds}


def speed_rows(setting: Setting, model: str, variants: Mapping[str, Mapping[str, Any]],
               images: int = 1) -> pd.DataFrame:
    """``speed`` of each variant (label -> overrides) as long model-level rows ("random weights: cost only").
    On a CPU path check, a variant that runs the same code as an earlier one (``grid.same_code_as``) is a row
    with no value and the reason, as in ``run_grid``."""
    from adlib.study.grid import method_name, model_backbone, same_code_as

    size = int(setting.image_size)
    left_out = same_code_as(setting, variants, model)
    rows = []
    for label, overrides in variants.items():
        base = {"dataset": "", "method": method_name(setting, model), "setting": label, "level": "model",
                "backbone": model_backbone(setting, model, overrides), "image_size": size,
                "data": f"one random {size}px image on {setting.device}"}
        if label in left_out:
            rows += [{**base, "metric": metric, "value": float("nan"), "note": left_out[label]}
                     for metric in ("params_m", "flops_g", "fps")]
            continue
        measured = speed(setting, model, images=images, **dict(overrides))
        rows += [{**base, "metric": metric, "value": value, "note": "random weights: cost only"}
                 for metric, value in measured.items()]
    return pd.DataFrame(rows)


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


def augments_in_training(config) -> bool:
    """Image or feature augmentation in training, read from a model config's fields: an ``augmentation`` other
    than "none" (ViTAD), or a feature jitter with a positive scale and probability (UniAD)."""
    return getattr(config, "augmentation", "none") != "none" or (
        getattr(config, "jitter_scale", 0) > 0 and getattr(config, "jitter_prob", 0) > 0)


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


# ------------------------------------------------------------------ architecture counts and decoder timing
# What a paper's cost tables print beyond ``speed``: fvcore-style FLOPs (multiply-adds plus norm estimates),
# parameters per named part, and the time of a decoder against the number of tokens it works on. All of it is
# measured on models built with random weights: none of it depends on the weights.

NORM_FLOPS = {"BatchNorm2d": 2, "LayerNorm": 5, "InstanceNorm2d": 4}  # per element, as fvcore estimates them


def fvcore_flops(model, size: int, forward=None) -> dict[str, float]:
    """fvcore's count of one forward at ``size`` px (one random image), in G: multiply-adds of convolutions and
    matrix products (``FlopCounterMode`` counts 2 per multiply-add), plus fvcore's norm estimates
    (``NORM_FLOPS`` per element: BatchNorm in eval with affine 2, LayerNorm 5, InstanceNorm without affine 4).
    A module with a ``scan_macs(input)`` method (a selective scan, a custom op neither counter sees) gives its
    own multiply-adds, reported apart as ``scan_gmacs``. ``forward`` maps the image batch to the model's output
    (default ``model.predict``)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    count_cpu_attention()
    norms, scan, hooks = [0], [0], []

    def norm_hook(per):
        return lambda mod, inp, out: norms.__setitem__(0, norms[0] + inp[0].numel() * per)

    for mod in model.modules():
        per = NORM_FLOPS.get(type(mod).__name__) if type(mod).__module__.startswith("torch.nn") else None
        if per:
            hooks.append(mod.register_forward_hook(norm_hook(per)))
        if callable(getattr(mod, "scan_macs", None)):
            hooks.append(mod.register_forward_hook(lambda mod, inp, out: scan.__setitem__(0, scan[0] + mod.scan_macs(inp[0]))))
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            (forward or model.predict)(torch.rand(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    macs = counter.get_total_flops() / 2e9
    return {"fvcore_g": macs + norms[0] / 1e9, "conv_matmul_gmacs": macs, "norms_g": norms[0] / 1e9,
            "scan_gmacs": scan[0] / 1e9}


def parameter_parts(model, parts: dict[str, str]) -> dict[str, float]:
    """Parameters in M of each named part (``{label: attribute of the model}``) and their ``total``."""
    counts = {label: count_params(getattr(model, attr)) / 1e6 for label, attr in parts.items()}
    return {**counts, "total": sum(counts.values())}


def variant_cost_rows(model_name: str, variants: dict[str, dict], parts: dict[str, str], dataset: str,
                      method: str, forward: str | None = None) -> pd.DataFrame:
    """Long rows (level "model") of each variant's architecture, built with random weights (seed 0): ``params_m``
    and ``flops_g`` (``fvcore_flops``), the parameters of each part (``params_m_<part>``) and ``scan_gmacs``.
    ``variants`` maps a row label to config overrides of ``model_name``; ``forward`` names a method of the model
    that takes the image batch (default ``predict``; e.g. a forward without scoring). A model with
    ``counted_index_parameters(size)`` (index tensors its reference code registers as parameters, which the
    reference's counts include) adds them to ``params_m`` and reports them as ``params_m_scan_index``."""
    import torch

    from adlib.models import create_model

    rows = []
    for label, overrides in variants.items():
        torch.manual_seed(0)
        model = create_model(model_name, **overrides).eval()
        size = int(overrides.get("image_size", getattr(model.config, "image_size", 256)))
        params = parameter_parts(model, parts)
        flops = fvcore_flops(model, size, getattr(model, forward) if forward else None)
        index = model.counted_index_parameters(size) / 1e6 if hasattr(model, "counted_index_parameters") else 0.0
        base = {"dataset": dataset, "method": method, "setting": label, "level": "model",
                "backbone": model.config.backbone, "data": f"architecture only (random weights), {size}px",
                "seed": 0, "protocol": "", "image_size": size, "note": ""}
        values = {"params_m": params["total"] + index, "flops_g": flops["fvcore_g"],
                  **{f"params_m_{part}": params[part] for part in parts}}
        if hasattr(model, "counted_index_parameters"):
            values["params_m_scan_index"] = index
        values["scan_gmacs"] = flops["scan_gmacs"]
        rows += [{**base, "metric": metric, "value": value} for metric, value in values.items()]
        del model
    return pd.DataFrame(rows)


def fit_exponent(tokens, seconds) -> float:
    """Least-squares slope p of log(seconds) against log(tokens): time ~ tokens^p."""
    import numpy as np

    return float(np.polyfit(np.log(np.asarray(tokens, float)), np.log(np.asarray(seconds, float)), 1)[0])


def attention_block(dim: int):
    """A pre-norm self-attention block (one head per 32 channels): the quadratic reference of a timing."""
    import torch

    class Attention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = torch.nn.LayerNorm(dim)
            self.attn = torch.nn.MultiheadAttention(dim, max(1, dim // 32), batch_first=True)

        def forward(self, x):
            y = self.norm(x)
            return x + self.attn(y, y, y, need_weights=False)[0]

    return Attention()


def cpu_seconds(fn, repeats: int = 1) -> float:
    """Median CPU seconds of ``fn`` after one warm-up call (this process's time only: other processes on a
    shared machine do not count, as they would in wall time)."""
    import statistics

    fn()  # warm-up (e.g. scan orders are built and cached on the first call at a size)
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def decoder_timing(model_name: str, sizes, seeds, repeats: int = 1, method: str | None = None,
                   **config) -> pd.DataFrame:
    """Forward CPU time (one thread, batch 1, no gradient) of a model's decoder at each input size, beside a
    same-width self-attention block (``attention_block``) over the decoder's finest tokens, once per seed (fresh
    random weights and inputs: each seed repeats the whole measurement). The model gives its workload by
    ``decoder_workload(size)``: a callable running the decoder, the tokens it works on, and the finest map's
    (tokens, channels). Long rows (the input size is in the label "size=<px>"): per (seed, size) ``seconds``
    and ``tokens``, and per seed the fitted ``exponent`` of time ~ tokens^p (setting "default"); the decoder's
    rows are labelled ``method`` (default: the model's registry name), the reference's "attention"."""
    import torch

    from adlib.models import create_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread by CPU time: neither scheduling nor other processes bend the fit
    rows = []
    try:
        for seed in seeds:
            torch.manual_seed(seed)
            model = create_model(model_name, **config).eval()
            backbone = model.config.backbone
            base = {"dataset": "decoder timing", "level": "model", "backbone": backbone, "seed": seed,
                    "protocol": "", "note": "", "data": f"{backbone} widths {list(model.dims)}, depths "
                                                        f"{list(model.config.depths)}, batch 1, CPU"}
            attention = attention_block(model.dims[-1]).eval()
            name = method or model.name
            measured = {name: ([], []), "attention": ([], [])}
            for size in sizes:
                run, tokens, (finest, width) = model.decoder_workload(int(size))
                x = torch.randn(1, finest, width)
                with torch.no_grad():
                    timed = ((name, tokens, cpu_seconds(run, repeats)),
                             ("attention", finest, cpu_seconds(lambda: attention(x), repeats)))
                for who, n, seconds in timed:
                    measured[who][0].append(n)
                    measured[who][1].append(seconds)
                    rows += [{**base, "method": who, "setting": f"size={size}", "metric": m, "value": float(v)}
                             for m, v in (("seconds", seconds), ("tokens", n))]
            rows += [{**base, "method": who, "setting": "default", "metric": "exponent",
                      "value": fit_exponent(n, seconds)} for who, (n, seconds) in measured.items()]
    finally:
        torch.set_num_threads(threads)
    return pd.DataFrame(rows)
