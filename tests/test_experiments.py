"""adlib.experiments: settings, subsets, the grid runner and its table helpers, on tiny data."""
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from adlib import experiments


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    """A 32 px dataset in the MVTec layout: toy/{train/good, test/good, test/spot, ground_truth/spot}."""
    root = tmp_path_factory.mktemp("data") / "toyset"
    rng = np.random.default_rng(0)
    base = (rng.random((32, 32, 3)) * 40 + 100).astype(np.uint8)
    for i in range(4):
        _png(root / "toy" / "train" / "good" / f"{i:03d}.png", base + rng.integers(0, 5, base.shape, dtype=np.uint8))
    for i in range(2):
        _png(root / "toy" / "test" / "good" / f"{i:03d}.png", base)
        bad = base.copy()
        bad[10:16, 10:16] = 255
        mask = np.zeros((32, 32), np.uint8)
        mask[10:16, 10:16] = 255
        _png(root / "toy" / "test" / "spot" / f"{i:03d}.png", bad)
        _png(root / "toy" / "ground_truth" / "spot" / f"{i:03d}_mask.png", mask)
    return root


@pytest.fixture()
def setting(toy_root, tmp_path):
    base = experiments.resolve_setting(profile="smoke", synthetic=False, image_size=64, epochs=1,
                                       output_root=tmp_path / "out", max_train=3, max_test=4, batch_size=2)
    return dataclasses.replace(base, synthetic_root=toy_root.parent)


def test_spread_and_test_indices():
    assert experiments.spread(10, 3) == [0, 4, 9]  # round(4.5) is 4 (banker's rounding)
    assert experiments.spread(3, None) == [0, 1, 2]
    assert experiments.spread(3, 5) == [0, 1, 2]
    labels = [0] * 6 + [1] * 10
    picked = experiments.test_indices(labels, 6)
    assert len(picked) == 6 and sum(labels[i] for i in picked) == 3  # half defective
    assert experiments.test_indices([0, 0, 1], 2) == [0, 2]
    assert len(experiments.test_indices([0] + [1] * 9, 4)) == 4  # too few good images: fill with defective


def test_resolve_setting_defaults_and_errors(tmp_path):
    smoke = experiments.resolve_setting(synthetic=False)
    assert (smoke.image_size, smoke.backbone, smoke.max_train) == (256, "efficientnet_lite0", 40)
    paper = experiments.resolve_setting(profile="paper", synthetic=False, device="cuda")
    assert (paper.image_size, paper.backbone, paper.epochs, paper.max_train) == (1024, "dinov2_vits14", 10, None)
    assert experiments.resolve_setting(synthetic=False, image_size=128, epochs=2).epochs == 2
    with pytest.raises(ValueError, match="profile"):
        experiments.resolve_setting(profile="fast", synthetic=False)
    with pytest.raises(FileNotFoundError, match="data_root"):
        experiments.resolve_setting(data_root=tmp_path / "missing", synthetic=False)


def test_sources_and_capped_datasets(setting):
    (source,) = setting.synthetic_sources("toyset")
    assert source.name == "toyset/toy"
    with pytest.raises(ValueError, match="nothing"):
        setting.synthetic_sources("toyset", categories=["nothing"])
    train, test = experiments.datasets_for(source, setting)
    assert len(train) == 3 and len(test) == 4
    assert experiments.dataset_labels(test) == [0, 0, 1, 1]
    assert train[0]["image"].shape == (3, 64, 64)
    assert experiments.pick_examples(test, 1) == [2]


def test_run_grid_rows_skips_cache_and_keep(setting):
    sources = setting.synthetic_sources("toyset")
    runs, cache, log = {}, {}, []
    table = experiments.run_grid(setting, {"default": {}, "same": {}}, sources, models=("patchcore",),
                                 keep=runs, cache=cache, log=log.append)
    pixel = table[(table["level"] == "pixel") & (table["setting"] == "default")]
    assert set(pixel["metric"]) == {"auroc", "f1max", "ap"}
    assert pixel["value"].between(0, 100).all()
    assert set(table[table["level"] == "model"]["metric"]) == {"params_m", "train_s", "fps"}
    assert (table["data"].str.startswith("toyset/toy (3 train / 4 test images, 64px)")).all()
    same = table[table["setting"] == "same"].reset_index(drop=True)
    assert same["value"].equals(table[table["setting"] == "default"].reset_index(drop=True)["value"])
    assert "reused" in log[-1] and list(runs) == [("patchcore", "default", "toyset/toy")]
    preset_ratio = experiments.configs(setting, "patchcore")[0].coreset_ratio
    explicit = experiments.run_grid(setting, {"explicit": {"coreset_ratio": preset_ratio}}, sources,
                                    models=("patchcore",), cache=cache, log=log.append)
    assert "reused" in log[-1] and (explicit["setting"] == "explicit").all()

    skipped = experiments.run_grid(setting, {"lora": {"adapter": "lora"}, "told": {}}, sources,
                                   skip={"told": "not today"}, log=log.append)
    notes = skipped.groupby("setting")["note"].first()
    assert notes["told"] == "not today"
    assert "LoRA" in notes["lora"] or "ViT" in notes["lora"]
    assert skipped["value"].isna().all()
    net, fit = experiments.build(setting, "patchcore", epochs=3, coreset_ratio=0.5)
    assert fit.epochs == 3 and fit.seed == setting.seed and net.config.coreset_ratio == 0.5
    with pytest.raises(ValueError, match="unknown setting"):
        experiments.run_grid(setting, {"bad": {"no_such_field": 1}}, sources, models=("patchcore",))


