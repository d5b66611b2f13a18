"""Evidence a reader can trust (issue 23): test-image resamples, verdicts against two sources of noise, floors,
numbers shown as computed, closing sections."""
from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
import pytest

from adlib import metrics, papers, study
from adlib.study import claims
from adlib.study.spec import Claim, Floor, Side
from test_metrics import blob_masks, smooth_maps
from test_study import setting, toy_root  # noqa: F401  (fixtures)


# ------------------------------------------------------------------------------------------ resamples
def _keys(n: int, prefix: str = "d/c/test") -> list[str]:
    return [f"{prefix}/x/{i:03d}.png" for i in range(n)]


def test_resamples_follow_the_images_not_their_order():
    labels = np.array([0] * 12 + [1] * 8)
    keys = _keys(20)
    counts = metrics.resample_counts(keys, labels, 50)
    assert counts.shape == (50, 20)
    assert (counts[:, labels == 0].sum(axis=1) == 12).all() and (counts[:, labels == 1].sum(axis=1) == 8).all()
    perm = np.random.default_rng(0).permutation(20)
    again = metrics.resample_counts([keys[i] for i in perm], labels[perm], 50)
    assert np.array_equal(again, counts[:, perm])  # the same images, another order: the same resamples
    other = metrics.resample_counts(_keys(20, "d/other/test"), labels, 50)
    assert not np.array_equal(other, counts)  # other images: other resamples
    here, there = "/root/x/mvtec/bottle/test/broken/000.png", "/mnt/data/mvtec/bottle/test/broken/000.png"
    assert metrics.image_keys([here]) == metrics.image_keys([there]) == ["mvtec/bottle/test/broken/000.png"]
    assert metrics.test_identity(keys) == metrics.test_identity(keys[::-1])
    with pytest.raises(ValueError, match="strata"):
        metrics.resample_counts(keys, labels[:5])


def test_image_replicates_are_the_exact_metrics_of_the_resampled_images():
    rng = np.random.default_rng(1)
    labels = rng.random(50) < 0.4
    scores = np.round(rng.normal(size=50) + labels, 1)  # ties
    counts = metrics.resample_counts(_keys(50), labels, 30)
    reps = metrics.image_replicates(scores, labels, counts)
    for b in range(30):
        idx = np.repeat(np.arange(50), counts[b])
        exact = metrics.image_metrics(scores[idx], labels[idx])
        for k in exact:
            assert reps[k][b] == pytest.approx(exact[k], abs=1e-12)


@pytest.mark.parametrize("ader, tolerance", [(False, 0.003), pytest.param(True, 0.02, marks=pytest.mark.slow)])
def test_pixel_replicates_follow_the_exact_metric_on_resampled_images(ader, tolerance):
    """The binned per-image counts against the metric recomputed on every resampled set of maps: each replicate
    within ``tolerance`` (ADer's 21-threshold F1 is coarser than the bins), the spread within 15 %."""
    rng = np.random.default_rng(3)
    n = 24
    masks = blob_masks(rng, n, 64)
    maps = smooth_maps(rng, masks, noise=1.5)
    counts = metrics.resample_counts(_keys(n), masks.reshape(n, -1).any(1), 40)
    acc = metrics.PixelAccumulator(ader_compat=ader)
    acc.update(maps, masks)
    exact = acc.compute(resample=counts)
    assert exact == metrics.pixel_metrics(maps, masks, ader_compat=ader)  # the exact values are unchanged
    assert all(abs(v) < 0.005 for v in acc.binning_offset.values())
    assert 0 < acc.prevalence < 0.5
    for k in exact:
        brute = np.array([metrics.pixel_metrics(maps[np.repeat(np.arange(n), c)], masks[np.repeat(np.arange(n), c)],
                                                ader_compat=ader)[k] for c in counts])
        assert np.abs(acc.replicates[k] - brute).max() < tolerance, k
        assert acc.replicates[k].std() == pytest.approx(brute.std(), rel=0.15), k


