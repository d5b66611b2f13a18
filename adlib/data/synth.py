"""The embedded synthetic benchmark: procedural textures and objects with exactly masked defects.

Written in the real on-disk layouts (MVTec, MVTec LOCO) so every reader code path is exercised.
Deterministic: every image draws from its own numpy Generator seeded by (seed, dataset, category,
split, index), and PNGs are written by Pillow with fixed settings, so the same seed and size give
byte-identical files. Only numpy and Pillow are needed.

Datasets (folder names): `synthetic_ad` (3 textures + 2 objects), `synthetic_hr` (high resolution,
defects a few pixels wide at 1024 px), `synthetic_multi` (4 categories for multi-class training) and
`synthetic_loco` (logical anomalies in the MVTec LOCO layout).
"""
from __future__ import annotations

import copy
import functools
import json
import multiprocessing
import os
import shutil
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

GENERATOR_VERSION = 6  # 5: synthetic_loco rules tie parts in different places (counts, colour pairs, one
# direction), so no compartment alone shows a logical anomaly; anomaly_kinds.json per category. 6: synthetic_loco
# has twice the images (120 train, 20 validation, 40 normal test, 8 test images per kind of anomaly): with 4 per
# kind, PatchCore's logical AUROC was 41.9 on the old test set and 56.1 on a larger one, too noisy to decide a claim
STAMP_NAME = "STAMP.json"
DATASETS = ("synthetic_ad", "synthetic_hr", "synthetic_multi", "synthetic_loco")


# ----------------------------------------------------------------------------------------------- noise
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy + 0.5, xx + 0.5


@functools.lru_cache(maxsize=64)
def _gain(size: int, sigma: float) -> np.ndarray:
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    return np.exp(-2.0 * (np.pi * sigma) ** 2 * (fy ** 2 + fx ** 2)).astype(np.float32)


def smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise (filter width `sigma` px), zero mean, unit std."""
    white = rng.standard_normal((size, size), dtype=np.float32)
    out = np.fft.irfft2(np.fft.rfft2(white) * _gain(size, float(sigma)), s=(size, size)).astype(np.float32)
    return (out - out.mean()) / (out.std() + 1e-8)


def fractal_noise(rng: np.random.Generator, size: int, sigmas=(32, 12, 4), weights=(0.6, 0.3, 0.1)) -> np.ndarray:
    scale = size / 256.0
    return sum(w * smooth_noise(rng, size, s * scale) for s, w in zip(sigmas, weights))


def _rotate(yy, xx, cy, cx, angle):
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    return c * dx + s * dy, -s * dx + c * dy  # (u along the object axis, v across)


def _coverage(sdf: np.ndarray) -> np.ndarray:
    """Antialiased coverage from a signed distance in pixels (negative inside)."""
    return np.clip(0.5 - sdf, 0.0, 1.0)


def _composite(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    img *= (1.0 - alpha)[..., None]
    img += alpha[..., None] * colour


# -------------------------------------------------------------------------------------------- textures
def weave(rng, size, style):
    yy, xx = _grid(size)
    period = style.get("period", 16) * size / 256
    angle = np.deg2rad(rng.uniform(-2, 2))
    u, v = _rotate(yy, xx, size / 2 + rng.uniform(0, period), size / 2 + rng.uniform(0, period), angle)
    u = u + 0.08 * period * smooth_noise(rng, size, 6 * size / 256)
    v = v + 0.08 * period * smooth_noise(rng, size, 6 * size / 256)
    parity = (np.floor(u / period) + np.floor(v / period)) % 2
    over = np.where(parity == 0, np.cos(np.pi * (v / period % 1 - 0.5)), np.cos(np.pi * (u / period % 1 - 0.5)))
    value = 0.55 + 0.35 * over ** 0.7 + 0.04 * smooth_noise(rng, size, 0.7) + 0.05 * fractal_noise(rng, size)
    return np.clip(value[..., None] * np.array(style["colour"], np.float32), 0, 1)


def wood(rng, size, style):
    yy, xx = _grid(size)
    period = style.get("period", 22) * size / 256
    u, v = _rotate(yy, xx, 0, rng.uniform(0, period), np.deg2rad(rng.uniform(-4, 4)))
    warp = 2.5 * period * fractal_noise(rng, size, (64, 24), (0.8, 0.2))
    rings = np.sin(2 * np.pi * (v + warp) / period)
    streaks = smooth_noise(rng, size, 1.0 * size / 256)
    value = 0.62 + 0.13 * rings + 0.05 * streaks + 0.05 * smooth_noise(rng, size, 40 * size / 256)
    return np.clip(value[..., None] * np.array(style["colour"], np.float32), 0, 1)


SPECKLES = ((0.4, 0.3, 0.2), (0.2, 0.2, 0.2), (0.5, 0.45, 0.3))  # benign grains, near the contaminant colours


def stone(rng, size, style):
    base = np.array(style["colour"], np.float32)
    tint = fractal_noise(rng, size)[..., None] * np.array([0.07, 0.06, 0.05], np.float32)
    img = np.clip(base + tint + 0.025 * smooth_noise(rng, size, 0.8)[..., None], 0, 1)
    yy, xx = _grid(size)
    for _ in range(int(style.get("speckles", 50) * (size / 256) ** 2)):
        cy, cx = rng.uniform(0, size, 2)
        r = rng.uniform(0.8, 3.0) * size / 256
        colour = base * rng.uniform(0.2, 0.9) if rng.random() < 0.7 else np.array(SPECKLES[rng.integers(3)], np.float32)
        y0, y1, x0, x1 = int(max(cy - r - 2, 0)), int(min(cy + r + 2, size)), int(max(cx - r - 2, 0)), int(min(cx + r + 2, size))
        d = np.hypot(yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx) - r
        _composite(img[y0:y1, x0:x1], _coverage(d) * 0.8, colour)
    return img


# --------------------------------------------------------------------------------------------- objects
def _background(rng, size, level):
    yy, xx = _grid(size)
    g = rng.uniform(-0.04, 0.04)
    value = level + g * (xx / size - 0.5) + 0.015 * smooth_noise(rng, size, 0.8) + 0.02 * fractal_noise(rng, size)
    return np.repeat(value[..., None], 3, axis=2).astype(np.float32)


def washer(rng, size, style):
    """A metal ring with a notch; jittered position, rotation and size. Returns image, object mask, background."""
    yy, xx = _grid(size)
    bg = _background(rng, size, style.get("background", 0.18))
    cy, cx = size * (0.5 + rng.uniform(-0.03, 0.03, 2))
    r_out = size * style.get("radius", 0.33) * rng.uniform(0.98, 1.02)
    r_in = r_out * 0.45
    theta = np.deg2rad(style.get("notch", 90) + rng.uniform(-12, 12))
    r = np.hypot(yy - cy, xx - cx)
    ring = np.maximum(r - r_out, r_in - r)
    u, v = _rotate(yy, xx, cy, cx, theta)
    notch = np.maximum(np.abs(v) - 0.06 * r_out, r_out * 0.8 - u)  # box cut into the outer edge
    sdf = np.maximum(ring, -notch)
    phi = np.arctan2(yy - cy, xx - cx)
    shade = 0.75 + 0.18 * np.cos(phi - 0.8) + 0.06 * smooth_noise(rng, size, 1.5 * size / 256) \
        + 0.04 * smooth_noise(rng, size, 12 * size / 256)
    colour = shade[..., None] * np.array(style["colour"], np.float32)
    img = bg.copy()
    _composite(img, _coverage(sdf), colour)
    return np.clip(img, 0, 1), sdf < 0, bg


def capsule(rng, size, style):
    """A two-tone capsule with a printed mark; jittered position and rotation."""
    yy, xx = _grid(size)
    bg = _background(rng, size, style.get("background", 0.82))
    cy, cx = size * (0.5 + rng.uniform(-0.03, 0.03, 2))
    angle = np.deg2rad(rng.uniform(-8, 8))
    half, radius = size * 0.3, size * style.get("radius", 0.13)
    u, v = _rotate(yy, xx, cy, cx, angle)
    sdf = np.hypot(np.maximum(np.abs(u) - half, 0), v) - radius
    across = np.clip(1 - (v / radius) ** 2, 0, 1)
    shade = 0.7 + 0.3 * np.sqrt(across) + 0.03 * smooth_noise(rng, size, 1.2 * size / 256)
    colour = np.where((u < 0)[..., None], np.array(style["colour_a"], np.float32), np.array(style["colour_b"], np.float32))
    img = bg.copy()
    _composite(img, _coverage(sdf), shade[..., None] * colour)
    for k in range(3):  # printed mark on the right half
        mark = np.maximum(np.abs(u - half * (0.35 + 0.2 * k)) - 0.025 * size, np.abs(v) - 0.05 * size)
        _composite(img, _coverage(mark) * 0.85, np.array([0.15, 0.15, 0.18], np.float32))
    return np.clip(img, 0, 1), sdf < 0, bg


# --------------------------------------------------------------------------------------------- defects
def _region_point(rng, allowed: np.ndarray | None, size: int, margin: float) -> tuple[float, float]:
    if allowed is not None and allowed.any():
        ys, xs = np.nonzero(allowed)
        i = rng.integers(len(ys))
        return float(ys[i]) + 0.5, float(xs[i]) + 0.5
    return tuple(rng.uniform(margin, size - margin, 2))


def _blob(rng, size, cy, cx, radius):
    yy, xx = _grid(size)
    wobble = smooth_noise(rng, size, max(radius / 2, 1.0))
    return np.hypot(yy - cy, xx - cx) / radius + 0.3 * wobble < 1.0


def _draw_lines(size, lines, width):
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for points in lines:
        draw.line([(float(x), float(y)) for y, x in points], fill=255, width=int(width), joint="curve")
    return np.asarray(canvas) > 0


def scratch(rng, img, allowed, scale, bg):
    size = img.shape[0]
    length = size * scale * rng.uniform(0.15, 0.35)
    cy, cx = _region_point(rng, allowed, size, length / 2)
    a = rng.uniform(0, np.pi)
    bend = rng.uniform(-0.25, 0.25) * length
    t = np.linspace(-0.5, 0.5, 9)
    pts = [(cy + s * length * np.sin(a) + bend * (1 - 4 * s * s) * np.cos(a),
            cx + s * length * np.cos(a) - bend * (1 - 4 * s * s) * np.sin(a)) for s in t]
    mask = _draw_lines(size, [pts], max(1, round(size * scale * 0.008)))
    if allowed is not None:
        mask &= allowed
    target = 0.95 if rng.random() < 0.5 else 0.1
    strength = rng.uniform(0.3, 0.65)
    img[mask] += strength * (target - img[mask])
    return mask


def spot(rng, img, allowed, scale, bg):
    size = img.shape[0]
    radius = max(1.0, size * scale * rng.uniform(0.015, 0.04))
    cy, cx = _region_point(rng, allowed, size, radius)
    mask = _blob(rng, size, cy, cx, radius)
    colour = np.array(rng.choice([[0.35, 0.22, 0.1], [0.1, 0.1, 0.1], [0.45, 0.5, 0.2], [0.6, 0.1, 0.1]]), np.float32)
    alpha = rng.uniform(0.35, 0.8)
    img[mask] = (1 - alpha) * img[mask] + alpha * colour
    return mask


def crack(rng, img, allowed, scale, bg):
    size = img.shape[0]
    step = size * scale * 0.02
    cy, cx = _region_point(rng, allowed, size, step * 6)
    lines, heading = [], rng.uniform(0, 2 * np.pi)
    for branch in range(2):
        pts, y, x = [(cy, cx)], cy, cx
        h = heading + branch * np.pi + rng.uniform(-0.5, 0.5)
        for _ in range(int(rng.integers(6, 12))):
            h += rng.uniform(-0.6, 0.6)
            y, x = y + step * np.sin(h), x + step * np.cos(h)
            pts.append((y, x))
        lines.append(pts)
    mask = _draw_lines(size, lines, max(1, round(size * scale * 0.006)))
    if allowed is not None:
        mask &= allowed
    img[mask] *= rng.uniform(0.35, 0.65)
    return mask


def missing(rng, img, allowed, scale, bg):
    """A bite out of the object's edge: the background shows through."""
    size = img.shape[0]
    edge = allowed & ~np.roll(allowed, 3, axis=0) | allowed & ~np.roll(allowed, 3, axis=1)
    cy, cx = _region_point(rng, edge, size, 0)
    mask = _blob(rng, size, cy, cx, max(1.5, size * scale * rng.uniform(0.04, 0.08))) & allowed
    img[mask] = bg[mask]
    return mask


