"""The datasets the papers read, where each is looked for and how to get it, and tiny synthetic stand-ins.

``DATASETS`` describes every dataset folder a paper profile names: its display name, the on-disk layout adlib
expects under the data root, and the command or address that gets it. ``missing_reason(folder, root)`` says
in one sentence why a dataset is not there and how to get it (for not-run rows and ``adlib reproduce --plan``).

``standin_root(folders)`` writes, once, into ``$ADLIB_CACHE/standins/``, a tiny synthetic copy of each named
dataset **in that dataset's real on-disk layout** (MVTec AD, VisA as extracted with its ``split_csv/1cls.csv``
and then converted by ``convert_visa`` as ``adlib data download visa`` does, BTAD, MVTec LOCO, DTD-Synthetic),
with few categories and a handful of images each, so that a path check (``adlib reproduce --check``) sends
every reader and every table's code through the paper profile's path. A stand-in is never data: its images
come from the synthetic generator (``adlib.data.synth``), and everything built on it says so.

The MVTec LOCO stand-in takes its ``juice_bottle`` category from the derived subset
``mvtec_loco_subset/juice_bottle`` when the data root has it (real MVTec LOCO images, resized and re-split by
the steering repository, logical anomalies only; see its SOURCE.md): those real images then go through the
LOCO reader at their real aspect ratio and mask format. It stays a stand-in: the subset is not the official
split and has no structural anomalies.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

STANDIN_VERSION = 2
STAMP_NAME = "STANDIN.json"
SIZE = 256  # stand-in image side (px); the readers resize to the profile's size as they do for real data
COUNTS = {"train": 3, "test_good": 3, "per_defect": 3, "validation": 2}  # a little above the path check's caps
LOCO_SUBSET = "mvtec_loco_subset"  # the derived LOCO subset's folder under a data root


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset folder a paper profile may read from the data root."""

    folder: str
    name: str
    layout: str  # what adlib expects under <data root>/<folder>/, in words
    get: str  # how to get it: an ``adlib data download`` command (``{root}`` filled in) or an address
    readable: bool = True  # adlib's readers read this layout
    categories: tuple[str, ...] = ()  # the stand-in's categories (real category names, so tables join)
    note: str = ""
    paper_categories: int | None = None  # categories of the real dataset (for estimates of the work it takes)

    def how_to_get(self, root: str | os.PathLike | None) -> str:
        return self.get.format(root=root if root is not None else "<data root>")


_DOWNLOAD = "python -m adlib data download {name} --root {{root}}"
DATASETS: dict[str, DatasetInfo] = {d.folder: d for d in (
    DatasetInfo("mvtec_ad", "MVTec AD",
                "mvtec_ad/<category>/train/good/*.png, test/<defect>/*.png, ground_truth/<defect>/<name>_mask.png "
                "(the MVTec AD archive as extracted)",
                _DOWNLOAD.format(name="mvtec_ad") + " (https://www.mvtec.com/company/research/datasets/mvtec-ad)",
                categories=("bottle", "screw"), paper_categories=15),
    DatasetInfo("visa", "VisA",
                "visa/<object>/train/good, test/good, test/bad, ground_truth/bad/<name>_mask.png: VisA_20220922.tar "
                "converted to the MVTec layout with its split_csv/1cls.csv",
                _DOWNLOAD.format(name="visa") + " (downloads, extracts to visa_raw/ and converts to visa/; "
                "https://github.com/amazon-science/spot-diff)",
                categories=("candle", "capsules"), paper_categories=12),
    DatasetInfo("btad", "BTAD",
                "btad/<01|02|03>/train/ok/*.bmp|png, test/ok, test/ko, ground_truth/ko/<name>.png|bmp "
                "(BTech_Dataset_transformed)",
                _DOWNLOAD.format(name="btad") + " (https://github.com/pankajmishra000/VT-ADL)",
                categories=("01", "03"), paper_categories=3),
    DatasetInfo("mvtec_loco", "MVTec LOCO",
                "mvtec_loco/<category>/train/good, validation/good, test/{good,logical_anomalies,structural_anomalies}, "
                "ground_truth/<kind>/<name>/000.png (the MVTec LOCO AD archive as extracted)",
                _DOWNLOAD.format(name="mvtec_loco") + " (https://www.mvtec.com/company/research/datasets/mvtec-loco)",
                categories=("breakfast_box", "juice_bottle"), paper_categories=5,
                note="mvtec_loco_subset/ (a derived, re-split juice_bottle subset) is not MVTec LOCO: the paper "
                     "profile does not read it as such"),
    DatasetInfo("dtd_synthetic", "DTD-Synthetic",
                "dtd_synthetic/<Texture_NNN>/train/good, test/good, test/bad, ground_truth/bad/<name>_mask.png",
                "download DTD-Synthetic.zip in a browser from "
                "https://drive.google.com/drive/folders/10OyPzvI3H6llCZBxKxFlKWt1Pw1tkMK1, then "
                "python -m adlib data download dtd_synthetic --root {root} --url file:///path/to/DTD-Synthetic.zip",
                categories=("Blotchy_099", "Woven_001"), paper_categories=12),
    DatasetInfo("real_iad", "Real-IAD", "Real-IAD as released (per-category folders of multi-view JPEGs, JSON splits)",
                "https://realiad4ad.github.io/Real-IAD/ (access on request)", readable=False, paper_categories=30),
    DatasetInfo("uni_medical", "Uni-Medical", "ADer's Uni-Medical (brain, liver, retinal) with its meta.json",
                "https://github.com/zhangzjn/ADer (data preparation in its README)", readable=False,
                paper_categories=3),
    DatasetInfo("mvtec_3d", "MVTec 3D-AD", "mvtec_3d/<category>/{train,validation,test}/<defect>/{rgb,xyz,gt}/",
                "https://www.mvtec.com/company/research/datasets/mvtec-3d-ad", readable=False, paper_categories=10),
    DatasetInfo("coco_ad", "COCO-AD", "ADer's COCO-AD subsets 0-3 with its meta.json",
                "https://github.com/zhangzjn/ADer (data preparation in its README)", readable=False,
                paper_categories=4),
)}


