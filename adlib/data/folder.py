"""`AnomalyDataset`: a torch Dataset over one category of a dataset in a supported folder layout."""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .layout import (DatasetError, LayoutSpec, Sample, category_dir, index_split, list_categories, replace_spec,
                     resolve_layout)
from .transforms import MASK_MODES, ResizeImage, ResizeMask, as_size


PIXEL_LIMIT_ENV = "ADLIB_MAX_IMAGE_PIXELS"


def max_image_pixels() -> int | None:
    """The largest image (width x height) read: ``$ADLIB_MAX_IMAGE_PIXELS`` (0: no limit), else the size above
    which Pillow refuses a file as a possible decompression bomb (2 x ``PIL.Image.MAX_IMAGE_PIXELS``)."""
    text = os.environ.get(PIXEL_LIMIT_ENV, "").strip()
    if text:
        try:
            value = int(float(text))
        except ValueError:
            raise DatasetError(f"{PIXEL_LIMIT_ENV}={text!r}: expected a number of pixels (0: no limit)") from None
        return value if value > 0 else None
    return 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None


_PIL_LIMIT = threading.Lock()


def _open_checked(handle, path: Path) -> Image.Image:
    """``PIL.Image.open`` of an open file, its size checked against ``max_image_pixels`` from the header before
    any pixel is decoded: an oversized file is a DatasetError naming it, its size, the limit and the way to
    raise it. Pillow's own check is lifted while the header is read (it would raise without saying the size)."""
    with _PIL_LIMIT:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            image = Image.open(handle)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    limit = max_image_pixels()
    width, height = image.size
    if limit is not None and width * height > limit:
        image.close()
        raise DatasetError(
            f"image {path} is {width}x{height} px ({width * height / 1e6:.1f} Mpx), above the limit of {limit} px "
            f"(Pillow's decompression-bomb guard); if the file is trusted, raise it: {PIXEL_LIMIT_ENV}={width * height} "
            "(0: no limit)")
    return image


def _open(path: Path) -> Image.Image:
    try:
        with open(path, "rb") as handle:  # closed here; the decoded pixels stay in the image
            image = _open_checked(handle, path)
            image.load()
    except DatasetError:
        raise
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DatasetError(f"cannot read image {path}: {error}; expected a readable PNG/JPEG/BMP/TIFF file") from error
    return image


def load_image(path: str | Path) -> torch.Tensor:
    """An image file as float32 (3, H, W) in [0, 1]: grayscale repeated, alpha composited over black."""
    image = _open(Path(path))
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32)
        array = array / (65535.0 if array.max() > 255 else 255.0)
        array = np.repeat(array[..., None], 3, axis=2)
    else:
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
            array = rgba[..., :3] * rgba[..., 3:4]
        else:
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def mask_array(mask: Image.Image, path: str | Path = "", encoding: str = "binary",
               threshold: float | None = None) -> np.ndarray:
    """A mask image as a boolean (H, W) array (the maximum over colour channels).

    ``encoding`` "binary": the mask must hold 0 and at most one other value (255, or 1, or the 16-bit
    maximum), else DatasetError names the file and the values found; "nonzero": defect wherever > 0
    (MVTec LOCO). See ``LayoutSpec.mask_encoding``. A ``threshold`` T replaces the encoding: defect wherever
    the value is above T, in the file's own values (0-255 for 8-bit masks; a 1-bit mask reads as 0 and 255),
    for masks saved with antialiasing or as JPEG (``LayoutSpec.mask_threshold``).
    """
    if mask.mode not in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
        mask = mask.convert("RGBA" if "A" in mask.mode else "RGB")
    if threshold is not None:
        array = np.asarray(mask.convert("L") if mask.mode == "1" else mask)
        return (array[..., :3].max(axis=2) if array.ndim == 3 else array) > threshold
    if encoding == "binary" and mask.mode == "L":  # the common case: PIL's histogram, no array pass
        _check_binary(np.flatnonzero(mask.histogram()), path)
        return np.asarray(mask) > 0
    array = np.asarray(mask)
    if array.ndim == 3:
        array = array[..., :3].max(axis=2)
    if encoding == "binary" and array.dtype != bool:
        _check_binary(np.unique(array), path)
    return array > 0


BINARY_VALUES = (1, 255, 65535)  # the one non-zero value a binary mask may use


