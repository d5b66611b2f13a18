"""Exact image- and pixel-level anomaly detection metrics at full resolution.

Image level: AUROC, AP, max-F1 from scores and labels. Pixel level: AUROC, AP, max-F1 and AU-PRO from
anomaly maps and binary masks. All values are fractions in [0, 1].

Definitions (exact, ties handled as scikit-learn does):
- AUROC: trapezoidal area under the ROC curve over all distinct thresholds (``roc_auc_score``).
- AP: ``sum_n (R_n - R_{n-1}) P_n`` over distinct thresholds (``average_precision_score``).
- max-F1: the largest ``2PR / (P + R)`` over the points of ``precision_recall_curve``.
- AU-PRO (MVTec AD): for a threshold t, FPR(t) is the fraction of all negative pixels with score >= t
  and PRO(t) the mean, over every connected ground-truth region of every image, of the fraction of the
  region's pixels with score >= t. The curve (FPR, PRO) over all distinct thresholds, starting at (0, 0),
  is integrated with the trapezoid rule from FPR 0 to 0.3 (interpolated at exactly 0.3) and divided by
  0.3. A threshold step admits all pixels with an equal score at once, as the ROC does. Regions are the
  8-connected components of each image's mask (``scipy.ndimage.label`` with a 3x3 block of ones, as in
  the MVTec AD evaluation code and ADer's ``skimage.measure.label``); ``connectivity=4`` is available.

How it is exact and fast: every metric above only changes at thresholds equal to the score of some
*positive* (anomalous) pixel; between two such values only negatives enter, which moves the curves along
straight segments that the trapezoid rule integrates exactly. So the negatives are sorted once (numpy's
SIMD sort) and, for each distinct positive score v, two binary searches give the number of negatives
> v and >= v. The positives (a few percent of the pixels) are sorted with their region ids. PRO is
linear in the per-pixel indicators, so each positive pixel carries the weight
``1 / (region size * number of regions)`` and one weighted cumulative sum over the sorted positive
scores gives the whole PRO curve: AU-PRO costs no pass over the pixels beyond the shared sort.

Degenerate input: NaN or inf scores, shape mismatches, non-binary masks or labels raise ``ValueError``
naming the problem; a set with no positive or no negative pixels/images raises ``ValueError`` too (the
metrics are undefined there; scikit-learn also refuses AUROC).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

__all__ = [
    "image_metrics",
    "pixel_metrics",
    "ImageAccumulator",
    "PixelAccumulator",
    "mad",
    "summary",
    "MAD_KEYS",
    "ader_image_scores",
    "dataset_average",
    "ADER_SIZE",
    "ADER_AUPRO_STEPS",
    "Protocol",
    "PROTOCOLS",
    "protocol",
]

FPR_LIMIT = 0.3
ADER_SIZE = 256
ADER_AUPRO_STEPS = 100  # ViTAD's and MambaAD's ADer configs: ``max_step_aupro=100``
MAD_KEYS = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro")


# ----------------------------------------------------------------------------------------------- input


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """NumPy view of an array or a torch tensor (detached, on the CPU; bfloat16 becomes float32)."""
    if type(x).__module__.startswith("torch"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    try:
        return np.asarray(x)
    except Exception as err:  # pragma: no cover - message only
        raise TypeError(f"{name}: expected a NumPy array or a torch tensor, got {type(x).__name__}") from err


def _score_array(x: Any, name: str) -> np.ndarray:
    a = _to_numpy(x, name)
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name}: expected real-valued scores, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.integer) or a.dtype == np.float64:
        a = a.astype(np.float64, copy=False)
    else:  # float16 / float32 scores are compared as float32, exactly as given
        a = a.astype(np.float32, copy=False)
    bad = ~np.isfinite(a)
    if bad.any():
        n_nan = int(np.isnan(a).sum())
        raise ValueError(
            f"{name}: {int(bad.sum())} non-finite values ({n_nan} NaN, {int(bad.sum()) - n_nan} inf) "
            f"out of {a.size}; scores must be finite"
        )
    return a


def _binary_array(x: Any, name: str) -> np.ndarray:
    """Boolean array from a mask/label array whose values must all be 0 or 1 (bool accepted)."""
    a = _to_numpy(x, name)
    if a.dtype == np.bool_:
        return a
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{name}: expected binary values (0/1 or bool), got dtype {a.dtype}")
    positive = a == 1
    if not np.logical_or(positive, a == 0).all():
        odd = np.unique(a[(a != 0) & (a != 1)])[:5]
        raise ValueError(
            f"{name}: must be binary (0/1 or bool), found other values such as {odd.tolist()}; "
            f"binarize first, e.g. `{name} > 0.5`"
        )
    return positive


def _squeeze_channel(a: np.ndarray, name: str) -> np.ndarray:
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    elif a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"{name}: expected shape (N, H, W), (N, 1, H, W) or (H, W), got {tuple(a.shape)}")
    return a


# ------------------------------------------------------------------------------------------ exact core


@dataclass
class _Curve:
    """Counts at the distinct positive scores, in descending order of score.

    ``tp[i]``: positives with score >= v_i; ``fp_gt[i]`` / ``fp_ge[i]``: negatives with score > v_i /
    >= v_i; ``pro[i]``: PRO at threshold v_i (only when region weights were given)."""

    tp: np.ndarray
    fp_gt: np.ndarray
    fp_ge: np.ndarray
    n_pos: int
    n_neg: int
    pro: np.ndarray | None = None


def _curve(pos: np.ndarray, neg: np.ndarray, pos_weights: np.ndarray | None = None) -> _Curve:
    """Exact threshold counts from positive scores and *sorted* negative scores."""
    n_pos, n_neg = int(pos.size), int(neg.size)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"metrics are undefined with {n_pos} positive and {n_neg} negative samples; both classes are needed"
        )
    order = np.argsort(pos)[::-1]  # descending score
    pos_sorted = pos[order]
    first = np.ones(n_pos, dtype=bool)
    first[1:] = pos_sorted[1:] != pos_sorted[:-1]
    values = pos_sorted[first]  # distinct positive scores, descending
    group = np.cumsum(first) - 1
    ascending = values[::-1]  # numpy's searchsorted is faster for ascending keys
    fp_ge = n_neg - np.searchsorted(neg, ascending, side="left")[::-1]
    fp_gt = n_neg - np.searchsorted(neg, ascending, side="right")[::-1]
    tp = np.cumsum(np.bincount(group, minlength=values.size))
    pro = None
    if pos_weights is not None:
        pro = np.cumsum(np.bincount(group, weights=pos_weights[order], minlength=values.size))
    return _Curve(tp=tp, fp_gt=fp_gt, fp_ge=fp_ge, n_pos=n_pos, n_neg=n_neg, pro=pro)


def _sorted(chunks: list[np.ndarray]) -> np.ndarray:
    """All scores of ``chunks`` in one sorted array (numpy's SIMD sort: about 2 s for 1e8 float32 here).
    One array, not sorted pieces: binary searches into 7 pieces cost more than the concatenation."""
    merged = np.concatenate([c.reshape(-1) for c in chunks])
    merged.sort()
    return merged


def _auroc(c: _Curve) -> float:
    # ROC points: (0,0), then per threshold (fp_gt, tp_prev) and (fp_ge, tp), then (N, P).
    tp_prev = np.concatenate([[0], c.tp[:-1]]).astype(np.float64)
    tp = c.tp.astype(np.float64)
    horizontal = (c.fp_gt - np.concatenate([[0], c.fp_ge[:-1]])) * tp_prev
    diagonal = (c.fp_ge - c.fp_gt) * (tp_prev + tp) / 2.0
    tail = (c.n_neg - c.fp_ge[-1]) * float(c.n_pos)
    area = float(horizontal.sum()) + float(diagonal.sum()) + tail
    return area / (float(c.n_pos) * float(c.n_neg))


def _ap(c: _Curve) -> float:
    gained = np.diff(np.concatenate([[0], c.tp])).astype(np.float64)
    precision = c.tp / (c.tp + c.fp_ge).astype(np.float64)
    return float(np.sum(gained * precision) / c.n_pos)


def _f1max(c: _Curve) -> float:
    # F1 = 2TP / (TP + FP + P); between positive values only FP grows, so the max is at one of them.
    return float(np.max(2.0 * c.tp / (c.tp + c.fp_ge + c.n_pos).astype(np.float64)))


def _aupro(c: _Curve, fpr_limit: float = FPR_LIMIT) -> float:
    n = float(c.n_neg)
    pro_prev = np.concatenate([[0.0], c.pro[:-1]])
    fpr = np.empty(2 * c.tp.size + 2)
    pro = np.empty_like(fpr)
    fpr[0], pro[0] = 0.0, 0.0
    fpr[1:-1:2], pro[1:-1:2] = c.fp_gt / n, pro_prev
    fpr[2:-1:2], pro[2:-1:2] = c.fp_ge / n, c.pro
    fpr[-1], pro[-1] = 1.0, 1.0
    return _trapezoid_to(fpr, pro, fpr_limit) / fpr_limit


def _trapezoid_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under a curve with non-decreasing x, from x[0] to x_max (interpolated there)."""
    end = int(np.searchsorted(x, x_max, side="right"))  # x[:end] <= x_max
    area = float(np.sum(np.diff(x[:end]) * (y[1:end] + y[: end - 1]) / 2.0))
    if end < x.size and x[end - 1] < x_max:
        x0, x1, y0, y1 = x[end - 1], x[end], y[end - 1], y[end]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += (x_max - x0) * (y0 + y_at) / 2.0
    return area


# ----------------------------------------------------------------------------------------- image level


class ImageAccumulator:
    """Collects image scores and labels batch by batch; ``compute()`` gives auroc / ap / f1max."""

    def __init__(self) -> None:
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def update(self, scores: Any, labels: Any) -> None:
        s = _score_array(scores, "scores").reshape(-1)
        y = _binary_array(labels, "labels").reshape(-1)
        if s.shape != y.shape:
            raise ValueError(f"scores has {s.size} values but labels has {y.size}")
        self._scores.append(s.copy())  # copies: the caller may reuse its buffers
        self._labels.append(y.copy())

    def compute(self) -> dict[str, float]:
        if not self._scores:
            raise ValueError("ImageAccumulator.compute() called before any update()")
        s = np.concatenate(self._scores)
        y = np.concatenate(self._labels)
        pos = s[y]
        c = _curve(pos, np.sort(s[~y]))
        return {"auroc": _auroc(c), "ap": _ap(c), "f1max": _f1max(c)}


def image_metrics(scores: Any, labels: Any) -> dict[str, float]:
    """Image AUROC, AP and max-F1 of anomaly scores (N,) against labels (N,) in {0, 1}.

    ADer computes these three with scikit-learn too (max-F1 from ``precision_recall_curve``), so there is
    no separate ADer mode here; its image *score* (max of the 256 px map) is ``ader_image_scores``."""
    acc = ImageAccumulator()
    acc.update(scores, labels)
    return acc.compute()


# ----------------------------------------------------------------------------------------- pixel level


def _structure(connectivity: int) -> np.ndarray:
    if connectivity == 8:
        return np.ones((3, 3), dtype=bool)
    if connectivity == 4:
        return np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)
    raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")


