"""`AnomalyDataset`: a torch Dataset over one category of a dataset in a supported folder layout."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .layout import DatasetError, LayoutSpec, Sample, category_dir, index_split, list_categories, resolve_layout
from .transforms import MASK_MODES, ResizeImage, ResizeMask, as_size


def _open(path: Path) -> Image.Image:
    try:
        with open(path, "rb") as handle:  # closed here; the decoded pixels stay in the image
            image = Image.open(handle)
            image.load()
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


def mask_array(mask: Image.Image) -> np.ndarray:
    """A mask image as a boolean (H, W) array: any channel above zero (masks come as 0/255 or 0/1)."""
    if mask.mode not in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
        mask = mask.convert("RGBA" if "A" in mask.mode else "RGB")
    array = np.asarray(mask)
    if array.ndim == 3:
        array = array[..., :3].max(axis=2)
    return array > 0


def load_mask(paths: Sequence[str | Path], size: tuple[int, int], image_path: str | Path = "") -> torch.Tensor:
    """The union (> 0) of mask files as float32 (1, H, W) in {0, 1}; all zero when `paths` is empty.

    `size` is the (H, W) of the image; a mask of another size is a DatasetError.
    """
    union = np.zeros(size, dtype=bool)
    for path in paths:
        array = mask_array(_open(Path(path)))
        if array.shape != tuple(size):
            raise DatasetError(f"mask {path} is {array.shape[1]}x{array.shape[0]} (WxH) but its image "
                               f"{image_path} is {size[1]}x{size[0]}; expected the same size")
        union |= array
    return torch.from_numpy(union.astype(np.float32))[None]


class AnomalyDataset(torch.utils.data.Dataset):
    """One category and split of a dataset folder.

    Items are dicts: image (3,H,W) float32 in [0,1], mask (1,H,W) float32 in {0,1}, label (0 good,
    1 anomalous), defect ("good" for normal images), group ("good", "defect", or the layout's group such
    as LOCO's "logical"/"structural"), category, path. `image_size` None keeps the native size;
    images are resized bilinearly with antialiasing, masks by `mask_interpolation` ("nearest", or
    "bilinear" then threshold 0.5). `layout` (a name in `LAYOUTS` or a `LayoutSpec`) is detected from
    the folder when None. `transform`, if given, is applied to each item dict last.
    """

    def __init__(self, root: str | Path, category: str, split: str = "train",
                 image_size: int | tuple[int, int] | None = None, mask_interpolation: str = "nearest",
                 layout: str | LayoutSpec | None = None,
                 transform: Callable[[dict], dict] | None = None) -> None:
        self.root = Path(root)
        self.category = category
        self.split = split
        self.category_dir = category_dir(self.root, category)
        self.layout = resolve_layout(self.category_dir, layout)
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
        mask = load_mask(sample.mask_paths, tuple(image.shape[-2:]), sample.image_path)
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
