"""The ``ader`` protocol against a plain, slow re-implementation of ADer's evaluator (repro_spec §0.1).

The oracle below follows the formulas step by step with the libraries ADer itself uses: masks resized as 8-bit
PIL images (torchvision's ``Resize`` on ADer's ``L``-mode masks), ``ToTensor``'s division by 255, then > 0.5;
maps resized with PIL (float) to 256 x 256; scikit-learn's ``roc_auc_score`` / ``average_precision_score`` /
``precision_recall_curve``; pixel F1 at the 21 thresholds 0, 0.05, ..., 1 on the category's min-max normalised
maps; AU-PRO at 100 thresholds from the map minimum to the maximum with skimage regions, the points with
FPR < 0.3 kept and their FPRs rescaled to [0, 1]; image labels from the resized masks; metrics per category,
then averaged over categories. It is compared with ``engine.evaluate(..., protocol="ader")`` and with
``metrics.PixelAccumulator(ader_compat=True)`` on random maps and masks at several sizes.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from adlib import engine, metrics

sklearn_metrics = pytest.importorskip("sklearn.metrics")
measure = pytest.importorskip("skimage.measure")

SIZE = 256


# ------------------------------------------------------------------------------------------------ the oracle


def oracle_mask(mask: np.ndarray) -> np.ndarray:
    """ADer: the mask file as an 8-bit image, torchvision ``Resize((256, 256))`` (PIL bilinear), ``ToTensor``
    (/255), then the trainer's ``> 0.5``."""
    image = Image.fromarray((mask > 0).astype(np.uint8) * 255, mode="L")
    return (np.asarray(image.resize((SIZE, SIZE), Image.BILINEAR), dtype=np.float64) / 255.0) > 0.5


def oracle_map(amap: np.ndarray) -> np.ndarray:
    """Maps at another size are brought to 256 x 256 with PIL's bilinear filter on float images."""
    if amap.shape == (SIZE, SIZE):
        return amap.astype(np.float64)
    image = Image.fromarray(amap.astype(np.float32), mode="F")
    return np.asarray(image.resize((SIZE, SIZE), Image.BILINEAR), dtype=np.float64)


def oracle_f1_21(gt: np.ndarray, amaps: np.ndarray, eps: float = 1e-8) -> float:
    norm = (amaps - amaps.min()) / (amaps.max() - amaps.min())
    best = []
    for th in np.arange(0.0, 1.0 + 1e-3, 0.05):
        pred = norm > th
        inter = np.logical_and(gt, pred).sum()
        precision = inter / (pred.sum() + eps)
        recall = inter / (gt.sum() + eps)
        best.append(2 * precision * recall / (precision + recall + eps))
    return float(max(best))


def oracle_aupro(gt: np.ndarray, amaps: np.ndarray, steps: int = 100, expect_fpr: float = 0.3) -> float:
    masks = gt.astype(np.int64)
    binary = np.zeros_like(amaps, dtype=bool)
    lo, hi = amaps.min(), amaps.max()
    regions = [measure.regionprops(measure.label(mask)) for mask in masks]  # 8-connected, as skimage's default
    inverse = 1 - masks
    pros, fprs = [], []
    for th in np.arange(lo, hi, (hi - lo) / steps):
        binary[amaps <= th], binary[amaps > th] = 0, 1
        pro = []
        for b, image_regions in zip(binary, regions):
            for region in image_regions:
                pro.append(b[region.coords[:, 0], region.coords[:, 1]].sum() / region.area)
        fprs.append(np.logical_and(inverse, binary).sum() / inverse.sum())
        pros.append(np.mean(pro))
    pros, fprs = np.asarray(pros), np.asarray(fprs)
    keep = fprs < expect_fpr
    f = fprs[keep]
    f = (f - f.min()) / (f.max() - f.min())
    return float(sklearn_metrics.auc(f, pros[keep]))


