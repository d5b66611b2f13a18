"""The figure styles the papers use, drawn with matplotlib.

- `anomaly_map_grid`: one row per image; image, ground truth, then one anomaly map per method (Fig. 3, 6).
- `grouped_bars`: ablation bars, one group per setting and one bar per metric.
- `variant_panels`: ablation bars with one panel (and axis range) per metric, mean ± std over seeds (Fig. 4).
- `resolution_lines`: a metric against image resolution, one line per method (Fig. 5).
- `complexity_panels`: training time, parameters, FLOPs and FPS per method, plus max-F1 vs FLOPs (Fig. 7).
- `nothing_to_draw`: a figure whose one panel says what is missing, for a figure with nothing to draw (data or
  weights not here, every row not run); `or_missing(draw, ...)` draws, or returns that panel when ``draw``
  raises ``NothingToDraw`` (empty input); `stamp_path_check` marks a path check's figure.
- walkthrough helpers: `pca_rgb` (tokens as colours), `draw_gap` (what the gap M hides), `code_maps`,
  `code_gallery`, `histogram_panels` and `score_scatter` (discrete codes, code histograms, two scores);
  scan paths are drawn by `adlib.scans.draw_directions`.

Every function takes long-format tables (`dataset, method, setting, level, metric, value`) or arrays and
returns a matplotlib Figure; saving (with provenance) is `adlib.results.save_figure`'s job.

Figures show numbers as computed: bars of scores start at zero (or a stated ``baseline``), never at a range
fitted to the data, and draw the seeds' spread (standard deviation over seeds) with each seed as a dot where
the table has seeds; a table's chance level (``chance`` column) is drawn as a dashed line. Rows of several
scopes (per category, mean over categories, pooled) are never averaged together: the mean over categories is
shown when present (as the claims read it), pooled rows never; rows of several protocols are refused. Long
labels are wrapped, never clipped.
"""
from __future__ import annotations

import re
import textwrap
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

METRIC_LABELS = {
    "auroc": "AUROC", "f1max": "max-F1", "ap": "AP", "aupro": "AU-PRO", "mad": "mAD",
    "params_m": "Params (M)", "fps": "FPS", "flops_g": "FLOPs (G)", "train_s": "Training time (s)",
}
MAP_CMAP = "jet"


class NothingToDraw(ValueError):
    """A figure function was given nothing to draw (no images, no rows with values)."""


def nothing_to_draw(title: str, reasons: str | Sequence[str] = ()):
    """A figure with one panel saying that ``title`` has nothing to draw, and why (each reason on a line)."""
    import textwrap

    plt = _pyplot()
    reasons = [reasons] if isinstance(reasons, str) else list(dict.fromkeys(r for r in reasons if r))
    lines = [f"{title}: nothing to draw"] + (["", "why:"] if reasons else [])
    for reason in reasons[:8] or ["no result to show (nothing was run)"]:
        lines += textwrap.wrap(reason, 90, initial_indent="- ", subsequent_indent="  ")
    if len(reasons) > 8:
        lines.append(f"... and {len(reasons) - 8} more (see the table's notes)")
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.22 * len(lines)))
    ax.axis("off")
    ax.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", fontsize=9, family="monospace", transform=ax.transAxes)
    return fig


def or_missing(draw, *args, missing: str | Sequence[str] = (), title: str | None = None, **kwargs):
    """``draw(*args, **kwargs)``, or, when it has nothing to draw (``NothingToDraw``), ``nothing_to_draw`` with
    ``missing`` (the reasons nothing was run) and the drawing function's own words."""
    try:
        return draw(*args, **({"title": title} if title is not None else {}), **kwargs)
    except NothingToDraw as error:
        reasons = [missing] if isinstance(missing, str) else list(missing)
        return nothing_to_draw(title or getattr(draw, "__name__", "figure"), [*reasons, str(error)])


def not_run_reasons(df: pd.DataFrame) -> list[str]:
    """The distinct reasons (``note``) of a long table's rows that have no value."""
    if df is None or "note" not in getattr(df, "columns", ()):
        return []
    notes = df.loc[df["value"].isna(), "note"].dropna().astype(str)
    return list(dict.fromkeys(n for n in notes if n))


def stamp_path_check(fig, label: str) -> None:
    """A red banner above the figure and a diagonal watermark: a path check's figure is not a result."""
    text = label.upper()
    for artist in list(fig.texts):
        if artist.get_gid() == "adlib-path-check":
            artist.remove()
    fig.text(0.5, 1.0, f" {text}: the paper profile's code path at a cut scale, random weights where none "
                       "could be had, stand-in data ", ha="center", va="bottom", fontsize=10, weight="bold",
             color="white", backgroundcolor="#c62828", gid="adlib-path-check")
    fig.text(0.5, 0.5, text, ha="center", va="center", rotation=25, fontsize=28, weight="bold", color="#c62828",
             alpha=0.25, gid="adlib-path-check", zorder=1000)


def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def _wrap(label, width: int = 16) -> str:
    """A label broken into lines of about ``width`` characters (at spaces, commas, "+" or "/")."""
    text = re.sub(r"([,+/])(?=\S)", r"\1 ", str(label))
    lines = textwrap.wrap(text, width=width, break_long_words=True) or [str(label)]
    return "\n".join(line.replace(", ", ",").replace("+ ", "+").replace("/ ", "/") for line in lines)


def one_scope(df: pd.DataFrame, what: str) -> pd.DataFrame:
    """The rows a figure may average over seeds and data sources: never pooled rows; the mean over categories
    alone when the table has it (as the claims read it); one protocol (several: a ``ValueError``)."""
    if "scope" in df.columns:
        df = df[df["scope"].astype(str) != "pooled"]
        if (df["scope"].astype(str) == "mean").any():
            df = df[df["scope"].astype(str) == "mean"]
    if "protocol" in df.columns and "level" in df.columns:
        quality = df[df["level"] != "model"]
        found = sorted({str(p) for p in quality["protocol"].dropna() if str(p)})
        if len(found) > 1:
            raise ValueError(f"{what}: rows of protocols {found} would be averaged into one bar; select one protocol")
    return df


