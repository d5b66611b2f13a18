"""Issue 15: no lost work, no silent wrong answers. Bad data, bad options and unwritable outputs fail early,
in one line naming the file, option or path; what can still be computed is computed."""
from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adlib.app.cli import main
from adlib.data import AnomalyDataset, DatasetError

ROOT_USER = os.geteuid() == 0


def check_split(*args, **kwargs):
    from adlib.data import check_split as check

    return check(*args, **kwargs)


def _category(root: Path, name: str = "widget", good: int = 3, defects: int = 3, train: int = 6,
              mask_value: int = 255, size: int = 64) -> Path:
    """<root>/<name>/{train/good, test/good, test/spot, ground_truth/spot}: textures, red spots as defects."""
    rng = np.random.default_rng(0)
    cat = root / name

    def texture() -> np.ndarray:
        small = rng.uniform(90, 160, size=(4, 4, 3))
        return np.kron(small, np.ones((size // 4, size // 4, 1))).astype(np.uint8)

    for split, count in [("train/good", train), ("test/good", good), ("test/spot", defects)]:
        if count:
            (cat / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img = texture()
            if split == "test/spot":
                img[20:36, 24:40] = (255, 20, 20)
                mask = np.zeros((size, size), np.uint8)
                mask[20:36, 24:40] = mask_value
                (cat / "ground_truth/spot").mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(cat / "ground_truth/spot" / f"{i:03d}_mask.png")
            Image.fromarray(img).save(cat / split / f"{i:03d}.png")
    return cat


@pytest.fixture
def no_fit(monkeypatch):
    """Training must not start: the checks come first."""
    from adlib import engine

    def fail(*args, **kwargs):
        raise AssertionError("engine.fit was called before the problem was reported")

    monkeypatch.setattr(engine, "fit", fail)


def _run(root: Path, *extra: str, model: str = "patchcore", category: str = "widget") -> list[str]:
    return ["run", model, "--data-root", str(root), "--category", category, "--image-size", "64", "--no-progress",
            "--set", "pretrained=False", *extra]


# ------------------------------------------------------------------------------------------ masks
def test_a_non_binary_mask_is_an_error_naming_the_file_and_values(tmp_path):
    cat = _category(tmp_path, mask_value=255)
    mask_file = cat / "ground_truth/spot/001_mask.png"
    array = np.asarray(Image.open(mask_file)).copy()
    array[array > 0] = np.linspace(40, 255, int((array > 0).sum())).astype(np.uint8)  # a resized-looking mask
    Image.fromarray(array).save(mask_file)
    test = AnomalyDataset(tmp_path, "widget", "test")
    with pytest.raises(DatasetError, match=r"001_mask.png is not binary: it holds the values 0, 40, 41"):
        test[next(i for i, s in enumerate(test.samples) if mask_file in s.mask_paths)]
    with pytest.raises(DatasetError, match="001_mask.png is not binary"):
        check_split(test)


@pytest.mark.parametrize("value", [255, 1])
def test_binary_masks_of_either_convention_are_read_alike(tmp_path, value):
    _category(tmp_path, mask_value=value)
    test = AnomalyDataset(tmp_path, "widget", "test")
    assert test[test.labels.index(1)]["mask"].sum() == 16 * 16 and check_split(test).pixel_metrics


def test_a_nonzero_layout_reads_multi_valued_masks(tmp_path):
    """MVTec LOCO stores a defect type's id as the pixel value: its layout says so (mask_encoding "nonzero")."""
    from adlib.data import LAYOUTS
    from adlib.data.layout import replace_spec

    _category(tmp_path, mask_value=237)
    with pytest.raises(DatasetError, match="not binary: it holds the values 0, 237"):
        AnomalyDataset(tmp_path, "widget", "test")[3]
    assert LAYOUTS["mvtec_loco"].mask_encoding == "nonzero"
    nonzero = replace_spec(LAYOUTS["mvtec"], name="mvtec-nonzero", mask_encoding="nonzero")
    assert AnomalyDataset(tmp_path, "widget", "test", layout=nonzero)[3]["mask"].sum() == 256


# ------------------------------------------------------------------------------------------ test split
def test_an_unreadable_test_image_fails_before_training(tmp_path, capsys, no_fit):
    cat = _category(tmp_path)
    data = (cat / "test/good/001.png").read_bytes()
    (cat / "test/good/001.png").write_bytes(data[: len(data) // 2])
    assert main(_run(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "cannot read image" in err and "test/good/001.png" in err and "Traceback" not in err


def test_a_mask_of_the_wrong_size_fails_before_training(tmp_path, capsys, no_fit):
    cat = _category(tmp_path)
    Image.fromarray(np.zeros((60, 64), np.uint8)).save(cat / "ground_truth/spot/002_mask.png")
    assert main(_run(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "002_mask.png is 64x60 (WxH)" in err and "64x64" in err


def test_check_split_reports_which_metrics_a_split_can_give(tmp_path):
    _category(tmp_path / "a", good=3, defects=0)
    _category(tmp_path / "b", good=0, defects=3)
    _category(tmp_path / "c")
    only_good = check_split(AnomalyDataset(tmp_path / "a", "widget", "test"))
    assert not only_good.image_metrics and not only_good.pixel_metrics
    assert "image metrics cannot be computed (only good images)" in only_good.statement()
    assert "no mask marks a defect pixel" in only_good.statement()
    only_bad = check_split(AnomalyDataset(tmp_path / "b", "widget", "test"))
    assert not only_bad.image_metrics and only_bad.pixel_metrics
    assert only_bad.statement().endswith("pixel metrics can")
    both = check_split(AnomalyDataset(tmp_path / "c", "widget", "test"), mode="full")
    assert both.image_metrics and both.pixel_metrics and (both.good, both.anomalous) == (3, 3)
    with pytest.raises(ValueError, match="mode"):
        check_split(AnomalyDataset(tmp_path / "c", "widget", "test"), mode="quick")


def test_only_defective_test_images_still_give_pixel_metrics(tmp_path, capsys):
    _category(tmp_path, good=0, defects=3)
    out = tmp_path / "r.json"
    assert main(_run(tmp_path, "--json", str(out))) == 0
    captured = capsys.readouterr()
    assert "image metrics cannot be computed (only anomalous images)" in captured.err  # said before training
    record = json.loads(out.read_text())
    assert record["image"] == {} and "only anomalous" in record["metrics"]["exact"]["undefined"]["image"]
    assert set(record["pixel"]) >= {"auroc", "ap", "f1max", "aupro"}
    assert record["test_split"]["widget"]["pixel_metrics"] and not record["test_split"]["widget"]["image_metrics"]
    assert record["test_split"]["widget"]["mask_encoding"] == "binary"
    runtime = record["provenance"]["runtime"]  # issue 9 item 7: what this run read and ran on
    assert runtime["data_sources"][f"{tmp_path.name}/widget"]["splits"] == ["test", "train"]
    assert runtime["cpu"]["model"] and runtime["threads"]["torch"] >= 1


# ------------------------------------------------------------------------------------------ options
def test_set_seed_is_used(tmp_path, capsys):
    _category(tmp_path)
    out = tmp_path / "r.json"
    assert main(_run(tmp_path, "--set", "seed=5", "--json", str(out))) == 0
    record = json.loads(out.read_text())
    assert record["config"]["fit"]["seed"] == 5 and record["provenance"]["seed"] == 5
    assert main(_run(tmp_path, "--set", "seed=5", "--seed", "3")) == 2
    assert "--seed 3 and --set seed=5 disagree" in capsys.readouterr().err


@pytest.mark.parametrize("extra, needle", [
    (("--set", "lr=-1"), "--set lr=-1"),
    (("--set", "weight_decay=-0.5"), "--set weight_decay=-0.5"),
    (("--set", "step_at=2"), "--set step_at=2"),
])
def test_a_refused_config_value_names_its_option(tmp_path, capsys, no_fit, extra, needle):
    _category(tmp_path)
    assert main(_run(tmp_path, *extra, model="varad")) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_an_unusable_device_is_one_short_line(tmp_path, capsys, no_fit):
    import torch

    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        pytest.skip("this machine has mps")
    _category(tmp_path)
    assert main(_run(tmp_path, "--device", "mps")) == 2
    err = capsys.readouterr().err.strip()
    assert "--device 'mps'" in err and "available: cpu" in err
    assert len(err.splitlines()) == 1 and len(err) < 200


def test_a_category_folder_as_data_root_gets_a_hint(tmp_path, capsys):
    cat = _category(tmp_path)
    assert main(["run", "patchcore", "--data-root", str(cat), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"pass its parent: --data-root {tmp_path} --category widget" in err


# ------------------------------------------------------------------------------------------ output paths
def _unwritable(tmp_path: Path, how: str) -> Path:
    if how == "file_parent":
        (tmp_path / "afile").write_text("x")
        return tmp_path / "afile" / "out.json"
    if how == "read_only":
        if ROOT_USER:
            pytest.skip("root writes into read-only folders")
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        return folder / "out.json"
    return tmp_path / "is_a_folder"


@pytest.mark.parametrize("option", ["--json", "--checkpoint"])
@pytest.mark.parametrize("how", ["file_parent", "read_only", "folder"])
def test_unwritable_run_outputs_fail_before_training(tmp_path, capsys, no_fit, option, how):
    _category(tmp_path)
    target = _unwritable(tmp_path, how)
    if how == "folder":
        target.mkdir()
    assert main(_run(tmp_path, option, str(target))) == 2
    err = capsys.readouterr().err
    assert f"cannot write {option} {target}" in err and "Traceback" not in err


def _no_xfsz() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))  # files above 2 KiB cannot grow: a full disk
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def test_a_full_disk_for_json_fails_before_training(tmp_path):
    _category(tmp_path)
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "adlib", *_run(tmp_path, "--json", str(out))], capture_output=True,
                          text=True, preexec_fn=_no_xfsz, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"cannot write --json {out}: File too large" in proc.stderr
    assert "image" not in proc.stdout  # no metrics were computed and then lost


def test_a_disk_filling_up_during_training_is_one_line(tmp_path, capsys, monkeypatch):
    from adlib import engine

    def full(model, path, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(engine, "save_checkpoint", full)
    _category(tmp_path)
    ckpt = tmp_path / "model.pt"
    # m=1: the recipe's m=4 hides the whole 4x4 stride-16 grid of a 64 px image
    assert main(_run(tmp_path, "--checkpoint", str(ckpt), "--epochs", "1", "--set", "m=1", model="varad")) == 2
    err = capsys.readouterr().err
    assert f"{ckpt}: No space left on device" in err and "Traceback" not in err


def test_data_stats_csv_is_checked_before_the_listing(tmp_path, capsys, monkeypatch):
    from adlib.data import layout

    _category(tmp_path / "ds")
    monkeypatch.setattr(layout, "dataset_stats", lambda root: pytest.fail("listed before checking --csv"))
    target = _unwritable(tmp_path, "file_parent")
    assert main(["data", "stats", "--root", str(tmp_path / "ds"), "--csv", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write --csv {target}" in err and "Traceback" not in err


def test_data_synth_out_is_checked_before_generating(tmp_path, capsys, monkeypatch):
    from adlib.data import synth

    monkeypatch.setattr(synth, "generate", lambda *a, **k: pytest.fail("generated before checking --out"))
    (tmp_path / "afile").write_text("x")
    assert main(["data", "synth", "--out", str(tmp_path / "afile" / "out")]) == 2
    assert f"cannot write --out {tmp_path / 'afile' / 'out'}" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(tmp_path / "afile")]) == 2
    assert "it is a file, not a folder" in capsys.readouterr().err
