"""VarAD: high-resolution anomaly detection by visual autoregressive token prediction (Eq. 1-10).

Pipeline, one hierarchy h at a time (the paper's notation):

1. a frozen tokenizer (``adlib.backbones``) gives tokens F^h (B, C_h, h_h, w_h);
2. a per-hierarchy adapter with a residual connection gives F^h_hat = phi_h(F^h) + F^h (Eq. 1);
3. multi-directional scanning (``adlib.scans.varad_directions``) reads F^h_hat as K sequences (Eq. 2);
4. a Mamba predictor sees [BOS_1..BOS_M, v_1..v_L] and its last M outputs are dropped, so output l predicts
   v_l from v_1..v_{l-M} only, with M = m * span (span = row length for row-spanned sequences, column length
   for column-spanned ones) (Eq. 6-7);
5. predictions are scanned back to the grid and averaged over directions (Eq. 8); the squared L2 error per
   token is the hierarchy's map, maps are upsampled to the image and summed over hierarchies (Eq. 9);
   training minimises it on normal images (Eq. 10). With ``error="mahalanobis"`` (the smoke recipe) the map
   scores each token's residual F_bar - F_hat by its whitened norm instead (below); training is unchanged.

Every choice the paper leaves open is a field of ``VarADConfig`` whose comment says so. The measurements
behind the defaults are printed by the benchmarks named here (smoke profile: EfficientNet-Lite0 strides 8 and
16, CPU); no number is typed into this text.

Earlier choices (issues 4 and 10), e.g. ``python benchmarks/varad_variants.py --categories capsule washer
--variant recipe --variant adapted "target='adapted'" --variant ln "token_norm='channel'"``:

- ``target="detached"``: with the paper-literal target (the adapter output, gradient flowing into it) the loss
  has the trivial minimiser phi(F) = -F and the adapted tokens shrink towards it; the stopped target does not.
- ``token_norm="layernorm"``: raw EfficientNet tokens train badly (their scales differ by hierarchy and
  channel); per-channel standardisation scored below LayerNorm.
- the smoke recipe trains at batch 1 (``adlib.papers.varad``): at batch 4 the 24-40 images of a synthetic
  category gave too few optimiser steps and Eq. 9's map followed how far training got.

Why VarAD missed tiny defects and lit object outlines, and the fix (issue 24). The commands::

    python benchmarks/varad_targets.py --set error="'l2'"    # the targets with Eq. 9's map (before)
    python benchmarks/varad_targets.py                       # the targets now (add ADLIB_DATA for bottle)
    python benchmarks/varad_diagnose.py --dataset synthetic_hr --categories washer --size 512
    python benchmarks/varad_diagnose.py --categories capsule
    python benchmarks/varad_variants.py --preset issue24 --dataset synthetic_hr --categories washer --size 512 --caps
    python benchmarks/varad_variants.py --preset issue24 --categories capsule --caps

``varad_diagnose.py`` scores one fitted model several ways: each hierarchy's Eq. 9 error, their sum, the sum
divided by channel counts, each hierarchy's whitened residual and their sum, under several smoothings; it prints
pixel max-F1, how often the map peaks in the defect, how much of the good images' top pixels lie on outlines,
and, token by token, how much higher defective and outline tokens score than plain ones. ``varad_variants.py
--preset issue24`` retrains under each other candidate (m, [BOS], token normalisation, the fine hierarchy alone,
PatchCore's features, a 4x longer training, batch 2), each scored both ways. What they show:

- Eq. 9's error is largest on object outlines and texture grain of normal images. A token is predicted from
  tokens at least m rows or columns away; from there the exact place of an edge, or the grain of a stride-8 CNN
  token, is not predictable, so those residuals stay large, and a tiny defect changes its token by less. On
  ``synthetic_hr`` at 512 px the stride-8 hierarchy's L2 map finds part of the defects, the stride-16 one none,
  and Eq. 9's sum, dominated by the coarse hierarchy's larger error (and its 112 channels against 40), loses
  even those; the sum divided by channel counts recovers only a part.
- Not the features: VarAD on exactly the features PatchCore scores (``tokens="patchcore"``: 3 x 3-averaged taps
  on the stride-8 grid) misses the tiny defects under Eq. 9 just as the taps do, while PatchCore finds them on
  those features (``varad_targets.py``'s ``hr`` lines).
- Not m, the [BOS] tokens, the token normalisation, the smoothing or the training budget: under Eq. 9 none of
  them brings the tiny defects out (longer training lowers the loss, the outlines stay ahead).
- The batch-size collapse is the same fault: at batch 2 half the optimiser steps leave larger residuals on the
  outlines, and Eq. 9's max-F1 follows how far training got.
- The fix, ``error="mahalanobis"``: after training, the mean and covariance of the residuals of every token of
  the training images are estimated per hierarchy (``calibrate``; ``adlib.study.run_one`` hands the training
  images to ``engine.fit(..., calibration=)``; an uncalibrated whitened model refuses to score), and a token scores (r - mu)^T Sigma^-1 (r - mu) / C. The directions in which
  normal residuals are large (outlines, grain) weigh less, so outline tokens score lower and defective tokens
  higher relative to plain ones; normal tokens score about 1 in every hierarchy, so no hierarchy swamps another;
  and a model trained for fewer steps is scored against its own, larger, normal residuals. It is a deviation
  from Eq. 9 (a config switch; the paper's ``"l2"`` is the config default and the paper profile's).
- Which of issue 24's targets each map meets, against PatchCore on the same images, is what
  ``varad_targets.py`` prints (before: ``--set error="'l2'"``; after: no option). Where a target stays out of
  reach, ``--set tokens="'patchcore'"`` runs the same targets on PatchCore's features, to tell a tokenizer that
  cannot see the defect from a map that cannot show it; ``--real ROOT CATEGORY`` runs the real-data target on any
  MVTec-layout category (the held-out dataset of issue 24 is not here).

How to use: ``explain(images)`` returns every intermediate quantity; ablations are config overrides, e.g.
``create_model("varad", directions=("row_tl",))``, ``m=3``, ``adapter="resblock"``, ``layers=(1, 2, 3)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from adlib.models.base import AnomalyModel, Prediction
from adlib.models.common import check_choice, gaussian_blur, image_score, local_patch_features

ALL_DIRECTIONS = ("row_tl", "row_br", "col_tr", "col_bl")


@dataclass
class VarADConfig:
    """VarAD settings. Where the paper states a value (Sec. IV.A.2) it is the default; where it is silent the
    default is ours and the comment says so. The backbone default is the offline EfficientNet-Lite0 because
    DINOv2 weights cannot be had offline; the smoke and paper recipes are in ``adlib.papers.varad``."""

    backbone: str = "efficientnet_lite0"
    # Backbone taps (adlib.backbones layer names/indices); None = the backbone's default taps.
    # Paper: DINOv2 ViT-S/14 blocks 4, 8, 12.
    layers: tuple | None = None
    pretrained: bool = True
    # What is predicted. "taps": one hierarchy per tap, on the tap's own grid (the paper; a ViT's taps share
    # one grid, a CNN's do not). "patchcore": one hierarchy of PatchCore's locally aware patch features (every
    # tap averaged over 3 x 3 tokens, resampled to the first tap's grid, concatenated): a diagnostic that runs
    # VarAD on exactly the features PatchCore scores (benchmarks/varad_diagnose.py).
    tokens: str = "taps"
    # Square side or (H, W). VarAD is built for one input size: the [BOS] tokens are M x C per direction.
    image_size: int | tuple[int, int] = 256
    # Feature adapter (Sec. III.C.1, Fig. 4): a name from ADAPTERS. Paper default: "linear".
    adapter: str = "linear"
    # Initial adapter output: "zero" makes F_hat = F at the start (paper silent).
    adapter_init: str = "zero"
    lora_rank: int = 8  # LoRA rank r on the ViT attention qkv layers (paper silent on r)
    lora_alpha: float = 8.0  # LoRA scaling alpha / r (paper silent)
    # Subset of the four directions, for the direction ablation (Fig. 4). Paper: all four.
    directions: tuple[str, ...] = ALL_DIRECTIONS
    m: int = 4  # prediction step: M = m * span tokens are excluded (paper default 4)
    # One Mamba per hierarchy shared by its directions (stacked along the batch) or one per direction.
    # Paper silent; shared is cheaper and sees K times more sequences per step.
    share_predictor: bool = True
    # [BOS] tokens: "full" = learnable M x C per hierarchy and direction (the paper's [BOS] in R^{M x C});
    # "broadcast" = one learnable C-vector per hierarchy and direction repeated M times.
    bos: str = "full"
    depth: int = 1  # Mamba blocks per predictor (paper silent; Fig. 2 draws one)
    d_state: int = 16  # SSM state size P (paper silent; Mamba default)
    d_conv: int = 4  # Mamba's causal depthwise conv width (Mamba default)
    expand: int = 2  # Mamba inner expansion (Mamba default)
    hidden_dim: int | None = None  # project tokens to this width inside the predictor; None = C (paper silent)
    pre_norm: bool = True  # LayerNorm before each Mamba block (paper silent; standard for Mamba)
    # Normalise each token over channels (LayerNorm without affine) before the adapter, so hierarchies with
    # different feature scales weigh alike in the summed map (paper silent; "none" is the literal reading).
    # "channel": per-channel standardisation with training-set statistics. Measured by
    # benchmarks/varad_variants.py --preset issue24 (token_norm lines).
    token_norm: str = "layernorm"
    # Prediction target. With a trainable residual adapter and target = adapter output (paper-literal,
    # "adapted"), the loss has the trivial minimiser phi(F) = -F (all tokens zero). "detached" stops the
    # gradient at the target (the adapter learns only through the predictor input); "raw" predicts the
    # un-adapted tokens F. Paper silent; see the model docs. The stopped target still moves with the adapter: a
    # ResBlock adapter follows it to near-constant tokens, the linear one does not (benchmarks/varad_variants.py
    # --size 128 --categories washer --caps --variant resblock "adapter='resblock'" --variant raw
    # "adapter='resblock'" "target='raw'").
    target: str = "detached"
    # Loss on the direction-averaged prediction (Eq. 9-10, "average") or the mean over directions of each
    # direction's own error ("directions"). Paper: average.
    loss_on: str = "average"
    # Eq. 10 is a sum over positions; "mean" divides by the number of positions so the learning rate does
    # not depend on the resolution (paper silent on the scale).
    loss_reduction: str = "mean"
    # Eq. 9's error is the squared L2 norm over a token's C channels ("sum"). With taps of different widths
    # (CNN tokenizers) the sum weighs each hierarchy by its C in the summed map; "mean" divides by C, which is
    # the paper's sum up to one constant when every hierarchy has the same C (its ViT). Paper silent.
    channel_reduction: str = "sum"
    # How a token's prediction residual r = F_bar - F_hat is scored in the anomaly map. "l2": Eq. 9's squared
    # L2 norm (paper). "mahalanobis": (r - mu)^T Sigma^-1 (r - mu) / C, with mu and Sigma the mean and
    # covariance of the residuals of the normal training tokens of that hierarchy, estimated once after
    # training (``calibrate``, on the training images), Sigma shrunk towards its mean variance by
    # ``error_shrinkage``. Normal tokens then score about 1 in every hierarchy, and the directions of channel
    # space in which normal residuals are large (object outlines, texture grain) weigh less. Training (Eq. 10)
    # is unchanged; ``channel_reduction`` applies to "l2" only. Paper: "l2"; see the model docs.
    error: str = "l2"
    error_shrinkage: float = 0.1  # Sigma <- (1 - s) Sigma + s * mean variance * I (paper: no such step)
    # Gaussian sigma (pixels at image resolution) for the final map; the paper does not state it, 4 is
    # the usual value in the field (PatchCore, RD4AD, ViTAD). 0 disables.
    smoothing_sigma: float = 4.0
    score_rule: str = "max"  # image score from the map: "max" (paper, Sec. III.A) or "topk_mean"
    topk_ratio: float = 0.01  # fraction of pixels for "topk_mean"


# ----------------------------------------------------------------------------------------------- adapters


class LinearAdapter(nn.Module):
    """phi(F) = W F + b over channels (a 1x1 convolution): the paper's default adapter."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)

    def zero_init(self) -> None:
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)