def oracle_image(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    precision, recall, _ = sklearn_metrics.precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return {"auroc": float(sklearn_metrics.roc_auc_score(labels, scores)),
            "ap": float(sklearn_metrics.average_precision_score(labels, scores)),
            "f1max": float(np.max(f1[np.isfinite(f1)]))}


def oracle_category(maps: np.ndarray, masks: np.ndarray, scores: np.ndarray) -> dict[str, dict[str, float]]:
    amaps = np.stack([oracle_map(m) for m in maps])
    gt = np.stack([oracle_mask(m) for m in masks])
    labels = gt.reshape(len(gt), -1).max(axis=1).astype(int)
    pixel = {"auroc": float(sklearn_metrics.roc_auc_score(gt.ravel(), amaps.ravel())),
             "ap": float(sklearn_metrics.average_precision_score(gt.ravel(), amaps.ravel())),
             "f1max": oracle_f1_21(gt, amaps), "aupro": oracle_aupro(gt, amaps)}
    return {"image": oracle_image(labels, scores), "pixel": pixel, "labels": labels}


# --------------------------------------------------------------------------------------------- test data


def random_category(rng: np.random.Generator, n: int, size: int, scale: float, offset: float):
    """Maps (n, size, size) with a noisy response on random rectangular and elliptic defects, their masks, scores.
    Two defects are tiny (a pixel or two), so they may vanish when the mask is resized to 256 px."""
    maps = rng.normal(size=(n, size, size)).astype(np.float32)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n // 2, n):  # the second half is anomalous
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(size // 8, size - size // 8, 2)
            ry, rx = rng.integers(2, size // 6, 2)
            if rng.random() < 0.5:
                masks[i, cy - ry:cy + ry, cx - rx:cx + rx] = 1
            else:
                masks[i][((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1
        maps[i] += 1.5 * masks[i] * rng.random()
    masks[n - 1] = 0
    masks[n - 1, size // 3, size // 3] = 1  # a one-pixel defect
    masks[n - 2, size // 2, size // 2:size // 2 + 2] = 1  # a two-pixel defect on top of the others
    maps = maps * scale + offset
    scores = maps.reshape(n, -1).max(axis=1) + rng.normal(scale=0.5 * scale, size=n)
    return maps, masks, scores.astype(np.float32)


class ArrayDataset(torch.utils.data.Dataset):
    """Items the engine reads; the 'image' carries the map (channel 0) and the image score (channel 1)."""

    def __init__(self, maps, masks, scores, category):
        self.maps, self.masks, self.scores, self.category = maps, masks, scores, category

    def __len__(self):
        return len(self.maps)

    def __getitem__(self, i):
        image = torch.stack([torch.from_numpy(self.maps[i]), torch.full(self.maps[i].shape, float(self.scores[i])),
                             torch.zeros(self.maps[i].shape)])
        return {"image": image, "mask": torch.from_numpy(self.masks[i]).float()[None],
                "label": int(self.masks[i].any()), "path": f"{self.category}/{i}", "category": self.category}


class GivenMaps(torch.nn.Module):
    """A 'model' that returns the maps and scores its inputs carry."""

    def predict(self, images):
        return engine_prediction(images[:, 0], images[:, 1, 0, 0])


def engine_prediction(maps, scores):
    from adlib.models.base import Prediction

    return Prediction(maps, scores)


def close(ours: dict, reference: dict, tol: float, what: str) -> None:
    for key, expected in reference.items():
        assert ours[key] == pytest.approx(expected, abs=tol), f"{what} {key}: ours {ours[key]!r}, oracle {expected!r}"


# ------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("size", [256, 512, 200])
def test_engine_ader_protocol_matches_the_oracle(size):
    """Two categories with different map scales (the F1 normalisation and AU-PRO thresholds are per category),
    maps and masks at ``size``; per-category metrics, their means and mAD against the oracle."""
    rng = np.random.default_rng(size)
    data = {"a": random_category(rng, 4, size, scale=1.0, offset=0.0),
            "b": random_category(rng, 4, size, scale=40.0, offset=-7.0)}
    tests = {name: ArrayDataset(*arrays, name) for name, arrays in data.items()}
    result = engine.evaluate(GivenMaps(), tests, batch_size=4, protocol="ader", progress=False)
    assert result.protocol == "ader"
    means = {"image": [], "pixel": []}
    for name, arrays in data.items():
        reference = oracle_category(*arrays)
        ours = result.categories[name]
        close(ours.pixel, reference["pixel"], 1e-6, f"{name}@{size} pixel")
        close(ours.image, reference["image"], 1e-9, f"{name}@{size} image")
        for level in means:
            means[level].append(reference[level])
        got = result.labels[[c == name for c in result.image_categories]]
        assert got.tolist() == reference["labels"].tolist()
    for level in means:
        mean = {k: float(np.mean([m[k] for m in means[level]])) for k in means[level][0]}
        close(getattr(result, level), mean, 1e-6, f"mean@{size} {level}")
    expected_mad = np.mean([result.image[k] for k in ("auroc", "ap", "f1max")]
                           + [result.pixel[k] for k in ("auroc", "ap", "f1max", "aupro")])
    assert metrics.mad(result.image, result.pixel) == pytest.approx(expected_mad)


def test_tiny_defects_lose_their_label_after_the_resize():
    """ADer's image label is 1 when the *resized* mask has a positive pixel: a one-pixel defect at 512 px is gone
    at 256 px, so the ader protocol labels that image normal while the exact protocol keeps the folder label."""
    mask = np.zeros((1, 512, 512), dtype=np.uint8)
    mask[0, 100, 100] = 1
    assert not oracle_mask(mask[0]).any()
    ader = metrics.protocol("ader").image_labels(torch.tensor([1]), torch.from_numpy(mask).float())
    exact = metrics.protocol("exact").image_labels(torch.tensor([1]), torch.from_numpy(mask).float())
    assert ader.tolist() == [0] and exact.tolist() == [1]


@pytest.mark.parametrize("size", [512, 384])
def test_mask_edges_at_exactly_one_half_are_positive(size):
    """A 2x downscale puts mask edge pixels at exactly 0.5 (weights 1/8 + 3/8): ADer's 8-bit path rounds 127.5
    to 128, and 128 / 255 > 0.5, so they are positive. The accumulator must agree pixel for pixel."""
    rng = np.random.default_rng(1)
    masks = np.zeros((2, size, size), dtype=np.uint8)
    masks[0, 64:130, 40:202] = 1  # even edges: exact halves after a 2x downscale
    masks[1, 33:91, 17:60] = 1
    maps = rng.random((2, size, size)).astype(np.float32)
    _, resized = metrics._resize_for_ader(maps, masks.astype(bool))
    expected = np.stack([oracle_mask(m) for m in masks])
    assert (resized.astype(bool) == expected).all(), f"{int((resized.astype(bool) != expected).sum())} pixels differ"


def test_pixel_accumulator_streams_to_the_same_numbers():
    """``PixelAccumulator(ader_compat=True)`` fed batch by batch equals the oracle on the whole category."""
    rng = np.random.default_rng(7)
    maps, masks, scores = random_category(rng, 5, 300, scale=3.0, offset=1.0)
    acc = metrics.PixelAccumulator(ader_compat=True)
    for start in range(0, 5, 2):
        acc.update(torch.from_numpy(maps[start:start + 2]), torch.from_numpy(masks[start:start + 2]))
    close(acc.compute(), oracle_category(maps, masks, scores)["pixel"], 1e-6, "accumulator")


def test_the_oracle_is_not_the_exact_protocol():
    """The two protocols differ on the same maps (21-threshold F1 <= exact F1; AU-PRO by another rule), so the
    comparison above is not vacuous."""
    rng = np.random.default_rng(3)
    maps, masks, scores = random_category(rng, 4, SIZE, scale=1.0, offset=0.0)
    exact = metrics.pixel_metrics(maps, masks)
    reference = oracle_category(maps, masks, scores)["pixel"]
    assert reference["f1max"] <= exact["f1max"] + 1e-12
    assert abs(reference["aupro"] - exact["aupro"]) > 1e-4
    assert reference["auroc"] == pytest.approx(exact["auroc"], abs=1e-9)  # same maps, masks at 256 px
