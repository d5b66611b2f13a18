"""Claims decided over seeds, by one stated rule, never by a threshold typed into a notebook.

A paper's spec declares each claim once (``adlib.study.spec.Claim``): its words, where it is in the paper,
the side the paper favours, the sides it is compared with, the metric. ``evaluate(claim, table)`` reads the
evidence from a long table with a ``seed`` column:

1. each side's value per seed is the mean over the data sources both sides ran on for that seed (for a
   multi-class run, the run's mean over its categories; pooled rows are never used);
2. the per-seed difference d = favoured − other (other − favoured for costs, ``higher_is_better=False``),
   minus the claim's ``margin``;
3. with n seeds, mean(d) and its standard error se = std(d) / sqrt(n):
   **held** when mean(d) > 2 se, **failed** when mean(d) < −2 se, otherwise **inconclusive**; with fewer
   than ``MIN_SEEDS`` seeds the verdict is inconclusive and says so; a side with no result is **not run**,
   with the reason recorded in the table.

A claim with several ``against`` sides holds when every comparison holds and fails when any fails.
``check(setting, table, ids)`` evaluates a paper's claims, writes them to
``results/<profile>/<paper>/claims.csv`` (merged by claim id, atomically, under a file lock) and returns
the rows for the notebook to show beside the evidence; ``explain`` turns them into plain sentences.
"""
from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from adlib.study.spec import Claim, Side

MIN_SEEDS = 3
Z = 2.0  # standard errors
RULE = (f"per-seed difference (favoured − other, minus the paper's margin); held if its mean > {Z:g} standard "
        f"errors, failed if < −{Z:g} SE, else inconclusive; at least {MIN_SEEDS} seeds")
VERDICTS = ("held", "failed", "inconclusive", "not run")
COLUMNS = ["paper", "claim", "text", "where", "comparison", "metric", "level", "protocol", "n_seeds",
           "favoured_mean", "favoured_std", "other_mean", "other_std", "diff_mean", "diff_std", "diff_se",
           "margin", "verdict", "rule", "data", "note", "profile"]


# ------------------------------------------------------------------------------------------- selection
def _labels_with_prefix(table: pd.DataFrame, prefix: str) -> list[str]:
    return sorted({s for s in table["setting"].astype(str) if s.startswith(prefix)})


def _number(label: str) -> float:
    match = re.search(r"(-?\d+(?:\.\d+)?)\s*$", label)
    return float(match.group(1)) if match else float("nan")


def _resolve_value(value: str, table: pd.DataFrame, favoured: Side | None) -> list[str]:
    """Special setting values: "<prefix>=max"/"=min" (the largest/smallest numbered label of that prefix
    present), "<prefix>=subset" (every label of that prefix except the favoured one)."""
    match = re.fullmatch(r"(.+=)(max|min|subset)", str(value))
    if not match:
        return [value]
    prefix, kind = match.groups()
    labels = [label for label in _labels_with_prefix(table, prefix) if label[len(prefix):] not in ("max", "min", "subset")]
    if kind == "subset":
        taken = set(favoured.where.get("setting", ())) if favoured is not None else set()
        fav = favoured.where.get("setting") if favoured is not None else None
        return [label for label in labels if label != fav and label not in taken]
    numbered = [label for label in labels if not math.isnan(_number(label))]
    if not numbered:
        return []
    return [max(numbered, key=_number) if kind == "max" else min(numbered, key=_number)]


def expand(side: Side, table: pd.DataFrame, favoured: Side | None = None) -> list[Side]:
    """Concrete sides: special values resolved against the labels present in ``table``."""
    if "setting" not in side.where:
        return [side]
    values = _resolve_value(side.where["setting"], table, favoured)
    if values == [side.where["setting"]]:
        return [side]
    return [Side(side.label if len(values) == 1 else v, {**side.where, "setting": v}) for v in values]


