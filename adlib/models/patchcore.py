"""PatchCore (Roth et al., CVPR 2022): a memory bank of locally aware patch features, greedy coreset, kNN.

- patch features: each tapped layer (default: strides 8 and 16, "layer 2 and 3") is averaged over 3x3
  neighbourhoods (zero padding counted in the mean at the border, as both reference codes do),
  upsampled (bilinear) to the first layer's grid and concatenated over channels;
- the memory bank is a greedy k-center coreset of all training patches (distances on a random projection);
  it is a buffer whose length comes from the fit (or from a checkpoint);
- a test patch's score is its distance to the nearest memory item; the map is upsampled to the image and
  Gaussian-blurred; the image score is the largest patch score, optionally with the paper's reweighting.

Checked against anomalib's ``PatchcoreModel`` (``tests/test_parity.py``, fixture ``patchcore``, written by
``benchmarks/parity/patchcore.py``): embeddings, the greedy coreset on anomalib's projected features, the
nearest-neighbour distances, the anomaly map and the reweighted image score match. Differences, each with a
switch back (the fixture's config uses them):

- ``map_upsample="bilinear"`` (the paper and the authors' code, amazon-science/patchcore-inspection); anomalib
  upsamples the patch scores by nearest neighbour (``"nearest"``);
- ``reweight=False``: the image score is the largest patch score, as the authors' code scores it; the
  paper's Eq. 7 reweighting (anomalib's default, ``num_neighbors=9``) is ``reweight=True``;
- the coreset's random projection: a dense Gaussian one to ``projection_dim`` = 128 (the authors' code);
  anomalib uses a sparse Johnson-Lindenstrauss projection (eps 0.9) whose width grows with the bank. Not a
  switch: the selection given the projected features is what is compared (``greedy_coreset(start=...)``).
- ``embed_dim``: adlib pools the concatenated channels to ``embed_dim`` (None: keep them, as anomalib); the
  authors' code pools each layer's unfolded 3 x 3 x C patch to 1024 and then their stack. Not compared.

Fixed by the parity check (before: after): the 3 x 3 mean divided border patches by the valid neighbours only
(``count_include_pad=False``; both references divide by 9 with zero padding), now ``pool_include_pad=True``;
the coreset size was ``round(ratio * n)``, both references take ``int(ratio * n)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from adlib.models.base import AnomalyModel, Prediction
from adlib.models.common import check_choice, gaussian_blur, image_score, local_patch_features


@dataclass
class PatchCoreConfig:
    backbone: str = "efficientnet_lite0"
    # Backbone taps; None = the backbone's taps at strides 8 and 16 ("layer 2 and 3" of a ResNet).
    layers: tuple | None = None
    pretrained: bool = True
    image_size: int | tuple[int, int] = 256
    patch_size: int = 3  # local neighbourhood p for the aggregation (paper: 3)
    pool_include_pad: bool = True  # the border's mean counts the zero padding (both reference codes); False: not
    embed_dim: int | None = None  # average-pool the concatenated channels to this width (paper: 1024); None = keep
    coreset_ratio: float = 0.1  # fraction of training patches kept (paper: 10%, 1% also reported)
    projection_dim: int = 128  # random projection for the coreset distances (paper: Johnson-Lindenstrauss, 128)
    reweight: bool = False  # paper's image-score reweighting by the nearest item's neighbourhood
    reweight_neighbors: int = 9  # b in the reweighting
    smoothing_sigma: float = 4.0  # Gaussian sigma in image pixels (paper: 4)
    map_upsample: str = "bilinear"  # patch scores -> image size (paper, authors' code); "nearest": anomalib
    score_rule: str = "max"  # image score from the patch scores: "max" (paper) or "topk_mean"
    topk_ratio: float = 0.01
    chunk_size: int = 8192  # test patches per distance block (memory)
    seed: int = 0  # coreset start point and projection


def greedy_coreset_reference(features: torch.Tensor, count: int, projection_dim: int | None = 128,
                             seed: int = 0) -> torch.Tensor:
    """The plain greedy k-center loop, one full distance pass per pick (adlib's implementation before the
    pruned ``greedy_coreset``, kept unchanged as the oracle that one must match index for index). Python
    reads ``2 * x @ c`` as ``(2 * x) @ c``: a temporary the size of the bank every pick."""
    n, dim = features.shape
    count = max(1, min(count, n))
    generator = torch.Generator().manual_seed(seed)
    x = features.float()
    if projection_dim and projection_dim < dim:
        projection = torch.randn(dim, projection_dim, generator=generator) / projection_dim**0.5
        x = x @ projection.to(x)
    norms = x.pow(2).sum(dim=1)
    start = int(torch.randint(n, (1,), generator=generator))
    selected = torch.empty(count, dtype=torch.long)  # on the CPU; the distances stay on the features' device
    selected[0] = start
    min_dist = (norms - 2 * x @ x[start] + norms[start]).clamp_min(0)
    for i in range(1, count):
        idx = int(torch.argmax(min_dist))
        selected[i] = idx
        min_dist = torch.minimum(min_dist, (norms - 2 * x @ x[idx] + norms[idx]).clamp_min(0))
    return selected


def _distance_error_bound(norms: torch.Tensor, dim: int) -> float:
    """An upper bound on |computed - exact| squared distance between any two rows, for the float32 formula
    ``(|x|^2 - 2 x.c + |c|^2).clamp_min(0)`` (norms and dot products of length ``dim``, two additions):
    gamma_{dim+2} (|x| + |c|)^2 <= 4 gamma_{dim+2} max|x|^2 (Higham's gamma_k = k u / (1 - k u),
    u = 2^-24), doubled for safety."""
    u = 2.0**-24
    gamma = lambda k: k * u / (1 - k * u)  # noqa: E731
    return 2 * 4 * gamma(dim + 2) * float(norms.max()) * (1 + gamma(dim))


_BLOCK = 64  # gathered rows are padded to a multiple of this many rows (see ``_leftover_rows``)


def _leftover_rows(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Rows whose product ``x @ v`` in one BLAS call is rounded differently than in a call over whole blocks.

    MKL's sgemv takes rows in blocks of 4 per thread and sums the up to 3 leftover rows of each thread's
    share in another order, so a row's bits depend on where it sits. ``greedy_coreset`` pads its gathered
    rows to a multiple of ``_BLOCK`` to keep them all in the block path; the rows that are leftovers in the
    full product (none when the row count splits into whole blocks, e.g. 32 x 32 patches per image) are
    found here with two probe vectors."""
    probes = torch.randn(2, x.shape[1], generator=torch.Generator().manual_seed(seed + 1)).to(x)
    pad = -len(x) % _BLOCK
    padded = torch.cat([x, x.new_zeros(pad, x.shape[1])]) if pad else x
    leftover = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for probe in probes:
        leftover |= (x @ probe) != (padded @ probe)[: len(x)]
    return leftover.nonzero().squeeze(1)


