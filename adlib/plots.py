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


def anomaly_map_grid(images: Sequence, masks: Sequence | None, maps: Mapping[str, Sequence],
                     row_labels: Sequence[str] | None = None, normalize: str = "joint",
                     overlay: float = 0.5, cell: float = 1.8, title: str | None = None):
    """Rows of image | ground truth | one anomaly map per method (the papers' qualitative figures).

    ``maps`` maps a method name to N maps (each (H, W)); ``normalize`` scales each method's maps to
    [0, 1] jointly over the shown images ("joint", comparable across rows) or per image ("each").
    ``overlay`` > 0 blends the heat map over the image.
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
    scaled = {method: normalize_maps(np.stack([_map_hw(m) for m in stack]), normalize)
              for method, stack in maps.items()}
    columns = ["Image"] + (["GT"] if masks is not None else []) + list(maps)
    fig, axes = plt.subplots(n, len(columns), figsize=(cell * len(columns), cell * n), squeeze=False)
    cmap = plt.get_cmap(MAP_CMAP)
    for row in range(n):
        image = _image_hwc(images[row])
        panels = [image]
        if masks is not None:
            panels.append(_resize_nearest(_map_hw(masks[row]), image.shape[:2]))
        for method in maps:
            heat = cmap(_resize_nearest(scaled[method][row], image.shape[:2]))[..., :3]
            panels.append((1 - overlay) * heat + overlay * image if overlay > 0 else heat)
        for col, panel in enumerate(panels):
            ax = axes[row, col]
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
    width = panel_width or max(3.2, 0.45 * len(settings) + 0.06 * longest * 2)
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
        ax.set_xticklabels([_wrap(s) for s in settings], rotation=35 if len(settings) > 3 else 0,
                           ha="right" if len(settings) > 3 else "center", fontsize=8)
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
