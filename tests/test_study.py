"""adlib.study: settings, subsets, the grid runner (one-class, multi-class, seeds, protocols), tables, claims."""
import ast
import re
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from adlib import papers, study
from adlib.study import claims
from adlib.study.spec import Claim, Side

VARAD = papers.get("varad")


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    """32 px datasets in the MVTec layout: toyset/{toy,other}/{train/good, test/good, test/spot, ground_truth/spot}."""
    root = tmp_path_factory.mktemp("data") / "toyset"
    rng = np.random.default_rng(0)
    for cat, level in (("toy", 100), ("other", 60)):
        base = (rng.random((32, 32, 3)) * 40 + level).astype(np.uint8)
        for i in range(4):
            _png(root / cat / "train" / "good" / f"{i:03d}.png", base + rng.integers(0, 5, base.shape, dtype=np.uint8))
        for i in range(2):
            _png(root / cat / "test" / "good" / f"{i:03d}.png", base)
            bad = base.copy()
            bad[10:16, 10:16] = 255
            mask = np.zeros((32, 32), np.uint8)
            mask[10:16, 10:16] = 255
            _png(root / cat / "test" / "spot" / f"{i:03d}.png", bad)
            _png(root / cat / "ground_truth" / "spot" / f"{i:03d}_mask.png", mask)
    return root


@pytest.fixture()
def setting(toy_root, tmp_path):
    base = study.resolve_setting(VARAD, profile="smoke", synthetic=False, image_size=64, epochs=1,
                                 output_root=tmp_path / "out", max_train=3, max_test=4, batch_size=2)
    return dataclasses.replace(base, synthetic_root=toy_root.parent)


def test_spread_and_test_indices():
    assert study.spread(10, 3) == [0, 4, 9]  # round(4.5) is 4 (banker's rounding)
    assert study.spread(3, None) == [0, 1, 2]
    assert study.spread(3, 5) == [0, 1, 2]
    labels = [0] * 6 + [1] * 10
    picked = study.test_indices(labels, 6)
    assert len(picked) == 6 and sum(labels[i] for i in picked) == 3  # half defective
    assert study.test_indices([0, 0, 1], 2) == [0, 2]
    assert len(study.test_indices([0] + [1] * 9, 4)) == 4  # too few good images: fill with defective


def test_resolve_setting_defaults_and_errors(tmp_path):
    smoke = study.resolve_setting(VARAD, synthetic=False)
    assert (smoke.image_size, smoke.backbone, smoke.max_train, smoke.seeds) == (256, "efficientnet_lite0", 40, (0, 1, 2))
    assert "for the paper's dinov2_vits14" in smoke.backbone_label() and smoke.substitution
    paper = study.resolve_setting(VARAD, profile="paper", synthetic=False, device="cuda")
    assert (paper.image_size, paper.backbone, paper.max_train) == (1024, "dinov2_vits14", None)
    assert paper.substitution == "" and paper.backbone_label() == "dinov2_vits14"
    assert study.resolve_setting(VARAD, synthetic=False, image_size=128, epochs=2).epochs == 2
    with pytest.raises(ValueError, match="profile"):
        study.resolve_setting(VARAD, profile="fast", synthetic=False)
    with pytest.raises(FileNotFoundError, match="data_root"):
        study.resolve_setting(VARAD, data_root=tmp_path / "missing", synthetic=False)
    with pytest.raises(ValueError, match="epochs"):
        study.resolve_setting(VARAD, synthetic=False, epochs=-1)
    with pytest.raises(ValueError, match="class_setting"):
        study.resolve_setting(VARAD, synthetic=False, class_setting="several")
    with pytest.raises(TypeError, match="PaperSpec"):
        study.resolve_setting("varad", synthetic=False)


def test_unknown_category_is_an_error_naming_what_exists(toy_root, tmp_path, monkeypatch):
    (tmp_path / "real" / "mvtec_ad").mkdir(parents=True)
    import shutil

    shutil.copytree(toy_root / "toy", tmp_path / "real" / "mvtec_ad" / "toy")
    assert study.resolve_setting(VARAD, synthetic=False, data_root=tmp_path / "real", category="toy").category == "toy"
    with pytest.raises(ValueError, match="nosuch.*known categories: toy"):
        study.resolve_setting(VARAD, synthetic=False, data_root=tmp_path / "real", category="nosuch")