def _check_binary(values: np.ndarray, path: str | Path) -> None:
    """DatasetError unless the sorted distinct ``values`` of a mask are 0 and at most one binary value."""
    nonzero = values[values != 0]
    if len(nonzero) <= 1 and (len(nonzero) == 0 or float(nonzero[0]) in BINARY_VALUES):
        return
    shown = ", ".join(str(v) for v in values[:12].tolist()) + (f", ... ({len(values)} values)" if len(values) > 12 else "")
    raise DatasetError(f"mask {path} is not binary: it holds the values {shown}; expected 0 and 255 (or 0 and 1). "
                       "A resized or JPEG-saved mask has such values: read it with a threshold, defect wherever the "
                       "value is above T (adlib run --mask-threshold T, e.g. 127; AnomalyDataset(mask_threshold=T)), "
                       "or re-save it with nearest-neighbour resizing")


def load_mask(paths: Sequence[str | Path], size: tuple[int, int], image_path: str | Path = "",
              encoding: str = "binary", threshold: float | None = None) -> torch.Tensor:
    """The union of mask files as float32 (1, H, W) in {0, 1}; all zero when `paths` is empty.

    `size` is the (H, W) of the image; a mask of another size is a DatasetError, and so is a non-binary
    mask when `encoding` is "binary" and no `threshold` is given (see ``mask_array``).
    """
    return torch.from_numpy(_mask_union(paths, size, image_path, encoding, threshold).astype(np.float32))[None]


def _mask_union(paths: Sequence[str | Path], size: tuple[int, int], image_path: str | Path,
                encoding: str, threshold: float | None = None) -> np.ndarray:
    union = np.zeros(size, dtype=bool)
    for path in paths:
        array = mask_array(_open(Path(path)), path, encoding, threshold)
        if array.shape != tuple(size):
            raise DatasetError(_size_message(path, array.shape, image_path, size))
        union |= array
    return union


def _size_message(path, shape, image_path, size) -> str:
    return (f"mask {path} is {shape[1]}x{shape[0]} (WxH) but its image {image_path} is {size[1]}x{size[0]}; "
            "expected the same size")


class AnomalyDataset(torch.utils.data.Dataset):
    """One category and split of a dataset folder.

    Items are dicts: image (3,H,W) float32 in [0,1], mask (1,H,W) float32 in {0,1}, label (0 good,
    1 anomalous), defect ("good" for normal images), group ("good", "defect", or the layout's group such
    as LOCO's "logical"/"structural"), category, path. `image_size` None keeps the native size;
    images are resized bilinearly with antialiasing, masks by `mask_interpolation` ("nearest", or
    "bilinear" then threshold 0.5). `layout` (a name in `LAYOUTS` or a `LayoutSpec`) is detected from
    the folder when None. `mask_threshold` T reads masks as "defect wherever the value is above T" instead of
    the layout's ``mask_encoding`` (for antialiased or JPEG-saved masks; ``self.layout.mask_threshold`` says
    it). `transform`, if given, is applied to each item dict last.
    """

    def __init__(self, root: str | Path, category: str, split: str = "train",
                 image_size: int | tuple[int, int] | None = None, mask_interpolation: str = "nearest",
                 layout: str | LayoutSpec | None = None,
                 transform: Callable[[dict], dict] | None = None, mask_threshold: float | None = None) -> None:
        self.root = Path(root)
        self.category = category
        self.split = split
        self.category_dir = category_dir(self.root, category)
        self.layout = resolve_layout(self.category_dir, layout)
        if mask_threshold is not None:
            self.layout = replace_spec(self.layout, mask_threshold=mask_threshold)
        self.samples: list[Sample] = index_split(self.category_dir, split, self.layout)
        if not self.samples:
            where = self.category_dir / split / (self.layout.good_dir if split != "test" else "")
            raise DatasetError(f"no images in {where}; expected image files "
                               f"({self.layout.name} layout)")
        if mask_interpolation not in MASK_MODES:
            raise ValueError(f"mask_interpolation must be one of {MASK_MODES}; got {mask_interpolation!r}")
        self.image_size = None if image_size is None else as_size(image_size)
        self.resize_image = ResizeImage(self.image_size) if self.image_size else None
        self.resize_mask = ResizeMask(self.image_size, mask_interpolation) if self.image_size else None
        self.transform = transform
        _note_read(self.category_dir, split)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    @property
    def defects(self) -> list[str]:
        return [s.defect for s in self.samples]

    @property
    def groups(self) -> list[str]:
        """Per sample: "good", "defect", or a layout's group (LOCO: "logical"/"structural")."""
        return [s.group for s in self.samples]

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = load_image(sample.image_path)
        mask = load_mask(sample.mask_paths, tuple(image.shape[-2:]), sample.image_path, self.layout.mask_encoding,
                         self.layout.mask_threshold)
        if self.resize_image is not None:
            image = self.resize_image(image)
            mask = self.resize_mask(mask)
        item = {"image": image, "mask": mask, "label": sample.label, "defect": sample.defect,
                "group": sample.group, "category": self.category, "path": str(sample.image_path)}
        return self.transform(item) if self.transform else item

    def __repr__(self) -> str:
        return (f"AnomalyDataset({self.category_dir}, split={self.split!r}, layout={self.layout.name!r}, "
                f"n={len(self)}, image_size={self.image_size})")


