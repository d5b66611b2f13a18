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
