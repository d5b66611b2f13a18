"""HVQ-Trans (Lu et al., NeurIPS 2023) as LADMIM uses it: the structural detector and the code tokenizer.

LADMIM Sec. 3.2, Eq. 2-7, with the readings of ``repro_spec.md`` §3.9:

- a frozen CNN feature map h^0 on a fixed token grid (``FeatureGrid``: EfficientAD's PDN at 224 px, 48 x 48
  average-pooled 2 x 2 to 24 x 24 x 384, or a timm CNN's taps resampled to the grid);
- an L-layer Transformer encoder h^l = g^l(h^{l-1}) (post-norm, learned position embedding, HVQ-Trans' code);
- hierarchical vector quantisation: the top level z^L = q^L(psi^L(h^L)) (Eq. 3); every lower level
  z^l = q^l(psi^l([h^{l-1}, z^L])) (Eq. 4 read with the *top* code, because the printed equation has z^l on
  both sides; HVQ-Trans' code quantises each lower level together with the top code). L codebooks, so the
  MIM targets of Eq. 12 are the L index maps o^1..o^L (Eq. 10). h^0 enters psi^1 after the input projection;
- a decoder of L layers, each self-attention then cross-attention to one level's codes then an FFN (Eq. 5).
  Eq. 5 pairs decoder layer l with z^l and leaves d^0 open; as in HVQ-Trans' code
  (``TransformerDecoder_hierachy``) the layers run top-down: the first attends the top level z^L, the last the
  level nearest the input z^1, and d^0 is the first memory itself (z^L, projected to the decoder width);
- Gamma (Eq. 6) = a Linear from the decoder width to d_0;
- the loss of Eq. 7 with the straight-through estimator: reconstruction MSE plus, per level, the codebook term
  ||sg(psi) - b||^2 and the commitment term beta * ||psi - sg(b)||^2 (beta = 1 as printed; the terms act on the
  psi outputs, the quantities that are quantised). ``codebook_update="ema"`` is HVQ-Trans' alternative
  (EMA codebooks, decay 0.99, and its 0.25 commitment weight is the caller's choice). All squared norms are
  means over elements, so the scale does not depend on the grid or the widths.

Codebook usage (fraction of the K codes hit, perplexity) is counted in training mode: ``usage()``.

**Faithfulness** (``tests/test_parity.py``, fixture ``hvq`` from ``benchmarks/parity/hvq.py``): with
``layout="code"`` HVQTrans loads RuiyingLu/HVQ-Trans' ``HVQ_TR_switch`` (12fbfa9; ``HVQConfig``,
``authors_config``) and its encoder outputs, code maps, quantised levels, reconstruction, x16 anomaly map and
``max_score`` (``release_map``, ``release_score``) match within the test's 1e-5 relative. The default ``layout="paper"``
follows LADMIM's Eq. 3-7 (psi^l, L codebooks of d_q, which the code does not have); the parts of it the paper
leaves open are adlib's (see ``HVQTrans``). Not reproduced: the class switch (one codebook set per MVTec class,
chosen by the label; a released checkpoint loads one class, ``switch_class``) and ``HVQ_TR_switch_OT``'s
optimal-transport score, the variant HVQ-Trans' README says its paper's numbers come from. HVQ-Trans' released
training script builds ``embed_dim=256`` (decoder 512), not the class's default 64.

Also here: ``PDN``, EfficientAD's small patch description network, with ``load_pdn_weights`` for the
ImageNet-distilled teacher file (``pretrained_teacher_small.pth`` from anomalib's
``efficientad_pretrained_weights.zip``, see ``PDN_WEIGHTS``). It cannot be downloaded here: the smoke profile
uses the offline EfficientNet-Lite0 instead (named as a substitution wherever it is used).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Where the PDN teacher's weights come from (anomalib's EfficientAD release asset) and what the file holds.
PDN_WEIGHTS = {
    "archive": "https://github.com/open-edge-platform/anomalib/releases/download/efficientad_pretrained_weights/"
               "efficientad_pretrained_weights.zip",
    "archive_sha256": "c09aeaa2b33f244b3261a5efdaeae8f8284a949470a4c5a526c61275fe62684a",
    "file": "pretrained_teacher_small.pth",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------- backbone


class PDN(nn.Module):
    """EfficientAD's small patch description network without padding (LADMIM Sec. 4.1): at 224 px it gives
    48 x 48 x 384 (conv4x4 128, avgpool 2, conv4x4 256, avgpool 2, conv3x3 256, conv4x4 384). Takes images in
    [0, 1] and normalises them with the ImageNet mean/std, as EfficientAD does."""

    def __init__(self, out_channels: int = 384) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 128, 4)
        self.conv2 = nn.Conv2d(128, 256, 4)
        self.conv3 = nn.Conv2d(256, 256, 3)
        self.conv4 = nn.Conv2d(256, out_channels, 4)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std
        x = F.avg_pool2d(F.relu(self.conv1(x)), 2)
        x = F.avg_pool2d(F.relu(self.conv2(x)), 2)
        return self.conv4(F.relu(self.conv3(x)))


def load_pdn_weights(pdn: PDN, path: str | Path) -> str:
    """Load a PDN teacher file into ``pdn`` (strict); returns the file's sha256.

    Accepts anomalib's key names (``conv1.weight`` ... ``conv4.bias``), the original EfficientAD
    ``nn.Sequential`` names (``0.weight``, ``3.weight``, ``6.weight``, ``8.weight``: the convolutions in
    order), a ``state_dict``/``model`` wrapper, or a pickled module."""
    from adlib.backbones import CheckpointMismatchError, _record_weights

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights={str(path)!r}: no such PDN weights file (expected {PDN_WEIGHTS['file']} "
                                f"from {PDN_WEIGHTS['archive']})")
    state: Any = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, nn.Module):
        state = state.state_dict()
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f"weights={str(path)!r} holds a {type(state).__name__}, expected a PDN state dict")
    own = pdn.state_dict()
    if set(state) != set(own):  # Sequential names: map the convolutions by their order
        weights = [k for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 4]
        if len(weights) == 4 and all(k[: -len("weight")] + "bias" in state for k in weights):
            state = {f"conv{i + 1}.{part}": state[k[: -len("weight")] + part]
                     for i, k in enumerate(weights) for part in ("weight", "bias")}
    bad = [f"{k}: file {tuple(state[k].shape)} vs PDN {tuple(v.shape)}" for k, v in own.items()
           if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if set(state) != set(own) or bad:
        raise CheckpointMismatchError(f"weights={str(path)!r} does not match the small PDN: missing "
                                      f"{sorted(set(own) - set(state))}, unexpected {sorted(set(state) - set(own))[:8]}, "
                                      f"shapes {bad}")
    pdn.load_state_dict(state, strict=True)
    return _record_weights(path)


def to_grid(feature: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resample a (B, C, h, w) map to ``grid``: average pooling by an integer factor when it is larger
    (PDN 48 -> 24, the paper's 2 x 2 pool), bilinear otherwise (EfficientNet's stride 16 12 -> 24)."""
    h, w = feature.shape[-2:]
    if (h, w) == tuple(grid):
        return feature
    if h % grid[0] == 0 and w % grid[1] == 0 and h >= grid[0] and w >= grid[1]:
        return F.avg_pool2d(feature, (h // grid[0], w // grid[1]))
    return F.interpolate(feature, size=grid, mode="bilinear", align_corners=False)


class FeatureGrid(nn.Module):
    """Frozen backbone features on a fixed token grid: (B, 3, H, W) in [0, 1] -> (B, d_0, grid_h, grid_w).

    ``backbone="pdn"``: EfficientAD's PDN (``weights=PATH`` to its teacher file; ``pretrained=False`` gives random
    weights). Any other name: ``adlib.backbones.create(backbone, layers, pretrained, weights)``, every tap resampled
    to the grid (``to_grid``) and concatenated over channels."""

    def __init__(self, backbone: str, layers: Sequence[int] | None, pretrained: bool, weights: str | None,
                 grid: tuple[int, int]) -> None:
        super().__init__()
        self.name = backbone
        self.grid = tuple(grid)
        self.weights_id: str | None = None
        if backbone == "pdn":
            if layers is not None:
                raise ValueError(f"layers={layers!r}: the PDN has one output, leave layers=None")
            self.net = PDN()
            if weights is not None:
                self.weights_id = load_pdn_weights(self.net, weights)
            elif pretrained:
                from adlib.backbones import WeightsUnavailableError, random_standin

                error = WeightsUnavailableError(
                    f"backbone 'pdn' needs weights=PATH to EfficientAD's teacher ({PDN_WEIGHTS['file']} in "
                    f"{PDN_WEIGHTS['archive']}, sha256 {PDN_WEIGHTS['archive_sha256'][:12]}...); pretrained=False gives "
                    f"random weights; offline, use backbone 'efficientnet_lite0'")
                self.net, self.weights_id = random_standin("pdn", error, PDN)  # raises error outside a path check
            self.channels = [self.net.conv4.out_channels]
        else:
            from adlib import backbones

            self.net = backbones.create(backbone, layers=layers, pretrained=pretrained, weights=weights)
            self.weights_id = self.net.weights_id
            self.channels = list(self.net.channels)
        self.net.requires_grad_(False)
        self.net.eval()

    @property
    def out_channels(self) -> int:
        return sum(self.channels)

    @property
    def identity(self) -> str | None:
        """What this computes, for the feature cache; None with random weights."""
        if self.weights_id is None:
            return None
        inner = getattr(self.net, "identity", None) or f"{self.name}|weights={self.weights_id}"
        return f"{inner}|grid={self.grid}"

    def train(self, mode: bool = True) -> "FeatureGrid":
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        taps = self.net(images)
        taps = [taps] if isinstance(taps, torch.Tensor) else list(taps)
        return torch.cat([to_grid(t, self.grid) for t in taps], dim=1)


# --------------------------------------------------------------------------------------------- quantiser


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation with the straight-through estimator and usage counts.

    ``update="loss"``: the codebook is a parameter learned by the codebook term of Eq. 7; ``"ema"``: it is
    updated by exponential moving averages of the assigned vectors (HVQ-Trans' code) and gets no gradient.
    ``init="data"``: on the first training batch the codebook is set to randomly drawn input vectors;
    ``"random"``: N(0, 1) / sqrt(dim); ``"normal"``: N(0, 1) with the EMA counts at zero (HVQ-Trans' code).
    ``per_image``: in training, quantise and update the EMA codebook one image of the batch at a time, each
    image seeing the codebook its predecessors updated (HVQ-Trans' per-class loop does this; adlib's default
    is one update per batch). ``restart``: a code whose usage (an exponential moving average over
    training batches, ``RESTART_DECAY``) falls below ``RESTART_BELOW`` of the uniform share is moved to a random
    input vector of the current batch (dead-code restarts, as in Jukebox/SoundStream; the paper is silent).
    Without restarts the codebooks collapse here to one or two codes per level within a few epochs (measured
    on synthetic_loco: perplexity 1.0 at every level after 10 epochs), which leaves the MIM nothing to predict."""

    RESTART_DECAY = 0.9
    RESTART_BELOW = 0.1

    def __init__(self, size: int, dim: int, update: str = "loss", decay: float = 0.99, init: str = "data",
                 restart: bool = True, per_image: bool = False) -> None:
        super().__init__()
        self.size, self.dim, self.update, self.decay, self.init, self.restart = size, dim, update, decay, init, restart
        self.per_image = per_image
        scale = 1.0 if init == "normal" else math.sqrt(dim)
        self.codebook = nn.Parameter(torch.randn(size, dim) / scale, requires_grad=update == "loss")
        self.register_buffer("initialised", torch.tensor(init != "data"))
        self.register_buffer("ema_count", torch.zeros(size) if init == "normal" else torch.ones(size))
        self.register_buffer("ema_sum", self.codebook.detach().clone())
        self.register_buffer("usage_ema", torch.ones(size))  # usage relative to the uniform share (restarts)
        self.register_buffer("counts", torch.zeros(size), persistent=False)  # usage since the last reset

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for every vector of ``x`` (..., dim) -> (...)."""
        flat = x.reshape(-1, self.dim)
        book = self.codebook
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.t() + book.pow(2).sum(1)[None]
        return dist.argmin(dim=1).reshape(x.shape[:-1])

    @torch.no_grad()
    def _init_from(self, flat: torch.Tensor) -> None:
        pick = torch.randint(len(flat), (self.size,), device=flat.device) if len(flat) < self.size else \
            torch.randperm(len(flat), device=flat.device)[: self.size]
        self.codebook.data.copy_(flat[pick])
        self.ema_sum.copy_(flat[pick])
        self.ema_count.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _ema(self, flat: torch.Tensor, idx: torch.Tensor) -> None:
        onehot = F.one_hot(idx, self.size).type_as(flat)
        self.ema_count.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        n = self.ema_count.sum()
        count = (self.ema_count + 1e-5) / (n + self.size * 1e-5) * n  # Laplace smoothing
        self.codebook.data.copy_(self.ema_sum / count[:, None])

    @torch.no_grad()
    def _restart_dead(self, flat: torch.Tensor, idx: torch.Tensor) -> None:
        share = torch.bincount(idx, minlength=self.size).to(flat) * (self.size / len(idx))
        self.usage_ema.mul_(self.RESTART_DECAY).add_(share, alpha=1 - self.RESTART_DECAY)
        dead = torch.nonzero(self.usage_ema < self.RESTART_BELOW).flatten()
        if len(dead):
            new = flat[torch.randint(len(flat), (len(dead),), device=flat.device)]
            self.codebook.data[dead] = new
            self.ema_sum[dead] = new
            self.ema_count[dead] = 1.0
            self.usage_ema[dead] = 1.0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(quantised x with straight-through gradients, indices, codebook term, commitment term)."""
        if self.per_image and self.training and x.ndim > 2 and len(x) > 1:
            parts = [self(image) for image in x]  # each image sees the codebook the previous one updated
            return (torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts]),
                    torch.stack([p[2] for p in parts]).mean(), torch.stack([p[3] for p in parts]).mean())
        flat = x.reshape(-1, self.dim)
        if self.training and not bool(self.initialised):
            self._init_from(flat.detach())
        idx = self.nearest(x)
        quantised = F.embedding(idx, self.codebook)
        commitment = F.mse_loss(x, quantised.detach())
        codebook = F.mse_loss(quantised, x.detach()) if self.update == "loss" else x.new_zeros(())
        if self.training:
            if self.update == "ema":
                self._ema(flat.detach(), idx.reshape(-1))
            self.counts += torch.bincount(idx.reshape(-1), minlength=self.size).to(self.counts)
            if self.restart:
                self._restart_dead(flat.detach(), idx.reshape(-1))
        return x + (quantised - x).detach(), idx, codebook, commitment

    def usage(self) -> dict[str, float]:
        total = float(self.counts.sum())
        if total == 0:
            return {"used": 0.0, "perplexity": 0.0}
        p = self.counts / total
        entropy = -(p[p > 0] * p[p > 0].log()).sum()
        return {"used": float((self.counts > 0).float().mean()), "perplexity": float(entropy.exp())}


# ------------------------------------------------------------------------------------------------ HVQ


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}
LAYOUTS = ("paper", "code")


class EncoderLayer(nn.Module):
    """Post-norm Transformer encoder layer (torch's ``TransformerEncoderLayer`` and HVQ-Trans' own: the same
    parameters, created in the same order, ReLU FFN). A position embedding ``pos``, when given, is added to
    the queries and keys of the self-attention, not to its values (HVQ-Trans' ``with_pos_embed``)."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, ffn)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        q = x if pos is None else x + pos
        x = self.norm1(x + self.dropout1(self.self_attn(q, q, x, need_weights=False)[0]))
        return self.norm2(x + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x))))))