def test_chance_levels():
    assert metrics.chance_level("auroc") == 0.5 and metrics.chance_level("auroc_logical") == 0.5
    assert metrics.chance_level("aupro") == pytest.approx(0.15)
    assert metrics.chance_level("ap", 0.01) == 0.01
    assert metrics.chance_level("f1max", 0.01) == pytest.approx(0.02 / 1.01)
    assert np.isnan(metrics.chance_level("f1max"))


def test_evaluation_rows_carry_the_test_image_evidence(setting):  # noqa: F811
    sources = setting.synthetic_sources("toyset", categories=["toy"])
    table = pd.concat([study.run_grid(setting, None, sources, models=("patchcore",), log=lambda *_: None),
                       study.run_grid(setting, {"default": {"m": 1}}, sources, log=lambda *_: None)])
    quality = table[table["level"].isin(["image", "pixel", "summary"])]
    assert set(quality["method"]) == {"PatchCore", "VarAD"} and quality["value"].notna().all()
    assert all(isinstance(b, np.ndarray) and b.shape == (metrics.BOOTSTRAP,) for b in quality["boot"])
    auroc = quality[quality["metric"] == "auroc"]
    assert (auroc["chance"] == 50.0).all()
    assert quality["test_id"].nunique() == 1  # both models scored the same images: paired resamples
    model = table[table["level"] == "model"]
    assert model["boot"].isna().all()
    path = setting.write_table(table, "evidence")
    written = pd.read_csv(path)
    assert "boot" not in written.columns and {"chance", "test_id"} <= set(written.columns)


# ------------------------------------------------------------------------------------------ verdicts
def _rows(values: dict[str, list[float]], spread: float = 0.1, metric: str = "f1max", level: str = "pixel",
          chance: float = 1.0, methods: dict[str, str] | None = None, test_ids: dict[str, str] | None = None,
          replicates: int = 200) -> pd.DataFrame:
    methods, test_ids = methods or {}, test_ids or {}
    out = []
    for label, per_seed in values.items():
        tid = test_ids.get(label, "images")
        noise = np.random.default_rng(zlib.crc32(tid.encode())).normal(0, 1, replicates)
        for seed, value in enumerate(per_seed):
            out.append({"dataset": "d/a", "method": methods.get(label, "M"), "setting": label, "level": level,
                        "metric": metric, "value": value, "seed": seed, "protocol": "exact", "scope": "category",
                        "boot": (value + spread * noise).astype(np.float32), "chance": chance, "test_id": tid})
    return pd.DataFrame(out)


def _claim(**kw) -> Claim:
    base = dict(id="c", text="A beats B", where="Sec. 1", table="t", metric="f1max",
                favoured=Side("A", {"setting": "A"}), against=(Side("B", {"setting": "B"}),), floor=Floor())
    return Claim(**{**base, **kw})


def test_held_needs_both_seeds_and_test_images():
    held = claims.evaluate(_claim(), _rows({"A": [10, 11, 12], "B": [5, 6, 7]})).iloc[0]
    assert held["verdict"] == "held" and held["by_seeds"] == "held" and held["by_test_images"] == "held"
    assert held["test_lo"] == pytest.approx(5.0, abs=0.1) and held["resamples"] == 200
    # the same seeds, but test images so few that the resampled difference straddles zero
    noisy = claims.evaluate(_claim(floor=None), _rows({"A": [10, 11, 12], "B": [5, 6, 7]}, spread=10.0,
                                            test_ids={"A": "images", "B": "other images"})).iloc[0]
    assert noisy["by_seeds"] == "held" and noisy["by_test_images"] == "inconclusive"
    assert noisy["verdict"] == "inconclusive" and noisy["test_lo"] < 0 < noisy["test_hi"]
    assert "different test images" in noisy["note"]
    assert "interval includes zero" in claims.reason(noisy)
    failed = claims.evaluate(_claim(), _rows({"A": [5, 6, 7], "B": [10, 11, 12]})).iloc[0]
    assert failed["verdict"] == "failed" and failed["test_hi"] < 0
    bare = _rows({"A": [10, 11, 12], "B": [5, 6, 7]}).drop(columns=["boot"])
    row = claims.evaluate(_claim(), bare).iloc[0]
    assert row["verdict"] == "inconclusive" and row["by_test_images"] == "no test-image resamples in these rows"


