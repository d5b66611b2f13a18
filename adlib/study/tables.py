"""Long-format table helpers for the notebooks: seed summaries, wide views, means, trends, dataset counts.

Numbers are shown as computed: a helper that summarises rows over seeds never averages rows of different
scopes (a category, the mean over categories, all images pooled) or of different metric protocols into one
number. Where a group of rows would mix them, ``seed_summary`` (and every view built on it) raises a
one-line ``ValueError`` naming what is mixed; select one (``pivot(..., scope="mean", protocol="ader")``) or
keep the column in the keys.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from adlib.study.setting import Setting
from adlib.study.spec import PATH_CHECK, is_check

QUALITY_METRICS = ("auroc", "ap", "f1max", "aupro")
GROUP_KEYS = ("dataset", "method", "setting", "level", "metric", "protocol", "class_setting", "scope", "image_size")
UNMIXED = ("scope", "protocol")  # never averaged across: a group of rows must hold one value of each


def check_unmixed(df: pd.DataFrame, keys: Sequence[str], what: str = "seed_summary") -> None:
    """Raise when rows that ``keys`` put in one group differ in scope or protocol (see the module docstring)."""
    for column in UNMIXED:
        if column not in df.columns or column in keys or df.empty:
            continue
        values = df[column].fillna("").astype(str)
        if keys:
            mixed = values.groupby([df[k].astype(str) for k in keys], sort=False).nunique() > 1
            if not mixed.any():
                continue
        elif values.nunique() <= 1:
            continue
        found = sorted(set(values))
        raise ValueError(f"{what}: rows of different {column}s {found} would be averaged into one number; "
                         f"select one ({column}=...) or keep '{column}' in the keys")


def seed_summary(df: pd.DataFrame, keys: Sequence[str] = GROUP_KEYS) -> pd.DataFrame:
    """Mean, standard deviation (ddof 1) and number of seeds of every row group over its seeds. Refuses groups
    that mix scopes or protocols (``check_unmixed``)."""
    keys = [k for k in keys if k in df.columns]
    ran = df.dropna(subset=["value"])
    check_unmixed(ran, keys)
    grouped = ran.groupby(keys, sort=False, dropna=False)["value"]
    out = grouped.agg(mean="mean", std="std", n="count").reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def pivot(df: pd.DataFrame, level: str = "pixel", columns: str = "metric", index=("dataset", "method", "setting"),
          metrics: Sequence[str] = QUALITY_METRICS, protocol: str | None = None, with_std: bool = False,
          scope: str | None = None) -> pd.DataFrame:
    """A readable wide view: one row per (dataset, method, setting), one column per metric; values are the
    mean over seeds ("mean ± std" strings with ``with_std`` when there are several seeds). ``protocol`` and
    ``scope`` select rows; rows of several scopes or protocols in one cell are refused, not averaged."""
    part = df[(df["level"] == level) & (df["metric"].isin(metrics))]
    if protocol is not None and "protocol" in part.columns:
        part = part[part["protocol"] == protocol]
    if scope is not None and "scope" in part.columns:
        part = part[part["scope"] == scope]
    index = [i for i in index if i in part.columns]
    check_unmixed(part.dropna(subset=["value"]), list(index) + [columns], "pivot")
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
    wide["change"] = wide.iloc[:, -1] - wide.iloc[:, 0] if len(wide.columns) else float("nan")  # nothing ran: empty
    return wide.round(1)


def _mean_boot(values) -> object:
    """The mean per resample of several rows' test-image resamples (None unless every row has them)."""
    arrays = list(values)
    if not arrays or not all(isinstance(a, np.ndarray) for a in arrays) or len({a.shape for a in arrays}) != 1:
        return None
    return np.mean(np.stack(arrays), axis=0)