def _seed_stats(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per ``keys``: the mean over seeds of each seed's mean (over data sources), its std over seeds, the seeds'
    values, and the chance level when the rows carry one."""
    data = df.dropna(subset=["value"]).assign(seed=df["seed"] if "seed" in df.columns else 0)
    per_seed = data.groupby(keys + ["seed"], sort=False)["value"].mean()
    out = per_seed.groupby(level=keys, sort=False).agg(["mean", "std", list])
    out["std"] = out["std"].fillna(0.0)
    if "chance" in data.columns:
        out["chance"] = pd.to_numeric(data["chance"], errors="coerce").groupby([data[k] for k in keys], sort=False).mean()
    return out


def _baseline(ax, baseline, chance: float | None, top: float) -> None:
    """Bars start at zero (or the stated baseline); the chance level is drawn when known."""
    bottom = float(baseline) if baseline is not None and not isinstance(baseline, str) else 0.0
    if isinstance(baseline, str) and baseline == "chance" and chance is not None and np.isfinite(chance):
        bottom = float(chance)
    ax.set_ylim(bottom, max(top * 1.08, bottom + 1.0) if np.isfinite(top) else bottom + 1.0)
    if chance is not None and np.isfinite(chance) and chance > bottom:
        ax.axhline(chance, color="#c62828", ls="--", lw=0.9, label="chance")


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _image_hwc(image) -> np.ndarray:
    """(3, H, W) or (H, W, 3) or (H, W) array/tensor in [0, 1] -> (H, W, 3) float for imshow."""
    array = _as_numpy(image).astype(np.float32)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"image has shape {array.shape}; expected (3, H, W), (H, W, 3) or (H, W)")
    return np.clip(array, 0.0, 1.0)


def _map_hw(array) -> np.ndarray:
    array = _as_numpy(array).astype(np.float32)
    array = np.squeeze(array)
    if array.ndim != 2:
        raise ValueError(f"map has shape {array.shape}; expected (H, W) or (1, H, W)")
    return array


def _resize_nearest(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if array.shape == shape:
        return array
    rows = np.minimum((np.arange(shape[0]) * array.shape[0] / shape[0]).astype(int), array.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) * array.shape[1] / shape[1]).astype(int), array.shape[1] - 1)
    return array[rows][:, cols]


def normalize_maps(maps, mode: str = "joint") -> np.ndarray:
    """Scale a stack of maps (N, H, W) to [0, 1]: jointly over the stack ("joint") or per map ("each")."""
    array = _as_numpy(maps).astype(np.float32)
    if array.ndim == 2:
        array = array[None]
    if mode == "joint":
        low, high = float(array.min()), float(array.max())
        return (array - low) / (high - low) if high > low else np.zeros_like(array)
    if mode == "each":
        return np.stack([normalize_maps(m, "joint")[0] for m in array])
    raise ValueError(f"normalize mode {mode!r} unknown; expected 'joint' or 'each'")


def _scaled_or_none(stack: Sequence, normalize: str) -> list:
    """``normalize_maps`` over the maps given, None kept in its place."""
    given = [i for i, m in enumerate(stack) if m is not None]
    out: list = [None] * len(stack)
    if given:
        for i, scaled in zip(given, normalize_maps(np.stack([_map_hw(stack[i]) for i in given]), normalize)):
            out[i] = scaled
    return out


def anomaly_map_grid(images: Sequence, masks: Sequence | None, maps: Mapping[str, Sequence],
                     row_labels: Sequence[str] | None = None, normalize: str = "joint",
                     overlay: float = 0.5, cell: float = 1.8, title: str | None = None):
    """Rows of image | ground truth | one anomaly map per method (the papers' qualitative figures).

    ``maps`` maps a method name to N maps (each (H, W)); ``normalize`` scales each method's maps to
    [0, 1] jointly over the shown images ("joint", comparable across rows) or per image ("each").
    ``overlay`` > 0 blends the heat map over the image. A map given as None (the method did not run on that
    image's source) is drawn as a grey "not run here" panel.
    """
    plt = _pyplot()
    n = len(images)
    if n == 0:
        raise NothingToDraw("anomaly_map_grid: no images given")
    for method, stack in maps.items():
        if len(stack) != n:
            raise ValueError(f"anomaly_map_grid: method {method!r} has {len(stack)} maps for {n} images")
    if masks is not None and len(masks) != n:
        raise ValueError(f"anomaly_map_grid: {len(masks)} masks for {n} images")
    scaled = {method: _scaled_or_none(stack, normalize) for method, stack in maps.items()}
    columns = ["Image"] + (["GT"] if masks is not None else []) + list(maps)
    fig, axes = plt.subplots(n, len(columns), figsize=(cell * len(columns), cell * n), squeeze=False)
    cmap = plt.get_cmap(MAP_CMAP)
    for row in range(n):
        image = _image_hwc(images[row])
        panels = [image]
        if masks is not None:
            panels.append(_resize_nearest(_map_hw(masks[row]), image.shape[:2]))
        for method in maps:
            if scaled[method][row] is None:  # not run on this image's source
                panels.append(None)
                continue
            heat = cmap(_resize_nearest(scaled[method][row], image.shape[:2]))[..., :3]
            panels.append((1 - overlay) * heat + overlay * image if overlay > 0 else heat)
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            if panel is None:
                ax.set_facecolor("0.9")
                ax.text(0.5, 0.5, "not run\nhere", ha="center", va="center", fontsize=8, transform=ax.transAxes)
            else:
                ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(_wrap(columns[col], 14), fontsize=9)
        if row_labels is not None:
            axes[row, 0].set_ylabel(_wrap(row_labels[row], 18), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _check_long(df: pd.DataFrame, what: str, needed: Sequence[str] = ("setting", "metric", "value")) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: table lacks columns {missing}; expected the long format")
    if df.empty:
        raise NothingToDraw(f"{what}: the table is empty")


def grouped_bars(df: pd.DataFrame, metrics: Sequence[str] = ("auroc", "f1max", "ap"),
                 order: Sequence[str] | None = None, facet: str = "dataset", level: str | None = "pixel",
                 title: str | None = None, ylim: tuple[float, float] | None = None, panel_width: float = 4.5):
    """Fig. 4 style: per facet (dataset) a panel with one bar group per `setting`, one bar per metric: the mean
    over seeds, the standard deviation over seeds as an error bar. Bars start at zero unless ``ylim`` says
    otherwise. ``order`` fixes the order of settings (default: first appearance). Values are in percent.
    """
    plt = _pyplot()
    _check_long(df, "grouped_bars")
    data = df[df["metric"].isin(metrics)]
    if level is not None and "level" in data.columns:
        data = data[data["level"] == level]
    if data.empty:
        raise NothingToDraw(f"grouped_bars: no rows with metrics {list(metrics)} at level {level!r}")
    data = one_scope(data, "grouped_bars")
    facets = list(dict.fromkeys(data[facet])) if facet in data.columns else [None]
    settings = list(order) if order is not None else list(dict.fromkeys(data["setting"]))
    fig, axes = plt.subplots(1, len(facets), figsize=(panel_width * len(facets), 3.2), squeeze=False)
    width = 0.8 / len(metrics)
    x = np.arange(len(settings))
    for ax, name in zip(axes[0], facets):
        part = data if name is None else data[data[facet] == name]
        for i, metric in enumerate(metrics):
            rows = part[part["metric"] == metric]
            stats = _seed_stats(rows, ["setting"]) if len(rows.dropna(subset=["value"])) else None
            heights = [stats["mean"].get(s, np.nan) if stats is not None else np.nan for s in settings]
            spread = [stats["std"].get(s, 0.0) if stats is not None else 0.0 for s in settings]
            bars = ax.bar(x + (i - (len(metrics) - 1) / 2) * width, heights, width, yerr=spread, capsize=2,
                          error_kw={"lw": 0.8}, label=METRIC_LABELS.get(metric, metric))
            for bar, h in zip(bars, heights):
                if np.isfinite(h):
                    ax.annotate(f"{h:.1f}", (bar.get_x() + bar.get_width() / 2, h), ha="center",
                                va="bottom", fontsize=6, rotation=90, xytext=(0, 1), textcoords="offset points")
        ran = part.dropna(subset=["value"])
        for i, s in enumerate(settings):
            if s not in set(ran["setting"]):
                ax.text(x[i], 1, "not run", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
        ax.set_xticks(x)
        ax.set_xlim(-0.6, len(settings) - 0.4)
        ax.set_xticklabels([_wrap(s) for s in settings], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("%")
        if ylim is not None:
            ax.set_ylim(*ylim)
        elif len(ran):
            ax.set_ylim(0, max(float(ran["value"].max()) * 1.15, 1.0))
        if name is not None:
            ax.set_title(str(name), fontsize=9)
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def variant_panels(df: pd.DataFrame, metrics: Sequence[str] = ("auroc", "f1max", "ap"),
                   order: Sequence[str] | None = None, level: str | None = "pixel", title: str | None = None,
                   panel_width: float | None = None, baseline: float | str | None = 0.0):
    """Fig. 4 style with one panel per metric: one bar per variant (``setting``), the mean over seeds and data
    sources, with the standard deviation over seeds as an error bar and each seed as a dot. Variants that were
    not run are marked. Bars start at ``baseline``: 0 by default, a number, or "chance" (the rows' chance
    level); the chance level is drawn as a dashed line when the rows carry it. The mean over categories is
    used where the table has it, pooled rows never; rows of two protocols are refused (``one_scope``)."""
    plt = _pyplot()
    _check_long(df, "variant_panels")
    data = df[df["metric"].isin(metrics)]
    if level is not None and "level" in data.columns:
        data = data[data["level"] == level]
    if data.empty:
        raise NothingToDraw(f"variant_panels: no rows with metrics {list(metrics)} at level {level!r}")
    data = one_scope(data, "variant_panels")
    settings = list(order) if order is not None else list(dict.fromkeys(data["setting"]))
    longest = max((len(line) for s in settings for line in _wrap(s).splitlines()), default=8)
    # rotated labels of several lines run into each other: those stand upright, each with room for its longest line
    rotate = len(settings) > 3 and not any("\n" in _wrap(s) for s in settings)
    width = panel_width or (max(3.2, 0.45 * len(settings) + 0.06 * longest * 2) if rotate or len(settings) <= 3
                            else 0.3 + len(settings) * (0.065 * longest + 0.15))
    fig, axes = plt.subplots(1, len(metrics), figsize=(width * len(metrics), 3.6), squeeze=False)
    x = np.arange(len(settings))
    for ax, metric in zip(axes[0], metrics):
        rows = data[data["metric"] == metric]
        stats = _seed_stats(rows, ["setting"]) if len(rows.dropna(subset=["value"])) else None
        means = [stats["mean"].get(s, np.nan) if stats is not None else np.nan for s in settings]
        stds = [stats["std"].get(s, 0.0) if stats is not None else 0.0 for s in settings]
        dots = [np.asarray(stats["list"].get(s, []), dtype=float) if stats is not None else np.zeros(0) for s in settings]
        chance = None
        if stats is not None and "chance" in stats and stats["chance"].notna().any():
            chance = float(stats["chance"].mean())
        bottom = float(baseline) if isinstance(baseline, (int, float)) else \
            (chance if baseline == "chance" and chance is not None else 0.0)
        ax.bar(x, [m - bottom if np.isfinite(m) else np.nan for m in means], 0.7, bottom=bottom, yerr=stds, capsize=3,
               color="#90a4ae", edgecolor="#455a64")
        for i, values in enumerate(dots):
            ax.plot(np.full(len(values), x[i]), values, "o", ms=3, color="#263238")
            if not len(values):
                ax.text(x[i], 0.02, "not run", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4",
                        transform=ax.get_xaxis_transform())
        finite = [v for arr in dots for v in arr if np.isfinite(v)] + [m + s for m, s in zip(means, stds) if np.isfinite(m)]
        _baseline(ax, bottom, chance, max(finite) if finite else float("nan"))
        ax.set_xticks(x)
        ax.set_xticklabels([_wrap(s) for s in settings], rotation=35 if rotate else 0,
                           ha="right" if rotate else "center", fontsize=8)
        ax.set_title(METRIC_LABELS.get(metric, metric) + (f" (from {bottom:g})" if bottom else ""), fontsize=9)
        ax.set_ylabel("%")
        ax.grid(axis="y", alpha=0.3)
        if chance is not None and chance > bottom:
            ax.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(_wrap(title, 90), fontsize=10)
    fig.tight_layout()
    return fig


def setting_value(setting: str) -> float:
    """The number in a setting label such as "res=512" or "m=4" (NaN when there is none)."""
    match = re.search(r"(-?\d+(?:\.\d+)?)", str(setting))
    return float(match.group(1)) if match else float("nan")


def resolution_lines(df: pd.DataFrame, metrics: Sequence[str] = ("auroc", "f1max", "ap"),
                     facet: str = "dataset", level: str | None = "pixel", title: str | None = None):
    """Fig. 5 style: one panel per (facet, metric), the metric against resolution, one line per method: the mean
    over seeds with the standard deviation over seeds as error bars, the chance level dashed when known.

    The resolution is read from `setting` ("res=512" -> 512).
    """
    plt = _pyplot()
    _check_long(df, "resolution_lines", ("setting", "metric", "value", "method"))
    data = df[df["metric"].isin(metrics)].copy()
    if level is not None and "level" in data.columns:
        data = data[data["level"] == level]
    if "scope" in data.columns:  # per facet: its mean over categories where it has one, never pooled
        data = pd.concat([one_scope(part, "resolution_lines") for _, part in
                          data.groupby(facet if facet in data.columns else "metric", sort=False)]) if len(data) else data
    data["resolution"] = data["setting"].map(setting_value)
    data = data[np.isfinite(data["resolution"])]
    if data.empty:
        raise NothingToDraw("resolution_lines: no rows with a resolution in `setting` (e.g. 'res=512')")
    facets = list(dict.fromkeys(data[facet])) if facet in data.columns else [None]
    fig, axes = plt.subplots(len(facets), len(metrics), figsize=(3.2 * len(metrics), 2.8 * len(facets)),
                             squeeze=False)
    for r, name in enumerate(facets):
        part = data if name is None else data[data[facet] == name]
        for c, metric in enumerate(metrics):
            ax = axes[r, c]
            chances = []
            if part[part["metric"] == metric].empty:  # e.g. AU-PRO at image level: say so, not an empty frame
                ax.text(0.5, 0.5, f"no {METRIC_LABELS.get(metric, metric)} rows here", ha="center", va="center",
                        fontsize=8, color="0.4", transform=ax.transAxes)
            for method, rows in part[part["metric"] == metric].groupby("method", sort=False):
                stats = _seed_stats(rows, ["resolution"]).sort_index()
                ax.errorbar(stats.index, stats["mean"].values, yerr=stats["std"].values, marker="o", capsize=3,
                            label=str(method))
                if "chance" in stats and stats["chance"].notna().any():
                    chances.append(float(stats["chance"].mean()))
            if chances:
                ax.axhline(float(np.mean(chances)), color="#c62828", ls="--", lw=0.9, label="chance")
            resolutions = sorted(part["resolution"].unique())
            ax.set_xticks(resolutions)
            ax.set_xticklabels([str(int(v)) for v in resolutions], fontsize=8)
            ax.set_xlabel("resolution (px)", fontsize=8)
            ax.set_title(f"{name} · {METRIC_LABELS.get(metric, metric)}" if name else
                         METRIC_LABELS.get(metric, metric), fontsize=9)
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def complexity_panels(df: pd.DataFrame, metrics: Sequence[str] = ("train_s", "params_m", "flops_g", "fps"),
                      quality: str | None = "f1max", title: str | None = None):
    """Fig. 7 style: one bar panel per complexity metric (one bar per method) and, when the table has
    pixel `quality` rows, a scatter of quality against FLOPs with marker size by parameter count."""
    plt = _pyplot()
    _check_long(df, "complexity_panels", ("method", "metric", "value"))
    model = df[df["metric"].isin(metrics)]
    present = [m for m in metrics if m in set(model["metric"])]
    if not present:
        raise NothingToDraw(f"complexity_panels: no rows with metrics {list(metrics)}")
    has_quality = quality is not None and not df[(df["metric"] == quality) &
                                                 (df.get("level", "pixel") == "pixel")].empty
    panels = len(present) + int(has_quality and "flops_g" in present)
    fig, axes = plt.subplots(1, panels, figsize=(3.0 * panels, 3.0), squeeze=False)
    methods = list(dict.fromkeys(model["method"]))
    colors = plt.get_cmap("tab10")(np.arange(len(methods)) % 10)
    for ax, metric in zip(axes[0], present):
        stats = _seed_stats(model[model["metric"] == metric], ["method"])
        heights = [stats["mean"].get(m, np.nan) for m in methods]
        spread = [stats["std"].get(m, 0.0) for m in methods]
        ax.bar(range(len(methods)), heights, yerr=spread, capsize=3, color=colors)  # from zero
        for i, h in enumerate(heights):
            if np.isfinite(h):
                ax.annotate(f"{h:.3g}", (i, h + spread[i]), ha="center", va="bottom", fontsize=7)
        ax.set_ylim(0, None)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels([_wrap(m, 12) for m in methods], rotation=30, ha="right", fontsize=8)
        ax.set_title(METRIC_LABELS.get(metric, metric), fontsize=9)
    if panels > len(present):
        ax = axes[0, -1]
        pixel = one_scope(df[(df["metric"] == quality) & (df["level"] == "pixel")], "complexity_panels") \
            .groupby("method")["value"].mean()
        flops = model[model["metric"] == "flops_g"].groupby("method")["value"].mean()
        params = model[model["metric"] == "params_m"].groupby("method")["value"].mean()
        for i, method in enumerate(methods):
            if method in pixel and method in flops:
                size = 30 + 10 * float(params.get(method, 1.0))
                ax.scatter(flops[method], pixel[method], s=size, color=colors[i], alpha=0.7, label=method)
                ax.annotate(method, (flops[method], pixel[method]), fontsize=7)
        ax.set_xlabel("FLOPs (G)", fontsize=8)
        ax.set_ylabel(f"pixel {METRIC_LABELS.get(quality, quality)} (%)", fontsize=8)
        ax.set_title("quality vs cost (size: params)", fontsize=9)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------- walkthrough
def pca_rgb(*features):
    """(C, h, w) tokens -> (h, w, 3) colours from their first three principal components.

    Several grids (same C) share one basis fitted on all of them, so their colours are comparable; then a
    list is returned.
    """
    arrays = [_as_numpy(f).astype(np.float64) for f in features]
    if not arrays:
        raise ValueError("pca_rgb: no features given")
    for array in arrays:
        if array.ndim != 3 or array.shape[0] != arrays[0].shape[0]:
            raise ValueError(f"features have shape {array.shape}; expected (C, h, w) with the same C")
    flats = [a.reshape(a.shape[0], -1).T for a in arrays]
    stacked = np.concatenate(flats)
    mean = stacked.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(stacked - mean, full_matrices=False)
    basis = vt[: min(3, vt.shape[0])].T
    comps = (stacked - mean) @ basis
    if comps.shape[1] < 3:
        comps = np.concatenate([comps, np.zeros((comps.shape[0], 3 - comps.shape[1]))], axis=1)
    low, high = comps.min(axis=0), comps.max(axis=0)
    comps = (comps - low) / np.where(high > low, high - low, 1.0)
    out, start = [], 0
    for a, flat in zip(arrays, flats):
        out.append(comps[start : start + len(flat)].reshape(a.shape[1], a.shape[2], 3).astype(np.float32))
        start += len(flat)
    return out[0] if len(out) == 1 else out


def token_prediction_grid(actual: Sequence, predicted: Sequence, errors: Sequence, mask=None, cell: float = 2.4):
    """One row per hierarchy: actual tokens and predicted tokens (shared PCA colours) and the error grid.

    ``actual``/``predicted``: per hierarchy (C, h, w); ``errors``: per hierarchy (h, w); ``mask`` (H, W)
    adds the ground truth as a last column for reference.
    """
    plt = _pyplot()
    if not (len(actual) == len(predicted) == len(errors)) or not actual:
        raise ValueError("token_prediction_grid: need the same, non-zero number of actual, predicted and error grids")
    cols = 3 + (mask is not None)
    fig, axes = plt.subplots(len(actual), cols, figsize=(cell * cols, cell * len(actual)), squeeze=False)
    for h, (a, p, e) in enumerate(zip(actual, predicted, errors)):
        rgb_a, rgb_p = pca_rgb(a, p)
        panels = [("actual tokens", rgb_a), ("predicted tokens", rgb_p), ("squared error", _map_hw(e))]
        if mask is not None:
            panels.append(("ground truth", _map_hw(mask)))
        for c, (name, panel) in enumerate(panels):
            ax = axes[h, c]
            if panel.ndim == 3:
                ax.imshow(panel)
            else:
                im = ax.imshow(panel, cmap=MAP_CMAP if name == "squared error" else "gray")
                if name == "squared error":
                    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            ax.set_title(f"hierarchy {h + 1}: {name}" if c == 0 else name, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return fig


def draw_gap(order, h: int, w: int, target: int, gap: int, ax=None, title: str | None = None):
    """What VarAD sees when it predicts the token at sequence position `target` along `order`.

    Green: the tokens it may use (positions < target - gap + 1, i.e. v_1 .. v_{l-M}); grey: the M tokens
    the gap hides (just before the target); red: the target; white: tokens after it in this direction.
    """
    plt = _pyplot()
    order = _as_numpy(order).astype(int)
    if order.size != h * w:
        raise ValueError(f"order has {order.size} entries, expected h*w = {h * w}")
    if not 0 <= target < h * w:
        raise ValueError(f"target position {target} outside the sequence of length {h * w}")
    state = np.zeros(h * w, dtype=int)  # 0 future, 1 visible, 2 hidden by the gap, 3 target
    position = np.empty(h * w, dtype=int)
    position[order] = np.arange(h * w)
    state[position < target - gap + 1] = 1
    state[(position >= target - gap + 1) & (position < target)] = 2
    state[position == target] = 3
    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    from matplotlib.colors import ListedColormap

    ax.imshow(state.reshape(h, w), cmap=ListedColormap(["white", "#8fd18f", "#bdbdbd", "#d62728"]),
              vmin=0, vmax=3)
    ax.set_xticks(np.arange(-0.5, w, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, h, 1), minor=True)
    ax.grid(which="minor", color="0.6", linewidth=0.3)
    ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def image_row(panels: Mapping[str, object], cell: float = 2.4, cmap: str = MAP_CMAP, title: str | None = None):
    """A row of labelled panels: images (3, H, W) are shown as images, 2-D arrays as heat maps."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(cell * len(panels), cell), squeeze=False)
    for ax, (name, panel) in zip(axes[0], panels.items()):
        array = _as_numpy(panel)
        if array.ndim == 3 and (array.shape[0] == 3 or array.shape[-1] == 3):
            ax.imshow(_image_hwc(array))
        elif np.isin(array, (0, 1)).all():  # a binary mask
            ax.imshow(_map_hw(array), cmap="gray", vmin=0, vmax=1)
        else:
            im = ax.imshow(_map_hw(array), cmap=cmap)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------ discrete codes (LADMIM)
def code_maps(image, codes, title: str | None = None, cell: float = 2.4):
    """The image and one categorical map per code level: ``codes`` (L, h, w) integer code indices (Fig. 4 top)."""
    plt = _pyplot()
    codes = _as_numpy(codes).astype(int)
    fig, axes = plt.subplots(1, len(codes) + 1, figsize=(cell * (len(codes) + 1), cell), squeeze=False)
    axes[0][0].imshow(_image_hwc(_as_numpy(image)))
    axes[0][0].set_title("image", fontsize=9)
    for level, (ax, grid) in enumerate(zip(axes[0][1:], codes)):
        ax.imshow(grid, cmap="tab20", interpolation="nearest")
        ax.set_title(f"level {level + 1}: {len(np.unique(grid))} codes", fontsize=9)
    for ax in axes[0]:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def code_gallery(images, codes, level: int = 0, codes_shown: int = 6, patches: int = 6, title: str | None = None,
                 cell: float = 1.0):
    """Image patches under the most used codes of one level (Fig. 4 bottom): one row per code, ``patches`` grid
    cells (the image region of a token) where it occurs, spread over the images. ``images`` (B, 3, H, W),
    ``codes`` (B, L, h, w)."""
    plt = _pyplot()
    images, maps = _as_numpy(images), _as_numpy(codes)[:, level].astype(int)
    b, h, w = maps.shape
    size = images.shape[-1]
    step = size / w
    ids, counts = np.unique(maps, return_counts=True)
    top = ids[np.argsort(-counts)][:codes_shown]
    fig, axes = plt.subplots(len(top), patches, figsize=(cell * patches, cell * len(top)), squeeze=False)
    for row, code in enumerate(top):
        where = np.argwhere(maps == code)  # (n, 3): image, y, x
        pick = where[np.linspace(0, len(where) - 1, min(patches, len(where))).round().astype(int)]
        for col in range(patches):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(pick):
                ax.axis("off")
                continue
            i, y, x = pick[col]
            y0, x0 = int(max(0, (y - 1) * step)), int(max(0, (x - 1) * step))  # the token and its neighbours
            crop = images[i][:, y0:int(min(size, (y + 2) * step)), x0:int(min(size, (x + 2) * step))]
            ax.imshow(_image_hwc(crop))
        axes[row][0].set_ylabel(f"code {code}\n({int(counts[ids == code][0])}x)", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def histogram_panels(images: Sequence, mask, predicted, target, labels: Sequence[str], level: int = 0, cell: float = 2.6):
    """Per image: the image with the mask drawn over it, and the predicted against the true code histogram of
    one level (``predicted``/``target`` (B, levels, K); ``mask`` (h, w) bool)."""
    plt = _pyplot()
    predicted, target, mask = _as_numpy(predicted), _as_numpy(target), _as_numpy(mask).astype(float)
    fig, axes = plt.subplots(len(images), 2, figsize=(cell * 3, cell * len(images)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 2]})
    for row, image in enumerate(images):
        picture = _image_hwc(_as_numpy(image))
        overlay = _resize_nearest(mask, picture.shape[:2])
        axes[row][0].imshow(picture)
        axes[row][0].imshow(np.ma.masked_where(overlay == 0, overlay), cmap="autumn", alpha=0.5, vmin=0, vmax=1)
        axes[row][0].set_title(f"{labels[row]}: mask", fontsize=9)
        axes[row][0].set_xticks([])
        axes[row][0].set_yticks([])
        k = np.arange(predicted.shape[-1])
        ax = axes[row][1]
        ax.bar(k - 0.2, target[row, level], 0.4, label="true Q (HVQ codes under the mask)", color="#455a64")
        ax.bar(k + 0.2, predicted[row, level], 0.4, label="predicted P (from the visible rest)", color="#ef6c00")
        error = np.abs(predicted[row] - target[row]).sum()
        ax.set_title(f"level {level + 1} code histogram; sum over levels of |P - Q| = {error:.2f}", fontsize=9)
        ax.set_xlabel("code")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def score_scatter(x, y, groups: Sequence[str], xlabel: str, ylabel: str, title: str | None = None):
    """Two per-image scores against each other, one colour per test group ("good", "logical", ...)."""
    plt = _pyplot()
    x, y, groups = _as_numpy(x), _as_numpy(y), np.asarray([str(g) for g in groups])
    fig, ax = plt.subplots(figsize=(4.6, 3.8))
    for group, marker in zip(dict.fromkeys(groups), "o^sDv"):
        here = groups == group
        ax.scatter(x[here], y[here], s=18, marker=marker, label=f"{group} ({int(here.sum())})", alpha=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------ structure diagrams


def box_rows(rows: Mapping[str, Sequence[tuple[str, str]]], title: str | None = None, box_width: float = 3.0,
             row_height: float = 1.6, fontsize: float = 7.0):
    """A structure diagram: one labelled row per entry of ``rows``, each a chain of boxes joined by arrows;
    a box is (heading, body text). Meant for schematics drawn from real objects (module names, shapes)."""
    plt = _pyplot()
    from matplotlib.patches import FancyBboxPatch

    if not rows:
        raise ValueError("box_rows: no rows given")
    longest = max(len(boxes) for boxes in rows.values())
    fig, ax = plt.subplots(figsize=(1.6 + box_width * longest, row_height * len(rows) + (0.4 if title else 0.1)))
    gap = 0.35
    for r, (label, boxes) in enumerate(rows.items()):
        y = len(rows) - 1 - r
        ax.text(-0.1, y + 0.45, label, ha="right", va="center", fontsize=fontsize + 1, weight="bold")
        for i, (heading, body) in enumerate(boxes):
            x = i * (1 + gap)
            ax.add_patch(FancyBboxPatch((x, y + 0.05), 1, 0.8, boxstyle="round,pad=0.02", fc="#eceff1", ec="#455a64"))
            ax.text(x + 0.5, y + 0.78, heading, ha="center", va="top", fontsize=fontsize + 0.5, weight="bold")
            ax.text(x + 0.5, y + 0.62, body, ha="center", va="top", fontsize=fontsize, linespacing=1.25)
            if i:
                ax.annotate("", (x, y + 0.45), (x - gap, y + 0.45), arrowprops={"arrowstyle": "->", "color": "#455a64"})
    ax.set_xlim(-1.3, longest * (1 + gap))
    ax.set_ylim(-0.05, len(rows))
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------- features, design paths, curves
def feature_rows(rows: Mapping[str, tuple[object, Sequence]], title: str | None = None, cell: float = 2.2):
    """Per-stage features as colours: one row per entry of ``rows``, ``label: (image, panels)`` with the image
    (3, H, W) first and then one (h, w, 3) colour panel per stage (``pca_rgb``), titled with its grid size."""
    plt = _pyplot()
    if not rows:
        raise NothingToDraw("feature_rows: no rows given")
    columns = 1 + max(len(panels) for _, panels in rows.values())
    fig, axes = plt.subplots(len(rows), columns, figsize=(cell * columns, cell * len(rows)), squeeze=False)
    for r, (label, (image, panels)) in enumerate(rows.items()):
        axes[r, 0].imshow(_image_hwc(image))
        axes[r, 0].set_ylabel("\n".join(textwrap.fill(line, 24) for line in str(label).split("\n")), fontsize=8)
        for col, panel in enumerate(panels, start=1):
            panel = _as_numpy(panel)
            axes[r, col].imshow(panel)
            axes[r, col].set_title(f"stage {col}: {panel.shape[0]}x{panel.shape[1]}", fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in axes[r, 1 + len(panels):]:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def gain_bars(df: pd.DataFrame, sides: Mapping[str, str], facet: str = "level", title: str | None = None,
              xlabel: str = "gain (points)"):
    """Horizontal bars of gains per ``step`` (rows in order), one panel per ``facet`` value, one bar per column
    of ``sides`` (``{column: legend label}``, e.g. the paper's gain and ours); a column ``<column>_std`` draws
    the seeds' spread, a column ``<column>_n`` of 0 marks the bar "not run here". Bars start at zero (drawn);
    the legend sits below the panels, never over a bar."""
    plt = _pyplot()
    _check_long(df, "gain_bars", ("step", facet, *sides))
    facets = list(dict.fromkeys(df[facet]))
    steps = list(dict.fromkeys(df["step"]))
    if not steps:
        raise NothingToDraw("gain_bars: no steps given")
    fig, axes = plt.subplots(1, len(facets), figsize=(5.5 * len(facets), 0.5 * len(steps) + 1.6), sharey=True,
                             squeeze=False)
    height = 0.8 / len(sides)
    colours = ("#ef6c00", "#1565c0", "#2e7d32", "#6a1b9a")
    for ax, name in zip(axes[0], facets):
        part = df[df[facet] == name].set_index("step").reindex(steps)
        y = np.arange(len(steps))
        for i, (column, label) in enumerate(sides.items()):
            offset = (i - (len(sides) - 1) / 2) * height
            spread = part[f"{column}_std"].fillna(0).values if f"{column}_std" in part else None
            ax.barh(y + offset, part[column].values, height, xerr=spread, label=label, color=colours[i % len(colours)],
                    error_kw={"lw": 0.8}, capsize=2)
            if f"{column}_n" in part:
                for j, n in enumerate(part[f"{column}_n"].fillna(0)):
                    if not n:
                        ax.text(0, j + offset, " not run here", va="center", fontsize=7, color="0.4")
        ax.axvline(0, color="0.3", lw=0.8)
        ax.set_yticks(y)
        ax.set_yticklabels([_wrap(s, 34) for s in steps], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"{xlabel}: {name}" if len(facets) > 1 else xlabel, fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.05), ncol=len(sides), fontsize=8,
               frameon=False)  # above the bottom edge, where a saved figure's provenance line goes
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    return fig


def epoch_curves(history: pd.DataFrame, metrics: Sequence[str], loss: str | None = "loss", title: str | None = None,
                 ylabel: str = "%", loss_label: str = "training loss"):
    """Metrics after every epoch (one line each, column ``epoch`` on x) and, when ``loss`` names a column, the
    training loss in a second panel."""
    plt = _pyplot()
    _check_long(history, "epoch_curves", ("epoch", *metrics))
    if history.empty:
        raise NothingToDraw("epoch_curves: no epochs recorded")
    panels = 2 if loss else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 3.2), squeeze=False)
    for name in metrics:
        axes[0, 0].plot(history["epoch"], history[name], marker="o", label=METRIC_LABELS.get(name, name))
    axes[0, 0].set_xlabel("epoch")
    axes[0, 0].set_ylabel(ylabel)
    axes[0, 0].legend(fontsize=7, loc="best")
    axes[0, 0].grid(alpha=0.3)
    if loss:
        axes[0, 1].plot(history["epoch"], history[loss], marker="o", color="0.3")
        axes[0, 1].set_xlabel("epoch")
        axes[0, 1].set_ylabel(loss_label)
        axes[0, 1].grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------ LADMIM's components (Fig. 2)
def hvq_mim_rows(model, label: str) -> dict[str, list[tuple[str, str]]]:
    """LADMIM's Fig. 2 (HVQ-Trans and the MIM ViT) as rows of boxes for ``box_rows``, every label read from a built
    ``LADMIM`` and one forward pass of a blank image: module classes, layer counts, widths, codebook sizes and the
    tensor shapes that flow between them."""
    import torch

    config, hvq, mim = model.config, model.hvq, model.mim
    was_training = model.training
    model.eval()
    with torch.no_grad():
        images = torch.zeros(1, 3, config.image_size, config.image_size, device=next(model.parameters()).device)
        features = model.extract(images)
        tokens = model.tokens_of(features)
        out = hvq(tokens)
        mask = model.test_masks()[:1].to(tokens.device)
        p_out, _ = mim(tokens, mask)
    model.train(was_training)
    h0 = tuple(features["features"].shape[1:])
    q = hvq.quantizers[0]
    levels = len(model.levels)
    return {
        f"{label}: HVQ-Trans (stage 1, S_HVQ)": [
            ("frozen backbone", f"{model.tokenizer.name}\nh^0 {h0[0]} x {h0[1]} x {h0[2]}"),
            ("encoder", f"{len(hvq.encoder)} x {type(hvq.encoder[0]).__name__}\nwidth {hvq.embed.out_features}, "
                        f"{tuple(out['h'][-1].shape[1:])}"),
            ("quantisers (Eq. 3-4)", f"{len(hvq.quantizers)} levels x {q.size} codes of {q.dim}\ncode maps o^l "
                                     f"{tuple(out['codes'].shape[1:])}"),
            ("decoder (Eq. 5)", f"{len(hvq.decoder)} x self + cross attention\nwidth {hvq.dec_in.out_features}"),
            ("Gamma (Eq. 6)", f"Linear -> {tuple(out['recon'].shape[1:])}\nS_HVQ: mean error"),
        ],
        f"{label}: MIM ViT (stage 2, S_MIM)": [
            ("block-wise mask", f"{config.mask}, ratio {config.mask_ratio:g}\n{int(mask.sum())} of {mask.shape[1]} "
                                f"tokens -> e"),
            ("ViT (Eq. 8)", f"{len(mim.blocks)} blocks, width {mim.embed.out_features}\n+ prediction token p"),
            ("MIMHeads (Eq. 9)", f"{levels} levels x softmax over {q.size}\np' {tuple(p_out.shape[1:])}"),
            ("target (Eq. 11-12)", f"code histogram Q^l in the mask\nL1 error, averaged over\n{config.num_test_masks} "
                                   f"test masks"),
        ],
    }


def ran_variant_panels(df: pd.DataFrame, missing: Sequence[str] = (), title: str | None = None, **kwargs):
    """``variant_panels`` over the variants that ran only (a bar per variant with a value), with the variants
    that did not run listed under the panels with their reasons (``note``), so that a grid mostly not run here
    is not drawn as a row of empty slots. ``missing``: further reasons to list. ``NothingToDraw`` when no variant
    ran (``or_missing`` then draws the reasons)."""
    order = kwargs.pop("order", None)
    ran = list(dict.fromkeys(df.loc[df["value"].notna(), "setting"]))
    if not ran:
        raise NothingToDraw("ran_variant_panels: no variant ran")
    absent = [s for s in (order or dict.fromkeys(df["setting"])) if s not in ran]
    shown = [s for s in (order or ran) if s in ran]
    fig = variant_panels(df[df["setting"].isin(shown)], order=shown, title=title, **kwargs)
    notes = df[df["setting"].isin(absent) & df["value"].isna()]
    lines = []
    for setting in absent:
        why = [str(n) for n in notes.loc[notes["setting"] == setting, "note"].dropna() if str(n)]
        lines.append(f"{setting}: not run" + (f" ({why[0]})" if why else ""))
    lines = list(dict.fromkeys(lines)) + [str(m) for m in missing if m]
    if lines:
        text = "\n".join(textwrap.fill(line, 110, subsequent_indent="    ") for line in lines[:8])
        if len(lines) > 8:
            text += f"\n... and {len(lines) - 8} more (see the table's notes)"
        height = fig.get_figheight()
        extra = 0.17 * (text.count("\n") + 1) + 0.5  # the lines, and room below them for save_figure's data line
        fig.set_figheight(height + extra)
        fig.subplots_adjust(bottom=(extra + 0.55) / (height + extra))
        fig.text(0.01, 0.3 / (height + extra), text, ha="left", va="bottom", fontsize=7, color="0.3")
    return fig


# ------------------------------------------------------------------ decoder schematics (MambaAD's Figs. 1 and 2)
# Schematics redrawn from built models: every label (module
# names, block counts, kernel sizes, channels, map sizes, token counts) is read from the modules or from a
# forward pass, none is typed, so that the drawing shows what adlib runs.


def _diagram_box(ax, x, y, w, h, text, color, size=7):
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.005,rounding_size=0.01", fc=color, ec="0.25",
                                lw=0.8))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)