def colour_shift(rng, img, allowed, scale, bg):
    size = img.shape[0]
    radius = max(2.0, size * scale * rng.uniform(0.04, 0.08))
    cy, cx = _region_point(rng, allowed, size, radius)
    mask = _blob(rng, size, cy, cx, radius)
    if allowed is not None:
        mask &= allowed
    tint = np.array(rng.choice([[1.22, 0.88, 0.85], [0.85, 1.15, 0.88], [0.85, 0.92, 1.25]]), np.float32)
    tint = 1 + rng.uniform(0.5, 1.0) * (tint - 1)
    img[mask] = np.clip(img[mask] * tint + 0.05 * (tint - 1), 0, 1)
    return mask


DEFECTS: dict[str, Callable] = {"scratch": scratch, "spot": spot, "crack": crack, "missing": missing,
                                "colour": colour_shift}


def _apply_defect(name, rng, img, allowed, scale, bg) -> np.ndarray:
    """Apply a defect; draw again while clipping to the allowed region left nothing of it."""
    if allowed is not None and not allowed.any():
        allowed = np.ones(img.shape[:2], bool)
    for _ in range(10):
        mask = DEFECTS[name](rng, img, allowed, scale, bg)
        if mask.any():
            return mask
    raise RuntimeError(f"defect {name!r} could not be placed")


