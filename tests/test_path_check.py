"""The paper profile's path check (issue 20): check profiles and their cuts, stand-in datasets in each real layout
read back by adlib's readers, the random-weight fallback and frozen-output memo (path checks only), labels on
every output, not-run rows with reasons, the empty-figure panel, the plan and the runner's check mode."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from adlib import backbones, engine, papers, plots, study
from adlib.data import AnomalyDataset, detect_layout, list_categories, standins
from adlib.study import claims, grid
from adlib.study.spec import PATH_CHECK, PATH_CHECK_CUTS, base_profile, is_check

VARAD = papers.get("varad")
LADMIM = papers.get("ladmim")


@pytest.fixture(autouse=True)
def _real_weights_only_outside_a_check(monkeypatch):
    """resolve_setting(profile="paper-check") turns on process-wide switches; every test leaves them off."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("ADLIB_DATA", raising=False)
    yield
    backbones.allow_random_weights(None)
    backbones.memoize_frozen(0)
    backbones.RANDOM_WEIGHTS.clear()
    grid._CHECK_FITTED.clear()


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A data root with a tiny real-layout MVTec AD `bottle` and a derived LOCO subset `juice_bottle` (no
    structural anomalies, non-square images), as ../shared/data holds them."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    bottle = root / "mvtec_ad" / "bottle"
    for split, n in (("train/good", 4), ("test/good", 2)):
        for i in range(n):
            _png(bottle / split / f"{i:03d}.png", (rng.random((48, 48, 3)) * 255).astype(np.uint8))
    mask = np.zeros((48, 48), np.uint8)
    mask[10:20, 10:20] = 255
    for i in range(2):
        _png(bottle / "test" / "broken_large" / f"{i:03d}.png", (rng.random((48, 48, 3)) * 255).astype(np.uint8))
        _png(bottle / "ground_truth" / "broken_large" / f"{i:03d}_mask.png", mask)
    subset = root / standins.LOCO_SUBSET / "juice_bottle"
    for split, n in (("train/good", 4), ("validation/good", 2), ("test/good", 2)):
        for i in range(n):
            _png(subset / split / f"{i:03d}.png", (rng.random((64, 32, 3)) * 255).astype(np.uint8))
    for i in range(2):
        _png(subset / "test" / "logical_anomalies" / f"{i:03d}.png", (rng.random((64, 32, 3)) * 255).astype(np.uint8))
        _png(subset / "ground_truth" / "logical_anomalies" / f"{i:03d}" / "000.png", np.where(
            np.arange(64 * 32).reshape(64, 32) % 7 == 0, 255, 0).astype(np.uint8))
    (subset.parent / "SOURCE.md").write_text("a derived subset\n")
    return root


@pytest.fixture(scope="module")
def standin_root(tmp_path_factory, data_root) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("ADLIB_CACHE")
    os.environ["ADLIB_CACHE"] = str(cache)
    try:
        return standins.standin_root(standins.standin_folders(), categories=2, data_root=data_root)
    finally:
        if old is None:
            os.environ.pop("ADLIB_CACHE")
        else:
            os.environ["ADLIB_CACHE"] = old


# ------------------------------------------------------------------------------------------------ profiles
def test_check_profile_is_the_paper_profile_with_the_scale_cut():
    assert base_profile("paper-check") == "paper" and is_check("paper-check") and not is_check("paper")
    paper, check = VARAD.profile("paper"), VARAD.profile("paper-check")
    # the code path is the paper's: resolution, backbone, grids, settings and protocol unchanged
    for field in ("image_size", "backbone", "paper_backbone", "grids", "real_datasets", "class_setting", "protocol",
                  "hr_size", "shared_backbone"):
        assert getattr(check, field) == getattr(paper, field), field
    assert (check.max_train, check.max_test, check.seeds) == (2, 3, (0,))
    assert check.synthetic_categories == PATH_CHECK_CUTS.categories
    assert PATH_CHECK.upper() in check.description
    assert VARAD.recipe("varad", "paper-check") is VARAD.recipe("varad", "paper")
    with pytest.raises(ValueError, match="paper-check"):
        VARAD.profile("fast-check")