def _diagram_arrow(ax, a, b, style="-|>", color="0.2", ls="-"):
    ax.annotate("", xy=b, xytext=a, arrowprops=dict(arrowstyle=style, color=color, lw=0.8, ls=ls))


def _diagram_panel(ax, title):
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    ax.set_title(title, fontsize=9, loc="left")


_DIAGRAM_LOCAL, _DIAGRAM_GLOBAL, _DIAGRAM_BOTH, _DIAGRAM_FROZEN = "#cfe2f3", "#f9cb9c", "#b6d7a8", "#eeeeee"


def mambaad_structure(model, size: int) -> dict:
    """What ``mambaad_diagram`` (MambaAD's Fig. 2) draws, read from a built MambaAD and one forward pass at ``size`` px (random input): encoder
    taps, H-FPN output, per decoder stage its map, channels and LSS modules, and the parts of one LSS and one
    HSS block (names and sizes from the modules)."""
    import torch
    from torch import nn

    with torch.no_grad():
        out = model.explain(torch.rand(1, 3, size, size))
    stages = []
    grid = out["bottleneck"].shape[-1]
    for i, stage in enumerate(model.decoder.stages):
        stages.append({"index": i, "channels": model.dims[i], "map": grid * 2 ** i,
                       "hss": [len(lss.hss) for lss in stage],
                       "upsample": type(model.decoder.upsample[i]).__name__})
    lss = model.decoder.stages[-1][0]
    ss2d = lss.hss[0].self_attention

    def layers(seq):
        names = []
        for block in seq if isinstance(seq[0], nn.Sequential) else [seq]:
            conv = block[0]
            kind = "DWConv" if conv.groups > 1 else "Conv"
            names.append(f"{kind}{conv.kernel_size[0]}x{conv.kernel_size[1]}+{type(block[1]).__name__}+"
                         f"{type(block[2]).__name__}")
        return names

    return {"size": size, "backbone": model.config.backbone,
            "encoder": [tuple(f.shape[1:]) for f in out["features"]], "bottleneck": tuple(out["bottleneck"].shape[1:]),
            "reconstructions": [tuple(r.shape[1:]) for r in out["reconstructions"]], "stages": stages,
            "lss": {"dim": lss.fuse.out_channels, "fuse_in": lss.fuse.in_channels, "residual": lss.residual,
                    "branches": [layers(b) for b in lss.local], "kernels": list(model.config.kernel_sizes)},
            "hss": {"dim": ss2d.in_proj.in_features, "d_inner": ss2d.d_inner, "d_state": ss2d.d_state,
                    "dt_rank": ss2d.dt_rank, "directions": ss2d.count, "scan": ss2d.scan,
                    "d_conv": ss2d.conv2d.kernel_size[0], "ln_eps": lss.hss[0].ln_1.eps,
                    "drop_path": [round(blk.drop_path.p, 3) for st in model.decoder.stages for l in st for blk in l.hss]},
            "sigma": model.config.smoothing_sigma, "score": model.config.score_rule,
            "loss_weight": model.config.loss_weight}