def test_paired_resamples_see_a_difference_that_each_side_alone_hides():
    """Two detectors scored on the same images: per image difficulty moves both, so each side's own interval
    is wide while the paired difference is narrow; scored on different images, the difference is as wide."""
    rng = np.random.default_rng(0)
    labels = np.array([0] * 20 + [1] * 20)
    difficulty = rng.normal(0, 1.0, 40)
    a = difficulty + 0.9 * labels + rng.normal(0, 0.15, 40)
    b = difficulty + 0.6 * labels + rng.normal(0, 0.15, 40)
    same = metrics.resample_counts(_keys(40), labels, 500)
    elsewhere = metrics.resample_counts(_keys(40, "d/elsewhere/test"), labels, 500)
    ra, rb, rb_elsewhere = (metrics.image_replicates(s, labels, c)["auroc"] for s, c in ((a, same), (b, same), (b, elsewhere)))
    width = lambda x: np.subtract(*np.percentile(x, [97.5, 2.5]))  # noqa: E731
    assert width(ra - rb) < 0.5 * width(ra - rb_elsewhere)
    assert np.percentile(ra - rb, 2.5) > 0 > np.percentile(ra - rb_elsewhere, 2.5)


def test_costs_are_decided_by_the_seeds():
    costs = _rows({"A": [1, 1, 1.5], "B": [5, 6, 7]}, metric="train_s", level="model").drop(columns=["boot"])
    row = claims.evaluate(_claim(metric="train_s", level="model", higher_is_better=False, floor=None), costs).iloc[0]
    assert row["verdict"] == "held" and row["by_test_images"].startswith("does not apply")


def test_a_favoured_side_below_its_floor_is_not_testable_here():
    """The issue's example: VarAD's max-F1 'rises' from 0.4 to 0.7 with resolution while PatchCore reaches 37.6
    on the same images: VarAD does not work there, so the rise decides nothing."""
    claim = _claim(favoured=Side("high", {"method": "VarAD", "setting": "res=512"}),
                   against=(Side("low", {"method": "VarAD", "setting": "res=128"}),), floor=Floor(of_best_peer=0.5))
    table = _rows({"res=512": [0.7, 0.6, 0.8], "res=128": [0.4, 0.35, 0.4], "peer": [37.0, 38.0, 37.8]},
                  spread=0.01, chance=0.02, methods={"res=512": "VarAD", "res=128": "VarAD", "peer": "PatchCore"})
    table.loc[table["setting"] == "peer", "setting"] = "res=512"
    row = claims.evaluate(claim, table).iloc[0]
    assert row["by_seeds"] == "held" and row["verdict"] == "not testable here"
    assert row["floor"] == pytest.approx(0.5 * 37.6, abs=0.01)
    assert "PatchCore" in row["floor_note"] and "18.8" in row["floor_note"] and "not reached" in row["floor_note"]
    # at chance, a method does not work either, whatever the other side does
    at_chance = claims.evaluate(_claim(), _rows({"A": [50.2, 49.9, 50.1], "B": [40, 41, 42]}, chance=50.0)).iloc[0]
    assert at_chance["verdict"] == "not testable here" and "not cleared" in at_chance["floor_note"]
    # no other method in the table: the peer part is said to be unchecked, the chance part still holds
    alone = claims.evaluate(_claim(floor=Floor(of_best_peer=0.5)), _rows({"A": [10, 11, 12], "B": [5, 6, 7]})).iloc[0]
    assert alone["verdict"] == "held" and "peer part not checked" in alone["floor_note"]
    # a peers table given beside the evidence counts for the floor
    peers = _rows({"P": [60, 61, 62]}, methods={"P": "Peer"})
    with_peer = claims.evaluate(_claim(floor=Floor(of_best_peer=0.5)), _rows({"A": [10, 11, 12], "B": [5, 6, 7]}),
                                peers=peers).iloc[0]
    assert with_peer["verdict"] == "not testable here" and with_peer["floor"] == pytest.approx(30.5)
    assert claims.overall(["held", "not testable here"]) == "not testable here"
    assert claims.overall(["failed", "not testable here"]) == "failed"


