"""Claims decided by one stated rule against two sources of noise, never by a threshold typed into a notebook.

A paper's spec declares each claim once (``adlib.study.spec.Claim``): its words, where it is in the paper,
the side the paper favours, the sides it is compared with, the metric, and the floor above which the favoured
side counts as working (``Floor``). ``evaluate(claim, table)`` reads the evidence from a long table with a
``seed`` column (``adlib.study.run_grid``'s rows):

1. each side's value per seed is the mean over the data sources both sides ran on for that seed (for a
   multi-class run, the run's mean over its categories; pooled rows are never used);
2. the per-seed difference d = favoured − other (other − favoured for costs, ``higher_is_better=False``),
   minus the claim's ``margin``; **seeds** say held when mean(d) > 2 se (se = std(d) / sqrt(n), n >= 3
   seeds), failed when mean(d) < −2 se, else inconclusive;
3. **test images** (quality metrics): every row carries its metric on ``adlib.metrics.BOOTSTRAP`` resamples
   of its test images (``boot``), drawn from the images' identity, so both sides, every seed and every data
   source of one set of images share the same resamples (a paired, stratified bootstrap). The seed-mean
   difference is recomputed on each resample; the test images say held when its central 95 % interval lies
   above zero, failed when it lies below, else inconclusive;
4. the verdict is **held** or **failed** only when seeds and test images agree, otherwise **inconclusive**.
   A cost measured on the model (``level="model"``: parameters, seconds) has no test images: the seeds decide;
   quality rows without resamples (a hand-built table) cannot be held or failed;
5. a claim is decided only where its favoured side works (``Claim.floor``): otherwise **not testable here**,
   with the values and the floor in the note; a side with no result is **not run**, with its reason.

A claim with several ``against`` sides holds when every comparison holds and fails when any fails.
``check(setting, table, ids)`` evaluates a paper's claims, writes them to
``results/<profile>/<paper>/claims.csv`` (merged by claim id, atomically, under a file lock) and returns
the rows for the notebook to show beside the evidence; ``summary`` is the compact view, ``explain`` turns
them into plain sentences and ``closing(setting, ...)`` renders a chapter's closing verdicts section from
``claims.csv`` and the tables written so far.
"""
from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from adlib.study.spec import Claim, Floor, Side

MIN_SEEDS = 3
Z = 2.0  # standard errors
INTERVAL = 95.0  # percent: the central interval of the test-image resamples
RULE = (f"held or failed only when two sources of noise agree: seeds (the per-seed difference favoured − other, "
        f"minus the paper's margin, beyond {Z:g} standard errors of its mean over at least {MIN_SEEDS} seeds) and "
        f"test images (the {INTERVAL:g} % interval of the seed-mean difference over paired resamples of the test "
        f"images excludes zero); otherwise inconclusive; costs measured on the model are decided by the seeds; "
        f"not testable here when the favoured side is below its floor (chance, or a fraction of the best peer)")
VERDICTS = ("held", "failed", "inconclusive", "not testable here", "not run")
COLUMNS = ["paper", "claim", "text", "where", "comparison", "metric", "level", "protocol", "n_seeds",
           "favoured_mean", "favoured_std", "other_mean", "other_std", "diff_mean", "diff_std", "diff_se",
           "test_lo", "test_hi", "resamples", "by_seeds", "by_test_images", "chance", "floor", "floor_note",
           "margin", "verdict", "rule", "data", "note", "profile"]
NUMBERS = ("n_seeds", "favoured_mean", "favoured_std", "other_mean", "other_std", "diff_mean", "diff_std", "diff_se",
           "test_lo", "test_hi", "resamples", "chance", "floor", "margin")
_MODEL_LEVEL = "does not apply: measured on the model, not on test images"


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


def _metric_rows(table: pd.DataFrame, claim: Claim, protocol: str | None) -> pd.DataFrame:
    """The rows of the claim's metric and level under ``protocol``; per-category means preferred, never pooled."""
    part = table[(table["metric"] == claim.metric) & (table["level"] == claim.level)]
    if protocol is not None and "protocol" in part.columns and claim.level != "model":
        part = part[part["protocol"].isin([protocol, ""])]
    if "scope" in part.columns:
        part = part[part["scope"] != "pooled"]
        if (part["scope"] == "mean").any():
            part = part[part["scope"] == "mean"]
    return part