def _rows(table: pd.DataFrame, side: Side, claim: Claim, protocol: str | None) -> pd.DataFrame:
    part = table[(table["metric"] == claim.metric) & (table["level"] == claim.level)]
    for column, value in side.where.items():
        if column not in part.columns:
            return part.iloc[0:0]
        part = part[part[column].astype(str) == str(value)]
    if protocol is not None and "protocol" in part.columns and claim.level != "model":
        part = part[part["protocol"].isin([protocol, ""])]
    if "scope" in part.columns:
        part = part[part["scope"] != "pooled"]
        if (part["scope"] == "mean").any():
            part = part[part["scope"] == "mean"]
    return part


def _not_run_reason(rows: pd.DataFrame, side: Side) -> str:
    if "note" in rows.columns:
        notes = [n for n in rows["note"].astype(str) if n]
        if notes:
            return f"{side.label}: {notes[0]}"
    return f"{side.label}: no result in the table"


def _per_seed(rows: pd.DataFrame) -> pd.DataFrame:
    """(seed, dataset) -> value, seeds as given (a table without a seed column counts as seed 0)."""
    rows = rows.assign(seed=rows["seed"] if "seed" in rows.columns else 0)
    return rows.dropna(subset=["value"]).groupby(["seed", "dataset"], sort=True)["value"].mean()


# ------------------------------------------------------------------------------------------- verdicts
def decide(diffs: Sequence[float]) -> tuple[str, float, float, float]:
    """(verdict, mean, std, se) of per-seed differences by the rule in ``RULE``."""
    d = np.asarray(list(diffs), dtype=float)
    n = len(d)
    if n == 0:
        return "not run", float("nan"), float("nan"), float("nan")
    mean = float(d.mean())
    std = float(d.std(ddof=1)) if n > 1 else float("nan")
    se = std / math.sqrt(n) if n > 1 else float("nan")
    if n < MIN_SEEDS:
        return "inconclusive", mean, std, se
    if se == 0:
        return ("held" if mean > 0 else "failed" if mean < 0 else "inconclusive"), mean, std, se
    if mean > Z * se:
        return "held", mean, std, se
    if mean < -Z * se:
        return "failed", mean, std, se
    return "inconclusive", mean, std, se


def _compare(claim: Claim, favoured: Side, other: Side, table: pd.DataFrame, protocol: str | None) -> dict:
    fav_rows, other_rows = _rows(table, favoured, claim, protocol), _rows(table, other, claim, protocol)
    row = {"claim": claim.id, "text": claim.text, "where": claim.where, "comparison": f"{favoured.label} vs {other.label}",
           "metric": claim.metric, "level": claim.level, "protocol": protocol or "", "margin": claim.margin,
           "rule": RULE, "note": claim.note}
    fav, oth = _per_seed(fav_rows), _per_seed(other_rows)
    if fav.empty or oth.empty:
        reasons = [r for r, s, rows in ((fav, favoured, fav_rows), (oth, other, other_rows)) if r.empty
                   for r in [_not_run_reason(rows, s)]]
        return {**row, "n_seeds": 0, "verdict": "not run", "note": "; ".join(filter(None, [claim.note, *reasons]))}
    joined = pd.concat({"fav": fav, "other": oth}, axis=1).dropna()  # same seed and data source on both sides
    if joined.empty:
        return {**row, "n_seeds": 0, "verdict": "not run",
                "note": "; ".join(filter(None, [claim.note, "the two sides share no seed and data source"]))}
    per_seed = joined.groupby(level="seed").mean()
    sign = 1.0 if claim.higher_is_better else -1.0
    diffs = sign * (per_seed["fav"] - per_seed["other"]) - claim.margin
    verdict, mean, std, se = decide(diffs)
    n = len(per_seed)
    note = claim.note
    if n < MIN_SEEDS:
        note = "; ".join(filter(None, [note, f"only {n} seed(s): at least {MIN_SEEDS} are needed for a verdict"]))
    data = ", ".join(sorted(set(joined.index.get_level_values("dataset"))))
    return {**row, "n_seeds": n, "favoured_mean": float(per_seed["fav"].mean()),
            "favoured_std": float(per_seed["fav"].std(ddof=1)) if n > 1 else float("nan"),
            "other_mean": float(per_seed["other"].mean()),
            "other_std": float(per_seed["other"].std(ddof=1)) if n > 1 else float("nan"),
            "diff_mean": mean, "diff_std": std, "diff_se": se, "verdict": verdict, "data": data, "note": note}


