"""UniAD: a unified model for multi-class anomaly detection (You et al., NeurIPS 2022).

1. a frozen EfficientNet gives features at several stages; the MFCN neck resizes each to stride 16
   (bilinear, align_corners=True) and concatenates them: EfficientNet-B4 stages at strides 2, 4, 8, 16 give
   24 + 32 + 56 + 160 = 272 channels on a 14 x 14 grid at 224 px;
2. the tokens are projected to ``hidden_dim`` and, during training only, perturbed by feature jitter:
   Gaussian noise scaled by ``jitter_scale`` x ||token|| / C, with probability ``jitter_prob``;
3. a transformer encoder (post-norm, learned position embedding) and a layer-wise query decoder: every
   decoder layer has its own learned queries (one per position), which attend to the encoder output and
   then to the previous decoder layer's output (the encoder output for the first layer);
4. neighbour-masked attention: every query is kept from attending to the ``neighbor_size`` window around
   its own position (7 x 7, clipped at the borders), so that a token cannot simply copy itself or its
   neighbours (the "identical shortcut"); in the encoder and in both decoder attentions;
5. the reconstruction is projected back to the feature width; training minimises the MSE to the clean
   (un-jittered) features; the map is the per-position L2 reconstruction error, upsampled bilinearly to the
   image; the image score is the maximum of the map average-pooled over 16 x 16 windows (stride 1).

Checked against the official code (zhiyuanyou/UniAD a5b9d9d: ``models/reconstructions/uniad.py``,
``models/necks/mfcn.py``, ``utils/eval_helper.py``; issue 22): ``tests/fixtures/parity/uniad.pt`` holds their
ResNet backbone (at 1/64 width), MFCN and UniAD (hidden 16, 2 + 2 layers) with their init and outputs; every stage
(encoder, neck, reconstruction, map, score) equals theirs within 1e-5 (``results/faithfulness/``). One bug, fixed:
their EfficientNet-B4 port computes its TF "same" padding for 380 px and keeps it at 224 px (one stride-2 5 x 5
conv pads (2, 2), timm's per-input SAME (1, 2)); ``static_padding_size="auto"`` now pads as theirs for
efficientnet_b4 (``tests/test_parity_uniad.py`` compares the padding table of their code; the B4 features
themselves cannot be compared: B4 does not shrink to a fixture and its weights cannot be had here)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adlib.models.base import AnomalyModel, Prediction
from adlib.models.common import check_choice, gaussian_blur


@dataclass
class UniADConfig:
    """UniAD settings. The official MVTec AD config (zhiyuanyou/UniAD ``experiments/MVTec-AD/config.yaml``)
    gives the defaults, except the backbone (the offline EfficientNet-Lite0; the paper recipe sets B4)."""

    backbone: str = "efficientnet_lite0"  # paper: EfficientNet-B4 ("efficientnet_b4")
    # Backbone taps fused by the neck; None = every stage up to stride 16, timm feature_info 0-3 (paper:
    # B4 stages at strides 2, 4, 8, 16, 272 channels).
    layers: tuple | None = None
    pretrained: bool = True
    image_size: int | tuple[int, int] = 224  # paper: 224 x 224
    # timm keyword arguments that change the encoder's shape (a ResNet's ``channels``), with pretrained=False
    # and the encoder's weights from a checkpoint (``authors_config`` sets them). None: timm's own.
    backbone_kwargs: dict | None = None
    # The encoder's TensorFlow "same" padding of its stride-2 convs. UniAD's EfficientNet (lukemelas' port,
    # Conv2dStaticSamePadding) computes it once for the network's default resolution, 380 px for B4, and keeps
    # it at 224 px: one 5 x 5 stride-2 conv (56 -> 28 px) then pads (2, 2) where TF SAME at 224 px pads (1, 2).
    # "auto": 380 for efficientnet_b4 (UniAD's code), else the input's size (timm); an int: padding computed
    # for that size; None: the input's size (TF SAME, timm).
    static_padding_size: int | str | None = "auto"
    feature_stride: int = 16  # the neck resizes every tap to this stride (paper: 16)
    hidden_dim: int = 256  # transformer width (paper: 256)
    num_heads: int = 8  # (paper: 8)
    num_encoder_layers: int = 4  # (paper: 4)
    num_decoder_layers: int = 4  # (paper: 4)
    dim_feedforward: int = 1024  # (paper: 1024)
    dropout: float = 0.1  # (official: 0.1)
    neighbor_size: tuple[int, int] = (7, 7)  # masked neighbourhood (paper: 7 x 7)
    # Where the neighbour mask applies: (encoder self-attention, decoder query-to-encoder attention,
    # decoder attention to the previous layer). Official: all three.
    neighbor_mask: tuple[bool, bool, bool] = (True, True, True)
    jitter_scale: float = 20.0  # feature jitter scale alpha (official: 20)
    jitter_prob: float = 1.0  # probability that a training batch is jittered (official: 1)
    pos_embed: str = "learned"  # "learned" (official MVTec config) or "sine"
    pool_size: int = 16  # image score: max of the map average-pooled over pool_size^2 windows (official: 16)
    # Gaussian sigma of the map in image pixels. The official evaluation uses the raw upsampled map: 0.
    smoothing_sigma: float = 0.0
    # Normalise each fused token over channels (LayerNorm without affine) before it is jittered and
    # reconstructed, so input and target are on a unit scale whatever the backbone (official: "none").
    # Lite0 on bottle, 40 images, 200 steps: pixel AUROC 98.7 with "layernorm", 97.6 with "none".
    token_norm: str = "none"


def window_mask(h: int, w: int, size: tuple[int, int]) -> torch.Tensor:
    """(h*w, h*w) boolean attention mask, True where attention is *not* allowed: every query position
    is kept from attending to the ``size`` window around it (clipped at the borders), as UniAD's
    ``generate_mask``."""
    hm, wm = size
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    near_r = (rows[:, None] - rows[None, :]).abs() <= hm // 2
    near_c = (cols[:, None] - cols[None, :]).abs() <= wm // 2
    return near_r & near_c


class LearnedPositionEmbedding(nn.Module):
    """Row and column embeddings of hidden/2 each, concatenated (column first), uniform init."""

    def __init__(self, h: int, w: int, dim: int) -> None:
        super().__init__()
        self.h, self.w = h, w
        self.row = nn.Embedding(h, dim // 2)
        self.col = nn.Embedding(w, dim - dim // 2)
        nn.init.uniform_(self.row.weight)
        nn.init.uniform_(self.col.weight)

    def forward(self) -> torch.Tensor:
        col = self.col.weight[None].expand(self.h, -1, -1)
        row = self.row.weight[:, None].expand(-1, self.w, -1)
        return torch.cat([col, row], dim=-1).flatten(0, 1)  # (h*w, dim)


class SinePositionEmbedding(nn.Module):
    """DETR's normalised sine embedding on the grid (UniAD's "sine" option)."""

    def __init__(self, h: int, w: int, dim: int, temperature: float = 10000.0) -> None:
        super().__init__()
        feats = dim // 2
        scale = 2 * torch.pi
        y = torch.arange(1, h + 1, dtype=torch.float32)[:, None].expand(h, w) / (h + 1e-6) * scale
        x = torch.arange(1, w + 1, dtype=torch.float32)[None, :].expand(h, w) / (w + 1e-6) * scale
        dim_t = temperature ** (2 * (torch.arange(feats) // 2) / feats)
        px, py = x[..., None] / dim_t, y[..., None] / dim_t
        px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=3).flatten(2)
        py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=3).flatten(2)
        self.register_buffer("pos", torch.cat((py, px), dim=2).flatten(0, 1), persistent=False)

    def forward(self) -> torch.Tensor:
        return self.pos


POSITION_EMBEDDINGS = {"learned": LearnedPositionEmbedding, "sine": SinePositionEmbedding}


class EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer; the position embedding is added to queries and keys only."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q = x + pos
        x = self.norm1(x + self.drop1(self.attn(q, q, x, attn_mask=mask, need_weights=False)[0]))
        return self.norm2(x + self.drop2(self.ffn(x)))


class QueryDecoderLayer(nn.Module):
    """UniAD's layer-wise query decoder layer: its own learned queries attend to the encoder output
    (``memory``), then to the previous decoder layer's output (``previous``), then a feed-forward block."""

    def __init__(self, tokens: int, dim: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.query = nn.Embedding(tokens, dim)
        self.attn_memory = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.attn_previous = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2, self.drop3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, previous: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor,
                mask_memory: torch.Tensor | None, mask_previous: torch.Tensor | None) -> torch.Tensor:
        q = self.query.weight[None].expand(memory.shape[0], -1, -1)
        out = self.attn_memory(q + pos, memory + pos, memory, attn_mask=mask_memory, need_weights=False)[0]
        q = self.norm1(q + self.drop1(out))
        out = self.attn_previous(q + pos, previous + pos, previous, attn_mask=mask_previous, need_weights=False)[0]
        q = self.norm2(q + self.drop2(out))
        return self.norm3(q + self.drop3(self.ffn(q)))