def dataset_means(df: pd.DataFrame, expected: Mapping[str, int]) -> pd.DataFrame:
    """Add per-dataset mean rows (dataset = the part before "/", scope "mean") when every one of the
    dataset's ``expected`` categories ran (name -> count, e.g. from the paper's Table I). A partial run (bottle
    only) gets no mean row, so it is never mistaken for the dataset's number. Only per-category rows are
    averaged; their test-image resamples (``boot``) and chance levels are averaged with them, and the mean
    row's ``test_id`` names the categories' images together."""
    from adlib import metrics

    rows = df[df["scope"] == "category"] if "scope" in df.columns else df
    parts = rows.assign(parent=rows["dataset"].str.split("/").str[0])
    means = []
    for parent, part in parts[parts["dataset"].str.contains("/")].groupby("parent", sort=False):
        if parent in expected and part["dataset"].nunique() == int(expected[parent]):
            keys = [k for k in ("method", "setting", "level", "metric", "backbone", "seed", "protocol",
                                "class_setting", "image_size") if k in part.columns]
            grouped = part.groupby(keys, sort=False, dropna=False)
            mean = grouped["value"].mean().reset_index()
            if "boot" in part.columns:
                mean["boot"] = [_mean_boot(boots) for _, boots in grouped["boot"]]
            if "chance" in part.columns:
                mean["chance"] = list(grouped["chance"].mean())
            if "test_id" in part.columns:
                mean["test_id"] = [metrics.test_identity([str(t) for t in ids]) for _, ids in grouped["test_id"]]
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
    return {("layers=all" if tuple(s) == taps else ("deeper=" if len(s) > len(taps) else "layers=") + "+".join(map(str, s))):
            ({} if tuple(s) == taps else {"layers": tuple(s)}) for s in subsets}


# ------------------------------------------------------------------------------------------- paper vs ours
# Units and display names of the metrics the papers print. Quality metrics (image, pixel, summary level) are
# percent; model-level metrics carry their own unit; counts are integers.
METRIC_LABELS = {"auroc": "AUROC", "ap": "AP", "f1max": "max-F1", "aupro": "AU-PRO", "mad": "mAD",
                 "params_m": "Params", "flops_g": "GFLOPs", "fps": "FPS", "train_s": "train time",
                 "train_s_lower_bound": "train time (lower bound)", "seconds": "time", "epochs": "epochs",
                 "n_categories": "categories", "train_normal": "train normal", "test_normal": "test normal",
                 "test_abnormal": "test abnormal"}
UNITS = {"params_m": "M", "flops_g": "GFLOPs", "fps": "FPS", "train_s": "s", "train_s_lower_bound": "s", "seconds": "s"}
COUNT_METRICS = ("n_categories", "train_normal", "test_normal", "test_abnormal", "epochs")
PERCENT_LEVELS = ("image", "pixel", "summary")
SPEED_METRICS = ("fps", "train_s", "train_s_lower_bound", "seconds")
KEYS = ["dataset", "method", "setting", "level", "metric"]
RUN_KEYS = ("backbone", "protocol", "class_setting", "image_size")  # what a reproduced row was measured with
NO_SPEC = "the paper's spec does not describe this table, so what its numbers were measured on is unknown"
REFERENCE = "the paper's number is for all of"  # a category set beside its dataset's printed mean


UNIT_SUFFIXES = {"_s": "s", "_h": "h", "_mb": "MB", "_gb": "GB", "_m": "M", "_g": "G"}  # train_h, memory_mb


def unit(metric: str, level: str | None = None) -> str:
    """"%" for quality metrics, "M", "GFLOPs", "FPS", "s" for costs, "" for counts and unknown metrics."""
    if metric in UNITS:
        return UNITS[metric]
    if level == "model":
        for suffix, name in UNIT_SUFFIXES.items():
            if metric.endswith(suffix):
                return name
    if level in PERCENT_LEVELS or (level is None and metric in QUALITY_METRICS + ("mad",)):
        return "%"
    return ""


def metric_label(metric: str, level: str | None = None) -> str:
    """"AUROC (%)", "Params (M)", "FPS", "train time (s)", "epochs"."""
    name, u = METRIC_LABELS.get(metric, metric), unit(metric, level)
    return name if not u or u == name else f"{name} ({u})"


def _is_count(metric: str, level: str | None) -> bool:
    return metric in COUNT_METRICS or level == "data"


CELL_KINDS = ("quality", "cost", "property")


def cell_kind(metric: str, level: str | None) -> str:
    """What a printed cell measures: "quality" (image, pixel or summary metrics, in percent), "cost" (costs with a
    unit and counts: parameters, FLOPs, speed, time, epochs, images), or "property" (a model-level value with no
    unit, such as a table's 0/1 ticks for an architecture's properties)."""
    if level in PERCENT_LEVELS:
        return "quality"
    if _is_count(metric, level) or unit(metric, level):
        return "cost"
    return "property"


def format_value(value, metric: str, level: str | None = None, signed: bool = False) -> str:
    """A number as the papers print it: percent with one decimal, counts as integers, costs with enough
    digits to be read (0.052 M, 4.31 M, 22.7 M; 389 s, 2.5 s). NaN gives ""."""
    if value is None or pd.isna(value):
        return ""
    value = float(value)
    sign = "+" if signed else ""
    if _is_count(metric, level) and value.is_integer():
        return f"{int(value):{sign}d}"
    if unit(metric, level) in ("%", "") or abs(value) >= 100:
        digits = 0 if abs(value) >= 100 and unit(metric, level) not in ("%", "") else 1
    else:
        digits = 1 if abs(value) >= 10 else 2 if abs(value) >= 1 else 3
    return f"{value:{sign}.{digits}f}"