def info(folder: str) -> DatasetInfo:
    """The ``DatasetInfo`` of a dataset folder; an unknown folder gets a plain one (MVTec layout assumed)."""
    return DATASETS.get(folder) or DatasetInfo(folder, folder, f"{folder}/<category>/train/good, test/<defect>, "
                                               "ground_truth/<defect>/<name>_mask.png (MVTec layout)",
                                               "no download registered in adlib.data.download")


def missing_reason(folder: str, root: str | os.PathLike | None) -> str:
    """Why dataset ``folder`` cannot be read from data root ``root``, and how to get it (one sentence)."""
    data = info(folder)
    if root is None:
        where = f"no data root (data_root and $ADLIB_DATA unset), so {folder}/ was not looked for"
    else:
        where = f"no {folder}/ under {root}"
    reader = "" if data.readable else "; adlib has no reader for its layout yet (its rows stay not run even with the data)"
    note = f" (note: {data.note})" if data.note else ""
    return f"{data.name} is missing: {where}; expected {data.layout}; get it: {data.how_to_get(root)}{reader}{note}"


# --------------------------------------------------------------------------------------------------- images
def _look(category: str):
    """The synthetic look a stand-in category borrows (objects for object-like names, textures otherwise)."""
    from . import synth

    looks = list(synth.AD_CATEGORIES.values())
    return looks[int(hashlib.sha256(category.encode()).hexdigest(), 16) % len(looks)]


def _images(dataset: str, category: str, seed: int, size: int = SIZE):
    """(split, index, image HxWx3 float, mask HxW bool or None) of one stand-in category: normal training and
    test images, and defective test images with exact masks (one defect kind)."""
    from . import synth

    spec = _look(category)
    for split, count in (("train", COUNTS["train"]), ("test", COUNTS["test_good"]),
                         ("validation", COUNTS["validation"])):
        for i in range(count):
            image, _, _ = synth._render_normal(spec, synth._rng(seed, "standin", dataset, category, split, i), size)
            yield split, i, image, None
    defect = "spot"  # a blob, twice the synthetic sets' scale: it survives resizing to any profile's size
    for i in range(COUNTS["per_defect"]):
        rng = synth._rng(seed, "standin", dataset, category, "defect", i)
        image, allowed, background = synth._render_normal(spec, rng, size)
        mask = synth._apply_defect(defect, rng, image, allowed, 2.0, background)
        yield "defect", i, image, mask


def _save(array: np.ndarray, path: Path, fmt: str = "PNG", mode: str | None = None, value: int = 255) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.dtype == bool:
        data = array.astype(np.uint8) * value
    else:
        data = np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)
    image = Image.fromarray(data)
    if mode is not None:
        image = image.convert(mode)
    image.save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


# --------------------------------------------------------------------------------------------------- layouts
def _write_mvtec(out: Path, dataset: str, category: str, seed: int, defect: str = "", mode: str | None = None) -> None:
    """MVTec AD / DTD-Synthetic: train/good, test/good, test/<defect>, ground_truth/<defect>/<name>_mask.png."""
    cat = out / category
    for split, i, image, mask in _images(dataset, category, seed):
        if split == "validation":
            continue
        if mask is None:
            _save(image, cat / split / "good" / f"{i:03d}.png", mode=mode)
        else:
            kind = defect or "defect"
            _save(image, cat / "test" / kind / f"{i:03d}.png", mode=mode)
            _save(mask, cat / "ground_truth" / kind / f"{i:03d}_mask.png")


