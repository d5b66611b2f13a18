"""MVTec LOCO's evaluation as LADMIM (and the LOCO literature) report it: image AUROC per anomaly group.

Per category, the image AUROC is computed twice: on the normal test images together with the *logical*
anomalies only ("LA"), and together with the *structural* anomalies only ("SA"). Each is averaged over the
categories, and the paper's "Overall" (Tabs. 2/3) is the mean of the two averages.

"Avg." in LADMIM's ablation tables (5-8) is printed as (SA + LA) / 2 in some rows and not in others
(repro_spec §3.9 point 5), so both readings are computed:

- ``avg_mean``: (SA + LA) / 2, the mean of the two group averages (= "Overall");
- ``avg_whole``: per category, the AUROC on the whole test set (normal against every anomaly), then the mean
  over categories. Because an AUROC is the fraction of (anomalous, normal) pairs ordered correctly, the
  whole-set AUROC of a category is exactly the anomaly-count-weighted mean of its LA and SA
  (``whole_from_groups``), which lets the reading be checked on printed per-category numbers.

Which reading the paper uses (checked on its own numbers in ``tests/test_paper_tables_ladmim.py``): Tab. 2's
and Tab. 3's "Overall" and every row of Tab. 7 are ``avg_mean``; Tab. 2's per-category numbers give
``avg_whole`` = 83.9 for LADMIM where the paper prints 84.7 (= ``avg_mean``). Tabs. 5, 6 and 8 match neither
exactly (e.g. 90.3 / 83.1 -> 86.6, where ``avg_mean`` is 86.7; ``avg_whole`` cannot be recomputed from their
averages alone).

Which rules a detector sees: ``per_kind`` / ``runs_kinds_table`` give the AUROC of each kind of anomaly alone,
with the kinds per test image from ``anomaly_kinds``: the embedded set's ``anomaly_kinds.json``, MVTec LOCO's
mask ids named by its ``defects_config.json``, or, for the derived LOCO subset whose masks lost those ids, our
annotation of its files (``ANNOTATIONS``); ``kinds_source`` says which.

Input is plain arrays (scores, labels, groups, categories), e.g. from ``adlib.engine.EvalResult``
(``scores``, ``labels``, ``groups``, ``image_categories``); ``from_eval`` reads one. Values are fractions in
[0, 1]; ``rows`` gives long-format rows in percent. Needs numpy only (the AUROC is ``adlib.metrics``').
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

GROUPS = ("logical", "structural")
NORMAL = "good"


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Exact image AUROC (``adlib.metrics``), NaN when one class is missing."""
    from adlib import metrics

    labels = np.asarray(labels).astype(int)
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(metrics.image_metrics(np.asarray(scores, dtype=np.float64), labels)["auroc"])


