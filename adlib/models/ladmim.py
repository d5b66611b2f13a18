"""LADMIM: logical anomaly detection by masked image modeling over discrete latents (Eq. 1-12).

Two detectors on one frozen feature map h^0 (B, d_0, 24, 24) (``adlib.models.hvq.FeatureGrid``):

1. **HVQ-Trans** (``adlib.models.hvq.HVQTrans``), trained first (stage ``"tokenizer"``): it reconstructs h^0
   through L hierarchical codebooks; S_HVQ = the mean (over positions) squared reconstruction error, the
   structural detector. Its code index maps o^1..o^L (Eq. 10) are the MIM targets.
2. **A ViT trained by masked image modeling** (stage ``"mim"``, HVQ-Trans frozen): the tokens of a masked
   region M are replaced by a learnable e, a learnable prediction token p is appended (Eq. 8), and one MIMHead
   per HVQ level turns p' into a softmax over the K codes (Eq. 9); the target Q^l is the normalised histogram of
   the codes o^l inside M (Eq. 11), the loss the L1 distance summed over levels (Eq. 12). S_MIM = the mean over
   several random block-wise masks of that distance, the logical detector: a region whose code histogram the
   visible rest of the image does not predict (a part too many, too few, or of the wrong kind).

Final score (``scorer="sum"``): S'_HVQ + S'_MIM, each standardised with the mean and std over held-out normal
images, given to ``calibrate`` (by default the validation split's normal images; the released code z-scores
against the whole test set instead, which is the caller's ``calibration`` choice, see ``standardise_on``).
``predict`` also returns per-pixel maps: the HVQ reconstruction error per token, bilinearly upsampled to the
image and Gaussian-smoothed (the MIM score has no spatial map: it is one number per mask).

The paper states L = 4, K = 512, d_q = 64, L' = 4, block-wise masking and the losses; it leaves open the
widths, heads, the masking ratio at train and test time, the number of test masks, the standardisation
statistics, Gamma, psi and d^0. Each is a field of ``LADMIMConfig`` whose comment says where the default comes
from (paper, HVQ-Trans' or LADMIM's released code, or ours). Recipes (epochs, learning rates, the smoke sizes)
are in ``adlib.papers.ladmim``.

Naming: ``self.tokenizer`` is the frozen backbone (adlib's convention for the frozen part); LADMIM's own
"tokenizer", HVQ-Trans, is ``self.hvq``.

Ablations are config fields: ``scorer`` (Tab. 5), ``mask``/``mask_ratio`` (Tab. 7), ``target`` (Tab. 8:
"pixel", "feature", "code", "histogram"), ``mim_dim`` (Fig. 3). One-class vs multi-class (Tab. 3) is a data
setting: one model per category, or one model on a ``ConcatDataset`` of all categories' training images
(no class label; HVQ-Trans' per-class codebook switch is not used).

**Faithfulness** (``tests/test_parity.py``, fixture ``ladmim`` from ``benchmarks/parity/ladmim.py``): the
released ViT (SkyShunsuke/LADMIM 89ae156, ``src/model.py`` as ``get_model_with_args`` builds it for
``scripts/train.sh``) and its scoring (``src/train_engine.py``: ``get_pred_dist``, ``get_target_dist``,
``evaluate``'s z-scores), with upstream HVQ-Trans (RuiyingLu/HVQ-Trans 12fbfa9) standing in for the release's
tokenizer, a fork that is not public: the code maps, P^l and Q^l per mask, S_HVQ, S_MIM and the summed score
match within the test's 1e-5 relative (``benchmarks/parity/faithfulness.py`` prints each difference).
Where adlib differs on purpose, a switch gives the release's behaviour:

- ``hvq_layout="paper"``: Eq. 3-7 as printed (psi^l, L codebooks of d_q); the code has no psi and L + 1
  codebooks (``"code"``; see ``adlib.models.hvq.HVQTrans``). Paper and code disagree: the paper by default;
- ``mim_cls_token=False``: Eq. 8's sequence is the tokens and p; the released ViT also carries a class token;
- ``feature_norm="layernorm"``: ours, for the substitute backbone's features; the release feeds raw h^0;
- ``hvq_score="mean"``: the paper's S_HVQ; the release reads HVQ-Trans' ``max_score`` (``"release"``);
- ``standardise_on="validation"``: the repro spec's reading; the release z-scores over the test set (``"test"``);
- ``mim_levels=None`` (o^1..o^L): the release's head predicts upstream's order o^L..o^1 (``(4, 3, 2, 1)``);
- ``mask_exact=False``: BEiT's block sampler; the release fills to exactly r N with single tokens;
- HVQ-Trans' training (``codebook_update``, ``codebook_init``, ``codebook_restart``, ``commitment``): the
  release's EMA codebooks, N(0, 1) init, no restarts, weight 0.25 are ``"ema"``, ``"normal"``, False, 0.25.

Not switched, each for its reason: the test masks are drawn once (``mask_seed``) and shared by every image
(the release draws new ones per image: adlib's scores are deterministic); the initialisation of e and p
(zero, as the paper says; the release draws them trunc-normal) and of the Linear layers (torch's; the
release's BEiT init), and the layer-scale value 0.1 (``train.sh``'s flag; ``get_model_with_args`` ignores it
and uses 1e-4), act before training only; the MIM loss is the batch mean (the release sums over the batch:
a learning-rate factor). Fixed by the parity check: the z-scores used the sample std (the release ``np.std``,
the population std; a constant factor on the sum, the ranking unchanged); P^l, Q^l and the statistics were
float32 (the release computes them in float64, and a z-score divides by S_MIM's small spread); and a model fresh
from its checkpoint scored in training mode (``inference``).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from adlib.models.base import AnomalyModel, Prediction
from adlib.models.common import check_choice, gaussian_blur
from adlib.models.hvq import FeatureGrid, HVQTrans, release_score

TARGETS = ("histogram", "code", "feature", "pixel")
# S_HVQ from HVQ-Trans' output (``error`` and ``distance``, (B, N)) and the hvq_topk fraction
HVQ_SCORES: dict[str, Callable[[dict, float], torch.Tensor]] = {
    "mean": lambda out, k: out["error"].mean(dim=1),
    "max": lambda out, k: out["error"].amax(dim=1),
    "topk": lambda out, k: out["error"].topk(max(1, math.ceil(k * out["error"].shape[1])), dim=1).values.mean(dim=1),
    "release": lambda out, k: release_score(out["distance"], (math.isqrt(out["distance"].shape[1]),) * 2),
}
MASKS = ("block", "random", "checkerboard")
SCORERS = ("sum", "hvq", "mim")
STANDARDISE_ON = ("validation", "test", "train")


@dataclass
class LADMIMConfig:
    """LADMIM settings; the paper's values where it states them (Sec. 4.1), else the source in the comment."""

    # --- backbone (Sec. 4.1: EfficientAD's PDN at 224 px -> 384 x 24 x 24)
    backbone: str = "efficientnet_lite0"  # "pdn" = the paper's; default: the offline ImageNet CNN (substitution)
    layers: tuple | None = None  # taps of a timm backbone (default: strides 8 and 16); None for the PDN
    pretrained: bool = True
    weights: str | None = None  # path to the PDN teacher file (pretrained_teacher_small.pth) or a timm checkpoint
    image_size: int = 192  # paper: 224 (PDN); EfficientNet-Lite0's stride 8 gives the 24 x 24 grid at 192 px
    grid: int = 24  # token grid side (paper: 24)
    feature_norm: str = "layernorm"  # per-token LayerNorm of h^0 without affine (ours; "none" = raw features)
    # --- HVQ-Trans (Sec. 3.2: L = 4, K = 512, d_q = 64; the rest from HVQ-Trans' code)
    hvq_layers: int = 4  # L encoder and decoder layers = code levels (paper)
    codebook_size: int = 512  # K (paper)
    code_dim: int = 64  # d_q (paper)
    hvq_dim: int = 64  # encoder width (HVQ-Trans code: 64)
    hvq_dec_dim: int = 128  # decoder width (HVQ-Trans code: 128)
    hvq_heads: int = 8  # (HVQ-Trans code)
    hvq_ffn: int = 1024  # FFN width (HVQ-Trans code)
    hvq_dropout: float = 0.1  # (HVQ-Trans code)
    commitment: float = 1.0  # beta of Eq. 7 (printed without a weight: 1; HVQ-Trans code: 0.25 with EMA)
    codebook_update: str = "loss"  # "loss" (Eq. 7's codebook term) or "ema" (HVQ-Trans code, decay 0.99)
    codebook_init: str = "data"  # "data": first batch's vectors; "random"; "normal" (HVQ-Trans code) (paper silent)
    codebook_restart: bool = True  # move dead codes to current vectors (ours; without it the codebooks collapse)
    # "paper": Eq. 3-7 as printed (psi^l, L codebooks of d_q); "code": HVQ-Trans' released HVQ_TR_switch (no psi,
    # L + 1 codebooks, position embeddings in every attention; see adlib.models.hvq.HVQTrans). With "code" the
    # MIM targets are its L lower levels and code_dim / hvq_dec_dim are unused (widths hvq_dim and 2 hvq_dim).
    hvq_layout: str = "paper"
    # HVQ-Trans' released checkpoints hold hvq_classes sets of codebooks and output heads, one per class; the
    # set of class hvq_switch_class is loaded (adlib.models.authors; adlib's model holds one set)
    hvq_switch_class: int = 0
    hvq_classes: int = 1
    # a trained HVQ-Trans saved by LADMIM.save_tokenizer: loaded, frozen, and the tokenizer stage is skipped
    # (ours: ablations of the MIM stage share one tokenizer per seed; the paper trains it once per category too)
    hvq_checkpoint: str | None = None
    # --- MIM ViT (Sec. 3.3: L' = 4; the rest from LADMIM's released scripts/train.sh)
    mim_layers: int = 4  # L' (paper)
    mim_dim: int = 512  # width (release: 512; Fig. 3 sweeps it)
    mim_heads: int = 8  # (release)
    mim_mlp_ratio: float = 4.0  # (release)
    mim_attn_dropout: float = 0.1  # (release)
    # layer-scale init; 0 disables. train.sh passes --layer_scale_init_value 0.1, but the released
    # model.get_model_with_args ignores it and builds every block with 1e-4: the script's value is kept here
    layer_scale: float = 0.1
    # the released ViT also has a class token (trained by nothing in the histogram loss, but attended to);
    # Eq. 8 has none (paper: False; the released code: True)
    mim_cls_token: bool = False
    target: str = "histogram"  # Tab. 8: "histogram" (Eq. 11-12), "code" (per token), "feature", "pixel"
    mim_levels: tuple[int, ...] | None = None  # HVQ levels (1-based) whose codes are targets; None = all (Eq. 12)
    # --- masking (Tab. 7: BlockRandom-0.2 best; block aspect ratio in [0.3, 1/0.3], BEiT-style)
    mask: str = "block"  # "block" (BlockRandom-r), "random" (Random-r), "checkerboard"
    mask_ratio: float = 0.2  # r for training (Tab. 7's best; release: 130 / 576 = 0.23)
    test_mask_ratio: float | None = None  # r for scoring; None = mask_ratio (release: 230 / 576 = 0.4)
    mask_min_block: int | None = None  # smallest block in tokens; None = a third of the masked tokens (release ~46)
    # block masks stop when no block fits, short of r N tokens (BEiT's sampler); the release then masks random
    # single tokens up to r N exactly (True)
    mask_exact: bool = False
    checker_size: int = 3  # checkerboard square side in tokens (Tab. 7: 3 / 6 / 12)
    num_test_masks: int = 8  # masks averaged in S_MIM (paper and release: unstated)
    mask_seed: int = 0  # the test masks are fixed (the same for every image), drawn with this seed
    # --- scoring (Sec. 3.4)
    scorer: str = "sum"  # Tab. 5: "sum" = S'_HVQ + S'_MIM, "hvq" = S_HVQ alone, "mim" = S_MIM alone
    # S_HVQ from the per-token errors: "mean" (paper), "max" (the largest token error), "release" (the released
    # code's HVQ-Trans max_score: the per-token L2 error map upsampled x16 bilinearly, a 16 x 16 box mean, its
    # maximum; see release_score) or "topk" (mean of the largest hvq_topk fraction, ours: robust to the high
    # normal error of a briefly trained HVQ-Trans)
    hvq_score: str = "mean"
    hvq_topk: float = 0.02
    # Which normal images the caller hands to calibrate() for the standardisation: "validation" (default,
    # the reading of repro_spec §3.5), "test" (the released code: mean/std over the category's whole test set),
    # or "train". The model only computes statistics of what it is given.
    standardise_on: str = "validation"
    smoothing_sigma: float = 4.0  # Gaussian sigma (image pixels) of the HVQ map returned by predict (ours)