class PixelAccumulator:
    """Collects anomaly maps and masks batch by batch for exact pixel metrics.

    What it keeps (the explicit memory choice): every pixel's score once, split by the mask, in the
    precision it arrived in (float32 for float16/32/bfloat16 maps, float64 for float64 or integer maps):
    4 bytes a pixel for float32, so 100 maps at 1024x1024 cost 0.4 GB; plus a 4-byte region id per
    *anomalous* pixel. The maps and masks themselves are not kept and nothing is downsampled.
    With ``ader_compat=True`` it instead keeps maps and masks resized to 256x256 (see ``_ader_pixel``).
    """

    def __init__(self, ader_compat: bool = False, connectivity: int = 8) -> None:
        self.ader_compat = ader_compat
        self.structure = _structure(connectivity)
        self._neg: list[np.ndarray] = []
        self._pos: list[np.ndarray] = []
        self._region: list[np.ndarray] = []
        self._n_regions = 0
        self._borrow = False  # True only inside pixel_metrics: its input outlives the accumulator
        self._ader_maps: list[np.ndarray] = []
        self._ader_masks: list[np.ndarray] = []

    def update(self, maps: Any, masks: Any) -> None:
        """Add a batch: maps (B, H, W) or (B, 1, H, W) float, masks of the same shape in {0, 1}."""
        m = _squeeze_channel(_score_array(maps, "maps"), "maps")
        g = _squeeze_channel(_binary_array(masks, "masks"), "masks")
        if m.shape != g.shape:
            raise ValueError(f"maps and masks differ in shape: maps {tuple(m.shape)}, masks {tuple(g.shape)}")
        if self.ader_compat:
            maps_256, masks_256 = _resize_for_ader(m, g)
            self._ader_maps.append(maps_256)
            self._ader_masks.append(masks_256)
            return
        from scipy import ndimage

        for image, mask in zip(m, g):
            rows = np.flatnonzero(mask.any(axis=1))
            if rows.size == 0:
                self._neg.append(image.reshape(-1) if self._borrow else image.reshape(-1).copy())
                continue
            cols = np.flatnonzero(mask.any(axis=0))
            # Label only the masks' bounding box; its row-major order is the full image's order.
            box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            labels, n = ndimage.label(box, structure=self.structure)
            self._neg.append(image[~mask])
            self._pos.append(image[mask])
            self._region.append(labels[box].astype(np.int32) + (self._n_regions - 1))
            self._n_regions += n

    def compute(self) -> dict[str, float]:
        """Exact (or ADer-compatible) pixel auroc, ap, f1max and aupro over everything added."""
        if self.ader_compat:
            if not self._ader_maps:
                raise ValueError("PixelAccumulator.compute() called before any update()")
            return _ader_pixel(np.concatenate(self._ader_maps), np.concatenate(self._ader_masks))
        if not self._neg:
            raise ValueError("PixelAccumulator.compute() called before any update()")
        if not self._pos:
            raise ValueError("pixel metrics are undefined: no anomalous pixel in any mask")
        pos = np.concatenate(self._pos)
        region = np.concatenate(self._region)
        sizes = np.bincount(region, minlength=self._n_regions).astype(np.float64)
        weights = 1.0 / (sizes[region] * self._n_regions)
        neg = _sorted(self._neg)
        self._neg = [neg]  # keep the sorted copy instead of the pieces: same content, less memory
        c = _curve(pos.astype(np.result_type(pos, neg), copy=False), neg, pos_weights=weights)
        return {"auroc": _auroc(c), "ap": _ap(c), "f1max": _f1max(c), "aupro": _aupro(c)}