def test_sources_and_capped_datasets(setting):
    (source,) = setting.synthetic_sources("toyset", categories=["toy"])
    assert source.name == "toyset/toy" and source.synthetic
    with pytest.raises(ValueError, match="nothing"):
        setting.synthetic_sources("toyset", categories=["nothing"])
    assert [s.category for s in setting.synthetic_sources("toyset", limit=None)] == ["other", "toy"]
    train, test = study.datasets_for(source, setting)
    assert len(train) == 3 and len(test) == 4
    assert study.dataset_labels(test) == [0, 0, 1, 1]
    assert train[0]["image"].shape == (3, 64, 64) and train[0]["category"] == "toy"
    assert study.pick_examples(test, 1) == [2]


def test_recipes_come_from_the_paper_and_the_setting_applies(setting):
    config, fit = study.configs(setting, "varad", seed=3, m=1)
    recipe = VARAD.recipe("varad", "smoke")
    assert config.d_state == recipe.model["d_state"] and config.m == 1 and config.image_size == 64
    assert fit.seed == 3 and fit.epochs == 1 and fit.batch_size == 2 and not fit.progress
    pc, _ = study.configs(setting, "patchcore", seed=5)
    assert pc.coreset_ratio == VARAD.recipe("patchcore", "smoke").model["coreset_ratio"] and pc.seed == 5
    assert pc.backbone == "efficientnet_lite0"  # smoke: one shared backbone
    paper = dataclasses.replace(setting, profile="paper", backbone="dinov2_vits14", image_size=64)
    assert study.configs(paper, "patchcore")[0].backbone == "wide_resnet50"  # paper: the peer keeps its own
    with pytest.raises(ValueError, match="unknown setting"):
        study.configs(setting, "varad", no_such_field=1)


def test_run_grid_rows_seeds_skips_cache_and_keep(setting):
    sources = setting.synthetic_sources("toyset", categories=["toy"])
    runs, cache, log = {}, {}, []
    table = study.run_grid(setting, {"default": {}, "same": {}}, sources, models=("patchcore",), seeds=(0, 1),
                           keep=runs, cache=cache, log=log.append)
    pixel = table[(table["level"] == "pixel") & (table["setting"] == "default")]
    assert set(pixel["metric"]) == {"auroc", "f1max", "ap", "aupro"} and set(pixel["seed"]) == {0, 1}
    assert pixel["value"].between(0, 100).all()
    assert set(table[table["level"] == "model"]["metric"]) == {"params_m", "train_s", "fps"}
    assert set(table["protocol"]) == {"exact", ""} and set(table["class_setting"]) == {"one-class"}
    assert (table["data"].str.startswith("toyset/toy (synthetic, 3 train / 4 test images, 64px)")).all()
    assert (table[table["level"] == "summary"]["metric"] == "mad").all()
    same = table[table["setting"] == "same"].reset_index(drop=True)
    assert same["value"].equals(table[table["setting"] == "default"].reset_index(drop=True)["value"])
    assert "reused" in log[-1] and set(runs) == {("patchcore", "default", "toyset/toy", 0),
                                                 ("patchcore", "default", "toyset/toy", 1)}
    skipped = study.run_grid(setting, {"lora": {"adapter": "lora"}, "told": {}}, sources, skip={"told": "not today"},
                             log=log.append)
    notes = skipped.groupby("setting")["note"].first()
    assert notes["told"] == "not today" and ("LoRA" in notes["lora"] or "ViT" in notes["lora"])
    assert skipped["value"].isna().all()


def test_calibration_set_follows_the_models_calibration_split(setting):
    from torch.utils.data import ConcatDataset

    from adlib.data.layout import DatasetError
    from adlib.study.grid import calibration_set

    class Named:
        def __init__(self, split):
            self.split = split

        def calibration_split(self):
            return self.split

    sources = setting.synthetic_sources("toyset", limit=None)
    parts = [study.datasets_for(s, setting) for s in sources]
    assert calibration_set(object(), sources, parts, 64) is None  # no hook: no calibration
    assert calibration_set(Named("test"), sources[:1], parts[:1], 64) is parts[0][1]
    both = calibration_set(Named("train"), sources, parts, 64)
    assert isinstance(both, ConcatDataset) and len(both) == sum(len(p[0]) for p in parts)
    with pytest.raises(DatasetError, match="validation"):  # the MVTec layout has no validation split
        calibration_set(Named("validation"), sources[:1], parts[:1], 64)