def mambaad_diagram(structure: dict):
    """MambaAD's Fig. 2 redrawn from ``mambaad_structure``: (a) the framework, (b) an LSS module, (c) an HSS block,
    (d) ConvB."""
    plt = _pyplot()
    s = structure
    fig = plt.figure(figsize=(13, 7.2))
    grid = fig.add_gridspec(2, 3, height_ratios=[1.25, 1], width_ratios=[1.3, 1, 1])
    ax = fig.add_subplot(grid[0, :])
    _diagram_panel(ax, f"(a) MambaAD framework ({s['backbone']}, {s['size']} px; shapes C x H x W from a forward pass)")
    n = len(s["encoder"])
    for i, shape in enumerate(s["encoder"]):  # encoder taps, shallow (top) to deep
        y = 0.78 - i * 0.22
        _diagram_box(ax, 0.01, y, 0.16, 0.14, f"encoder tap {i + 1} (frozen)\n{'x'.join(map(str, shape))}", _DIAGRAM_FROZEN)
        _diagram_arrow(ax, (0.17, y + 0.07), (0.25, 0.45))
    _diagram_box(ax, 0.25, 0.36, 0.12, 0.18, f"H-FPN\n(HalfFPN)\n{'x'.join(map(str, s['bottleneck']))}", _DIAGRAM_LOCAL)
    x = 0.40
    for st in s["stages"]:
        lss = " + ".join(f"LSS({k} HSS)" for k in st["hss"])
        head = "" if st["index"] == 0 else f"{st['upsample']}\n"
        _diagram_box(ax, x, 0.36, 0.125, 0.18,
                     f"stage {st['index']}\n{head}{lss}\n{st['channels']}x{st['map']}x{st['map']}", _DIAGRAM_BOTH, size=6.5)
        _diagram_arrow(ax, (x - 0.03, 0.45), (x, 0.45))
        x += 0.145
    for j, shape in enumerate(s["reconstructions"]):  # decoder stage j+1 reconstructs tap j+1 (stride 4 first)
        sx = 0.40 + 0.145 * (3 - j) + 0.06
        ty = 0.78 - j * 0.22 + 0.07
        _diagram_arrow(ax, (sx, 0.54), (sx, 0.64 + 0.02 * j), color="#a61c00", ls="--")
        ax.text(sx + 0.005, 0.60 + 0.02 * j, f"1 - cos vs tap {j + 1}", fontsize=6, color="#a61c00")
    ax.text(0.40, 0.13, f"anomaly map = sum over the {n} scales of (1 - cos), upsampled to {s['size']} px, "
                        f"Gaussian sigma {s['sigma']:g};\nimage score = {s['score']} of the map.  Training loss: "
                        f"{s['loss_weight']:g} x sum of per-scale MSE.", fontsize=7, va="center")
    ax.text(0.40, 0.03, "drop path over the HSS blocks (stage 0 first): "
            + ", ".join(f"{p:.2f}" for p in s["hss"]["drop_path"]), fontsize=6.5, color="0.3")

    ax = fig.add_subplot(grid[1, 0])
    l = s["lss"]
    _diagram_panel(ax, f"(b) LSS module (last stage: C = {l['dim']})")
    _diagram_box(ax, 0.02, 0.42, 0.12, 0.16, "X_i", _DIAGRAM_FROZEN)
    _diagram_box(ax, 0.18, 0.74, 0.38, 0.16, "HSS x M_i (cascaded)", _DIAGRAM_BOTH)
    for i, (k, branch) in enumerate(zip(l["kernels"], l["branches"])):
        y = 0.50 - i * 0.24
        _diagram_box(ax, 0.18, y, 0.38, 0.16, "\n".join(b.split("+")[0] for b in branch), _DIAGRAM_LOCAL, size=6)
        _diagram_arrow(ax, (0.14, 0.5), (0.18, y + 0.08))
        _diagram_arrow(ax, (0.56, y + 0.08), (0.60, 0.5))
    _diagram_arrow(ax, (0.14, 0.5), (0.18, 0.82))
    _diagram_arrow(ax, (0.56, 0.82), (0.60, 0.5))
    _diagram_box(ax, 0.60, 0.40, 0.18, 0.20, f"Concat\nConv1x1\n{l['fuse_in']} -> {l['dim']}", _DIAGRAM_LOCAL, size=6.5)
    _diagram_box(ax, 0.84, 0.42, 0.14, 0.16, "+ X_i -> X_o" if l["residual"] else "X_o (no residual)", _DIAGRAM_FROZEN, size=6.5)
    _diagram_arrow(ax, (0.78, 0.5), (0.84, 0.5))

    ax = fig.add_subplot(grid[1, 1])
    h = s["hss"]
    _diagram_panel(ax, f"(c) HSS block (C = {h['dim']}, d_inner = {h['d_inner']})")
    steps = [f"LN (eps {h['ln_eps']:g})", f"Linear {h['dim']} -> 2x{h['d_inner']}: x, z",
             f"DWConv{h['d_conv']}x{h['d_conv']} + SiLU (x)",
             f"HS encoder: {h['directions']} {h['scan']} orders",
             f"selective scan: {h['directions']}x{h['d_inner']} ch.,\nN = {h['d_state']}, dt rank {h['dt_rank']}",
             f"HS decoder: inverse orders, sum", f"LN x SiLU(z), Linear -> {h['dim']}", "+ input (DropPath)"]
    for i, text in enumerate(steps):
        y = 0.90 - i * 0.118
        _diagram_box(ax, 0.12, y - 0.036, 0.76, 0.072, text, _DIAGRAM_BOTH if 3 <= i <= 5 else _DIAGRAM_LOCAL, size=6.5)
        if i:
            _diagram_arrow(ax, (0.5, y + 0.082), (0.5, y + 0.036))

    ax = fig.add_subplot(grid[1, 2])
    _diagram_panel(ax, "(d) ConvB (the local branches' unit)")
    parts = l["branches"][0][0].split("+") if l["branches"] else []
    for i, part in enumerate(parts):
        _diagram_box(ax, 0.2, 0.72 - i * 0.22, 0.6, 0.14, part if i else "Conv2d (1x1, or depthwise k x k)", _DIAGRAM_LOCAL)
        if i:
            _diagram_arrow(ax, (0.5, 0.72 - (i - 1) * 0.22), (0.5, 0.86 - i * 0.22))
    ax.text(0.05, 0.05, "branches: " + "; ".join(f"k = {k}: " + " -> ".join(b) for k, b in zip(l["kernels"], l["branches"])),
            fontsize=5.5, wrap=True)
    fig.tight_layout()
    return fig