def category_datasets(root: str | Path, split: str = "train", categories: Sequence[str] | None = None,
                      **kwargs) -> dict[str, AnomalyDataset]:
    """One `AnomalyDataset` per category (all by default), e.g. for multi-class training:
    `torch.utils.data.ConcatDataset(category_datasets(root, "train", image_size=256).values())`."""
    names = list(categories) if categories is not None else list_categories(root)
    return {name: AnomalyDataset(root, name, split, **kwargs) for name in names}


# ------------------------------------------------------------------------------------------- split checks
CHECK_MODES = ("header", "verify", "full")


@dataclass
class SplitCheck:
    """What ``check_split`` found in one split: counts, and which metrics the split can give."""

    where: str
    images: int
    good: int
    anomalous: int
    defect_pixels: bool  # some mask marks a defect pixel
    normal_pixels: bool  # some pixel is not a defect (a good image, or outside a mask)
    mode: str
    seconds: float

    @property
    def image_metrics(self) -> bool:
        """Image AUROC / AP / F1 need good and anomalous images."""
        return self.good > 0 and self.anomalous > 0

    @property
    def pixel_metrics(self) -> bool:
        """Pixel metrics need a defect pixel and a normal one."""
        return self.defect_pixels and self.normal_pixels

    def statement(self) -> str:
        """One line: the counts and which metrics can be computed (and why not, for the others)."""
        head = f"{self.where}: {self.images} images ({self.good} good, {self.anomalous} anomalous)"
        if self.image_metrics and self.pixel_metrics:
            return f"{head}: image and pixel metrics can be computed"
        reasons = []
        if not self.image_metrics:
            only = "anomalous" if self.anomalous else "good"
            reasons.append(f"image metrics cannot be computed (only {only} images)")
        if not self.pixel_metrics:
            reasons.append("pixel metrics cannot be computed (" + (
                "no mask marks a defect pixel" if not self.defect_pixels else "every pixel is a defect") + ")")
        can = [level for level, ok in (("image", self.image_metrics), ("pixel", self.pixel_metrics)) if ok]
        tail = f"; {' and '.join(can)} metrics can" if can else "; no metric can be computed"
        return f"{head}: {'; '.join(reasons)}{tail}"


def _probe_image(path: Path, mode: str) -> tuple[int, int]:
    """(H, W) of an image file, raising DatasetError when it cannot be read at the depth ``mode`` asks."""
    try:
        with open(path, "rb") as handle, _open_checked(handle, path) as image:
            size = (image.height, image.width)
            if mode == "full":
                image.load()
            elif mode == "verify":
                if image.format == "PNG":
                    image.verify()  # every chunk's CRC: catches truncated and damaged files without inflating
                elif image.format == "JPEG":
                    image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                    image.load()  # the whole entropy-coded stream, decoded at 1/8 scale
                else:
                    image.load()
    except DatasetError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        raise DatasetError(f"cannot read image {path}: {error}; expected a readable PNG/JPEG/BMP/TIFF file") from None
    return size