def test_check_setting_caps_hold_whatever_a_notebook_passes(data_root, standin_root, monkeypatch):
    monkeypatch.setenv("ADLIB_CACHE", str(standin_root.parent.parent))
    setting = study.resolve_setting(LADMIM, profile="paper-check", data_root=data_root, synthetic=False,
                                    max_train=None, max_test=None, seeds=[3, 4, 5])
    assert setting.is_check and setting.base_profile == "paper" and setting.profile == "paper-check"
    assert (setting.max_train, setting.max_test, setting.seeds) == (2, 3, (3,))
    config, fit = study.configs(setting, "ladmim")
    assert fit.max_steps == 1 and fit.stages["tokenizer"]["epochs"] == 1000  # the paper's recipe, one step per stage
    sources = setting.real_sources(["mvtec_loco"])
    assert [s.category for s in sources] == ["breakfast_box", "juice_bottle"] and all(s.standin for s in sources)
    wide = dataclasses.replace(setting, max_train=None, max_test=None)  # a grid's override of the caps
    train, test = study.datasets_for(sources[0], wide, image_size=32)
    assert len(train) == 2 and len(test) == 3
    assert "LOCO" in setting.describe() or "stand-in" in setting.describe()


def test_plain_paper_setting_reports_missing_datasets(data_root):
    setting = study.resolve_setting(VARAD, profile="paper", data_root=data_root, synthetic=False)
    sources = setting.real_sources()
    assert [s.name for s in sources] == ["MVTec AD/bottle"]
    missing = {m.folder: m.reason for m in sources.missing}
    assert sorted(missing) == ["btad", "dtd_synthetic", "visa"]
    assert str(data_root) in missing["visa"] and "python -m adlib data download visa" in missing["visa"]
    assert "split_csv/1cls.csv" in missing["visa"]  # the layout expected
    assert missing == {m.folder: m.reason for m in setting.missing_sources()}
    assert (sources + setting.real_sources(["mvtec_loco"])).missing[-1].folder == "mvtec_loco"


# ------------------------------------------------------------------------------------------------ stand-ins
@pytest.mark.parametrize("folder, layout", [("mvtec_ad", "mvtec"), ("visa", "mvtec"), ("btad", "btad"),
                                            ("mvtec_loco", "mvtec_loco"), ("dtd_synthetic", "mvtec")])
def test_standins_are_read_back_by_adlibs_readers(standin_root, folder, layout):
    categories = list_categories(standin_root / folder)
    assert categories == sorted(standins.DATASETS[folder].categories)
    for category in categories:
        assert detect_layout(standin_root / folder / category).name == layout
        train = AnomalyDataset(standin_root / folder, category, "train", image_size=64)
        test = AnomalyDataset(standin_root / folder, category, "test", image_size=64)
        assert len(train) >= 2 and 0 in test.labels and 1 in test.labels
        bad = test[test.labels.index(1)]
        assert bad["mask"].sum() > 0 and train[0]["image"].shape == (3, 64, 64)


def test_standin_layout_details(standin_root, data_root):
    raw = standin_root / "visa_raw"
    rows = (raw / "split_csv" / "1cls.csv").read_text().splitlines()
    assert rows[0] == "object,split,label,image,mask" and any(",anomaly," in r for r in rows)
    assert any(p.suffix == ".JPG" for p in raw.rglob("*"))  # VisA ships JPEGs; the converter copies them
    assert list((standin_root / "btad" / "03" / "ground_truth" / "ko").glob("*.bmp"))  # class 03: BMP masks
    assert Image.open(next((standin_root / "mvtec_ad" / "screw" / "train" / "good").glob("*.png"))).mode == "L"
    loco = standin_root / "mvtec_loco"
    structural = AnomalyDataset(loco, "breakfast_box", "test").groups
    assert {"good", "logical", "structural"} <= set(structural)
    masks = list((loco / "breakfast_box" / "ground_truth" / "logical_anomalies").rglob("*.png"))
    assert set(np.unique(np.asarray(Image.open(masks[0])))) <= {0, 242}  # a defect-type value, not 255
    # juice_bottle comes from the derived subset when the data root has it: its real (non-square) images
    juice = AnomalyDataset(loco, "juice_bottle", "test")
    assert juice[0]["image"].shape[-2:] == (64, 32) and "structural" not in juice.groups
    assert "derived subset" in standins.describe("mvtec_loco", standin_root)
    stamp = json.loads((standin_root / standins.STAMP_NAME).read_text())
    assert stamp["loco_subset"] and stamp["datasets"]["visa"] == ["candle", "capsules"]


