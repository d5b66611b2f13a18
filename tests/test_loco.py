"""adlib.loco: LOCO group AUROCs (normal vs logical, normal vs structural), Overall and both readings of Avg."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from adlib import loco


def _data(seed=0):
    rng = np.random.default_rng(seed)
    groups = ["good"] * 12 + ["logical"] * 7 + ["structural"] * 5
    shift = {"good": 0.0, "logical": 0.6, "structural": 1.5}
    scores = np.array([rng.normal(shift[g]) for g in groups])
    labels = np.array([0 if g == "good" else 1 for g in groups])
    return scores, labels, groups


def test_group_aurocs_match_sklearn_on_each_subset():
    scores, labels, groups = _data()
    summary = loco.evaluate_groups(scores, labels, groups)
    (only,) = summary.categories.values()
    g = np.array(groups)
    for group in ("logical", "structural"):
        keep = (g == "good") | (g == group)
        assert getattr(only, group) == pytest.approx(roc_auc_score(labels[keep], scores[keep]))
    assert only.whole == pytest.approx(roc_auc_score(labels, scores))
    assert only.counts == {"good": 12, "logical": 7, "structural": 5}


def test_whole_set_auroc_is_the_count_weighted_mean_of_the_groups():
    """An AUROC counts ordered (anomalous, normal) pairs, so it splits exactly over anomaly groups."""
    for seed in range(5):
        scores, labels, groups = _data(seed)
        (c,) = loco.evaluate_groups(scores, labels, groups).categories.values()
        assert c.whole == pytest.approx(loco.whole_from_groups(c.logical, c.structural, 7, 5))


def test_averages_over_categories_and_the_two_readings_of_avg():
    a, la, ga = _data(1)
    b, lb, gb = _data(2)
    b = -b  # a second category where the detector is reversed
    summary = loco.evaluate_groups(np.r_[a, b], np.r_[la, lb], ga + gb, ["x"] * len(a) + ["y"] * len(b))
    x, y = summary.categories["x"], summary.categories["y"]
    assert summary.logical == pytest.approx((x.logical + y.logical) / 2)
    assert summary.structural == pytest.approx((x.structural + y.structural) / 2)
    assert summary.overall == pytest.approx((summary.logical + summary.structural) / 2) == summary.avg_mean
    assert summary.avg_whole == pytest.approx((x.whole + y.whole) / 2)
    assert summary.avg_whole != pytest.approx(summary.avg_mean)  # the readings differ when group sizes differ
    rows = summary.rows("LADMIM", "synthetic_loco")
    means = {r["metric"]: r["value"] for r in rows if r["dataset"] == "synthetic_loco"}
    assert means["auroc_overall"] == pytest.approx(100 * summary.overall)
    assert {r["dataset"] for r in rows} == {"synthetic_loco", "synthetic_loco/x", "synthetic_loco/y"}
    assert all(r["level"] == "image" and r["metric"] in loco.METRIC_NAMES for r in rows)


def test_a_missing_group_is_nan_and_left_out_of_the_means():
    scores, labels, groups = _data()
    keep = np.array(groups) != "structural"
    summary = loco.evaluate_groups(scores[keep], labels[keep], [g for g, k in zip(groups, keep) if k])
    (c,) = summary.categories.values()
    assert np.isnan(c.structural) and np.isnan(summary.structural) and not np.isnan(summary.logical)
    assert not any(r["metric"] == "auroc_structural" for r in summary.rows("m", "d"))


def test_mean_std_over_seeds_and_bad_input():
    s1 = loco.evaluate_groups(*_data(0))
    s2 = loco.evaluate_groups(*_data(3))
    stats = loco.mean_std([s1, s2])
    assert stats["logical"][0] == pytest.approx((s1.logical + s2.logical) / 2)
    assert stats["logical"][1] == pytest.approx(np.std([s1.logical, s2.logical], ddof=1))
    scores, labels, groups = _data()
    with pytest.raises(ValueError, match="disagree"):
        loco.evaluate_groups(scores, 1 - labels, groups)
    with pytest.raises(ValueError, match="one entry per image"):
        loco.evaluate_groups(scores[:-1], labels, groups)
    with pytest.raises(ValueError, match="NaN"):
        loco.evaluate_groups(np.r_[np.nan, scores[1:]], labels, groups)


def test_from_eval_reads_an_eval_result():
    from adlib.engine import EvalResult

    scores, labels, groups = _data()
    result = EvalResult(image={}, pixel={}, scores=scores, labels=labels, paths=[], seconds=0, fps=0,
                        groups=list(groups), image_categories=["c"] * len(scores))
    summary = loco.from_eval(result)
    assert list(summary.categories) == ["c"]
    assert summary.logical == loco.evaluate_groups(scores, labels, groups).logical
    flipped = loco.from_eval(result, scores=-scores)
    assert flipped.logical == pytest.approx(1 - summary.logical)


def test_runs_table_combines_categories_per_seed_and_reads_several_scorers():
    from types import SimpleNamespace

    groups = ["good"] * 4 + ["logical"] * 2 + ["structural"] * 2
    labels = [0] * 4 + [1] * 4

    def run(category, seed, scores):
        evaluation = SimpleNamespace(scores=np.asarray(scores, float), labels=np.asarray(labels), groups=groups,
                                     image_categories=[], protocol="exact")
        return SimpleNamespace(method="M", label="default", seed=seed, dataset_name="set", class_setting="one-class",
                               evaluation=evaluation, sources=[SimpleNamespace(category=category)], backbone="b",
                               data=f"set/{category}", image_size=64)

    perfect = [0, 0, 0, 0, 1, 1, 1, 1]
    logical_missed = [0, 0.1, 0.2, 0.3, 0, 0, 1, 1]
    runs = {("a", 0): run("a", 0, perfect), ("b", 0): run("b", 0, logical_missed), ("a", 1): run("a", 1, perfect)}
    table = loco.runs_table(runs)
    mean0 = table[(table["seed"] == 0) & (table["scope"] == "mean")].set_index("metric")["value"]
    assert mean0["auroc_logical"] == pytest.approx(100 * (1 + 0.125) / 2)  # b's logical: 1 of 8 pairs ordered
    assert mean0["auroc_structural"] == 100 and mean0["auroc_overall"] == mean0["auroc_avg"]
    assert set(table[table["scope"] == "category"]["dataset"]) == {"set/a", "set/b"}
    assert set(table["seed"]) == {0, 1} and (table["class_setting"] == "one-class").all()
    flipped = loco.runs_table(runs, lambda r: {"x": r.evaluation.scores, "y": -r.evaluation.scores})
    assert set(flipped["setting"]) == {"x", "y"}
    y = flipped[(flipped["setting"] == "y") & (flipped["seed"] == 1) & (flipped["metric"] == "auroc_logical")]
    assert (y["value"] == 0).all()
    with_chance = loco.runs_table(runs, chance=True)
    chance = with_chance[with_chance["method"] == loco.CHANCE]
    assert set(chance["seed"]) == {0, 1} and set(chance["dataset"]) == {"set", "set/a", "set/b"}
    assert (chance["value"] == 50).all() and (chance["backbone"] == "none").all()
    assert len(with_chance) == 2 * len(table), "the chance rows mirror the method's, and nothing else changes"


def test_per_kind_auroc_separates_the_kinds_of_one_group():
    # normal 0..3; logical "a" scores above every normal image, logical "b" below, structural "a" in between
    scores = [0.0, 1.0, 2.0, 3.0, 10.0, 11.0, -1.0, -2.0, 1.5]
    groups = ["good"] * 4 + ["logical"] * 4 + ["structural"]
    kinds = ["good"] * 4 + ["a", "a", "b", "b", "a"]
    out = loco.per_kind(scores, groups, kinds)
    assert list(out) == [("logical", "a"), ("logical", "b"), ("structural", "a")]
    assert out[("logical", "a")] == 1.0 and out[("logical", "b")] == 0.0 and out[("structural", "a")] == 0.5
    with pytest.raises(ValueError, match="one entry per image"):
        loco.per_kind(scores, groups, kinds[:-1])


def test_anomaly_kinds_read_the_embedded_sets_file_and_none_without_it(tmp_path):
    from adlib.data import AnomalyDataset, synth

    synth.write_loco_category(tmp_path, "tray", synth.LOCO_CATEGORIES["tray"], seed=0, size=48)
    test = AnomalyDataset(tmp_path, "tray", "test", image_size=32)
    kinds = loco.anomaly_kinds(test)
    assert len(kinds) == len(test)
    assert [k for k, s in zip(kinds, test.samples) if s.label == 0] == ["good"] * synth.LOCO_COUNTS["test_good"]
    logical = [k for k, s in zip(kinds, test.samples) if s.group == "logical"]
    assert logical == [k for k in synth.LOCO_CATEGORIES["tray"].logical_kinds for _ in range(synth.LOCO_COUNTS["per_logical"])]
    import torch

    part = torch.utils.data.Subset(test, [0, len(test) - 1])
    assert loco.anomaly_kinds(part) == ["good", kinds[-1]] and kinds[-1] in synth.LOCO_STRUCTURAL
    (tmp_path / "tray" / synth.KINDS_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="anomaly_kinds.json: not valid JSON"):
        loco.anomaly_kinds(test)
    (tmp_path / "tray" / synth.KINDS_FILE).unlink()
    assert loco.anomaly_kinds(test) is None


def test_runs_kinds_table_gives_one_row_per_kind_and_run(tmp_path):
    from types import SimpleNamespace

    from adlib.data import AnomalyDataset, synth

    synth.write_loco_category(tmp_path, "pins", synth.LOCO_CATEGORIES["pins"], seed=0, size=48)
    test = AnomalyDataset(tmp_path, "pins", "test", image_size=32)
    kinds = loco.anomaly_kinds(test)
    scores = np.array([1.0 if k == "turned" else 0.0 for k in kinds])  # sees only the turned pins
    evaluation = SimpleNamespace(scores=scores, groups=[s.group for s in test.samples])
    evaluation.protocol = "exact"
    run = SimpleNamespace(test=test, evaluation=evaluation, label="default", method="M", seed=0,
                          dataset_name="set", sources=[SimpleNamespace(category="pins")], backbone="b", data="d",
                          class_setting="one-class", image_size=32)
    table = loco.runs_kinds_table({"r": run}).set_index("metric")["value"]
    assert table["auroc_logical_turned"] == 100 and table["auroc_logical_missing"] == 50
    assert len(table) == len(synth.LOCO_CATEGORIES["pins"].logical_kinds) + len(synth.LOCO_STRUCTURAL)


# ------------------------------------------------------------------------------ kinds of real MVTec LOCO data
def _loco_category(root, mask_values):
    """A tiny MVTec LOCO category: one normal image per split, one logical anomaly per entry of
    ``mask_values`` (the values of its mask files, one file per value), and defects_config.json."""
    import json

    from PIL import Image

    cat = root / "box"
    image = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    for folder in ("train/good", "validation/good", "test/good"):
        (cat / folder).mkdir(parents=True)
        image.save(cat / folder / "000.png")
    (cat / "test/logical_anomalies").mkdir(parents=True)
    for i, values in enumerate(mask_values):
        image.save(cat / "test/logical_anomalies" / f"{i:03d}.png")
        masks = cat / "ground_truth/logical_anomalies" / f"{i:03d}"
        masks.mkdir(parents=True)
        for j, value in enumerate(values):
            array = np.zeros((8, 8), np.uint8)
            array[j, :4] = value
            Image.fromarray(array).save(masks / f"{j:03d}.png")
    config = [{"defect_name": "missing_top", "pixel_value": 255}, {"defect_name": "missing_bottom", "pixel_value": 254},
              {"defect_name": "swapped", "pixel_value": 253}]
    (cat / "defects_config.json").write_text(json.dumps(config))
    return cat


def test_kinds_of_mvtec_loco_come_from_the_mask_ids_and_its_defect_list(tmp_path):
    from adlib.data import AnomalyDataset

    _loco_category(tmp_path, [(253,), (254, 255), (255,)])
    test = AnomalyDataset(tmp_path, "box", "test")
    assert loco.anomaly_kinds(test) == ["good", "swapped", "missing_top+missing_bottom", "missing_top"]
    assert "defects_config.json" in loco.kinds_source(test)


def test_flattened_masks_name_no_kind_and_an_annotation_applies_only_to_its_files(tmp_path, monkeypatch):
    from pathlib import Path

    from adlib.data import AnomalyDataset

    cat = _loco_category(tmp_path, [(255,), (255,)])  # every type flattened to one value: 255 names nothing here
    test = AnomalyDataset(tmp_path, "box", "test")
    assert loco.anomaly_kinds(test) is None and loco.kinds_source(test) == ""
    anomalous = [s for s in test.samples if s.label]
    keys = {id(s): Path(s.image_path).relative_to(cat / "test").as_posix() for s in anomalous}
    stamp = loco.split_fingerprint(cat, anomalous, keys)
    note = loco.KindAnnotation("box", "by eye", stamp, {"logical_anomalies/000.png": "a", "logical_anomalies/001.png": "b"})
    monkeypatch.setattr(loco, "ANNOTATIONS", {stamp: note})
    assert loco.anomaly_kinds(test) == ["good", "a", "b"] and loco.kinds_source(test) == "box: by eye"
    from PIL import Image

    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(cat / "ground_truth/logical_anomalies/001/000.png")
    assert loco.anomaly_kinds(AnomalyDataset(tmp_path, "box", "test")) is None  # other files: it does not apply


@pytest.mark.data
def test_the_loco_subsets_kinds_are_our_annotation():
    import os
    from collections import Counter
    from pathlib import Path

    from adlib.data import AnomalyDataset

    root = Path(os.environ.get("ADLIB_DATA", "")) / "mvtec_loco_subset"
    if not os.environ.get("ADLIB_DATA") or not (root / "juice_bottle").is_dir():
        pytest.skip("ADLIB_DATA is not set or lacks mvtec_loco_subset/juice_bottle")
    test = AnomalyDataset(root, "juice_bottle", "test")
    kinds = Counter(loco.anomaly_kinds(test))
    assert kinds["good"] == 56 and sum(kinds.values()) == 198 and len(kinds) == 13
    assert kinds["wrong_juice_type"] == 22 and kinds["wrong_fill_level_not_enough"] == 24
    assert "flattened" in loco.kinds_source(test)


def test_describe_says_each_group_and_a_missing_one():
    scores, labels, groups = _data()
    both = loco.evaluate_groups(scores, labels, groups)
    line = both.describe()
    assert f"logical anomalies: image AUROC {100 * both.logical:.1f} (7 vs 12 normal test images)" in line
    assert f"Overall {100 * both.overall:.1f}" in line
    keep = [g != "structural" for g in groups]
    only = loco.evaluate_groups(scores[keep], labels[keep], [g for g in groups if g != "structural"])
    assert "structural anomalies: none in the test set" in only.describe() and "Overall" not in only.describe()
