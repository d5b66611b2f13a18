"""adlib.metrics against scikit-learn and a slow, obviously correct AU-PRO threshold sweep."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from adlib.metrics import (
    MAD_KEYS,
    ader_image_scores,
    summary,
    ImageAccumulator,
    PixelAccumulator,
    dataset_average,
    image_metrics,
    mad,
    pixel_metrics,
)

TOL = 1e-6


def sklearn_metrics(scores, labels):
    scores, labels = np.ravel(scores), np.ravel(labels).astype(int)
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return {
        "auroc": roc_auc_score(labels, scores),
        "ap": average_precision_score(labels, scores),
        "f1max": float(np.max(f1[np.isfinite(f1)])),
    }


def reference_aupro(maps, masks, fpr_limit=0.3, structure=np.ones((3, 3))):
    """Every distinct threshold, binarise, label the ground truth, measure each region's overlap."""
    maps, masks = np.asarray(maps, dtype=np.float64), np.asarray(masks, dtype=bool)
    regions = []
    for i, mask in enumerate(masks):
        labels, n = ndimage.label(mask, structure=structure)
        regions += [(i, labels == r) for r in range(1, n + 1)]
    negatives = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        predicted = maps >= t
        fprs.append((predicted & negatives).sum() / negatives.sum())
        pros.append(np.mean([predicted[i][region].mean() for i, region in regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs <= fpr_limit
    x, y = list(fprs[keep]), list(pros[keep])
    if x[-1] < fpr_limit and keep.sum() < fprs.size:
        j = keep.sum()
        x0, x1, y0, y1 = fprs[j - 1], fprs[j], pros[j - 1], pros[j]
        x.append(fpr_limit)
        y.append(y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0))
    return float(np.trapezoid(y, x) / fpr_limit)


def blob_masks(rng, n, size, defective=0.6):
    """Masks with several regions of varied size (some touching diagonally), some images without any."""
    masks = np.zeros((n, size, size), dtype=bool)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        if rng.random() > defective:
            continue
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, size, 2)
            r = rng.uniform(0.5, size / 6)
            masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    masks[0, 1, 1] = masks[0, 2, 2] = True  # diagonal neighbours: one region with 8-connectivity
    return masks


def smooth_maps(rng, masks, noise=0.6):
    maps = ndimage.gaussian_filter(rng.normal(size=masks.shape), sigma=(0, 2, 2)) * noise
    return (maps + ndimage.gaussian_filter(masks.astype(float), sigma=(0, 1.5, 1.5))).astype(np.float32)


# ---------------------------------------------------------------------------------------- image level


@pytest.mark.parametrize("case", ["random", "ties", "constant", "single_positive", "integers", "float32"])
def test_image_metrics_match_sklearn(case):
    rng = np.random.default_rng(hash(case) % 2**32)
    for _ in range(30):
        n = int(rng.integers(2, 400))
        labels = rng.random(n) < rng.uniform(0.05, 0.95)
        scores = {
            "random": rng.normal(size=n),
            "ties": rng.integers(0, 5, n) / 4.0,
            "constant": np.full(n, 0.25),
            "single_positive": rng.random(n),
            "integers": rng.integers(-3, 3, n),
            "float32": rng.random(n).astype(np.float32),
        }[case]
        if case == "single_positive":
            labels[:] = False
            labels[rng.integers(n)] = True
        labels[0], labels[-1] = True, False
        ours, theirs = image_metrics(scores, labels), sklearn_metrics(scores, labels)
        for key in ("auroc", "ap", "f1max"):
            assert ours[key] == pytest.approx(theirs[key], abs=TOL), (case, key)


def test_image_metrics_adversarial_orders():
    labels = np.array([1, 0, 1, 0, 0, 1])
    perfect = image_metrics(labels * 2.0, labels)
    assert perfect == {"auroc": 1.0, "ap": 1.0, "f1max": 1.0}
    inverted = image_metrics(-labels.astype(float), labels)
    assert inverted["auroc"] == 0.0
    constant = image_metrics(np.zeros(6), labels)
    assert constant["auroc"] == 0.5 and constant["ap"] == pytest.approx(0.5)


def test_image_accumulator_and_tensors():
    rng = np.random.default_rng(3)
    scores, labels = rng.random(101), rng.random(101) < 0.4
    acc = ImageAccumulator()
    for part in np.array_split(np.arange(101), 4):
        acc.update(torch.from_numpy(scores[part]), torch.from_numpy(labels[part]))
    assert acc.compute() == pytest.approx(image_metrics(scores, labels), abs=1e-12)
    assert image_metrics(scores, labels) == pytest.approx(sklearn_metrics(scores, labels), abs=TOL)


# ---------------------------------------------------------------------------------------- pixel level


def check_pixels(maps, masks, structure=np.ones((3, 3)), connectivity=8):
    ours = pixel_metrics(maps, masks, connectivity=connectivity)
    theirs = sklearn_metrics(maps, masks)
    for key in ("auroc", "ap", "f1max"):
        assert ours[key] == pytest.approx(theirs[key], abs=TOL), key
    assert ours["aupro"] == pytest.approx(reference_aupro(maps, masks, structure=structure), abs=TOL)
    return ours


def test_pixel_metrics_random_regions():
    rng = np.random.default_rng(2)
    masks = blob_masks(rng, 6, 24)
    regions = [ndimage.label(m, structure=np.ones((3, 3)))[1] for m in masks]
    assert 0 in regions and max(regions) >= 2  # images without regions and with several
    check_pixels(smooth_maps(rng, masks), masks)


def test_pixel_metrics_heavy_ties_and_quantized_maps():
    rng = np.random.default_rng(1)
    masks = blob_masks(rng, 5, 20)
    maps = np.round(smooth_maps(rng, masks) * 4) / 4  # a handful of levels shared by both classes
    check_pixels(maps, masks)
    check_pixels(maps.astype(np.int64), masks)  # integer-valued scores


def test_pixel_metrics_constant_map_and_single_positive_pixel():
    masks = np.zeros((3, 10, 10), dtype=bool)
    masks[1, 4, 4] = True
    ours = check_pixels(np.zeros((3, 10, 10), dtype=np.float32), masks)
    assert ours["auroc"] == 0.5
    rng = np.random.default_rng(2)
    check_pixels(rng.random((3, 10, 10)), masks)


def test_pixel_metrics_four_connectivity():
    rng = np.random.default_rng(4)
    masks = blob_masks(rng, 4, 16)
    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    maps = smooth_maps(rng, masks)
    four = check_pixels(maps, masks, structure=cross, connectivity=4)
    eight = pixel_metrics(maps, masks)
    assert four["auroc"] == eight["auroc"]
    assert four["aupro"] != eight["aupro"]  # the diagonal pair is two regions with 4-connectivity


def test_pixel_metrics_larger_set_with_extreme_outlier():
    """Tens of thousands of pixels, and a 1e30 outlier among the negatives."""
    rng = np.random.default_rng(5)
    masks = blob_masks(rng, 8, 96)
    maps = smooth_maps(rng, masks)
    theirs = sklearn_metrics(maps, masks)
    for variant in (maps, np.where(np.arange(maps.size).reshape(maps.shape) == 7, 1e30, maps)):
        ours = pixel_metrics(variant, masks)
        theirs = sklearn_metrics(variant, masks)
        for key in ("auroc", "ap", "f1max"):
            assert ours[key] == pytest.approx(theirs[key], abs=TOL), key


def test_pixel_accumulator_batches_equal_one_shot_and_accepts_tensors():
    rng = np.random.default_rng(6)
    masks = blob_masks(rng, 7, 32)
    maps = smooth_maps(rng, masks)
    acc = PixelAccumulator()
    for part in np.array_split(np.arange(7), 3):
        acc.update(torch.from_numpy(maps[part])[:, None], torch.from_numpy(masks[part]).float()[:, None])
    assert acc.compute() == pytest.approx(pixel_metrics(maps, masks), abs=1e-12)
    assert pixel_metrics(torch.from_numpy(maps), torch.from_numpy(masks)) == pixel_metrics(maps, masks)


def test_pixel_accumulator_mixed_precision():
    """float32 and float64 batches, and an image without negatives, change nothing."""
    rng = np.random.default_rng(10)
    masks = blob_masks(rng, 6, 32)
    masks[5] = True  # an image that is all anomaly: no negatives from it
    maps = smooth_maps(rng, masks)
    expected = pixel_metrics(maps.astype(np.float64), masks)
    acc = PixelAccumulator()
    acc.update(maps[:2], masks[:2])
    acc.update(maps[2:4].astype(np.float64), masks[2:4])
    acc.update(maps[4:], masks[4:])
    assert acc.compute() == pytest.approx(expected, abs=1e-12)
    assert pixel_metrics(maps, masks) == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------------------------------ bad input


def test_degenerate_inputs_raise_clear_errors():
    maps = np.random.default_rng(7).random((2, 8, 8)).astype(np.float32)
    masks = np.zeros((2, 8, 8), dtype=bool)
    with pytest.raises(ValueError, match="no anomalous pixel"):
        pixel_metrics(maps, masks)
    with pytest.raises(ValueError, match="positive and 0 negative"):
        pixel_metrics(maps, ~masks)
    with pytest.raises(ValueError, match="both classes"):
        image_metrics([0.1, 0.2], [0, 0])
    masks[0, 2, 2] = True
    bad = maps.copy()
    bad[1, 3, 3] = np.nan
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"maps: 2 non-finite values \(1 NaN, 1 inf\)"):
        pixel_metrics(bad, masks)
    with pytest.raises(ValueError, match="scores: 1 non-finite"):
        image_metrics([0.1, np.nan], [0, 1])
    with pytest.raises(ValueError, match=r"maps \(2, 8, 8\), masks \(2, 8, 9\)"):
        pixel_metrics(maps, np.zeros((2, 8, 9)))
    with pytest.raises(ValueError, match=r"maps \(2, 8, 8\), masks \(2, 4, 4\)"):
        PixelAccumulator().update(maps, np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match=r"masks: must be binary.*0.5"):
        pixel_metrics(maps, masks * 0.5)
    with pytest.raises(ValueError, match="labels: must be binary"):
        image_metrics([0.1, 0.2, 0.3], [0, 1, 2])
    with pytest.raises(ValueError, match="connectivity"):
        PixelAccumulator(connectivity=6)
    with pytest.raises(ValueError, match="before any update"):
        PixelAccumulator().compute()