def test_missing_reason_names_where_layout_and_how():
    text = standins.missing_reason("btad", "/data")
    assert "no btad/ under /data" in text and "ground_truth/ko" in text and "adlib data download btad" in text
    assert "no reader" in standins.missing_reason("real_iad", "/data")


# ------------------------------------------------------------------------------------------------ weights
def test_random_weights_only_in_a_check_and_the_same_every_time():
    with pytest.raises(backbones.WeightsUnavailableError, match="resnet18"):
        backbones.create("resnet18")
    backbones.allow_random_weights(PATH_CHECK)
    first, second = backbones.create("resnet18"), backbones.create("resnet18")
    torch.testing.assert_close(first.model.conv1.weight, second.model.conv1.weight)
    assert first.weights_id.startswith("random:resnet18") and first.identity is not None
    assert "resnet18" in backbones.RANDOM_WEIGHTS
    assert any("RANDOM" in key for key in backbones.LOADED_WEIGHTS)  # run records name the substitution
    assert "random weights: path check" in backbones.random_weights_label("resnet18")
    backbones.allow_random_weights(None)
    with pytest.raises(backbones.WeightsUnavailableError):
        backbones.create("resnet18")


def test_frozen_outputs_are_kept_per_input_when_the_memo_is_on(monkeypatch):
    backbones.allow_random_weights(PATH_CHECK)
    extractor = backbones.create("resnet18")
    calls = []
    forward = extractor._forward
    monkeypatch.setattr(extractor, "_forward", lambda images: calls.append(1) or forward(images))
    images = torch.rand(1, 3, 64, 64)
    backbones.memoize_frozen(64)
    with torch.no_grad():
        a, b = extractor(images), extractor(images)
        extractor(torch.rand(1, 3, 64, 64))
    assert len(calls) == 2 and all(torch.equal(x, y) for x, y in zip(a, b))
    with torch.enable_grad():
        extractor(images)  # gradients on: never from the memo
    assert len(calls) == 3
    pair = torch.rand(2, 3, 64, 64)
    with torch.no_grad():  # kept per image: each image of a batch is found again alone, and in another batch
        whole = extractor(pair)
        alone = extractor(pair[1:])
        mixed = extractor(torch.cat([pair[1:], images]))
    assert len(calls) == 4
    assert all(torch.equal(w[1:], a) for w, a in zip(whole, alone))
    assert all(torch.equal(m[1], x[0]) for m, x in zip(mixed, a))
    random = backbones.create("resnet18", pretrained=False)  # a run's own random weights: no identity, no memo
    assert random.identity is None and random._memo_keys(images) is None


# ------------------------------------------------------------------------------------------------ engine
def test_max_steps_stops_each_stage_after_that_many_optimiser_steps():
    from test_engine import Blobs, make_model

    steps = []
    model = make_model()
    loss = model.loss
    model.loss = lambda features: steps.append(1) or loss(features)
    result = engine.fit(model, Blobs(8), engine.FitConfig(epochs=5, batch_size=2, progress=False, max_steps=1))
    assert len(steps) == 1 and result.epochs == 1
    steps.clear()
    engine.fit(model, Blobs(8), engine.FitConfig(epochs=2, batch_size=2, progress=False))
    assert len(steps) == 8