def test_every_quality_claim_declares_a_floor():
    for name in papers.available():
        for claim in papers.get(name).claims:
            if claim.level == "model":
                assert claim.floor is None, f"{name}/{claim.id}: a cost has no chance level"
            else:
                assert isinstance(claim.floor, Floor), f"{name}/{claim.id} declares no floor"


def test_claims_csv_states_the_rule_interval_and_floor(setting):  # noqa: F811
    table = _rows({"dirs=all": [10, 11, 12], **{f"dirs={d}": [5, 6, 7] for d in ("row_tl", "row_br", "col_tr", "col_bl")}})
    claims.check(setting, table, ["all_directions"])
    claims.not_run(setting, ["linear_adapter_helps"], "no time")
    written = claims.read(claims.claims_path(setting))
    assert {"test_lo", "test_hi", "floor", "floor_note", "by_seeds", "by_test_images", "rule"} <= set(written.columns)
    assert (written.loc[written["verdict"] != "not run", "rule"] == claims.RULE).all()
    view = claims.summary(written)
    assert "difference, test images 95 %" in view.columns and view["floor"].iloc[0] != "–"


def test_closing_says_what_held_failed_was_not_testable_and_not_run(setting):  # noqa: F811
    table = _rows({"dirs=all": [10, 11, 12], **{f"dirs={d}": [5, 6, 7] for d in ("row_tl", "row_br", "col_tr", "col_bl")}})
    setting.write_table(table.assign(backbone="b", data="toyset/a (synthetic, 3 train / 4 test images, 64px)"), "fig4")
    claims.check(setting, table, ["all_directions"])
    claims.check(setting, _rows({"m=4": [0.5, 0.4, 0.6], "m=1": [0.2, 0.2, 0.3], "m=6": [0.1, 0.1, 0.2]}, chance=1.0),
                 ["m_peaks_in_the_middle"])
    claims.not_run(setting, ["linear_adapter_helps"], "no time in the smoke profile")
    text = claims.closing(setting, ["all_directions", "m_peaks_in_the_middle", "linear_adapter_helps", "all_hierarchies"])
    assert text.startswith("## Verdicts") and claims.RULE in text
    assert "**Held** (1)" in text and "**Not testable here** (1)" in text and "**Not run** (2)" in text
    assert "no time in the smoke profile" in text and "no verdict recorded" in text
    assert "test-image 95 % interval [+" in text and "floor:" in text
    assert "`fig4`: " in text and "synthetic" in text and "What to take from it" in text
    only_fig4 = claims.closing(setting, tables=["fig4"])
    assert "all_directions" not in only_fig4 and "Aggregating information from all directions" in only_fig4


# ------------------------------------------------------------------------------------------ shown as computed
def _scoped() -> pd.DataFrame:
    rows = []
    for scope, dataset, value in (("category", "s/a", 80.0), ("category", "s/b", 90.0), ("mean", "s", 85.0),
                                  ("pooled", "s", 60.0)):
        for protocol, shift in (("exact", 0.0), ("ader", 1.0)):
            rows += [{"dataset": dataset, "method": "M", "setting": "default", "level": "pixel", "metric": "auroc",
                      "value": value + shift + seed, "seed": seed, "protocol": protocol, "scope": scope}
                     for seed in (0, 1)]
    return pd.DataFrame(rows)


