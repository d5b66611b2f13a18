"""adlib.plots on tiny inputs: the figures have the panels, bars and lines the data asks for."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from adlib import plots


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def long_rows(settings, metrics=("auroc", "f1max", "ap"), datasets=("A",), method="VarAD", level="pixel"):
    return pd.DataFrame([
        {"dataset": d, "method": method, "setting": s, "level": level, "metric": m, "value": 10.0 * i + j}
        for d in datasets for i, s in enumerate(settings) for j, m in enumerate(metrics)
    ])


def test_anomaly_map_grid_layout_and_overlay():
    images = [torch.rand(3, 16, 16) for _ in range(2)]
    masks = [torch.zeros(1, 16, 16), torch.ones(16, 16)]
    maps = {"VarAD": [np.random.rand(8, 8), np.random.rand(8, 8)], "PatchCore": [torch.rand(16, 16)] * 2}
    fig = plots.anomaly_map_grid(images, masks, maps, row_labels=["a", "b"])
    assert len(fig.axes) == 2 * 4
    assert [ax.get_title() for ax in fig.axes[:4]] == ["Image", "GT", "VarAD", "PatchCore"]
    shown = fig.axes[2].images[0].get_array()
    assert shown.shape[:2] == (16, 16)  # maps are brought to the image size


def test_anomaly_map_grid_rejects_mismatched_counts():
    with pytest.raises(ValueError, match="VarAD"):
        plots.anomaly_map_grid([torch.rand(3, 8, 8)] * 2, None, {"VarAD": [np.zeros((8, 8))]})


def test_normalize_maps_joint_and_each():
    maps = np.stack([np.zeros((2, 2)), np.full((2, 2), 2.0)])
    maps[0, 0, 0] = 1.0
    joint = plots.normalize_maps(maps, "joint")
    assert joint.max() == 1.0 and joint[0, 0, 0] == 0.5
    each = plots.normalize_maps(maps, "each")
    assert each[0, 0, 0] == 1.0 and np.all(each[1] == 0)  # a constant map becomes zeros
    with pytest.raises(ValueError):
        plots.normalize_maps(maps, "nope")


def test_grouped_bars_one_bar_per_setting_and_metric():
    df = long_rows(["m=1", "m=2", "m=4"], datasets=("A", "B"))
    fig = plots.grouped_bars(df, order=["m=4", "m=2", "m=1"])
    assert len(fig.axes) == 2
    ax = fig.axes[0]
    assert len(ax.patches) == 3 * 3
    assert [t.get_text() for t in ax.get_xticklabels()] == ["m=4", "m=2", "m=1"]
    auroc_heights = [p.get_height() for p in ax.patches[:3]]
    assert auroc_heights == [20.0, 10.0, 0.0]  # in the requested order


def test_grouped_bars_skips_nan_and_rejects_empty():
    df = long_rows(["a", "b"])
    df.loc[0, "value"] = np.nan
    fig = plots.grouped_bars(df)
    assert np.isnan(fig.axes[0].patches[0].get_height())
    with pytest.raises(ValueError):
        plots.grouped_bars(df, metrics=("fps",))


def test_resolution_lines_sorted_by_resolution():
    df = pd.concat([long_rows(["res=512", "res=256", "res=1024"], method=m) for m in ("VarAD", "PatchCore")])
    fig = plots.resolution_lines(df, metrics=("f1max",))
    lines = [c.lines[0] for c in fig.axes[0].containers]  # one error-bar line per method
    assert len(lines) == 2
    assert list(lines[0].get_xdata()) == [256, 512, 1024]
    assert list(lines[0].get_ydata()) == [11.0, 1.0, 21.0]


def test_setting_value():
    assert plots.setting_value("res=768") == 768
    assert plots.setting_value("m=4") == 4
    assert np.isnan(plots.setting_value("default"))


def test_complexity_panels_adds_quality_scatter():
    rows = []
    for method, (t, p, f, s, q) in {"VarAD": (10, 5, 2, 3, 60), "PatchCore": (5, 4, 8, 6, 55)}.items():
        rows += [{"dataset": "", "method": method, "setting": "default", "level": "model", "metric": k, "value": v}
                 for k, v in zip(("train_s", "params_m", "flops_g", "fps"), (t, p, f, s))]
        rows.append({"dataset": "A", "method": method, "setting": "default", "level": "pixel", "metric": "f1max", "value": q})
    fig = plots.complexity_panels(pd.DataFrame(rows))
    assert len(fig.axes) == 5
    assert [p.get_height() for p in fig.axes[0].patches] == [10, 5]


def test_pca_rgb_range_and_shared_basis():
    a = torch.randn(8, 4, 5)
    rgb = plots.pca_rgb(a)
    assert rgb.shape == (4, 5, 3) and rgb.min() >= 0 and rgb.max() <= 1
    same, also = plots.pca_rgb(a, a.clone())
    np.testing.assert_allclose(same, also)
    with pytest.raises(ValueError):
        plots.pca_rgb(torch.randn(4, 5))


def test_draw_gap_marks_visible_hidden_target():
    h, w, target, gap = 4, 5, 12, 5
    ax = plots.draw_gap(torch.arange(h * w), h, w, target=target, gap=gap)
    state = np.asarray(ax.images[0].get_array()).reshape(-1)
    assert (state == 3).sum() == 1 and state[target] == 3
    assert (state == 1).sum() == target - gap + 1  # v_1 .. v_{l-M}
    assert (state == 2).sum() == gap - 1  # the M - 1 tokens just before the target
    assert (state == 0).sum() == h * w - target - 1
    with pytest.raises(ValueError):
        plots.draw_gap(torch.arange(6), 2, 2, target=0, gap=1)


def test_token_prediction_grid_rows_per_hierarchy():
    actual = [torch.randn(6, 4, 4), torch.randn(6, 2, 2)]
    predicted = [a + 0.1 for a in actual]
    errors = [torch.rand(4, 4), torch.rand(2, 2)]
    fig = plots.token_prediction_grid(actual, predicted, errors, mask=torch.zeros(8, 8))
    image_axes = [ax for ax in fig.axes if ax.images and ax.get_title()]
    assert len(image_axes) == 2 * 4


def test_image_row_images_and_maps():
    fig = plots.image_row({"image": torch.rand(3, 8, 8), "map": torch.rand(8, 8)})
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in titled] == ["image", "map"]


def _seeded(settings, values, metric="f1max", chance=None, **extra):
    """Rows over three seeds (value, value + 1, value + 2 per setting), as run_grid gives them."""
    return pd.DataFrame([{"dataset": "A", "method": "VarAD", "setting": s, "level": "pixel", "metric": metric,
                          "value": v + seed, "seed": seed, **({"chance": chance} if chance is not None else {}), **extra}
                         for s, v in zip(settings, values) for seed in range(3)])


def test_variant_panels_start_at_zero_and_draw_the_seeds_spread_and_chance():
    """The issue's fig4: values near 99 once drawn on a 98.4-99.6 axis; bars now start at zero (or a stated
    baseline), with the spread over seeds and the chance level."""
    df = _seeded(["a", "b"], [98.0, 97.0], chance=1.0)
    fig = plots.variant_panels(df, metrics=("f1max",))
    ax = fig.axes[0]
    assert ax.get_ylim()[0] == 0.0
    bars = [p for p in ax.patches if p.get_height() > 0]
    assert [b.get_height() for b in bars] == [99.0, 98.0]  # the means over seeds
    segments = [c for c in ax.collections if c.get_segments()]
    assert segments and np.allclose([s[1][1] - s[0][1] for s in segments[0].get_segments()], [2.0, 2.0])  # ± 1 std
    assert any(line.get_linestyle() == "--" and line.get_ydata()[0] == 1.0 for line in ax.get_lines())  # chance
    from_chance = plots.variant_panels(_seeded(["a", "b"], [60.0, 55.0], metric="auroc", chance=50.0),
                                       metrics=("auroc",), baseline="chance")
    assert from_chance.axes[0].get_ylim()[0] == 50.0 and "from 50" in from_chance.axes[0].get_title()


def test_figures_never_average_scopes_or_protocols():
    df = pd.concat([_seeded(["a"], [80.0], scope="mean", protocol="exact"),
                    _seeded(["a"], [20.0], scope="pooled", protocol="exact")])
    ax = plots.variant_panels(df, metrics=("f1max",)).axes[0]
    assert [p.get_height() for p in ax.patches] == [81.0]  # the mean over categories, not (81 + 21) / 2
    both = pd.concat([_seeded(["a"], [80.0], protocol="exact"), _seeded(["a"], [70.0], protocol="ader")])
    with pytest.raises(ValueError, match="protocols"):
        plots.variant_panels(both, metrics=("f1max",))
    with pytest.raises(ValueError, match="protocols"):
        plots.grouped_bars(both, metrics=("f1max",))


def test_long_labels_are_wrapped_not_clipped():
    labels = ["hss=2/3,skip=yes,local=dw+1x1,k=5+7", "hss=1,skip=no,local=dw+1x1,k=5+7"]
    fig = plots.variant_panels(_seeded(labels, [90.0, 80.0]), metrics=("f1max",))
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert all("\n" in t and max(len(line) for line in t.splitlines()) <= 17 for t in ticks)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.get_tightbbox(renderer)
    assert box.x0 >= -1 and box.x1 <= fig.bbox.x1 + 1  # nothing drawn outside the figure


def test_grouped_bars_draw_the_seeds_spread():
    fig = plots.grouped_bars(_seeded(["a", "b"], [50.0, 40.0]), metrics=("f1max",))
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == [51.0, 41.0] and ax.get_ylim()[0] == 0.0
    assert ax.collections and len(ax.collections[0].get_segments()) == 2