def test_multi_class_fits_one_model_and_reports_categories_mean_and_pooled(setting):
    sources = setting.synthetic_sources("toyset", limit=None)
    runs = {}
    table = study.run_grid(setting, None, sources, models=("patchcore",), class_setting="multi-class",
                           protocols=("exact", "ader"), keep=runs, log=lambda *_: None)
    assert len(runs) == 1  # one model for both categories
    (run,) = runs.values()
    assert run.train_images == 6 and set(run.test) == {"other", "toy"}
    pixel = table[(table["level"] == "pixel") & (table["metric"] == "auroc")]
    assert set(pixel["scope"]) == {"category", "mean", "pooled"} and set(pixel["protocol"]) == {"exact", "ader"}
    for protocol in ("exact", "ader"):
        part = pixel[pixel["protocol"] == protocol]
        cats = part[part["scope"] == "category"]
        assert set(cats["dataset"]) == {"toyset/other", "toyset/toy"}
        mean = part[part["scope"] == "mean"]["value"].iloc[0]
        assert mean == pytest.approx(cats["value"].mean())
        assert part[part["scope"] == "pooled"]["dataset"].iloc[0] == "toyset"
    with pytest.raises(ValueError, match="one-class"):
        study.run_one(setting, sources, "patchcore", class_setting="one-class")
    alone = study.run_grid(setting, None, sources[:1], models=("patchcore",), class_setting="multi-class",
                           log=lambda *_: None)
    assert set(alone["class_setting"]) == {"one-class"}  # a multi-class group of one category is one-class
    assert set(table["class_setting"]) == {"multi-class"}


def test_same_seed_same_numbers(setting):
    sources = setting.synthetic_sources("toyset", categories=["toy"])
    first = study.run_grid(setting, {"a": {"m": 1}}, sources, log=lambda *_: None)
    torch.rand(100)  # disturb the global random state between the runs
    second = study.run_grid(setting, {"a": {"m": 1}}, sources, log=lambda *_: None)
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
    partial = study.dataset_means(rows(["bottle"]), {"MVTec AD": 15})
    assert list(partial["dataset"]) == ["MVTec AD/bottle"]
    full = study.dataset_means(rows([f"c{i}" for i in range(15)]), {"MVTec AD": 15})
    mean = full[full["dataset"] == "MVTec AD"]
    assert len(mean) == 1 and mean["value"].iloc[0] == pytest.approx(7.0)


def test_seed_summary_trend_and_best():
    df = pd.DataFrame([{"dataset": "hr/a", "method": "VarAD", "setting": f"res={r}", "level": "pixel",
                        "metric": "f1max", "value": v + s, "seed": s}
                       for r, v in ((512, 30.0), (128, 10.0), (256, 20.0)) for s in (0, 2)])
    summary = study.seed_summary(df)
    row = summary[summary["setting"] == "res=512"].iloc[0]
    assert row["mean"] == 31.0 and row["n"] == 2 and row["std"] == pytest.approx(np.sqrt(2))
    trend = study.trend(df, "VarAD")
    assert list(trend.columns[:3]) == [128.0, 256.0, 512.0] and trend.loc["hr/a", "change"] == 20.0
    assert list(study.best(df)["best setting"]) == ["res=512"]
    wide = study.pivot(df, metrics=("f1max",), with_std=True)
    assert wide.loc[("hr/a", "VarAD", "res=512"), "f1max"] == "31.0 ± 1.4"


def test_tap_subsets_name_the_full_set():
    variants = study.tap_subsets("dinov2_vits14")
    assert variants["layers=all"] == {} and variants["layers=8"] == {"layers": (8,)} and len(variants) == 7
    assert "deeper=2+3+4" in study.tap_subsets("efficientnet_lite0")  # not a subset: no part of "layers=subset"


def test_open_choices_reads_config_comments(setting):
    row = study.open_choices("varad").set_index("field").loc["m"]
    assert row["adlib"] == "4" and "paper" in row["note"].lower()
    used = study.open_choices("varad", setting).set_index("field")
    assert used.loc["m", "adlib"] == repr(VARAD.recipe("varad", "smoke").model["m"])