# ------------------------------------------------------------------------------------------ categories
@dataclass(frozen=True)
class CategorySpec:
    render: Callable
    style: dict
    defects: tuple[str, ...]
    is_object: bool


TEXTURE_DEFECTS = ("scratch", "spot", "crack", "colour")
OBJECT_DEFECTS = ("scratch", "spot", "missing", "colour")

AD_CATEGORIES = {
    "weave": CategorySpec(weave, {"colour": (0.82, 0.74, 0.56)}, TEXTURE_DEFECTS, False),
    "wood": CategorySpec(wood, {"colour": (0.78, 0.52, 0.3)}, TEXTURE_DEFECTS, False),
    "stone": CategorySpec(stone, {"colour": (0.55, 0.58, 0.52)}, TEXTURE_DEFECTS, False),
    "washer": CategorySpec(washer, {"colour": (0.8, 0.8, 0.82)}, OBJECT_DEFECTS, True),
    "capsule": CategorySpec(capsule, {"colour_a": (0.75, 0.16, 0.12), "colour_b": (0.92, 0.88, 0.78)}, OBJECT_DEFECTS, True),
}
MULTI_CATEGORIES = {
    "mesh": CategorySpec(weave, {"colour": (0.55, 0.62, 0.75), "period": 10}, TEXTURE_DEFECTS, False),
    "marble": CategorySpec(stone, {"colour": (0.78, 0.66, 0.64), "speckles": 25}, TEXTURE_DEFECTS, False),
    "nut": CategorySpec(washer, {"colour": (0.85, 0.7, 0.35), "radius": 0.28, "notch": 0, "background": 0.3}, OBJECT_DEFECTS, True),
    "pill": CategorySpec(capsule, {"colour_a": (0.2, 0.35, 0.75), "colour_b": (0.95, 0.95, 0.95), "radius": 0.11}, OBJECT_DEFECTS, True),
}
HR_CATEGORIES = {"weave": AD_CATEGORIES["weave"], "washer": AD_CATEGORIES["washer"]}


@dataclass(frozen=True)
class SynthSet:
    categories: dict
    n_train: int
    n_test_good: int
    n_per_defect: int
    defect_scale: float = 1.0
    hr: bool = False


SETS = {
    "synthetic_ad": SynthSet(AD_CATEGORIES, 40, 10, 5),
    "synthetic_hr": SynthSet(HR_CATEGORIES, 24, 6, 3, defect_scale=0.12, hr=True),
    "synthetic_multi": SynthSet(MULTI_CATEGORIES, 30, 8, 4),
}


# ----------------------------------------------------------------------------------------------- writing
def _rng(seed: int, *keys) -> np.random.Generator:
    words = [int(seed)] + [zlib.crc32(str(k).encode()) for k in keys]
    return np.random.default_rng(np.random.SeedSequence(words))


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.dtype == bool:
        data = array.astype(np.uint8) * 255
    else:
        data = np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)
    Image.fromarray(data).save(path, format="PNG", compress_level=1, optimize=False)


def _render_normal(spec: CategorySpec, rng, size):
    out = spec.render(rng, size, spec.style)
    if spec.is_object:
        return out
    return out, None, None


def write_mvtec_category(out: Path, name: str, spec: CategorySpec, synth: SynthSet, seed: int, size: int, dataset: str) -> None:
    cat = out / name
    for split, folder, count in (("train", cat / "train" / "good", synth.n_train),
                                 ("test", cat / "test" / "good", synth.n_test_good)):
        for i in range(count):
            img, _, _ = _render_normal(spec, _rng(seed, dataset, name, split, i), size)
            _save_png(img, folder / f"{i:03d}.png")
    for defect in spec.defects:
        for i in range(synth.n_per_defect):
            rng = _rng(seed, dataset, name, defect, i)
            img, allowed, bg = _render_normal(spec, rng, size)
            mask = _apply_defect(defect, rng, img, allowed, synth.defect_scale, bg)
            _save_png(img, cat / "test" / defect / f"{i:03d}.png")
            _save_png(mask, cat / "ground_truth" / defect / f"{i:03d}_mask.png")


# ---------------------------------------------------------------------------------------- LOCO scenes
# Logical anomalies are global: every part in the image is a normal part (its shape and colour occur in
# normal images); what is wrong is how many there are, where they are, or which combination they form.
# Structural anomalies damage a part or the tray locally (scratch, stain, a bite out of a part, a tint).
@dataclass
class Item:
    shape: str            # "disc", "square" or "pin"
    cy: float
    cx: float
    size: float
    angle: float
    colour: tuple