def greedy_coreset(features: torch.Tensor, count: int, projection_dim: int | None = 128, seed: int = 0, *,
                   full_pass_fraction: float = 0.25, start: int | None = None) -> torch.Tensor:
    """Indices of ``count`` rows chosen by greedy k-center selection (each pick is the row farthest from
    those already picked), starting from a seeded random row (or row ``start``); distances on a random
    projection when ``projection_dim`` is smaller than the feature width.

    The same picks as ``greedy_coreset_reference`` (index for index, ties included), with far fewer
    distances computed. Every row remembers the pick it is nearest to (``assign``) and its squared
    distance to it (``min_dist``). A new pick c can only lower row x's distance if |x - c| < |x - s|, s
    being x's pick; by the triangle inequality it cannot when |c - s| >= 2 sqrt(min_dist(x) + E), E being
    a bound on the float32 rounding of a computed distance (``_distance_error_bound``): then the
    reference's own computed distance to c is >= min_dist(x) and leaves it unchanged. Only the other rows
    get a new distance, with the reference's float32 expression (``2 * (x @ c)`` is ``(2 * x) @ c`` to the
    bit: scaling by 2 is exact), so ``min_dist`` holds the reference's values at every step and every
    argmax is the reference's. That also needs the matrix-vector product to round a row the same way in
    the gathered matrix as in the full one: gathered rows are padded to whole kernel blocks, and the few
    rows that are leftovers of the full product (``_leftover_rows``) are updated by a full pass, as in
    the reference, whenever a pick may move them. Pick-to-pick distances |c - s|^2 are computed with the
    same formula and bound. When more than ``full_pass_fraction`` of the rows need a new distance, a full
    pass is cheaper than gathering them and is taken too (0: always, as on a GPU, where a pass costs
    little; 1: only for the leftover rows).
    """
    n, dim = features.shape
    count = max(1, min(count, n))
    generator = torch.Generator().manual_seed(seed)  # the same draws as the reference: projection, start
    x = features.float()
    if projection_dim and projection_dim < dim:
        projection = torch.randn(dim, projection_dim, generator=generator) / projection_dim**0.5
        x = x @ projection.to(x)
    x = x.contiguous()
    norms = x.pow(2).sum(dim=1)
    drawn = int(torch.randint(n, (1,), generator=generator))
    start = drawn if start is None else int(start)
    selected = torch.empty(count, dtype=torch.long)  # on the CPU; the distances stay on the features' device
    selected[0] = start
    min_dist = (norms - 2 * (x @ x[start]) + norms[start]).clamp_min(0)
    prune = x.device.type == "cpu" and full_pass_fraction > 0 and count > 1
    if prune:
        error = _distance_error_bound(norms, x.shape[1])
        special = _leftover_rows(x, seed)
        picks = torch.empty(count, x.shape[1], dtype=x.dtype, device=x.device)
        pick_norms = torch.empty(count, dtype=x.dtype, device=x.device)
        picks[0], pick_norms[0] = x[start], norms[start]
        assign = torch.zeros(n, dtype=torch.int32, device=x.device)
        # room for the most rows a pruned pick gathers, padded to whole kernel blocks
        gathered = x.new_zeros(min(n, int(full_pass_fraction * n)) + _BLOCK, x.shape[1])
        minus_inf = torch.tensor(float("-inf"), device=x.device)
    for i in range(1, count):
        idx = int(torch.argmax(min_dist))
        selected[i] = idx
        c = x[idx]
        full = not prune
        if prune:
            # Row x (nearest to pick s) may move to c only if min_dist(x) > |c - s|^2 / 4 - E, where
            # |c - s|^2 >= computed - E; the limit is rounded down to float32.
            picks[i], pick_norms[i] = c, norms[idx]
            gap = (pick_norms[:i] - 2 * (picks[:i] @ c) + norms[idx]).double()
            limit64 = (gap - error) / 4 - error
            limit = limit64.float()
            limit = torch.where(limit.double() > limit64, torch.nextafter(limit, minus_inf), limit)
            rows = (min_dist > limit.index_select(0, assign)).nonzero().squeeze(1)
            full = len(rows) > full_pass_fraction * n or bool((min_dist[special] > limit[assign[special].long()]).any())
        if full:
            dist = (norms - 2 * (x @ c) + norms[idx]).clamp_min(0)
            closer = dist < min_dist
            min_dist = torch.where(closer, dist, min_dist)
            if prune:
                assign[closer] = i
            continue
        # x[rows] @ c over a block of whole kernel blocks: no gathered row in the kernel's leftover path
        # (the rows past len(rows) are stale but finite, and their products are dropped)
        block = gathered[: len(rows) + (-len(rows) % _BLOCK)]
        torch.index_select(x, 0, rows, out=gathered[: len(rows)])
        dist = (norms[rows] - 2 * (block @ c)[: len(rows)] + norms[idx]).clamp_min(0)
        closer = dist < min_dist[rows]
        moved = rows[closer]
        min_dist[moved] = dist[closer]
        assign[moved] = i
    return selected