# ------------------------------------------------------------------------------------------------ grids
def test_run_grid_without_sources_writes_not_run_rows_with_the_reasons(data_root):
    setting = study.resolve_setting(LADMIM, profile="paper", data_root=data_root, synthetic=False)
    sources = setting.real_sources(["mvtec_loco"])
    table = study.run_grid(setting, {"default": {}, "m=2": {}}, sources, models=("ladmim", "patchcore"),
                           seeds=(0, 1), log=lambda *a: None)
    assert table["value"].isna().all() and set(table["dataset"]) == {"MVTec LOCO"}
    assert set(table["setting"]) == {"default", "m=2"} and set(table["level"]) == {"image", "pixel", "summary"}
    assert table["note"].str.contains("no mvtec_loco/ under").all()
    assert table["note"].str.contains("adlib data download mvtec_loco").all()
    verdicts = claims.check(setting, table.assign(method="LADMIM"), ["mim_catches_logical"], save=False)
    assert (verdicts["verdict"] == "not run").all()


def test_check_grid_runs_every_variant_once_and_every_dataset_once(data_root, standin_root, monkeypatch, tmp_path):
    monkeypatch.setenv("ADLIB_CACHE", str(standin_root.parent.parent))
    setting = study.resolve_setting(VARAD, profile="paper-check", data_root=data_root, synthetic=False,
                                    output_root=tmp_path)
    tried = []

    def fake_run_one(setting, group, model, label, **kwargs):
        tried.append((label, tuple(s.name for s in group)))
        raise ValueError("not fitted in this test")

    monkeypatch.setattr(grid, "run_one", fake_run_one)
    sources = setting.real_sources()
    variants = {"a": {}, "b": {"adapter": "lora"}, "m=2": {"m": 2}, "m=3": {"m": 3},
                "vit": {"backbone": "vit_b16"}, "vit-l": {"backbone": "dinov2_vitl14"}, "cnn": {"backbone": "resnet18"},
                "c": {"adapter": "resblock"}, "b+c": {"adapter": "lora+resblock"}, "b+x": {"adapter": "lora+linear"}}
    table = study.run_grid(setting, variants, sources, log=lambda *a: None)
    first = sources[0].name
    # the default ("a": m=4, the DINOv2 ViT-S, the linear adapter) stands for other numbers and other ViTs, and
    # "lora" with "linear" (a's adapter) and "resblock" for their combinations
    assert {label for label, names in tried if names == (first,)} == {"a", "b", "cnn", "c"}
    ran_with_a = {names[0] for label, names in tried if label == "a"}
    assert ran_with_a == {"MVTec AD/bottle", "VisA/candle", "BTAD/01", "DTD-Synthetic/Blotchy_099"}
    assert not any(label != "a" and names[0] != first for label, names in tried)
    notes = table.drop_duplicates(["dataset", "setting"]).set_index(["dataset", "setting"])["note"]
    assert notes[("VisA/capsules", "a")] == grid.ONE_CATEGORY and notes[("VisA/candle", "b")] == grid.COVERING
    assert notes[(first, "m=3")] == grid.SAME_CODE.format(label="a")  # same code, other numbers (CPU)
    assert notes[(first, "vit-l")] == grid.SAME_CODE.format(label="a")  # another ViT: the same extractor code
    assert notes[(first, "b+c")] == grid.COMBINED.format(labels="b, c")
    assert notes[(first, "b+x")] == grid.COMBINED.format(labels="b, a")
    # of the same code, the default configuration runs (other notebooks run it: a run-cache hit), wherever it is
    later = grid.same_code_as(setting, {"m=1": {"m": 1}, "m=4": {"m": 4}, "vit-b": {"backbone": "vit_b16"},
                                        "vit-s": {"backbone": "dinov2_vits14"}})
    assert later == {"m=1": grid.SAME_CODE.format(label="m=4"), "vit-b": grid.SAME_CODE.format(label="m=4"),
                     "vit-s": grid.SAME_CODE.format(label="m=4")}
    tried.clear()  # the grid's first variant left out as the same code as the default: the default reads the rest
    study.run_grid(setting, {"vit-b": {"backbone": "vit_b16"}, "a": {}}, sources, log=lambda *a: None)
    assert {label for label, _ in tried} == {"a"} and {names[0] for _, names in tried} == ran_with_a
    tried.clear()
    study.run_grid(dataclasses.replace(setting, device="cuda"), variants, sources[:1], log=lambda *a: None)
    assert {label for label, _ in tried} == set(variants)  # a GPU check runs every variant
    tried.clear()
    models = []
    monkeypatch.setattr(grid, "run_one", lambda s, g, model, label, **k: models.append((model, g[0].name)) or
                        fake_run_one(s, g, model, label))
    study.run_grid(setting, None, sources, models=("varad", "patchcore"), log=lambda *a: None)
    assert ("patchcore", first) in models and not any(m == "patchcore" and n != first for m, n in models)