class DecoderLayer(nn.Module):
    """Eq. 5: self-attention on d^{l-1}, cross-attention to the codes z^l, FFN; residuals, post-norm (as the
    encoder). Queries and keys get the position embeddings, values do not (UniAD/HVQ-Trans)."""

    def __init__(self, dim: int, code_dim: int, heads: int, ffn: int, dropout: float,
                 activation: str = "gelu") -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True, kdim=code_dim,
                                                vdim=code_dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), ACTIVATIONS[activation](), nn.Dropout(dropout),
                                 nn.Linear(ffn, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, d: torch.Tensor, codes: torch.Tensor, pos: torch.Tensor, code_pos: torch.Tensor) -> torch.Tensor:
        q = d + pos
        d = self.norm1(d + self.drop(self.self_attn(q, q, d, need_weights=False)[0]))
        d = self.norm2(d + self.drop(self.cross_attn(d + pos, codes + code_pos, codes, need_weights=False)[0]))
        return self.norm3(d + self.drop(self.ffn(d)))


class HVQTrans(nn.Module):
    """Encoder, hierarchical quantisers and decoder over a token sequence (B, N, in_dim) (see module docs).

    ``layout="paper"`` (default) is LADMIM's Eq. 3-7 as printed: L codebooks of ``code_dim`` behind the
    projections psi^l, the lower levels fed [h^{l-1}, z^L] for l = 1..L-1, the decoder at ``dec_width`` starting
    from a projection of z^L; the parts the paper leaves open are adlib's (a learned (N, dim) position table
    added once to h^0, GELU in the decoder's FFN, no final decoder norm).
    ``layout="code"`` is HVQ-Trans' released ``HVQ_TR_switch`` (one class's codebooks and output head): no
    psi; L + 1 codebooks, the top one on h^L (width ``dim``) and one on [h^{l-1}, z^top] (width 2 ``dim``) for
    every l = 1..L, whose index maps are o^1..o^L; a row and a column position embedding (``grid``), added to
    the queries and keys of every attention; a decoder at width 2 ``dim`` (ReLU) whose d^0 is the quantised
    o^L level and whose layer k cross-attends the level L+1-k, then a LayerNorm; EMA codebooks initialised
    N(0, 1). ``code_dim`` and ``dec_dim`` are unused there. Checked against the authors' code by
    ``tests/test_parity.py`` (fixture ``hvq``)."""

    def __init__(self, in_dim: int, tokens: int, dim: int = 64, heads: int = 8, ffn: int = 1024, layers: int = 4,
                 dec_dim: int = 128, codebook_size: int = 512, code_dim: int = 64, dropout: float = 0.1,
                 commitment: float = 1.0, codebook_update: str = "loss", ema_decay: float = 0.99,
                 codebook_init: str = "data", codebook_restart: bool = True, layout: str = "paper",
                 grid: tuple[int, int] | None = None) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"hvq_layers={layers}: need at least one layer")
        if layout not in LAYOUTS:
            raise ValueError(f"hvq_layout={layout!r} is not valid; expected one of {list(LAYOUTS)}")
        self.layers, self.commitment, self.layout = layers, commitment, layout
        code = layout == "code"
        if code:
            grid = tuple(grid) if grid is not None else (math.isqrt(tokens),) * 2
            if grid[0] * grid[1] != tokens or dim % 2:
                raise ValueError(f"hvq_layout='code' needs a grid of {tokens} tokens and an even width, got grid "
                                 f"{grid}, hvq_dim={dim}")
            self.grid = grid
            dec_dim = code_dim = 2 * dim
        self.embed = nn.Linear(in_dim, dim)
        if code:  # HVQ-Trans' PositionEmbeddingLearned: (col, row) halves, uniform init
            self.row_embed, self.col_embed = nn.Embedding(grid[0], dim // 2), nn.Embedding(grid[1], dim // 2)
            nn.init.uniform_(self.row_embed.weight)
            nn.init.uniform_(self.col_embed.weight)
        else:
            self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        self.encoder = nn.ModuleList(EncoderLayer(dim, heads, ffn, dropout) for _ in range(layers))
        quantizer = lambda width: VectorQuantizer(codebook_size, width, codebook_update, ema_decay, codebook_init,
                                                  codebook_restart, per_image=code)
        if code:  # quantizers[l - 1] gives o^l from [h^{l-1}, z^top]; quantizers[L] is the top level
            self.psi = nn.ModuleList()
            self.quantizers = nn.ModuleList([quantizer(2 * dim) for _ in range(layers)] + [quantizer(dim)])
        else:  # psi[l-1] for level l: levels 1..L-1 see [h^{l-1}, z^L]; the top level L sees h^L (Eq. 3-4)
            self.psi = nn.ModuleList([nn.Linear(dim + code_dim, code_dim) for _ in range(layers - 1)]
                                     + [nn.Linear(dim, code_dim)])
            self.quantizers = nn.ModuleList(quantizer(code_dim) for _ in range(layers))
            self.dec_in = nn.Linear(code_dim, dec_dim)  # d^0 = dec_in(z^L)
            self.dec_pos = nn.Parameter(torch.zeros(1, tokens, dec_dim))
            self.code_pos = nn.Parameter(torch.zeros(1, tokens, code_dim))
        self.decoder = nn.ModuleList(DecoderLayer(dec_dim, code_dim, heads, ffn, dropout, "relu" if code else "gelu")
                                     for _ in range(layers))
        if code:
            self.dec_norm = nn.LayerNorm(dec_dim)
        self.gamma = nn.Linear(dec_dim, in_dim)  # Eq. 6
        if not code:
            for p in (self.pos, self.dec_pos, self.code_pos):
                nn.init.trunc_normal_(p, std=0.02)

    def set_trainable(self, flag: bool) -> None:
        """Freeze or unfreeze; EMA codebooks never take gradients."""
        self.requires_grad_(flag)
        for q in self.quantizers:
            q.codebook.requires_grad_(flag and q.update == "loss")

    def position(self) -> torch.Tensor:
        """The code layout's position embedding (1, N, dim): token (i, j) gets [col_j, row_i]."""
        (h, w), col, row = self.grid, self.col_embed.weight, self.row_embed.weight
        return torch.cat([col[None].expand(h, -1, -1), row[:, None].expand(-1, w, -1)], dim=-1).reshape(1, h * w, -1)

    def encode(self, tokens: torch.Tensor) -> dict[str, Any]:
        """h^0..h^L, the quantised codes z (one per codebook), the index maps o^1..o^L (B, L, N) and the VQ loss
        terms; the code layout also returns ``top_codes`` (B, N), the index map of its extra top level."""
        if self.layout == "code":
            return self._encode_code(tokens)
        h = [self.embed(tokens) + self.pos]
        for layer in self.encoder:
            h.append(layer(h[-1]))
        top = self.layers - 1
        z_top, idx_top, book_top, commit_top = self.quantizers[top](self.psi[top](h[-1]))
        z, idx, book, commit = [None] * self.layers, [None] * self.layers, [book_top], [commit_top]
        z[top], idx[top] = z_top, idx_top
        for level in range(top):  # level + 1 in the paper's 1-based numbering
            zq, i, b, c = self.quantizers[level](self.psi[level](torch.cat([h[level], z_top], dim=-1)))
            z[level], idx[level] = zq, i
            book.append(b)
            commit.append(c)
        return {"h": h, "z": z, "codes": torch.stack(idx, dim=1), "codebook_loss": sum(book),
                "commitment_loss": sum(commit)}

    def _encode_code(self, tokens: torch.Tensor) -> dict[str, Any]:
        pos = self.position()
        h = [self.embed(tokens)]
        for layer in self.encoder:
            h.append(layer(h[-1], pos))
        z_top, idx_top, book, commit = self.quantizers[-1](h[-1])
        parts = [self.quantizers[level](torch.cat([h[level], z_top], dim=-1)) for level in range(self.layers)]
        return {"h": h, "z": [p[0] for p in parts] + [z_top], "codes": torch.stack([p[1] for p in parts], dim=1),
                "top_codes": idx_top, "codebook_loss": book + sum(p[2] for p in parts),
                "commitment_loss": commit + sum(p[3] for p in parts)}

    def decode(self, z: list[torch.Tensor]) -> torch.Tensor:
        """Eq. 5-6, top-down: d^0 = z^L, decoder layer k attends z^{L+1-k}; Gamma maps d^L back to the features.
        Code layout: d^0 is the o^L level's quantised vector and the levels are attended L, L-1, ..., 1."""
        if self.layout == "code":
            pos = self.position().repeat(1, 1, 2)  # [pos, pos] over the two halves of a level's vector
            memory = z[self.layers - 1::-1]
            d = memory[0]
            for layer, codes in zip(self.decoder, memory):
                d = layer(d, codes, pos, pos)
            return self.gamma(self.dec_norm(d))
        d = self.dec_in(z[-1])
        for layer, codes in zip(self.decoder, reversed(z)):
            d = layer(d, codes, self.dec_pos, self.code_pos)
        return self.gamma(d)

    def forward(self, tokens: torch.Tensor) -> dict[str, Any]:
        """Everything for Eq. 7: ``recon`` (B, N, in_dim), ``error`` (B, N) = mean squared error per token,
        ``distance`` (B, N) = its Euclidean distance (HVQ-Trans' map), ``codes`` (B, L, N), ``loss`` =
        reconstruction + codebook + commitment terms."""
        out = self.encode(tokens)
        recon = self.decode(out["z"])
        squared = (recon - tokens).pow(2)
        error = squared.mean(dim=-1)
        out.update(recon=recon, error=error, distance=squared.sum(dim=-1).sqrt(), recon_loss=error.mean())
        out["loss"] = out["recon_loss"] + out["codebook_loss"] + self.commitment * out["commitment_loss"]
        return out

    @torch.no_grad()
    def codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """The code prediction maps o^l (Eq. 10) as indices (B, L, N)."""
        return self.encode(tokens)["codes"]

    def usage(self, reset: bool = False) -> list[dict[str, float]]:
        """Per level (1..L): fraction of codes used and the perplexity, over the training batches since the
        last reset."""
        out = [q.usage() for q in self.quantizers]
        if reset:
            for q in self.quantizers:
                q.counts.zero_()
        return out


def release_map(distance: torch.Tensor, grid: tuple[int, int], scale: int = 16) -> torch.Tensor:
    """HVQ-Trans' anomaly map: the per-token distances (B, N) on the grid, upsampled ``scale`` times bilinearly
    with aligned corners (its ``UpsamplingBilinear2d(scale_factor=16)``) -> (B, grid_h * scale, grid_w * scale)."""
    maps = distance.reshape(len(distance), 1, *grid)
    return F.interpolate(maps, scale_factor=scale, mode="bilinear", align_corners=True)[:, 0]


def release_score(distance: torch.Tensor, grid: tuple[int, int], scale: int = 16, box: int = 16) -> torch.Tensor:
    """HVQ-Trans' image score ("max" in its evaluator, the ``max_score`` LADMIM's release reads): the largest
    ``box`` x ``box`` mean (stride 1) of ``release_map``. (B, N) -> (B,)."""
    return F.avg_pool2d(release_map(distance, grid, scale)[:, None], box, stride=1).flatten(1).amax(dim=1)


# ------------------------------------------------------------------------------------- the authors' checkpoints


# The settings in which HVQ-Trans' released code differs from adlib's defaults (see HVQTrans, VectorQuantizer)
AUTHORS_SWITCHES = ("layout", "codebook_update", "codebook_init", "codebook_restart", "commitment")


@dataclass
class HVQConfig:
    """``HVQTrans``' arguments and defaults (LADMIM's sizes), for loading HVQ-Trans' released checkpoints
    (``adlib.models.authors``: "hvq"), whose ``authors_config`` sets the released ``HVQ_TR_switch``'s
    behaviour (``layout="code"``, EMA codebooks initialised N(0, 1), commitment weight 0.25, no restarts).
    ``switch_class`` is the class whose codebooks and output head load (the release keeps ``classes`` sets, one
    per MVTec class, and picks one by the image's label; adlib's model holds one)."""

    in_dim: int = 384
    tokens: int = 576
    dim: int = 64
    heads: int = 8  # not in a checkpoint's shapes: HVQ-Trans fixes 8
    ffn: int = 1024
    layers: int = 4
    dec_dim: int = 128
    codebook_size: int = 512
    code_dim: int = 64
    dropout: float = 0.1
    commitment: float = 1.0
    codebook_update: str = "loss"
    ema_decay: float = 0.99
    codebook_init: str = "data"
    codebook_restart: bool = True
    layout: str = "paper"
    grid: tuple | None = None
    switch_class: int = 0
    classes: int = 1


def count_indexed(shapes, pattern: str) -> int:
    """How many consecutive indices i have ``pattern.format(i)`` in ``shapes``."""
    n = 0
    while pattern.format(n) in shapes:
        n += 1
    return n


def hvq_authors_fields(shapes, prefix: str = "") -> dict[str, Any]:
    """HVQTrans' widths, depth, grid and codebook size read from an ``HVQ_TR_switch`` state dict's shapes."""
    dim, in_dim = shapes[f"{prefix}quantize_conv_t.weight"][:2]
    grid = (shapes[f"{prefix}pos_embed.row_embed.weight"][0], shapes[f"{prefix}pos_embed.col_embed.weight"][0])
    return {"in_dim": in_dim, "dim": dim, "grid": grid,
            "layers": count_indexed(shapes, prefix + "encoder.layers.{}.norm1.weight"),
            "ffn": shapes[f"{prefix}encoder.layers.0.linear1.weight"][0],
            "codebook_size": shapes[f"{prefix}quantize_list_1.0.embed"][1],
            "classes": max(count_indexed(shapes, prefix + "output_proj_list.{}.weight"), 1)}


def hvq_authors_key_map(layers: int, switch_class: int = 0, ours: str = "", theirs: str = "") -> dict[str, str]:
    """adlib key -> ``HVQ_TR_switch`` key for the code layout; ``ours``/``theirs`` prefix the names."""
    c = switch_class
    pairs = {"embed.weight": "quantize_conv_t.weight", "embed.bias": "quantize_conv_t.bias",
             "row_embed.weight": "pos_embed.row_embed.weight", "col_embed.weight": "pos_embed.col_embed.weight",
             "dec_norm.weight": "decoder.norm.weight", "dec_norm.bias": "decoder.norm.bias",
             "gamma.weight": f"output_proj_list.{c}.weight", "gamma.bias": f"output_proj_list.{c}.bias"}
    attention = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")
    for i in range(layers):
        for name in ("linear1", "linear2", "norm1", "norm2"):
            for part in ("weight", "bias"):
                pairs[f"encoder.{i}.{name}.{part}"] = f"encoder.layers.{i}.{name}.{part}"
        for part in attention:
            pairs[f"encoder.{i}.self_attn.{part}"] = f"encoder.layers.{i}.self_attn.{part}"
            pairs[f"decoder.{i}.self_attn.{part}"] = f"decoder.layers.{i}.self_attn.{part}"
            pairs[f"decoder.{i}.cross_attn.{part}"] = f"decoder.layers.{i}.multihead_attn.{part}"
        for mine, name in (("ffn.0", "linear1"), ("ffn.3", "linear2"), ("norm1", "norm1"), ("norm2", "norm2"),
                           ("norm3", "norm3")):
            for part in ("weight", "bias"):
                pairs[f"decoder.{i}.{mine}.{part}"] = f"decoder.layers.{i}.{name}.{part}"
    for level in range(layers + 1):  # quantize_list_{l} gives o^l; the last one is the top level
        for mine, name in (("codebook", "embed"), ("ema_sum", "embed_avg"), ("ema_count", "cluster_size")):
            pairs[f"quantizers.{level}.{mine}"] = f"quantize_list_{level + 1}.{c}.{name}"
    return {ours + k: theirs + v for k, v in pairs.items()}


def hvq_authors_ignored(layers: int, switch_class: int, classes: int, prefix: str = "") -> set[str]:
    """What of an ``HVQ_TR_switch`` state dict adlib's model does not hold (names ending in "." are prefixes):
    its EfficientNet-B4 (``enc.``; the feature map is HVQTrans' input), ``input_proj`` (built, never used by its
    forward) and the codebooks and output heads of the ``classes`` other than ``switch_class``."""
    lists = [f"quantize_list_{level + 1}" for level in range(layers + 1)] + ["output_proj_list"]
    return {prefix + "enc.", prefix + "input_proj."} | {f"{prefix}{name}.{i}." for name in lists
                                                        for i in range(classes) if i != switch_class}


def hvq_authors_layout(state: dict, prefix: str = "") -> dict:
    """The authors' tensors in adlib's layout: the 1 x 1 convolution ``quantize_conv_t`` as a Linear weight,
    codebooks (dim, K) -> (K, dim)."""
    out = dict(state)
    for key, value in state.items():
        name = key[len(prefix):] if key.startswith(prefix) else None
        if name == "quantize_conv_t.weight":
            out[key] = value.flatten(1)
        elif name is not None and name.startswith("quantize_list_") and name.endswith((".embed", ".embed_avg")):
            out[key] = value.t()
    return out


def authors_config(shapes, **config) -> HVQConfig:
    fields = hvq_authors_fields(shapes)
    fields["tokens"] = fields["grid"][0] * fields["grid"][1]
    fields["dec_dim"] = fields["code_dim"] = 2 * fields["dim"]
    fields.update(layout="code", codebook_update="ema", codebook_init="normal", codebook_restart=False,
                  commitment=0.25)
    unknown = sorted(set(config) - set(HVQConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"hvq: unknown config field(s) {unknown}; valid: {sorted(HVQConfig.__dataclass_fields__)}")
    return HVQConfig(**{**fields, **config})


def authors_model(config: HVQConfig) -> HVQTrans:
    args = {k: v for k, v in asdict(config).items() if k not in ("switch_class", "classes")}
    model = HVQTrans(**args)
    model.config = config
    return model


def authors_key_map(config: HVQConfig) -> dict[str, str]:
    return hvq_authors_key_map(config.layers, config.switch_class)


def authors_ignored(config: HVQConfig) -> set[str]:
    return hvq_authors_ignored(config.layers, config.switch_class, config.classes)


def authors_layout(state: dict, config: HVQConfig) -> dict:
    return hvq_authors_layout(state)


@torch.no_grad()
def authors_stages(model: HVQTrans, features: torch.Tensor) -> dict[str, torch.Tensor]:
    """The stages of ``benchmarks/parity/hvq.py`` for a feature map (B, C, h, w)."""
    model.eval()
    b, c, h, w = features.shape
    tokens = features.flatten(2).transpose(1, 2)
    out = model(tokens)
    levels = model.layers
    return {"encoder": torch.stack(out["h"]), "codes": out["codes"].float(), "top_codes": out["top_codes"].float(),
            "quantized": torch.stack(out["z"][:levels], dim=1), "quantized_top": out["z"][levels],
            "reconstruction": out["recon"].transpose(1, 2).reshape(b, c, h, w),
            "anomaly_map": release_map(out["distance"], (h, w)), "image_score": release_score(out["distance"], (h, w))}
