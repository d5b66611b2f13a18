"""The paper-neutral explorer (``adlib.study.explorer``), driven programmatically as a person drives its controls.

Fast: every paper's declared axes (values, defaults, the overrides a choice gives, refusals, the claims a
contrast concerns), without fitting. Slow: per paper, the chapter's way of fitting (``run_grid``) fills a run
cache in a temporary folder; the explorer then shows the default and a contrasting setting from that cache
without any fit (``engine.fit`` is made to fail), and its figure and metrics are the chosen setting's.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from adlib import papers, study
from adlib.study import claims
from adlib.study.explorer import DEFAULT, Explorer

# paper -> (axis, contrasting value) as its explorer notebook shows them
CONTRASTS = {"varad": ("m", "m=1"), "vitad": ("stages", "stages=3"), "mambaad": ("scan", "scan=hilbert,dirs=2"),
             "ladmim": ("target", "target=pixel")}


def _setting(paper: str, tmp_path, **kwargs):
    return study.resolve_setting(papers.get(paper), profile="smoke", output_root=tmp_path, **kwargs)


def _explorer(paper: str, tmp_path, **kwargs) -> Explorer:
    setting = _setting(paper, tmp_path, **kwargs)
    return Explorer(setting, setting.synthetic_sources(), log=lambda *_: None)


@pytest.mark.parametrize("paper", sorted(CONTRASTS))
def test_axes_come_from_the_declared_grids(paper, tmp_path):
    explorer = _explorer(paper, tmp_path)
    grids = explorer.setting.grids
    for axis in grids["explorer"]:
        values = explorer.values(axis.name)
        grid = grids[axis.grid]
        expected = list(grid) if isinstance(grid, dict) else [f"{axis.field}={v}" for v in grid]
        assert set(expected) <= set(values), axis.name
        assert explorer.defaults[axis.name] in values
        assert explorer.overrides(explorer.defaults) == {}  # the default setting is the recipe's
    assert explorer.label() == DEFAULT and not explorer.changed
    axis, value = CONTRASTS[paper]
    explorer.set(axis, value)
    assert explorer.label() == value and explorer.changed == {axis: value}
    grid = grids[next(a.grid for a in grids["explorer"] if a.name == axis)]
    assert explorer.overrides() == (grid[value] if isinstance(grid, dict) else {axis: int(value.split("=")[1])})
    # the claims over the contrast name it (or its axis) on one of their sides
    concerned = explorer.verdicts()
    assert len(concerned), f"{paper}: no claim concerns {value}"
    assert set(concerned["verdict"]) == {"no verdict recorded"}  # no chapter ran under this output root


def test_bad_choices_are_refused_with_the_offered_values(tmp_path):
    explorer = _explorer("mambaad", tmp_path)
    with pytest.raises(ValueError, match="no axis 'scans'"):
        explorer.set("scans", "scan=zorder,dirs=8")
    with pytest.raises(ValueError, match="not offered.*scan=hilbert,dirs=8"):
        explorer.set("scan", "scan=hilbert,dirs=16")
    with pytest.raises(ValueError, match="data 'nowhere'"):
        explorer.set("data", "nowhere")
    explorer.set("scan", "scan=zorder,dirs=8").reset()
    assert explorer.label() == DEFAULT


def test_axes_that_set_one_field_differently_are_refused(tmp_path):
    explorer = _explorer("vitad", tmp_path)
    explorer.set("stages", "stages=3").set("fuser", "fuser=cat,layers=3+4")
    assert explorer.label() == "stages=3 + fuser=cat,layers=3+4"
    assert explorer.overrides()["restraint_stages"] == (3,)
    explorer.reset().set("fuser", "fuser=vit,depth=1").set("loss", "loss=L1")
    assert explorer.overrides() == {"fuser": "vit", "fuser_depth": 1, "loss": "l1"}
    varad = _explorer("varad", tmp_path)
    assert varad.defaults["m"] == "m=4"  # the recipe's m, as the paper's


def test_verdicts_read_the_chapters_claims_csv(tmp_path):
    explorer = _explorer("mambaad", tmp_path).set("scan", "scan=hilbert,dirs=2")
    claims.record(explorer.setting, pd.DataFrame([{"claim": "more_directions_help", "comparison": "overall",
                                                   "verdict": "inconclusive", "note": "within the seeds' noise"}]))
    shown = explorer.verdicts().set_index("claim")
    assert shown.loc["more_directions_help", "verdict"] == "inconclusive"
    assert shown.loc["more_directions_help", "note"] == "within the seeds' noise"
    assert shown.loc["hilbert_8_best_scan", "verdict"] == "no verdict recorded"
    assert "scan=hilbert,dirs=2" in shown.loc["more_directions_help", "sides"]


def _widgets(box):
    yield box
    for child in getattr(box, "children", ()):
        yield from _widgets(child)


def test_widget_controls_drive_the_explorer(tmp_path):
    pytest.importorskip("ipywidgets")
    explorer = _explorer("mambaad", tmp_path)
    box = explorer.widget()
    controls = {getattr(w, "description", ""): w for w in _widgets(box)}
    status = next(w for w in _widgets(box) if type(w).__name__ == "HTML")
    assert {"data", "image", "scan", "lss"} <= set(controls)
    assert list(controls["scan"].options) == explorer.values("scan")
    controls["scan"].value = "scan=zorder,dirs=8"
    controls["image"].value = 3
    assert explorer.state["scan"] == "scan=zorder,dirs=8" and explorer.image == 3
    controls["lss"].value = "hss=1,skip=no,local=dw,k=3+5"
    assert explorer.label() == "scan=zorder,dirs=8 + hss=1,skip=no,local=dw,k=3+5"
    assert "not in the run cache" in status.value and explorer.label() in status.value  # the cache is off here


# ------------------------------------------------------------------------------------------ with fits
# Small settings for the fitted tests (both the "chapter" and the explorer use them, as the notebooks share theirs).
SMALL = {
    "varad": dict(image_size=128, epochs=1, max_train=4, max_test=4),
    "vitad": dict(epochs=1, max_train=4, max_test=4),
    "mambaad": dict(epochs=1, max_train=4, max_test=4, batch_size=2, class_setting="one-class"),
    "ladmim": dict(epochs=1, max_train=8, max_test=4),
}


def _base(paper: str, setting) -> dict:
    if paper == "ladmim":
        from adlib.papers import ladmim

        return ladmim.stage_epochs(setting)
    return {}


def _panel(fig, title_start: str) -> np.ndarray:
    ax = next(a for a in fig.axes if a.get_title().startswith(title_start))
    return np.asarray(ax.images[0].get_array())


@pytest.mark.slow
@pytest.mark.parametrize("paper", sorted(CONTRASTS))
def test_a_setting_the_chapter_ran_shows_without_training(paper, tmp_path, monkeypatch):
    from adlib import engine

    monkeypatch.setenv("ADLIB_RUN_CACHE", "1")
    monkeypatch.setenv("ADLIB_RUN_CACHE_DIR", str(tmp_path / "runs"))
    setting = _setting(paper, tmp_path, **SMALL[paper])
    sources = setting.synthetic_sources()[:1] if setting.class_setting == "one-class" else setting.synthetic_sources()
    axis, value = CONTRASTS[paper]
    probe = Explorer(setting, sources, base=_base(paper, setting), log=lambda *_: None)
    group = probe.group
    # the chapter's way: run_grid over the default and the contrast, one seed
    variants = {"default": _base(paper, setting), value: {**_base(paper, setting), **probe.axes[axis][value]}}
    chapter = study.run_grid(setting, variants, group, log=lambda *_: None)
    assert set(chapter["fit"]) == {"trained"}

    def no_fit(*args, **kwargs):
        raise AssertionError("the explorer trained a setting the run cache holds")

    monkeypatch.setattr(engine, "fit", no_fit)
    explorer = Explorer(setting, sources, base=_base(paper, setting), log=lambda *_: None)
    assert explorer.cached(explorer.defaults) and not explorer.missing_seeds()
    explorer.set(axis, value)
    assert explorer.cached()
    fig = explorer.figure()
    runs = {name: explorer.run(state) for name, state in (("default", explorer.defaults), (value, explorer.state))}
    assert {r.fit_from for r in runs.values()} == {"cache"}
    _, (category, index) = explorer.image_options()[explorer.image]
    chosen, default = _panel(fig, value), _panel(fig, "default")
    np.testing.assert_allclose(chosen, explorer.anomaly_map(runs[value], category, index), rtol=1e-5)
    scores = {name: explorer.image_score(run, category, index) for name, run in runs.items()}
    assert f"image score {scores[value]:.4g}" in next(a.get_title() for a in fig.axes if a.get_title().startswith(value))
    if paper == "ladmim":  # the map is the tokenizer's (HVQ) error, which the MIM's target does not change
        np.testing.assert_allclose(chosen, default)
        assert scores[value] != scores["default"]
    else:
        assert not np.allclose(chosen, default), "the chosen setting's map is the default's"

    metrics = explorer.metrics().set_index(["level", "metric"])
    scope = "category" if len(group) == 1 else "mean"
    for label in ("default", value):
        rows = chapter[(chapter["setting"] == label) & (chapter["scope"] == scope)
                       & (chapter["protocol"] == setting.protocol)].set_index(["level", "metric"])["value"]
        for key in metrics.index:
            assert metrics.loc[key, f"{label} mean"] == pytest.approx(rows.loc[key]), (label, key)
            assert metrics.loc[key, f"{label} seeds"] == 1
    assert metrics.attrs["fits"] == {"default": ["seed 0: cache"], value: ["seed 0: cache"]}

    if paper == "varad":  # VarAD's test-time view on the same explorer: the default model, parts dropped
        view = study.explorer.ScanView(explorer)
        first = list(view.model.directions[0])[0]
        fig = view.figure(directions=[first], hierarchies=[0])
        assert not np.allclose(_panel(fig, f"directions {first}"), _panel(fig, "all directions"))
        with pytest.raises(ValueError, match="directions"):
            view.figure(directions=["diagonal"])

    # another image: the figure follows it
    explorer.set("image", len(explorer.image_options()) - 1)
    _, (category2, index2) = explorer.image_options()[explorer.image]
    np.testing.assert_allclose(_panel(explorer.figure(), value), explorer.anomaly_map(runs[value], category2, index2),
                               rtol=1e-5)


@pytest.mark.slow
def test_a_setting_not_in_the_cache_is_fitted_on_request_then_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("ADLIB_RUN_CACHE", "1")
    monkeypatch.setenv("ADLIB_RUN_CACHE_DIR", str(tmp_path / "runs"))
    setting = _setting("mambaad", tmp_path, **SMALL["mambaad"])
    messages = []
    explorer = Explorer(setting, setting.synthetic_sources()[:1], log=messages.append)
    explorer.set("lss", "hss=1,skip=no,local=dw,k=3+5")
    assert explorer.missing_seeds() == [0]
    runs = explorer.fit(progress=False)
    assert [r.fit_from for r in runs] == ["trained"]
    assert "not in the run cache" in messages[-1]
    again = Explorer(setting, setting.synthetic_sources()[:1], log=messages.append).set("lss", "hss=1,skip=no,local=dw,k=3+5")
    assert again.cached() and again.run().fit_from == "cache"