def test_check_fits_each_data_source_once_per_check_run(data_root, standin_root, monkeypatch, tmp_path):
    monkeypatch.setenv("ADLIB_CACHE", str(standin_root.parent.parent))
    setting = study.resolve_setting(VARAD, profile="paper-check", data_root=data_root, synthetic=False,
                                    output_root=tmp_path)
    sources = setting.real_sources()
    fitted = []

    class FakeRun:
        def __init__(self, group):
            self.group = group

        def rows(self, metrics):
            return [{"dataset": self.group[0].name, "method": "VarAD", "setting": "x", "level": "pixel",
                     "metric": "auroc", "value": 50.0}]

        evaluation = type("E", (), {"pixel": {}, "image": {}})()
        seconds = 0.0
        fit_from = "trained"

    def fake_run_one(setting, group, model, label, **kwargs):
        fitted.append((label, group[0].name))
        return FakeRun(group)

    monkeypatch.setattr(grid, "run_one", fake_run_one)
    study.run_grid(setting, {"a": {}}, sources, log=lambda *a: None)
    assert len(fitted) == 4  # one category of each of the four datasets
    fitted.clear()
    grid._CHECK_FITTED.clear()  # another notebook of the same check run: a new process, the same results folder
    study.run_grid(setting, {"other": {"m": 2}}, sources, log=lambda *a: None)
    assert fitted == [("other", sources[0].name)]  # the other sources ran in this check run already
    fitted.clear()
    grid._CHECK_FITTED.clear()
    study.run_grid(setting, {"p": {}}, sources, models=("patchcore",), log=lambda *a: None)
    assert fitted == [("p", sources[0].name)]  # whatever model read them: their readers ran
    grid._CHECK_FITTED.clear()
    (tmp_path / "results" / "paper-check" / grid.CHECK_FITTED_FILE).write_text(
        '[["mambaad", ["VisA/candle", "VisA/capsules"]]]')  # read in a multi-class group
    fitted.clear()
    study.run_grid(setting, {"q": {}}, [sources[0], *(s for s in sources if s.dataset == "VisA")], log=lambda *a: None)
    assert fitted == [("q", sources[0].name)]
    (tmp_path / "results" / "paper-check" / grid.CHECK_FITTED_FILE).unlink()  # what `reproduce --check` does first
    fitted.clear()
    study.run_grid(setting, {"other": {"m": 2}}, sources, log=lambda *a: None)
    assert len(fitted) == 4


# ------------------------------------------------------------------------------------------------ labels
def test_every_output_of_a_check_says_it_is_not_results(data_root, standin_root, tmp_path, monkeypatch):
    monkeypatch.setenv("ADLIB_CACHE", str(standin_root.parent.parent))
    setting = study.resolve_setting(VARAD, profile="paper-check", data_root=data_root, synthetic=False,
                                    output_root=tmp_path)
    rows = pd.DataFrame([{"dataset": "MVTec AD", "method": "VarAD", "setting": "default", "level": "pixel",
                          "metric": "auroc", "value": 90.0, "backbone": "dinov2_vits14", "image_size": 1024,
                          "protocol": "exact", "class_setting": "one-class", "seed": 0}])
    path = setting.write_table(rows, "table2")
    assert path.parent == tmp_path / "results" / "paper-check" / "varad"
    assert set(pd.read_csv(path)["path_check"]) == {PATH_CHECK}
    meta = json.loads(path.with_name("table2.meta.json").read_text())
    assert meta["data"].startswith(PATH_CHECK.upper()) and meta["params"]["path_check"] == PATH_CHECK
    fig = plots.nothing_to_draw("x", "y")
    figure = setting.save_figure(fig, "fig3", data="d")
    assert figure.parent == tmp_path / "figures" / "paper-check" / "varad"
    assert any(PATH_CHECK.upper() in t.get_text() for t in fig.texts)
    view = study.paper_vs_ours(setting, "table2", rows, ["VarAD"])
    assert view["no Δ because"].str.contains(PATH_CHECK).all() and not view.astype(str).apply(
        lambda c: c.str.contains("Δ ")).any().any()
    verdicts = claims.not_run(setting, ["pixel_beats_patchcore"], "x", save=False)
    assert verdicts["note"].str.startswith(PATH_CHECK.upper()).all()
    assert not (tmp_path / "results" / "paper").exists()