def pixel_metrics(
    maps: Any, masks: Any, ader_compat: bool = False, connectivity: int = 8, batch_size: int = 16
) -> dict[str, float]:
    """Pixel AUROC, AP, max-F1 and AU-PRO of anomaly maps (N, H, W) against binary masks (N, H, W).

    Exact at the given resolution by default; ``ader_compat=True`` reproduces ADer's evaluation
    (ViTAD / MambaAD numbers). Maps are fed to a ``PixelAccumulator`` ``batch_size`` images at a time."""
    m = _to_numpy(maps, "maps")
    g = _to_numpy(masks, "masks")
    if m.ndim not in (2, 3, 4) or m.shape != g.shape:
        raise ValueError(f"maps and masks must have the same shape (N, H, W): maps {m.shape}, masks {g.shape}")
    if m.ndim == 2:
        m, g = m[None], g[None]
    acc = PixelAccumulator(ader_compat=ader_compat, connectivity=connectivity)
    acc._borrow = True
    for start in range(0, m.shape[0], batch_size):
        acc.update(m[start : start + batch_size], g[start : start + batch_size])
    return acc.compute()


# ------------------------------------------------------------------------------------ ADer compatible


def _resize_for_ader(maps: np.ndarray, masks: np.ndarray, size: int = ADER_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """ADer evaluates at 256x256. Its masks are 8-bit images (0/255) that torchvision's ``Resize`` (PIL,
    antialiased bilinear) brings to 256 px, ``ToTensor`` divides by 255 and the trainer binarises at > 0.5.
    The 8-bit rounding matters: a 2x downscale puts mask edges at exactly 127.5, which PIL rounds to 128, a
    positive pixel, where a float resize gives 0.5, not > 0.5. So masks are resized as uint8 here (torch's
    antialiased uint8 bilinear rounds as PIL does). Maps are resized bilinearly (antialiased) in float (ADer's
    own maps are made at 256 px, so for maps from another input size this is our approximation)."""
    if maps.shape[1:] == (size, size):
        return maps.astype(np.float32), masks.astype(np.uint8)
    import torch
    import torch.nn.functional as F

    def resize(a: np.ndarray, dtype) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=dtype))[:, None]
        return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[:, 0]

    masks_u8 = resize(masks.astype(np.uint8) * 255, np.uint8)
    return resize(maps, np.float32).numpy(), (masks_u8.numpy().astype(np.float64) / 255.0 > 0.5).astype(np.uint8)