def _item_sdf(item: Item, yy, xx):
    u, v = _rotate(yy, xx, item.cy, item.cx, item.angle)
    if item.shape == "disc":
        return np.hypot(u, v) - item.size
    if item.shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - item.size
    rod = np.hypot(np.maximum(np.abs(u) - item.size, 0), v) - item.size * 0.12
    head = np.hypot(u - item.size, v) - item.size * 0.3
    return np.minimum(rod, head)


def _render_scene(rng, size, background, items, walls):
    yy, xx = _grid(size)
    img = _background(rng, size, background)
    for wall in walls:  # (y0, x0, y1, x1) as fractions
        y0, x0, y1, x1 = (np.array(wall) * size)
        box = np.maximum(np.maximum(y0 - yy, yy - y1), np.maximum(x0 - xx, xx - x1))
        _composite(img, _coverage(box), np.array([0.45, 0.42, 0.38], np.float32))
    grain = 0.03 * smooth_noise(rng, size, 1.0)
    for item in items:
        sdf = _item_sdf(item, yy, xx)
        shade = 0.85 + 0.15 * np.clip(-sdf / item.size, 0, 1) + grain
        _composite(img, _coverage(sdf), shade[..., None] * np.array(item.colour, np.float32))
    return np.clip(img, 0, 1)


def _footprint(item: Item, size: int, grow: float = 1.0) -> np.ndarray:
    yy, xx = _grid(size)
    return _item_sdf(item, yy, xx) < grow


ORANGE, YELLOW, BLUE, GREEN = (0.95, 0.55, 0.12), (0.93, 0.82, 0.2), (0.2, 0.35, 0.8), (0.2, 0.62, 0.3)
SILVER, GOLD = (0.78, 0.78, 0.8), (0.88, 0.68, 0.22)
# Every rule below ties parts that lie apart: a local neighbourhood of a logical anomaly (a compartment with
# two parts, with three, a green square, a pin at some angle) also occurs in normal images, and only the
# comparison with another part of the image shows what is wrong. Parts lie anywhere in their compartment (no
# fixed slots), so an empty or a crowded stretch of a compartment is normal too.
TRAY_LEFT, TRAY_RIGHT = (0.06, 0.06, 0.94, 0.5), (0.06, 0.52, 0.94, 0.96)  # (y0, x0, y1, x1) inside the walls
DISC, SQUARE = 0.075, 0.065  # radius, half side (fractions of the image side)
REACH = 0.085  # the farthest a part reaches from its centre (a square rotated by 15 degrees), plus a margin
TRAY_COUNTS = (2, 3)  # parts per compartment in a normal tray: the same number on both sides
TRAY_PAIRS = ((ORANGE, BLUE), (YELLOW, GREEN))  # (disc colour, square colour) of a normal tray


def _free_spot(rng, size, box, taken, reach=REACH, gap=0.03) -> tuple[float, float]:
    """A centre (pixels) inside ``box`` (fractions) at least 2 * reach + gap from every centre in ``taken``."""
    y0, x0, y1, x1 = box
    for _ in range(1000):
        cy, cx = rng.uniform(y0 + reach, y1 - reach), rng.uniform(x0 + reach, x1 - reach)
        if all(np.hypot(cy - ty / size, cx - tx / size) >= 2 * reach + gap for ty, tx in taken):
            return cy * size, cx * size
    raise RuntimeError("no free spot for a part (the compartment is full)")


def _tray_part(rng, size, shape, box, items, colour) -> Item:
    cy, cx = _free_spot(rng, size, box, [(i.cy, i.cx) for i in items])
    if shape == "disc":
        return Item("disc", cy, cx, DISC * size, 0.0, colour)
    return Item("square", cy, cx, SQUARE * size, np.deg2rad(rng.uniform(-15, 15)), colour)


def _tray_items(rng, size, count=None, pair=None):
    """``count`` discs anywhere on the left and as many squares on the right (2 or 3, per image), in one of the
    two colour pairs (orange discs with blue squares, yellow discs with green squares)."""
    count = int(rng.choice(TRAY_COUNTS)) if count is None else count
    discs, squares = TRAY_PAIRS[int(rng.integers(2))] if pair is None else pair
    items: list[Item] = []
    for _ in range(count):
        items.append(_tray_part(rng, size, "disc", TRAY_LEFT, items, discs))
    for _ in range(count):
        items.append(_tray_part(rng, size, "square", TRAY_RIGHT, items, squares))
    return items


def _tray_scene(rng, size, items):
    walls = [(0.04, 0.5, 0.96, 0.52), (0.04, 0.04, 0.06, 0.96), (0.94, 0.04, 0.96, 0.96)]
    return _render_scene(rng, size, 0.8, items, walls)