def test_nothing_to_draw_panel_says_what_is_missing():
    fig = plots.nothing_to_draw("Fig. 3: anomaly maps", ["VisA is missing: get it", "weights missing"])
    text = "\n".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert "Fig. 3: anomaly maps: nothing to draw" in text and "VisA is missing" in text
    fig = plots.or_missing(plots.anomaly_map_grid, [], None, {}, missing="no data here", title="Fig. 6")
    text = "\n".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert "no data here" in text and "no images given" in text
    drawn = plots.or_missing(plots.anomaly_map_grid, [torch.rand(3, 8, 8)], None, {}, missing="unused")
    assert drawn.axes[0].images  # something to draw: drawn as usual
    table = pd.DataFrame({"value": [np.nan, 1.0], "note": ["why", ""]})
    assert plots.not_run_reasons(table) == ["why"]


# ------------------------------------------------------------------------------------------------ plan, runner
def test_plan_lists_needs_missing_data_weights_and_gpu_hours(data_root, monkeypatch):
    from adlib.app import plan, reproduce

    notebooks = reproduce.discover(Path(__file__).resolve().parents[1] / "notebooks", only="varad/0[23]*")
    text = plan.plan_text(notebooks, "paper", str(data_root))
    assert "varad/02_main_results" in text and "varad/03_ablations" in text
    assert "MVTec AD: here, 1 of the paper's 15 categories (bottle)" in text
    assert f"VisA: MISSING (no visa/ under {data_root}); get it: python -m adlib data download visa" in text
    assert "dinov2_vits14: MISSING" in text and "HF_HOME" in text  # the how-to-get, once at the end
    # 27 variants x 3 seeds x (15 + 12 + 3 + 12) categories at 389 s each (Fig. 7)
    assert "27 variant(s) x 3 seed(s) x 42 category(ies) = 3402 fits" in text
    assert "not stated for patchcore" in text
    assert "the path check stands in" in plan.plan_text(notebooks, "paper", str(data_root), check=True)


def test_reproduce_check_mode_names_and_guards(tmp_path):
    from adlib.app import reproduce

    config = reproduce.ReproduceConfig(profile="paper", check=True, output_root=tmp_path)
    assert config.run_profile == "paper-check"
    assert config.executed_dir == tmp_path / "results" / "paper-check" / "executed"
    with pytest.raises(ValueError, match="no path check"):
        reproduce.ReproduceConfig(profile="smoke", check=True)
    summary = reproduce.Summary([reproduce.Outcome("varad/00", "ok", 12.5)], 13.0,
                                check=reproduce.path_check_label("paper-check"))
    assert summary.text().startswith(PATH_CHECK.upper()) and "12.5 s  ok       varad/00" in summary.text()
    assert reproduce.path_check_label("paper") is None


def test_report_of_a_check_opens_with_the_warning(tmp_path):
    from adlib.app import report

    text = "\n".join(report.render_markdown(report._intro_blocks([], "paper-check")))
    assert PATH_CHECK.upper() in text and "none is a measurement" in text
    assert PATH_CHECK.upper() not in "\n".join(report.render_markdown(report._intro_blocks([], "paper")))
    path = report.build_report(tmp_path, "paper-check", notebook_root=tmp_path / "none", papers=[])
    assert PATH_CHECK.upper() in path.read_text()


