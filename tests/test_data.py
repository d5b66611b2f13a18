"""Dataset readers on small generated trees in every supported layout, the real bottle data, bad input."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adlib.data import AnomalyDataset, DatasetError, convert_visa, dataset_stats, detect_layout, list_categories
from adlib.data import cli as data_cli
from adlib.data.transforms import ResizeImage, ResizeMask

SIZE = 24


def _image(path: Path, value: int = 128, mode: str = "RGB", size: int = SIZE, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    if mode == "L":
        array = rng.integers(0, 255, (size, size), dtype=np.uint8)
    elif mode == "RGBA":
        array = np.full((size, size, 4), value, np.uint8)
    else:
        array = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(array, mode).save(path, format=fmt)
    return path


def _mask(path: Path, box: tuple[int, int, int, int], size: int = SIZE, on: int = 255) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros((size, size), np.uint8)
    y0, x0, y1, x1 = box
    array[y0:y1, x0:x1] = on
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def mvtec_tree(tmp_path: Path) -> Path:
    root = tmp_path / "mvtec_like"
    cat = root / "widget"
    for i in range(3):
        _image(cat / "train" / "good" / f"{i:03d}.png")
    for i in range(2):
        _image(cat / "test" / "good" / f"{i:03d}.png")
        _image(cat / "test" / "crack" / f"{i:03d}.png")
        _mask(cat / "ground_truth" / "crack" / f"{i:03d}_mask.png", (2, 2, 10, 12))
    _image(cat / "test" / "stain" / "000.png", mode="L")
    _mask(cat / "ground_truth" / "stain" / "000_mask.png", (0, 0, 4, 4))
    (cat / "test" / ".ipynb_checkpoints").mkdir()  # hidden folders are not defect types
    _image(root / "gadget" / "train" / "good" / "000.png")
    _image(root / "gadget" / "test" / "good" / "000.png")
    return root


def test_mvtec_layout_items(mvtec_tree: Path) -> None:
    assert list_categories(mvtec_tree) == ["gadget", "widget"]
    train = AnomalyDataset(mvtec_tree, "widget", "train")
    assert train.layout.name == "mvtec" and len(train) == 3
    item = train[0]
    assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["mask"].shape == (1, SIZE, SIZE) and item["mask"].sum() == 0
    assert item["label"] == 0 and item["defect"] == "good"

    test = AnomalyDataset(mvtec_tree, "widget", "test")
    assert test.defects == ["crack", "crack", "good", "good", "stain"]
    assert test.labels == [1, 1, 0, 0, 1]
    crack = test[0]
    assert crack["mask"].sum() == 8 * 10 and set(crack["mask"].unique().tolist()) == {0.0, 1.0}
    assert crack["path"].endswith(os.path.join("crack", "000.png"))
    gray = test[4]["image"]  # a grayscale file becomes three equal channels
    assert gray.shape == (3, SIZE, SIZE) and torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    pixels = np.asarray(Image.open(mvtec_tree / "widget/test/crack/000.png"), np.float32) / 255
    assert torch.allclose(crack["image"], torch.from_numpy(pixels).permute(2, 0, 1))


def test_resize_and_mask_interpolation(mvtec_tree: Path) -> None:
    nearest = AnomalyDataset(mvtec_tree, "widget", "test", image_size=12)[0]
    assert nearest["image"].shape == (3, 12, 12) and nearest["mask"].shape == (1, 12, 12)
    assert nearest["mask"].sum() == 4 * 5  # the 8x10 box halves exactly
    rect = AnomalyDataset(mvtec_tree, "widget", "test", image_size=(12, 6), mask_interpolation="bilinear")[4]
    assert rect["image"].shape == (3, 12, 6) and set(rect["mask"].unique().tolist()) <= {0.0, 1.0}
    assert rect["mask"].sum() > 0
    with pytest.raises(ValueError, match="mask_interpolation"):
        AnomalyDataset(mvtec_tree, "widget", "test", mask_interpolation="cubic")
    with pytest.raises(ValueError, match="image_size"):
        AnomalyDataset(mvtec_tree, "widget", "test", image_size="big")
    # antialiased bilinear: downscaling a 1-px checkerboard averages to grey instead of aliasing
    board = torch.from_numpy((np.indices((16, 16)).sum(0) % 2).astype(np.float32)).expand(3, 16, 16)
    assert torch.allclose(ResizeImage((4, 4))(board), torch.full((3, 4, 4), 0.5), atol=0.01)
    soft = ResizeMask((2, 2), "bilinear")(torch.tensor([[[1.0, 1.0, 0.0, 0.0]] * 4]))
    assert soft.tolist() == [[[1.0, 0.0], [1.0, 0.0]]]


def test_rgba_is_flattened_over_black(tmp_path: Path) -> None:
    cat = tmp_path / "ds" / "c"
    path = _image(cat / "train" / "good" / "000.png", mode="RGBA", value=200)
    _image(cat / "test" / "good" / "000.png")
    array = np.asarray(Image.open(path)).copy()
    array[..., 3] = 0
    array[:4, :, 3] = 255
    Image.fromarray(array, "RGBA").save(path)
    image = AnomalyDataset(tmp_path / "ds", "c", "train")[0]["image"]
    assert image.shape == (3, SIZE, SIZE)
    assert torch.allclose(image[:, :4], torch.full((3, 4, SIZE), 200 / 255)) and image[:, 4:].abs().max() == 0


def test_btad_layout_mask_naming(tmp_path: Path) -> None:
    """BTAD: normal folder 'ok', .bmp images, masks named like the image with .png or .bmp."""
    root = tmp_path / "btad"
    cat = root / "01"
    for i in range(2):
        _image(cat / "train" / "ok" / f"{i:04d}.bmp", fmt="BMP")
        _image(cat / "test" / "ok" / f"{i:04d}.bmp", fmt="BMP")
    _image(cat / "test" / "ko" / "0000.bmp", fmt="BMP")
    _mask(cat / "ground_truth" / "ko" / "0000.png", (0, 0, 5, 5))
    _image(cat / "test" / "ko" / "0001.bmp", fmt="BMP")
    mask = cat / "ground_truth" / "ko" / "0001.bmp"
    Image.fromarray(np.pad(np.full((3, 3), 255, np.uint8), ((0, SIZE - 3), (0, SIZE - 3)))).save(mask, format="BMP")
    test = AnomalyDataset(root, "01", "test")
    assert test.layout.name == "btad"
    assert test.defects == ["ko", "ko", "good", "good"] and test.labels == [1, 1, 0, 0]
    assert test[0]["mask"].sum() == 25 and test[1]["mask"].sum() == 9 and test[2]["mask"].sum() == 0
    assert len(AnomalyDataset(root, "01", "train")) == 2


def test_loco_layout_mask_union_and_validation(tmp_path: Path) -> None:
    root = tmp_path / "loco"
    cat = root / "box"
    for split in ("train", "validation", "test"):
        for i in range(2):
            _image(cat / split / "good" / f"{i:03d}.png")
    _image(cat / "test" / "logical_anomalies" / "000.png")
    _mask(cat / "ground_truth" / "logical_anomalies" / "000" / "000.png", (0, 0, 4, 4))
    _mask(cat / "ground_truth" / "logical_anomalies" / "000" / "001.png", (10, 10, 13, 13), on=1)
    _image(cat / "test" / "structural_anomalies" / "000.png")
    _mask(cat / "ground_truth" / "structural_anomalies" / "000" / "000.png", (2, 2, 4, 4), on=119)
    test = AnomalyDataset(root, "box", "test")
    assert detect_layout(cat).name == "mvtec_loco"
    assert test.groups == ["good", "good", "logical", "structural"]
    logical = test[2]
    assert logical["mask"].sum() == 16 + 9  # union of both mask files, values 255 and 1 both count
    assert logical["defect"] == "logical_anomalies" and logical["label"] == 1
    assert test[3]["mask"].sum() == 4
    validation = AnomalyDataset(root, "box", "validation")
    assert len(validation) == 2 and validation.labels == [0, 0]
    with pytest.raises(DatasetError, match="split 'validation' is not part of layout mvtec"):
        AnomalyDataset(root, "box", "validation", layout="mvtec")
    rows = dataset_stats(root)
    for path in (cat / "ground_truth" / "structural_anomalies" / "000").iterdir():
        path.unlink()
    with pytest.raises(DatasetError, match=r"structural_anomalies/000\.png has no mask: expected mask images in"):
        AnomalyDataset(root, "box", "test")
    assert rows == [{"dataset": "loco", "category": "box", "layout": "mvtec_loco", "train_normal": 2,
                     "test_normal": 2, "test_abnormal": 2, "validation_normal": 2}]


def test_dtd_synthetic_layout(tmp_path: Path) -> None:
    """DTD-Synthetic uses the MVTec layout: <Texture>/train/good, test/bad, ground_truth/bad/<stem>_mask.png."""
    root = tmp_path / "dtd_synthetic"
    cat = root / "Woven_001"
    _image(cat / "train" / "good" / "000.png")
    _image(cat / "test" / "good" / "000.png")
    _image(cat / "test" / "bad" / "000.png")
    _mask(cat / "ground_truth" / "bad" / "000_mask.png", (5, 5, 7, 9))
    test = AnomalyDataset(root, "Woven_001", "test")
    assert test.layout.name == "mvtec" and test.defects == ["bad", "good"]
    assert test[0]["mask"].sum() == 8


def test_visa_conversion(tmp_path: Path, capsys) -> None:
    src = tmp_path / "VisA"
    lines = ["object,split,label,image,mask"]
    for obj in ("candle", "pcb1"):
        for i in range(3):
            rel = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            _image(src / rel, fmt="JPEG")
            lines.append(f"{obj},{'train' if i < 2 else 'test'},normal,{rel},")
        rel, mrel = f"{obj}/Data/Images/Anomaly/000.JPG", f"{obj}/Data/Masks/Anomaly/000.png"
        _image(src / rel, fmt="JPEG")
        _mask(src / mrel, (3, 3, 8, 8), on=1)  # VisA masks may hold 0/1
        lines.append(f"{obj},test,anomaly,{rel},{mrel}")
    (src / "split_csv").mkdir()
    (src / "split_csv" / "1cls.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "visa"
    assert data_cli_main(["convert-visa", "--src", str(src), "--out", str(out)]) == 0
    assert "candle: train good 2, test good 1, test bad 1" in capsys.readouterr().out
    assert list_categories(out) == ["candle", "pcb1"]
    test = AnomalyDataset(out, "candle", "test")
    assert test.defects == ["bad", "good"] and test.labels == [1, 0]
    assert test[0]["mask"].sum() == 25 and test[0]["image"].shape == (3, SIZE, SIZE)
    saved = np.asarray(Image.open(out / "candle/ground_truth/bad/000_mask.png"))
    assert set(np.unique(saved).tolist()) == {0, 255}
    assert (out / "candle/train/good/0000.JPG").read_bytes() == (src / "candle/Data/Images/Normal/0000.JPG").read_bytes()
    with pytest.raises(DatasetError, match="not empty"):
        convert_visa(src, out)
    (src / "split_csv" / "1cls.csv").write_text("object,split,label,image,mask\ncandle,test,anomaly,"
                                                "candle/Data/Images/Anomaly/000.JPG,\n")
    with pytest.raises(DatasetError, match="has no mask"):
        convert_visa(src, tmp_path / "visa2")
    assert not (tmp_path / "visa2").exists()


def data_cli_main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser()
    data_cli.add_arguments(parser)
    return data_cli.main(parser.parse_args(argv))


def test_stats_cli_on_folder_of_datasets(mvtec_tree: Path, capsys) -> None:
    assert data_cli_main(["stats", "--root", str(mvtec_tree.parent), "--csv", str(mvtec_tree.parent / "s.csv")]) == 0
    out = capsys.readouterr().out
    assert "widget" in out and "gadget" in out
    widget = next(r for r in dataset_stats(mvtec_tree) if r["category"] == "widget")
    assert (widget["train_normal"], widget["test_normal"], widget["test_abnormal"]) == (3, 2, 3)
    assert "widget,mvtec,3,2,3,0" in (mvtec_tree.parent / "s.csv").read_text()


# ------------------------------------------------------------------------------------------ bad input
def test_unreadable_and_truncated_images_name_the_file(mvtec_tree: Path) -> None:
    good = mvtec_tree / "widget" / "train" / "good"
    (good / "000.png").write_bytes(b"this is not an image")
    data = (good / "001.png").read_bytes()
    (good / "001.png").write_bytes(data[: len(data) // 2])
    dataset = AnomalyDataset(mvtec_tree, "widget", "train")
    with pytest.raises(DatasetError, match=r"cannot read image .*000\.png"):
        dataset[0]
    with pytest.raises(DatasetError, match=r"cannot read image .*001\.png"):
        dataset[1]


def test_defective_image_without_mask(mvtec_tree: Path) -> None:
    (mvtec_tree / "widget/ground_truth/crack/001_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"crack/001\.png has no mask: expected one of .*001_mask\.png"):
        AnomalyDataset(mvtec_tree, "widget", "test")


def test_mask_size_differs_from_image(mvtec_tree: Path) -> None:
    _mask(mvtec_tree / "widget/ground_truth/crack/000_mask.png", (0, 0, 2, 2), size=SIZE + 4)
    dataset = AnomalyDataset(mvtec_tree, "widget", "test")
    with pytest.raises(DatasetError, match=r"mask .*000_mask\.png is 28x28 .* image .*000\.png is 24x24"):
        dataset[0]


def test_empty_train_good(mvtec_tree: Path) -> None:
    for path in (mvtec_tree / "widget/train/good").iterdir():
        path.unlink()
    with pytest.raises(DatasetError, match=r"no images in .*widget/train/good"):
        AnomalyDataset(mvtec_tree, "widget", "train")


def test_unknown_category_lists_known(mvtec_tree: Path) -> None:
    with pytest.raises(DatasetError, match="unknown category 'bottle'.*known categories: gadget, widget"):
        AnomalyDataset(mvtec_tree, "bottle", "train")


def test_unknown_layout_and_empty_root(tmp_path: Path) -> None:
    _image(tmp_path / "odd" / "thing" / "train" / "normal" / "000.png")
    with pytest.raises(DatasetError, match=r"thing matches no known dataset layout; expected one of: mvtec"):
        AnomalyDataset(tmp_path / "odd", "thing", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no category folders"):
        list_categories(tmp_path / "empty")
    with pytest.raises(DatasetError, match="does not exist"):
        list_categories(tmp_path / "missing")
    assert data_cli_main(["stats", "--root", str(tmp_path / "empty")]) == 2


# ---------------------------------------------------------------------------------------- real data
def _real_root() -> Path:
    root = Path(os.environ.get("ADLIB_DATA", "")) / "mvtec_ad"
    if not os.environ.get("ADLIB_DATA") or not (root / "bottle").is_dir():
        pytest.skip("ADLIB_DATA is not set or lacks mvtec_ad/bottle")
    return root


@pytest.mark.data
def test_real_bottle(capsys) -> None:
    root = _real_root()
    assert data_cli_main(["stats", "--root", str(root.parent)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if " bottle " in line)
    assert line.split() == ["mvtec_ad", "bottle", "209", "20", "63", "0"]
    row = next(r for r in dataset_stats(root) if r["category"] == "bottle")
    assert (row["train_normal"], row["test_normal"], row["test_abnormal"]) == (209, 20, 63)
    test = AnomalyDataset(root, "bottle", "test")
    assert len(AnomalyDataset(root, "bottle", "train")) == 209 and len(test) == 83
    assert sorted(set(test.defects)) == ["broken_large", "broken_small", "contamination", "good"]
    for sample in test.samples:  # every mask file: same size as its image, values 0/255 only
        for mask_path in sample.mask_paths:
            with Image.open(mask_path) as mask:
                assert mask.size == (900, 900)
                assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
    defective = test[test.labels.index(1)]
    assert defective["image"].shape == (3, 900, 900) and defective["mask"].shape == (1, 900, 900)
    assert defective["mask"].sum() > 0 and set(defective["mask"].unique().tolist()) == {0.0, 1.0}
    good = test[test.defects.index("good")]
    assert good["mask"].sum() == 0 and good["label"] == 0
    small = AnomalyDataset(root, "bottle", "test", image_size=256)[test.labels.index(1)]
    assert small["image"].shape == (3, 256, 256) and small["mask"].sum() > 0


def test_category_datasets_for_multi_class(mvtec_tree: Path) -> None:
    from torch.utils.data import ConcatDataset, DataLoader

    from adlib.data import category_datasets

    parts = category_datasets(mvtec_tree, "train", image_size=16)
    assert list(parts) == ["gadget", "widget"] and [len(d) for d in parts.values()] == [1, 3]
    batch = next(iter(DataLoader(ConcatDataset(parts.values()), batch_size=4)))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["mask"].shape == (4, 1, 16, 16)
    assert batch["label"].tolist() == [0, 0, 0, 0] and batch["defect"] == ["good"] * 4