def format_mean(mean, std, n, metric: str, level: str | None = None) -> str:
    """"mean ± std" over seeds (the mean alone for one seed); "–" when nothing ran."""
    if mean is None or pd.isna(mean):
        return "–"
    text = format_value(mean, metric, level)
    if n is not None and not pd.isna(n) and int(n) > 1 and std is not None and not pd.isna(std):
        digits = len(text.split(".")[1]) if "." in text else 0  # the spread to the mean's precision
        text += f" ± {float(std):.{digits}f}"
    return text


def _text(value) -> str:
    """A run column as text: "" for missing, "256" for 256.0."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _plain_backbone(label: str) -> str:
    return _text(label).split(" (")[0].strip()


def _paper_backbone(spec, row: Mapping) -> str | None:
    """The backbone behind the paper's cell: a variant labelled "backbone=X" is X, else the table's rule."""
    setting = _text(row.get("setting"))
    if setting.startswith("backbone="):
        return setting[len("backbone="):]
    return spec.backbone_for(_text(row.get("method")))


def comparability(spec, row: Mapping) -> str:
    """Why a reproduced row cannot be set against the paper's printed cell of the same dataset, method,
    setting, level and metric ("" when it can). The resolution, backbone, protocol and class setting must all
    match what the paper measured (``spec``, a ``TableSpec``; None: unknown, so never comparable), the data
    must be the paper's (not synthetic), and speed is never comparable across machines. A row that does not
    record a value the paper's table fixes is not comparable either: a match must be shown, not assumed."""
    if spec is None:
        return NO_SPEC
    level, metric = _text(row.get("level")), _text(row.get("metric"))
    if level == "data":  # image counts: only the dataset matters
        return ""
    reasons = []
    if metric in SPEED_METRICS:
        reasons.append("speed depends on the hardware: measured on another machine than the paper's")
    if _text(row.get("dataset")).startswith("synthetic"):
        reasons.append("synthetic data")
    size = _text(row.get("image_size"))
    if spec.image_size is not None:
        if not size:
            reasons.append("resolution not recorded")
        elif int(float(size)) != int(spec.image_size):
            reasons.append(f"{int(float(size))} px, the paper {spec.image_size} px")
    wanted, backbone = _paper_backbone(spec, row), _plain_backbone(row.get("backbone"))
    if wanted:
        if not backbone:
            reasons.append("backbone not recorded")
        elif backbone != wanted:
            reasons.append(f"backbone {backbone}, the paper {wanted}")
    if level != "model":
        protocol, class_setting = _text(row.get("protocol")), _text(row.get("class_setting"))
        if protocol != spec.protocol:
            reasons.append(f"protocol {protocol}, the paper {spec.protocol}" if protocol else "protocol not recorded")
        if class_setting != spec.class_setting:
            reasons.append(f"{class_setting}, the paper {spec.class_setting}" if class_setting
                           else "class setting not recorded")
    return "; ".join(reasons)