def check_split(dataset: "AnomalyDataset", mode: str = "verify", max_problems: int = 10) -> SplitCheck:
    """Check a (test) split before any training: every image readable, every mask readable, of its image's
    size and binary (per the layout's ``mask_encoding``, unless it reads masks with a ``mask_threshold``);
    report which metrics the split can give.

    ``mode``: "header" reads image headers only (sizes); "verify" (default) also checks each PNG's chunk
    checksums and decodes each JPEG at 1/8 scale, which finds truncated and damaged files at a small
    fraction of a full decode; "full" decodes every image. Masks are always decoded (their values are
    checked). Raises DatasetError listing up to ``max_problems`` problems; a split with one class only,
    or without defect pixels, is not an error: ``SplitCheck.statement()`` says which metrics are left.
    """
    import time

    if mode not in CHECK_MODES:
        raise ValueError(f"check_split: mode={mode!r}, expected one of {CHECK_MODES}")
    start = time.perf_counter()
    problems: list[str] = []
    defect_pixels = normal_pixels = False
    for sample in dataset.samples:
        try:
            size = _probe_image(Path(sample.image_path), mode)
            if sample.label == 0:
                normal_pixels = True
            marked = int(np.count_nonzero(_mask_union(sample.mask_paths, size, sample.image_path,
                                                      dataset.layout.mask_encoding, dataset.layout.mask_threshold)))
            defect_pixels |= marked > 0
            normal_pixels |= marked < size[0] * size[1]
        except DatasetError as error:
            problems.append(str(error))
            if len(problems) >= max_problems:
                break
    where = f"{dataset.category_dir.name} {dataset.split}"
    if problems:
        more = " (stopped at the first {max_problems})".format(max_problems=max_problems) \
            if len(problems) >= max_problems else ""
        raise DatasetError(f"{where} split of {dataset.category_dir}: {len(problems)} problem(s){more}: "
                           + "; ".join(problems))
    labels = dataset.labels
    return SplitCheck(where=where, images=len(labels), good=labels.count(0), anomalous=labels.count(1),
                      defect_pixels=defect_pixels, normal_pixels=normal_pixels, mode=mode,
                      seconds=time.perf_counter() - start)


# ------------------------------------------------------------------------------------------- data sources read
# Category folders read in this process (an AnomalyDataset was made on them), for run records: which data a
# result came from, as a content fingerprint that is the same on every machine holding the same files.
_READ: dict[Path, set[str]] = {}
_FINGERPRINTS: dict[Path, dict] = {}
SAMPLE_FILES = 32  # files whose bytes enter a fingerprint (evenly spaced in the sorted listing)
SAMPLE_BYTES = 1 << 22  # at most this many bytes of each sampled file


def _note_read(category_dir: Path, split: str) -> None:
    _READ.setdefault(Path(category_dir).resolve(), set()).add(split)


def content_fingerprint(folder: str | Path, sample_files: int = SAMPLE_FILES, sample_bytes: int = SAMPLE_BYTES) -> dict:
    """A portable fingerprint of a folder's content: sha256 over the sorted relative file list with sizes,
    then the first ``sample_bytes`` of ``sample_files`` files taken evenly from that list. No absolute path,
    time or owner enters it, so a copy on another machine gives the same value; hidden files are left out.
    Returns {"sha256", "files", "bytes", "sampled_files"}."""
    import hashlib
    import os

    folder = Path(folder)
    files = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith("."):
                path = Path(dirpath, name)
                files.append((path.relative_to(folder).as_posix(), path.stat().st_size))
    files.sort()
    digest = hashlib.sha256()
    for rel, size in files:
        digest.update(f"{rel}\t{size}\n".encode())
    step = max(1, -(-len(files) // max(1, sample_files)))
    sample = files[::step]
    for rel, _ in sample:
        with open(folder / rel, "rb") as handle:
            digest.update(f"\0{rel}\0".encode())
            digest.update(handle.read(sample_bytes))
    return {"sha256": digest.hexdigest(), "files": len(files), "bytes": sum(size for _, size in files),
            "sampled_files": len(sample)}


def data_sources_read() -> dict[str, dict]:
    """Per category folder read in this process ("<dataset folder>/<category>"): the splits read and the
    folder's ``content_fingerprint`` (computed once per process)."""
    out: dict[str, dict] = {}
    for folder, splits in sorted(_READ.items()):
        if folder not in _FINGERPRINTS:
            try:
                _FINGERPRINTS[folder] = content_fingerprint(folder)
            except OSError as error:
                _FINGERPRINTS[folder] = {"error": f"{type(error).__name__}: {error.strerror or error}"}
        name = f"{folder.parent.name}/{folder.name}"
        key, n = name, 2
        while key in out:  # two folders of the same name in different places
            key, n = f"{name} ({n})", n + 1
        out[key] = {"splits": sorted(splits), **_FINGERPRINTS[folder]}
    return out