@dataclass
class CategoryResult:
    """One category: AUROC of normal vs logical, normal vs structural, normal vs all; image counts."""

    logical: float
    structural: float
    whole: float
    counts: dict[str, int] = field(default_factory=dict)  # "good", "logical", "structural"
    # "logical"/"structural"/"whole" -> the AUROC on each test-image resample (``evaluate_groups(resample=)``)
    boot: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class LocoSummary:
    """Per-category group AUROCs and the paper's averages (fractions in [0, 1])."""

    categories: dict[str, CategoryResult]

    def mean(self, group: str) -> float:
        """Mean over categories of the AUROC of ``group`` ("logical", "structural" or "whole")."""
        values = [getattr(c, group) for c in self.categories.values()]
        values = [v for v in values if not np.isnan(v)]
        return float(np.mean(values)) if values else float("nan")

    @property
    def logical(self) -> float:
        return self.mean("logical")

    @property
    def structural(self) -> float:
        return self.mean("structural")

    @property
    def overall(self) -> float:
        """The paper's "Overall" (Tabs. 2/3): mean of the logical and structural averages."""
        return (self.logical + self.structural) / 2

    @property
    def avg_mean(self) -> float:
        """"Avg." read as (SA + LA) / 2 (Tab. 7, Tabs. 2/3's Overall)."""
        return self.overall

    @property
    def avg_whole(self) -> float:
        """"Avg." read as the per-category AUROC on the whole test set, averaged over categories."""
        return self.mean("whole")

    def mean_boot(self, group: str) -> np.ndarray | None:
        """``mean`` on every test-image resample (each category resampled on its own); None without them."""
        kept = [c for c in self.categories.values() if not np.isnan(getattr(c, group))]
        if not kept or any(group not in c.boot for c in kept):
            return None
        return np.mean([c.boot[group] for c in kept], axis=0)

    def headline(self) -> dict[str, float]:
        return {"logical": self.logical, "structural": self.structural, "overall": self.overall,
                "avg_mean": self.avg_mean, "avg_whole": self.avg_whole}

    def describe(self) -> str:
        """One line for a command's output: each group's image AUROC (mean over categories, percent) with its
        image counts, a group with no test image said as such, and Overall when both groups are there."""
        counts = {g: sum(c.counts.get(g, 0) for c in self.categories.values()) for g in (NORMAL, *GROUPS)}
        parts = [f"{g} anomalies: image AUROC {100 * getattr(self, g):.1f} ({counts[g]} vs {counts[NORMAL]} normal "
                 f"test images)" if counts[g] else f"{g} anomalies: none in the test set" for g in GROUPS]
        if all(counts[g] for g in GROUPS):
            parts.append(f"Overall {100 * self.overall:.1f}")
        return "; ".join(parts)

    def rows(self, method: str, dataset: str, setting: str = "default", ablation: bool = False) -> list[dict[str, Any]]:
        """Long-format rows (percent) in the layout of ``results/paper/ladmim`` (see ``METRIC_NAMES``):
        per category ``<dataset>/<category>`` and the average ``<dataset>``. ``ablation``: name the
        (SA + LA) / 2 mean ``auroc_avg`` (the "Avg." column of Tabs. 5-8) instead of ``auroc_overall``."""
        out = []
        for name, c in self.categories.items():
            for metric, value, group in (("auroc_logical", c.logical, "logical"),
                                         ("auroc_structural", c.structural, "structural"),
                                         ("auroc_whole", c.whole, "whole")):
                out.append(_row(f"{dataset}/{name}", method, setting, metric, value, c.boot.get(group)))
        mean_name = "auroc_avg" if ablation else "auroc_overall"
        logical, structural = self.mean_boot("logical"), self.mean_boot("structural")
        overall = None if logical is None or structural is None else (logical + structural) / 2
        for metric, value, boot in (("auroc_logical", self.logical, logical), ("auroc_structural", self.structural, structural),
                                    (mean_name, self.overall, overall), ("auroc_avg_whole", self.avg_whole, self.mean_boot("whole"))):
            out.append(_row(dataset, method, setting, metric, value, boot))
        return [r for r in out if not np.isnan(r["value"])]


# Long-format metric names (level "image"): SA, LA and both readings of Avg.
METRIC_NAMES = {
    "auroc_logical": "LA: image AUROC, normal vs logical anomalies",
    "auroc_structural": "SA: image AUROC, normal vs structural anomalies",
    "auroc_overall": "Overall / Avg as (SA + LA) / 2 of the category means",
    "auroc_avg_whole": "Avg as the per-category AUROC on the whole test set, averaged over categories",
    "auroc_whole": "one category's AUROC on its whole test set (normal vs every anomaly)",
    # The paper's printed "Avg." of Tabs. 5-8 (results/paper/ladmim); reproduced tables write it as the
    # (SA + LA) / 2 reading, the paper's own definition in Tabs. 2, 3 and 7, with auroc_avg_whole beside it.
    "auroc_avg": "Avg. as printed in Tabs. 5-8; reproduced: (SA + LA) / 2",
}


def _row(dataset: str, method: str, setting: str, metric: str, value: float, boot=None) -> dict[str, Any]:
    """A long row in percent; with the AUROC's test-image resamples (``boot``, percent) and its chance level."""
    row = {"dataset": dataset, "method": method, "setting": setting, "level": "image", "metric": metric,
           "value": 100.0 * value}
    if boot is not None:
        row.update(boot=(100.0 * np.asarray(boot)).astype(np.float32), chance=50.0)
    return row