def nearest_distances(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, chunk_size: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances (Q, k) and indices (Q, k) of each query's k nearest rows of ``bank``."""
    dists, idxs = [], []
    for chunk in queries.split(chunk_size):
        d = torch.cdist(chunk, bank)
        values, indices = d.topk(k, dim=1, largest=False)
        dists.append(values)
        idxs.append(indices)
    return torch.cat(dists), torch.cat(idxs)


class PatchCore(AnomalyModel):
    name = "patchcore"
    trainable = False

    def __init__(self, config: PatchCoreConfig | None = None, tokenizer: nn.Module | None = None) -> None:
        config = config or PatchCoreConfig()
        if not 0 < config.coreset_ratio <= 1:
            raise ValueError(f"coreset_ratio={config.coreset_ratio}: expected a fraction in (0, 1]")
        check_choice("map_upsample", config.map_upsample, ("bilinear", "nearest"))
        image_score(torch.zeros(1, 1, 1), config.score_rule)
        super().__init__(config)
        if tokenizer is None:
            from adlib import backbones

            tokenizer = backbones.create(config.backbone, layers=config.layers, pretrained=config.pretrained)
        self.tokenizer = tokenizer
        for p in self.tokenizer.parameters():
            p.requires_grad_(False)
        self.tokenizer.eval()
        self.image_hw = (config.image_size, config.image_size) if isinstance(config.image_size, int) else tuple(config.image_size)
        width = sum(getattr(self.tokenizer, "channels", [0]))
        if config.embed_dim and config.embed_dim < width:
            width = config.embed_dim
        self.register_buffer("memory_bank", torch.empty(0, width))  # (items, D) after fit_memory

    @property
    def fitted(self) -> bool:
        return len(self.memory_bank) > 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        bank = state_dict.get(prefix + "memory_bank")
        if bank is not None:  # the bank's length is the checkpoint's
            self.memory_bank = self.memory_bank.new_empty(bank.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def feature_key(self) -> str | None:
        return self.tokenizer_key()

    def extract(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.tokenizer(images))

    def embed(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Locally aware patch features (B, D, h, w) on the first tapped layer's grid."""
        x = local_patch_features(features, self.config.patch_size, self.config.pool_include_pad)
        if self.config.embed_dim and self.config.embed_dim < x.shape[1]:
            b, d, h, w = x.shape
            x = F.adaptive_avg_pool1d(x.permute(0, 2, 3, 1).reshape(-1, 1, d), self.config.embed_dim)
            x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2)
        return x

    def fit_memory(self, batches: Iterable[list[torch.Tensor]]) -> None:
        patches = []
        for features in batches:
            x = self.embed(features)
            patches.append(x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]))  # stays on the model's device
        patches = torch.cat(patches)
        count = max(1, int(self.config.coreset_ratio * len(patches)))
        if count >= len(patches):
            self.memory_bank = patches
        else:
            self.memory_bank = patches[greedy_coreset(patches, count, self.config.projection_dim, self.config.seed).to(patches.device)]

    def patch_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest-neighbour distances (B, h, w) and the embedded patches (B, h*w, D)."""
        if not self.fitted:
            raise RuntimeError("PatchCore has no memory bank: fit it first (adlib.engine.fit)")
        x = self.embed(self.extract(images))
        b, d, h, w = x.shape
        flat = x.permute(0, 2, 3, 1).reshape(b, h * w, d)
        dist, _ = nearest_distances(flat.reshape(-1, d), self.memory_bank, 1, self.config.chunk_size)
        return dist[:, 0].reshape(b, h, w), flat

    def _reweighted(self, scores: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """PatchCore Eq. 7: s = (1 - exp(s*) / sum_{m in N_b(m*)} exp(||m_test - m||)) s*."""
        flat = scores.flatten(1)
        best = flat.argmax(dim=1)
        m_test = patches[torch.arange(len(best)), best]  # (B, D)
        _, nearest = nearest_distances(m_test, self.memory_bank, 1)
        b = min(self.config.reweight_neighbors, len(self.memory_bank))
        _, neighbourhood = nearest_distances(self.memory_bank[nearest[:, 0]], self.memory_bank, b)  # includes m*
        dists = torch.linalg.vector_norm(m_test[:, None] - self.memory_bank[neighbourhood], dim=2)
        weight = 1 - torch.softmax(dists, dim=1)[:, 0]
        return weight * flat.gather(1, best[:, None])[:, 0]

    def anomaly_map(self, scores: torch.Tensor) -> torch.Tensor:
        """Patch scores (B, h, w) upsampled to the image (``map_upsample``) and Gaussian-smoothed."""
        align = {"align_corners": False} if self.config.map_upsample == "bilinear" else {}
        maps = F.interpolate(scores.unsqueeze(1), size=self.image_hw, mode=self.config.map_upsample, **align)
        return gaussian_blur(maps.squeeze(1), self.config.smoothing_sigma)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        scores, patches = self.patch_scores(images)
        maps = self.anomaly_map(scores)
        if self.config.reweight:
            image_scores = self._reweighted(scores, patches)
        else:
            image_scores = image_score(scores, self.config.score_rule, self.config.topk_ratio)
        return Prediction(maps, image_scores)


# ------------------------------------------------------------------------------------- the authors' checkpoints
#
# anomalib's PatchcoreModel state dict: ``memory_bank`` and its timm ``features_only`` backbone under
# ``feature_extractor.feature_extractor.``; the backbone's name and taps are not in the shapes, so they are the
# caller's (adlib's names: backbone="wide_resnet50", layers=(2, 3) for anomalib's default).

THEIRS = "feature_extractor.feature_extractor."
# The settings in which anomalib differs from adlib's defaults (see the module docstring)
AUTHORS_SWITCHES = ("pool_include_pad", "map_upsample", "reweight")


def authors_config(shapes, **config) -> PatchCoreConfig:
    """anomalib's behaviour: the paper's reweighted image score (``num_neighbors=9``), nearest-neighbour map
    upsampling, the backbone's weights from the checkpoint (``pretrained=False``)."""
    from adlib.models import model_config

    return model_config("patchcore", None, **{"pretrained": False, "reweight": True, "reweight_neighbors": 9,
                                              "map_upsample": "nearest", "pool_include_pad": True, **config})