class ResBlockAdapter(nn.Module):
    """phi(F) = conv3x3(GELU(GroupNorm(conv3x3(F)))): a ResBlock body; the block's skip is Eq. 1's residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.GroupNorm(1, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.gelu(self.norm(self.conv1(x))))

    def zero_init(self) -> None:
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update: y = W x + (alpha / r) B A x, with B = 0 at start."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scale


def add_lora(tokenizer: nn.Module, rank: int, alpha: float) -> int:
    """Wrap every attention ``qkv`` linear of a ViT tokenizer (its timm model at ``.model``) with LoRA."""
    vit = getattr(tokenizer, "model", None)
    targets = []
    if vit is not None:
        targets = [(name, mod) for name, mod in vit.named_modules() if name.endswith("attn.qkv") and isinstance(mod, nn.Linear)]
    if not targets:
        name = getattr(tokenizer, "name", type(tokenizer).__name__)
        raise ValueError(f"adapter with LoRA needs a ViT backbone with attention qkv layers; backbone {name!r} has none "
                         f"(use adapter='linear' or 'resblock', or a ViT backbone such as dinov2_vits14)")
    for name, mod in targets:
        parent = vit.get_submodule(name.rsplit(".", 1)[0])
        parent.qkv = LoRALinear(mod, rank, alpha)
    return len(targets)


@dataclass(frozen=True)
class AdapterSpec:
    feature_adapter: Callable[[int], nn.Module] | None  # factory (channels) -> phi, or None for phi = 0
    lora: bool  # rank-r LoRA on the backbone's attention qkv layers


# The adapters of the paper's Fig. 4 ("w/o", Linear, ResBlock, LoRA, LoRA+Linear, LoRA+ResBlock).
ADAPTERS: dict[str, AdapterSpec] = {
    "none": AdapterSpec(None, False),
    "linear": AdapterSpec(LinearAdapter, False),
    "resblock": AdapterSpec(ResBlockAdapter, False),
    "lora": AdapterSpec(None, True),
    "lora+linear": AdapterSpec(LinearAdapter, True),
    "lora+resblock": AdapterSpec(ResBlockAdapter, True),
}


# --------------------------------------------------------------------------------------- token statistics


class ChannelStandardiser(nn.Module):
    """(x - mean_c) / std_c per channel, with the mean and variance of every training token seen so far.

    In a training step (training mode with gradients on) each batch first adds its tokens to the running
    totals (exact pooled moments, no momentum), then is standardised with them; otherwise (evaluation,
    ``explain``) the stored statistics are used unchanged. Before
    any training it is the identity. The statistics are buffers, so they travel in checkpoints.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("total", torch.zeros(channels, dtype=torch.float64))
        self.register_buffer("total_sq", torch.zeros(channels, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            flat = x.detach().transpose(0, 1).flatten(1).double()  # (C, B*h*w)
            self.count += flat.shape[1]
            self.total += flat.sum(dim=1)
            self.total_sq += flat.pow(2).sum(dim=1)
        if self.count == 0:
            return x
        mean = self.total / self.count
        var = (self.total_sq / self.count - mean.pow(2)).clamp_min(0)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - mean.to(x).view(shape)) / (var.to(x).view(shape) + self.eps).sqrt()


# ---------------------------------------------------------------------------------------------- predictor


class ResidualWhitener(nn.Module):
    """Scores residuals r (B, C, h, w) by ||W (r - mu)||^2 / C, W = Sigma^-1/2, with the mean mu and covariance
    Sigma of normal residuals pooled by ``update`` and fixed by ``finish``. Before ``finish``: W = I, mu = 0 (the
    squared L2 norm divided by C). Buffers, so the statistics travel in checkpoints."""

    def __init__(self, channels: int, shrinkage: float) -> None:
        super().__init__()
        self.shrinkage = shrinkage
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("whitening", torch.eye(channels))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("total", torch.zeros(channels, dtype=torch.float64))
        self.register_buffer("total_outer", torch.zeros(channels, channels, dtype=torch.float64))

    def reset(self) -> None:
        for buf in (self.count, self.total, self.total_outer):
            buf.zero_()

    def update(self, residual: torch.Tensor) -> None:
        flat = residual.detach().transpose(0, 1).flatten(1).double()  # (C, N)
        self.count += flat.shape[1]
        self.total += flat.sum(dim=1)
        self.total_outer += flat @ flat.T

    def finish(self) -> None:
        if self.count < 2:
            raise ValueError("VarAD.calibrate: no residuals were seen; give it at least one batch of normal images")
        mean = self.total / self.count
        cov = self.total_outer / self.count - torch.outer(mean, mean)
        scale = cov.diagonal().mean().clamp_min(1e-12)
        cov = (1 - self.shrinkage) * cov + self.shrinkage * scale * torch.eye(len(cov), dtype=cov.dtype, device=cov.device)
        values, vectors = torch.linalg.eigh(cov)
        self.mean.copy_(mean.to(self.mean))
        self.whitening.copy_((vectors * values.clamp_min(1e-12 * scale).rsqrt()).T.to(self.whitening))

    def forward(self, residual: torch.Tensor) -> torch.Tensor:
        centred = residual - self.mean.view(1, -1, 1, 1)
        return torch.einsum("dc,bchw->bdhw", self.whitening, centred).pow(2).mean(dim=1)


class MambaStack(nn.Module):
    """Sequence model (B, L, C) -> (B, L, C): optional width projection, ``depth`` residual Mamba blocks, head.

    Causal: output t depends on inputs 0..t only (Mamba's conv and scan are causal).
    """

    def __init__(self, channels: int, config: VarADConfig) -> None:
        super().__init__()
        from adlib.ssm import Mamba

        width = config.hidden_dim or channels
        self.proj_in = nn.Linear(channels, width) if width != channels else nn.Identity()
        self.norms = nn.ModuleList(nn.LayerNorm(width) if config.pre_norm else nn.Identity() for _ in range(config.depth))
        self.blocks = nn.ModuleList(
            Mamba(width, d_state=config.d_state, d_conv=config.d_conv, expand=config.expand) for _ in range(config.depth)
        )
        self.norm_out = nn.LayerNorm(width)
        self.head = nn.Linear(width, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(x)
        for norm, block in zip(self.norms, self.blocks):
            x = x + block(norm(x))
        return self.head(self.norm_out(x))


class HierarchyPredictor(nn.Module):
    """The token predictor of one hierarchy: [BOS] tokens per direction and a Mamba stack (Eq. 6-7).

    ``gaps`` maps each direction name to its M. With ``shared`` one stack serves all directions: sequences
    with the same M are stacked along the batch and run in one call.
    """

    def __init__(self, channels: int, gaps: dict[str, int], config: VarADConfig) -> None:
        super().__init__()
        self.gaps = dict(gaps)
        self.shared = config.share_predictor
        bos_rows = {name: (gap if config.bos == "full" else 1) for name, gap in gaps.items()}
        self.bos = nn.ParameterDict({name: nn.Parameter(torch.randn(rows, channels) * 0.02) for name, rows in bos_rows.items()})
        if self.shared:
            self.stack = MambaStack(channels, config)
        else:
            self.stacks = nn.ModuleDict({name: MambaStack(channels, config) for name in gaps})

    def _with_bos(self, name: str, seq: torch.Tensor) -> torch.Tensor:
        gap = self.gaps[name]
        bos = self.bos[name].expand(gap, -1) if self.bos[name].shape[0] != gap else self.bos[name]
        return torch.cat([bos.unsqueeze(0).expand(seq.shape[0], -1, -1), seq], dim=1)

    def predict(self, name: str, seq: torch.Tensor) -> torch.Tensor:
        """Predictions (B, L, C) for one direction's sequence (B, L, C); output l sees v_1..v_{l-M} only."""
        return self.forward({name: seq})[name]

    def forward(self, seqs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if not self.shared:
            for name, seq in seqs.items():
                out[name] = self.stacks[name](self._with_bos(name, seq))[:, : seq.shape[1]]
            return out
        groups: dict[int, list[str]] = {}
        for name in seqs:
            groups.setdefault(self.gaps[name], []).append(name)
        for names in groups.values():
            batch = torch.cat([self._with_bos(name, seqs[name]) for name in names], dim=0)
            pred = self.stack(batch)
            for name, chunk in zip(names, pred.chunk(len(names), dim=0)):
                out[name] = chunk[:, : seqs[name].shape[1]]
        return out


# ------------------------------------------------------------------------------------------------- model


def _image_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


class VarAD(AnomalyModel):
    """VarAD over a frozen tokenizer. ``tokenizer`` may be given (tests); otherwise it is built from the config."""

    name = "varad"
    trainable = True

    def __init__(self, config: VarADConfig | None = None, tokenizer: nn.Module | None = None) -> None:
        config = config or VarADConfig()
        self._validate(config)
        super().__init__(config)
        spec = ADAPTERS[config.adapter]
        if tokenizer is None:
            from adlib import backbones

            tokenizer = backbones.create(config.backbone, layers=config.layers, pretrained=config.pretrained)
        self.tokenizer = tokenizer
        for p in self.tokenizer.parameters():
            p.requires_grad_(False)
        self.uses_lora = spec.lora
        if spec.lora:
            add_lora(self.tokenizer, config.lora_rank, config.lora_alpha)
        self.tokenizer.eval()

        self.image_hw = _image_hw(config.image_size)
        shapes = self._probe_shapes()
        self.channels = [c for c, _, _ in shapes]
        self.grids = [(h, w) for _, h, w in shapes]

        from adlib.scans import varad_directions

        self.directions = []  # per hierarchy: {name: Direction}
        self.adapters = nn.ModuleList()
        self.predictors = nn.ModuleList()
        for channels, (h, w) in zip(self.channels, self.grids):
            dirs = {name: d for name, d in varad_directions(h, w).items() if name in config.directions}
            gaps = {name: config.m * d.span for name, d in dirs.items()}
            too_long = {name: gap for name, gap in gaps.items() if gap >= h * w}
            if too_long:
                raise ValueError(f"m={config.m} excludes M={max(too_long.values())} tokens on a {h}x{w} token grid, "
                                 f"which leaves nothing to predict from; use a smaller m or a larger image_size")
            self.directions.append(dirs)
            adapter = spec.feature_adapter(channels) if spec.feature_adapter else None
            if adapter is not None and config.adapter_init == "zero":
                adapter.zero_init()
            self.adapters.append(adapter if adapter is not None else nn.Identity())
            self.predictors.append(HierarchyPredictor(channels, gaps, config))
        self.standardisers = nn.ModuleList(ChannelStandardiser(c) for c in self.channels) \
            if config.token_norm == "channel" else None
        self.has_feature_adapter = spec.feature_adapter is not None
        self.whiteners = nn.ModuleList(ResidualWhitener(c, config.error_shrinkage) for c in self.channels) \
            if config.error == "mahalanobis" else None

    @staticmethod
    def _validate(config: VarADConfig) -> None:
        check_choice("adapter", config.adapter, ADAPTERS)
        check_choice("adapter_init", config.adapter_init, ("zero", "default"))
        check_choice("bos", config.bos, ("full", "broadcast"))
        check_choice("token_norm", config.token_norm, ("none", "layernorm", "channel"))
        check_choice("target", config.target, ("detached", "adapted", "raw"))
        check_choice("loss_on", config.loss_on, ("average", "directions"))
        check_choice("loss_reduction", config.loss_reduction, ("mean", "sum"))
        check_choice("channel_reduction", config.channel_reduction, ("sum", "mean"))
        check_choice("error", config.error, ("l2", "mahalanobis"))
        check_choice("tokens", config.tokens, ("taps", "patchcore"))
        if not 0.0 <= config.error_shrinkage <= 1.0:
            raise ValueError(f"error_shrinkage={config.error_shrinkage}: expected a value in [0, 1]")
        image_score(torch.zeros(1, 1, 1), config.score_rule)  # validates the rule name
        bad = [d for d in config.directions if d not in ALL_DIRECTIONS]
        if bad or not config.directions:
            raise ValueError(f"directions={config.directions!r}: expected a non-empty subset of {ALL_DIRECTIONS}")
        if config.m < 1:
            raise ValueError(f"m={config.m}: the prediction step must be >= 1")
        if config.depth < 1:
            raise ValueError(f"depth={config.depth}: need at least one Mamba block")

    def _probe_shapes(self) -> list[tuple[int, int, int]]:
        probe = torch.zeros(1, 3, *self.image_hw, device=next(self.tokenizer.parameters()).device)
        try:
            with torch.no_grad():
                feats = self.hierarchies(self.tokenizer(probe))
        except Exception as error:  # the backbone's own message says what size it needs
            raise ValueError(f"image_size={self.config.image_size} does not work with backbone "
                             f"{self.config.backbone!r}: {error}") from error
        return [tuple(f.shape[1:]) for f in feats]

    # ---- engine interface

    @property
    def cacheable(self) -> bool:
        return not self.uses_lora

    def feature_key(self) -> str | None:
        return self.tokenizer_key()

    def extract(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Tokenizer features F^h (B, C_h, h_h, w_h); differentiable only when LoRA is on."""
        if tuple(images.shape[-2:]) != self.image_hw:
            raise ValueError(f"VarAD was built for {self.image_hw} inputs, got {tuple(images.shape[-2:])}; "
                             f"resize the data to image_size={self.config.image_size}")
        return list(self.tokenizer(images))

    def hierarchies(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The token grids F^h that are predicted, from the tokenizer's taps (``tokens``)."""
        if self.config.tokens == "patchcore":
            return [local_patch_features(list(features), 3)]
        return list(features)

    def loss(self, features: list[torch.Tensor]) -> torch.Tensor:
        out = self.forward_tokens(features)
        errors = out["errors"] if self.config.loss_on == "average" else out["direction_errors"]
        reduce = torch.mean if self.config.loss_reduction == "mean" else torch.sum
        # sum over hierarchies (Eq. 9), reduced over positions (Eq. 10) and the batch
        return sum(reduce(e) for e in errors)

    def predict(self, images: torch.Tensor) -> Prediction:
        out = self.explain(images)
        return Prediction(out["map"], out["scores"])

    def calibration_split(self) -> str | None:
        """error="mahalanobis" estimates the normal residuals' statistics on the training images after training
        (``adlib.study.run_one`` hands them to ``calibrate`` through ``engine.fit(..., calibration=)``)."""
        return "train" if self.whiteners is not None else None

    @property
    def calibrated(self) -> bool:
        """Whether the map can be scored: always for error="l2"; for "mahalanobis" once ``calibrate`` ran."""
        return self.whiteners is None or all(float(w.count) >= 2 for w in self.whiteners)

    @torch.no_grad()
    def calibrate(self, batches) -> None:
        """Mean and covariance of the prediction residuals of every token of the given normal images, per
        hierarchy (error="mahalanobis"; a no-op for "l2")."""
        if self.whiteners is None:
            return
        for whitener in self.whiteners:
            whitener.reset()
        for features in batches:
            out = self.forward_tokens(features)
            for whitener, pred, target in zip(self.whiteners, out["predicted"], out["targets"]):
                whitener.update(pred - target)
        for whitener in self.whiteners:
            whitener.finish()

    # ---- the method

    def _targets_and_inputs(self, features: list[torch.Tensor]) -> tuple[list, list, list]:
        tokens, adapted, targets = [], [], []
        for h, (feat, adapter) in enumerate(zip(self.hierarchies(features), self.adapters)):
            if self.config.token_norm == "layernorm":
                feat = F.layer_norm(feat.permute(0, 2, 3, 1), feat.shape[1:2]).permute(0, 3, 1, 2)
            elif self.config.token_norm == "channel":
                feat = self.standardisers[h](feat)
            hat = adapter(feat) + feat if self.has_feature_adapter else feat  # Eq. 1
            tokens.append(feat)
            adapted.append(hat)
            targets.append({"detached": hat.detach(), "adapted": hat, "raw": feat}[self.config.target])
        return tokens, adapted, targets

    def forward_tokens(self, features: list[torch.Tensor]) -> dict[str, Any]:
        """All per-hierarchy quantities from tokenizer features (see ``explain``)."""
        tokens, adapted, targets = self._targets_and_inputs(features)
        per_direction, predicted, errors, direction_errors = [], [], [], []
        for hat, target, dirs, predictor, (h, w) in zip(adapted, targets, self.directions, self.predictors, self.grids):
            flat = hat.flatten(2).transpose(1, 2)  # (B, L, C), row-major
            seqs = {name: flat[:, d.order.to(flat.device)] for name, d in dirs.items()}  # Eq. 2
            preds = predictor(seqs)
            grids = {}
            for name, d in dirs.items():  # Eq. 8: back to the grid ...
                back = preds[name][:, d.inverse.to(flat.device)]
                grids[name] = back.transpose(1, 2).reshape(hat.shape)
            mean_pred = torch.stack(list(grids.values())).mean(dim=0)  # ... and averaged over directions
            per_direction.append(grids)
            predicted.append(mean_pred)
            reduce = torch.sum if self.config.channel_reduction == "sum" else torch.mean
            errors.append(reduce((mean_pred - target).pow(2), dim=1))  # Eq. 9, (B, h, w)
            if self.config.loss_on == "directions":
                direction_errors.append(torch.stack([reduce((g - target).pow(2), dim=1) for g in grids.values()]).mean(0))
        return {"tokens": tokens, "adapted": adapted, "targets": targets, "predictions": per_direction,
                "predicted": predicted, "errors": errors, "direction_errors": direction_errors}

    def token_score(self, hierarchy: int, residual: torch.Tensor) -> torch.Tensor:
        """Token scores (B, h, w) of one hierarchy from its residuals F_bar - F_hat (B, C, h, w), as ``error``
        says: Eq. 9's squared L2 norm ("l2", reduced over channels as ``channel_reduction`` says) or the
        whitened residual ("mahalanobis")."""
        if self.whiteners is not None:
            return self.whiteners[hierarchy](residual)
        reduce = torch.sum if self.config.channel_reduction == "sum" else torch.mean
        return reduce(residual.pow(2), dim=1)

    def anomaly_map(self, errors: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Upsample each hierarchy's token scores to the image (bilinear), sum (Eq. 9) and smooth."""
        up = [F.interpolate(e.unsqueeze(1), size=self.image_hw, mode="bilinear", align_corners=False).squeeze(1) for e in errors]
        total = torch.stack(up).sum(dim=0)
        return up, gaussian_blur(total, self.config.smoothing_sigma)

    def partial_map(self, explanation: dict[str, Any], index: int, directions=None, hierarchies=None) -> torch.Tensor:
        """The anomaly map (H, W) of image ``index`` of an ``explain()`` output using only some ``directions``
        (names) and ``hierarchies`` (indices) of this model: a training-free look at what each part adds."""
        hierarchies = list(range(len(explanation["targets"]))) if hierarchies is None else list(hierarchies)
        if not hierarchies:
            raise ValueError("partial_map: choose at least one hierarchy")
        errors = []
        for h in hierarchies:
            per_direction = explanation["predictions"][h]
            chosen = [d for d in (directions or per_direction) if d in per_direction]
            if not chosen:
                raise ValueError(f"partial_map: none of {list(directions)} in the model's directions {list(per_direction)}")
            mean = sum(per_direction[d][index] for d in chosen) / len(chosen)
            residual = (mean - explanation["targets"][h][index])[None]
            errors.append(self.token_score(h, residual))
        _, total = self.anomaly_map(errors)
        return total[0]

    @torch.no_grad()
    def explain(self, images: torch.Tensor) -> dict[str, Any]:
        """Everything the notebooks draw, for a batch of images (B, 3, H, W) in [0, 1].

        Keys: ``tokens`` F^h, ``adapted`` F_hat^h, ``targets`` (what is predicted), ``predictions`` (per hierarchy a
        dict direction -> predicted grid (B, C, h, w)), ``predicted`` (direction average F_bar^h), ``errors``
        (B, h, w) per hierarchy (Eq. 9's squared error, what training minimises), ``token_scores`` (B, h, w) per
        hierarchy (what the map is made of: ``errors`` for error="l2", the whitened residuals for
        "mahalanobis"), ``error_maps`` (B, H, W) per hierarchy, the token scores upsampled, ``map`` (B, H, W)
        final smoothed map, ``scores`` (B,). Lists are ordered by hierarchy.
        """
        if not self.calibrated:
            raise RuntimeError("VarAD(error='mahalanobis') scores residuals with statistics of normal training "
                               "residuals: fit with adlib.engine.fit(..., calibration=<the training images>) or call "
                               "model.calibrate(batches) first (adlib.study.run_one does it)")
        out = self.forward_tokens(self.extract(images))
        out["token_scores"] = [self.token_score(h, p - t) for h, (p, t) in enumerate(zip(out["predicted"], out["targets"]))] \
            if self.whiteners is not None else out["errors"]
        out["error_maps"], out["map"] = self.anomaly_map(out["token_scores"])
        out["scores"] = image_score(out["map"], self.config.score_rule, self.config.topk_ratio)
        out.pop("direction_errors")
        return out