# --------------------------------------------------------------------------------------- ADer, mAD


def ader_by_the_letter(maps, masks, steps=100):
    """ADer's util/metric.py formulas written out directly (mF1_max_px and cal_pro_score)."""
    norm = (maps - maps.min()) / (maps.max() - maps.min())
    f1s = []
    for score in np.arange(0.0, 1.0 + 1e-3, 0.05):
        pr = norm > score
        inter, pred, lab = np.logical_and(masks, pr).sum(), pr.sum(), masks.sum()
        p, r = inter / (pred + 1e-8), inter / (lab + 1e-8)
        f1s.append(2 * p * r / (p + r + 1e-8))
    pros, fprs = [], []
    lo, hi = maps.min(), maps.max()
    for th in np.arange(lo, hi, (hi - lo) / steps):
        binary = maps > th
        pro = []
        for b, m in zip(binary, masks):
            labels, n = ndimage.label(m, structure=np.ones((3, 3)))
            pro += [b[labels == r].sum() / (labels == r).sum() for r in range(1, n + 1)]
        pros.append(np.mean(pro))
        fprs.append(np.logical_and(~masks, binary).sum() / (~masks).sum())
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < 0.3
    f = (fprs[keep] - fprs[keep].min()) / (fprs[keep].max() - fprs[keep].min())
    return max(f1s), -np.trapezoid(pros[keep], f)