def test_partial_map_with_everything_is_the_full_map():
    from adlib.models import create_model

    torch.manual_seed(0)
    model = create_model("varad", image_size=64, m=1, pretrained=False).eval()
    out = model.explain(torch.rand(2, 3, 64, 64))
    torch.testing.assert_close(model.partial_map(out, 1), out["map"][1])
    one = model.partial_map(out, 1, directions=["row_tl"], hierarchies=[0])
    assert one.shape == (64, 64) and not torch.allclose(one, out["map"][1])
    with pytest.raises(ValueError):
        model.partial_map(out, 0, hierarchies=[])


# ------------------------------------------------------------------------------------------------ claims
def _evidence(values: dict[str, list[float]], metric="f1max", level="pixel", datasets=("d/a",),
              spread: float = 0.1, chance: float = 1.0) -> pd.DataFrame:
    """Rows as run_grid gives them: per seed a value and its test-image resamples (``spread``: their standard
    deviation, the same draws for every side of one data source: a paired bootstrap)."""
    noise = {d: np.random.default_rng(i).normal(0, 1, 200).astype(np.float32) for i, d in enumerate(datasets)}
    return pd.DataFrame([{"dataset": d, "method": "M", "setting": label, "level": level, "metric": metric,
                          "value": v + (1.0 if d.endswith("b") else 0.0), "seed": s, "protocol": "exact",
                          "boot": v + (1.0 if d.endswith("b") else 0.0) + spread * noise[d], "chance": chance,
                          "test_id": d}
                         for label, per_seed in values.items() for s, v in enumerate(per_seed) for d in datasets])


def _claim(**kw) -> Claim:
    base = dict(id="c", text="A beats B", where="Sec. 1", table="t", metric="f1max",
                favoured=Side("A", {"setting": "A"}), against=(Side("B", {"setting": "B"}),))
    return Claim(**{**base, **kw})


@pytest.mark.parametrize("a, b, verdict", [
    ([10, 11, 12], [5, 6, 7], "held"),          # +5 every seed
    ([5, 6, 7], [10, 11, 12], "failed"),        # -5 every seed
    ([10, 2, 12], [9, 8, 3], "inconclusive"),   # +1, -6, +9: within noise
    ([10, 11], [5, 6], "inconclusive"),         # two seeds only: no verdict
])
def test_claim_rule(a, b, verdict):
    rows = claims.evaluate(_claim(), _evidence({"A": a, "B": b}))
    assert rows.iloc[0]["verdict"] == verdict
    assert rows.iloc[0]["diff_mean"] == pytest.approx(np.mean(np.subtract(a, b)))


def test_claim_costs_margins_and_sides():
    costs = _evidence({"A": [1, 1, 1.5], "B": [5, 6, 7]}, metric="train_s", level="model")
    assert claims.evaluate(_claim(metric="train_s", level="model", higher_is_better=False), costs).iloc[0]["verdict"] == "held"
    table = _evidence({"A": [12, 13, 14], "B": [5, 6, 7]})  # +7: helps, but not by the paper's 10 points
    assert claims.evaluate(_claim(), table).iloc[0]["verdict"] == "held"
    assert claims.evaluate(_claim(margin=10.0), table).iloc[0]["verdict"] == "failed"
    # several datasets: each seed's side value is the mean over the shared datasets
    two = claims.evaluate(_claim(), _evidence({"A": [10, 11, 12], "B": [5, 6, 7]}, datasets=("d/a", "d/b")))
    assert two.iloc[0]["favoured_mean"] == pytest.approx(11.5)


def test_claim_special_labels_several_comparisons_and_not_run():
    table = _evidence({"m=1": [1, 2, 3], "m=4": [9, 9, 9], "m=6": [8, 8.5, 8.8], "m=2": [5, 5, 5]})
    claim = _claim(favoured=Side("m=4", {"setting": "m=4"}),
                   against=(Side("m=1", {"setting": "m=1"}), Side("largest", {"setting": "m=max"})))
    rows = claims.evaluate(claim, table)
    assert list(rows["comparison"]) == ["m=4 vs m=1", "m=4 vs largest", "overall"]
    assert rows.iloc[-1]["verdict"] == "held"
    subsets = claims.evaluate(_claim(favoured=Side("all", {"setting": "m=4"}), against=(Side("s", {"setting": "m=subset"}),)), table)
    assert len(subsets) == 4 and subsets.iloc[-1]["verdict"] == "failed" or subsets.iloc[-1]["verdict"] == "held"
    missing = table.assign(value=np.where(table["setting"] == "m=1", np.nan, table["value"]), note="")
    missing.loc[missing["setting"] == "m=1", "note"] = "needs a ViT"
    rows = claims.evaluate(claim, missing)
    assert rows.iloc[0]["verdict"] == "not run" and "needs a ViT" in rows.iloc[0]["note"]