def overall(verdicts: Iterable[str]) -> str:
    verdicts = list(verdicts)
    if not verdicts or all(v == "not run" for v in verdicts):
        return "not run"
    if any(v == "failed" for v in verdicts):
        return "failed"
    if all(v == "held" for v in verdicts):
        return "held"
    return "inconclusive"


def evaluate(claim: Claim, table: pd.DataFrame, protocol: str | None = None) -> pd.DataFrame:
    """One row per comparison of ``claim`` on ``table``, plus an "overall" row when there are several."""
    favoured = expand(claim.favoured, table)
    if len(favoured) != 1:
        rows = [{"claim": claim.id, "text": claim.text, "where": claim.where, "comparison": "overall",
                 "metric": claim.metric, "level": claim.level, "n_seeds": 0, "verdict": "not run", "rule": RULE,
                 "note": f"the favoured side {claim.favoured.where} matches no single variant in the table"}]
        return pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("paper", "profile")])
    others = [o for side in claim.against for o in expand(side, table, claim.favoured)]
    rows = [_compare(claim, favoured[0], other, table, protocol) for other in others]
    if not rows:
        rows = [{"claim": claim.id, "comparison": "overall", "verdict": "not run", "n_seeds": 0,
                 "note": "no compared side in the table"}]
    if len(rows) > 1:
        rows.append({"claim": claim.id, "text": claim.text, "where": claim.where, "comparison": "overall",
                     "metric": claim.metric, "level": claim.level, "protocol": protocol or "",
                     "n_seeds": min(r.get("n_seeds", 0) for r in rows), "margin": claim.margin,
                     "verdict": overall(r["verdict"] for r in rows), "rule": RULE,
                     "note": "held when every comparison holds, failed when any fails"})
    return pd.DataFrame(rows).reindex(columns=[c for c in COLUMNS if c not in ("paper", "profile")])


# ------------------------------------------------------------------------------------------- recording
def claims_path(setting) -> Path:
    from adlib import results

    return results.output_root(setting.output_root) / "results" / setting.profile / setting.paper.name / "claims.csv"


