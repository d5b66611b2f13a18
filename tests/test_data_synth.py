"""The synthetic benchmark: determinism, layouts readable by the real readers, exact masks, caching."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adlib.data import AnomalyDataset, dataset_stats, list_categories, synthetic_root
from adlib.data import synth

SMALL = 40


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("synth") / "a", seed=3, size=SMALL, hr_size=48, workers=1)


def test_same_seed_gives_byte_identical_files(generated: Path, tmp_path: Path) -> None:
    subset = ("synthetic_hr", "synthetic_loco")  # one MVTec-layout and the LOCO-layout set, in 2 processes
    again = synth.generate(tmp_path / "b", seed=3, size=SMALL, hr_size=48, datasets=subset, workers=2)
    first = _hashes(generated)
    second = _hashes(again)
    assert len(first) > 1000 and len(second) > 200
    assert all(first[name] == digest for name, digest in second.items() if name.endswith(".png"))
    spec, sets = synth.AD_CATEGORIES["weave"], synth.SETS["synthetic_ad"]
    synth.write_mvtec_category(tmp_path / "c", "weave", spec, sets, 4, SMALL, "synthetic_ad")
    other = _hashes(tmp_path / "c")
    assert len(other) == 90 and all(first[f"synthetic_ad/{k}"] != v for k, v in other.items())


def test_layouts_and_counts(generated: Path) -> None:
    assert sorted(p.name for p in generated.iterdir() if p.is_dir()) == sorted(synth.DATASETS)
    rows = {(r["dataset"], r["category"]): r for r in dataset_stats(generated)}
    assert list_categories(generated / "synthetic_ad") == ["capsule", "stone", "washer", "weave", "wood"]
    assert len(list_categories(generated / "synthetic_multi")) == 4
    weave = rows[("synthetic_ad", "weave")]
    assert (weave["train_normal"], weave["test_normal"], weave["test_abnormal"]) == (40, 10, 20)
    tray = rows[("synthetic_loco", "tray")]
    counts = synth.LOCO_COUNTS  # four logical rules and four structural defects per category
    assert tray["layout"] == "mvtec_loco" and tray["validation_normal"] == counts["validation"]
    assert tray["test_abnormal"] == 4 * (counts["per_logical"] + counts["per_structural"])
    stamp = json.loads((generated / synth.STAMP_NAME).read_text())
    assert stamp == {"seed": 3, "size": SMALL, "hr_size": 48, "datasets": list(synth.DATASETS),
                     "version": synth.GENERATOR_VERSION}


def test_every_defective_image_has_an_exact_nonempty_mask(generated: Path) -> None:
    for dataset in ("synthetic_ad", "synthetic_multi"):
        for category in list_categories(generated / dataset):
            test = AnomalyDataset(generated / dataset, category, "test")
            assert len(set(test.defects) - {"good"}) >= 4
            for index in range(len(test)):
                item = test[index]
                assert item["image"].shape == (3, SMALL, SMALL)
                assert (item["mask"].sum() > 0) == (item["label"] == 1)
    loco = AnomalyDataset(generated / "synthetic_loco", "tray", "test")
    assert {"logical", "structural"} <= set(loco.groups)
    multi_mask = [s for s in loco.samples if len(s.mask_paths) > 1]
    assert multi_mask, "the unpaired anomaly has one mask file per square of the wrong colour pair"
    sample = multi_mask[0]
    item = loco[loco.samples.index(sample)]
    parts = [np.asarray(Image.open(p)) > 0 for p in sample.mask_paths]
    assert item["mask"][0].bool().numpy().sum() == np.logical_or.reduce(parts).sum() > max(p.sum() for p in parts)


def test_defects_change_only_masked_pixels() -> None:
    """The mask is exact: a defect changes pixels inside its mask and none outside."""
    size = 96
    for name, spec in synth.AD_CATEGORIES.items():
        for defect in spec.defects:
            clean, allowed, bg = synth._render_normal(spec, synth._rng(0, name, defect), size)
            img = clean.copy()
            mask = synth._apply_defect(defect, synth._rng(1, name, defect), img, allowed, 1.0, bg)
            changed = np.abs(img - clean).max(axis=2) > 0
            assert mask.any() and not (changed & ~mask).any(), (name, defect)
            assert changed.sum() >= 0.5 * mask.sum(), (name, defect)


def test_high_resolution_defects_are_small() -> None:
    """synthetic_hr defects are a few pixels wide at 1024 px and shrink below a pixel at 256 px."""
    spec = synth.HR_CATEGORIES["washer"]
    size = 1024
    areas = []
    for i in range(2):
        rng = synth._rng(0, "hr-test", i)
        img, allowed, bg = synth._render_normal(spec, rng, size)
        areas.append(synth._apply_defect("spot", rng, img, allowed, synth.SETS["synthetic_hr"].defect_scale, bg).sum())
    diameters = 2 * np.sqrt(np.array(areas) / np.pi)
    assert img.shape == (1024, 1024, 3)
    assert diameters.min() >= 2 and diameters.max() <= 16  # a few px at 1024 px: 0.5-4 px at 256 px


def test_synthetic_root_is_cached_and_regenerated_when_stale(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ADLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(synth, "DATASETS", ("synthetic_loco",))  # keep the test fast
    root = synthetic_root(seed=1, size=32)
    assert root.parent == tmp_path / "cache" / "synthetic"
    stamp = root / synth.STAMP_NAME
    first = stamp.stat().st_mtime_ns
    assert synthetic_root(seed=1, size=32) == root and stamp.stat().st_mtime_ns == first
    stamp.write_text(json.dumps({"version": -1}))
    assert synthetic_root(seed=1, size=32) == root
    assert json.loads(stamp.read_text())["version"] == synth.GENERATOR_VERSION
    assert list_categories(root / "synthetic_loco") == ["pins", "tray"]
    assert sorted(p.name for p in root.parent.iterdir()) == [root.name]  # no temporary folders left


def test_synth_cli_and_bad_arguments(tmp_path: Path, capsys) -> None:
    from adlib.app.cli import main

    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--seed", "0", "--size", "32",
                 "--datasets", "synthetic_loco", "--workers", "1"]) == 0
    assert "wrote synthetic_loco" in capsys.readouterr().out
    assert list_categories(tmp_path / "s" / "synthetic_loco") == ["pins", "tray"]
    with pytest.raises(ValueError, match="unknown synthetic dataset"):
        synth.generate(tmp_path / "t", datasets=("synthetic_nope",))
    with pytest.raises(ValueError, match="at least 32"):
        synth.generate(tmp_path / "t", size=8)