def test_claims_are_recorded_merged_by_id(setting):
    table = _evidence({"dirs=all": [10, 11, 12], **{f"dirs={d}": [5, 6, 7] for d in ("row_tl", "row_br", "col_tr", "col_bl")}})
    first = claims.check(setting, table, ["all_directions"])
    assert first.iloc[-1]["verdict"] == "held"
    claims.not_run(setting, ["linear_adapter_helps"], "no time")
    again = claims.check(setting, table, ["all_directions"])
    written = pd.read_csv(claims.claims_path(setting))
    assert set(written["claim"]) == {"all_directions", "linear_adapter_helps"}
    assert (written["claim"] == "all_directions").sum() == len(again)
    assert set(written["paper"]) == {"varad"} and set(written["profile"]) == {"smoke"}
    text = claims.explain(written)
    assert "**held**" in text and "**not run**" in text and "no time" in text


# ------------------------------------------------------------------------------------------------ layering
ROOT = Path(__file__).resolve().parent.parent / "adlib"


def _names_used(path: Path) -> set[str]:
    """Every string literal, identifier and attribute name in a module (comments and docstrings aside)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            names.add(node.value.lower())
        elif isinstance(node, ast.Name):
            names.add(node.id.lower())
        elif isinstance(node, ast.Attribute):
            names.add(node.attr.lower())
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(getattr(node, "module", None) or "").lower()} | {a.name.lower() for a in node.names}
    return names


def test_engine_and_study_name_no_paper_and_no_model():
    from adlib.models import MODELS

    forbidden = set(papers.PAPERS) | set(MODELS) | {e.display.lower() for e in MODELS.values()}
    forbidden |= {"vitad", "mambaad", "ladmim", "rd4ad", "uniad"}
    files = [ROOT / "engine.py", *sorted((ROOT / "study").glob("*.py"))]
    for path in files:
        used = _names_used(path)
        tokens = {token for name in used for token in re.split(r"[^a-z0-9]+", name)}
        found = forbidden & tokens
        assert not found, f"{path.name} names {sorted(found)}"
        assert not any(name.startswith("adlib.papers") for name in used), f"{path.name} imports adlib.papers"


def test_models_import_neither_engine_nor_papers():
    for path in sorted((ROOT / "models").glob("*.py")):
        used = _names_used(path)
        assert not {"adlib.engine", "adlib.papers"} & used, f"{path.name} imports the engine or the papers"


def test_peak_hits_says_where_each_map_peaks():
    from types import SimpleNamespace

    import torch
    from torch import nn

    from adlib.models.base import Prediction
    from adlib.study import peak_hits

    class Items(list):
        labels = [0, 1, 1]

    def item(label, box):
        mask = torch.zeros(1, 32, 32)
        if box:
            mask[0, box[0]:box[0] + 4, box[1]:box[1] + 4] = 1
        return {"image": torch.full((3, 32, 32), float(label)), "mask": mask, "label": label, "defect": "dot"}

    test = Items([item(0, None), item(1, (2, 2)), item(1, (20, 20))])

    class PeaksAtTopLeft(nn.Module):  # every map peaks at pixel (3, 3): inside the first defect, far from the second
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def predict(self, images):
            maps = torch.zeros(len(images), 32, 32)
            maps[:, 3, 3] = 1.0
            return Prediction(maps=maps, scores=maps.flatten(1).amax(1))

    run = SimpleNamespace(model=PeaksAtTopLeft(), test_set=lambda category=None: test)
    rows = peak_hits(run, dilate=2)
    assert rows["index"].tolist() == [1, 2]  # defective images only
    assert rows["peak_in_defect"].tolist() == [True, False]
    assert rows["contrast"].iloc[0] > 1 and rows["contrast"].iloc[1] == 0