def select_rows(spec, ours: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The reproduced rows a paper's cell can stand beside, and what was left out (in words): rows pooled over
    categories (the papers print means over categories) and, where a table holds several metric protocols,
    every protocol but the paper's (else the first)."""
    notes = []
    if "scope" in ours.columns and (ours["scope"].astype(str) == "pooled").any():
        ours = ours[ours["scope"].astype(str) != "pooled"]
        notes.append("rows pooled over categories (the paper reports means over categories)")
    if "protocol" in ours.columns:
        quality = ~ours["level"].isin(["model", "data"])
        present = sorted({p for p in ours.loc[quality, "protocol"].map(_text) if p})
        if len(present) > 1:
            keep = spec.protocol if spec is not None and spec.protocol in present else present[0]
            dropped = [p for p in present if p != keep]
            ours = ours[~quality | (ours["protocol"].map(_text) == keep)]
            notes.append(f"rows under protocol {', '.join(dropped)} (shown: {keep})")
    return ours, notes


def side_by_side(spec, paper: pd.DataFrame, ours: pd.DataFrame) -> pd.DataFrame:
    """The paper's numbers and ours, one row per cell of either side (long format).

    Columns: the key columns, what our row was measured with (``RUN_KEYS``), ``ours`` / ``ours_std`` /
    ``seeds`` (mean, standard deviation and count over seeds), ``paper``, ``reference``, ``not_comparable``
    and ``diff``. ``diff`` (ours − paper) is filled only where the row is comparable (``comparability``);
    everywhere else ``not_comparable`` says why there is no difference: the reasons, "not in the paper", or
    "not run here" (with the reason a notebook recorded for a variant it could not run).

    A printed row that leaves a key column empty (a training time measured on an unnamed dataset) matches
    on its other keys. A reproduced category ("MVTec AD/bottle") the paper did not print gets the paper's number
    for the whole dataset as a ``reference``: never comparable, since it is not the same data. Rows pooled
    over categories and other protocols are left out (``select_rows``); the words are in ``attrs["left_out"]``.
    """
    paper = paper if paper is not None else pd.DataFrame(columns=KEYS + ["value"])
    ours, left_out = select_rows(spec, ours)
    ours = ours.copy()
    extra = [c for c in RUN_KEYS if c in ours.columns]
    for column in extra:
        ours[column] = ours[column].map(_text)
    summary = seed_summary(ours, KEYS + extra).rename(columns={"mean": "ours", "std": "ours_std", "n": "seeds"})
    # variants that did not run: NaN rows whose note says why
    group = KEYS + extra
    ran = set(map(tuple, summary[group].itertuples(index=False, name=None))) if len(summary) else set()
    notes = ours[ours["value"].isna()]
    notes = notes.assign(note=notes["note"].map(_text) if "note" in notes.columns else "")
    missing = []
    for key, part in notes.groupby(group, sort=False, dropna=False):
        if tuple(key) not in ran:
            reason = next((n for n in part["note"] if n), "")
            missing.append({**dict(zip(group, key)), "ours": float("nan"), "ours_std": float("nan"), "seeds": 0,
                            "run_note": reason})
    if missing:
        summary = pd.concat([summary, pd.DataFrame(missing)], ignore_index=True)
    if "run_note" not in summary.columns:
        summary["run_note"] = ""
    summary["run_note"] = summary["run_note"].map(_text)
    summary["from_ours"] = True
    summary["ours_order"] = range(len(summary))

    table = _join_printed(summary, paper, extra)
    reasons = []
    for row in table.to_dict("records"):
        has_ours, has_paper = not pd.isna(row["ours"]), not pd.isna(row["paper"])
        not_run = f"not run here: {row['run_note']}" if row["run_note"] else "not run here"
        if has_ours and has_paper:
            parts = []
            if row["reference"]:
                parent = row["dataset"].split("/")[0]
                parts.append(f"{REFERENCE} {parent}, this row for {row['dataset']} only")
            parts.append(comparability(spec, row))
            reasons.append("; ".join(p for p in parts if p))
        elif has_ours:
            reasons.append("not in the paper")
        elif has_paper:
            reasons.append(not_run)
        else:
            reasons.append(f"{not_run}; not in the paper")
    if _path_check(ours):  # a path check's numbers are never set against a paper's
        reasons = [f"{PATH_CHECK}; {r}" if r else PATH_CHECK for r in reasons]
    table["not_comparable"] = reasons
    comparable = table["ours"].notna() & table["paper"].notna() & (table["not_comparable"] == "")
    table["diff"] = (table["ours"] - table["paper"]).where(comparable)
    columns = KEYS + extra + ["ours", "ours_std", "seeds", "paper", "reference", "not_comparable", "diff",
                              "run_note", "from_ours", "ours_order", "paper_order"]
    out = table[columns].reset_index(drop=True)
    out.attrs["left_out"] = left_out
    return out


def _path_check(ours: pd.DataFrame) -> bool:
    """True for rows of a path check (their ``profile`` ends in "-check", or a ``path_check`` column is set)."""
    if "path_check" in ours.columns and ours["path_check"].map(_text).astype(bool).any():
        return True
    return "profile" in ours.columns and ours["profile"].map(_text).map(is_check).any()


def _join_printed(summary: pd.DataFrame, paper: pd.DataFrame, extra: list[str]) -> pd.DataFrame:
    """Our seed summary beside the paper's printed rows (an outer join on the key columns, in our order then
    the paper's). A printed row with an empty key column (a cost measured on an unnamed dataset) matches on
    its other keys; a reproduced category with no printed row gets its dataset's printed number as a
    ``reference``."""
    printed = [{**{k: _text(r[k]) for k in KEYS}, "paper": float(r["value"]), "paper_order": i}
               for i, r in enumerate(paper[KEYS + ["value"]].to_dict("records"))]
    patterns: dict[tuple, dict] = {}  # the keys a printed row names -> {those keys' values: row}
    for row in printed:
        named = tuple(k for k in KEYS if row[k])
        patterns.setdefault(named, {}).setdefault(tuple(row[k] for k in named), row)
    order = sorted(patterns, key=len, reverse=True)  # the most specific printed row first

    def lookup(keys: Mapping) -> dict | None:
        for named in order:
            found = patterns[named].get(tuple(keys[k] for k in named))
            if found is not None:
                return found
        return None

    used, out = set(), []
    for row in summary.to_dict("records"):
        keys = {k: _text(row[k]) for k in KEYS}
        match, reference = lookup(keys), False
        if match is None and "/" in keys["dataset"]:
            match = lookup({**keys, "dataset": keys["dataset"].split("/")[0]})
            reference = match is not None and bool(match["dataset"])
            match = match if reference else None
        if match is not None and not reference:
            used.add(match["paper_order"])
        out.append({**row, **keys, "paper": match["paper"] if match else float("nan"),
                    "paper_order": match["paper_order"] if match else float("nan"), "reference": reference})
    for row in printed:
        if row["paper_order"] not in used:
            out.append({**row, **{c: "" for c in extra}, "ours": float("nan"), "ours_std": float("nan"), "seeds": 0,
                        "run_note": "", "from_ours": False, "ours_order": float("nan"), "reference": False})
    columns = KEYS + extra + ["ours", "ours_std", "seeds", "run_note", "from_ours", "ours_order", "paper",
                              "paper_order", "reference"]
    table = pd.DataFrame(out, columns=columns)
    for column in KEYS + extra + ["run_note"]:
        table[column] = table[column].map(_text)
    table["from_ours"] = table["from_ours"].astype(bool)
    table["reference"] = table["reference"].astype(bool)
    return table


def paper_vs_ours(setting: Setting, name: str, ours: pd.DataFrame, methods: Sequence[str] | None = None,
                  index: Sequence[str] = ("method", "metric")) -> pd.DataFrame:
    """A notebook view of ``side_by_side`` for the paper's table ``name``: one row per ``index``, one column
    per dataset, cells "ours (paper)" with ours = mean ± std over seeds in the metric's unit; "Δ" (ours −
    paper) only where the row is comparable. A last column says, per row, why its cells have no Δ."""
    from adlib import results

    spec = setting.paper.tables.get(name)
    paper = results.paper_table(setting.paper.name, name)
    if getattr(setting, "check", None) is not None:
        ours = ours.assign(path_check=setting.check.label)
    if methods is not None:
        paper = paper[paper["method"].isin(methods)]
        ours = ours[ours["method"].isin(methods)]
    pairs = set(zip(paper["level"], paper["metric"]))
    ours = ours[pd.Series([pair in pairs for pair in zip(ours["level"], ours["metric"])], index=ours.index, dtype=bool)]
    table = side_by_side(spec, paper, ours)

    def cell(row) -> str:
        text = format_mean(row["ours"], row["ours_std"], row["seeds"], row["metric"], row["level"])
        text += f" ({format_value(row['paper'], row['metric'], row['level'])})" if not pd.isna(row["paper"]) else ""
        if not pd.isna(row["diff"]):
            text += f" Δ {format_value(row['diff'], row['metric'], row['level'], signed=True)}"
        return text

    table["cell"] = [cell(r) for r in table.to_dict("records")]
    if "metric" in index:
        table["metric"] = [metric_label(m, lv) for m, lv in zip(table["metric"], table["level"])]
    index = list(index)
    table["dataset"] = table["dataset"].replace("", "(no dataset named)")
    wide = table.pivot_table(index=index, columns="dataset", values="cell", aggfunc="first", sort=False).fillna("")
    why = table[table["diff"].isna()].groupby(index, sort=False)["not_comparable"].agg(
        lambda s: " / ".join(dict.fromkeys(r for r in s if r)))
    wide["no Δ because"] = why.reindex(wide.index).fillna("")
    return wide


def step_gains(steps: Sequence[tuple[str, str, str, str]], paper: Mapping[str, pd.DataFrame],
               ours: Mapping[str, pd.DataFrame], metric: str = "auroc",
               levels: Sequence[str] = ("image", "pixel")) -> pd.DataFrame:
    """A design path retraced from ablation tables: per step ``(name, table, before, after)`` (two ``setting``
    labels of that table) and level, the gain after minus before in the paper's printed table (``paper[table]``)
    and in ours (``ours[table]``, its category means: per seed, then mean and std over seeds). Columns: step,
    level, paper, ours, ours_std, ours_n (the seeds with both rows; 0: not run here)."""
    rows = []
    for name, table, before, after in steps:
        printed = paper[table]
        mine = ours.get(table, pd.DataFrame(columns=["setting", "level", "metric", "value", "seed", "scope"]))
        mine = mine[(mine["scope"] == "mean") & mine["value"].notna()] if "scope" in mine.columns else mine
        for level in levels:
            def pick(t: pd.DataFrame, label: str) -> pd.DataFrame:
                return t[(t["setting"] == label) & (t["level"] == level) & (t["metric"] == metric)]

            gain = float(pick(printed, after)["value"].mean() - pick(printed, before)["value"].mean())
            per_seed = (pick(mine, after).groupby("seed")["value"].mean()
                        - pick(mine, before).groupby("seed")["value"].mean()).dropna()
            rows.append({"step": name, "level": level, "paper": gain,
                         "ours": float(per_seed.mean()) if len(per_seed) else float("nan"),
                         "ours_std": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else float("nan"),
                         "ours_n": len(per_seed)})
    return pd.DataFrame(rows, columns=["step", "level", "paper", "ours", "ours_std", "ours_n"])


# ------------------------------------------------------------------------------------------- split counts, not-run cells
SPLIT_COUNT_METRICS = {"train": "train_normal", "validation": "validation_normal", "good": "test_normal",
                       "logical": "test_logical", "structural": "test_structural"}


def split_counts(sources, metrics: Mapping[str, str] = SPLIT_COUNT_METRICS) -> pd.DataFrame:
    """Image counts per source in the MVTec LOCO layout (a "Tab. 1"): normal train and validation images and the
    test images of each group in ``metrics`` (split or test group -> metric name), per category and summed over
    the categories of each dataset (long format, level "data")."""
    from adlib.data import AnomalyDataset

    rows = []
    for source in sources:
        counts = {split: len(AnomalyDataset(source.root, source.category, split)) for split in ("train", "validation")
                  if split in metrics}
        groups = AnomalyDataset(source.root, source.category, "test").groups
        counts.update({g: groups.count(g) for g in metrics if g not in ("train", "validation")})
        rows += [{"dataset": source.name, "method": "", "setting": "default", "level": "data",
                  "metric": metrics[k], "value": float(v), "data": source.name} for k, v in counts.items()]
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    total = table.assign(dataset=table["dataset"].str.split("/").str[0]).groupby(
        ["dataset", "method", "setting", "level", "metric"], as_index=False, sort=False)["value"].sum()
    return pd.concat([table, total.assign(data=total["dataset"])], ignore_index=True)


def grid_not_run_rows(grid_table: pd.DataFrame, metrics: Sequence[str], protocol: str,
                      backbone: str | None = None) -> pd.DataFrame:
    """The variants a ``run_grid`` table records as not run (NaN rows with the reason in ``note``), as NaN rows
    of ``metrics`` at image level, per category and for the dataset's mean, so that claims and tables that read
    other metrics (the LOCO group AUROCs) name the reason; ``backbone`` replaces the rows' backbone name."""
    if grid_table.empty:
        return pd.DataFrame()
    missing = grid_table[grid_table["value"].isna() & (grid_table["note"].astype(str) != "")]
    if backbone is not None:
        missing = missing.assign(backbone=backbone)
    keys = ["dataset", "method", "setting", "seed", "class_setting", "image_size", "backbone", "data", "note"]
    base = missing[keys].drop_duplicates()
    rows = [{**row, "level": "image", "metric": metric, "value": float("nan"), "protocol": protocol,
             "scope": "mean" if "/" not in row["dataset"] else "category"}
            for row in base.to_dict("records") for metric in metrics]
    out = pd.DataFrame(rows)
    if len(out):  # a not-run row for one category stands for its dataset too (the claims read the means)
        means = out.assign(dataset=out["dataset"].str.split("/").str[0], scope="mean")
        out = pd.concat([out, means], ignore_index=True).drop_duplicates(["dataset", "method", "setting", "seed",
                                                                          "metric"])
    return out


def not_run_cells(setting: Setting, datasets: Sequence[str], method: str, labels: Sequence[str],
                  metrics: Sequence[str], reason: str, class_setting: str | None = None,
                  image_size: int | None = None) -> pd.DataFrame:
    """NaN rows (level image, the study's columns, one per seed of the setting) with ``reason`` in ``note``,
    for table cells that were not run here, so that tables and claims say why."""
    return pd.DataFrame([{"dataset": d, "method": method, "setting": label, "level": "image", "metric": m,
                          "value": float("nan"), "backbone": setting.backbone_label(), "data": d, "seed": seed,
                          "protocol": setting.protocol, "class_setting": class_setting or setting.class_setting,
                          "image_size": image_size or setting.image_size,
                          "scope": "mean" if "/" not in d else "category", "note": reason}
                         for d in datasets for label in labels for m in metrics for seed in setting.seeds])


def printed_beside(setting: Setting, name: str, ours: pd.DataFrame, pairs: Mapping[str, str],
                   methods: Sequence[str] | None = None, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Our cells on one dataset shown beside the paper's printed cells on another, never as one cell and with
    no difference: ``pairs`` maps our dataset (e.g. a derived split) to the paper's (the official one). One row
    per (method, metric); per pair a column "ours: <dataset>" (mean ± std over seeds, "not run here: <reason>"
    for NaN rows with a note) and "paper: <dataset>" (the printed number of table ``name``)."""
    from adlib import results

    printed = results.paper_table(setting.paper.name, name)
    rows: dict[tuple, dict] = {}
    for ours_name, paper_name in pairs.items():
        mine = ours[ours["dataset"] == ours_name]
        if methods is not None:
            mine = mine[mine["method"].isin(methods)]
        if metrics is not None:
            mine = mine[mine["metric"].isin(metrics)]
        summary = seed_summary(mine, ["method", "metric", "level"])
        notes = mine[mine["value"].isna()]
        theirs = printed[printed["dataset"] == paper_name]
        for key in dict.fromkeys(zip(mine["method"], mine["metric"], mine["level"])):
            method, metric, level = key
            got = summary[(summary["method"] == method) & (summary["metric"] == metric)]
            if len(got):
                cell = format_mean(got["mean"].iloc[0], got["std"].iloc[0], got["n"].iloc[0], metric, level)
                cell += f" ({int(got['n'].iloc[0])} seeds)"
            else:
                why = [n for n in notes[(notes["method"] == method) & (notes["metric"] == metric)]["note"].map(_text) if n]
                cell = "not run here" + (f": {why[0]}" if why else "")
            paper = theirs[(theirs["method"] == method) & (theirs["metric"] == metric)]["value"]
            row = rows.setdefault((method, metric_label(metric, level)), {})
            row[f"ours: {ours_name}"] = cell
            row[f"paper: {paper_name}"] = format_value(paper.iloc[0], metric, level) if len(paper) else "not printed"
    out = pd.DataFrame.from_dict(rows, orient="index")
    if len(out):
        out.index = pd.MultiIndex.from_tuples(out.index, names=["method", "metric"])
    return out


# ------------------------------------------------------------------ appendix tables (per category)
# A paper's appendix tables print one dataset each, per category, at one level. They are filled from the runs of
# its main table, never from new fits. A printed cell with no run behind it gets a NaN row whose note says why (the
# dataset or category is not on this machine, the profile does not run it, or the method was not run), so that
# the written table carries the paper's cells beside a plain statement instead of leaving them out.


def _appendix_absent_reason(setting, folder: str, dataset: str, printed: str, ran: list[str], count: int) -> str:
    """Why nothing of ours stands beside the printed row ``printed`` (a category, or ``dataset``'s mean over its
    ``count`` printed categories) when ``ran`` (our categories of ``dataset`` with values) does not hold it. The
    words name the dataset, not the row, so that one statement covers all the rows it explains."""
    from adlib.data import list_categories
    from adlib.data.standins import missing_reason

    root, standin = setting.dataset_root(folder)  # a path check's stand-in counts as here
    if root is None:
        where = missing_reason(folder, setting.real_root)  # where it was looked for and how to get it
    elif "/" not in printed:  # the dataset's mean row
        where = (f"the mean over the paper's {count} {dataset} categories: only {', '.join(ran)} ran here" if ran
                 else f"no {dataset} category ran here")
    else:
        present = list_categories(root)
        if printed.split("/", 1)[1] not in present:
            where = (f"not on this machine (its {folder}/ holds only {', '.join(present)}"
                     + (", a path check's stand-in)" if standin else ")"))
        else:
            runs = setting.spec.real_categories
            where = (f"on this machine, but the {setting.profile} profile runs only "
                     f"{', '.join(runs) if runs else 'other datasets'} (CPU budget)")
    return where + ": the paper's number only"


def appendix_tables(setting, runs: pd.DataFrame, appendix: Mapping[str, tuple[str, str]],
                    synthetic: Sequence[str] = ()) -> dict[str, pd.DataFrame]:
    """A paper's per-category appendix tables (``appendix``: table name -> (dataset folder, level); long rows,
    ready for ``setting.write_table``) from the main table's runs ``runs`` (rows of ``study.run_grid``, every
    scope): per table, our category and dataset-mean rows of its dataset at its level
    (both protocols), plus, for every printed row (category or mean) of a method we implement that has no row
    of ours, NaN rows whose ``note`` says why (under the protocols of the table's own values; with none, the
    paper's only). The embedded synthetic sets stand in for the folders in ``synthetic`` (their per-category
    rows go with those tables, marked synthetic, so never set against a printed cell). Methods the paper prints
    but adlib does not implement get no rows: the report and ``paper_vs_ours`` show their printed cells as they
    are."""
    from adlib import results
    from adlib.study.grid import model_backbone

    keys = {display: key for key, display in setting.paper.methods.items()}
    runs = runs[runs["scope"].astype(str).isin(["category", "mean"])]
    quality = runs["level"].isin(["image", "pixel"])
    protocols = [p for p in dict.fromkeys(runs.loc[quality, "protocol"].astype(str)) if p] or [setting.protocol]
    valued = runs[runs["value"].notna()]
    out = {}
    for name, (folder, level) in appendix.items():
        dataset = setting.dataset_name(folder)
        paper = results.paper_table(setting.paper.name, name)
        metrics = list(dict.fromkeys(paper.loc[paper["level"] == level, "metric"]))
        names = runs["dataset"].astype(str)
        mine = (names == dataset) | names.str.startswith(dataset + "/")
        if folder in synthetic:
            mine |= names.str.startswith("synthetic") & (runs["scope"] == "category")
        ours = runs[mine & (runs["level"] == level) & runs["metric"].isin(metrics)]
        ran = [d for d in dict.fromkeys(valued["dataset"].astype(str)) if d.startswith(dataset + "/")]
        fill = [m for m in dict.fromkeys(runs["method"]) if m in set(paper["method"]) and m in keys]
        # the empty rows carry the protocols our rows of this table have; with none, only the paper's
        present = [p for p in protocols if (ours.loc[ours["value"].notna(), "protocol"].astype(str) == p).any()]
        present = present or [setting.protocol]
        count = sum("/" in d for d in dict.fromkeys(paper["dataset"]))
        rows = []
        for printed in dict.fromkeys(paper["dataset"]):
            for method in fill:
                if len(ours[(ours["dataset"] == printed) & (ours["method"] == method)]):
                    continue
                if printed in ran:  # the data ran here, this method did not: its own recorded reason
                    notes = runs.loc[(runs["dataset"] == printed) & (runs["method"] == method), "note"]
                    reason = next((n for n in notes.astype(str) if n), f"{method} was not run in this notebook")
                else:
                    reason = _appendix_absent_reason(setting, folder, dataset, printed, ran, count)
                rows += [{"dataset": printed, "method": method, "setting": "default", "level": level, "metric": m,
                          "value": float("nan"), "backbone": model_backbone(setting, keys[method]), "data": printed,
                          "seed": setting.seed, "protocol": p, "class_setting": setting.class_setting,
                          "image_size": setting.image_size, "scope": "category" if "/" in printed else "mean",
                          "note": reason}
                         for p in present for m in metrics]
        out[name] = pd.concat([ours, pd.DataFrame(rows, columns=ours.columns)], ignore_index=True) if rows \
            else ours.reset_index(drop=True)
    return out


def appendix_coverage(setting, tables: dict[str, pd.DataFrame], appendix: Mapping[str, tuple[str, str]]
                      ) -> pd.DataFrame:
    """One line per appendix table: its dataset, the printed rows (categories and the mean), which of them have
    a value of ours, and why the others are the paper's only (the notes of ``appendix_tables``' NaN rows)."""
    from adlib import results

    lines = []
    for name, df in tables.items():
        folder, level = appendix[name]
        printed = list(dict.fromkeys(results.paper_table(setting.paper.name, name)["dataset"]))
        valued = df[df["value"].notna()]
        ours = [d for d in printed if d in set(valued["dataset"])]
        other = sorted({d for d in valued["dataset"] if d not in printed})
        reasons = dict.fromkeys(n for n in df.loc[df["value"].isna(), "note"].astype(str) if n)
        lines.append({"table": name, "dataset": setting.dataset_name(folder), "level": level,
                      "printed rows": len(printed), "with ours": ", ".join(ours) or "none",
                      "paper only": len(printed) - len(ours),
                      "ours, not printed": ", ".join(other) or "",
                      "why paper only": " / ".join(reasons) if len(reasons) <= 3 else
                      " / ".join(list(reasons)[:2]) + f" / ... ({len(reasons)} reasons, one per row, in the CSV)"})
    return pd.DataFrame(lines)