def test_ader_compat_mirrors_ader_at_256():
    rng = np.random.default_rng(8)
    masks = blob_masks(rng, 2, 256, defective=1.0)
    maps = smooth_maps(rng, masks)
    ours = pixel_metrics(maps, masks, ader_compat=True)
    exact = pixel_metrics(maps, masks)
    assert ours["auroc"] == pytest.approx(exact["auroc"], abs=1e-12)
    assert ours["ap"] == pytest.approx(exact["ap"], abs=1e-12)
    f1, aupro = ader_by_the_letter(maps, masks)
    assert ours["f1max"] == pytest.approx(f1, abs=1e-9)
    assert ours["aupro"] == pytest.approx(aupro, abs=1e-9)
    assert abs(ours["aupro"] - exact["aupro"]) > 1e-4  # ADer rescales FPR instead of dividing by 0.3


def test_ader_compat_resizes_to_256():
    rng = np.random.default_rng(9)
    masks = blob_masks(rng, 2, 512, defective=1.0)
    maps = smooth_maps(rng, masks)
    ader = pixel_metrics(maps, masks, ader_compat=True)
    exact = pixel_metrics(maps, masks)
    assert ader["auroc"] == pytest.approx(exact["auroc"], abs=0.02)
    assert ader["auroc"] != exact["auroc"]