def test_views_refuse_to_average_scopes_or_protocols():
    table = _scoped()
    with pytest.raises(ValueError, match=r"scopes \['mean', 'pooled'\]"):
        study.pivot(table[(table["protocol"] == "ader") & (table["scope"] != "category")], metrics=("auroc",))
    with pytest.raises(ValueError, match="protocols"):
        study.pivot(table[table["scope"] == "mean"], metrics=("auroc",))
    wide = study.pivot(table, metrics=("auroc",), scope="mean", protocol="ader")
    assert wide.loc[("s", "M", "default"), "auroc"] == 86.5
    with pytest.raises(ValueError, match="scope"):
        study.seed_summary(table[table["protocol"] == "exact"], ("dataset", "method"))
    assert len(study.seed_summary(table)) == 8  # the full keys keep every scope and protocol apart
    with pytest.raises(ValueError, match="scope"):
        study.best(table[table["protocol"] == "exact"], metric="auroc")


def test_dataset_means_average_the_resamples_too():
    boot = lambda v: np.full(10, v, dtype=np.float32)  # noqa: E731
    rows = pd.DataFrame([{"dataset": f"D/{c}", "method": "M", "setting": "default", "level": "pixel", "metric": "ap",
                          "value": v, "seed": 0, "scope": "category", "boot": boot(v), "chance": ch, "test_id": c}
                         for c, v, ch in (("a", 10.0, 1.0), ("b", 20.0, 3.0))])
    out = study.dataset_means(rows, {"D": 2})
    mean = out[out["dataset"] == "D"].iloc[0]
    assert mean["value"] == 15.0 and mean["chance"] == 2.0 and np.allclose(mean["boot"], 15.0)
    assert mean["test_id"] == metrics.test_identity(["a", "b"])


def test_loco_rows_carry_each_group_auroc_on_the_resamples():
    from types import SimpleNamespace

    from adlib import loco

    groups = ["good"] * 4 + ["logical"] * 2 + ["structural"] * 2
    labels = np.array([0] * 4 + [1] * 4)

    def run(category, scores):
        keys = _keys(8, f"set/{category}/test")
        evaluation = SimpleNamespace(scores=np.asarray(scores, float), labels=labels, groups=groups, image_categories=[],
                                     protocol="exact", resample=metrics.resample_counts(keys, groups, 100),
                                     test_id=metrics.test_identity(keys))
        return SimpleNamespace(method="M", label="default", seed=0, dataset_name="set", class_setting="one-class",
                               evaluation=evaluation, sources=[SimpleNamespace(category=category)], backbone="b",
                               data=f"set/{category}", image_size=64)

    runs = {"a": run("a", [0, 0.2, 0.1, 0.3, 0.25, 0.9, 1, 1]), "b": run("b", [0, 0.1, 0.2, 0.3, 0, 0.5, 1, 1])}
    table = loco.runs_table(runs, chance=True)
    ours = table[table["method"] == "M"].set_index(["dataset", "metric"])
    assert all(isinstance(b, np.ndarray) and b.shape == (100,) for b in ours["boot"])
    cats = [ours.loc[(f"set/{c}", "auroc_logical"), "boot"] for c in "ab"]
    assert np.allclose(ours.loc[("set", "auroc_logical"), "boot"], np.mean(cats, axis=0))
    assert ours.loc[("set", "auroc_logical"), "boot"].std() > 0 and (ours["chance"] == 50.0).all()
    chance = table[table["method"] == loco.CHANCE]
    assert all(np.all(b == 50.0) for b in chance["boot"])


def test_map_examples_cover_every_category_of_a_multi_class_run(setting):  # noqa: F811
    sources = setting.synthetic_sources("toyset", limit=None)
    runs = {}
    study.run_grid(setting, None, sources, models=("patchcore",), class_setting="multi-class", keep=runs,
                   log=lambda *_: None)
    images, masks, maps, labels = study.examples_by_source(runs, k=1)
    assert labels == ["toyset/other", "toyset/toy"] and len(images) == len(maps["PatchCore"]) == 2
