"""Long-format table helpers for the notebooks: seed summaries, wide views, means, trends, dataset counts."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from adlib.study.setting import Setting

QUALITY_METRICS = ("auroc", "ap", "f1max", "aupro")
GROUP_KEYS = ("dataset", "method", "setting", "level", "metric", "protocol", "class_setting", "scope", "image_size")


def seed_summary(df: pd.DataFrame, keys: Sequence[str] = GROUP_KEYS) -> pd.DataFrame:
    """Mean, standard deviation (ddof 1) and number of seeds of every row group over its seeds."""
    keys = [k for k in keys if k in df.columns]
    ran = df.dropna(subset=["value"])
    grouped = ran.groupby(keys, sort=False, dropna=False)["value"]
    out = grouped.agg(mean="mean", std="std", n="count").reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def pivot(df: pd.DataFrame, level: str = "pixel", columns: str = "metric", index=("dataset", "method", "setting"),
          metrics: Sequence[str] = QUALITY_METRICS, protocol: str | None = None, with_std: bool = False) -> pd.DataFrame:
    """A readable wide view: one row per (dataset, method, setting), one column per metric; values are the
    mean over seeds ("mean ± std" strings with ``with_std`` when there are several seeds)."""
    part = df[(df["level"] == level) & (df["metric"].isin(metrics))]
    if protocol is not None and "protocol" in part.columns:
        part = part[part["protocol"] == protocol]
    index = [i for i in index if i in part.columns]
    summary = seed_summary(part, list(index) + [columns])
    if with_std and (summary["n"] > 1).any():
        summary["value"] = [f"{m:.1f} ± {s:.1f}" if n > 1 else f"{m:.1f}"
                            for m, s, n in zip(summary["mean"], summary["std"], summary["n"])]
        wide = summary.pivot(index=index, columns=columns, values="value")
    else:
        wide = summary.pivot_table(index=index, columns=columns, values="mean", aggfunc="first", sort=False).round(1)
    order = [m for m in metrics if m in wide.columns]
    return wide[order]


def best(df: pd.DataFrame, metric: str = "f1max", level: str = "pixel") -> pd.DataFrame:
    """Per data source and method: the setting with the highest mean ``metric`` over seeds, and the runner-up.
    Descriptive only: whether a gap is real is for ``adlib.study.claims`` to decide."""
    part = seed_summary(df[(df["metric"] == metric) & (df["level"] == level)], ("dataset", "method", "setting"))
    rows = []
    for (dataset, method), group in part.groupby(["dataset", "method"], sort=False):
        ranked = group.sort_values("mean", ascending=False)
        second = ranked.iloc[1] if len(ranked) > 1 else None
        rows.append({"dataset": dataset, "method": method, "best setting": ranked["setting"].iloc[0],
                     metric: round(ranked["mean"].iloc[0], 1), "± (seeds)": round(ranked["std"].iloc[0], 1),
                     "runner-up": None if second is None else second["setting"],
                     f"runner-up {metric}": float("nan") if second is None else round(second["mean"], 1)})
    return pd.DataFrame(rows)


def setting_value(label: str) -> float:
    """The number in a variant label ("res=512" -> 512.0); NaN when there is none."""
    import re

    match = re.search(r"(-?\d+(?:\.\d+)?)\s*$", str(label))
    return float(match.group(1)) if match else float("nan")


def trend(df: pd.DataFrame, method: str, metric: str = "f1max", level: str = "pixel") -> pd.DataFrame:
    """Mean over seeds of a metric per resolution (variant labels "res=N") and data source for one method,
    with the change from the lowest to the highest. Descriptive: the verdict comes from the claims."""
    part = df[(df["method"] == method) & (df["metric"] == metric) & (df["level"] == level)].copy()
    part = seed_summary(part, ("dataset", "setting"))
    part["resolution"] = part["setting"].map(setting_value)
    wide = part.pivot_table(index="dataset", columns="resolution", values="mean", aggfunc="first")
    wide = wide[sorted(wide.columns)]
    wide["change"] = wide.iloc[:, -1] - wide.iloc[:, 0]
    return wide.round(1)


def dataset_means(df: pd.DataFrame, expected: Mapping[str, int]) -> pd.DataFrame:
    """Add per-dataset mean rows (dataset = the part before "/", scope "mean") when every one of the
    dataset's ``expected`` categories ran (name -> count, e.g. from the paper's Table I). A partial run (bottle
    only) gets no mean row, so it is never mistaken for the dataset's number."""
    parts = df.assign(parent=df["dataset"].str.split("/").str[0])
    means = []
    for parent, part in parts[parts["dataset"].str.contains("/")].groupby("parent", sort=False):
        if parent in expected and part["dataset"].nunique() == int(expected[parent]):
            keys = [k for k in ("method", "setting", "level", "metric", "backbone", "seed", "protocol",
                                "class_setting", "image_size") if k in part.columns]
            mean = part.groupby(keys, sort=False, dropna=False)["value"].mean().reset_index()
            mean["dataset"] = parent
            mean["scope"] = "mean"
            mean["data"] = f"{parent} (mean of {part['dataset'].nunique()} categories)"
            means.append(mean)
    return pd.concat([df, *means], ignore_index=True) if means else df