def evaluate_groups(scores: Sequence[float], labels: Sequence[int], groups: Sequence[str],
                    categories: Sequence[str] | None = None, resample: np.ndarray | None = None) -> LocoSummary:
    """Group AUROCs per category from per-image scores, labels (0 normal, 1 anomalous), groups ("good",
    "logical", "structural"; other anomaly groups count in ``whole`` only) and categories (default: one).
    ``resample`` ((B, images) counts, ``EvalResult.resample``): each AUROC on every test-image resample too."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    groups = np.asarray([str(g) for g in groups])
    cats = np.asarray([str(c) for c in categories]) if categories is not None else np.full(len(scores), "")
    if not (len(scores) == len(labels) == len(groups) == len(cats)):
        raise ValueError(f"scores, labels, groups and categories must have one entry per image; got lengths "
                         f"{len(scores)}, {len(labels)}, {len(groups)}, {len(cats)}")
    if np.any((groups == NORMAL) != (labels == 0)):
        raise ValueError("groups and labels disagree: normal images must be exactly those of group 'good'")
    if not np.isfinite(scores).all():
        raise ValueError("scores: NaN or inf image scores")
    out = {}
    for name in dict.fromkeys(cats.tolist()):
        here = cats == name
        normal = here & (labels == 0)
        counts = {NORMAL: int(normal.sum()), **{g: int((here & (groups == g)).sum()) for g in GROUPS}}
        if counts[NORMAL] == 0:
            raise ValueError(f"category {name!r}: no normal test images; the group AUROCs need them")
        per_group, boot = {}, {}
        for group, keep in [(g, normal | (here & (groups == g))) for g in GROUPS] + [("whole", here)]:
            per_group[group] = auroc(scores[keep], labels[keep]) if group == "whole" or counts[group] else float("nan")
            if resample is not None and not np.isnan(per_group[group]):
                from adlib import metrics

                boot[group] = metrics.image_replicates(scores[keep], labels[keep], np.asarray(resample)[:, keep])["auroc"]
        out[name] = CategoryResult(per_group["logical"], per_group["structural"], per_group["whole"], counts, boot)
    return LocoSummary(out)


def from_eval(result: Any, scores: Sequence[float] | None = None) -> LocoSummary:
    """``evaluate_groups`` on an ``adlib.engine.EvalResult`` (its scores, or ``scores`` given per image in
    the same order, e.g. another scorer's)."""
    cats = result.image_categories if getattr(result, "image_categories", None) else None
    return evaluate_groups(result.scores if scores is None else scores, result.labels, result.groups, cats)


def whole_from_groups(logical: float, structural: float, n_logical: int, n_structural: int) -> float:
    """A category's whole-test-set AUROC from its group AUROCs: the anomaly-count-weighted mean (exact)."""
    return (n_logical * logical + n_structural * structural) / (n_logical + n_structural)


def mean_std(summaries: Iterable[LocoSummary]) -> dict[str, tuple[float, float]]:
    """Mean and sample std (ddof=1; 0 for one seed) over seeds of each headline number, in [0, 1]."""
    heads = [s.headline() for s in summaries]
    if not heads:
        raise ValueError("mean_std: no summaries")
    out = {}
    for key in heads[0]:
        values = np.array([h[key] for h in heads], dtype=np.float64)
        out[key] = (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0)
    return out


def combine(summaries: Mapping[str, LocoSummary]) -> LocoSummary:
    """One summary over several one-class runs (one per category): their categories side by side."""
    merged: dict[str, CategoryResult] = {}
    for key, summary in summaries.items():
        for name, result in summary.categories.items():
            merged[name or key] = result
    return LocoSummary(merged)


# ------------------------------------------------------------------------------------------- study runs
RUN_COLUMNS = ("backbone", "data", "seed", "protocol", "class_setting", "image_size")


def _run_categories(run: Any) -> list[str]:
    """Each test image's category: the evaluation's (multi-class), else the run's one source."""
    evaluation = run.evaluation
    if getattr(evaluation, "image_categories", None):
        return [str(c) for c in evaluation.image_categories]
    return [run.sources[0].category] * len(evaluation.scores)


CHANCE = "Chance (constant score)"


def runs_table(runs: Mapping[Any, Any], scores: Any = None, chance: bool = False) -> "pd.DataFrame":
    """LOCO rows (the layout of ``LocoSummary.rows``, percent) from fitted study runs (``adlib.study.run_grid(...,
    keep=runs)`` or ``run_one``), with the study's run columns (backbone, data, seed, protocol, class_setting,
    image_size, scope, note), so that ``adlib.study.claims`` and ``paper_vs_ours`` read them.

    Runs of one method, variant label and seed on several categories of a dataset (one-class) are combined into
    one summary: per category rows (``scope`` "category") and the means over categories (``scope`` "mean",
    ``dataset`` the dataset's name), where the (SA + LA) / 2 mean is written both as ``auroc_overall`` (Tabs. 2
    and 3) and ``auroc_avg`` (the "Avg." of Tabs. 5-8). ``scores(run)`` may return ``{label: per-image scores}``
    in the order of the run's evaluation, to read several scorers from one fit (e.g. S_HVQ and S_MIM alone);
    by default each run gives its own evaluation's scores under its own label.

    ``chance=True`` adds the method ``CHANCE``: the same evaluation of a detector that gives every image one
    score (ties count half, so each AUROC is exactly 50), on the test images of the first method's runs, per
    seed, so that a claim can ask whether a method sees anything at all."""
    import pandas as pd

    groups: dict[tuple, dict] = {}
    first = next(iter(runs.values())).method if runs else None
    for run in runs.values():
        evaluation = run.evaluation
        per_label = scores(run) if scores is not None else {run.label: evaluation.scores}
        named = [(run.method, label, values) for label, values in per_label.items()]
        if chance and run.method == first and run.label in per_label:
            named.append((CHANCE, run.label, np.zeros(len(evaluation.scores))))
        for method, label, values in named:
            key = (method, label, run.seed, run.dataset_name, run.class_setting, evaluation.protocol)
            entry = groups.setdefault(key, {"categories": {}, "runs": []})
            summary = evaluate_groups(values, evaluation.labels, evaluation.groups, _run_categories(run),
                                      getattr(evaluation, "resample", None))
            entry["categories"].update(summary.categories)
            entry["runs"].append(run)
    rows = []
    for (method, label, seed, dataset, class_setting, protocol), entry in groups.items():
        summary = LocoSummary(entry["categories"])
        backbone = "none" if method == CHANCE else ", ".join(dict.fromkeys(r.backbone for r in entry["runs"]))
        ids = [getattr(r.evaluation, "test_id", "") for r in entry["runs"]]
        extra = {"backbone": backbone,
                 "data": ", ".join(dict.fromkeys(r.data for r in entry["runs"])), "seed": seed, "protocol": protocol,
                 "class_setting": class_setting, "image_size": entry["runs"][0].image_size, "note": "",
                 "test_id": ids[0] if len(ids) == 1 else "+".join(sorted(ids))}
        for row in summary.rows(method, dataset, label):
            scope = "category" if "/" in row["dataset"] else "mean"
            rows.append({**row, **extra, "scope": scope})
            if row["metric"] == "auroc_overall":
                rows.append({**row, **extra, "scope": scope, "metric": "auroc_avg"})
    return pd.DataFrame(rows)


def anomaly_kinds(dataset: Any) -> list[str] | None:
    """Per test image of an ``AnomalyDataset`` (in its order): "good" or the kind of anomaly it shows; None when
    the kinds are not known (``kinds_source`` says where they come from, in this order):

    1. the category folder's ``anomaly_kinds.json`` (``{"<group folder>/<image>": kind}``; the embedded set
       writes one);
    2. MVTec LOCO's masks: each defect pixel holds the id of its defect type, and the category's
       ``defects_config.json`` names the ids; an image's kind is the names of the ids in its masks, joined by
       "+" in the config's order. Only when the ids can name anything: every value in the split's masks is a
       listed id and there are at least two of them (a copy whose masks were flattened to 0/255, as the derived
       LOCO subset's, holds one value, which names no type);
    3. an annotation of ours for exactly those files (``ANNOTATIONS``, matched by ``split_fingerprint``).

    A dataset of several categories (multi-class) gives None; a ``Subset`` of one gives its images' kinds."""
    found = _kinds(dataset)
    return None if found is None else found[0]


def kinds_source(dataset: Any) -> str:
    """Where ``anomaly_kinds`` reads the kinds of ``dataset`` from, in words ("" when it finds none)."""
    found = _kinds(dataset)
    return "" if found is None else found[1]


def _kinds(dataset: Any) -> tuple[list[str], str] | None:
    from pathlib import Path

    if hasattr(dataset, "indices") and hasattr(dataset, "dataset"):  # a Subset (e.g. a capped test set)
        found = _kinds(dataset.dataset)
        return None if found is None else ([found[0][i] for i in dataset.indices], found[1])
    if not hasattr(dataset, "category_dir"):  # e.g. a ConcatDataset of several categories (multi-class)
        return None
    folder = Path(dataset.category_dir)
    test = folder / "test"
    anomalous = [s for s in dataset.samples if s.label != 0]
    keys = {id(s): Path(s.image_path).relative_to(test).as_posix() for s in anomalous}
    for read in (_kinds_file, _mask_value_kinds, _annotated_kinds):
        found = read(folder, anomalous, keys)
        if found is not None:
            kinds, source = found
            return [NORMAL if s.label == 0 else kinds[keys[id(s)]] for s in dataset.samples], source
    return None


def _kinds_file(folder, anomalous, keys) -> tuple[dict, str] | None:
    import json

    from adlib.data.synth import KINDS_FILE

    path = folder / KINDS_FILE
    if not path.is_file():
        return None
    try:
        kinds = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); expected {{\"<group folder>/<image>\": kind}}") from None
    missing = [keys[id(s)] for s in anomalous if keys[id(s)] not in kinds]
    if missing:
        raise ValueError(f"{path}: no kind for test image {missing[0]}")
    return {k: str(v) for k, v in kinds.items()}, f"the category's {KINDS_FILE}"


DEFECTS_CONFIG = "defects_config.json"  # MVTec LOCO: [{"defect_name", "pixel_value", ...}] per category
_MASK_VALUES: dict[tuple, dict[str, frozenset]] = {}  # read once per set of mask files (path, size, time)


def _mask_values(anomalous, keys) -> dict[str, frozenset]:
    """Per anomalous test image, the non-zero values of its mask files."""
    import numpy as np
    from PIL import Image

    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for s in anomalous for p in s.mask_paths)
    if stamp not in _MASK_VALUES:
        values = {}
        for s in anomalous:
            found: set[int] = set()
            for path in s.mask_paths:
                with Image.open(path) as mask:
                    array = np.asarray(mask)
                found |= {int(v) for v in np.unique(array) if v != 0}
            values[keys[id(s)]] = frozenset(found)
        _MASK_VALUES[stamp] = values
    return _MASK_VALUES[stamp]