def _ader_pixel(maps: np.ndarray, masks: np.ndarray, aupro_steps: int = ADER_AUPRO_STEPS) -> dict[str, float]:
    """ADer's ``util/metric.py`` pixel metrics (mAUROC_px, mAP_px, mF1_max_px, mAUPRO_px), mirrored.

    - AUROC, AP: scikit-learn on every pixel of the 256x256 maps (computed here exactly, same numbers).
    - F1max: maps min-max normalised over the whole set; thresholds 0, 0.05, ..., 1.0; a pixel is
      predicted anomalous when its normalised score is > threshold; F1 with eps 1e-8; the max of the 21.
    - AU-PRO: ``aupro_steps`` thresholds ``np.arange(min, max, (max - min) / steps)``, prediction
      ``score > threshold``, PRO averaged over 8-connected regions of all images, FPR over all
      negatives; points with FPR < 0.3 kept, their FPRs min-max rescaled to [0, 1] (ADer's choice, not
      a division by 0.3), then the trapezoid area.
    """
    g = masks.astype(bool)
    pos, neg = maps[g], maps[~g]
    if pos.size == 0 or neg.size == 0:
        raise ValueError("pixel metrics are undefined: masks need both anomalous and normal pixels")
    c = _curve(pos, np.sort(neg))
    eps = 1e-8
    lo, hi = float(maps.min()), float(maps.max())
    # ADer's maps are float64 (``cal_anomaly_map`` accumulates into ``np.zeros``): normalise in float64 too
    norm_pos = (pos.astype(np.float64) - lo) / (hi - lo)
    norm_neg = (neg.astype(np.float64) - lo) / (hi - lo)
    f1s = []
    for th in np.arange(0.0, 1.0 + 1e-3, 0.05):
        inter = float(np.count_nonzero(norm_pos > th))
        pred = inter + float(np.count_nonzero(norm_neg > th))
        precision = inter / (pred + eps)
        recall = inter / (pos.size + eps)
        f1s.append(2 * precision * recall / (precision + recall + eps))
    return {"auroc": _auroc(c), "ap": _ap(c), "f1max": float(max(f1s)), "aupro": _ader_aupro(maps, g, aupro_steps)}


