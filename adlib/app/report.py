"""The reproduction report: `results/<profile>/REPORT.md` and a static site `results/<profile>/site/`.

Per paper, in this order:

1. a summary: how the notebooks went, what ran here against what the paper used (backbone and any
   substitution, resolution, protocol, class setting, seeds), the data each run used, and the claims with
   their verdicts over seeds (``results/<profile>/<paper>/claims.csv``), failures said as failures;
2. every printed table in the paper's own shape (``TableSpec.rows`` x ``TableSpec.columns``), each cell
   "ours (paper)" with ours = mean ± std over seeds in the metric's unit. The difference ours − paper is
   shown only where the cell is comparable (``adlib.study.tables.comparability``: dataset, resolution,
   backbone, protocol and class setting all match); agreement counts count comparable cells only; a cell
   without a difference says why (a numbered note). The long rows stay in the CSVs, which are linked;
3. the printed tables no notebook reproduced ("paper only", with the reason when known), the reproduced
   tables with no printed counterpart, the figures with their provenance, and the notebooks (rendered as
   HTML; failed, not run and not started ones listed as such).

The front page lists the papers, the main one first and marked, and says per paper what is comparable:
quality cells, cost and count cells and architecture properties (0/1 ticks) counted apart
(``adlib.study.tables.cell_kind``), printed tables counted as reproduced only when a computed row exists,
and one sentence on what this profile can and cannot tell. A paper's section ends its summary with a
"Faithfulness" part: what the authors released and what adlib is checked against (``PaperSpec.reference_code``)
and, where ``results/faithfulness/<model>.csv`` exists for one of the paper's models
(``benchmarks/parity/faithfulness.py``), its rows.

REPORT.md and the site are rendered from the same content; the site uses relative links only and copies
the figures and CSVs into itself, so `site/index.html` opens from disk with no server.

Built from files only: reproduced tables (`results/<profile>/<paper>/*.csv` + `.meta.json`), claims
(`claims.csv`), the papers' numbers (`results/paper/<paper>/*.csv` of the repository), figures
(`figures/<profile>/<paper>/*.png` + `.meta.json`), the run records and executed notebooks under
`results/<profile>/executed/`, and the paper's spec (``adlib.papers``) when there is one. A paper folder
without a spec still renders; none of its cells is then called comparable.
"""
from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import pandas as pd

from adlib import results
from adlib.study import claims as C
from adlib.study import tables as T

# Agreement of a comparable cell: |ours − paper| within AGREE percentage points (percent metrics) or AGREE
# percent of the paper's value (counts and costs) "agrees"; within CLOSE "close"; else "differs".
AGREE, CLOSE = 1.0, 5.0
CLAIMS_FILE = "claims.csv"
FAITHFULNESS_COLUMNS = ["component", "reference_file", "commit", "largest_difference", "status", "reason"]
SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
READING = ("Each cell is ours (paper): ours is the mean ± standard deviation over seeds, in the unit named in the "
           "column or row (% for quality metrics). A cell is comparable only when dataset, resolution, backbone, "
           "protocol and class setting all match the paper's; only there is the difference Δ = ours − paper shown and "
           "counted, quality cells apart from costs and counts and from architecture properties. Every other cell "
           "carries a numbered note saying why it has no Δ. Claims are decided by one rule: " + C.RULE + ".")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;line-height:1.45}