def test_same_seed_same_numbers(setting):
    sources = setting.synthetic_sources("toyset")
    first = experiments.run_grid(setting, {"a": {"m": 1}}, sources, log=lambda *_: None)
    torch.rand(100)  # disturb the global random state between the runs
    second = experiments.run_grid(setting, {"a": {"m": 1}}, sources, log=lambda *_: None)
    quality = lambda t: t[t["level"] != "model"]["value"].tolist()
    assert quality(first) == quality(second)


def test_write_table_keeps_per_row_provenance(setting):
    df = pd.DataFrame([{"dataset": "x/y", "method": "VarAD", "setting": "default", "level": "pixel",
                        "metric": "auroc", "value": 90.0, "backbone": "b1", "data": "x/y (2 images)"}])
    path = setting.write_table(df, "unit")
    written = pd.read_csv(path)
    assert path == setting.output_root / "results" / "smoke" / "varad" / "unit.csv"
    assert written.loc[0, "profile"] == "smoke" and written.loc[0, "data"] == "x/y (2 images)"
    assert (path.parent / "unit.meta.json").exists()


def test_dataset_means_only_for_complete_datasets():
    rows = lambda cats: pd.DataFrame([{"dataset": f"MVTec AD/{c}", "method": "VarAD", "setting": "default",
                                       "level": "pixel", "metric": "auroc", "value": float(i), "backbone": "b",
                                       "data": c} for i, c in enumerate(cats)])
    partial = experiments.dataset_means(rows(["bottle"]))
    assert list(partial["dataset"]) == ["MVTec AD/bottle"]
    full = experiments.dataset_means(rows([f"c{i}" for i in range(15)]))
    mean = full[full["dataset"] == "MVTec AD"]
    assert len(mean) == 1 and mean["value"].iloc[0] == pytest.approx(7.0)


def test_trend_and_best():
    df = pd.DataFrame([{"dataset": "hr/a", "method": "VarAD", "setting": f"res={r}", "level": "pixel",
                        "metric": "f1max", "value": v} for r, v in ((512, 30.0), (128, 10.0), (256, 20.0))] +
                      [{"dataset": "hr/b", "method": "VarAD", "setting": f"res={r}", "level": "pixel",
                        "metric": "f1max", "value": v} for r, v in ((512, 15.0), (128, 10.0), (256, 20.0))])
    trend = experiments.trend(df)
    assert list(trend.columns[:3]) == [128.0, 256.0, 512.0]
    assert bool(trend.loc["hr/a", "rises"]) and not bool(trend.loc["hr/b", "rises"])
    assert trend.loc["hr/a", "change"] == 20.0 and trend.loc["hr/b", "change"] == 5.0
    best = experiments.best(df)
    assert list(best["best setting"]) == ["res=512", "res=256"]


def test_hierarchy_variants_keep_default_unchanged():
    variants = experiments.hierarchy_variants("dinov2_vits14")
    assert variants["layers=4+8+12"] == {} and variants["layers=8"] == {"layers": (8,)}
    assert len(variants) == 7
    assert "layers=2+3+4" in experiments.hierarchy_variants("efficientnet_lite0")


def test_open_choices_reads_config_comments():
    table = experiments.open_choices("varad")
    row = table.set_index("field").loc["m"]
    assert row["adlib"] == "4" and "paper" in row["note"].lower()
    from adlib.models import model_profile

    smoke = experiments.resolve_setting(synthetic=False)
    used = experiments.open_choices("varad", smoke).set_index("field")
    assert used.loc["m", "adlib"] == repr(model_profile("varad", "smoke").model.m)


def test_partial_map_with_everything_is_the_full_map():
    from adlib.models import create_model

    torch.manual_seed(0)
    model = create_model("varad", image_size=64, m=1).eval()
    out = model.explain(torch.rand(2, 3, 64, 64))
    torch.testing.assert_close(experiments.partial_map(model, out, 1), out["map"][1])
    one = experiments.partial_map(model, out, 1, directions=["row_tl"], hierarchies=[0])
    assert one.shape == (64, 64) and not torch.allclose(one, out["map"][1])
    with pytest.raises(ValueError):
        experiments.partial_map(model, out, 0, hierarchies=[])
