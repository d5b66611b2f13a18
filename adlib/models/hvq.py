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

Also here: ``PDN``, EfficientAD's small patch description network, with ``load_pdn_weights`` for the
ImageNet-distilled teacher file (``pretrained_teacher_small.pth`` from anomalib's
``efficientad_pretrained_weights.zip``, see ``PDN_WEIGHTS``). It cannot be downloaded here: the smoke profile
uses the offline EfficientNet-Lite0 instead (named as a substitution wherever it is used).
"""
from __future__ import annotations

import math
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
    ``"random"``: N(0, 1) / sqrt(dim). ``restart``: a code whose usage (an exponential moving average over
    training batches, ``RESTART_DECAY``) falls below ``RESTART_BELOW`` of the uniform share is moved to a random
    input vector of the current batch (dead-code restarts, as in Jukebox/SoundStream; the paper is silent).
    Without restarts the codebooks collapse here to one or two codes per level within a few epochs (measured
    on synthetic_loco: perplexity 1.0 at every level after 10 epochs), which leaves the MIM nothing to predict."""

    RESTART_DECAY = 0.9
    RESTART_BELOW = 0.1

    def __init__(self, size: int, dim: int, update: str = "loss", decay: float = 0.99, init: str = "data",
                 restart: bool = True) -> None:
        super().__init__()
        self.size, self.dim, self.update, self.decay, self.init, self.restart = size, dim, update, decay, init, restart
        self.codebook = nn.Parameter(torch.randn(size, dim) / math.sqrt(dim), requires_grad=update == "loss")
        self.register_buffer("initialised", torch.tensor(init != "data"))
        self.register_buffer("ema_count", torch.ones(size))
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


class DecoderLayer(nn.Module):
    """Eq. 5: self-attention on d^{l-1}, cross-attention to the codes z^l, FFN; residuals, post-norm (as the
    encoder). Queries and keys get the position embeddings, values do not (UniAD/HVQ-Trans)."""

    def __init__(self, dim: int, code_dim: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True, kdim=code_dim,
                                                vdim=code_dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, d: torch.Tensor, codes: torch.Tensor, pos: torch.Tensor, code_pos: torch.Tensor) -> torch.Tensor:
        q = d + pos
        d = self.norm1(d + self.drop(self.self_attn(q, q, d, need_weights=False)[0]))
        d = self.norm2(d + self.drop(self.cross_attn(d + pos, codes + code_pos, codes, need_weights=False)[0]))
        return self.norm3(d + self.drop(self.ffn(d)))


class HVQTrans(nn.Module):
    """Encoder, hierarchical quantisers and decoder over a token sequence (B, N, in_dim) (see module docs)."""

    def __init__(self, in_dim: int, tokens: int, dim: int = 64, heads: int = 8, ffn: int = 1024, layers: int = 4,
                 dec_dim: int = 128, codebook_size: int = 512, code_dim: int = 64, dropout: float = 0.1,
                 commitment: float = 1.0, codebook_update: str = "loss", ema_decay: float = 0.99,
                 codebook_init: str = "data", codebook_restart: bool = True) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"hvq_layers={layers}: need at least one layer")
        self.layers, self.commitment = layers, commitment
        self.embed = nn.Linear(in_dim, dim)
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        self.encoder = nn.ModuleList(nn.TransformerEncoderLayer(dim, heads, ffn, dropout, batch_first=True)
                                     for _ in range(layers))
        # psi[l-1] for level l: levels 1..L-1 see [h^{l-1}, z^L]; the top level L sees h^L (Eq. 3-4)
        self.psi = nn.ModuleList([nn.Linear(dim + code_dim, code_dim) for _ in range(layers - 1)]
                                 + [nn.Linear(dim, code_dim)])
        self.quantizers = nn.ModuleList(VectorQuantizer(codebook_size, code_dim, codebook_update, ema_decay,
                                                        codebook_init, codebook_restart) for _ in range(layers))
        self.dec_in = nn.Linear(code_dim, dec_dim)  # d^0 = dec_in(z^L)
        self.dec_pos = nn.Parameter(torch.zeros(1, tokens, dec_dim))
        self.code_pos = nn.Parameter(torch.zeros(1, tokens, code_dim))
        self.decoder = nn.ModuleList(DecoderLayer(dec_dim, code_dim, heads, ffn, dropout) for _ in range(layers))
        self.gamma = nn.Linear(dec_dim, in_dim)  # Eq. 6
        for p in (self.pos, self.dec_pos, self.code_pos):
            nn.init.trunc_normal_(p, std=0.02)

    def set_trainable(self, flag: bool) -> None:
        """Freeze or unfreeze; EMA codebooks never take gradients."""
        self.requires_grad_(flag)
        for q in self.quantizers:
            q.codebook.requires_grad_(flag and q.update == "loss")

    def encode(self, tokens: torch.Tensor) -> dict[str, Any]:
        """h^0..h^L, the quantised codes z^1..z^L, the index maps o^1..o^L (B, L, N) and the VQ loss terms."""
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

    def decode(self, z: list[torch.Tensor]) -> torch.Tensor:
        """Eq. 5-6, top-down: d^0 = z^L, decoder layer k attends z^{L+1-k}; Gamma maps d^L back to the features."""
        d = self.dec_in(z[-1])
        for layer, codes in zip(self.decoder, reversed(z)):
            d = layer(d, codes, self.dec_pos, self.code_pos)
        return self.gamma(d)

    def forward(self, tokens: torch.Tensor) -> dict[str, Any]:
        """Everything for Eq. 7: ``recon`` (B, N, in_dim), ``error`` (B, N) = mean squared error per token,
        ``codes`` (B, L, N), ``loss`` = reconstruction + codebook + commitment terms."""
        out = self.encode(tokens)
        recon = self.decode(out["z"])
        error = (recon - tokens).pow(2).mean(dim=-1)
        out.update(recon=recon, error=error, recon_loss=error.mean())
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