def _tray_logical(rng, size, kind):
    """A normal tray made wrong as a whole; returns the items and the masks of what is wrong.

    Each side on its own is a normal side (two or three parts of a normal colour); the two sides disagree."""
    if kind == "missing":  # three parts a side, one taken away: three on one side, two on the other
        items = _tray_items(rng, size, count=3)
        gone = items[int(rng.integers(len(items)))]
        items.remove(gone)
        return items, [_footprint(gone, size, grow=0.02 * size)]
    if kind == "extra":  # two parts a side and one more on one side
        items = _tray_items(rng, size, count=2)
        discs, squares = items[0].colour, items[-1].colour
        extra = (_tray_part(rng, size, "disc", TRAY_LEFT, items, discs) if rng.random() < 0.5 else
                 _tray_part(rng, size, "square", TRAY_RIGHT, items, squares))
        return items + [extra], [_footprint(extra, size)]
    if kind == "mixed":  # one square of the other pair's colour: both colours are normal, a mix is not
        items = _tray_items(rng, size)
        squares = [i for i in items if i.shape == "square"]
        odd = squares[int(rng.integers(len(squares)))]
        odd.colour = GREEN if odd.colour == BLUE else BLUE
        return items, [_footprint(odd, size)]
    if kind == "unpaired":  # the discs of one pair with the squares of the other
        k = int(rng.integers(2))
        items = _tray_items(rng, size, pair=(TRAY_PAIRS[k][0], TRAY_PAIRS[1 - k][1]))
        return items, [_footprint(i, size) for i in items if i.shape == "square"]
    raise ValueError(f"tray: unknown logical anomaly {kind!r}")


PIN_ROWS, PIN_COLS = ((0.03, 0.49), (0.51, 0.97)), ((0.03, 0.33), (0.35, 0.65), (0.67, 0.97))
PIN = 0.065  # half the rod length (fractions of the image side)
PIN_COUNTS = (1, 2)  # pins per compartment in a normal box: the same number in all six
PIN_JITTER = 10.0  # degrees: the pins of a normal box point the same way, give or take this
PIN_TURN = (60.0, 120.0)  # degrees: how far the odd pin of a "turned" box is turned


def _pin_cells():
    """The six compartments (y0, x0, y1, x1) inside the walls, row by row."""
    return [(y0, x0, y1, x1) for y0, y1 in PIN_ROWS for x0, x1 in PIN_COLS]


def _slots(cell, count):
    """``cell`` cut into ``count`` equal stretches from top to bottom: one pin lies in each (so two pins never
    touch, whichever way they point)."""
    y0, x0, y1, x1 = cell
    step = (y1 - y0) / count
    return [(y0 + k * step, x0, y0 + (k + 1) * step, x1) for k in range(count)]


def _pin(rng, size, slot, colour, angle) -> Item:
    """A pin anywhere in ``slot`` (its whole length inside) pointing at ``angle``, give or take the jitter."""
    cy, cx = _free_spot(rng, size, slot, [], reach=1.35 * PIN)
    return Item("pin", cy, cx, PIN * size, angle + np.deg2rad(rng.uniform(-PIN_JITTER, PIN_JITTER)), colour)


def _pins_items(rng, size, count=None, cells=None):
    """``count`` pins (1 or 2, per image) in each of six compartments, all of one colour (silver or gold, per
    image) and pointing one way (per image); ``cells`` gives another count to some compartments."""
    count = int(rng.choice(PIN_COUNTS)) if count is None else count
    colour = SILVER if rng.random() < 0.5 else GOLD
    angle = rng.uniform(0, 2 * np.pi)
    items: list[Item] = []
    for k, cell in enumerate(_pin_cells()):
        n = (cells or {}).get(k, count)
        items += [_pin(rng, size, slot, colour, angle) for slot in _slots(cell, n)]
    return items


def _pins_scene(rng, size, items):
    walls = [(0.49, 0.03, 0.51, 0.97), (0.03, 0.33, 0.97, 0.35), (0.03, 0.65, 0.97, 0.67)]
    return _render_scene(rng, size, 0.3, items, walls)