def test_mad_and_dataset_average():
    image = {"auroc": 0.9, "ap": 0.8, "f1max": 0.7}
    pixel = {"auroc": 0.6, "ap": 0.5, "f1max": 0.4, "aupro": 0.3}
    assert mad(image, pixel) == pytest.approx(4.2 / 7)
    avg = dataset_average({"a": {"x": 1.0, "y": 2.0}, "b": {"x": 3.0}})
    assert avg == {"x": 2.0}
    with pytest.raises(ValueError):
        dataset_average({})


def test_summary_and_ader_image_scores():
    image = {"auroc": 1.0, "ap": 1.0, "f1max": 1.0}
    pixel = {"auroc": 0.5, "ap": 0.5, "f1max": 0.5, "aupro": 0.5}
    row = summary(image, pixel)
    assert set(row) == set(MAD_KEYS) | {"mad"} and row["mad"] == pytest.approx(5 / 7)
    maps = np.zeros((2, 512, 512), dtype=np.float32)
    maps[1, 100:140, 100:140] = 1.0
    maps[0, 7, 7] = 1.0  # a lone hot pixel: kept by the max, averaged away by 16x16 pooling
    plain, pooled = ader_image_scores(maps), ader_image_scores(maps, pooling_ks=16)
    assert plain[1] == pytest.approx(1.0) and plain[0] > 0.1
    assert pooled[1] == pytest.approx(1.0) and pooled[0] < 0.01


def test_accumulators_copy_what_they_keep():
    """A caller that reuses its batch buffers must not change the result."""
    rng = np.random.default_rng(11)
    masks = blob_masks(rng, 4, 16)
    masks[1] = False
    maps = smooth_maps(rng, masks)
    expected_pixels, expected_images = pixel_metrics(maps, masks), image_metrics(maps.max(axis=(1, 2)), [1, 0, 1, 0])
    pixel_acc, image_acc = PixelAccumulator(), ImageAccumulator()
    buffer, scores = torch.from_numpy(maps.copy()), torch.from_numpy(maps.max(axis=(1, 2)))
    pixel_acc.update(buffer, torch.from_numpy(masks))
    image_acc.update(scores, torch.tensor([True, False, True, False]))
    buffer.zero_()
    scores.zero_()
    assert pixel_acc.compute() == expected_pixels
    assert image_acc.compute() == expected_images