# ------------------------------------------------------------------------------------------------ masks


def block_mask(h: int, w: int, count: int, min_block: int, generator: torch.Generator | None = None,
               aspect: tuple[float, float] = (0.3, 1 / 0.3), attempts: int = 10, exact: bool = False) -> torch.Tensor:
    """BEiT's block-wise masking: add random rectangles (area >= min_block, aspect ratio in ``aspect``) until
    ``count`` of the h x w tokens are masked (never more; it stops early when no block fits). ``exact``: then
    mask random single tokens up to ``count`` (LADMIM's released ``BlockMaskingSampler``). (h, w) bool."""
    mask = torch.zeros(h, w, dtype=torch.bool)
    low, high = math.log(aspect[0]), math.log(aspect[1])
    done = 0
    rand = lambda: float(torch.rand((), generator=generator))
    while done < count:
        room = count - done
        added = 0
        for _ in range(attempts):
            area = min_block + rand() * (max(room, min_block) - min_block)
            ratio = math.exp(low + rand() * (high - low))
            bh, bw = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
            if bh < 1 or bw < 1 or bh >= h or bw >= w:
                continue
            top = int(torch.randint(0, h - bh + 1, (), generator=generator))
            left = int(torch.randint(0, w - bw + 1, (), generator=generator))
            block = mask[top:top + bh, left:left + bw]
            new = bh * bw - int(block.sum())
            if 0 < new <= room:
                block.fill_(True)
                added = new
                break
        if added == 0:
            break
        done += added
    if exact and done < count:
        free = (~mask).flatten().nonzero().squeeze(1)
        mask.view(-1)[free[torch.randperm(len(free), generator=generator)[:count - done]]] = True
    return mask


