"""Convert VisA (as extracted from VisA_20220922.tar) into the MVTec layout using split_csv/1cls.csv.

Normal images go to `<object>/{train,test}/good/`, anomalous ones to `<object>/test/bad/` with masks
binarized (> 0 becomes 255) at `<object>/ground_truth/bad/<stem>_mask.png`. Image files are copied
byte for byte.
"""
from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from .layout import DatasetError

COLUMNS = ("object", "split", "label", "image", "mask")
LABELS = {"normal": "good", "anomaly": "bad"}


def _binary_mask(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as mask:
            array = np.asarray(mask if mask.mode in ("1", "L", "I", "I;16") else mask.convert("RGB"))
    except OSError as error:
        raise DatasetError(f"cannot read VisA mask {path}: {error}") from error
    if array.ndim == 3:
        array = array.max(axis=2)
    return array > 0


def convert_visa(src: str | Path, out: str | Path, csv_name: str = "split_csv/1cls.csv") -> dict[str, dict[str, int]]:
    """Convert the VisA tree in `src` into MVTec-layout category folders in `out` (must not exist or be empty).

    Returns counts per object: {"train_good", "test_good", "test_bad"}. Writes into a temporary
    folder beside `out` and renames it at the end, so a failed conversion leaves no partial output.
    """
    src, out = Path(src), Path(out)
    split_file = src / csv_name
    if not split_file.is_file():
        raise DatasetError(f"VisA split file {split_file} not found; expected the extracted VisA_20220922.tar "
                           f"(with {csv_name}) in {src}")
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"output folder {out} exists and is not empty; choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    counts: dict[str, dict[str, int]] = {}
    try:
        with split_file.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(f"{split_file} lacks column(s) {missing}; expected columns {','.join(COLUMNS)}")
            for line, row in enumerate(reader, start=2):
                where = f"{split_file}:{line}"
                obj, split, label = row["object"].strip(), row["split"].strip(), row["label"].strip()
                if label not in LABELS or split not in ("train", "test"):
                    raise DatasetError(f"{where}: expected split train/test and label normal/anomaly; got "
                                       f"split={split!r} label={label!r}")
                if split == "train" and label == "anomaly":
                    raise DatasetError(f"{where}: an anomalous image in the train split; the MVTec layout trains "
                                       "on normal images only")
                image = src / row["image"].strip()
                if not image.is_file():
                    raise DatasetError(f"{where}: image {image} not found")
                folder = LABELS[label]
                target = tmp / obj / split / folder / image.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(image, target)
                if label == "anomaly":
                    mask_path = src / row["mask"].strip() if row["mask"].strip() else None
                    if mask_path is None or not mask_path.is_file():
                        raise DatasetError(f"{where}: anomalous image {image} has no mask file "
                                           f"(mask column: {row['mask']!r})")
                    mask = _binary_mask(mask_path)
                    mask_target = tmp / obj / "ground_truth" / folder / f"{image.stem}_mask.png"
                    mask_target.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(mask.astype(np.uint8) * 255).save(mask_target, format="PNG")
                key = f"{split}_{folder}"
                counts.setdefault(obj, {"train_good": 0, "test_good": 0, "test_bad": 0})[key] += 1
        if not counts:
            raise DatasetError(f"{split_file} lists no images")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return counts