def _rows(table: pd.DataFrame, side: Side, claim: Claim, protocol: str | None) -> pd.DataFrame:
    part = table[(table["metric"] == claim.metric) & (table["level"] == claim.level)]
    for column, value in side.where.items():
        if column not in part.columns:
            return part.iloc[0:0]
        part = part[part[column].astype(str) == str(value)]
    return _metric_rows(part, claim, protocol)


def _not_run_reason(rows: pd.DataFrame, side: Side) -> str:
    if "note" in rows.columns:
        notes = [n for n in rows["note"].astype(str) if n and n != "nan"]
        if notes:
            return f"{side.label}: {notes[0]}"
    return f"{side.label}: no result in the table"


def _evidence(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (seed, dataset): the value, its test-image resamples (``boot``, None when a row lacks them), the
    chance level and the test images' identity. A table without a seed column counts as seed 0."""
    rows = rows.assign(seed=rows["seed"] if "seed" in rows.columns else 0).dropna(subset=["value"])
    records = []
    for (seed, dataset), part in rows.groupby(["seed", "dataset"], sort=True):
        boots = list(part["boot"]) if "boot" in part.columns else [None]
        same = all(isinstance(b, np.ndarray) for b in boots) and len({b.shape for b in boots}) == 1
        chance = pd.to_numeric(part["chance"], errors="coerce").mean() if "chance" in part.columns else float("nan")
        ids = sorted({str(t) for t in part["test_id"] if isinstance(t, str) and t}) if "test_id" in part.columns else []
        records.append({"seed": seed, "dataset": dataset, "value": float(part["value"].mean()),
                        "boot": np.mean(np.stack(boots), axis=0) if same else None, "chance": chance,
                        "test_id": "+".join(ids)})
    frame = pd.DataFrame(records, columns=["seed", "dataset", "value", "boot", "chance", "test_id"])
    return frame.set_index(["seed", "dataset"])


def _per_seed(evidence: pd.DataFrame) -> pd.Series:
    return evidence["value"].groupby(level="seed").mean()


def _seed_mean_boot(evidence: pd.DataFrame) -> np.ndarray | None:
    """The seed mean (of each seed's mean over data sources) on every test-image resample; None without them."""
    boots = list(evidence["boot"])
    if not boots or any(b is None for b in boots) or len({b.shape for b in boots}) != 1:
        return None
    per_seed = [np.mean(np.stack([b for b in part["boot"]]), axis=0) for _, part in evidence.groupby(level="seed")]
    return np.mean(np.stack(per_seed), axis=0)


def _interval(values: np.ndarray) -> tuple[float, float]:
    tail = (100.0 - INTERVAL) / 2
    if values is None or not np.isfinite(values).any():
        return float("nan"), float("nan")
    lo, hi = np.nanpercentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


# ------------------------------------------------------------------------------------------- verdicts
def decide(diffs: Sequence[float]) -> tuple[str, float, float, float]:
    """(verdict, mean, std, se) of per-seed differences by the seeds' part of ``RULE``."""
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


def decide_interval(lo: float, hi: float) -> str:
    """The test images' part of ``RULE``: held when the interval lies above zero, failed when below."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "inconclusive"
    return "held" if lo > 0 else "failed" if hi < 0 else "inconclusive"


def combine(by_seeds: str, by_images: str | None) -> str:
    """Held or failed only when both sources agree (``by_images`` None: test images do not apply)."""
    if by_images is None or by_seeds == by_images:
        return by_seeds
    return "inconclusive"


def _fmt_num(value: float) -> str:
    """One decimal, or two significant digits below 1 (a chance level of 0.016 is not 0.0)."""
    if value is None or not np.isfinite(value):
        return "–"
    return f"{value:.1f}" if abs(value) >= 1 or value == 0 else f"{value:.2g}"


def _peer_best(tables: Sequence[pd.DataFrame], claim: Claim, protocol: str | None, exclude: set[str],
               datasets: set[str]) -> tuple[float, str]:
    """The best seed mean of any other method (any of its settings) on the same data sources."""
    best, who = float("-inf"), ""
    for table in tables:
        if table is None or "method" not in table.columns:
            continue
        part = _metric_rows(table, claim, protocol)
        part = part[~part["method"].astype(str).isin(exclude) & part["dataset"].astype(str).isin(datasets)]
        part = part.assign(setting=part["setting"] if "setting" in part.columns else "default")
        for (method, setting), rows in part.groupby(["method", "setting"], sort=False):
            per_seed = _per_seed(_evidence(rows))
            if len(per_seed) and per_seed.mean() > best:
                best, who = float(per_seed.mean()), f"{method}, {setting}" if setting != "default" else str(method)
    return (best, who) if who else (float("nan"), "")


def _floor(claim: Claim, label: str, fav: pd.DataFrame, fav_rows: pd.DataFrame, tables: Sequence[pd.DataFrame],
           protocol: str | None) -> tuple[bool, float, float, str]:
    """(works, chance, floor, note): does the favoured side clear ``claim.floor`` on the compared data?"""
    from adlib import metrics

    floor: Floor = claim.floor
    per_seed = _per_seed(fav)
    mean = float(per_seed.mean())
    se = float(per_seed.std(ddof=1)) / math.sqrt(len(per_seed)) if len(per_seed) > 1 else float("nan")
    lo, hi = _interval(_seed_mean_boot(fav))
    chance = float(fav["chance"].mean()) if fav["chance"].notna().any() else 100.0 * metrics.chance_level(claim.metric)
    parts, works, needed = [], True, float("-inf")
    where = f"{label} {_fmt_num(mean)}" + (f" (test images {INTERVAL:g} %: {_fmt_num(lo)}–{_fmt_num(hi)})"
                                           if np.isfinite(lo) else "")
    if floor.above_chance:
        if not np.isfinite(chance):
            works = False
            parts.append("chance level unknown for this metric (rows without a positive rate)")
        else:
            needed = chance
            low = min(mean - Z * se if np.isfinite(se) else mean, lo if np.isfinite(lo) else mean)
            ok = low > chance
            works &= ok
            parts.append(f"chance {_fmt_num(chance)}" + ("" if ok else " (not cleared beyond the noise)"))
    if floor.of_best_peer is not None:
        methods = {str(m) for m in fav_rows["method"]} if "method" in fav_rows.columns else set()
        data = {str(d) for d in fav.index.get_level_values("dataset")}
        best, who = _peer_best(tables, claim, protocol, methods, data)
        if who:
            required = floor.of_best_peer * best
            needed = max(needed, required)
            ok = mean >= required
            works &= ok
            parts.append(f"{floor.of_best_peer:g} × best peer ({who}: {_fmt_num(best)}) = {_fmt_num(required)}"
                         + ("" if ok else " (not reached)"))
        else:
            parts.append("no other method on these images to compare with (peer part not checked)")
    note = f"{where}; floor: " + "; ".join(parts)
    return works, chance, needed if np.isfinite(needed) else float("nan"), note


def _compare(claim: Claim, favoured: Side, other: Side, table: pd.DataFrame, protocol: str | None,
             peers: pd.DataFrame | None = None) -> dict:
    fav_rows, other_rows = _rows(table, favoured, claim, protocol), _rows(table, other, claim, protocol)
    row = {"claim": claim.id, "text": claim.text, "where": claim.where, "comparison": f"{favoured.label} vs {other.label}",
           "metric": claim.metric, "level": claim.level, "protocol": protocol or "", "margin": claim.margin,
           "rule": RULE, "note": claim.note, "resamples": 0}
    fav_all, oth_all = _evidence(fav_rows), _evidence(other_rows)
    if fav_all.empty or oth_all.empty:
        reasons = [_not_run_reason(rows, s) for ev, s, rows in ((fav_all, favoured, fav_rows), (oth_all, other, other_rows))
                   if ev.empty]
        return {**row, "n_seeds": 0, "verdict": "not run", "note": "; ".join(filter(None, [claim.note, *reasons]))}
    shared = fav_all.index.intersection(oth_all.index)  # same seed and data source on both sides
    if shared.empty:
        return {**row, "n_seeds": 0, "verdict": "not run",
                "note": "; ".join(filter(None, [claim.note, "the two sides share no seed and data source"]))}
    fav, oth = fav_all.loc[shared], oth_all.loc[shared]
    per_fav, per_oth = _per_seed(fav), _per_seed(oth)
    sign = 1.0 if claim.higher_is_better else -1.0
    by_seeds, mean, std, se = decide(sign * (per_fav - per_oth) - claim.margin)
    n = len(per_fav)
    notes = [claim.note]
    if n < MIN_SEEDS:
        notes.append(f"only {n} seed(s): at least {MIN_SEEDS} are needed for a verdict")
    lo = hi = float("nan")
    if claim.level == "model":
        by_images, verdict = _MODEL_LEVEL, by_seeds
    else:
        boot_fav, boot_oth = _seed_mean_boot(fav), _seed_mean_boot(oth)
        if boot_fav is None or boot_oth is None or boot_fav.shape != boot_oth.shape:
            by_images = "no test-image resamples in these rows"
            verdict = combine(by_seeds, "inconclusive")
        else:
            lo, hi = _interval(sign * (boot_fav - boot_oth) - claim.margin)
            by_images = decide_interval(lo, hi)
            verdict = combine(by_seeds, by_images)
            row["resamples"] = int(boot_fav.shape[0])
            if any(a != b or not a for a, b in zip(fav["test_id"], oth["test_id"])):
                notes.append("the two sides were scored on different test images: resampled independently")
    out = {**row, "n_seeds": n, "favoured_mean": float(per_fav.mean()),
           "favoured_std": float(per_fav.std(ddof=1)) if n > 1 else float("nan"),
           "other_mean": float(per_oth.mean()), "other_std": float(per_oth.std(ddof=1)) if n > 1 else float("nan"),
           "diff_mean": mean, "diff_std": std, "diff_se": se, "test_lo": lo, "test_hi": hi, "by_seeds": by_seeds,
           "by_test_images": by_images, "verdict": verdict,
           "data": ", ".join(sorted(set(shared.get_level_values("dataset")))), "note": "; ".join(filter(None, notes))}
    if claim.floor is not None:
        works, chance, floor, floor_note = _floor(claim, favoured.label, fav, fav_rows, [table, peers], protocol)
        out.update(chance=chance, floor=floor, floor_note=floor_note)
        if not works:
            out["verdict"] = "not testable here"
            out["floor_note"] += f" ({claim.floor.why})" if claim.floor.why else ""
    return out


def overall(verdicts: Iterable[str]) -> str:
    """One claim's verdict from its comparisons: not run when none ran, failed when any failed, not testable
    here when the favoured side does not work where it was compared, held when all held, else inconclusive."""
    verdicts = list(verdicts)
    if not verdicts or all(v == "not run" for v in verdicts):
        return "not run"
    if any(v == "failed" for v in verdicts):
        return "failed"
    if any(v == "not testable here" for v in verdicts):
        return "not testable here"
    if all(v == "held" for v in verdicts):
        return "held"
    return "inconclusive"


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows).reindex(columns=[c for c in COLUMNS if c not in ("paper", "profile")])


def evaluate(claim: Claim, table: pd.DataFrame, protocol: str | None = None,
             peers: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per comparison of ``claim`` on ``table``, plus an "overall" row when there are several.
    ``peers``: more rows whose other methods count for the floor's best peer (not compared)."""
    favoured = expand(claim.favoured, table)
    if len(favoured) != 1:
        return _frame([{"claim": claim.id, "text": claim.text, "where": claim.where, "comparison": "overall",
                        "metric": claim.metric, "level": claim.level, "n_seeds": 0, "verdict": "not run", "rule": RULE,
                        "note": f"the favoured side {claim.favoured.where} matches no single variant in the table"}])
    others = [o for side in claim.against for o in expand(side, table, claim.favoured)]
    rows = [_compare(claim, favoured[0], other, table, protocol, peers) for other in others]
    if not rows:
        rows = [{"claim": claim.id, "text": claim.text, "where": claim.where, "comparison": "overall",
                 "metric": claim.metric, "level": claim.level, "verdict": "not run", "n_seeds": 0, "rule": RULE,
                 "note": "no compared side in the table"}]
    if len(rows) > 1:
        decided = [r for r in rows if r["verdict"] != "not run"]
        floor_notes = list(dict.fromkeys(r.get("floor_note") for r in decided if r.get("floor_note")))
        rows.append({"claim": claim.id, "text": claim.text, "where": claim.where, "comparison": "overall",
                     "metric": claim.metric, "level": claim.level, "protocol": protocol or "",
                     "n_seeds": min(r.get("n_seeds", 0) for r in rows), "margin": claim.margin,
                     "verdict": overall(r["verdict"] for r in rows), "rule": RULE,
                     "chance": decided[0].get("chance", float("nan")) if decided else float("nan"),
                     "floor": decided[0].get("floor", float("nan")) if decided else float("nan"),
                     "floor_note": floor_notes[0] if len(floor_notes) == 1 else "; ".join(floor_notes),
                     "note": "held when every comparison holds, failed when any fails"})
    return _frame(rows)


# ------------------------------------------------------------------------------------------- recording
def claims_path(setting) -> Path:
    from adlib import results

    return results.output_root(setting.output_root) / "results" / setting.profile / setting.paper.name / "claims.csv"


def read(path: Path) -> pd.DataFrame:
    """A ``claims.csv`` (empty text stays empty text, numbers are numbers)."""
    frame = pd.read_csv(path, keep_default_na=False, na_values={c: [""] for c in NUMBERS})
    return frame.reindex(columns=list(dict.fromkeys(COLUMNS + list(frame.columns))))


def record(setting, verdicts: pd.DataFrame) -> Path:
    """Merge ``verdicts`` into ``results/<profile>/<paper>/claims.csv`` (rows of the same claims replaced)."""
    import fcntl

    from adlib import results

    path = claims_path(setting)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = verdicts.assign(paper=setting.paper.name, profile=setting.profile).reindex(columns=COLUMNS)
    with open(path.with_name(".claims.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = read(path).reindex(columns=COLUMNS) if path.exists() else pd.DataFrame(columns=COLUMNS)
        merged = pd.concat([old[~old["claim"].isin(set(new["claim"]))], new], ignore_index=True)
        order = {c.id: i for i, c in enumerate(setting.paper.claims)}
        merged = merged.sort_values("claim", key=lambda s: s.map(order).fillna(len(order)), kind="stable")
        with results.atomic_path(path) as tmp:
            merged.to_csv(tmp, index=False, float_format="%.4f")
    results._log_written(path, "table")
    return path


def check(setting, table: pd.DataFrame, ids: Sequence[str] | None = None, protocol: str | None = None,
          claims: Sequence[Claim] | None = None, save: bool = True, peers: pd.DataFrame | None = None) -> pd.DataFrame:
    """Evaluate the paper's claims ``ids`` (default: every claim of the paper) on ``table`` under ``protocol``
    (default: the setting's) and record them. ``peers``: rows of other methods on the same images for the
    floors' best peer. Returns the verdict rows."""
    chosen = list(claims) if claims is not None else [setting.paper.claim(i) for i in ids] if ids is not None \
        else list(setting.paper.claims)
    protocol = protocol or setting.protocol
    parts = [evaluate(claim, table, protocol, peers) for claim in chosen]
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
    verdicts = _path_check(setting, _frame(rows))
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


# ------------------------------------------------------------------------------------------- words
def _fmt(mean: float, std: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.1f}" if std is None or (isinstance(std, float) and math.isnan(std)) else f"{mean:.1f} ± {std:.1f}"


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def interval_text(row) -> str:
    """"[lo, hi]" of the test-image interval, or what stands instead."""
    if _finite(row.get("test_lo")) and _finite(row.get("test_hi")):
        return f"[{float(row['test_lo']):+.1f}, {float(row['test_hi']):+.1f}]"
    by_images = _text(row.get("by_test_images"))
    return "does not apply" if by_images.startswith("does not apply") else "–"


def floor_text(row) -> str:
    """The floor the favoured side had to clear, with the chance level beside it."""
    if not _finite(row.get("floor")):
        return "–"
    text = _fmt_num(float(row["floor"]))
    if _finite(row.get("chance")) and abs(float(row["chance"]) - float(row["floor"])) > 1e-9:
        text += f" (chance {_fmt_num(float(row['chance']))})"
    return text


def summary(verdicts: pd.DataFrame) -> pd.DataFrame:
    """A compact view for notebooks: comparison, both sides and the difference as mean ± std over seeds, the
    difference's test-image interval, the favoured side's floor, the verdict."""
    rows = verdicts.to_dict("records")
    return pd.DataFrame({
        "claim": [r["claim"] for r in rows], "comparison": [r["comparison"] for r in rows],
        "metric": [r["metric"] for r in rows], "seeds": [r["n_seeds"] for r in rows],
        "favoured": [_fmt(r["favoured_mean"], r["favoured_std"]) for r in rows],
        "other": [_fmt(r["other_mean"], r["other_std"]) for r in rows],
        "difference (seeds)": [_fmt(r["diff_mean"], r["diff_std"]) for r in rows],
        f"difference, test images {INTERVAL:g} %": [interval_text(r) for r in rows],
        "floor": [floor_text(r) for r in rows],
        "verdict": [r["verdict"] for r in rows],
        "note": ["; ".join(filter(None, [_text(r.get("floor_note")) if r["verdict"] == "not testable here" else "",
                                         _text(r.get("note"))])) for r in rows],
    })


def reason(row) -> str:
    """Why a comparison (a claims row) got its verdict, in plain words, numbers from the row."""
    verdict = _text(row.get("verdict"))
    if verdict == "not run":
        return _text(row.get("note")) or "no result recorded"
    if verdict == "not testable here":
        return ("the favoured side does not work well enough here for the comparison to count: "
                + (_text(row.get("floor_note")) or "below its floor"))
    unit = f"points of {'' if row.get('level') in ('model', 'summary') else _text(row.get('level')) + ' '}{row.get('metric')}"
    seeds = int(row["n_seeds"]) if _finite(row.get("n_seeds")) else 0
    diff = f"difference {_fmt(row.get('diff_mean'), row.get('diff_std'))} {unit} over {seeds} seeds"
    by_seeds, by_images = _text(row.get("by_seeds")), _text(row.get("by_test_images"))
    if by_images.startswith("does not apply"):
        images = "test images do not apply (a cost measured on the model)"
    elif _finite(row.get("test_lo")):
        images = f"test-image {INTERVAL:g} % interval {interval_text(row)}"
    else:
        images = by_images or "no test-image resamples"
    if verdict in ("held", "failed"):
        return f"{diff}; {images}: seeds and test images agree"
    blocked = []
    if seeds < MIN_SEEDS:
        blocked.append(f"fewer than {MIN_SEEDS} seeds")
    elif by_seeds == "inconclusive":
        blocked.append(f"within {Z:g} standard errors over the seeds")
    if not by_images.startswith("does not apply") and by_images != by_seeds:
        blocked.append("the test-image interval includes zero" if by_images == "inconclusive"
                       else f"the test images say {by_images}" if by_images in ("held", "failed") else by_images)
    return f"{diff}; {images}; undecided: " + (", ".join(blocked) or "the two sources of noise disagree")


WORDS = {"held": "**held**", "failed": "**failed**: the evidence goes against the paper on this data",
         "inconclusive": "**inconclusive**", "not testable here": "**not testable here**", "not run": "**not run**"}


def _final(part: pd.DataFrame) -> pd.Series:
    overall_rows = part[part["comparison"].astype(str) == "overall"]
    return (overall_rows if len(overall_rows) else part).iloc[0]


def _claim_sentence(part: pd.DataFrame) -> tuple[str, str]:
    """(verdict, Markdown sentence) of one claim's rows."""
    row = _final(part)
    verdict = _text(row["verdict"]) or "not run"
    compared = part[part["comparison"].astype(str) != "overall"]
    if len(part) == 1 or len(compared) == 0:
        detail = f" ({row['comparison']}: {reason(row)})" if verdict not in ("not run", "not testable here") \
            else f" — {reason(row)}"
    else:
        counts = compared["verdict"].value_counts().to_dict()
        detail = " (" + ", ".join(f"{n} comparison(s) {v}" for v, n in counts.items()) + ")"
        if verdict == "not testable here":
            detail += f" — {reason(row)}"
        elif verdict != "not run":
            detail += ": " + "; ".join(f"{r['comparison']}: {r['verdict']}, {reason(r)}" for _, r in compared.iterrows())
        else:
            detail += f" — {reason(row)}"
    return verdict, f"- *{row['text']}* ({row['where']}): {WORDS.get(verdict, verdict)}{detail}."


def explain(verdicts: pd.DataFrame) -> str:
    """Markdown: one plain sentence per claim (its overall verdict and why), failures said as failures."""
    return "\n".join(_claim_sentence(part)[1] for _, part in verdicts.groupby("claim", sort=False))


# ------------------------------------------------------------------------------------------- closing
HEADINGS = {"held": "Held", "failed": "Failed", "not testable here": "Not testable here",
            "inconclusive": "Inconclusive", "not run": "Not run"}


def _table_lines(setting, names: Sequence[str]) -> tuple[list[str], bool]:
    """What each written table holds (computed rows, rows not run, the data), and whether any data is synthetic."""
    from adlib import results

    lines, synthetic = [], False
    for name in names:
        path = results.table_path(setting.paper.name, name, profile=setting.profile, root=setting.output_root)
        if not path.exists():
            lines.append(f"- `{name}`: not written in this profile")
            continue
        table = pd.read_csv(path, keep_default_na=False, na_values={"value": [""]})
        quality = table[~table["level"].isin(["data"])]
        computed, missing = int(quality["value"].notna().sum()), int(quality["value"].isna().sum())
        data = list(dict.fromkeys(d for d in quality.loc[quality["value"].notna(), "data"].astype(str) if d)) \
            if "data" in quality.columns else []
        synthetic |= any("synthetic" in d for d in data) or any(str(d).startswith("synthetic")
                                                                for d in quality.loc[quality["value"].notna(), "dataset"])
        shown = "; ".join(data[:3]) + (f"; and {len(data) - 3} more" if len(data) > 3 else "")
        lines.append(f"- `{name}`: {computed} computed rows, {missing} not run" + (f"; data: {shown}" if shown else ""))
    return lines, synthetic


def closing(setting, ids: Sequence[str] | None = None, tables: Sequence[str] | None = None) -> str:
    """A chapter's closing section (Markdown) from ``claims.csv`` and the tables written so far: the rule, then
    what held, failed, was not testable here (and why), was inconclusive (and which noise), was not run (and
    why), with each difference's seed spread, test-image interval and floor; what the tables hold; what to
    take from it. ``ids``: the chapter's claims (default: those whose table is in ``tables``, else all of the
    paper's); ``tables``: the tables to describe (default: those of the claims)."""
    paper = setting.paper
    if ids is None:
        ids = [c.id for c in paper.claims if tables is None or c.table in tables]
    chosen = [paper.claim(i) for i in ids]
    tables = list(tables) if tables is not None else list(dict.fromkeys(c.table for c in chosen))
    path = claims_path(setting)
    recorded = read(path) if path.exists() else pd.DataFrame(columns=COLUMNS)
    by_verdict: dict[str, list[str]] = {v: [] for v in VERDICTS}
    for claim in chosen:
        part = recorded[recorded["claim"].astype(str) == claim.id]
        if part.empty:
            by_verdict["not run"].append(f"- *{claim.text}* ({claim.where}): **not run** — no verdict recorded in "
                                         f"this profile (the cell that decides it did not run).")
            continue
        verdict, sentence = _claim_sentence(part)
        by_verdict.setdefault(verdict, []).append(sentence)
    lines = ["## Verdicts", "", f"Decided by `adlib.study.claims` (profile {setting.profile}): {RULE}.", ""]
    for verdict in VERDICTS:
        if by_verdict.get(verdict):
            lines += [f"**{HEADINGS[verdict]}** ({len(by_verdict[verdict])})", "", *by_verdict[verdict], ""]
    if not chosen:
        lines += ["This chapter decides no claim of the paper.", ""]
    table_lines, synthetic = _table_lines(setting, tables)
    if table_lines:
        lines += ["**What the tables hold.**", "", *table_lines, ""]
    counts = {v: len(s) for v, s in by_verdict.items() if s}
    take = []
    if chosen:
        take.append("In this profile: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".")
    if synthetic:
        take.append("The evidence includes synthetic data at this profile's scale: a verdict says whether the claim "
                    "holds there, not whether the paper's numbers reproduce on its benchmark.")
    if counts.get("failed"):
        take.append("A failed claim is evidence against the paper in this setting; the notes say on which data.")
    if counts.get("not testable here"):
        take.append("Where the favoured method does not clear its floor, its comparisons say nothing for or "
                    "against the paper: the method does not work in this setting (see the floors above).")
    if counts.get("inconclusive"):
        take.append("Inconclusive means the difference is within the noise of the seeds or of the test images "
                    "(each sentence says which); more seeds or more test images could decide it.")
    if counts.get("not run"):
        take.append("Claims not run are decided where their runs fit (the reasons above).")
    if take:
        lines += ["**What to take from it.** " + " ".join(take)]
    return "\n".join(lines).rstrip() + "\n"


def with_margin(claim: Claim, margin: float) -> Claim:
    return replace(claim, margin=margin)
