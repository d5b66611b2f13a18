"""Folder layouts of anomaly detection datasets, indexing of their files, and Table-I-style statistics.

Every supported dataset is a folder of category folders. A `LayoutSpec` states, per dataset family,
what the normal folder is called and where a defective image's mask lives; code never branches on a
dataset's name. This module needs only the standard library, so `adlib data stats` starts fast.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class DatasetError(ValueError):
    """A dataset folder or file is missing, malformed or not what the layout expects."""


@dataclass(frozen=True)
class LayoutSpec:
    """How one family of datasets lays out a category folder.

    `mask_patterns` are tried in order for a defective image `<stem>.<ext>`; a pattern is relative to
    `<category>/ground_truth/<defect>/`. With `mask_is_folder`, the masks of an image are all image
    files inside `ground_truth/<defect>/<stem>/` and the image's mask is their union.
    `mask_encoding` says how a mask marks defects: "binary" (0 and one value, 255 or 1, else the mask is
    refused: a mask with other values is most likely resized or JPEG-compressed, and reading it as
    "defect wherever > 0" silently changes pixel metrics), or "nonzero" (defect wherever the value is
    above 0: MVTec LOCO stores a defect type's id as the pixel value). `mask_threshold` T, when set, replaces
    the encoding: defect wherever the value is above T (masks saved with antialiasing or as JPEG; a user's
    choice, ``AnomalyDataset(mask_threshold=T)`` / ``adlib run --mask-threshold T``, not a layout default).
    """

    name: str
    description: str
    good_dir: str = "good"
    mask_patterns: tuple[str, ...] = ("{stem}_mask.png",)
    mask_is_folder: bool = False
    splits: tuple[str, ...] = ("train", "test")
    defect_groups: tuple[tuple[str, str], ...] = ()  # (defect folder, group) pairs
    mask_encoding: str = "binary"  # "binary" or "nonzero" (see above)
    mask_threshold: float | None = None  # defect wherever the mask value is above it (see above)

    def __post_init__(self) -> None:
        if self.mask_encoding not in MASK_ENCODINGS:
            raise ValueError(f"layout {self.name!r}: mask_encoding={self.mask_encoding!r}, expected one of "
                             f"{MASK_ENCODINGS}")
        threshold = self.mask_threshold
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                      or not threshold >= 0):
            raise ValueError(f"mask_threshold={threshold!r}: expected a number >= 0 (defect wherever the mask "
                             "value is above it)")

    def matches(self, category_dir: Path) -> bool:
        """True when every split folder exists with a normal sub-folder where one is required."""
        if not (category_dir / "train" / self.good_dir).is_dir():
            return False
        return all((category_dir / split).is_dir() for split in self.splits)

    def expected(self) -> str:
        parts = [f"{split}/{self.good_dir}" if split != "test" else "test/<defect>" for split in self.splits]
        return f"{self.name} ({', '.join(parts)})"

    def marks(self, category_dir: Path) -> list[str]:
        """What in a category folder is this layout's own (not shared with the plain MVTec layout): masks in
        one folder per image (``mask_is_folder``), the test folders of its ``defect_groups``. A folder with
        such marks but a split missing is this layout, incomplete (``detect_layout`` says what is missing)."""
        found = []
        gt = category_dir / "ground_truth"
        if self.mask_is_folder and gt.is_dir() and any(_has_folder(defect) for defect in gt.iterdir() if defect.is_dir()):
            found.append("masks in one folder per image, ground_truth/<defect>/<image>/")
        groups = [name for name, _ in self.defect_groups if (category_dir / "test" / name).is_dir()]
        if groups:
            found.append(", ".join(f"test/{name}" for name in groups))
        return found

    def missing(self, category_dir: Path) -> list[str]:
        """The split folders (with their normal sub-folder) this layout needs that a category folder lacks."""
        needed = [f"{split}/{self.good_dir}" if split != "test" else "test" for split in self.splits]
        return [f"{need}/" for need in needed if not (category_dir / need).is_dir()]


def _has_folder(folder: Path) -> bool:
    with os.scandir(folder) as entries:  # the entries' types come with the listing: no stat per mask file
        return any(entry.is_dir() for entry in entries)


LAYOUTS: dict[str, LayoutSpec] = {}
MASK_ENCODINGS = ("binary", "nonzero")


def register_layout(spec: LayoutSpec) -> LayoutSpec:
    LAYOUTS[spec.name] = spec
    return spec


register_layout(LayoutSpec(
    name="mvtec",
    description="MVTec AD, DTD-Synthetic, converted VisA and the synthetic sets: "
                "ground_truth/<defect>/<stem>_mask.png",
))
register_layout(LayoutSpec(
    name="btad",
    description="BTAD (BTech): normal folder 'ok', masks ground_truth/<defect>/<stem>.png or .bmp",
    good_dir="ok",
    mask_patterns=("{stem}.png", "{stem}.bmp"),
))
register_layout(LayoutSpec(
    name="mvtec_loco",
    description="MVTec LOCO AD: validation/good, several masks per image in ground_truth/<defect>/<stem>/",
    mask_is_folder=True,
    splits=("train", "validation", "test"),
    defect_groups=(("logical_anomalies", "logical"), ("structural_anomalies", "structural")),
    mask_encoding="nonzero",  # defect pixels carry the defect type's value (e.g. 236-255), see defects_config.json
))


@dataclass(frozen=True)
class Sample:
    """One image of a split: where it is, its masks (empty for normal images) and its annotation."""

    image_path: Path
    mask_paths: tuple[Path, ...]
    label: int
    defect: str
    group: str


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def _is_category(folder: Path) -> bool:
    return folder.is_dir() and not folder.name.startswith(".") and (folder / "train").is_dir()


def list_categories(root: str | Path) -> list[str]:
    """Names of the category folders (those holding a `train` folder) of a dataset folder."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    categories = sorted(p.name for p in root.iterdir() if _is_category(p))
    if not categories:
        raise DatasetError(f"{root} holds no category folders: expected <category>/train/... sub-folders "
                           "(MVTec layout)")
    return categories


def category_dir(root: str | Path, category: str) -> Path:
    """The folder of `category` in `root`; DatasetError listing the known categories otherwise."""
    root = Path(root)
    known = list_categories(root)
    if category not in known:
        raise DatasetError(f"unknown category {category!r} in {root}; known categories: {', '.join(known)}")
    return root / category


def detect_layout(folder: str | Path) -> LayoutSpec:
    """The most specific registered layout that matches a category folder.

    A folder with the marks of a more specific layout (``LayoutSpec.marks``: e.g. MVTec LOCO's per-image mask
    folders) that lacks one of its splits is refused, naming what is missing, rather than read as another
    layout it happens to match."""
    folder = Path(folder)
    candidates = [spec for spec in LAYOUTS.values() if spec.matches(folder)]
    best = max(candidates, key=lambda spec: len(spec.splits)) if candidates else None
    for spec in LAYOUTS.values():
        if spec in candidates or (best is not None and len(spec.splits) <= len(best.splits)):
            continue
        marks = spec.marks(folder)
        if marks:
            raise DatasetError(f"{folder} has the marks of the {spec.name} layout ({'; '.join(marks)}) but no "
                               f"{' and no '.join(spec.missing(folder))}: expected {spec.expected()}; restore the "
                               "missing split (a copy of the dataset may have left it out)")
    if best is None:
        expected = "; ".join(spec.expected() for spec in LAYOUTS.values())
        raise DatasetError(f"{folder} matches no known dataset layout; expected one of: {expected}")
    return best


def resolve_layout(folder: Path, layout: str | LayoutSpec | None) -> LayoutSpec:
    if layout is None:
        return detect_layout(folder)
    if isinstance(layout, LayoutSpec):
        return layout
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; known layouts: {', '.join(LAYOUTS)}")
    return LAYOUTS[layout]


def _masks_for(spec: LayoutSpec, cat_dir: Path, defect: str, image: Path) -> tuple[Path, ...]:
    gt_dir = cat_dir / "ground_truth" / defect
    if spec.mask_is_folder:
        folder = gt_dir / image.stem
        masks = _images_in(folder) if folder.is_dir() else []
        if not masks:
            raise DatasetError(f"defective image {image} has no mask: expected mask images in {folder}/")
        return tuple(masks)
    candidates = [gt_dir / pattern.format(stem=image.stem) for pattern in spec.mask_patterns]
    for candidate in candidates:
        if candidate.is_file():
            return (candidate,)
    raise DatasetError(f"defective image {image} has no mask: expected one of "
                       f"{', '.join(str(c) for c in candidates)}")


def index_split(cat_dir: str | Path, split: str, layout: str | LayoutSpec | None = None,
                check_masks: bool = True) -> list[Sample]:
    """All samples of one split of a category folder, sorted by defect folder then file name."""
    cat_dir = Path(cat_dir)
    spec = resolve_layout(cat_dir, layout)
    if split not in spec.splits:
        raise DatasetError(f"split {split!r} is not part of layout {spec.name}; expected one of {spec.splits}")
    split_dir = cat_dir / split
    if not split_dir.is_dir():
        raise DatasetError(f"split folder {split_dir} does not exist (layout {spec.name})")
    if split == "test":
        defect_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    else:
        defect_dirs = [split_dir / spec.good_dir]
    samples = []
    for defect_dir in defect_dirs:
        normal = defect_dir.name == spec.good_dir
        defect = "good" if normal else defect_dir.name
        group = "good" if normal else dict(spec.defect_groups).get(defect, "defect")
        for image in _images_in(defect_dir) if defect_dir.is_dir() else []:
            masks: tuple[Path, ...] = ()
            if not normal and check_masks:
                masks = _masks_for(spec, cat_dir, defect, image)
            samples.append(Sample(image, masks, 0 if normal else 1, defect, group))
    return samples


def _dataset_folders(root: Path) -> list[Path]:
    """`root` itself when it holds categories, else its sub-folders that do."""
    if not root.is_dir():
        raise DatasetError(f"folder {root} does not exist")
    if any(_is_category(p) for p in root.iterdir()):
        return [root]
    datasets = sorted(p for p in root.iterdir() if p.is_dir() and any(_is_category(c) for c in p.iterdir()))
    if not datasets:
        raise DatasetError(f"{root} holds neither category folders (<category>/train/...) nor dataset folders "
                           "of them")
    return datasets


def dataset_stats(root: str | Path) -> list[dict]:
    """Table-I-style counts, one row per dataset and category.

    `root` is one dataset folder or a folder of dataset folders. Row keys: dataset, category, layout,
    train_normal, test_normal, test_abnormal, validation_normal (0 where the layout has no validation).
    """
    rows = []
    for dataset in _dataset_folders(Path(root)):
        for category in list_categories(dataset):
            cat = dataset / category
            spec = detect_layout(cat)
            test = index_split(cat, "test", spec, check_masks=False)
            validation = index_split(cat, "validation", spec, check_masks=False) if "validation" in spec.splits else []
            rows.append({
                "dataset": dataset.name,
                "category": category,
                "layout": spec.name,
                "train_normal": len(index_split(cat, "train", spec, check_masks=False)),
                "test_normal": sum(s.label == 0 for s in test),
                "test_abnormal": sum(s.label == 1 for s in test),
                "validation_normal": len(validation),
            })
    return rows


def stats_frame(root: str | Path):
    """`dataset_stats` as a pandas DataFrame (for notebooks)."""
    import pandas as pd

    return pd.DataFrame(dataset_stats(root))


def format_stats(rows: list[dict]) -> str:
    """A plain-text table of `dataset_stats` rows with a total line per dataset."""
    header = ("dataset", "category", "train normal", "test normal", "test abnormal", "validation")
    keys = ("train_normal", "test_normal", "test_abnormal", "validation_normal")
    lines = []
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    for name in datasets:
        subset = [row for row in rows if row["dataset"] == name]
        for row in subset:
            lines.append((name, row["category"], *(str(row[k]) for k in keys)))
        totals = [str(sum(row[k] for row in subset)) for k in keys]
        lines.append((name, f"total ({len(subset)} categories)", *totals))
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines)]

    def fmt(cells) -> str:  # two text columns left-aligned, counts right-aligned
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *(fmt(line) for line in lines)])


def replace_spec(spec: LayoutSpec, **changes) -> LayoutSpec:
    """A copy of a layout spec with some fields changed (e.g. other mask patterns)."""
    return dataclasses.replace(spec, **changes)