def decoder_structures(models: dict, size: int) -> dict:
    """What ``decoder_diagram`` (MambaAD's Fig. 1) draws, read from built models (``{"RD4AD": ..., "UniAD": ..., "MambaAD": ...}``): per method
    the maps its decoder works on (side, tokens), the operator there, and the global operator's pair or state
    count at ``size`` px."""
    import torch
    from torch import nn

    out = {}
    rd = models.get("RD4AD")
    if rd is not None:
        kernels = sorted({m.kernel_size[0] for st in rd.decoder.stages for m in st.modules() if isinstance(m, nn.Conv2d)})
        out["RD4AD"] = {"maps": [(h, len(st)) for (h, _), st in zip(rd.grids[::-1], rd.decoder.stages)],
                        "operator": f"residual conv blocks (k = {', '.join(map(str, kernels))}): local",
                        "global": "none (receptive field grows with depth only)"}
    uni = models.get("UniAD")
    if uni is not None:
        h, w = uni.grid
        out["UniAD"] = {"maps": [(h, len(uni.encoder) + len(uni.decoder))],
                        "operator": f"{len(uni.encoder)} + {len(uni.decoder)} attention layers on the stride-"
                                    f"{uni.config.feature_stride} map only: global",
                        "global": f"attention: L^2 = {(h * w) ** 2:,} pairs per layer (L = {h * w})"}
    mam = models.get("MambaAD")
    if mam is not None:
        with torch.no_grad():
            grid = mam.bottleneck(mam.extract(torch.rand(1, 3, size, size))).shape[-1]
        ss2d = mam.decoder.stages[-1][0].hss[0].self_attention
        finest = (grid * 2 ** (len(mam.decoder.stages) - 1)) ** 2
        out["MambaAD"] = {"maps": [(grid * 2 ** i, sum(len(l.hss) for l in st)) for i, st in enumerate(mam.decoder.stages)],
                          "operator": f"LSS: HSS ({ss2d.count} scan directions) + DWConv k = "
                                      f"{', '.join(map(str, mam.config.kernel_sizes))}: global + local",
                          "global": f"selective scan: K x L = {ss2d.count} x {finest:,} steps on the finest map: "
                                    f"linear in L"}
    return out