def _pins_logical(rng, size, kind):
    """A normal box made wrong as a whole: each compartment on its own is a normal compartment."""
    k = int(rng.integers(6))
    if kind == "missing":  # two pins a compartment, one compartment with one
        items = _pins_items(rng, size, count=2)
        gone = items.pop(2 * k + int(rng.integers(2)))
        return items, [_footprint(gone, size, grow=0.02 * size)]
    if kind == "extra":  # one pin a compartment, one compartment with two (the mask: the lower of the two)
        items = _pins_items(rng, size, count=1, cells={k: 2})
        return items, [_footprint(items[k + 1], size)]
    items = _pins_items(rng, size)
    odd = items[int(rng.integers(len(items)))]
    if kind == "mixed":  # one pin of the other colour: both colours are normal, a mix is not
        odd.colour = GOLD if odd.colour == SILVER else SILVER
        return items, [_footprint(odd, size)]
    if kind == "turned":  # one pin pointing another way: every direction is normal, a disagreement is not
        odd.angle += np.deg2rad(rng.uniform(*PIN_TURN)) * (1 if rng.random() < 0.5 else -1)
        return items, [_footprint(odd, size)]
    raise ValueError(f"pins: unknown logical anomaly {kind!r}")


@dataclass(frozen=True)
class LocoCategory:
    items: Callable
    scene: Callable
    logical: Callable
    logical_kinds: tuple[str, ...]


LOCO_CATEGORIES = {
    "tray": LocoCategory(_tray_items, _tray_scene, _tray_logical, ("missing", "extra", "mixed", "unpaired")),
    "pins": LocoCategory(_pins_items, _pins_scene, _pins_logical, ("missing", "extra", "mixed", "turned")),
}
# DEFECTS: a bite out of a part, a stain at a part, a scratch or crack anywhere on the tray
LOCO_STRUCTURAL = ("scratch", "spot", "missing", "crack")
LOCO_DEFECT_SCALE = 2.0  # larger than synthetic_ad's 1.0: the parts are small and the grid is 24 x 24
# images per category: a third of MVTec LOCO's training images (351-372) and about a quarter of its test images
# (for the CPU budget); the first images of each split do not depend on the counts
LOCO_COUNTS = {"train": 120, "validation": 20, "test_good": 40, "per_logical": 8, "per_structural": 8}


def _structural(spec: LocoCategory, rng, size, defect):
    """A normal scene with one local defect (a bite or stain at a part, a scratch or crack on the tray); the
    mask is exact."""
    items = spec.items(rng, size)
    clean = copy.deepcopy(rng)  # the same draws without the parts give the bare tray (what a bite reveals)
    img = spec.scene(rng, size, items)
    bare = spec.scene(clean, size, [])
    if defect in ("scratch", "crack"):
        yy, xx = _grid(size)
        allowed = (np.minimum(yy, xx) > 0.08 * size) & (np.maximum(yy, xx) < 0.92 * size)
    else:
        grow = -1.0 if defect == "missing" else 0.03 * size
        allowed = np.logical_or.reduce([_footprint(item, size, grow=grow) for item in items])
    return img, _apply_defect(defect, rng, img, allowed, LOCO_DEFECT_SCALE, bare)


KINDS_FILE = "anomaly_kinds.json"  # per category: test image (relative to test/) -> the kind of anomaly it shows