def _init_weights(module: nn.Module) -> None:
    """As the official ``initializer: xavier_uniform``: Xavier-uniform weights and zero biases for every
    Linear (attention output projections included); embeddings keep their own init."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _static_size(config: UniADConfig) -> int | None:
    size = config.static_padding_size
    if size == "auto":
        return 380 if config.backbone == "efficientnet_b4" else None
    if size is not None and (isinstance(size, str) or size < 1):
        raise ValueError(f"static_padding_size={size!r}: expected 'auto', None or a size in pixels")
    return size


def _static_forward(conv: nn.Conv2d, pads: tuple[int, int, int, int], x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(F.pad(x, pads), conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


def _fix_same_padding(encoder: nn.Module, size: int | None) -> list[tuple]:
    """Give every TF-"same" conv of ``encoder`` that pads at run time (timm's Conv2dSame: the stride-2 ones) the
    fixed padding it gets at a ``size`` x ``size`` input, as lukemelas' Conv2dStaticSamePadding does; returns
    (module name, input size at ``size``, padding) per conv. None: nothing changes (padding per input)."""
    if size is None:
        return []
    from timm.layers import Conv2dSame
    from timm.layers.padding import pad_same_arg

    convs = {name: m for name, m in encoder.named_modules() if isinstance(m, Conv2dSame)}
    seen: dict[str, tuple[int, int]] = {}
    def record(name: str, args) -> None:  # a pre-hook must return None (a value would replace the input)
        seen.setdefault(name, tuple(args[0].shape[-2:]))

    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: record(name, args)) for name, m in convs.items()]
    try:
        with torch.no_grad():
            encoder(torch.zeros(1, 3, size, size, device=next(encoder.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    table = []
    for name, hw in seen.items():
        conv = convs[name]
        pads = tuple(pad_same_arg(list(hw), list(conv.kernel_size), list(conv.stride), list(conv.dilation)))
        conv.forward = partial(_static_forward, conv, pads)
        table.append((name, hw, pads))
    return table


def _image_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class UniAD(AnomalyModel):
    """UniAD over a frozen EfficientNet. ``tokenizer`` may be given (tests); otherwise built from the config."""

    name = "uniad"
    trainable = True

    def __init__(self, config: UniADConfig | None = None, tokenizer: nn.Module | None = None) -> None:
        config = config or UniADConfig()
        check_choice("pos_embed", config.pos_embed, POSITION_EMBEDDINGS)
        check_choice("token_norm", config.token_norm, ("none", "layernorm"))
        if config.hidden_dim % config.num_heads:
            raise ValueError(f"hidden_dim={config.hidden_dim} must be a multiple of num_heads={config.num_heads}")
        if config.num_encoder_layers < 1 or config.num_decoder_layers < 1:
            raise ValueError(f"num_encoder_layers={config.num_encoder_layers}, num_decoder_layers="
                             f"{config.num_decoder_layers}: need at least one of each")
        if config.pool_size < 1 or not 0 <= config.jitter_prob <= 1:
            raise ValueError(f"pool_size={config.pool_size} (>= 1), jitter_prob={config.jitter_prob} (in [0, 1])")
        super().__init__(config)
        if tokenizer is None:
            from adlib import backbones

            layers = config.layers if config.layers is not None else (0, 1, 2, 3)
            tokenizer = backbones.create(config.backbone, layers=layers, pretrained=config.pretrained,
                                         timm_kwargs=config.backbone_kwargs)
        self.tokenizer = tokenizer
        for p in self.tokenizer.parameters():
            p.requires_grad_(False)
        self.tokenizer.eval()
        self.image_hw = _image_hw(config.image_size)
        self.static_paddings = _fix_same_padding(self.tokenizer, _static_size(config))
        stride = config.feature_stride
        if self.image_hw[0] % stride or self.image_hw[1] % stride:
            raise ValueError(f"image_size={config.image_size} must be a multiple of feature_stride={stride}")
        self.grid = (self.image_hw[0] // stride, self.image_hw[1] // stride)
        self.channels = self._probe_channels()
        h, w = self.grid
        dim = config.hidden_dim
        self.input_proj = nn.Linear(self.channels, dim)
        self.output_proj = nn.Linear(dim, self.channels)
        self.encoder = nn.ModuleList(EncoderLayer(dim, config.num_heads, config.dim_feedforward, config.dropout)
                                     for _ in range(config.num_encoder_layers))
        self.decoder = nn.ModuleList(QueryDecoderLayer(h * w, dim, config.num_heads, config.dim_feedforward, config.dropout)
                                     for _ in range(config.num_decoder_layers))
        self.decoder_norm = nn.LayerNorm(dim)
        for module in (self.input_proj, self.output_proj, self.encoder, self.decoder):  # not the backbone
            _init_weights(module)
        self.pos_embed = POSITION_EMBEDDINGS[config.pos_embed](h, w, dim)
        with torch.device("cpu"):  # a model may be built on the meta device (shapes only)
            mask = window_mask(h, w, tuple(config.neighbor_size))
        if any(config.neighbor_mask) and bool(mask.all(dim=1).any()):
            raise ValueError(f"neighbor_size={tuple(config.neighbor_size)} hides every position of the {h} x {w} "
                             f"feature grid from some query; use a smaller window or a larger image_size")
        self.register_buffer("mask", mask, persistent=False)

    def _probe_channels(self) -> int:
        probe = torch.zeros(1, 3, *self.image_hw, device=next(self.tokenizer.parameters()).device)
        try:
            with torch.no_grad():
                return int(self.fuse(list(self.tokenizer(probe))).shape[1])
        except Exception as error:
            raise ValueError(f"image_size={self.config.image_size} does not work with backbone "
                             f"{self.config.backbone!r}: {error}") from error

    # ---- engine interface

    def feature_key(self) -> str | None:
        return self.tokenizer_key(f"fused_stride={self.config.feature_stride}")

    def fuse(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The MFCN neck: every tap resized to the stride-16 grid (bilinear, align_corners=True), concatenated."""
        return torch.cat([F.interpolate(f, size=self.grid, mode="bilinear", align_corners=True) if f.shape[-2:] != self.grid
                          else f for f in features], dim=1)

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen fused features (B, C, h, w) on the stride-16 grid."""
        if tuple(images.shape[-2:]) != self.image_hw:
            raise ValueError(f"UniAD was built for {self.image_hw} inputs, got {tuple(images.shape[-2:])}; "
                             f"resize the data to image_size={self.config.image_size}")
        return self.fuse(list(self.tokenizer(images)))

    def targets(self, features: torch.Tensor) -> torch.Tensor:
        """What is reconstructed: the fused features, per token LayerNorm'd when ``token_norm`` says so."""
        if self.config.token_norm == "layernorm":
            return F.layer_norm(features.transpose(1, 3), features.shape[1:2]).transpose(1, 3)
        return features

    def jitter(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feature jitter (training only): noise ~ N(0, 1) * jitter_scale * ||token|| / C per token."""
        if not self.training or self.config.jitter_scale <= 0 or float(torch.rand(())) > self.config.jitter_prob:
            return tokens
        scale = tokens.norm(dim=-1, keepdim=True) / tokens.shape[-1] * self.config.jitter_scale
        return tokens + torch.randn_like(tokens) * scale

    def reconstruct(self, features: torch.Tensor) -> torch.Tensor:
        """Reconstructed features (B, C, h, w) from the fused features (jittered first when training)."""
        b, c, h, w = features.shape
        tokens = self.jitter(features.flatten(2).transpose(1, 2))  # (B, L, C)
        x = self.input_proj(tokens)
        pos = self.pos_embed()[None]
        masks = [self.mask if use else None for use in self.config.neighbor_mask]
        for layer in self.encoder:
            x = layer(x, pos, masks[0])
        memory, out = x, x
        for layer in self.decoder:
            out = layer(out, memory, pos, masks[1], masks[2])
        out = self.output_proj(self.decoder_norm(out))
        return out.transpose(1, 2).reshape(b, c, h, w)

    def loss(self, features: torch.Tensor) -> torch.Tensor:
        target = self.targets(features)
        return F.mse_loss(self.reconstruct(target), target)

    @torch.no_grad()
    def explain(self, images: torch.Tensor) -> dict:
        """``features`` (fused, normalised per ``token_norm``), ``reconstruction``, ``error`` (B, h, w) L2 error,
        ``map`` (B, H, W) and ``scores`` (B,)."""
        features = self.targets(self.extract(images))
        rec = self.reconstruct(features)
        error = (rec - features).pow(2).sum(dim=1).sqrt()
        amap = F.interpolate(error[:, None], size=self.image_hw, mode="bilinear", align_corners=True)[:, 0]
        amap = gaussian_blur(amap, self.config.smoothing_sigma)
        k = min(self.config.pool_size, *self.image_hw)
        scores = F.avg_pool2d(amap[:, None], k, stride=1).flatten(1).amax(dim=1)
        return {"features": features, "reconstruction": rec, "error": error, "map": amap, "scores": scores}

    def predict(self, images: torch.Tensor) -> Prediction:
        out = self.explain(images)
        return Prediction(out["map"], out["scores"])


# ------------------------------------------------------------------------- the authors' checkpoints (official)
# zhiyuanyou/UniAD saves the whole ModelHelper (backbone, neck, reconstruction) under "state_dict". Its MVTec
# backbone is lukemelas' EfficientNet-B4 port holding TensorFlow's AutoAugment ImageNet weights (frozen), which
# adlib takes from timm (tf_efficientnet_b4.aa_in1k, the same weights, pretrained=True): the checkpoint's
# "backbone." keys are then ignored. Their ResNet backbone (same names as timm's) loads from the checkpoint.

_DECODER_NAMES = {"query.": "learned_embed.", "attn_memory.": "self_attn.", "attn_previous.": "multihead_attn.",
                  "ffn.0.": "linear1.", "ffn.3.": "linear2."}
_ENCODER_NAMES = {"attn.": "self_attn.", "ffn.0.": "linear1.", "ffn.3.": "linear2."}


def _rename(rest: str, table: dict[str, str]) -> str:
    return next((new + rest[len(old):] for old, new in table.items() if rest.startswith(old)), rest)


def _authors_key(ours: str) -> str | None:
    parts = ours.split(".")
    if ours.startswith("tokenizer.model."):
        return "backbone." + ours[len("tokenizer.model."):]
    if parts[0] in ("input_proj", "output_proj"):
        return "reconstruction." + ours
    if ours.startswith("pos_embed."):
        return {"pos_embed.row.weight": "reconstruction.pos_embed.row_embed.weight",
                "pos_embed.col.weight": "reconstruction.pos_embed.col_embed.weight"}.get(ours)
    if parts[0] == "encoder":
        return f"reconstruction.transformer.encoder.layers.{parts[1]}." + _rename(".".join(parts[2:]), _ENCODER_NAMES)
    if parts[0] == "decoder":
        return f"reconstruction.transformer.decoder.layers.{parts[1]}." + _rename(".".join(parts[2:]), _DECODER_NAMES)
    if parts[0] == "decoder_norm":
        return "reconstruction.transformer.decoder.norm." + parts[1]
    return None


def authors_key_map(config: UniADConfig) -> dict[str, str]:
    """adlib key -> the official key (``reconstruction.*``; ``backbone.*`` when the encoder comes from the
    checkpoint, ``pretrained=False``)."""
    from dataclasses import replace

    with torch.device("meta"):
        own = UniAD(replace(config, pretrained=False)).state_dict()
    key_map = {ours: _authors_key(ours) for ours in own if not config.pretrained or not ours.startswith("tokenizer.")}
    unknown = [k for k, v in key_map.items() if v is None]
    if unknown:
        raise ValueError(f"adlib keys without an official counterpart: {unknown[:5]}")
    return key_map


def authors_ignored(config: UniADConfig) -> set[str]:
    """Official keys adlib does not hold: with ``pretrained=True`` the whole ``backbone.`` (a prefix: the
    frozen ImageNet encoder, loaded from timm); else the encoder's stages after the last tap (their ResNet
    runs layer4, MFCN never reads it) and its classifier."""
    if config.pretrained:
        return {"backbone."}
    import timm

    from adlib import backbones

    with torch.device("meta"):
        full = timm.create_model(backbones.SPECS[config.backbone].timm_id, pretrained=False,
                                 **(config.backbone_kwargs or {}))
        own = UniAD(config).tokenizer.model.state_dict()
    return {f"backbone.{k}" for k in full.state_dict() if k not in own}


def authors_config(shapes, **config) -> UniADConfig:
    """Transformer sizes, grid (hence image size) and position embedding of an official checkpoint; a ResNet
    backbone in it (their ``models/backbones/resnet.py``) is loaded from it (``pretrained=False``)."""
    from adlib.models import model_config

    prefix = "reconstruction.transformer."

    def count(part: str) -> int:
        return len({k[len(prefix + part):].split(".")[0] for k in shapes if k.startswith(prefix + part)})

    derived: dict[str, Any] = {}
    if "reconstruction.input_proj.weight" in shapes:
        derived["hidden_dim"] = shapes["reconstruction.input_proj.weight"][0]
        derived["num_encoder_layers"] = count("encoder.layers.")
        derived["num_decoder_layers"] = count("decoder.layers.")
        derived["dim_feedforward"] = shapes[prefix + "encoder.layers.0.linear1.weight"][0]
    if "reconstruction.pos_embed.row_embed.weight" in shapes:
        h = shapes["reconstruction.pos_embed.row_embed.weight"][0]
        w = shapes["reconstruction.pos_embed.col_embed.weight"][0]
        derived.update(pos_embed="learned", image_size=(16 * h, 16 * w) if h != w else 16 * h)
    if "backbone.layer1.0.conv3.weight" in shapes:  # their ResNet (Bottleneck) backbone
        outs = tuple(shapes[f"backbone.layer{i}.0.conv3.weight"][0] for i in (1, 2, 3))
        ratio = shapes["backbone.layer1.0.conv1.weight"][0] / outs[0]
        derived.update(backbone="wide_resnet50" if ratio == 0.5 else "resnet50", pretrained=False)
        if outs != (256, 512, 1024):
            derived["backbone_kwargs"] = {"channels": tuple(c // 4 for c in outs) + (outs[-1] // 2,)}
    derived.update(config)
    return model_config("uniad", None, **derived)


def authors_stages(model: UniAD, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Encoder features, the MFCN output, the reconstruction, the map (the official ``pred``) and the score."""
    feats = list(model.tokenizer(images))
    out = model.explain(images)
    stages = {f"encoder_{i + 1}": f for i, f in enumerate(feats)}
    stages.update(neck=out["features"], reconstruction=out["reconstruction"], map=out["map"], score=out["scores"])
    stages["loss"] = model.loss(model.extract(images)).reshape(1)  # FeatureMSELoss, eval mode (no jitter)
    return stages