def _ader_aupro(maps: np.ndarray, masks: np.ndarray, steps: int, expect_fpr: float = FPR_LIMIT) -> float:
    from scipy import ndimage

    region_ids, region_sizes, region_scores = [], [], []
    offset = 0
    for image, mask in zip(maps, masks):
        labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        if n:
            region_ids.append(labels[mask] - 1 + offset)
            region_scores.append(image[mask])
            region_sizes.append(np.bincount(labels[mask] - 1, minlength=n))
            offset += n
    ids, scores, sizes = np.concatenate(region_ids), np.concatenate(region_scores), np.concatenate(region_sizes)
    neg_sorted = np.sort(maps[~masks])
    # Thresholds in float64, as ADer's (its maps are float64): float32 ones move AU-PRO by ~1e-6.
    lo, hi = float(maps.min()), float(maps.max())
    delta = (hi - lo) / steps
    fprs, pros = [], []
    for th in np.arange(lo, hi, delta):
        hit = np.bincount(ids[scores > th], minlength=offset)
        pros.append(float(np.mean(hit / sizes)))
        fprs.append((neg_sorted.size - np.searchsorted(neg_sorted, th, side="right")) / neg_sorted.size)
    fprs_a, pros_a = np.asarray(fprs), np.asarray(pros)
    keep = fprs_a < expect_fpr
    f, p = fprs_a[keep], pros_a[keep]
    f = (f - f.min()) / (f.max() - f.min())
    area = float(np.trapezoid(p, f))
    return -area if np.all(np.diff(f) <= 0) else area  # sklearn.metrics.auc's direction rule