def write_loco_category(out: Path, name: str, spec: LocoCategory, seed: int, size: int) -> None:
    """One category in the MVTec LOCO layout, plus ``anomaly_kinds.json`` naming each anomalous test image's kind
    (which rule a logical anomaly breaks, which defect a structural one has) for per-kind evaluations."""
    cat = out / name
    for split, folder, count in (("train", cat / "train" / "good", LOCO_COUNTS["train"]),
                                 ("validation", cat / "validation" / "good", LOCO_COUNTS["validation"]),
                                 ("test", cat / "test" / "good", LOCO_COUNTS["test_good"])):
        for i in range(count):
            rng = _rng(seed, "synthetic_loco", name, split, i)
            _save_png(spec.scene(rng, size, spec.items(rng, size)), folder / f"{i:03d}.png")
    kinds = {}
    index = 0
    for kind in spec.logical_kinds:
        for _ in range(LOCO_COUNTS["per_logical"]):
            rng = _rng(seed, "synthetic_loco", name, "logical", index)
            items, masks = spec.logical(rng, size, kind)
            _save_png(spec.scene(rng, size, items), cat / "test" / "logical_anomalies" / f"{index:03d}.png")
            for m, mask in enumerate(masks):
                _save_png(mask, cat / "ground_truth" / "logical_anomalies" / f"{index:03d}" / f"{m:03d}.png")
            kinds[f"logical_anomalies/{index:03d}.png"] = kind
            index += 1
    index = 0
    for defect in LOCO_STRUCTURAL:
        for _ in range(LOCO_COUNTS["per_structural"]):
            rng = _rng(seed, "synthetic_loco", name, "structural", index)
            img, mask = _structural(spec, rng, size, defect)
            _save_png(img, cat / "test" / "structural_anomalies" / f"{index:03d}.png")
            _save_png(mask, cat / "ground_truth" / "structural_anomalies" / f"{index:03d}" / "000.png")
            kinds[f"structural_anomalies/{index:03d}.png"] = defect
            index += 1
    (cat / KINDS_FILE).write_text(json.dumps(kinds, indent=1, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------ entry points
def _write_job(out: str, dataset: str, name: str, seed: int, size: int, hr_size: int) -> None:
    if dataset == "synthetic_loco":
        write_loco_category(Path(out) / dataset, name, LOCO_CATEGORIES[name], seed, size)
        return
    synth = SETS[dataset]
    px = hr_size if synth.hr else size
    write_mvtec_category(Path(out) / dataset, name, synth.categories[name], synth, seed, px, dataset)



@dataclass(frozen=True)
class SynthConfig:
    """What a generation depends on; recorded in the stamp file."""

    seed: int = 0
    size: int = 256
    hr_size: int = 512
    datasets: tuple[str, ...] = DATASETS
    version: int = GENERATOR_VERSION

    def stamp(self) -> dict:
        data = asdict(self)
        data["datasets"] = list(self.datasets)
        return data


def generate(out: str | Path, seed: int = 0, size: int = 256, hr_size: int | None = None,
             datasets: tuple[str, ...] | list[str] = DATASETS, workers: int | None = None) -> Path:
    """Write the synthetic datasets into `out` (created; existing files are overwritten) and a stamp file.

    `size` is the side of synthetic_ad, synthetic_multi and synthetic_loco images; `hr_size` that of
    synthetic_hr (default 2 * size; 1024 is supported), whose defects scale with it. Categories are
    written by `workers` processes (default: all cores); the files do not depend on it.
    """
    config = SynthConfig(int(seed), int(size), int(hr_size or 2 * size), tuple(datasets))
    unknown = sorted(set(config.datasets) - set(DATASETS))
    if unknown:
        raise ValueError(f"unknown synthetic dataset(s) {unknown}; known: {', '.join(DATASETS)}")
    if config.size < 32 or config.hr_size < 32:
        raise ValueError(f"size and hr_size must be at least 32 px; got {config.size}, {config.hr_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), dataset, name, config.seed, config.size, config.hr_size)
            for dataset in config.datasets
            for name in (LOCO_CATEGORIES if dataset == "synthetic_loco" else SETS[dataset].categories)]
    workers = max(1, min(workers if workers is not None else (os.cpu_count() or 1), len(jobs)))
    if workers == 1 or multiprocessing.current_process().daemon:  # daemonic processes cannot fork workers
        for job in jobs:
            _write_job(*job)
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_write_job, *zip(*jobs)))
    (out / STAMP_NAME).write_text(json.dumps(config.stamp(), indent=2, sort_keys=True) + "\n")
    return out


def cache_dir() -> Path:
    return Path(os.environ.get("ADLIB_CACHE") or Path.home() / ".cache" / "adlib")


def _stamp_matches(folder: Path, config: SynthConfig) -> bool:
    try:
        return json.loads((folder / STAMP_NAME).read_text()) == config.stamp()
    except (OSError, ValueError):
        return False


def synthetic_root(seed: int = 0, size: int = 256, hr_size: int | None = None) -> Path:
    """The folder holding the synthetic dataset folders, generated on first use.

    Lives in `$ADLIB_CACHE/synthetic/seed<seed>-<size>px` (ADLIB_CACHE defaults to ~/.cache/adlib). A stamp
    records generator version, seed and sizes; a stale or half-written folder is regenerated. Generation
    writes into a temporary sibling folder that is renamed into place, so an interruption leaves nothing
    half-written.
    """
    config = SynthConfig(int(seed), int(size), int(hr_size or 2 * size), DATASETS)
    parent = cache_dir() / "synthetic"
    target = parent / f"seed{config.seed}-{config.size}px" if config.hr_size == 2 * config.size else \
        parent / f"seed{config.seed}-{config.size}px-hr{config.hr_size}"
    if _stamp_matches(target, config):
        return target
    parent.mkdir(parents=True, exist_ok=True)
    for leftover in parent.glob(f".{target.name}.*"):  # from generations killed over an hour ago
        if time.time() - leftover.stat().st_mtime > 3600:
            shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    try:
        generate(tmp, config.seed, config.size, config.hr_size, config.datasets)
        os.chmod(tmp, 0o755)  # mkdtemp made it private
        stale = None
        if target.exists():
            if _stamp_matches(target, config):  # another process finished first
                return target
            stale = parent / f".{target.name}.stale-{os.getpid()}-{time.time_ns()}"
            os.replace(target, stale)
        os.replace(tmp, target)  # right after moving the old one away: readers miss the folder only briefly
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
    except OSError:
        if _stamp_matches(target, config):
            return target
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
