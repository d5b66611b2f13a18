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

Test-image noise (``resample_counts``, ``image_replicates``, ``PixelAccumulator.compute(resample=...)``): a
metric measured on one draw of test images would differ on another draw. Its spread is estimated by a
stratified bootstrap over the test *images*: each of ``BOOTSTRAP`` resamples draws, within each image group
(good, defect; LOCO's logical, structural), as many images as the group has, with replacement; the metric is
recomputed on every resample. The resamples are drawn from a generator seeded by the test images' identity
(their sorted path keys, ``image_keys``), so two evaluations of the same images (two methods, two settings,
two seeds, two resolutions) use the same resamples, in whatever order they saw the images: the bootstrap is
paired without being told so.

- Image metrics are recomputed exactly on every resample (the same tie handling as above).
- Pixel metrics would need every pixel of every resampled image. Instead, after the exact metrics, each image's
  pixels are counted on common score bins (``PIXEL_BINS`` edges: half at quantiles of the normal pixels, half
  at quantiles of the anomalous ones), normal pixels per image and anomalous pixels per ground-truth region;
  a resample's metrics are those of its summed counts, the pixels of one bin counting as tied (AU-PRO from
  the regions' covered fractions per bin). So no map is kept: K counts per image and per region. Each
  replicate is then shifted by the binning's offset on the full set (exact − binned), so the replicates
  are centred on the exact value and the binning only enters their spread; ``tests/test_metrics.py`` checks
  the binned values and the bootstrap spread against the exact metric recomputed on resampled images.
  Under the ``ader`` protocol the spread is that of the exact definitions on ADer's 256 px maps, centred on
  ADer's values (its 21-threshold F1 and 100-threshold AU-PRO).
- ``chance_level``: what a detector that sees nothing scores (AUROC 50 %, AP the positive rate p, max-F1
  2p / (1 + p), AU-PRO 15 %), the floor against which a claim asks whether a method works at all.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Mapping, Sequence

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
    "BOOTSTRAP",
    "image_keys",
    "test_identity",
    "resample_counts",
    "image_replicates",
    "chance_level",
    "PixelHistograms",
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


# ------------------------------------------------------------------------------------ test-image bootstrap
BOOTSTRAP = 500  # resamples of the test images per evaluation
PIXEL_BINS = 256  # common score bins of the per-image pixel counts (half normal-pixel, half anomalous quantiles)
KEY_PARTS = 5  # an image's key: the last parts of its path (dataset/category/test/<group>/<file>)


def image_keys(paths: Sequence[Any]) -> list[str]:
    """What identifies a test image across evaluations: the last ``KEY_PARTS`` parts of its path, so that the
    same files read from another root, or at another resolution, get the same key."""
    return ["/".join(PurePath(str(p)).parts[-KEY_PARTS:]) for p in paths]


def test_identity(keys: Sequence[str]) -> str:
    """A short digest of a set of image keys (order-free): equal for evaluations of the same test images."""
    return hashlib.sha256("\n".join(sorted(map(str, keys))).encode()).hexdigest()[:16]


def resample_counts(keys: Sequence[str], strata: Sequence[Any], replicates: int = BOOTSTRAP) -> np.ndarray:
    """(replicates, n) counts: how often each image (in the order given) is drawn in each resample.

    Within each stratum (an image group: good, defect, ...) as many images are drawn as the stratum has, with
    replacement. The generator is seeded by the sorted (stratum, key) pairs, and the draws index the images in
    that sorted order, so the same test images give the same resamples in any evaluation order."""
    keys, strata = [str(k) for k in keys], [str(s) for s in strata]
    if len(keys) != len(strata):
        raise ValueError(f"resample_counts: {len(keys)} keys but {len(strata)} strata; expected one per image")
    if replicates < 1:
        raise ValueError(f"resample_counts: replicates={replicates}; expected a positive number")
    n = len(keys)
    order = sorted(range(n), key=lambda i: (strata[i], keys[i]))
    digest = hashlib.sha256("\n".join(f"{strata[i]}\t{keys[i]}" for i in order).encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    counts = np.zeros(replicates * n, dtype=np.int64)
    rows = np.arange(replicates)[:, None] * n
    for stratum in sorted(set(strata)):
        members = np.array([i for i in order if strata[i] == stratum])
        draws = members[rng.integers(0, len(members), size=(replicates, len(members)))]
        counts += np.bincount((rows + draws).ravel(), minlength=replicates * n)
    return counts.reshape(replicates, n).astype(np.uint16 if n < 2**16 else np.int64)


def _bin_sums(weights: np.ndarray, bins: np.ndarray, n_bins: int) -> np.ndarray:
    """(B, n_bins): the columns of ``weights`` (B, m) summed per bin (``bins``: m bin indices)."""
    out = np.zeros((weights.shape[0], n_bins))
    if bins.size == 0:
        return out
    order = np.argsort(bins, kind="stable")
    sorted_bins = bins[order]
    starts = np.flatnonzero(np.r_[True, sorted_bins[1:] != sorted_bins[:-1]])
    out[:, sorted_bins[starts]] = np.add.reduceat(weights[:, order].astype(np.float64), starts, axis=1)
    return out


def _binned(pos: np.ndarray, neg: np.ndarray, pro: np.ndarray | None = None,
            fpr_limit: float = FPR_LIMIT) -> dict[str, np.ndarray]:
    """Metrics of (B, K) positive and negative counts per score bin, bins in ascending order of score, the items
    of one bin counting as tied (exact when the bins are the distinct scores, as for images). ``pro`` (B, K):
    PRO at each bin's threshold, in *descending* order (the curve's order). Returns (B,) fractions, NaN where a
    resample has no positive or no negative."""
    tp = np.cumsum(pos[:, ::-1], axis=1, dtype=np.float64)  # thresholds from the highest bin down
    fp = np.cumsum(neg[:, ::-1], axis=1, dtype=np.float64)
    n_pos, n_neg = tp[:, -1:], fp[:, -1:]
    zero = np.zeros((tp.shape[0], 1))
    tp0, fp0 = np.hstack([zero, tp[:, :-1]]), np.hstack([zero, fp[:, :-1]])
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = ((fp - fp0) * (tp + tp0)).sum(axis=1) / 2.0 / (n_pos * n_neg)[:, 0]
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 0.0)
        ap = ((tp - tp0) * precision).sum(axis=1) / n_pos[:, 0]
        f1max = (2.0 * tp / (tp + fp + n_pos)).max(axis=1)
    out = {"auroc": auroc, "ap": ap, "f1max": f1max}
    if pro is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            x = np.hstack([zero, fp / n_neg])
        y = np.hstack([zero, pro])
        x0, x1, y0, y1 = x[:, :-1], x[:, 1:], y[:, :-1], y[:, 1:]
        whole = x1 <= fpr_limit
        crossing = (x0 < fpr_limit) & (x1 > fpr_limit)
        with np.errstate(invalid="ignore", divide="ignore"):
            y_at = y0 + (y1 - y0) * (fpr_limit - x0) / np.where(crossing, x1 - x0, 1.0)
        area = np.where(whole, (x1 - x0) * (y0 + y1) / 2.0, 0.0) + np.where(crossing, (fpr_limit - x0) * (y0 + y_at) / 2.0, 0.0)
        out["aupro"] = area.sum(axis=1) / fpr_limit
    undefined = (n_pos[:, 0] == 0) | (n_neg[:, 0] == 0)
    return {k: np.where(undefined, np.nan, v) for k, v in out.items()}


def image_replicates(scores: Any, labels: Any, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Exact image AUROC, AP and max-F1 of each resample (``counts`` (B, n) from ``resample_counts``)."""
    s = _score_array(scores, "scores").reshape(-1).astype(np.float64)
    y = _binary_array(labels, "labels").reshape(-1)
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] != s.size or y.size != s.size:
        raise ValueError(f"image_replicates: {s.size} scores, {y.size} labels and counts of shape {counts.shape}; "
                         f"expected (replicates, {s.size})")
    values, bins = np.unique(s, return_inverse=True)
    pos = _bin_sums(counts[:, y], bins[y], values.size)
    neg = _bin_sums(counts[:, ~y], bins[~y], values.size)
    return _binned(pos, neg)


@dataclass
class PixelHistograms:
    """Pixel scores counted on common bins (ascending): per image its normal pixels, per ground-truth region
    its pixels (``region_image``: the image of each region). What a resample of the test images needs."""

    negatives: np.ndarray  # (images, K)
    regions: np.ndarray  # (regions, K)
    region_image: np.ndarray  # (regions,)

    def metrics(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        """(B,) AUROC, AP, max-F1 and AU-PRO of each resample (``counts`` (B, images)), binned."""
        weights = np.asarray(counts, dtype=np.float64)
        if weights.ndim != 2 or weights.shape[1] != self.negatives.shape[0]:
            raise ValueError(f"PixelHistograms.metrics: counts of shape {weights.shape}; expected "
                             f"(replicates, {self.negatives.shape[0]})")
        per_region = weights[:, self.region_image]
        covered = np.cumsum(self.regions[:, ::-1], axis=1) / np.maximum(self.regions.sum(axis=1, keepdims=True), 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            pro = (per_region @ covered) / per_region.sum(axis=1, keepdims=True)
        return _binned(per_region @ self.regions, weights @ self.negatives, pro)


def _edges(neg_sorted: np.ndarray, pos: np.ndarray, bins: int = PIXEL_BINS) -> np.ndarray:
    half = max(bins // 2, 2)
    levels = np.arange(1, half) / half
    at_neg = neg_sorted[np.minimum((levels * neg_sorted.size).astype(np.int64), neg_sorted.size - 1)]
    at_pos = np.quantile(pos, levels) if pos.size else np.zeros(0)
    # in the scores' own precision: searching float32 scores in float64 edges would copy every score
    dtype = np.result_type(neg_sorted.dtype, pos.dtype)
    return np.unique(np.concatenate([at_neg, np.asarray(at_pos)]).astype(dtype))


def _histograms(negatives: Sequence[np.ndarray], positives: np.ndarray, region: np.ndarray,
                region_image: np.ndarray, edges: np.ndarray) -> PixelHistograms:
    """Counts per bin (``np.searchsorted(edges, score, "right")``) of every image's normal pixels and every
    region's pixels (``positives`` with their region ids ``region``)."""
    k = edges.size + 1
    neg = np.zeros((len(negatives), k), dtype=np.float32)
    for i, scores in enumerate(negatives):
        if scores.size:  # one image's sort is cache-sized and SIMD: faster than searching every score in the edges
            below = np.searchsorted(np.sort(scores.reshape(-1)), edges, side="left")  # scores < each edge
            neg[i] = np.diff(below, prepend=0, append=scores.size)
    n_regions = int(region_image.size)
    flat = region.astype(np.int64) * k + np.searchsorted(edges, positives, side="right")
    regions = np.bincount(flat, minlength=n_regions * k).reshape(n_regions, k).astype(np.float32)
    return PixelHistograms(neg, regions, region_image.astype(np.int64))


def _centred(exact: Mapping[str, float], hist: PixelHistograms, counts: np.ndarray) -> tuple[dict, dict]:
    """Replicates of the binned metrics shifted onto the exact values; and the shift (exact − binned, full set)."""
    both = hist.metrics(np.vstack([np.ones((1, hist.negatives.shape[0])), counts]))  # row 0: the full set
    offset = {k: float(exact[k] - both[k][0]) for k in exact if k in both}
    return {k: both[k][1:] + offset[k] for k in offset}, offset


def chance_level(metric: str, prevalence: float | None = None) -> float:
    """What a detector that sees nothing scores on a set with positive rate ``prevalence`` (a fraction): AUROC
    0.5; AP the positive rate; max-F1 2p / (1 + p) (calling everything anomalous); AU-PRO 0.15 (PRO = FPR up to
    0.3). NaN where the level depends on a rate that is not given, or for a metric it does not know."""
    if metric.startswith("auroc"):
        return 0.5
    if metric == "aupro":
        return 0.5 * FPR_LIMIT
    if prevalence is None or not np.isfinite(prevalence):
        return float("nan")
    if metric == "ap":
        return float(prevalence)
    if metric == "f1max":
        return float(2 * prevalence / (1 + prevalence))
    return float("nan")


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
        self._neg: list[np.ndarray] = []  # one entry per image, in the order added
        self._pos: list[np.ndarray] = []
        self._region: list[np.ndarray] = []
        self._region_image: list[int] = []  # the image of each region
        self._n_regions = 0
        self._borrow = False  # True only inside pixel_metrics: its input outlives the accumulator
        self._ader_maps: list[np.ndarray] = []
        self._ader_masks: list[np.ndarray] = []
        self.replicates: dict[str, np.ndarray] = {}  # set by compute(resample=...)
        self.binning_offset: dict[str, float] = {}  # exact − binned on the full set, set with the replicates
        self.prevalence = float("nan")  # the fraction of anomalous pixels, set by compute()

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
            self._region_image += [len(self._neg)] * n
            self._neg.append(image[~mask])
            self._pos.append(image[mask])
            self._region.append(labels[box].astype(np.int32) + (self._n_regions - 1))
            self._n_regions += n

    def compute(self, resample: np.ndarray | None = None, bins: int = PIXEL_BINS) -> dict[str, float]:
        """Exact (or ADer-compatible) pixel auroc, ap, f1max and aupro over everything added.

        With ``resample`` ((B, images) counts, ``resample_counts``, one column per image in the order added),
        ``self.replicates`` gets each metric's B resampled values from per-image counts on ``bins`` common
        bins, centred on the exact value (see the module docstring), and ``self.binning_offset`` the shift."""
        if self.ader_compat:
            if not self._ader_maps:
                raise ValueError("PixelAccumulator.compute() called before any update()")
            maps, masks = np.concatenate(self._ader_maps), np.concatenate(self._ader_masks)
            exact = _ader_pixel(maps, masks)
            self.prevalence = float(masks.astype(bool).mean())
            if resample is not None:
                self.replicates, self.binning_offset = _centred(exact, _ader_histograms(maps, masks, bins), resample)
            return exact
        if not self._neg:
            raise ValueError("PixelAccumulator.compute() called before any update()")
        if not self._pos:
            raise ValueError("pixel metrics are undefined: no anomalous pixel in any mask")
        pos = np.concatenate(self._pos)
        region = np.concatenate(self._region)
        sizes = np.bincount(region, minlength=self._n_regions).astype(np.float64)
        weights = 1.0 / (sizes[region] * self._n_regions)
        neg = _sorted(self._neg)  # the per-image pieces stay for the resamples; the copy goes with this call
        self.prevalence = pos.size / (pos.size + neg.size)
        c = _curve(pos.astype(np.result_type(pos, neg), copy=False), neg, pos_weights=weights)
        exact = {"auroc": _auroc(c), "ap": _ap(c), "f1max": _f1max(c), "aupro": _aupro(c)}
        if resample is not None:
            resample = np.asarray(resample)
            if resample.ndim != 2 or resample.shape[1] != len(self._neg):
                raise ValueError(f"PixelAccumulator.compute: resample of shape {resample.shape}; expected "
                                 f"(replicates, {len(self._neg)}): one column per image added")
            hist = _histograms(self._neg, pos, region, np.asarray(self._region_image), _edges(neg, pos, bins))
            self.replicates, self.binning_offset = _centred(exact, hist, resample)
        return exact


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


def _ader_histograms(maps: np.ndarray, masks: np.ndarray, bins: int = PIXEL_BINS) -> PixelHistograms:
    """Per-image counts (``_histograms``) of ADer's 256 px maps, regions 8-connected as ADer labels them."""
    from scipy import ndimage

    g = masks.astype(bool)
    negatives, positives, region, region_image = [], [], [], []
    for i, (image, mask) in enumerate(zip(maps, g)):
        negatives.append(image[~mask])
        labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        if n:
            positives.append(image[mask])
            region.append(labels[mask] - 1 + len(region_image))
            region_image += [i] * n
    pos = np.concatenate(positives) if positives else np.zeros(0, np.float32)
    ids = np.concatenate(region) if region else np.zeros(0, np.int64)
    return _histograms(negatives, pos, ids, np.asarray(region_image, dtype=np.int64),
                       _edges(np.sort(maps[~g]), pos, bins))


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