def _mask_value_kinds(folder, anomalous, keys) -> tuple[dict, str] | None:
    import json

    path = folder / DEFECTS_CONFIG
    if not path.is_file() or not anomalous:
        return None
    try:
        names = {int(d["pixel_value"]): str(d["defect_name"]) for d in json.loads(path.read_text())}
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{path}: not MVTec LOCO's defect list ({error!r}); expected "
                         f"[{{\"defect_name\": ..., \"pixel_value\": ...}}, ...]") from None
    values = _mask_values(anomalous, keys)
    found = set().union(*values.values())
    if len(found) < 2 or not found <= set(names):
        return None  # flattened (one value for every type) or not this encoding: the values name nothing
    kinds = {key: "+".join(name for value, name in names.items() if value in v) or "(empty mask)"
             for key, v in values.items()}
    return kinds, f"the masks' defect ids, named by the category's {DEFECTS_CONFIG}"


def split_fingerprint(folder, anomalous, keys) -> str:
    """A digest of a test split's anomalous images: their paths (relative to ``test/``) and the bytes of their
    mask files. An annotation made on one set of files applies to exactly those files."""
    import hashlib

    digest = hashlib.sha1()
    for s in sorted(anomalous, key=lambda s: keys[id(s)]):
        digest.update(keys[id(s)].encode())
        for path in s.mask_paths:
            digest.update(hashlib.sha1(path.read_bytes()).digest())
    return digest.hexdigest()