def ader_image_scores(maps: Any, pooling_ks: int | None = None) -> np.ndarray:
    """ADer's image score (``mAUROC_sp_max`` etc.): the maximum of the 256x256 map, after a
    ``pooling_ks`` x ``pooling_ks`` average pooling with stride 1 when given (ViTAD's config: 16)."""
    import torch
    import torch.nn.functional as F

    m = _squeeze_channel(_score_array(maps, "maps"), "maps")
    resized, _ = _resize_for_ader(m, np.zeros(m.shape, dtype=bool))
    t = torch.from_numpy(resized)[:, None]
    if pooling_ks is not None:
        t = F.avg_pool2d(t, pooling_ks, stride=1)
    return t.amax(dim=(1, 2, 3)).numpy().astype(np.float64)


# ---------------------------------------------------------------------------------------------- mAD


def mad(image: Mapping[str, float], pixel: Mapping[str, float]) -> float:
    """mAD as ViTAD and MambaAD define it: the mean of image AUROC, AP, F1max and pixel AUROC, AP,
    F1max, AU-PRO (the dicts returned by ``image_metrics`` and ``pixel_metrics``)."""
    values = [image["auroc"], image["ap"], image["f1max"], pixel["auroc"], pixel["ap"], pixel["f1max"], pixel["aupro"]]
    return float(sum(values) / 7.0)


def summary(image: Mapping[str, float], pixel: Mapping[str, float]) -> dict[str, float]:
    """One flat row: the seven ``MAD_KEYS`` and ``mad`` (what a paper's per-category table prints)."""
    row = {f"image_{k}": float(image[k]) for k in ("auroc", "ap", "f1max")}
    row.update({f"pixel_{k}": float(pixel[k]) for k in ("auroc", "ap", "f1max", "aupro")})
    row["mad"] = mad(image, pixel)
    return row


def dataset_average(per_category: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean over categories of every metric present in all categories (e.g. ``MAD_KEYS`` rows)."""
    if not per_category:
        raise ValueError("dataset_average: no categories given")
    rows = list(per_category.values())
    keys = [k for k in rows[0] if all(k in r for r in rows)]
    return {k: float(np.mean([float(r[k]) for r in rows])) for k in keys}


# ------------------------------------------------------------------------------------------- protocols


@dataclass(frozen=True)
class Protocol:
    """A named evaluation protocol: how pixel metrics are accumulated and where image labels come from.

    - ``exact`` (the default): exact metrics at the maps' own resolution; image labels from the dataset
      (the defect folder).
    - ``ader``: ADer's evaluator, which ViTAD's and MambaAD's printed numbers come from
      (``../shared/research/repro_spec.md`` §0.1): maps and masks at 256 px (masks bilinear, then > 0.5),
      pixel max-F1 at 21 thresholds on the category's min-max normalised maps, AU-PRO at 100 thresholds
      with the FPR axis rescaled; image labels are 1 where the resized mask has any positive pixel.
    """

    name: str
    description: str

    def pixel_accumulator(self) -> "PixelAccumulator":
        return PixelAccumulator(ader_compat=self.name == "ader")

    def image_labels(self, labels: Any, masks: Any):
        """Per-image labels of a batch: the dataset's, or (ADer) whether the 256 px mask has a positive pixel."""
        import torch

        labels = torch.as_tensor(labels).long()
        if self.name != "ader":
            return labels
        g = _squeeze_channel(_binary_array(masks, "masks"), "masks")
        _, resized = _resize_for_ader(np.zeros(g.shape, dtype=np.float32), g)
        return torch.from_numpy(resized.reshape(len(resized), -1).any(axis=1).astype(np.int64))


PROTOCOLS: dict[str, Protocol] = {
    "exact": Protocol("exact", "exact AUROC / AP / max-F1 / AU-PRO at the maps' resolution"),
    "ader": Protocol("ader", "ADer's evaluator: 256 px, 21-threshold pixel F1, 100-threshold AU-PRO"),
}


def protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"protocol={name!r} unknown; expected one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]