def random_mask(h: int, w: int, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` tokens chosen uniformly at random (Tab. 7's Random-r)."""
    mask = torch.zeros(h * w, dtype=torch.bool)
    mask[torch.randperm(h * w, generator=generator)[:count]] = True
    return mask.view(h, w)


def checkerboard_mask(h: int, w: int, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Alternate size x size squares, with a random phase and offset (half the tokens)."""
    oy, ox, phase = (int(torch.randint(0, 2 * size, (), generator=generator)) for _ in range(3))
    yy, xx = torch.meshgrid(torch.arange(h) + oy, torch.arange(w) + ox, indexing="ij")
    return ((yy // size + xx // size + phase) % 2) == 0


def histogram(codes: torch.Tensor, mask: torch.Tensor, size: int) -> torch.Tensor:
    """Eq. 11: the normalised histogram (B, K) of the codes (B, N) at the masked positions (B, N)."""
    weights = mask.to(torch.float32)
    counts = torch.zeros(codes.shape[0], size, device=codes.device).scatter_add_(1, codes, weights)
    return counts / weights.sum(dim=1, keepdim=True).clamp_min(1.0)


# ------------------------------------------------------------------------------------------------ MIM ViT


class Block(nn.Module):
    """Pre-norm ViT block with layer scale (timm/BEiT style)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, attn_dropout: float, layer_scale: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))
        self.heads, self.attn_dropout = heads, attn_dropout
        scale = layer_scale if layer_scale > 0 else 1.0
        self.gamma1 = nn.Parameter(torch.full((dim,), scale), requires_grad=layer_scale > 0)
        self.gamma2 = nn.Parameter(torch.full((dim,), scale), requires_grad=layer_scale > 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        x = x + self.gamma1 * self.proj(attn.transpose(1, 2).reshape(b, n, d))
        return x + self.gamma2 * self.mlp(self.norm2(x))


class MIMViT(nn.Module):
    """Eq. 8-9: feature tokens (one per grid cell), masked ones replaced by e, plus the prediction token p,
    learned absolute position embeddings, L' blocks; returns (p' (B, D), token outputs (B, N, D)).
    ``cls_token``: a class token after p (the released ViT's; its sequence is [cls, p, tokens], the same
    computation, position embeddings permuted with the tokens)."""

    def __init__(self, in_dim: int, tokens: int, dim: int, layers: int, heads: int, mlp_ratio: float,
                 attn_dropout: float, layer_scale: float, cls_token: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"mim_dim={dim} must be a multiple of mim_heads={heads}")
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))  # e (zero-initialised, Sec. 3.3)
        self.pred_token = nn.Parameter(torch.zeros(1, 1, dim))  # p
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cls_token else None
        self.pos = nn.Parameter(torch.zeros(1, tokens + 1 + cls_token, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, attn_dropout, layer_scale) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(tokens)
        x = torch.where(mask[..., None], self.mask_token.to(x.dtype), x)  # Eq. 8
        n = x.shape[1]
        extra = [self.pred_token] + ([self.cls_token] if self.cls_token is not None else [])
        x = torch.cat([x] + [t.expand(len(x), -1, -1) for t in extra], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x[:, n], x[:, :n]


# ------------------------------------------------------------------------------------------------ model


class LADMIM(AnomalyModel):
    """HVQ-Trans + MIM ViT over a frozen feature grid; see the module docstring."""

    name = "ladmim"
    trainable = True

    def __init__(self, config: LADMIMConfig | None = None, tokenizer: nn.Module | None = None) -> None:
        config = config or LADMIMConfig()
        self._validate(config)
        super().__init__(config)
        grid = (config.grid, config.grid)
        self.tokenizer = tokenizer if tokenizer is not None else FeatureGrid(
            config.backbone, config.layers, config.pretrained, config.weights, grid)
        self.tokenizer.requires_grad_(False)
        self.tokenizer.eval()
        with torch.no_grad():
            probe = self.tokenizer(torch.zeros(1, 3, config.image_size, config.image_size))
        if tuple(probe.shape[-2:]) != grid:
            raise ValueError(f"backbone {config.backbone!r} gives a {tuple(probe.shape[-2:])} map at image_size="
                             f"{config.image_size}, expected grid={config.grid}")
        self.in_dim, self.tokens = int(probe.shape[1]), config.grid * config.grid
        self.patch = max(1, round(config.image_size / config.grid))  # pixels per token for the pixel target
        self.hvq = HVQTrans(self.in_dim, self.tokens, config.hvq_dim, config.hvq_heads, config.hvq_ffn,
                            config.hvq_layers, config.hvq_dec_dim, config.codebook_size, config.code_dim,
                            config.hvq_dropout, config.commitment, config.codebook_update, 0.99, config.codebook_init,
                            config.codebook_restart, config.hvq_layout, grid)
        self.levels = [l - 1 for l in (config.mim_levels or range(1, config.hvq_layers + 1))]
        self.mim = MIMViT(self.in_dim, self.tokens, config.mim_dim, config.mim_layers, config.mim_heads,
                          config.mim_mlp_ratio, config.mim_attn_dropout, config.layer_scale, config.mim_cls_token)
        out = {"histogram": config.codebook_size * len(self.levels), "code": config.codebook_size * len(self.levels),
               "feature": self.in_dim, "pixel": 3 * self.patch ** 2}[config.target]
        self.head = nn.Linear(config.mim_dim, out)  # the MIMHeads (one Linear for all levels, split per level)
        for name in ("hvq_mean", "hvq_std", "mim_mean", "mim_std"):  # float64: a z-score divides by a small std
            self.register_buffer(name, torch.tensor(float("nan"), dtype=torch.float64))
        if config.hvq_checkpoint is not None:
            self.load_tokenizer(config.hvq_checkpoint)
        self.stage = "tokenizer"
        self._test_masks: torch.Tensor | None = None

    @staticmethod
    def _validate(config: LADMIMConfig) -> None:
        check_choice("target", config.target, TARGETS)
        check_choice("mask", config.mask, MASKS)
        check_choice("scorer", config.scorer, SCORERS)
        check_choice("hvq_score", config.hvq_score, HVQ_SCORES)
        if not 0 < config.hvq_topk <= 1:
            raise ValueError(f"hvq_topk={config.hvq_topk}: expected a fraction in (0, 1]")
        check_choice("feature_norm", config.feature_norm, ("layernorm", "none"))
        check_choice("codebook_update", config.codebook_update, ("loss", "ema"))
        check_choice("codebook_init", config.codebook_init, ("data", "random", "normal"))
        check_choice("hvq_layout", config.hvq_layout, ("paper", "code"))
        check_choice("standardise_on", config.standardise_on, STANDARDISE_ON)
        for name in ("mask_ratio", "test_mask_ratio"):
            value = getattr(config, name)
            if value is not None and not 0 < value < 1:
                raise ValueError(f"{name}={value}: expected a fraction in (0, 1)")
        if config.num_test_masks < 1:
            raise ValueError(f"num_test_masks={config.num_test_masks}: need at least one mask")
        levels = config.mim_levels or ()
        if any(not 1 <= l <= config.hvq_layers for l in levels):
            raise ValueError(f"mim_levels={config.mim_levels}: expected levels in 1..{config.hvq_layers}")

    # ---- stages (engine hooks)

    def training_stages(self) -> tuple[str, ...]:
        return ("mim",) if self.config.hvq_checkpoint is not None else ("tokenizer", "mim")

    # The config fields that fix HVQ-Trans' weights: a saved tokenizer fits only a model that agrees on them.
    TOKENIZER_FIELDS = ("backbone", "layers", "weights", "image_size", "grid", "feature_norm", "hvq_layers",
                        "codebook_size", "code_dim", "hvq_dim", "hvq_dec_dim", "hvq_heads", "hvq_ffn", "hvq_dropout",
                        "commitment", "codebook_update", "codebook_init", "codebook_restart", "hvq_layout")

    def save_tokenizer(self, path) -> None:
        """Save the trained HVQ-Trans (its weights, codebooks and the config fields that made it) for
        ``hvq_checkpoint``."""
        fields = {name: getattr(self.config, name) for name in self.TOKENIZER_FIELDS}
        torch.save({"fields": fields, "state": self.hvq.state_dict()}, path)

    def load_tokenizer(self, path) -> None:
        """Load a HVQ-Trans saved by ``save_tokenizer``; ValueError when its config fields differ from this
        model's."""
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(saved, dict) or "state" not in saved:
            raise ValueError(f"hvq_checkpoint={str(path)!r} is not a file written by LADMIM.save_tokenizer")
        differ = {k: (v, getattr(self.config, k)) for k, v in saved["fields"].items()
                  if k in self.TOKENIZER_FIELDS and v != getattr(self.config, k)}
        if differ:
            shown = ", ".join(f"{k}: saved {a!r}, here {b!r}" for k, (a, b) in differ.items())
            raise ValueError(f"hvq_checkpoint={str(path)!r} was trained with other settings ({shown})")
        self.hvq.load_state_dict(saved["state"])

    def start_stage(self, name: str) -> None:
        """"tokenizer": train HVQ-Trans only; "mim": train the ViT and its heads, HVQ-Trans frozen (eval mode)."""
        check_choice("stage", name, self.training_stages())
        self.stage = name
        self.hvq.set_trainable(name == "tokenizer")
        for module in (self.mim, self.head):
            module.requires_grad_(name == "mim")

    def train(self, mode: bool = True) -> "LADMIM":
        super().train(mode)
        if getattr(self, "stage", None) == "mim":
            self.hvq.eval()  # frozen: no dropout, no codebook updates, fixed codes
        return self

    def frozen_keys(self) -> set[str]:
        """The backbone is left out of checkpoints when its weights can be loaded again (named weights)."""
        if getattr(self.tokenizer, "weights_id", None) is None:
            return set()
        return {f"tokenizer.{k}" for k in self.tokenizer.state_dict()}

    def feature_key(self) -> str | None:
        return self.tokenizer_key(f"grid={self.config.grid}", f"pixels={self.config.target == 'pixel'}")

    # ---- features

    def extract(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Frozen inputs: ``features`` h^0 (B, d_0, grid, grid); with the pixel target also ``pixels``
        (B, 3 p^2, grid, grid), the image patch of every token."""
        size = self.config.image_size
        if tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"LADMIM was built for {size} x {size} inputs, got {tuple(images.shape[-2:])}; "
                             f"resize the data to image_size={size}")
        out = {"features": self.tokenizer(images)}
        if self.config.target == "pixel":
            side = self.config.grid * self.patch
            small = F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
            out["pixels"] = F.pixel_unshuffle(small, self.patch)
        return out

    def tokens_of(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """h^0 as a token sequence (B, N, d_0), per-token normalised (``feature_norm``)."""
        x = features["features"].flatten(2).transpose(1, 2)
        return F.layer_norm(x, x.shape[-1:]) if self.config.feature_norm == "layernorm" else x

    # ---- masks

    def _count(self, ratio: float) -> int:
        return max(1, int(round(ratio * self.tokens)))

    def sample_mask(self, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """One (N,) mask of the configured strategy."""
        g, count = self.config.grid, self._count(ratio)
        if self.config.mask == "block":
            min_block = self.config.mask_min_block or max(4, count // 3)
            mask = block_mask(g, g, count, min(min_block, count), generator, exact=self.config.mask_exact)
        elif self.config.mask == "random":
            mask = random_mask(g, g, count, generator)
        else:
            mask = checkerboard_mask(g, g, self.config.checker_size, generator)
        return mask.flatten()

    def test_masks(self) -> torch.Tensor:
        """The fixed (num_test_masks, N) masks S_MIM averages over (seeded by ``mask_seed``)."""
        if self._test_masks is None:
            generator = torch.Generator().manual_seed(self.config.mask_seed)
            ratio = self.config.test_mask_ratio or self.config.mask_ratio
            self._test_masks = torch.stack([self.sample_mask(ratio, generator) for _ in range(self.config.num_test_masks)])
        return self._test_masks

    # ---- losses

    def loss(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = self.tokens_of(features)
        if self.stage == "tokenizer":
            return self.hvq(tokens)["loss"]  # Eq. 7
        masks = torch.stack([self.sample_mask(self.config.mask_ratio) for _ in range(len(tokens))]).to(tokens.device)
        return self.mim_errors(tokens, masks, features).mean()

    def mim_errors(self, tokens: torch.Tensor, masks: torch.Tensor, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per image (B,), the MIM error of the configured target under ``masks`` (B, N): Eq. 12 for the
        histogram (sum over levels of the L1 distance), the summed per-level cross-entropy over masked tokens for
        codes, the mean squared error over masked tokens for features and pixels."""
        p_out, token_out = self.mim(tokens, masks)
        return TARGET_ERRORS[self.config.target](self, p_out, token_out, tokens, masks, features)

    def _codes(self, tokens: torch.Tensor, features: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The target levels' codes (B, levels, N): precomputed by ``stage_features`` when present."""
        if features is not None and "codes" in features:
            return features["codes"]
        with torch.no_grad():
            return self.hvq.codes(tokens)[:, self.levels]

    def stage_features(self, features: dict[str, torch.Tensor], chunk: int = 64) -> dict[str, torch.Tensor]:
        """The engine's hook, once per stage over the cached training features: in the MIM stage HVQ-Trans is
        frozen, so the codes o^l of every training image are computed once here (``codes``), not in every step.
        The cache lives on the CPU: each chunk is coded on the model's device and its codes come back."""
        if self.stage != "mim" or self.config.target not in ("histogram", "code"):
            return features
        device = next(self.hvq.parameters()).device
        tokens = self.tokens_of(features)
        codes = torch.cat([self._codes(tokens[i:i + chunk].to(device)).to(tokens.device)
                           for i in range(0, len(tokens), chunk)])
        return {**features, "codes": codes}

    def histograms(self, p_out: torch.Tensor, tokens: torch.Tensor, masks: torch.Tensor,
                   features: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The predicted P^l (Eq. 9) from the prediction token's outputs p' (B, D) and the target Q^l (Eq. 11)
        under ``masks`` (B, N): both (B, levels, K), in float64 as the released code computes them (S_MIM's
        spread over images is small beside its value, and the z-scores divide by it)."""
        codes = self._codes(tokens, features)
        k = self.config.codebook_size
        predicted = self.head(p_out).view(len(p_out), len(self.levels), k).double().softmax(dim=-1)
        target = torch.stack([histogram(codes[:, i], masks, k) for i in range(len(self.levels))], dim=1).double()
        return predicted, target

    def _histogram_error(self, p_out, token_out, tokens, masks, features) -> torch.Tensor:
        predicted, target = self.histograms(p_out, tokens, masks, features)
        return (predicted - target).abs().sum(dim=(1, 2))  # Eq. 12

    def _code_error(self, p_out, token_out, tokens, masks, features) -> torch.Tensor:
        codes = self._codes(tokens, features)
        logits = self.head(token_out).view(*token_out.shape[:2], len(self.levels), self.config.codebook_size)
        ce = F.cross_entropy(logits.permute(0, 3, 1, 2), codes.transpose(1, 2), reduction="none").sum(dim=2)
        return _masked_mean(ce, masks)

    def _feature_error(self, p_out, token_out, tokens, masks, features) -> torch.Tensor:
        return _masked_mean((self.head(token_out) - tokens).pow(2).mean(dim=-1), masks)

    def _pixel_error(self, p_out, token_out, tokens, masks, features) -> torch.Tensor:
        pixels = features["pixels"].flatten(2).transpose(1, 2)
        return _masked_mean((self.head(token_out) - pixels).pow(2).mean(dim=-1), masks)

    # ---- scoring

    @torch.no_grad()
    def score_parts(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Raw S_HVQ (B,), S_MIM (B,) (mean over the fixed test masks), the HVQ error map (B, grid, grid).
        Always computed in eval mode (see ``inference``)."""
        with inference(self):
            return self._score_parts(features)

    def _score_parts(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tokens = self.tokens_of(features)
        out = self.hvq(tokens)
        error = out["error"]
        s_hvq = HVQ_SCORES[self.config.hvq_score](out, self.config.hvq_topk)
        masks = self.test_masks().to(tokens.device)
        b, m = len(tokens), len(masks)
        repeated = {k: v.repeat_interleave(m, dim=0) for k, v in features.items()}
        mim = self.mim_errors(tokens.repeat_interleave(m, dim=0), masks.repeat(b, 1), repeated)
        g = self.config.grid
        return {"s_hvq": s_hvq, "s_mim": mim.view(b, m).mean(dim=1), "error_map": error.view(b, g, g)}

    def calibrate(self, batches: Iterable[dict[str, torch.Tensor]]) -> None:
        """Mean and std of S_HVQ and S_MIM over the given images (normal held-out images, see
        ``standardise_on``), for the standardised sum."""
        hvq, mim = [], []
        for features in batches:
            parts = self.score_parts(features)
            hvq.append(parts["s_hvq"])
            mim.append(parts["s_mim"])
        stats = standardisation(torch.cat(hvq), torch.cat(mim))
        for name, value in stats.items():
            getattr(self, name).fill_(value)

    def calibration_split(self) -> str:
        """The split whose images a caller should hand to ``calibrate`` (``standardise_on``): "validation" (LOCO's
        validation/good), "test" (the released code's test-set z-scores) or "train"."""
        return self.config.standardise_on

    @property
    def calibrated(self) -> bool:
        return bool(torch.isfinite(self.hvq_std)) and bool(torch.isfinite(self.mim_std))

    def combine(self, s_hvq: torch.Tensor, s_mim: torch.Tensor, scorer: str | None = None) -> torch.Tensor:
        """The image score of ``scorer`` (default: the config's) from raw S_HVQ and S_MIM."""
        scorer = scorer or self.config.scorer
        check_choice("scorer", scorer, SCORERS)
        if scorer == "hvq":
            return s_hvq.float()
        if scorer == "mim":
            return s_mim.float()
        if not self.calibrated:
            raise RuntimeError("LADMIM's scorer='sum' standardises S_HVQ and S_MIM with statistics of held-out "
                               "normal images: fit with adlib.engine.fit(..., calibration=<validation split>) or call "
                               "model.calibrate(batches) first (or use scorer='hvq' / 'mim')")
        return standardised_sum(s_hvq.double(), s_mim.double(), {
            "hvq_mean": self.hvq_mean, "hvq_std": self.hvq_std, "mim_mean": self.mim_mean, "mim_std": self.mim_std}).float()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        """The image scores and the HVQ error maps (``explain`` adds the codes and histograms for drawing)."""
        return self.predict_parts(images)[0]

    @torch.no_grad()
    def predict_parts(self, images: torch.Tensor) -> tuple[Prediction, dict[str, torch.Tensor]]:
        """``predict`` and the raw S_HVQ and S_MIM of every image (``s_hvq``, ``s_mim``), which the engine's
        evaluation keeps (``EvalResult.parts``), so that Tab. 5's scorers are read from the same pass."""
        parts = self.score_parts(self.extract(images))
        prediction = Prediction(self._map(parts["error_map"]), self.combine(parts["s_hvq"], parts["s_mim"]))
        return prediction, {"s_hvq": parts["s_hvq"], "s_mim": parts["s_mim"]}

    def _map(self, error_map: torch.Tensor) -> torch.Tensor:
        """Per-token HVQ errors (B, grid, grid) -> smoothed per-pixel maps (B, H, W)."""
        size = self.config.image_size
        up = F.interpolate(error_map[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        return gaussian_blur(up, self.config.smoothing_sigma)

    @torch.no_grad()
    def explain(self, images: torch.Tensor, mask_index: int = 0) -> dict[str, Any]:
        """Everything the notebooks draw for images (B, 3, H, W) in [0, 1]: ``features`` h^0, ``codes`` o^l
        (B, L, grid, grid), ``error_map`` (B, grid, grid), ``map`` (B, H, W), ``s_hvq``, ``s_mim``, ``scores``;
        and for test mask ``mask_index``: ``mask`` (grid, grid), ``predicted`` P^l and ``target`` Q^l (B, levels, K)
        (histogram target only)."""
        with inference(self):
            return self._explain(images, mask_index)

    def _explain(self, images: torch.Tensor, mask_index: int) -> dict[str, Any]:
        features = self.extract(images)
        parts = self.score_parts(features)
        tokens = self.tokens_of(features)
        g = self.config.grid
        out = {"features": features["features"], "codes": self.hvq.codes(tokens).view(len(images), -1, g, g),
               "map": self._map(parts["error_map"]), **parts}
        out["scores"] = self.combine(parts["s_hvq"], parts["s_mim"])
        mask = self.test_masks()[mask_index].to(tokens.device)
        out["mask"] = mask.view(g, g)
        if self.config.target == "histogram":
            masks = mask.expand(len(images), -1)
            out["predicted"], out["target"] = self.histograms(self.mim(tokens, masks)[0], tokens, masks)
        return out

    def codebook_usage(self, reset: bool = False) -> list[dict[str, float]]:
        """Per HVQ level: fraction of the K codes used and the perplexity over the training batches since the
        last reset (read it from an engine callback: ``callback=lambda epoch, m: {"usage": m.codebook_usage(True)}``)."""
        return self.hvq.usage(reset)


@contextmanager
def inference(model: nn.Module):
    """Run ``model`` in eval mode and give every submodule its mode back afterwards. Scores never depend on
    the mode: in training mode HVQ-Trans' quantisers would count usage, restart dead codes and move EMA
    codebooks, dropout would be on, and torch's attention takes another kernel path in eval mode, so a model
    fresh from its checkpoint (in training mode) scored other bits than the one saved (issue 23, item 7)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


def _masked_mean(values: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean of (B, N) values over the masked positions, per image."""
    weights = masks.to(values.dtype)
    return (values * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


TARGET_ERRORS: dict[str, Callable] = {
    "histogram": LADMIM._histogram_error,
    "code": LADMIM._code_error,
    "feature": LADMIM._feature_error,
    "pixel": LADMIM._pixel_error,
}


def standardisation(s_hvq: torch.Tensor, s_mim: torch.Tensor) -> dict[str, float]:
    """Mean and population std (``np.std``, as the released code's z-scores) of each raw score (std 1 when it
    is 0 or undefined, e.g. a single image)."""
    out = {}
    for name, values in (("hvq", s_hvq.double()), ("mim", s_mim.double())):
        std = float(values.std(correction=0)) if len(values) > 1 else 0.0
        out[f"{name}_mean"] = float(values.mean())
        out[f"{name}_std"] = std if std > 0 and math.isfinite(std) else 1.0
    return out


def standardised_sum(s_hvq, s_mim, stats: dict):
    """S'_HVQ + S'_MIM: each raw score (tensors or arrays) standardised with ``stats`` (``standardisation``'s
    keys: the held-out normal images' statistics, or the test set's own for the released code's reading)."""
    return (s_hvq - stats["hvq_mean"]) / stats["hvq_std"] + (s_mim - stats["mim_mean"]) / stats["mim_std"]


@torch.no_grad()
def score_components(model: LADMIM, dataset, batch_size: int = 8, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Raw S_HVQ and S_MIM of every image of a dataset (items with image, label, group, category), so that
    several scorers (Tab. 5) and standardisations (validation vs the release's test-set z-scores) can be read
    from one pass. Returns numpy arrays ``s_hvq``, ``s_mim``, ``labels`` and lists ``groups``, ``categories``."""
    import numpy as np
    from torch.utils.data import DataLoader

    model.to(device).eval()
    out = {"s_hvq": [], "s_mim": [], "labels": [], "groups": [], "categories": []}
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        parts = model.score_parts(model.extract(batch["image"].to(device)))
        out["s_hvq"].append(parts["s_hvq"].cpu())
        out["s_mim"].append(parts["s_mim"].cpu())
        out["labels"].append(torch.as_tensor(batch["label"]))
        out["groups"] += list(batch["group"])
        out["categories"] += list(batch["category"])
    for key in ("s_hvq", "s_mim", "labels"):
        out[key] = torch.cat(out[key]).numpy()
    out["labels"] = out["labels"].astype(np.int64)
    return out


# ------------------------------------------------------------------------------------- the authors' checkpoints
#
# LADMIM's release is two checkpoints: its tokenizer, HVQ-Trans (a fork that is not public; upstream's
# HVQ_TR_switch keys, see adlib.models.hvq) and its MIM ViT (src/model.py, VisionTransformerMIM). from_authors
# takes them as one dict: the tokenizer's keys under "hvq.", the ViT's under "mim.". The backbone (the PDN) is
# in neither: give weights=<pretrained_teacher_small.pth>. The calibration statistics are computed by adlib.


# The settings in which LADMIM's (and its HVQ-Trans') released code differs from adlib's defaults
AUTHORS_SWITCHES = ("hvq_layout", "codebook_update", "codebook_init", "codebook_restart", "commitment",
                    "feature_norm", "mim_cls_token", "mim_levels", "hvq_score", "standardise_on", "mask_exact")


def authors_config(shapes, **config) -> LADMIMConfig:
    """The released model's settings from its shapes: HVQ-Trans' code layout, the ViT's width, depth, MLP ratio,
    class token and the code levels its head predicts (``--codebook_indices``, upstream's order o^L..o^1), and
    the release's scoring (raw h^0, HVQ-Trans' max_score, z-scores over the test set)."""
    from adlib.models import model_config
    from adlib.models.hvq import count_indexed, hvq_authors_fields

    hvq = hvq_authors_fields(shapes, "hvq.")
    dim, in_dim = shapes["mim.patch_embed.proj.weight"][:2]
    levels = shapes["mim.lm_head.weight"][0] // hvq["codebook_size"]
    derived = dict(
        backbone="pdn", pretrained=False, image_size=224, grid=hvq["grid"][0], feature_norm="none",
        hvq_layout="code", hvq_layers=hvq["layers"], hvq_dim=hvq["dim"], hvq_ffn=hvq["ffn"],
        codebook_size=hvq["codebook_size"], code_dim=2 * hvq["dim"], hvq_dec_dim=2 * hvq["dim"], hvq_heads=8,
        hvq_dropout=0.1, commitment=0.25, codebook_update="ema", codebook_init="normal", codebook_restart=False,
        hvq_classes=hvq["classes"], mim_dim=dim, mim_layers=count_indexed(shapes, "mim.blocks.{}.norm1.weight"),
        mim_mlp_ratio=shapes["mim.blocks.0.mlp.fc1.weight"][0] / dim, mim_cls_token="mim.cls_token" in shapes,
        layer_scale=1e-4 if "mim.blocks.0.gamma_1" in shapes else 0.0,
        mim_levels=tuple(range(hvq["layers"], hvq["layers"] - levels, -1)), hvq_score="release",
        standardise_on="test", mask_exact=True)
    if hvq["grid"][0] != hvq["grid"][1]:
        raise AuthorsCheckpointShapeError(f"ladmim: a {hvq['grid']} token grid; LADMIM's grid is square")
    config = model_config("ladmim", None, **{**derived, **config})
    if in_dim != hvq["in_dim"]:
        raise AuthorsCheckpointShapeError(f"ladmim: the ViT takes {in_dim} channels, HVQ-Trans {hvq['in_dim']}")
    return config


class AuthorsCheckpointShapeError(ValueError):
    """The two released checkpoints do not describe one model."""


def authors_key_map(config: LADMIMConfig) -> dict[str, str]:
    from adlib.models.hvq import hvq_authors_key_map

    pairs = {"embed.weight": "patch_embed.proj.weight", "embed.bias": "patch_embed.proj.bias",
             "mask_token": "mask_token", "pred_token": "hist_token", "pos": "pos_embed",
             "norm.weight": "norm.weight", "norm.bias": "norm.bias"}
    if config.mim_cls_token:
        pairs["cls_token"] = "cls_token"
    for i in range(config.mim_layers):
        for mine, theirs in (("norm1", "norm1"), ("norm2", "norm2"), ("qkv", "attn.qkv"), ("proj", "attn.proj"),
                             ("mlp.0", "mlp.fc1"), ("mlp.2", "mlp.fc2")):
            for part in ("weight", "bias"):
                pairs[f"blocks.{i}.{mine}.{part}"] = f"blocks.{i}.{theirs}.{part}"
        if config.layer_scale > 0:
            pairs[f"blocks.{i}.gamma1"], pairs[f"blocks.{i}.gamma2"] = f"blocks.{i}.gamma_1", f"blocks.{i}.gamma_2"
    out = {f"mim.{k}": f"mim.{v}" for k, v in pairs.items()}
    out.update({"head.weight": "mim.lm_head.weight", "head.bias": "mim.lm_head.bias"})
    if config.hvq_layout == "code":
        out.update(hvq_authors_key_map(config.hvq_layers, config.hvq_switch_class, "hvq.", "hvq."))
    return out


def authors_ignored(config: LADMIMConfig) -> set[str]:
    from adlib.models.hvq import hvq_authors_ignored

    return hvq_authors_ignored(config.hvq_layers, config.hvq_switch_class, config.hvq_classes, "hvq.")


def authors_layout(state: dict, config: LADMIMConfig) -> dict:
    """HVQ-Trans' tensors as ``hvq_authors_layout``; the ViT's 1 x 1 patch convolution as a Linear, its
    position table from [cls, p, tokens] to adlib's [tokens, p, cls] order, and its q and v biases (it has no
    k bias) as one qkv bias with a zero k part."""
    from adlib.models.hvq import count_indexed, hvq_authors_layout

    out = hvq_authors_layout(state, "hvq.")
    if "mim.patch_embed.proj.weight" in out:
        out["mim.patch_embed.proj.weight"] = out["mim.patch_embed.proj.weight"].flatten(1)
    if "mim.pos_embed" in out:
        pos = out["mim.pos_embed"]
        first = 2 if "mim.cls_token" in out else 1  # the tokens before the patches
        out["mim.pos_embed"] = torch.cat([pos[:, first:], pos[:, first - 1:first], pos[:, :first - 1]], dim=1)
    for i in range(count_indexed(out, "mim.blocks.{}.norm1.weight")):
        q, v = out.pop(f"mim.blocks.{i}.attn.q_bias", None), out.pop(f"mim.blocks.{i}.attn.v_bias", None)
        if q is not None and v is not None:
            out[f"mim.blocks.{i}.attn.qkv.bias"] = torch.cat([q, torch.zeros_like(v), v])
    return out


@torch.no_grad()
def authors_stages(model: LADMIM, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The stages of ``benchmarks/parity/ladmim.py`` for ``inputs``: the feature map h^0 (B, C, g, g) and the
    masks (M, N), used as the test masks: the code maps, P^l and Q^l per image and mask (B, M, L, K), S_HVQ,
    S_MIM and the standardised sum, its statistics taken over these images (the release's test-set z-scores)."""
    features = {"features": inputs["features"]}
    masks = inputs["masks"].bool()
    model._test_masks = masks
    with inference(model):
        tokens = model.tokens_of(features)
        b, m = len(tokens), len(masks)
        repeated = tokens.repeat_interleave(m, dim=0)
        tiled = masks.repeat(b, 1)
        predicted, target = model.histograms(model.mim(repeated, tiled)[0], repeated, tiled)
        parts = model.score_parts(features)
        model.calibrate([features])
        score = model.combine(parts["s_hvq"], parts["s_mim"], "sum")
    shape = (b, m, len(model.levels), model.config.codebook_size)
    return {"codes": model._codes(tokens).float(), "predicted": predicted.view(shape), "target": target.view(shape),
            "s_hvq": parts["s_hvq"], "s_mim": parts["s_mim"], "score": score}
