"""ViTAD: plain-ViT feature reconstruction for multi-class anomaly detection (Zhang et al., "Exploring Plain ViT
Reconstruction for Multi-class Unsupervised Anomaly Detection").

Meta-AD = encoder E -> fuser F -> decoder D; the reconstruction error of E's stage features is the anomaly map.
ViTAD builds every part from plain, columnar ViT blocks at one resolution (the paper's Eqs. 1-7 were lost in
the text extraction; ``../shared/research/repro_spec.md`` §1.3 reconstructs them, ADer's ``model/vitad.py``
fills the gaps):

1. a frozen ViT encoder (DINO ViT-S/16 at 256 px: 16 x 16 tokens of width 384) is cut into 4 divisions of 3
   blocks; the raw outputs of blocks 3, 6, 9 (before the final LayerNorm, class token dropped) are the
   *restraint* stages 1-3, block 12 (stage 4) feeds the fuser; stage 0 is the patch-embedding output;
2. the fuser is one Linear layer on the stage-4 tokens (Eq. 5 with S = {4});
3. the decoder is 9 randomly initialised ViT blocks with their own position embedding and no class token;
   the outputs of decoder blocks 3, 6, 9 are paired with the restraint stages in reverse (decoder block 9
   reconstructs encoder stage 1, block 3 reconstructs stage 3);
4. training minimises, per stage, 1 - cos of the whole flattened feature maps ("Cos_f", Eq. 7), summed over
   stages; only the fuser and decoder train;
5. the map: per stage 1 - cos per position (Eq. 6), upsampled bilinearly to the image, summed, Gaussian
   sigma = 4; the image score is the max of the map after a 16 x 16 stride-1 average pooling.

Every design the paper ablates is a field of ``ViTADConfig`` (Tab. II restraint stages, Tab. III micro
factors, Tab. VIII fusers, Tab. IX scale via ``backbone``, Tab. X divisions, Tab. XI loss, Tab. XII
augmentation; epochs and schedule are the engine's ``FitConfig``). Recipes live in ``adlib.papers.vitad``.

CNN encoders (the offline smoke profile, EfficientNet-Lite0): a CNN is pyramidal, so each tapped stage is
resampled to one common grid (stride ``cnn_stride``) to make it columnar, and decoder outputs pass through a
per-stage Linear read-out where a stage's width differs from the decoder's. Both are additions for
non-ViT encoders; a ViT encoder runs exactly the paper's architecture (no resampling, no read-out).

Checked against ADer's code (zhangzjn/ADer 902937a: ``model/vitad.py``, ``util/metric.py``; issue 22):
``tests/fixtures/parity/vitad.pt`` holds ADer's ViTAD at a reduced size (their classes and init) and its outputs;
with its weights loaded through ``authors.from_authors`` every stage (teacher taps, fuser input and output,
decoder taps, each stage's upsampled map, the map, the score) equals theirs within 1e-5
(``results/faithfulness/``). Deviations:

- on purpose, ``map_divisor``: ADer's ``cal_anomaly_map(amap_mode='add')`` divides the stage sum by
  n_stages ** 2; adlib sums, as the paper's map (a constant: no metric changes); "ader" gives the code's scale;
- a bug, fixed: the Gaussian padded maps with PyTorch's reflect border where ADer calls
  ``scipy.ndimage.gaussian_filter`` (its "reflect" repeats the edge sample), which changes the map near its
  borders; ``smoothing_padding='reflect'`` restores it (``benchmarks/parity/faithfulness.py`` prints the
  difference before and after);
- a released ADer checkpoint (``ckpt.pth``/``net.pth``) holds the encoder (``net_t``): ``authors_config``
  reads its width, depth and image size and loads it (``pretrained=False``); only its head count, which no
  shape shows, is width / 64 unless given.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from adlib.models.base import AnomalyModel, Prediction
from adlib.models.common import check_choice, gaussian_blur

FUSERS = ("linear", "add", "vit", "conv")
MAP_DIVISORS = ("none", "ader")
LOSSES = ("cos_flat", "cos_pos", "l1", "mse")


@dataclass
class ViTADConfig:
    """ViTAD settings; defaults are the paper's final model (DINO ViT-S/16, 256 px). The comment on each field
    says which table ablates it, and what is ours where the paper (and ADer's code) is silent."""

    # --- encoder E (frozen)
    backbone: str = "dino_vits16"  # an adlib.backbones name; paper: DINO ViT-S/16 (Tab. I, IX vary it)
    pretrained: bool = True  # False: a random, frozen encoder (Tab. I "Rand")
    weights: str | None = None  # a local timm checkpoint for the encoder (overrides pretrained)
    image_size: int = 256  # square input side; paper 256 (Fig. 9 varies it)
    # timm keyword arguments that change the encoder's shape (img_size, embed_dim, depth, num_heads), with
    # pretrained=False: an authors' checkpoint carries its encoder's weights (ADer builds the ViT at img_size
    # 256, so its position embedding has 16 x 16 + 1 entries); ``authors_config`` sets them. None: timm's own.
    backbone_kwargs: dict | None = None
    # Taps that end the encoder's divisions = stages 1..N (ViT: 1-indexed blocks; CNN: feature stages). The last
    # division feeds the fuser by default. None: 4 equal divisions of a ViT (3, 6, 9, 12), a CNN's stages 1-4.
    layers: tuple[int, ...] | None = None
    restraint_stages: tuple[int, ...] = (1, 2, 3)  # stages reconstructed and scored (Tab. II); 0 = the stem
    before_norm: bool = True  # tap block outputs before the ViT's final LayerNorm (Tab. III "Before Norm")
    remove_cls: bool = True  # drop the class token from every stage (Tab. III "Remove CLS Token")
    cnn_stride: int = 16  # CNN encoders only: stride of the common grid all stages are resampled to (ours)
    # --- fuser F
    # "linear": one Linear on the concatenated fuser stages (ViTAD with stage 4 alone; several = Tab. VIII "Cat");
    # "add": the stages summed, then the Linear (Tab. VIII "Add"); "vit" / "conv": the Linear, then
    # ``fuser_depth`` ViT blocks / ResNet BottleNecks (Tab. VIII, Fig. 7 d / c; the order is our reading).
    fuser: str = "linear"
    fuser_stages: tuple[int, ...] | None = None  # None: the last stage (ViTAD: stage 4)
    fuser_linear: bool = True  # the fuser's Linear (Tab. III "Add Linear"); False needs matching widths
    fuser_depth: int = 1  # blocks of a "vit" / "conv" fuser (Tab. VIII: 1, 3, 5)
    # --- decoder D (trained from scratch)
    decoder_divisions: tuple[int, ...] = (3, 3, 3)  # blocks per decoder division, one tap after each (Tab. X)
    decoder_dim: int | None = None  # None: the fuser input's width (the encoder's, as the paper's decoders)
    decoder_heads: int | None = None  # None: the ViT encoder's head count (CNN: decoder_dim // 64)
    mlp_ratio: float = 4.0  # ViT-S MLP ratio (ADer)
    pos_embed: bool = True  # the decoder's learned position embedding (Tab. III "Use Pos. Embed.")
    # --- objective and scoring
    loss: str = "cos_flat"  # Tab. XI: "cos_flat" (default), "cos_pos", "l1", "mse"; the map uses the same distance
    smoothing_sigma: float = 4.0  # Gaussian sigma in pixels (ADer; the paper gives none)
    # The stage maps are summed (the paper); "ader" divides the sum by n_stages ** 2 as ADer's
    # ``cal_anomaly_map(amap_mode='add')`` does (len(maps) * sum(weights)): a constant that changes no metric.
    map_divisor: str = "none"
    # The Gaussian's border: "symmetric" is scipy.ndimage.gaussian_filter's (the edge sample repeated), what
    # ADer calls; "reflect" (PyTorch's) is what adlib used before the parity check found it (issue 22).
    smoothing_padding: str = "symmetric"
    score_pool: int = 16  # image score: max after a k x k stride-1 average pooling (ADer); 0: plain max
    # --- training data
    # Tab. XII: "none" (paper), "cc+cj", "cc+rhf", "cc+rr", "rrc", "all"; applied to training images only, so
    # features are then not cached. The paper gives no parameters; see AUGMENTATIONS for ours.
    augmentation: str = "none"


# --------------------------------------------------------------------------------------- building blocks


class Attention(nn.Module):
    """Multi-head self-attention as timm's ViT (one qkv Linear, scaled dot product, output projection)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"decoder width {dim} is not divisible by {heads} heads; set decoder_heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """A pre-norm ViT block (timm's ``Block`` layout: norm1, attn, norm2, mlp.fc1/fc2, GELU, LayerNorm eps 1e-6)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential()
        self.mlp.fc1, self.mlp.act, self.mlp.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def vit_init(module: nn.Module) -> None:
    """timm's ViT initialisation (ADer's decoder is a timm VisionTransformer): Linear weights truncated normal
    with std 0.02, biases zero; LayerNorm weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BottleNeck(nn.Module):
    """ResNet's BottleNeck (1x1 down to width/4, 3x3, 1x1 up, BatchNorm, ReLU, identity skip) on a token grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        mid = max(dim // 4, 1)
        self.body = nn.Sequential(
            nn.Conv2d(dim, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, dim, 1, bias=False), nn.BatchNorm2d(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class Fuser(nn.Module):
    """F: fuser-stage tokens (B, L, C_i) -> decoder input (B, L, D) (Eq. 5 and the Tab. VIII variants)."""

    def __init__(self, widths: list[int], dim: int, heads: int, grid: tuple[int, int], prefix: int,
                 config: ViTADConfig) -> None:
        super().__init__()
        self.kind, self.grid, self.prefix = config.fuser, grid, prefix
        if self.kind == "add" and len(set(widths)) > 1:
            raise ValueError(f"fuser='add' sums stages of equal width; fuser_stages have widths {widths}")
        width = widths[0] if self.kind == "add" else sum(widths)
        if config.fuser_linear:
            self.linear = nn.Linear(width, dim)  # PyTorch's default init, as ADer's separate Fusion module
        elif width != dim:
            raise ValueError(f"fuser_linear=False passes the fused tokens (width {width}) to the decoder as they are; "
                             f"that needs decoder_dim={width} and a single fuser stage (or fuser='add')")
        else:
            self.linear = nn.Identity()
        if self.kind == "vit":
            self.blocks = nn.Sequential(*[Block(dim, heads, config.mlp_ratio) for _ in range(config.fuser_depth)])
            vit_init(self.blocks)
        elif self.kind == "conv":
            if prefix:
                raise ValueError("fuser='conv' works on the token grid; it needs remove_cls=True")
            self.blocks = nn.Sequential(*[BottleNeck(dim) for _ in range(config.fuser_depth)])

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        x = torch.stack(stages).sum(0) if self.kind == "add" else torch.cat(stages, dim=-1)
        x = self.linear(x)
        if self.kind == "vit":
            x = self.blocks(x)
        elif self.kind == "conv":
            b, n, d = x.shape
            grid = x.transpose(1, 2).reshape(b, d, *self.grid)
            x = self.blocks(grid).flatten(2).transpose(1, 2)
        return x


class Decoder(nn.Module):
    """D: a plain ViT without patch embedding or class token; returns the token outputs (B, L, D) after the last
    block of every division, deepest first (ADer's reversed list: out[0] reconstructs the shallowest stage)."""

    def __init__(self, dim: int, heads: int, tokens: int, config: ViTADConfig) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim)) if config.pos_embed else None
        self.blocks = nn.ModuleList(Block(dim, heads, config.mlp_ratio) for _ in range(sum(config.decoder_divisions)))
        vit_init(self.blocks)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.taps = set(accumulate(int(d) for d in config.decoder_divisions))  # last block of each division

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.pos_embed is not None:
            x = x + self.pos_embed
        out = []
        for i, block in enumerate(self.blocks, start=1):
            x = block(x)
            if i in self.taps:
                out.append(x)
        return out[::-1]


# ------------------------------------------------------------------------------------ augmentation (Tab. XII)


def _center_crop(images: torch.Tensor, ratio: float = 0.875) -> torch.Tensor:
    """CenterCrop of ``ratio`` of each side, resized back (the ImageNet evaluation crop 224/256; our reading)."""
    h, w = images.shape[-2:]
    ch, cw = max(1, round(h * ratio)), max(1, round(w * ratio))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = images[..., top:top + ch, left:left + cw]
    return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


def _per_image(transform) -> Callable[[torch.Tensor], torch.Tensor]:
    """A torchvision v2 transform applied to each image of a batch with its own random parameters (torch's RNG,
    so the engine's seed fixes them)."""
    def apply(images: torch.Tensor) -> torch.Tensor:
        return torch.stack([transform(image) for image in images]).clamp(0.0, 1.0)
    return apply


def _torchvision_augmentations() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    from torchvision.transforms import v2

    # The paper names the transforms only; the parameters are torchvision's defaults where it has them
    # (RandomResizedCrop scale 0.08-1, flip p 0.5) and the usual ImageNet-recipe values otherwise.
    jitter = _per_image(v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1))
    flip = _per_image(v2.RandomHorizontalFlip(p=0.5))
    rotate = _per_image(v2.RandomRotation(degrees=15))

    def resized_crop(images: torch.Tensor) -> torch.Tensor:
        return _per_image(v2.RandomResizedCrop(tuple(images.shape[-2:]), antialias=True))(images)

    return {
        "cc+cj": lambda x: jitter(_center_crop(x)),
        "cc+rhf": lambda x: flip(_center_crop(x)),
        "cc+rr": lambda x: rotate(_center_crop(x)),
        "rrc": resized_crop,
        "all": lambda x: rotate(flip(jitter(resized_crop(_center_crop(x))))),
    }


AUGMENTATIONS = ("none", "cc+cj", "cc+rhf", "cc+rr", "rrc", "all")


# --------------------------------------------------------------------------------------------------- model


class ViTAD(AnomalyModel):
    """ViTAD over a frozen ``adlib.backbones`` encoder; ``encoder`` may be given (tests, other timm ViTs)."""

    name = "vitad"
    trainable = True

    def __init__(self, config: ViTADConfig | None = None, encoder: nn.Module | None = None) -> None:
        config = config or ViTADConfig()
        self._validate(config)
        super().__init__(config)
        if encoder is None:
            encoder = self._build_encoder(config)
        self.tokenizer = encoder  # the frozen encoder E (the base class keeps it frozen and out of checkpoints)
        for p in self.tokenizer.parameters():
            p.requires_grad_(False)
        self.tokenizer.eval()
        self.is_vit = getattr(encoder, "kind", "vit") == "vit"
        if not self.is_vit and (not config.before_norm or not config.remove_cls):
            raise ValueError("before_norm=False and remove_cls=False apply to ViT encoders only; "
                             f"backbone {config.backbone!r} is a CNN")

        self.stage_taps = list(self._taps(config))  # stage s >= 1 is encoder tap stage_taps[s - 1]
        n = len(self.stage_taps)
        if self.is_vit:
            if max(self.stage_taps) > self._vit_depth():
                raise ValueError(f"layers={tuple(self.stage_taps)}: the encoder has {self._vit_depth()} blocks")
            if not config.before_norm and not getattr(encoder, "final_norm", False):
                raise ValueError("before_norm=False needs the encoder's final norm: build it with "
                                 "adlib.backbones.create(..., final_norm=True)")
        self.fuser_stages = tuple(config.fuser_stages) if config.fuser_stages is not None else (n,)
        bad = [s for s in (*config.restraint_stages, *self.fuser_stages) if not 0 <= s <= n]
        if bad:
            raise ValueError(f"stages {bad} do not exist: the encoder has stages 0 (stem) to {n} "
                             f"(taps {self.stage_taps}); set layers, restraint_stages or fuser_stages")
        self.used_stages = sorted(set(config.restraint_stages) | set(self.fuser_stages))
        if 0 in self.used_stages and not self.is_vit and 0 in self.stage_taps:
            raise ValueError("a CNN's stage 0 is its first feature stage (index 0); it cannot also be a tap in layers")

        # Shapes: one probe through the encoder.
        self.image_hw = (config.image_size, config.image_size)
        with torch.no_grad():
            probe = self._encode(torch.zeros(1, 3, *self.image_hw, device=self._device()))
        self.grid = self._grid_of(probe)
        self.prefix = probe[self.used_stages[0]].shape[1] - self.grid[0] * self.grid[1]
        widths = {s: int(f.shape[-1]) for s, f in probe.items()}
        fuse_widths = [widths[s] for s in self.fuser_stages]
        dim = config.decoder_dim or (fuse_widths[0] if config.fuser == "add" else sum(fuse_widths))
        heads = config.decoder_heads or self._encoder_heads() or max(dim // 64, 1)
        self.width = dim

        self.fuser = Fuser(fuse_widths, dim, heads, self.grid, self.prefix, config)
        self.decoder = Decoder(dim, heads, self.grid[0] * self.grid[1] + self.prefix, config)
        # Decoder outputs compared with the restraint stages: identity for a ViT (same width, the paper); a Linear
        # read-out where a CNN stage's width differs from the decoder's (our addition).
        self.readouts = nn.ModuleList(
            nn.Identity() if widths[s] == dim else nn.Linear(dim, widths[s]) for s in config.restraint_stages)
        self.augment = None if config.augmentation == "none" else _torchvision_augmentations()[config.augmentation]

    # ---- construction helpers

    @staticmethod
    def _validate(config: ViTADConfig) -> None:
        check_choice("fuser", config.fuser, FUSERS)
        check_choice("loss", config.loss, LOSSES)
        check_choice("augmentation", config.augmentation, AUGMENTATIONS)
        check_choice("map_divisor", config.map_divisor, MAP_DIVISORS)
        check_choice("smoothing_padding", config.smoothing_padding, ("symmetric", "reflect"))
        if not config.restraint_stages:
            raise ValueError("restraint_stages: need at least one stage to reconstruct")
        if len(set(config.restraint_stages)) != len(config.restraint_stages):
            raise ValueError(f"restraint_stages={config.restraint_stages}: repeated stage")
        if config.fuser_stages is not None and not config.fuser_stages:
            raise ValueError("fuser_stages: need at least one stage (None: the last)")
        if len(config.decoder_divisions) != len(config.restraint_stages):
            raise ValueError(f"decoder_divisions={config.decoder_divisions} has {len(config.decoder_divisions)} "
                             f"divisions but restraint_stages={config.restraint_stages} has "
                             f"{len(config.restraint_stages)} stages; each division reconstructs one stage")
        if any(int(d) < 1 for d in config.decoder_divisions):
            raise ValueError(f"decoder_divisions={config.decoder_divisions}: every division needs >= 1 block")
        if config.fuser_depth < 1 and config.fuser in ("vit", "conv"):
            raise ValueError(f"fuser_depth={config.fuser_depth}: a '{config.fuser}' fuser needs >= 1 block")
        if not isinstance(config.image_size, int) or config.image_size < 16:
            raise ValueError(f"image_size={config.image_size!r}: expected an int >= 16 (ViTAD is square)")
        if config.cnn_stride < 1 or config.score_pool < 0:
            raise ValueError("cnn_stride must be >= 1 and score_pool >= 0")

    def _taps(self, config: ViTADConfig) -> tuple[int, ...]:
        if config.layers is not None:
            taps = tuple(int(t) for t in config.layers)
            if list(taps) != sorted(set(taps)):
                raise ValueError(f"layers={config.layers}: expected increasing taps, one per division")
            return taps
        if self.is_vit:
            depth = self._vit_depth()
            if depth % 4:
                raise ValueError(f"a {depth}-block ViT has no 4 equal divisions; set layers explicitly")
            return tuple(depth // 4 * i for i in (1, 2, 3, 4))
        return (1, 2, 3, 4)

    def _build_encoder(self, config: ViTADConfig) -> nn.Module:
        from adlib import backbones

        spec = backbones.SPECS.get(config.backbone)
        if spec is None:
            raise ValueError(f"backbone={config.backbone!r} unknown; expected one of {backbones.available()}")
        if config.layers is not None:
            taps = list(config.layers)
        elif spec.kind == "vit":  # the tap list depends on the depth: read it from a network on the meta device
            import timm

            with torch.device("meta"):
                depth = len(timm.create_model(spec.timm_id, pretrained=False, **(config.backbone_kwargs or {})).blocks)
            taps = [depth // 4 * i for i in (1, 2, 3, 4)]
        else:
            taps = [1, 2, 3, 4]
        # A CNN's stage 0 is its first feature stage; a ViT's stem is computed from the network directly.
        stages = set(config.restraint_stages) | set(config.fuser_stages or (len(taps),))
        if spec.kind == "cnn" and 0 in stages and 0 not in taps:
            taps = [0] + taps
            self._cnn_stem_tap = True
        return backbones.create(config.backbone, layers=taps, pretrained=config.pretrained, weights=config.weights,
                                final_norm=not config.before_norm and spec.kind == "vit",
                                timm_kwargs=config.backbone_kwargs)

    def _device(self) -> torch.device:
        return next(self.tokenizer.parameters()).device

    def _vit_depth(self) -> int:
        return len(self.tokenizer.model.blocks)

    def _encoder_heads(self) -> int | None:
        if not self.is_vit:
            return None
        return int(self.tokenizer.model.blocks[0].attn.num_heads)

    def _grid_of(self, stages: dict[int, torch.Tensor]) -> tuple[int, int]:
        if self.is_vit:
            p = self.tokenizer.patch_size
            return self.image_hw[0] // p, self.image_hw[1] // p
        s = self.config.cnn_stride
        return max(1, self.image_hw[0] // s), max(1, self.image_hw[1] // s)

    # ---- the encoder E

    def _encode(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        """Encoder stages {stage: tokens (B, L(+prefix), C)} for the used stages (no gradient into E)."""
        return self._vit_stages(images) if self.is_vit else self._cnn_stages(images)

    def _vit_stages(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        vit, enc = self.tokenizer.model, self.tokenizer
        x = (images - enc.mean) / enc.std
        p = enc.patch_size
        x = x[..., : x.shape[-2] // p * p, : x.shape[-1] // p * p]
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        wanted = {self.stage_taps[s - 1]: s for s in self.used_stages if s > 0}
        out = {0: x} if 0 in self.used_stages else {}
        for i, block in enumerate(vit.blocks, start=1):
            x = block(x)
            if i in wanted:
                out[wanted[i]] = vit.norm(x) if not self.config.before_norm else x
        drop = vit.num_prefix_tokens if self.config.remove_cls else 0
        return {s: t[:, drop:] for s, t in out.items()}

    def _cnn_stages(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        feats = self.tokenizer(images)
        offset = 1 if getattr(self, "_cnn_stem_tap", False) else 0
        grid = self._grid_of({})
        out = {}
        for s in self.used_stages:
            f = feats[s - 1 + offset] if s > 0 else feats[0]
            if tuple(f.shape[-2:]) != grid:  # columnar: every stage on one grid (area average down, bilinear up)
                if f.shape[-2] >= grid[0] and f.shape[-1] >= grid[1]:
                    f = F.adaptive_avg_pool2d(f, grid)
                else:
                    f = F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
            out[s] = f.flatten(2).transpose(1, 2)
        return out

    # ---- engine interface

    @property
    def cacheable(self) -> bool:
        return self.augment is None

    def feature_key(self) -> str | None:
        c = self.config
        return self.tokenizer_key(f"stages={self.used_stages}", f"before_norm={c.before_norm}",
                                  f"remove_cls={c.remove_cls}", f"cnn_stride={c.cnn_stride}")

    def extract(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Encoder tokens of the used stages (``used_stages`` order); in training mode the images are augmented
        first when ``augmentation`` is set."""
        return self._features(images, augment=self.training)

    def _features(self, images: torch.Tensor, augment: bool) -> list[torch.Tensor]:
        if tuple(images.shape[-2:]) != self.image_hw:
            raise ValueError(f"ViTAD was built for {self.image_hw} inputs, got {tuple(images.shape[-2:])}; "
                             f"resize the data to image_size={self.config.image_size}")
        if augment and self.augment is not None:
            images = self.augment(images)
        with torch.no_grad():
            stages = self._encode(images)
        return [stages[s] for s in self.used_stages]

    def loss(self, features: list[torch.Tensor]) -> torch.Tensor:
        out = self.forward_features(features)
        return sum(LOSS_FNS[self.config.loss](t, r) for t, r in zip(out["targets"], out["reconstructions"]))

    def predict(self, images: torch.Tensor) -> Prediction:
        out = self.explain(images)
        return Prediction(out["map"], out["scores"])

    # ---- the method

    def forward_features(self, features: list[torch.Tensor]) -> dict[str, Any]:
        """Targets (restraint stages), fuser output and reconstructions from the extracted encoder tokens."""
        stages = dict(zip(self.used_stages, features))
        fused = self.fuser([stages[s] for s in self.fuser_stages])
        decoded = self.decoder(fused)  # shallowest stage first
        targets = [stages[s].detach() for s in self.config.restraint_stages]
        order = sorted(range(len(targets)), key=lambda i: self.config.restraint_stages[i])
        reconstructions = [None] * len(targets)
        for rank, i in enumerate(order):  # the shallowest restraint stage <- the deepest decoder division
            reconstructions[i] = self.readouts[i](decoded[rank])
        return {"stages": stages, "fused": fused, "targets": targets, "reconstructions": reconstructions}

    def stage_maps(self, targets: list[torch.Tensor], reconstructions: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per restraint stage the distance at each position (Eq. 6 for the cosine losses), (B, h, w)."""
        distance = MAP_FNS[self.config.loss]
        out = []
        for t, r in zip(targets, reconstructions):
            d = distance(t[:, self.prefix:], r[:, self.prefix:])
            out.append(d.reshape(d.shape[0], *self.grid))
        return out

    def anomaly_map(self, stage_maps: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Stage maps upsampled to the image (bilinear, align_corners=True as ADer), summed and smoothed."""
        up = [F.interpolate(m.unsqueeze(1), size=self.image_hw, mode="bilinear", align_corners=True).squeeze(1)
              for m in stage_maps]
        total = torch.stack(up).sum(0)
        if self.config.map_divisor == "ader":
            total = total / len(up) ** 2
        return up, gaussian_blur(total, self.config.smoothing_sigma, padding=self.config.smoothing_padding)

    def image_scores(self, maps: torch.Tensor) -> torch.Tensor:
        k = min(self.config.score_pool, *maps.shape[-2:])
        if k > 1:
            maps = F.avg_pool2d(maps.unsqueeze(1), k, stride=1).squeeze(1)
        return maps.flatten(1).amax(dim=1)

    @torch.no_grad()
    def explain(self, images: torch.Tensor) -> dict[str, Any]:
        """Everything the notebooks draw for a batch (B, 3, H, W) in [0, 1]: ``stages`` (encoder tokens per used
        stage), ``fused``, ``targets`` / ``reconstructions`` (per restraint stage, tokens), ``stage_maps``
        (B, h, w), ``upsampled`` (B, H, W) per stage, ``map`` (B, H, W) and ``scores`` (B,)."""
        out = self.forward_features(self._features(images, augment=False))
        out["stage_maps"] = self.stage_maps(out["targets"], out["reconstructions"])
        out["upsampled"], out["map"] = self.anomaly_map(out["stage_maps"])
        out["scores"] = self.image_scores(out["map"])
        return out


# ------------------------------------------------------------------------------------ losses and distances


def _cos_flat(t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Cos_f (Tab. XI, default): 1 - cos of each image's whole flattened stage, averaged over the batch."""
    return (1 - F.cosine_similarity(t.flatten(1), r.flatten(1), dim=1)).mean()


def _cos_map(t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    return 1 - F.cosine_similarity(t, r, dim=-1)


LOSS_FNS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cos_flat": _cos_flat,
    "cos_pos": lambda t, r: _cos_map(t, r).mean(),  # Cos_p: the per-position distance (Eq. 6), averaged
    "l1": lambda t, r: (t - r).abs().mean(),
    "mse": lambda t, r: (t - r).pow(2).mean(),
}

# The test-time map of each loss (repro_spec §1.7 Tab. XI reading): cosine distance per position for both cosine
# losses (Cos_f has no per-pixel form), the per-position mean absolute / squared error for L1 / MSE.
MAP_FNS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cos_flat": _cos_map,
    "cos_pos": _cos_map,
    "l1": lambda t, r: (t - r).abs().mean(-1),
    "mse": lambda t, r: (t - r).pow(2).mean(-1),
}


def parameter_groups(model: ViTAD) -> dict[str, int]:
    """Parameter counts of E, F, D and the read-outs (Tab. XIII counts the frozen encoder too)."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"encoder": count(model.tokenizer), "fuser": count(model.fuser), "decoder": count(model.decoder),
            "readouts": count(model.readouts)}


# ------------------------------------------------------------------------- the authors' checkpoints (ADer)
# ADer's ViTAD (zhangzjn/ADer model/vitad.py) holds net_t (timm ViT encoder, all its blocks), net_fusion.fc
# (the Linear) and net_s (a timm VisionTransformer used from its position embedding and blocks only). A
# released ckpt.pth keeps them under "net"; the encoder's weights are in it, so no DINO download is needed.


def _block_count(shapes, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in shapes if k.startswith(prefix)})


def authors_config(shapes, **config) -> ViTADConfig:
    """The config of an ADer ViTAD checkpoint: encoder width, patch, depth and ``img_size`` from ``net_t``
    (weights loaded from the checkpoint, ``pretrained=False``), decoder divisions from ``net_s``'s depth."""
    import math

    from adlib.models import model_config

    derived: dict[str, Any] = {}
    if "net_t.pos_embed" in shapes and "net_t.patch_embed.proj.weight" in shapes:
        tokens, dim = shapes["net_t.pos_embed"][1], shapes["net_t.pos_embed"][2]
        patch = shapes["net_t.patch_embed.proj.weight"][-1]
        side = math.isqrt(tokens - 1) * patch
        depth = _block_count(shapes, "net_t.blocks.")
        known = {(384, 16): "dino_vits16", (384, 8): "dino_vits8"}  # ADer's ViT-S entries, ImageNet mean/std
        kwargs: dict[str, Any] = {"img_size": side}
        backbone = known.get((dim, patch), "dino_vits16")
        if (dim, patch) not in known:  # another width: ADer's heads are width / 64 for ViT-S/B/L
            kwargs.update(embed_dim=dim, patch_size=patch, num_heads=max(dim // 64, 1))
        if depth != 12 or (dim, patch) not in known:
            kwargs["depth"] = depth
        derived.update(backbone=backbone, pretrained=False, weights=None, image_size=side, backbone_kwargs=kwargs)
    decoder_depth = _block_count(shapes, "net_s.blocks.")
    if decoder_depth and decoder_depth % 3 == 0:
        derived["decoder_divisions"] = (decoder_depth // 3,) * 3
    derived.update(config)
    return model_config("vitad", None, **derived)


def _meta_model(config: ViTADConfig) -> "ViTAD":
    with torch.device("meta"):
        return ViTAD(config)


def authors_key_map(config: ViTADConfig) -> dict[str, str]:
    """adlib key -> ADer key: ``tokenizer.model.*`` <- ``net_t.*``, ``fuser.linear`` <- ``net_fusion.fc``,
    ``decoder.*`` <- ``net_s.*`` (same timm block names)."""
    if config.fuser != "linear" or not config.fuser_linear:
        raise ValueError(f"ADer's ViTAD has one Linear fuser; fuser={config.fuser!r} has no authors' weights")
    key_map = {}
    for ours in _meta_model(config).state_dict():
        if ours.startswith("tokenizer.model."):
            key_map[ours] = "net_t." + ours[len("tokenizer.model."):]
        elif ours.startswith("fuser.linear."):
            key_map[ours] = "net_fusion.fc." + ours[len("fuser.linear."):]
        elif ours.startswith("decoder."):
            key_map[ours] = "net_s." + ours[len("decoder."):]
        else:
            raise ValueError(f"{ours}: no ADer counterpart (a CNN encoder's read-out?)")
    return key_map


def authors_ignored(config: ViTADConfig) -> set[str]:
    """ADer keys adlib's model does not hold: net_s's unused ViT parts (class token, patch embedding, final
    norm, classifier head: ViT_Decoder.forward starts at the position embedding and stops after the blocks),
    net_t's final norm and head (the taps are raw block outputs, before_norm) and any encoder block after the
    last tap."""
    ignored = {f"net_s.{k}" for k in ("cls_token", "patch_embed.proj.weight", "patch_embed.proj.bias",
                                      "norm.weight", "norm.bias", "head.weight", "head.bias")}
    ignored |= {"net_t.head.weight", "net_t.head.bias"}
    if config.before_norm:
        ignored |= {"net_t.norm.weight", "net_t.norm.bias"}
    import timm
    from adlib import backbones

    with torch.device("meta"):
        full = timm.create_model(backbones.SPECS[config.backbone].timm_id, pretrained=False,
                                 **(config.backbone_kwargs or {}))
    used = max(_meta_model(config).stage_taps)
    ignored |= {f"net_t.{k}" for k in full.state_dict() if k.startswith("blocks.") and int(k.split(".")[1]) >= used}
    return ignored


def authors_stages(model: "ViTAD", images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The stages the fixture holds, in ADer's layouts: teacher (restraint) features and decoder outputs as
    (B, C, h, w), the fuser's input and output tokens, each stage's upsampled map, the map and the score."""
    out = model.explain(images)
    grid = lambda t: t[:, model.prefix:].transpose(1, 2).reshape(t.shape[0], -1, *model.grid)  # noqa: E731
    stages = {f"encoder_{i + 1}": grid(t) for i, t in enumerate(out["targets"])}
    stages["fuser_input"] = out["stages"][model.fuser_stages[0]]
    stages["fuser"] = out["fused"]
    stages.update({f"decoder_{i + 1}": grid(r) for i, r in enumerate(out["reconstructions"])})
    stages.update({f"stage_map_{i + 1}": m for i, m in enumerate(out["upsampled"])})
    stages["map"], stages["score"] = out["map"], out["scores"]
    stages["loss"] = model.loss(model.extract(images)).reshape(1)  # Cos_f, eval mode (ADer's CosLoss)
    return stages


# Config fields whose fixture value is the authors' behaviour where adlib's default differs on purpose, and the
# values that give adlib's behaviour before the bug fixes the parity check made (benchmarks/parity/faithfulness.py).
AUTHORS_SWITCHES = ("map_divisor",)
AUTHORS_FIXES = {"smoothing_padding": "reflect"}


__all__ = ["ViTAD", "ViTADConfig", "FUSERS", "LOSSES", "AUGMENTATIONS", "MAP_DIVISORS", "parameter_groups",
           "authors_config", "authors_key_map", "authors_ignored", "authors_stages"]