def record(setting, verdicts: pd.DataFrame) -> Path:
    """Merge ``verdicts`` into ``results/<profile>/<paper>/claims.csv`` (rows of the same claims replaced)."""
    import fcntl

    from adlib import results

    path = claims_path(setting)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = verdicts.assign(paper=setting.paper.name, profile=setting.profile).reindex(columns=COLUMNS)
    with open(path.with_name(".claims.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=COLUMNS)
        merged = pd.concat([old[~old["claim"].isin(set(new["claim"]))], new], ignore_index=True)
        order = {c.id: i for i, c in enumerate(setting.paper.claims)}
        merged = merged.sort_values("claim", key=lambda s: s.map(order).fillna(len(order)), kind="stable")
        with results.atomic_path(path) as tmp:
            merged.to_csv(tmp, index=False, float_format="%.4f")
    results._log_written(path, "table")
    return path


def check(setting, table: pd.DataFrame, ids: Sequence[str] | None = None, protocol: str | None = None,
          claims: Sequence[Claim] | None = None, save: bool = True) -> pd.DataFrame:
    """Evaluate the paper's claims ``ids`` (default: every claim whose ``table`` is in ``table``'s name set)
    on ``table`` under ``protocol`` (default: the setting's) and record them. Returns the verdict rows."""
    chosen = list(claims) if claims is not None else [setting.paper.claim(i) for i in ids] if ids is not None \
        else list(setting.paper.claims)
    protocol = protocol or setting.protocol
    parts = [evaluate(claim, table, protocol) for claim in chosen]
    verdicts = _path_check(setting, pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS))
    if save and not verdicts.empty:
        record(setting, verdicts)
    return verdicts


def not_run(setting, ids: Sequence[str], reason: str, save: bool = True) -> pd.DataFrame:
    """Record claims that cannot be decided here (weights or data missing), with the reason."""
    rows = []
    for claim_id in ids:
        claim = setting.paper.claim(claim_id)
        rows.append({"claim": claim.id, "text": claim.text, "where": claim.where, "comparison": "overall",
                     "metric": claim.metric, "level": claim.level, "n_seeds": 0, "verdict": "not run",
                     "rule": RULE, "note": reason})
    verdicts = pd.DataFrame(rows).reindex(columns=[c for c in COLUMNS if c not in ("paper", "profile")])
    verdicts = _path_check(setting, verdicts)
    if save and rows:
        record(setting, verdicts)
    return verdicts


def _path_check(setting, verdicts: pd.DataFrame) -> pd.DataFrame:
    """A path check's verdicts decide nothing: their note starts with "path check: not results"."""
    check = getattr(setting, "check", None)
    if check is None or verdicts.empty:
        return verdicts
    notes = verdicts["note"].where(verdicts["note"].notna(), "").astype(str)
    return verdicts.assign(note=[f"{check.label.upper()}" + (f"; {n}" if n else "") for n in notes])


def _fmt(mean: float, std: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.1f}" if std is None or (isinstance(std, float) and math.isnan(std)) else f"{mean:.1f} ± {std:.1f}"


def summary(verdicts: pd.DataFrame) -> pd.DataFrame:
    """A compact view for notebooks: comparison, both sides and the difference as mean ± std, verdict."""
    out = pd.DataFrame({
        "claim": verdicts["claim"], "comparison": verdicts["comparison"], "metric": verdicts["metric"],
        "seeds": verdicts["n_seeds"],
        "favoured": [_fmt(m, s) for m, s in zip(verdicts["favoured_mean"], verdicts["favoured_std"])],
        "other": [_fmt(m, s) for m, s in zip(verdicts["other_mean"], verdicts["other_std"])],
        "difference": [_fmt(m, s) for m, s in zip(verdicts["diff_mean"], verdicts["diff_std"])],
        "verdict": verdicts["verdict"], "note": verdicts["note"].fillna(""),
    })
    return out


def explain(verdicts: pd.DataFrame) -> str:
    """Markdown: one plain sentence per claim (its overall verdict), failures said as failures."""
    lines = []
    for claim_id, part in verdicts.groupby("claim", sort=False):
        final = part[part["comparison"] == "overall"] if (part["comparison"] == "overall").any() else part
        row = final.iloc[0]
        verdict = row["verdict"]
        words = {"held": "**held**", "failed": "**failed**: the evidence goes against the paper",
                 "inconclusive": "**inconclusive**: the difference is within the seed-to-seed noise",
                 "not run": "**not run**"}[verdict]
        detail = ""
        if verdict != "not run" and len(part) == 1:
            detail = (f" ({row['comparison']}: difference {_fmt(row['diff_mean'], row['diff_std'])} points of "
                      f"{row['level']} {row['metric']} over {int(row['n_seeds'])} seeds)")
        elif verdict != "not run":
            counts = part[part["comparison"] != "overall"]["verdict"].value_counts().to_dict()
            detail = " (" + ", ".join(f"{n} comparison(s) {v}" for v, n in counts.items()) + ")"
        reason = f" — {row['note']}" if verdict == "not run" and isinstance(row.get("note"), str) and row["note"] else ""
        lines.append(f"- *{row['text']}* ({row['where']}): {words}{detail}{reason}.")
    return "\n".join(lines)


def with_margin(claim: Claim, margin: float) -> Claim:
    return replace(claim, margin=margin)