@dataclass(frozen=True)
class KindAnnotation:
    """The kind of every anomalous test image of one dataset's category whose own files do not name it,
    annotated by us. It applies only to the files it was made on (``fingerprint``)."""

    data: str  # the data it was made for
    how: str  # how the kinds were told apart
    fingerprint: str  # ``split_fingerprint`` of those files
    kinds: Mapping[str, str]  # "<group folder>/<image>" -> kind


def _numbered(folder: str, spans: Iterable[tuple[Iterable[int], str]]) -> dict[str, str]:
    return {f"{folder}/{i:03d}.png": kind for numbers, kind in spans for i in numbers}


_FILL_TOO_MUCH = (85, 87, 91, 98, 102, 103, 107, 109, 112, 115, 118, 119)  # their masks end at the normal line
JUICE_BOTTLE_SUBSET = KindAnnotation(
    data="the derived MVTec LOCO subset's juice_bottle (256 x 512; test/logical_anomalies keeps the official names)",
    how="annotated by adlib's developers from every test image and its mask: the subset's masks were flattened to "
        "0/255, so MVTec's defect ids are lost. Names from the category's defects_config.json; the official "
        "numbering groups the kinds in runs. Images 000-011 lack both labels (the two ids MVTec's masks would "
        "carry, joined by '+'); the fill-level images are split by whether the mask lies above the normal fill "
        "line (too much) or below it (not enough)",
    fingerprint="28c0de88ba383725aa94e89b8b20c134e280a37f",
    kinds=_numbered("logical_anomalies", (
        (range(0, 12), "missing_top_label+missing_bottom_label"),
        (range(12, 24), "missing_bottom_label"),
        (range(24, 36), "empty_bottle"),
        (range(36, 46), "misplaced_fruit_icon"),
        (range(46, 51), "missing_fruit_icon"),
        ((51, 53, 55, 56, 57), "misplaced_label_top"),
        ((52, 54, 58, 59), "misplaced_label_bottom"),
        (range(60, 72), "swapped_labels"),
        (range(72, 84), "missing_top_label"),
        (_FILL_TOO_MUCH, "wrong_fill_level_too_much"),
        ([i for i in range(84, 120) if i not in _FILL_TOO_MUCH], "wrong_fill_level_not_enough"),
        (range(120, 142), "wrong_juice_type"),
    )),
)
ANNOTATIONS = {a.fingerprint: a for a in (JUICE_BOTTLE_SUBSET,)}