def decoder_diagram(structures: dict, timing: pd.DataFrame | None = None, size: int = 256):
    """MambaAD's Fig. 1 redrawn: one panel per method (``decoder_structures``: the maps each decoder works on, coloured by
    operator: local conv, global attention, global SSM + local conv), and, when ``timing`` is given
    (``adlib.study.cost.decoder_timing`` rows), the measured time against tokens of MambaAD's decoder and of self-attention."""
    import math

    plt = _pyplot()
    panels = [m for m in ("RD4AD", "UniAD", "MambaAD") if m in structures]
    fig, axes = plt.subplots(1, len(panels) + (timing is not None), figsize=(4 * len(panels) + 4 * (timing is not None), 3.8))
    colors = {"RD4AD": _DIAGRAM_LOCAL, "UniAD": _DIAGRAM_GLOBAL, "MambaAD": _DIAGRAM_BOTH}
    letters = "abcd"
    for i, (ax, method) in enumerate(zip(axes, panels)):
        s = structures[method]
        _diagram_panel(ax, f"({letters[i]}) {method}")
        sides = [side for side, _ in s["maps"]]
        for side in sorted({size // 4, size // 8, size // 16, size // 32} | set(sides), reverse=True):
            if side < size // 32:
                continue
            y = 0.80 - 0.18 * int(round(math.log2(size // 4 / side)))
            used = [blocks for sd, blocks in s["maps"] if sd == side]
            text = f"{side} x {side} map, {side * side:,} tokens" + (f"\n{used[0]} blocks" if used else "\nnot decoded")
            _diagram_box(ax, 0.08, y, 0.84, 0.13, text, colors[method] if used else "white", size=6.5)
        ax.text(0.02, 0.06, s["operator"] + "\n" + s["global"], fontsize=6, wrap=True)
    if timing is not None:
        ax = axes[-1]
        rows = timing[timing["metric"].isin(["seconds", "tokens"])].pivot_table(
            index=["method", "seed", "setting"], columns="metric", values="value").reset_index()
        for method, part in rows.groupby("method"):
            mean = part.groupby("tokens")["seconds"].mean()
            ax.loglog(mean.index, mean.values, "o-", label=method if method != "attention" else "self-attention")
        exps = timing[timing["metric"] == "exponent"].groupby("method")["value"].mean()
        ax.set_title(f"({letters[len(panels)]}) measured: time ~ tokens^p\n"
                     + ", ".join(f"{m} p = {v:.2f}" for m, v in exps.items()), fontsize=9, loc="left")
        from matplotlib.ticker import NullFormatter

        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("tokens")
        ax.set_ylabel("CPU s per forward (one thread)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