def paper_category_counts(setting: Setting, table: str = "table1") -> dict[str, int]:
    """Dataset display name -> number of categories, from the paper's printed dataset table (if any)."""
    from adlib import results

    try:
        paper = results.paper_table(setting.paper.name, table)
    except FileNotFoundError:
        return {}
    rows = paper[paper["metric"] == "n_categories"]
    return {d: int(v) for d, v in zip(rows["dataset"], rows["value"])}


def dataset_table(setting: Setting, synthetic: Sequence[str] | None = None) -> pd.DataFrame:
    """A Table I: categories and image counts per dataset folder this setting can read (long format).

    A real dataset keeps its display name only when all of the paper's categories are present; otherwise it
    is named by the categories found ("MVTec AD/bottle")."""
    from adlib.data import stats_frame

    counts = paper_category_counts(setting)
    frames = []
    for name in (synthetic if synthetic is not None else setting.spec.synthetic):
        if setting.synthetic_root is not None and (Path(setting.synthetic_root) / name).is_dir():
            frame = stats_frame(Path(setting.synthetic_root) / name)
            frame["dataset"] = name
            frames.append(frame)
    if setting.real_root is not None:
        for folder in setting.spec.real_datasets:
            if (Path(setting.real_root) / folder).is_dir():
                frame = stats_frame(Path(setting.real_root) / folder)
                display = setting.dataset_name(folder)
                complete = len(frame) == counts.get(display, -1)
                frame["dataset"] = display if complete else f"{display}/{'+'.join(frame['category'])}"
                frames.append(frame)
    if not frames:
        raise ValueError("dataset_table: no dataset folders found")
    stats = pd.concat(frames)
    rows = []
    for dataset, part in stats.groupby("dataset", sort=False):
        values = {"n_categories": len(part), **{k: int(part[k].sum()) for k in ("train_normal", "test_normal", "test_abnormal")}}
        rows += [{"dataset": dataset, "method": "", "setting": "default", "level": "data", "metric": k,
                  "value": float(v), "data": dataset} for k, v in values.items()]
    return pd.DataFrame(rows)


def tap_subsets(backbone: str) -> dict[str, dict]:
    """A hierarchy ablation: every non-empty subset of the backbone's default taps (labels "layers=4+8"; the
    full set is "layers=all"), plus, for CNNs, the default taps with the next deeper stage added."""
    from itertools import combinations

    from adlib.backbones import SPECS

    taps = tuple(SPECS[backbone].layers)
    subsets = [c for r in range(1, len(taps) + 1) for c in combinations(taps, r)]
    if SPECS[backbone].kind == "cnn":
        subsets.append(taps + (taps[-1] + 1,))
    return {("layers=all" if tuple(s) == taps else "layers=" + "+".join(map(str, s))):
            ({} if tuple(s) == taps else {"layers": tuple(s)}) for s in subsets}