def _annotated_kinds(folder, anomalous, keys) -> tuple[dict, str] | None:
    if not anomalous:
        return None
    annotation = ANNOTATIONS.get(split_fingerprint(folder, anomalous, keys))
    return None if annotation is None else (dict(annotation.kinds), f"{annotation.data}: {annotation.how}")


def per_kind(scores: Sequence[float], groups: Sequence[str], kinds: Sequence[str]) -> dict[tuple[str, str], float]:
    """Image AUROC of the normal test images against each (group, kind) of anomaly alone, e.g. ("logical",
    "missing"): which rules a detector sees. Fractions in [0, 1], in order of first appearance."""
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.asarray([str(g) for g in groups])
    kinds = np.asarray([str(k) for k in kinds])
    if not (len(scores) == len(groups) == len(kinds)):
        raise ValueError(f"scores, groups and kinds need one entry per image; got {len(scores)}, {len(groups)}, "
                         f"{len(kinds)}")
    normal = groups == NORMAL
    out = {}
    for group, kind in dict.fromkeys(zip(groups[~normal].tolist(), kinds[~normal].tolist())):
        keep = normal | ((groups == group) & (kinds == kind))
        out[(group, kind)] = auroc(scores[keep], (~normal[keep]).astype(int))
    return out


def runs_kinds_table(runs: Mapping[Any, Any], scores: Any = None) -> "pd.DataFrame":
    """Per run (method, variant label, seed, category): the image AUROC of each kind of anomaly alone against the
    normal test images (``per_kind``), in percent, as long rows (``metric`` "auroc_<group>_<kind>", e.g.
    "auroc_logical_missing"; ``dataset`` the category) with the study's run columns, as ``runs_table``; ``note``
    says where the kinds come from (``kinds_source``). Runs whose test set has no known kinds (``anomaly_kinds``)
    give no rows. ``scores`` as in ``runs_table``."""
    import pandas as pd

    rows = []
    for run in runs.values():
        found = _kinds(run.test)
        if found is None:
            continue
        kinds, source = found
        evaluation = run.evaluation
        per_label = scores(run) if scores is not None else {run.label: evaluation.scores}
        for label, values in per_label.items():
            for (group, kind), value in per_kind(values, evaluation.groups, kinds).items():
                rows.append({"dataset": f"{run.dataset_name}/{run.sources[0].category}", "method": run.method,
                             "setting": label, "level": "image", "metric": f"auroc_{group}_{kind}", "value": 100 * value,
                             "backbone": run.backbone, "data": run.data, "seed": run.seed,
                             "protocol": evaluation.protocol, "class_setting": run.class_setting,
                             "image_size": run.image_size, "scope": "category", "note": f"kinds: {source}"})
    return pd.DataFrame(rows, columns=["dataset", "method", "setting", "level", "metric", "value", "backbone", "data",
                                       "seed", "protocol", "class_setting", "image_size", "scope", "note"])