def _own_backbone_keys(config: PatchCoreConfig) -> list[str]:
    with torch.device("meta"):
        return list(PatchCore(config).tokenizer.model.state_dict())


def authors_key_map(config: PatchCoreConfig) -> dict[str, str]:
    out = {f"tokenizer.model.{k}": THEIRS + k for k in _own_backbone_keys(config)}
    out["memory_bank"] = "memory_bank"
    return out


def authors_ignored(config: PatchCoreConfig) -> set[str]:
    """The Gaussian kernel (recomputed from sigma) and the blocks of anomalib's ``features_only`` network after
    the last tap, which it runs but never returns (adlib prunes them): prefixes of the top-level modules past
    the last one adlib keeps."""
    own = _own_backbone_keys(config)
    ignored = {"anomaly_map_generator."}
    last = max(int(k.split(".")[1]) for k in own if k.startswith("blocks.")) if any(
        k.startswith("blocks.") for k in own) else None
    if last is not None:
        ignored |= {f"{THEIRS}blocks.{i}." for i in range(last + 1, last + 16)}
    ignored |= {f"{THEIRS}{name}." for name in ("layer4", "conv_head", "bn2")}
    return ignored


@torch.no_grad()
def authors_stages(model: PatchCore, inputs: dict) -> dict[str, torch.Tensor]:
    """The stages of ``benchmarks/parity/patchcore.py``: the test images' embeddings, the coreset greedy
    selection on anomalib's projected training features from its first pick (indices, and the bank they give),
    the nearest-neighbour distances to the loaded bank, the anomaly map and the image score."""
    model.eval()
    embedding = model.embed(model.extract(inputs["images"]))
    train = model.embed(model.extract(inputs["train_images"]))
    train = train.permute(0, 2, 3, 1).reshape(-1, train.shape[1])
    picks = greedy_coreset(inputs["projected"], inputs["count"], projection_dim=None, start=inputs["start"])
    scores, _ = model.patch_scores(inputs["images"])
    maps, image_scores = model.predict(inputs["images"])
    return {"embedding": embedding, "coreset_indices": picks.float(), "memory_bank": train[picks],
            "patch_scores": scores, "anomaly_map": maps, "image_score": image_scores}