def test_the_paper_profile_never_writes_over_the_printed_numbers(tmp_path, capsys):
    import argparse

    from adlib.app import reproduce

    parser = argparse.ArgumentParser()
    reproduce.add_arguments(parser)
    printed = tmp_path / "results" / "paper" / "varad"
    printed.mkdir(parents=True)
    (printed / "table2.csv").write_text("dataset,method,setting,level,metric,value\n")
    args = parser.parse_args(["--profile", "paper", "--output-root", str(tmp_path), "--only", "varad/02*"])
    config = reproduce.config_from_args(args)
    config.paper_root = tmp_path  # the repository's results/paper/ holds the papers' printed numbers
    assert reproduce._main(args, config) == 2
    assert "printed numbers" in capsys.readouterr().err
    assert (printed / "table2.csv").read_text().startswith("dataset")  # untouched
    args = parser.parse_args(["--profile", "paper", "--check", "--plan", "--only", "varad/02*"])
    assert reproduce._main(args, reproduce.config_from_args(args)) == 0
    out = capsys.readouterr().out
    assert "profile paper-check" in out and "varad/02_main_results" in out


def test_speed_rows_leave_out_what_a_cpu_check_runs_as_the_same_code(data_root, monkeypatch, tmp_path):
    from adlib.study import cost

    measured = []
    monkeypatch.setattr(cost, "speed", lambda setting, model, images=1, **o: measured.append(o["backbone"]) or
                        {"params_m": 1.0, "flops_g": 2.0, "fps": 3.0})
    variants = {"b16": {"backbone": "vit_b16"}, "l14": {"backbone": "dinov2_vitl14"}, "r18": {"backbone": "resnet18"}}
    check = study.resolve_setting(VARAD, profile="paper-check", data_root=data_root, synthetic=False,
                                  output_root=tmp_path)
    rows = study.speed_rows(check, "varad", variants)
    assert measured == ["vit_b16", "resnet18"] and len(rows) == 9
    left_out = rows[rows["setting"] == "l14"]
    assert left_out["value"].isna().all() and (left_out["note"] == grid.SAME_CODE.format(label="b16")).all()
    assert set(rows.loc[rows["setting"] == "r18", "value"]) == {1.0, 2.0, 3.0}
    measured.clear()
    rows = study.speed_rows(dataclasses.replace(check, device="cuda"), "varad", variants)  # a GPU check: all
    assert measured == ["vit_b16", "dinov2_vitl14", "resnet18"] and rows["value"].notna().all()


def test_check_runs_that_differ_only_in_a_batch_larger_than_the_data_share_one_fit(data_root, monkeypatch, tmp_path):
    monkeypatch.setenv("ADLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ADLIB_RUN_CACHE", "1")
    setting = study.resolve_setting(VARAD, profile="paper-check", data_root=data_root, synthetic=False,
                                    output_root=tmp_path, image_size=112)
    source = setting.real_sources()[0]
    first = study.run_one(setting, [source], "varad", "batch 8", batch_size=8)
    again = study.run_one(setting, [source], "varad", "batch 2", batch_size=2)  # 2 training images: the same batch
    other = study.run_one(setting, [source], "varad", "batch 1", batch_size=1)
    assert first.fit_config.batch_size == 2 and first.fit_from == "trained"
    assert again.fit_from == "cache" and again.evaluation_from == "cache"
    assert other.fit_config.batch_size == 1 and other.fit_from == "trained"


def test_a_cpu_check_runs_two_notebooks_at_a_time_unless_told(monkeypatch):
    import argparse

    from adlib.app import reproduce

    parser = argparse.ArgumentParser()
    reproduce.add_arguments(parser)
    monkeypatch.setattr(reproduce.os, "cpu_count", lambda: 2)
    jobs = lambda *argv: reproduce.config_from_args(parser.parse_args(["--profile", "paper", *argv])).jobs
    assert jobs("--check") == 2 and jobs() == 1 and jobs("--check", "--jobs", "1") == 1
    assert jobs("--check", "--device", "cuda") == 1
    monkeypatch.setattr(reproduce.os, "cpu_count", lambda: 1)
    assert jobs("--check") == 1