def _write_btad(out: Path, dataset: str, category: str, seed: int) -> None:
    """BTAD: train/ok, test/ok, test/ko, ground_truth/ko/<name>.png (class 01) or .bmp (class 03); BMP images."""
    cat = out / category
    mask_ext, mask_fmt = (".bmp", "BMP") if category == "03" else (".png", "PNG")
    for split, i, image, mask in _images(dataset, category, seed):
        if split == "validation":
            continue
        if mask is None:
            _save(image, cat / split / "ok" / f"{i:04d}.bmp", "BMP")
        else:
            _save(image, cat / "test" / "ko" / f"{i:04d}.bmp", "BMP")
            _save(mask, cat / "ground_truth" / "ko" / f"{i:04d}{mask_ext}", mask_fmt)


def _write_visa_raw(raw: Path, dataset: str, categories: tuple[str, ...], seed: int) -> None:
    """VisA as extracted: <object>/Data/Images/{Normal,Anomaly}/*.JPG, <object>/Data/Masks/Anomaly/*.png (values
    0/1, binarised by the converter) and split_csv/1cls.csv naming each image's split and label."""
    rows = []
    for category in categories:
        normal = 0
        for split, i, image, mask in _images(dataset, category, seed):
            if split == "validation":
                continue
            if mask is None:
                name = f"{category}/Data/Images/Normal/{normal:04d}.JPG"
                normal += 1
                _save(image, raw / name, "JPEG")
                rows.append((category, split, "normal", name, ""))
            else:
                name = f"{category}/Data/Images/Anomaly/{i:03d}.JPG"
                mask_name = f"{category}/Data/Masks/Anomaly/{i:03d}.png"
                _save(image, raw / name, "JPEG")
                _save(mask, raw / mask_name, value=1)
                rows.append((category, "test", "anomaly", name, mask_name))
    (raw / "split_csv").mkdir(parents=True, exist_ok=True)
    with open(raw / "split_csv" / "1cls.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("object", "split", "label", "image", "mask"))
        writer.writerows(rows)


def _write_loco(out: Path, dataset: str, category: str, seed: int) -> None:
    """MVTec LOCO: train/good, validation/good, test/{good,logical_anomalies,structural_anomalies}, masks as
    ground_truth/<kind>/<name>/000.png holding a defect-type value (not 255), as the real dataset does."""
    from . import synth

    look = list(synth.LOCO_CATEGORIES.values())[0 if category == "breakfast_box" else 1]
    cat = out / category
    for split, count in (("train", COUNTS["train"]), ("validation", COUNTS["validation"]), ("test", COUNTS["test_good"])):
        for i in range(count):
            rng = synth._rng(seed, "standin", dataset, category, split, i)
            _save(look.scene(rng, SIZE, look.items(rng, SIZE)), cat / split / "good" / f"{i:03d}.png")
    for i in range(COUNTS["per_defect"]):
        rng = synth._rng(seed, "standin", dataset, category, "logical", i)
        items, masks = look.logical(rng, SIZE, look.logical_kinds[i % len(look.logical_kinds)])
        _save(look.scene(rng, SIZE, items), cat / "test" / "logical_anomalies" / f"{i:03d}.png")
        for m, mask in enumerate(masks):
            _save(mask, cat / "ground_truth" / "logical_anomalies" / f"{i:03d}" / f"{m:03d}.png", value=242)
        rng = synth._rng(seed, "standin", dataset, category, "structural", i)
        image, mask = synth._structural(look, rng, SIZE, synth.LOCO_STRUCTURAL[i % len(synth.LOCO_STRUCTURAL)])
        _save(image, cat / "test" / "structural_anomalies" / f"{i:03d}.png")
        _save(mask, cat / "ground_truth" / "structural_anomalies" / f"{i:03d}" / "000.png", value=251)


def _copy_loco_subset(out: Path, subset: Path, category: str) -> None:
    """A capped copy (links where possible) of the derived LOCO subset's category, in its own LOCO layout."""
    cat = out / category
    picks = {"train/good": COUNTS["train"], "validation/good": COUNTS["validation"], "test/good": COUNTS["test_good"],
             "test/logical_anomalies": COUNTS["per_defect"]}
    for folder, count in picks.items():
        for image in sorted((subset / folder).glob("*.png"))[:count]:
            _link(image, cat / folder / image.name)
            if folder == "test/logical_anomalies":
                for mask in sorted((subset / "ground_truth" / "logical_anomalies" / image.stem).glob("*.png")):
                    _link(mask, cat / "ground_truth" / "logical_anomalies" / image.stem / mask.name)
    for name in ("SOURCE.md", "defects_config.json"):
        for found in (subset / name, subset.parent / name):
            if found.is_file():
                _link(found, cat / name)
                break


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _write_dataset(out: Path, folder: str, seed: int, categories: tuple[str, ...], loco_subset: Path | None) -> None:
    target = out / folder
    if folder == "mvtec_ad":
        for category in categories:  # screw is a grayscale category in MVTec AD: its stand-in is too
            _write_mvtec(target, folder, category, seed, defect="scratch_head" if category == "screw" else "broken_large",
                         mode="L" if category == "screw" else None)
    elif folder == "dtd_synthetic":
        for category in categories:
            _write_mvtec(target, folder, category, seed, defect="bad")
    elif folder == "btad":
        for category in categories:
            _write_btad(target, folder, category, seed)
    elif folder == "visa":
        from .visa import convert_visa

        raw = out / "visa_raw"
        _write_visa_raw(raw, folder, categories, seed)
        convert_visa(raw, target)  # what `adlib data download visa` does after extracting the archive
    elif folder == "mvtec_loco":
        for category in categories:
            if category == "juice_bottle" and loco_subset is not None:
                _copy_loco_subset(target, loco_subset, category)
            else:
                _write_loco(target, folder, category, seed)
    else:
        raise ValueError(f"no stand-in for dataset folder {folder!r}; stand-ins exist for {standin_folders()}")


def standin_folders() -> list[str]:
    """Dataset folders a stand-in can be written for (the layouts adlib reads)."""
    return [d.folder for d in DATASETS.values() if d.readable and d.categories]


def cache_dir() -> Path:
    return Path(os.environ.get("ADLIB_CACHE") or Path.home() / ".cache" / "adlib") / "standins"


def _subset_of(data_root: str | os.PathLike | None) -> Path | None:
    if data_root is None:
        return None
    found = Path(data_root) / LOCO_SUBSET / "juice_bottle"
    return found if (found / "train" / "good").is_dir() else None


def standin_root(folders, seed: int = 0, categories: int | None = None,
                 data_root: str | os.PathLike | None = None) -> Path:
    """A folder holding a stand-in for each dataset folder in ``folders`` (those ``standin_folders`` knows),
    generated once into ``$ADLIB_CACHE/standins/`` (a stamp records what it depends on; a half-written or stale
    folder is written again, through a temporary sibling renamed into place). ``categories``: at most this many
    categories per dataset. ``data_root``: where to look for the derived LOCO subset (see the module docs)."""
    folders = sorted(f for f in dict.fromkeys(folders) if f in standin_folders())
    subset = _subset_of(data_root) if "mvtec_loco" in folders else None
    stamp = {"version": STANDIN_VERSION, "seed": int(seed), "size": SIZE, "counts": COUNTS,
             "datasets": {f: list(DATASETS[f].categories[:categories]) for f in folders},
             "loco_subset": str(subset.resolve()) if subset is not None else None}
    key = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:12]
    parent = cache_dir()
    target = parent / f"v{STANDIN_VERSION}-{key}"
    if _stamp_matches(target, stamp):
        return target
    parent.mkdir(parents=True, exist_ok=True)
    for leftover in parent.glob(f".{target.name}.*"):  # from a generation killed over an hour ago
        if time.time() - leftover.stat().st_mtime > 3600:
            shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    try:
        for folder in folders:
            _write_dataset(tmp, folder, int(seed), tuple(stamp["datasets"][folder]), subset)
        (tmp / STAMP_NAME).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, 0o755)
        if _stamp_matches(target, stamp):  # another process finished first
            return target
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except OSError:
        if _stamp_matches(target, stamp):
            return target
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _stamp_matches(folder: Path, stamp: dict) -> bool:
    try:
        return json.loads((folder / STAMP_NAME).read_text()) == json.loads(json.dumps(stamp))
    except (OSError, ValueError):
        return False


def describe(folder: str, root: Path) -> str:
    """What a stand-in folder holds, in words (for data labels)."""
    data = info(folder)
    source = ""
    if folder == "mvtec_loco" and (root / folder / "juice_bottle" / "SOURCE.md").exists():
        source = "; its juice_bottle is a capped copy of the derived subset mvtec_loco_subset (real images, re-split)"
    return f"{data.name} stand-in (synthetic images in {data.name}'s layout{source}): path check only, not data"