nav{background:#263238;padding:.6em 1.2em;position:sticky;top:0;z-index:1}
nav a{color:#eceff1;margin-right:1.2em;text-decoration:none;font-weight:600}
nav a.here{color:#ffd54f}
main{max-width:1400px;margin:0 auto;padding:1em 1.5em 3em}
h2{border-bottom:2px solid #cfd8dc;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0 .6em;font-size:.88em}
th,td{border:1px solid #cfd8dc;padding:.2em .55em;text-align:left;vertical-align:top}
th{background:#eceff1}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.agree{background:#c8e6c9}td.close{background:#fff9c4}td.differs{background:#ffcdd2}
td.incomparable{color:#37474f}td.blank{color:#90a4ae}
td.held{color:#2e7d32;font-weight:600}td.failed,.failed{color:#c62828;font-weight:600}
td.inconclusive{color:#6d4c41}td.not-run{color:#78909c}
tr.sub td{font-size:.95em;color:#455a64}
sup{color:#1565c0;cursor:help}
.meta,.notes{color:#546e7a;font-size:.85em}
.ok{color:#2e7d32;font-weight:600}.skipped{color:#546e7a}
ul.figures{list-style:none;padding:0}
ul.figures li{display:inline-block;vertical-align:top;width:540px;margin:0 1em 1em 0;font-size:.85em;color:#455a64}
ul.figures img{max-width:520px;border:1px solid #cfd8dc;display:block;margin-bottom:.3em}
code{background:#f5f5f5;padding:0 .2em}
"""


# ----------------------------------------------------------------------------------------- content model
# Inline pieces; a "text" is a list of them (a plain str is one piece).
@dataclass
class Link:
    text: str
    md: str | None  # href relative to REPORT.md (None: plain text there)
    site: str | None  # href relative to the site's pages (None: plain text there)


@dataclass
class Strong:
    text: str


@dataclass
class Code:
    text: str


@dataclass
class Mark:
    """A numbered note on a cell; ``title`` is its text (a tooltip on the site)."""

    n: int
    title: str


@dataclass
class Img:
    alt: str
    md: str
    site: str


@dataclass
class Heading:
    level: int
    text: list
    anchor: str = ""


@dataclass
class Para:
    text: list
    cls: str = ""


@dataclass
class Bullets:
    items: list  # of texts
    cls: str = ""


@dataclass
class Figures:
    """Figures as (caption head, provenance) pairs: one card each on the site; in Markdown, figures with the
    same provenance share one line."""

    items: list


@dataclass
class Cell:
    text: list
    cls: str = ""
    title: str = ""
    num: bool = False


@dataclass
class Grid:
    header: list  # of texts
    rows: list  # of lists of Cell
    groups: list | None = None  # optional first header row on the site: [(label, span), ...]
    row_cls: list | None = None  # optional css class per row


def _t(*pieces) -> list:
    return [p for p in pieces if p not in (None, "")]


# ----------------------------------------------------------------------------------------- collection
@dataclass
class TableEntry:
    name: str
    ours: pd.DataFrame | None = None
    paper: pd.DataFrame | None = None
    meta: dict = field(default_factory=dict)
    path: Path | None = None
    paper_path: Path | None = None
    error: str | None = None
    spec: object | None = None  # the paper's TableSpec, when its spec describes this table


@dataclass
class FigureEntry:
    name: str
    path: Path
    meta: dict


@dataclass
class NotebookEntry:
    name: str
    record: dict
    executed: Path | None
    html: str | None = None  # site-relative path of the rendered notebook
    outputs: list = field(default_factory=list)  # declared outputs (relative to the output root)

    @property
    def status(self) -> str:
        """ok, failed, not run (no record in this profile), not started (the time budget was spent first)."""
        status = str(self.record.get("status") or "?")
        return "not started" if status == "deferred" else status


@dataclass
class PaperEntry:
    name: str
    spec: object | None = None  # PaperSpec
    spec_error: str = ""
    tables: list[TableEntry] = field(default_factory=list)
    figures: list[FigureEntry] = field(default_factory=list)
    notebooks: list[NotebookEntry] = field(default_factory=list)
    declared_missing: list[str] = field(default_factory=list)
    claims: pd.DataFrame | None = None
    claims_path: Path | None = None
    claims_error: str = ""
    views: dict | None = None  # table name -> TableView, built once (``views_of``)
    faithfulness: list = field(default_factory=list)  # (model, rows, path) per results/faithfulness/<model>.csv


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _subdirs(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}


def _natural(name: str) -> tuple:
    """'table10' after 'table2'."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name))


def _load_spec(name: str, specs: Mapping | None):
    """(PaperSpec or None, why there is none)."""
    if specs is not None:
        return specs.get(name), "" if name in specs else "no spec given"
    from adlib import papers

    if name not in papers.PAPERS:
        return None, f"no spec for {name!r} in adlib.papers"
    try:
        return papers.get(name), ""
    except Exception as exc:  # a broken spec must not take the whole report down
        return None, f"adlib.papers.{name} could not be loaded: {type(exc).__name__}: {exc}"


def collect(output_root: Path, profile: str, papers: list[str] | None = None,
            notebook_root: Path | None = None, paper_root: Path | None = None,
            specs: Mapping | None = None) -> list[PaperEntry]:
    """Everything the report shows, per paper, read from the output tree (and, when given, the notebook
    folder, so notebooks never executed in this profile show as "not run"). ``specs`` (name -> PaperSpec)
    replaces ``adlib.papers`` (tests)."""
    root = Path(output_root)
    paper_root = Path(paper_root) if paper_root is not None else results.repo_root()
    ours_dir = root / "results" / profile
    executed_dir = ours_dir / "executed"
    names = (_subdirs(ours_dir) - {"executed", "site"}) | _subdirs(root / "figures" / profile) \
        | _subdirs(paper_root / "results" / "paper") | _subdirs(executed_dir) \
        | (_subdirs(Path(notebook_root)) if notebook_root else set())
    if papers:
        names &= set(papers)
    entries = []
    for name in names:
        entry = PaperEntry(name)
        entry.spec, entry.spec_error = _load_spec(name, specs)
        _load_faithfulness(entry, [root, paper_root])
        table_specs = dict(getattr(entry.spec, "tables", {}) or {})
        stems = {p.stem for p in (ours_dir / name).glob("*.csv") if p.name != CLAIMS_FILE} \
            | {p.stem for p in (paper_root / "results" / "paper" / name).glob("*.csv")}
        order = {t: i for i, t in enumerate(table_specs)}
        for stem in sorted(stems, key=lambda s: (order.get(s, len(order)), _natural(s))):
            entry.tables.append(_load_table(root, paper_root, profile, name, stem, table_specs.get(stem)))
        _load_claims(entry, ours_dir / name / CLAIMS_FILE)
        for path in sorted((root / "figures" / profile / name).glob("*.png"), key=lambda p: _natural(p.stem)):
            entry.figures.append(FigureEntry(path.stem, path, _read_json(results.meta_path(path))))
        for record_path in sorted((executed_dir / name).glob("*.run.json")):
            record = _read_json(record_path)
            executed = record_path.with_name(record_path.name.replace(".run.json", ".ipynb"))
            entry.notebooks.append(NotebookEntry(record_path.name[: -len(".run.json")], record,
                                                 executed if executed.exists() else None,
                                                 outputs=list(record.get("declared_outputs", []))))
            entry.declared_missing += [rel for rel in record.get("declared_outputs", []) if not (root / rel).exists()]
        if notebook_root is not None:
            _add_notebooks_not_run(entry, Path(notebook_root), profile)
        entries.append(entry)
    return sorted(entries, key=_paper_order)


def _paper_order(entry: PaperEntry) -> tuple:
    """The main paper first (``PaperSpec.main``), then the order of ``adlib.papers.PAPERS``, then by name."""
    from adlib import papers

    known = list(papers.PAPERS)
    main = bool(getattr(entry.spec, "main", False))
    return (not main, known.index(entry.name) if entry.name in known else len(known), entry.name)


def _load_faithfulness(entry: PaperEntry, roots: list[Path]) -> None:
    """``results/faithfulness/<model>.csv`` of each of the paper's models (the first root that has it)."""
    for model in dict(getattr(entry.spec, "methods", {}) or {}):
        path = next((r / "results" / "faithfulness" / f"{model}.csv" for r in roots
                     if (r / "results" / "faithfulness" / f"{model}.csv").exists()), None)
        if path is None:
            continue
        try:
            rows = pd.read_csv(path, keep_default_na=False, dtype=str)
        except (OSError, ValueError) as exc:
            rows = pd.DataFrame([{"component": "(unreadable)", "status": "error", "reason": str(exc)}])
        entry.faithfulness.append((model, rows.reindex(columns=FAITHFULNESS_COLUMNS).fillna(""), path))


def _add_notebooks_not_run(entry: PaperEntry, notebook_root: Path, profile: str) -> None:
    from adlib.app.notebooks import notebook_metadata

    recorded = {nb.name for nb in entry.notebooks}
    for path in sorted((notebook_root / entry.name).glob("[0-9][0-9]_*.ipynb")):
        if path.stem in recorded:
            continue
        try:
            title, outputs = notebook_metadata(path, profile)
        except Exception:  # unreadable metadata: still list the notebook
            title, outputs = path.stem, []
        record = {"status": "not run", "title": title, "source": str(path)}
        entry.notebooks.append(NotebookEntry(path.stem, record, None, outputs=outputs))
    entry.notebooks.sort(key=lambda nb: nb.name)


def _load_table(root: Path, paper_root: Path, profile: str, paper: str, name: str, spec) -> TableEntry:
    entry = TableEntry(name, spec=spec)
    try:
        if results.table_path(paper, name, profile=profile, root=root).exists():
            entry.path = results.table_path(paper, name, profile=profile, root=root)
            entry.meta = _read_json(results.meta_path(entry.path))
            entry.ours = results.read_table(paper, name, profile=profile, root=root)
        if results.paper_table_path(paper, name, root=paper_root).exists():
            entry.paper_path = results.paper_table_path(paper, name, root=paper_root)
            entry.paper = results.paper_table(paper, name, root=paper_root)
    except (ValueError, OSError) as exc:
        entry.error = str(exc)
    return entry


def _load_claims(entry: PaperEntry, path: Path) -> None:
    if not path.exists():
        return
    entry.claims_path = path
    try:
        entry.claims = pd.read_csv(path, keep_default_na=False, na_values={c: [""] for c in _CLAIM_NUMBERS})
    except (OSError, ValueError) as exc:
        entry.claims_error = str(exc)


_CLAIM_NUMBERS = C.NUMBERS


# ----------------------------------------------------------------------------------------- table views
@dataclass
class TableView:
    """One printed table in the paper's shape: ``rows`` x ``cols`` keys, a record of
    ``adlib.study.tables.side_by_side`` per cell (None: nothing on either side)."""

    rows: list[str]
    cols: list[str]
    row_values: list[tuple]
    col_values: list[tuple]
    cells: dict
    omitted: dict  # shape key -> the paper's values with nothing run here
    references: dict  # the paper's dataset -> the reproduced categories it stands beside for reference
    left_out: list[str]  # reproduced rows of the CSV not shown here, in words

    def shown(self) -> list[dict]:
        return [c for c in self.cells.values() if c is not None]


def _ordered(values) -> list:
    return list(dict.fromkeys(values))


def build_view(entry: TableEntry) -> TableView:
    paper, ours, spec = entry.paper, entry.ours, entry.spec
    pairs = set(zip(paper["level"], paper["metric"]))
    inside = [pair in pairs for pair in zip(ours["level"], ours["metric"])]
    left_out = []
    other = ours[[not i for i in inside]]
    if len(other):
        names = _ordered(f"{lv} {m}" for lv, m in zip(other["level"], other["metric"]))
        left_out.append("metrics the paper's table does not print (" + ", ".join(names) + ")")
    ours = ours[inside]
    # categories of a dataset whose mean over categories is here too, where the paper prints only the mean
    printed = set(paper["dataset"])
    means = set(ours["dataset"]) & {d.split("/")[0] for d in ours["dataset"] if "/" in d}
    folded = [d for d in ours["dataset"] if "/" in d and d.split("/")[0] in means and d not in printed]
    if folded:
        ours = ours[~ours["dataset"].isin(folded)]
        left_out.append("per-category rows of " + ", ".join(sorted({d.split("/")[0] for d in folded}))
                        + " (shown: their mean, as the paper prints it)")
    long = T.side_by_side(spec, paper, ours)
    left_out += long.attrs.get("left_out", [])

    rows = list(spec.rows) if spec is not None else ["method"]
    cols = list(spec.columns) if spec is not None else ["dataset", "metric"]
    if "level" not in rows + cols and long["level"].nunique() > 1:
        axis = cols if "metric" in cols or "metric" not in rows else rows
        axis.insert(axis.index("metric") if "metric" in axis else len(axis), "level")
    for key in ("dataset", "method", "setting", "metric"):
        if key not in rows + cols:
            mine = {v for v in long.loc[long["from_ours"], key] if v}
            printed = {v for v in long.loc[~long["from_ours"], key] if v}
            if len(mine) > 1 or len(printed) > 1:
                rows.append(key)
    records = long.to_dict("records")
    measured = ("metric", "level")  # the paper's columns of numbers: shown even where nothing ran here
    shown = {k: set(long[k]) if k in measured else {r[k] for r in records if r["from_ours"]} for k in rows + cols}
    visible = [r for r in records if all(r[k] in shown[k] for k in rows + cols)]
    row_values = _ordered(tuple(r[k] for k in rows) for r in sorted(visible, key=_order(records, rows)))
    col_values = _ordered(tuple(r[k] for k in cols) for r in sorted(visible, key=_order(records, cols)))
    cells = {(rv, cv): None for rv in row_values for cv in col_values}
    for r in visible:
        key = (tuple(r[k] for k in rows), tuple(r[k] for k in cols))
        if cells.get(key) is None or (r["from_ours"] and not cells[key]["from_ours"]):
            cells[key] = r
    omitted = {k: _ordered(r[k] for r in records if not r["from_ours"] and r[k] not in shown[k] and r[k])
               for k in rows + cols if k not in measured}
    references: dict[str, list[str]] = {}
    for r in visible:
        if r["reference"]:
            references.setdefault(r["dataset"].split("/")[0], [])
            if r["dataset"] not in references[r["dataset"].split("/")[0]]:
                references[r["dataset"].split("/")[0]].append(r["dataset"])
    return TableView(rows, cols, row_values, col_values, cells, {k: v for k, v in omitted.items() if v},
                     references, left_out)


def _order(records: list[dict], keys: list[str]):
    """A sort key for records: metrics and levels in the paper's printed order, everything else in the order
    the reproduced table has it (then the paper's)."""
    rank: dict = {}
    for source in ("paper_order", "ours_order"):
        for r in sorted((r for r in records if not pd.isna(r[source])), key=lambda r: r[source]):
            for k in keys:
                measured = k in ("level", "metric")
                if (source == "paper_order") == measured:
                    rank.setdefault((k, r[k]), len(rank))
    for r in records:  # whatever is left: paper order for the others, ours for the measured
        for k in keys:
            rank.setdefault((k, r[k]), len(rank))
    return lambda r: tuple(rank[(k, r[k])] for k in keys)


def agreement(diff: float, paper: float, metric: str, level: str) -> str:
    if diff is None or pd.isna(diff):
        return ""
    if T.unit(metric, level) == "%":
        gap = abs(diff)
    else:
        gap = abs(diff) / abs(paper) * 100 if paper else (0.0 if diff == 0 else math.inf)
    return "agree" if gap <= AGREE else "close" if gap <= CLOSE else "differs"


def _reason_kind(reason: str) -> str:
    """A reason with the dataset names taken out, for counting ("category vs whole dataset")."""
    if reason.startswith(T.REFERENCE):
        return "one category against the paper's whole dataset"
    return reason


def headline(cells: list[dict]) -> str:
    """What the cells say about agreement: comparable cells only; otherwise why there are none."""
    both = [c for c in cells if not pd.isna(c["ours"]) and not pd.isna(c["paper"])]
    comparable = [c for c in both if not pd.isna(c["diff"])]
    if comparable:
        counts = Counter(agreement(c["diff"], c["paper"], c["metric"], c["level"]) for c in comparable)
        word = "cell" if len(comparable) == 1 else "cells"
        text = (f"{counts['agree']} of {len(comparable)} comparable {word} agree with the paper (within {AGREE:g} "
                f"point; {AGREE:g} % for counts and costs), {counts['close']} close (within {CLOSE:g}), "
                f"{counts['differs']} differ more")
        if len(both) > len(comparable):
            text += f"; {len(both) - len(comparable)} more side by side, not comparable"
        return text
    if not both:
        return "No comparable cell in this profile: nothing reproduced here has a printed counterpart"
    kinds = Counter(k for c in both for k in map(_reason_kind, c["not_comparable"].split("; ")) if k)
    top = "; ".join(f"{k} ({n})" for k, n in kinds.most_common(3))
    word = "cell stands" if len(both) == 1 else "cells stand"
    return f"No comparable cell in this profile: {len(both)} {word} beside the paper's, not comparable ({top})"


# ----------------------------------------------------------------------------------------- links
@dataclass
class Context:
    output_root: Path
    profile: str

    @property
    def md_dir(self) -> Path:
        return self.output_root / "results" / self.profile

    @property
    def site(self) -> Path:
        return self.md_dir / "site"

    def md_href(self, path: Path) -> str:
        return Path(os.path.relpath(Path(path).resolve(), self.md_dir.resolve())).as_posix()


def _csv_site(paper: str, path: Path, kind: str) -> str:
    """Where a CSV is copied in the site: data/<paper>/<file> (ours), data/<paper>/paper/<file> (printed)."""
    return f"data/{paper}/paper/{path.name}" if kind == "paper" else f"data/{paper}/{path.name}"


def _csv_link(ctx: Context, paper: str, path: Path | None, text: str, kind: str = "ours") -> Link | None:
    if path is None:
        return None
    return Link(text, ctx.md_href(path), _csv_site(paper, path, kind))


def _notebook_link(ctx: Context, nb: NotebookEntry | None, text: str | None = None) -> Link | str | None:
    if nb is None:
        return None
    return Link(text or nb.name, f"site/{nb.html}" if nb.html else None, nb.html)


# ----------------------------------------------------------------------------------------- summary
def _writers(paper: PaperEntry) -> dict[str, NotebookEntry]:
    """Output file (relative to the output root) -> the notebook that declared or wrote it."""
    writers = {}
    for notebook in paper.notebooks:
        for rel in notebook.record.get("written_files", []) + list(notebook.outputs):
            writers.setdefault(rel, notebook)
    return writers


def _join(values) -> str:
    values = [str(v) for v in _ordered(values) if str(v)]
    return ", ".join(values) if values else "—"


def _ours_rows(paper: PaperEntry) -> pd.DataFrame:
    frames = [t.ours.assign(table=t.name) for t in paper.tables if t.ours is not None]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=results.TABLE_COLUMNS + ["table"])


_DATA = re.compile(r"^(?P<name>.+?) \((?P<synthetic>synthetic, )?(?P<train>\d+) train / (?P<test>\d+) test images?, "
                   r"(?P<size>\d+) ?px\)$")


def data_sources(rows: pd.DataFrame) -> list[dict]:
    """The data each run used, from the tables' ``data`` column ("synthetic_ad/grid (synthetic, 40 train / 16
    test images, 256px)"): one entry per source with its kind, image counts, sizes and the tables using it."""
    if "data" not in rows.columns:
        return []
    runs = rows[(rows["level"] != "data") & rows["value"].notna()]  # what ran
    sources: dict[str, dict] = {}
    for data, table in zip(runs["data"].astype(str), runs["table"]):
        if not data:
            continue
        match = _DATA.match(data)
        name = match["name"] if match else data
        entry = sources.setdefault(name, {"name": name, "kind": set(), "images": [], "sizes": set(), "tables": []})
        if match:
            entry["kind"].add("synthetic" if match["synthetic"] or name.startswith("synthetic") else "real")
            entry["images"].append(f"{match['train']} / {match['test']}")
            entry["sizes"].add(int(match["size"]))
        else:
            entry["kind"].add("synthetic" if name.startswith("synthetic") and "," not in name else "not recorded")
        entry["tables"].append(table)
    return list(sources.values())


def _paper_backbones(spec, method: str) -> list[str]:
    if spec is None:
        return []
    return _ordered(b for t in spec.tables.values() for b in [t.backbone_for(method)] if b)


def _setup_grid(paper: PaperEntry, rows: pd.DataFrame, profile: str) -> Grid:
    spec = paper.spec
    table_specs = list(getattr(spec, "tables", {}).values()) if spec is not None else []
    unknown = "unknown (no spec)" if spec is None else "not stated"
    runs = rows[~rows["level"].isin(["data"]) & rows["value"].notna()] if len(rows) else rows  # what ran
    body = []
    methods = _ordered(m for m in runs["method"].astype(str) if m) if len(runs) else []
    profile_spec = getattr(spec, "profiles", {}).get(profile) if spec is not None else None
    own = spec.display(spec.method) if spec is not None else None
    quality = runs[runs["level"].isin(T.PERCENT_LEVELS)] if len(runs) else runs
    for method in methods:  # the backbone behind the results (cost-only rows may build others with random weights)
        mine = quality[quality["method"] == method] if (quality["method"] == method).any() else runs[runs["method"] == method]
        here = _ordered(T._plain_backbone(b) for b in mine["backbone"].astype(str)
                        if T._plain_backbone(b)) if "backbone" in runs.columns else []
        theirs = [profile_spec.paper_backbone] if method == own and profile_spec is not None else _paper_backbones(spec, method)
        differs = bool(theirs) and bool(set(here) - set(theirs))
        body.append([Cell([f"backbone: {method}"]), Cell([_join(here) + (" (substitute)" if differs else "")],
                                                         "differs" if differs else ""),
                     Cell([_join(theirs) if theirs else unknown])])
    if not methods and profile_spec is not None:
        body.append([Cell(["backbone"]), Cell([profile_spec.backbone]), Cell([profile_spec.paper_backbone])])

    def column(name: str, numeric: bool = False) -> list:
        if name not in runs.columns or not len(runs):
            return []
        values = [T._text(v) for v in runs[name]]
        values = [v for v in values if v]
        return sorted(set(values), key=lambda v: float(v)) if numeric else _ordered(values)

    sizes = column("image_size", numeric=True)
    paper_sizes = _ordered(str(t.image_size) for t in table_specs if t.image_size)
    body.append([Cell(["resolution (px)"]), Cell([_join(sizes)], "differs" if paper_sizes and set(sizes) - set(paper_sizes) else ""),
                 Cell([_join(paper_sizes) if paper_sizes else unknown])])
    for label, name, attr in (("protocol", "protocol", "protocol"), ("class setting", "class_setting", "class_setting")):
        here = column(name)
        theirs = _ordered(getattr(t, attr) for t in table_specs)
        body.append([Cell([label]), Cell([_join(here)], "differs" if theirs and set(here) - set(theirs) else ""),
                     Cell([_join(theirs) if theirs else unknown])])
    seeds = column("seed", numeric=True)
    declared = ", ".join(map(str, profile_spec.seeds)) if profile_spec is not None else ""
    body.append([Cell(["seeds"]), Cell([_join(seeds) + (f" (profile: {declared})" if declared and _join(seeds) != declared else "")]),
                 Cell(["one run per cell, as printed"])])
    printed = _ordered(d.split("/")[0] for t in paper.tables if t.paper is not None for d in t.paper["dataset"] if d)
    here_data = _ordered(d for d in runs["dataset"].astype(str) if d) if len(runs) else []
    body.append([Cell(["datasets"]), Cell([_join(here_data)]), Cell([_join(printed) if printed else unknown])])
    return Grid([[""], [f"here (profile {profile})"], ["the paper"]], body)


def _data_grid(sources: list[dict]) -> Grid:
    body = []
    for s in sources:
        kind = " + ".join(sorted(s["kind"]))
        body.append([Cell([s["name"]]), Cell([kind], "incomparable" if kind == "synthetic" else ""),
                     Cell([_join(s["images"])], num=True), Cell([_join(sorted(s["sizes"]))], num=True),
                     Cell([_join(s["tables"])])])
    return Grid([["data source"], ["kind"], ["train / test images"], ["size (px)"], ["tables"]], body)


def _claim_rows(paper: PaperEntry) -> pd.DataFrame:
    """claims.csv, plus a "not run" row for every claim the spec declares that no notebook recorded."""
    found = paper.claims if paper.claims is not None else pd.DataFrame(columns=["claim"])
    extra = []
    writers = _writers(paper)
    for claim in getattr(paper.spec, "claims", ()) if paper.spec is not None else ():
        if claim.id in set(found["claim"].astype(str)):
            continue
        nb = next((w for rel, w in writers.items() if rel.endswith(f"/{paper.name}/{claim.table}.csv")), None)
        why = "no notebook recorded a verdict in this profile"
        if nb is not None and nb.status != "ok":
            why = f"its notebook {nb.name} {_status_words(nb)}"
        extra.append({"claim": claim.id, "text": claim.text, "where": claim.where, "comparison": "overall",
                      "metric": claim.metric, "level": claim.level, "n_seeds": 0, "verdict": "not run", "note": why})
    rows = pd.concat([found, pd.DataFrame(extra)], ignore_index=True) if extra else found
    if paper.spec is not None and len(rows):
        order = {c.id: i for i, c in enumerate(paper.spec.claims)}
        rows = rows.sort_values("claim", key=lambda s: s.map(order).fillna(len(order)), kind="stable")
    return rows


def _final(part: pd.DataFrame) -> pd.Series:
    overall = part[part["comparison"].astype(str) == "overall"]
    return (overall if len(overall) else part).iloc[0]


def claim_verdicts(rows: pd.DataFrame) -> dict[str, str]:
    """claim id -> its overall verdict."""
    if not len(rows):
        return {}
    return {cid: str(_final(part)["verdict"]) for cid, part in rows.groupby("claim", sort=False)}


def _value(row, side: str) -> str:
    metric, level = str(row.get("metric", "")), str(row.get("level", ""))
    return T.format_mean(row.get(f"{side}_mean"), row.get(f"{side}_std"), row.get("n_seeds"), metric, level)


def _claims_grid(rows: pd.DataFrame) -> Grid:
    body, classes = [], []
    for _, part in rows.groupby("claim", sort=False):
        final = _final(part)
        subs = [r for _, r in part.iterrows() if str(r["comparison"]) != "overall" and len(part) > 1]
        for i, row in enumerate([final] + subs):
            verdict = str(row.get("verdict", "")) or "?"
            metric, level = str(row.get("metric", "")), str(row.get("level", ""))
            unit = T.metric_label(metric, level) if metric else ""
            if i == 0 and subs:
                comparison = f"overall of {len(subs)} comparisons"
            else:
                comparison = str(row.get("comparison", ""))
            sides = "" if pd.isna(row.get("favoured_mean")) else f"{_value(row, 'favoured')} vs {_value(row, 'other')}"
            diff = "" if pd.isna(row.get("diff_mean")) else _value(row, "diff")
            n = row.get("n_seeds")
            note = "; ".join(filter(None, [_cell_text(row.get("floor_note")) if verdict == "not testable here" else "",
                                           _cell_text(row.get("note"))]))
            verdict_text = [Strong(verdict)] if verdict == "failed" else [verdict]
            body.append([Cell([str(row.get("text", "")) if i == 0 else "↳"]),
                         Cell([str(row.get("where", "")) if i == 0 else ""]),
                         Cell([comparison + (f" · {'' if level in ('model', 'data') else level + ' '}{unit}"
                                                  if unit and i == 0 else "")]),
                         Cell([sides], num=True), Cell([diff], num=True),
                         Cell([C.interval_text(row) if not pd.isna(row.get("diff_mean")) else ""], num=True),
                         Cell([C.floor_text(row) if not pd.isna(row.get("floor")) else ""], num=True),
                         Cell(["" if pd.isna(n) else str(int(n))], num=True),
                         Cell(verdict_text, verdict.replace(" ", "-")), Cell([note])])
            classes.append("sub" if i else "")
    return Grid([["claim"], ["where"], ["comparison"], ["favoured vs other"], ["difference (seeds)"],
                 [f"difference, test images {C.INTERVAL:g} %"], ["floor"], ["seeds"], ["verdict"], ["note"]], body,
                row_cls=classes)


def _cell_text(value) -> str:
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def _status_words(nb: NotebookEntry) -> str:
    r = nb.record
    if nb.status == "failed":
        return "failed: " + str(r.get("error") or "no error recorded") + (f" at {r['failed_cell']}" if r.get("failed_cell") else "")
    if nb.status == "not started":
        return "was not started (time budget spent)"
    if nb.status == "not run":
        return "was not run in this profile"
    return f"ran ({nb.status})"


def _notebook_counts(paper: PaperEntry) -> str:
    counts = Counter(nb.status for nb in paper.notebooks)
    if not counts:
        return "no notebooks"
    order = ["ok", "failed", "not started", "not run"]
    return ", ".join(f"{counts[s]} {s}" for s in order + sorted(set(counts) - set(order)) if counts[s])


def _verdict_counts(verdicts: dict[str, str]) -> str:
    counts = Counter(verdicts.values())
    order = list(C.VERDICTS)
    return ", ".join(f"{counts[v]} {v}" for v in order + sorted(set(counts) - set(order)) if counts[v]) or "none"


def _summary_blocks(paper: PaperEntry, views: dict, ctx: Context) -> list:
    spec = paper.spec
    title = [paper.name] + ([f" — {spec.title}"] if spec is not None and getattr(spec, "title", "") else [])
    blocks: list = [Heading(2, title, anchor=paper.name), *_path_check_blocks(ctx.profile)]
    rows = _ours_rows(paper)
    claim_rows = _claim_rows(paper)
    verdicts = claim_verdicts(claim_rows)
    failing = [nb for nb in paper.notebooks if nb.status not in ("ok", "skipped")]
    text: list = [Strong("Summary."), f" Notebooks: {_notebook_counts(paper)}"]
    for nb in [n for n in failing if n.status == "failed"]:
        text += ["; ", _notebook_link(ctx, nb), Strong(" failed"), f": {nb.record.get('error') or 'no error recorded'}"]
    text += [f". Claims: {_verdict_counts(verdicts)}"]
    failed = [cid for cid, v in verdicts.items() if v == "failed"]
    if failed:
        text += [" — ", Strong("failed: " + ", ".join(failed))]
    cells = [c for v in views.values() for c in v.shown()]
    text += [". Tables: " + headline(cells).replace("No comparable", "no comparable") + "."]
    blocks.append(Para(text))
    if spec is None:
        blocks.append(Para([Strong("No spec: "), f"{paper.spec_error or 'no spec for this paper'}. What the paper "
                            "measured on (backbone, resolution, protocol, class setting) is unknown here, so no "
                            "cell below is called comparable."], "failed"))
    else:
        try:
            profile_spec = spec.profile(ctx.profile)  # a check profile ("paper-check") is its base, cut
        except (ValueError, AttributeError):
            profile_spec = None
        if profile_spec is not None:
            sub = "" if profile_spec.backbone == profile_spec.paper_backbone else \
                f" {profile_spec.backbone} stands in for the paper's {profile_spec.paper_backbone}."
            blocks.append(Para([f"Profile {ctx.profile}: {profile_spec.description}.{sub}"], "meta"))
    blocks.append(_setup_grid(paper, rows, ctx.profile))
    sources = data_sources(rows)
    if sources:
        blocks.append(_data_grid(sources))
    blocks.append(Heading(3, ["Claims"], anchor=f"{paper.name}-claims"))
    if paper.claims_error:
        blocks.append(Para([f"could not read {CLAIMS_FILE}: {paper.claims_error}"], "failed"))
    if len(claim_rows):
        rule = next((str(r) for r in claim_rows.get("rule", []) if isinstance(r, str) and r), C.RULE)
        blocks.append(Para(_t(f"{_verdict_counts(verdicts)}. ", f"Rule: {rule}. " if rule else "",
                              _csv_link(ctx, paper.name, paper.claims_path, CLAIMS_FILE)), "meta"))
        blocks.append(_claims_grid(claim_rows))
    else:
        blocks.append(Para(["no claims declared or recorded"], "meta"))
    return blocks + _faithfulness_blocks(paper, ctx)


def _faithfulness_blocks(paper: PaperEntry, ctx: Context) -> list:
    """What the authors released and what adlib's implementation is checked against, and the recorded checks."""
    reference = getattr(paper.spec, "reference_code", "") if paper.spec is not None else ""
    if not reference and not paper.faithfulness:
        return []
    blocks: list = [Heading(3, ["Faithfulness"], anchor=f"{paper.name}-faithfulness")]
    if reference:
        blocks.append(Para([reference]))
    body = []
    for model, rows, _ in paper.faithfulness:
        for row in rows.to_dict("records"):
            status = str(row["status"])
            body.append([Cell([model]), Cell([row["component"]]), Cell([Code(row["reference_file"])] if row["reference_file"] else [""]),
                         Cell([row["commit"][:10]]), Cell([row["largest_difference"]], num=True),
                         Cell([Strong(status)] if status not in ("ok", "match", "matches", "pass") else [status]),
                         Cell([row["reason"]])])
    if body:
        links = [_csv_link(ctx, paper.name, path, f"{model}.csv") for model, _, path in paper.faithfulness]
        blocks.append(Grid([["model"], ["component"], ["reference file"], ["commit"], ["largest difference"],
                            ["status"], ["reason"]], body))
        blocks.append(Para(["Recorded by ", Code("benchmarks/parity/faithfulness.py"), ": "]
                           + [piece for i, link in enumerate(links) for piece in ([", "] if i else []) + [link]], "meta"))
    else:
        blocks.append(Para(["No component check recorded in ", Code("results/faithfulness/"), " for ",
                            ", ".join(dict(getattr(paper.spec, "methods", {}) or {})), "."], "meta"))
    return blocks


# ----------------------------------------------------------------------------------------- tables
def _row_label(key: str, value: str, row: tuple, keys: list[str]) -> str:
    if key == "metric":
        level = row[keys.index("level")] if "level" in keys else None
        return T.metric_label(value, level)
    return value or "—"


def _col_label(values: tuple, keys: list[str]) -> str:
    level = values[keys.index("level")] if "level" in keys else None
    parts = []
    for key, value in zip(keys, values):
        if key == "metric":
            parts.append(T.metric_label(value, level))
        elif key == "level" and "metric" in keys:
            continue
        else:
            parts.append(value or "—")
    if "level" in keys and "metric" in keys:
        i = [k for k in keys if k != "level"].index("metric")
        parts[i] = f"{level} {parts[i]}"
    return " · ".join(parts)


def _grid_for(view: TableView) -> tuple[Grid, dict]:
    marks: dict[str, int] = {}
    modal = Counter(int(c["seeds"]) for c in view.shown() if not pd.isna(c["ours"])).most_common(1)
    modal_n = modal[0][0] if modal else 0

    def mark(reason: str) -> Mark:
        marks.setdefault(reason, len(marks) + 1)
        return Mark(marks[reason], reason)

    body = []
    for rv in view.row_values:
        line = [Cell([_row_label(k, v, rv, view.rows)]) for k, v in zip(view.rows, rv)]
        for cv in view.col_values:
            rec = view.cells.get((rv, cv))
            if rec is None:
                reason = "no result here and none in the paper"
                line.append(Cell(["–", mark(reason)], "blank", reason, num=True))
                continue
            metric, level = rec["metric"], rec["level"]
            ours = T.format_mean(rec["ours"], rec["ours_std"], rec["seeds"], metric, level)
            if not pd.isna(rec["ours"]) and int(rec["seeds"]) != modal_n:
                ours += f" (n={int(rec['seeds'])})"
            printed = T.format_value(rec["paper"], metric, level) if not pd.isna(rec["paper"]) else "–"
            text: list = [f"{ours} ({printed})"]
            if not pd.isna(rec["diff"]):
                text += [" ", Strong("Δ" + T.format_value(rec["diff"], metric, level, signed=True))]
                cls = agreement(rec["diff"], rec["paper"], metric, level)
                title = f"comparable: ours − paper = {T.format_value(rec['diff'], metric, level, signed=True)}"
            else:
                text.append(mark(rec["not_comparable"]))
                both = not pd.isna(rec["ours"]) and not pd.isna(rec["paper"])
                cls, title = ("incomparable" if both else "blank"), rec["not_comparable"]
            line.append(Cell(text, cls, title, num=True))
        body.append(line)
    header = [[k] for k in view.rows] + [[_col_label(cv, view.cols)] for cv in view.col_values]
    groups = None
    if len(view.cols) > 1:
        groups = [(k, 1) for k in [""] * len(view.rows)]
        for cv in view.col_values:
            if groups[len(view.rows):] and groups[-1][0] == cv[0]:
                groups[-1] = (cv[0], groups[-1][1] + 1)
            else:
                groups.append((cv[0], 1))
        header = [[k] for k in view.rows] + [[_col_label(cv[1:], view.cols[1:])] for cv in view.col_values]
        header = header if any(h != [""] for h in header[len(view.rows):]) else None
        if header is None:  # nothing under the groups: fall back to one header row
            header, groups = [[k] for k in view.rows] + [[_col_label(cv, view.cols)] for cv in view.col_values], None
    return Grid(header, body, groups), marks


def _table_blocks(paper: PaperEntry, entry: TableEntry, view: TableView, ctx: Context,
                  writers: dict) -> list:
    title = getattr(entry.spec, "title", "") if entry.spec is not None else ""
    blocks: list = [Heading(4, _t(title, " " if title else "", Code(entry.name)), anchor=f"{paper.name}-{entry.name}")]
    counted = [c for c in view.shown() if not pd.isna(c["ours"]) and c["level"] != "data"]
    seeds = Counter(int(c["seeds"]) for c in counted).most_common(1)
    n = seeds[0][0] if seeds else 0
    writer = writers.get(str(entry.path.relative_to(ctx.output_root))) if entry.path else None
    backbone = entry.meta.get("backbone") if entry.meta else None
    line = _t(Strong(headline(view.shown()) + "."),
              f" Ours: mean ± std over {n} seeds." if n > 1 else " Ours: one run." if n == 1 else "",
              f" Backbone: {backbone}." if backbone else "",
              " ", _csv_link(ctx, paper.name, entry.path, "our rows (CSV)"), " · ",
              _csv_link(ctx, paper.name, entry.paper_path, "the paper's (CSV)", "paper"))
    if writer is not None:
        line += [" · written by ", _notebook_link(ctx, writer)]
    blocks.append(Para(line, "meta"))
    grid, marks = _grid_for(view)
    blocks.append(grid)
    notes = [f"{str(i).translate(SUPERSCRIPT)} {reason}" for reason, i in marks.items()]
    extra = []
    for key, values in view.omitted.items():
        refs = [f"{v} (beside {', '.join(view.references[v])} for reference only)" for v in values if v in view.references]
        plain = [v for v in values if v not in view.references]
        words = ", ".join(plain + refs)
        extra.append(f"the paper's {key}s with nothing run here: {words}")
    if view.left_out:
        extra.append("in the CSV, not shown: " + "; ".join(view.left_out))
    if entry.spec is not None and getattr(entry.spec, "note", ""):
        extra.append(f"note: {entry.spec.note}")
    text = " · ".join(notes)
    if extra:
        text += (". " if text else "") + ". ".join(e[0].upper() + e[1:] for e in extra) + "."
    if text:
        blocks.append(Para([text], "notes"))
    return blocks


def _why_not_reproduced(paper: PaperEntry, entry: TableEntry, ctx: Context, writers: dict) -> str:
    nb = writers.get(f"results/{ctx.profile}/{paper.name}/{entry.name}.csv")
    note = getattr(entry.spec, "note", "") if entry.spec is not None else ""
    if nb is not None:
        why = f"its notebook {nb.name} {_status_words(nb)}" if nb.status != "ok" else f"{nb.name} ran but wrote no such table"
    else:
        why = "no notebook reproduces it"
    return why + (f"; {note}" if note else "")


def _tables_blocks(paper: PaperEntry, views: dict, ctx: Context) -> list:
    writers = _writers(paper)
    blocks: list = []
    paper_only, ours_only, broken = [], [], []
    for entry in paper.tables:
        if entry.error:
            broken.append(_t(Code(entry.name), f": could not be read: {entry.error}"))
        elif entry.name in views:
            blocks += _table_blocks(paper, entry, views[entry.name], ctx, writers)
        elif entry.ours is None:
            title = getattr(entry.spec, "title", "") or entry.name
            paper_only.append(_t(_csv_link(ctx, paper.name, entry.paper_path, entry.name, "paper"),
                                 f" — {title}: {_why_not_reproduced(paper, entry, ctx, writers)}."))
        else:
            writer = writers.get(str(entry.path.relative_to(ctx.output_root)))
            ours_only.append(_t(_csv_link(ctx, paper.name, entry.path, entry.name),
                                f" — {len(entry.ours)} rows, {_join(entry.ours['method'])}"
                                f" on {_join(entry.ours['dataset'])}", " · written by " if writer else "",
                                _notebook_link(ctx, writer)))
    if paper_only:
        blocks += [Heading(4, ["Paper only: printed tables not reproduced here"]), Bullets(paper_only)]
    if ours_only:
        blocks += [Heading(4, ["Reproduced only: tables with no printed counterpart"]), Bullets(ours_only)]
    if broken:
        blocks += [Heading(4, ["Unreadable tables"]), Bullets(broken, "failed")]
    return blocks


def _describe(meta: dict) -> str:
    if not meta:
        return "no provenance recorded"
    parts = [f"profile {meta.get('profile', '?')}", f"backbone {meta.get('backbone', '?')}",
             f"data {meta.get('data', '?')}"]
    commit = (meta.get("provenance", {}).get("git") or {}).get("commit")
    if commit:
        parts.append(f"git {commit[:10]}")
    return " · ".join(parts)


def _figures_blocks(paper: PaperEntry, ctx: Context) -> list:
    if not paper.figures:
        return [Heading(3, ["Figures"]), Para(["no figures in this profile"], "meta")]
    writers = _writers(paper)
    described = dict(getattr(paper.spec, "figures", {}) or {}) if paper.spec is not None else {}
    items = []
    for figure in paper.figures:
        writer = writers.get(str(figure.path.relative_to(ctx.output_root)))
        head = _t(Img(figure.name, ctx.md_href(figure.path), f"figures/{paper.name}/{figure.path.name}"),
                  " ", Strong(figure.name), f" — {described[figure.name]}" if figure.name in described else "")
        tail = _t(_describe(figure.meta), " · written by " if writer else "", _notebook_link(ctx, writer))
        items.append((head, tail))
    return [Heading(3, ["Figures"]), Figures(items)]


def _notebook_blocks(paper: PaperEntry, ctx: Context) -> list:
    """Notebooks that ran ok on one line (linked to their rendered HTML); every other one on its own line,
    with its error, or why it did not run."""
    items = []
    ran = [nb for nb in paper.notebooks if nb.status == "ok"]
    if ran:
        total = sum(float(nb.record.get("seconds") or 0) for nb in ran)
        line: list = [f"{len(ran)} ran ok ({total:.0f} s in all): "]
        for i, nb in enumerate(ran):
            line += ([", "] if i else []) + [_notebook_link(ctx, nb) if nb.html else Code(nb.name)]
        items.append(line)
    for nb in [nb for nb in paper.notebooks if nb.status != "ok"]:
        r = nb.record
        seconds = f" in {float(r.get('seconds') or 0):.1f} s" if nb.status in ("ok", "failed") else ""
        status = Strong(nb.status) if nb.status != "ok" else nb.status
        item = _t(_notebook_link(ctx, nb) if nb.html else Code(nb.name), f" — {r.get('title', '')}: ", status, seconds,
                  f", finished {r['end']}" if r.get("end") else "")
        if nb.status == "failed":
            item += [f" — {r.get('error') or 'no error recorded'}"] + ([" at ", Code(r["failed_cell"])] if r.get("failed_cell") else [])
        elif nb.status == "not started":
            item += [" — the time budget was spent before it started; run again with --resume"]
        items.append(item)
    blocks = [Heading(3, ["Notebooks"])]
    blocks.append(Bullets(items) if items else Para(["no executed notebooks"], "meta"))
    if paper.declared_missing:
        blocks.append(Para([Strong("Declared outputs missing: "), ", ".join(paper.declared_missing)], "failed"))
    return blocks


def views_of(paper: PaperEntry) -> dict[str, TableView]:
    """The paper's printed tables that have reproduced rows, in the paper's shape (built once per entry)."""
    if paper.views is None:
        paper.views = {t.name: build_view(t) for t in paper.tables
                       if t.ours is not None and t.paper is not None and not t.error}
    return paper.views


def paper_blocks(paper: PaperEntry, ctx: Context) -> list:
    """One paper's section: summary and claims, tables, figures, notebooks."""
    views = views_of(paper)
    tables = _tables_blocks(paper, views, ctx)
    return (_summary_blocks(paper, views, ctx) + ([Heading(3, ["Tables"])] if tables else []) + tables
            + _figures_blocks(paper, ctx) + _notebook_blocks(paper, ctx))


def kind_headline(cells: list[dict], kind: str) -> str:
    """Agreement of one kind of cell (``adlib.study.tables.cell_kind``): the comparable cells, else how many
    stand beside the paper's without being comparable."""
    mine = [c for c in cells if T.cell_kind(c["metric"], c["level"]) == kind
            and not pd.isna(c["ours"]) and not pd.isna(c["paper"])]
    comparable = [c for c in mine if not pd.isna(c["diff"])]
    if comparable:
        counts = Counter(agreement(c["diff"], c["paper"], c["metric"], c["level"]) for c in comparable)
        text = f"{counts['agree']} of {len(comparable)} agree, {counts['close']} close, {counts['differs']} differ"
        return text + (f"; {len(mine) - len(comparable)} not comparable" if len(mine) > len(comparable) else "")
    return f"none comparable ({len(mine)} side by side)" if mine else "none here"


def can_tell(paper: PaperEntry, cells: list[dict], verdicts: dict[str, str]) -> str:
    """One sentence: what this profile can and cannot tell about the paper."""
    both = [c for c in cells if T.cell_kind(c["metric"], c["level"]) == "quality"
            and not pd.isna(c["ours"]) and not pd.isna(c["paper"])]
    comparable = [c for c in both if not pd.isna(c["diff"])]
    decided = Counter(v for v in verdicts.values() if v in ("held", "failed"))
    claims_part = (f"whether its claims hold on this profile's own runs ({decided['held']} held, {decided['failed']} "
                   f"failed of {len(verdicts)})" if verdicts else "how the method behaves on this profile's runs")
    untestable = sum(v == "not testable here" for v in verdicts.values())
    if untestable:
        claims_part += f"; {untestable} claim(s) not testable here, where the method does not work"
    if comparable:
        return (f"{len(comparable)} quality cell(s) match the paper's data, resolution, backbone, protocol and class "
                f"setting and test its numbers directly; beyond them this profile tells {claims_part}.")
    if both:
        kinds = Counter(k for c in both for k in map(_reason_kind, c["not_comparable"].split("; ")) if k)
        why = "; ".join(k for k, _ in kinds.most_common(2))
        return (f"No quality number is comparable with the paper's ({why}): this profile can tell {claims_part}, "
                f"not whether the paper's numbers reproduce.")
    return (f"Nothing reproduced here stands beside a printed quality number: this profile can tell {claims_part}, "
            f"not whether the paper's numbers reproduce.")


def overview_grid(papers: list[PaperEntry]) -> Grid:
    body = []
    for paper in papers:
        views = views_of(paper)
        printed = [t for t in paper.tables if t.paper is not None]
        reproduced = [t for t in printed if t.ours is not None and t.ours["value"].notna().any()]
        verdicts = claim_verdicts(_claim_rows(paper))
        cells = [c for v in views.values() for c in v.shown()]
        name = [Link(paper.name, f"#{paper.name}", f"{paper.name}.html")]
        if getattr(paper.spec, "main", False):
            name += [" ", Strong("(main paper)")]
        body.append([Cell(name),
                     Cell([_notebook_counts(paper)], "failed" if any(nb.status == "failed" for nb in paper.notebooks) else ""),
                     Cell([_verdict_counts(verdicts)], "failed" if "failed" in verdicts.values() else ""),
                     Cell([f"{len(reproduced)} of {len(printed)} with a computed row"]),
                     Cell([kind_headline(cells, "quality")]), Cell([kind_headline(cells, "cost")]),
                     Cell([kind_headline(cells, "property")]), Cell([can_tell(paper, cells, verdicts)])])
    return Grid([["paper"], ["notebooks"], ["claims"], ["printed tables"], ["quality cells"],
                 ["cost and count cells"], ["architecture properties (0/1)"], ["what this profile can tell"]], body)


# ----------------------------------------------------------------------------------------- Markdown
def _md_inline(text, in_table: bool = False) -> str:
    out = []
    for piece in ([text] if isinstance(text, (str, Link, Strong, Code, Mark, Img)) else text):
        if isinstance(piece, Link):
            out.append(f"[{piece.text}]({piece.md})" if piece.md else piece.text)
        elif isinstance(piece, Strong):
            inner = piece.text.strip()
            lead, trail = piece.text[: len(piece.text) - len(piece.text.lstrip())], piece.text[len(piece.text.rstrip()):]
            out.append(f"{lead}**{inner}**{trail}" if inner else piece.text)
        elif isinstance(piece, Code):
            out.append(f"`{piece.text}`")
        elif isinstance(piece, Mark):
            out.append(str(piece.n).translate(SUPERSCRIPT))
        elif isinstance(piece, Img):
            out.append(f"![{piece.alt}]({piece.md})")
        else:
            out.append(str(piece))
    text = "".join(out).replace("\n", " ")
    return text.replace("|", "\\|") if in_table else text


def render_markdown(blocks: list) -> list[str]:
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):  # no blank line after a heading: the section stays compact
            lines.append("#" * block.level + " " + _md_inline(block.text))
        elif isinstance(block, Para):
            if _md_inline(block.text).strip():
                lines += [_md_inline(block.text), ""]
        elif isinstance(block, Bullets):
            lines += [f"- {_md_inline(item)}" for item in block.items] + [""]
        elif isinstance(block, Figures):
            groups: dict[str, list] = {}
            for head, tail in block.items:
                groups.setdefault(_md_inline(tail), []).append(_md_inline(head))
            lines += [f"- {'; '.join(heads)} · {tail}" for tail, heads in groups.items()] + [""]
        elif isinstance(block, Grid):
            numeric = [any(row[i].num for row in block.rows) for i in range(len(block.header))]
            header = [_md_inline(h, True) or " " for h in block.header]
            if block.groups:  # one header row in Markdown: the group label goes in front
                labels = [g for g, span in block.groups for _ in range(span)]
                header = [f"{g} · {h}" if g and h.strip() else (g or h) for g, h in zip(labels, header)]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
            lines += ["| " + " | ".join(_md_inline(c.text, True) for c in row) + " |" for row in block.rows]
            lines.append("")
    return lines


# ----------------------------------------------------------------------------------------- HTML
def _esc(value) -> str:
    return html.escape(str(value))


def _html_inline(text) -> str:
    out = []
    for piece in ([text] if isinstance(text, (str, Link, Strong, Code, Mark, Img)) else text):
        if isinstance(piece, Link):
            out.append(f'<a href="{_esc(piece.site)}">{_esc(piece.text)}</a>' if piece.site else _esc(piece.text))
        elif isinstance(piece, Strong):
            out.append(f"<b>{_esc(piece.text)}</b>")
        elif isinstance(piece, Code):
            out.append(f"<code>{_esc(piece.text)}</code>")
        elif isinstance(piece, Mark):
            out.append(f'<sup title="{_esc(piece.title)}">{piece.n}</sup>')
        elif isinstance(piece, Img):
            out.append(f'<img src="{_esc(piece.site)}" alt="{_esc(piece.alt)}">')
        else:
            out.append(_esc(piece))
    return "".join(out)


def render_html(blocks: list) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            anchor = f' id="{_esc(block.anchor)}"' if block.anchor else ""
            parts.append(f"<h{block.level}{anchor}>{_html_inline(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            if _html_inline(block.text).strip():
                cls = f' class="{block.cls}"' if block.cls else ""
                parts.append(f"<p{cls}>{_html_inline(block.text)}</p>")
        elif isinstance(block, Bullets):
            cls = f' class="{block.cls}"' if block.cls else ""
            items = "".join(f"<li>{_html_inline(item)}</li>" for item in block.items)
            parts.append(f"<ul{cls}>{items}</ul>")
        elif isinstance(block, Figures):
            items = "".join(f"<li>{_html_inline(head)}<br>{_html_inline(tail)}</li>" for head, tail in block.items)
            parts.append(f'<ul class="figures">{items}</ul>')
        elif isinstance(block, Grid):
            head = ""
            if block.groups:
                head += "<tr>" + "".join(f'<th colspan="{span}">{_esc(label)}</th>' for label, span in block.groups) + "</tr>"
            head += "<tr>" + "".join(f"<th>{_html_inline(h)}</th>" for h in block.header) + "</tr>"
            rows = []
            for i, row in enumerate(block.rows):
                cls = f' class="{block.row_cls[i]}"' if block.row_cls and block.row_cls[i] else ""
                cells = []
                for cell in row:
                    classes = " ".join(c for c in ("num" if cell.num else "", cell.cls) if c)
                    attrs = (f' class="{classes}"' if classes else "") + (f' title="{_esc(cell.title)}"' if cell.title else "")
                    cells.append(f"<td{attrs}>{_html_inline(cell.text)}</td>")
                rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
            parts.append(f"<table>{head}{''.join(rows)}</table>")
    return "\n".join(parts)


def _page(title: str, nav: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{CSS}</style></head><body>{nav}<main>{body}</main></body></html>\n")


def _nav(papers: list[PaperEntry], here: str) -> str:
    links = [("index.html", "Overview")] + [(f"{p.name}.html", p.name) for p in papers]
    anchors = []
    for href, text in links:
        current = ' class="here"' if href == here else ""
        anchors.append(f'<a href="{_esc(href)}"{current}>{_esc(text)}</a>')
    return "<nav>" + "".join(anchors) + "</nav>"


def _revision() -> str:
    git = results.git_revision()
    return f"git {git['commit'][:10]}{' (dirty)' if git['dirty'] else ''}" if git["commit"] else "no git"


def _path_check_blocks(profile: str) -> list:
    """A path check's report says, where no reader can miss it, that its numbers are not results."""
    from adlib.study.spec import PATH_CHECK_CUTS, is_check

    if not is_check(profile):
        return []
    return [Para([Strong(f"{PATH_CHECK_CUTS.label.upper()}."), f" {PATH_CHECK_CUTS.describe()}. Every number below "
                  "only shows that the code ran; none is a measurement of any method."], "failed")]


def _intro_blocks(papers: list[PaperEntry], profile: str) -> list:
    blocks: list = [Heading(1, [f"adlib reproduction report — profile {profile}"]), *_path_check_blocks(profile),
                    Para([f"Built {time.strftime('%Y-%m-%d %H:%M:%S %Z')} · {_revision()}."], "meta"),
                    Para([READING])]
    if papers:
        blocks.append(overview_grid(papers))
    else:
        blocks.append(Para(["nothing to report yet: run ", Code("python -m adlib reproduce")]))
    return blocks


def render_notebook(executed: Path, target: Path) -> None:
    """The executed notebook as standalone HTML with its images embedded; skipped when up to date."""
    if target.exists() and target.stat().st_mtime >= executed.stat().st_mtime:
        return
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(template_name="lab", embed_images=True).from_notebook_node(
        nbformat.read(executed, as_version=4))
    results.atomic_write_text(target, body)


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists() or target.stat().st_mtime < source.stat().st_mtime:
        with results.atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)


def build_site(papers: list[PaperEntry], output_root: Path, profile: str) -> Path:
    ctx = Context(Path(output_root), profile)
    site = ctx.site
    for paper in papers:
        for nb in paper.notebooks:
            if nb.executed is not None:
                nb.html = f"notebooks/{paper.name}/{nb.name}.html"
                render_notebook(nb.executed, site / nb.html)
        for figure in paper.figures:
            _copy(figure.path, site / "figures" / paper.name / figure.path.name)
        for entry in paper.tables:
            if entry.path is not None:
                _copy(entry.path, site / _csv_site(paper.name, entry.path, "ours"))
            if entry.paper_path is not None:
                _copy(entry.paper_path, site / _csv_site(paper.name, entry.paper_path, "paper"))
        if paper.claims_path is not None:
            _copy(paper.claims_path, site / _csv_site(paper.name, paper.claims_path, "ours"))
        for _, _, path in paper.faithfulness:
            _copy(path, site / _csv_site(paper.name, path, "ours"))
    for paper in papers:
        body = render_html(paper_blocks(paper, ctx))
        results.atomic_write_text(site / f"{paper.name}.html",
                                  _page(f"adlib report: {paper.name} ({profile})", _nav(papers, f"{paper.name}.html"), body))
    index = render_html(_intro_blocks(papers, profile))
    return results.atomic_write_text(site / "index.html", _page(f"adlib report ({profile})", _nav(papers, "index.html"), index))


def build_markdown(papers: list[PaperEntry], output_root: Path, profile: str) -> Path:
    ctx = Context(Path(output_root), profile)
    blocks = _intro_blocks(papers, profile)
    blocks.insert(2, Para(["The same report with styling and the executed notebooks: ",
                           Link("site/index.html", "site/index.html", "index.html"), "."]))
    lines = render_markdown(blocks)
    for paper in papers:
        lines += render_markdown(paper_blocks(paper, ctx))
    return results.atomic_write_text(ctx.md_dir / "REPORT.md", "\n".join(lines).rstrip() + "\n")


def build_report(output_root: str | Path, profile: str, notebook_root: str | Path | None = None,
                 papers: list[str] | None = None, paper_root: str | Path | None = None,
                 specs: Mapping | None = None) -> Path:
    """Write REPORT.md and site/ for `profile` under `output_root`; returns the REPORT.md path.
    Paper tables are read from `<paper_root>/results/paper/` (default: the repository); paper specs from
    ``adlib.papers`` unless ``specs`` (name -> PaperSpec) is given."""
    entries = collect(Path(output_root), profile, papers, notebook_root, paper_root, specs)
    build_site(entries, Path(output_root), profile)
    return build_markdown(entries, Path(output_root), profile)
