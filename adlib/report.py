"""The reproduction report: `results/<profile>/REPORT.md` and a static site `results/<profile>/site/`.

Per paper: every table as paper vs reproduced with the difference, every figure, the profile, backbone and
data behind each, and links to the executed notebooks rendered as HTML. The site uses relative links only
and copies the figures into itself, so `site/index.html` opens from disk with no server.

Built from files only: reproduced tables (`results/<profile>/<paper>/*.csv` + `.meta.json`), the papers'
numbers (`results/paper/<paper>/*.csv` of the repository), figures (`figures/<profile>/<paper>/*.png` + `.meta.json`) and the
run records and executed notebooks under `results/<profile>/executed/`.
"""
from __future__ import annotations

import html
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from adlib import results

# |ours - paper| in percentage points: at most AGREE is "agrees", at most CLOSE is "close", else "differs".
AGREE, CLOSE = 1.0, 5.0

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;line-height:1.45}
nav{background:#263238;padding:.6em 1.2em;position:sticky;top:0}
nav a{color:#eceff1;margin-right:1.2em;text-decoration:none;font-weight:600}
nav a.here{color:#ffd54f}
main{max-width:1400px;margin:0 auto;padding:1em 1.5em 3em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.88em}
th,td{border:1px solid #cfd8dc;padding:.2em .55em;text-align:left}
th{background:#eceff1}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.agree{background:#c8e6c9}td.close{background:#fff9c4}td.differs{background:#ffcdd2}
.meta{color:#546e7a;font-size:.85em}
.ok{color:#2e7d32;font-weight:600}.failed{color:#c62828;font-weight:600}.skipped{color:#546e7a}
.sides{display:flex;gap:1.5em;align-items:flex-start;overflow-x:auto}
figure{display:inline-block;margin:.5em 1em 1em 0;vertical-align:top}
figure img{max-width:520px;border:1px solid #cfd8dc}
figcaption{font-size:.85em;color:#455a64}
pre{background:#f5f5f5;padding:.5em;overflow-x:auto;font-size:.85em}
"""


# ----------------------------------------------------------------------------------------- collection
@dataclass
class TableEntry:
    name: str
    ours: pd.DataFrame | None = None
    paper: pd.DataFrame | None = None
    meta: dict = field(default_factory=dict)
    path: Path | None = None
    error: str | None = None

    def comparison(self) -> pd.DataFrame | None:
        if self.ours is None or self.paper is None:
            return None
        return results.compare(self.paper, self.ours)


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


@dataclass
class PaperEntry:
    name: str
    tables: list[TableEntry] = field(default_factory=list)
    figures: list[FigureEntry] = field(default_factory=list)
    notebooks: list[NotebookEntry] = field(default_factory=list)
    declared_missing: list[str] = field(default_factory=list)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _subdirs(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}


def collect(output_root: Path, profile: str, papers: list[str] | None = None,
            notebook_root: Path | None = None, paper_root: Path | None = None) -> list[PaperEntry]:
    """Everything the report shows, per paper, read from the output tree (and, when given, the notebook
    folder, so notebooks never executed in this profile show as "not run")."""
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
    for paper in sorted(names):
        entry = PaperEntry(paper)
        table_names = {p.stem for p in (ours_dir / paper).glob("*.csv")} \
            | {p.stem for p in (paper_root / "results" / "paper" / paper).glob("*.csv")}
        for name in sorted(table_names, key=_natural):
            entry.tables.append(_load_table(root, paper_root, profile, paper, name))
        for path in sorted((root / "figures" / profile / paper).glob("*.png"), key=lambda p: _natural(p.stem)):
            entry.figures.append(FigureEntry(path.stem, path, _read_json(results.meta_path(path))))
        for record_path in sorted((executed_dir / paper).glob("*.run.json")):
            record = _read_json(record_path)
            executed = record_path.with_name(record_path.name.replace(".run.json", ".ipynb"))
            entry.notebooks.append(NotebookEntry(record_path.name[: -len(".run.json")], record,
                                                 executed if executed.exists() else None))
            entry.declared_missing += [rel for rel in record.get("declared_outputs", []) if not (root / rel).exists()]
        if notebook_root is not None:
            recorded = {nb.name for nb in entry.notebooks}
            for path in sorted((Path(notebook_root) / paper).glob("[0-9][0-9]_*.ipynb")):
                if path.stem not in recorded:
                    record = {"status": "not run", "title": path.stem, "source": str(path)}
                    entry.notebooks.append(NotebookEntry(path.stem, record, None))
            entry.notebooks.sort(key=lambda nb: nb.name)
        entries.append(entry)
    return entries


def _natural(name: str) -> tuple:
    """'table10' after 'table2'."""
    import re

    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _load_table(root: Path, paper_root: Path, profile: str, paper: str, name: str) -> TableEntry:
    entry = TableEntry(name)
    try:
        if results.table_path(paper, name, profile=profile, root=root).exists():
            entry.path = results.table_path(paper, name, profile=profile, root=root)
            entry.ours = results.read_table(paper, name, profile=profile, root=root)
            entry.meta = _read_json(results.meta_path(entry.path))
        if results.paper_table_path(paper, name, root=paper_root).exists():
            entry.paper = results.paper_table(paper, name, root=paper_root)
    except (ValueError, OSError) as exc:
        entry.error = str(exc)
    return entry


# ----------------------------------------------------------------------------------------- helpers
def _fmt(value: float, signed: bool = False, metric: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if metric in COUNT_METRICS and float(value).is_integer():
        return f"{int(value):+d}" if signed else f"{int(value)}"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def _agreement(diff: float) -> str:
    if diff is None or math.isnan(diff):
        return ""
    return "agree" if abs(diff) <= AGREE else "close" if abs(diff) <= CLOSE else "differs"


REFERENCE = "paper, whole dataset"
COUNT_METRICS = {"n_categories", "train_normal", "test_normal", "test_abnormal", "epochs"}


def with_dataset_reference(rows: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Add the paper's number for the whole dataset ("MVTec AD" for a reproduced "MVTec AD/bottle") as a
    reference column. It is not the same data, so it gets no diff."""
    printed = {tuple(r[c] for c in results.KEY_COLUMNS): r["value"] for r in paper.to_dict("records")}
    out = rows.copy()
    out[REFERENCE] = [
        printed.get((r["dataset"].split("/")[0], r["method"], r["setting"], r["level"], r["metric"]), math.nan)
        if "/" in r["dataset"] else math.nan
        for r in rows.to_dict("records")
    ]
    return out


def split_comparison(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(rows in both, reproduced rows without a paper row, paper rows not reproduced)."""
    both = table[table["paper"].notna() & table["ours"].notna()]
    ours_only = table[table["paper"].isna() & table["ours"].notna()]
    paper_only = table[table["paper"].notna() & table["ours"].isna()]
    return both, ours_only, paper_only


def agreement_summary(both: pd.DataFrame) -> str:
    if both.empty:
        return "no row matches a paper row"
    diffs = both["diff"].abs()
    counts = {k: int(sum(_agreement(d) == k for d in both["diff"])) for k in ("agree", "close", "differs")}
    rows = "1 row matches" if len(both) == 1 else f"{len(both)} rows match"
    return (f"{rows} the paper: {counts['agree']} agree (≤ {AGREE:g} pt), {counts['close']} close "
            f"(≤ {CLOSE:g} pt), {counts['differs']} differ; "
            f"median |diff| {diffs.median():.1f}, max {diffs.max():.1f}")


def _describe(meta: dict) -> str:
    if not meta:
        return ""
    parts = [f"profile {meta.get('profile', '?')}", f"backbone {meta.get('backbone', '?')}",
             f"data {meta.get('data', '?')}"]
    commit = (meta.get("provenance", {}).get("git") or {}).get("commit")
    if commit:
        parts.append(f"git {commit[:10]}")
    return " · ".join(parts)


def _writers(paper: PaperEntry) -> dict[str, NotebookEntry]:
    """Output file (relative to the output root) -> the notebook that wrote it."""
    writers = {}
    for notebook in paper.notebooks:
        for rel in notebook.record.get("written_files", []) + notebook.record.get("declared_outputs", []):
            writers[rel] = notebook
    return writers


# ----------------------------------------------------------------------------------------- HTML
def _esc(value) -> str:
    return html.escape(str(value))


def _html_rows(df: pd.DataFrame, columns: list[str], numeric: dict[str, bool]) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    rows = []
    for record in df.to_dict("records"):
        cells = []
        for column in columns:
            value = record.get(column)
            if column in numeric:
                css = "num " + (_agreement(record.get("diff")) if column == "diff" else "")
                cells.append(f'<td class="{css.strip()}">{_fmt(value, numeric[column], record.get("metric"))}</td>')
            else:
                cells.append(f"<td>{_esc('' if value is None or value != value else value)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _html_table(entry: TableEntry, writer: NotebookEntry | None) -> str:
    parts = [f'<h3 id="{_esc(entry.name)}">{_esc(entry.name)}</h3>']
    source = []
    if entry.meta:
        source.append(_esc(_describe(entry.meta)))
    if writer is not None and writer.html:
        source.append(f'written by <a href="{_esc(writer.html)}">{_esc(writer.name)}</a>')
    if source:
        parts.append(f'<p class="meta">{" · ".join(source)}</p>')
    if entry.error:
        parts.append(f'<p class="failed">could not read this table: {_esc(entry.error)}</p>')
        return "\n".join(parts)
    keys = results.KEY_COLUMNS
    if entry.ours is None:
        parts.append('<p class="failed">not reproduced in this profile</p>')
        parts.append(f"<details><summary>paper numbers ({len(entry.paper)} rows)</summary>"
                     f"{_html_rows(entry.paper, keys + ['value'], {'value': False})}</details>")
        return "\n".join(parts)
    if entry.paper is None:
        parts.append("<p>no paper table: reproduced numbers only</p>")
        parts.append(_html_rows(entry.ours, keys + ["value"], {"value": False}))
        return "\n".join(parts)
    both, ours_only, paper_only = split_comparison(entry.comparison())
    numeric = {"paper": False, "ours": False, "diff": True}
    parts.append(f"<p>{_esc(agreement_summary(both))}</p>")
    if not both.empty:
        parts.append(_html_rows(both, keys + ["paper", "ours", "diff"], numeric))
    if not ours_only.empty:
        ours_only = with_dataset_reference(ours_only, entry.paper)
        columns = keys + ["ours"] + ([REFERENCE] if ours_only[REFERENCE].notna().any() else [])
        ours_html = _html_rows(ours_only, columns, {"ours": False, REFERENCE: False})
        note = f" “{REFERENCE}” is the paper's number for the whole dataset, for reference: not the same data." \
            if REFERENCE in columns else ""
        if both.empty and not paper_only.empty:
            parts.append(f'<p class="meta">The reproduced rows use other datasets than the paper\'s rows, so the two '
                         f"are shown beside each other, not joined.{note}</p>")
            parts.append(f'<div class="sides"><div><h4>Reproduced</h4>{ours_html}</div><div><h4>Paper (printed)</h4>'
                         f"{_html_rows(paper_only, keys + ['paper'], {'paper': False})}</div></div>")
            return "\n".join(parts)
        parts.append(f'<h4>Reproduced rows with no paper row of the same dataset and setting</h4>'
                     f'<p class="meta">{note}</p>{ours_html}')
    if not paper_only.empty:
        parts.append(f"<details><summary>paper rows not reproduced ({len(paper_only)})</summary>"
                     f"{_html_rows(paper_only, keys + ['paper'], {'paper': False})}</details>")
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


def _notebook_rows(paper: PaperEntry) -> str:
    rows = []
    for nb in paper.notebooks:
        r = nb.record
        link = f'<a href="{_esc(nb.html)}">{_esc(nb.name)}</a>' if nb.html else _esc(nb.name)
        error = _esc(r.get("error") or "")
        if r.get("failed_cell"):
            error += f"<br><code>{_esc(r['failed_cell'])}</code>"
        rows.append(f"<tr><td>{link}</td><td>{_esc(r.get('title', ''))}</td>"
                    f'<td class="{_esc(r.get("status", ""))}">{_esc(r.get("status", "?"))}</td>'
                    f"<td class=\"num\">{r.get('seconds', 0):.1f} s</td><td>{_esc(r.get('end', ''))}</td>"
                    f"<td>{error}</td></tr>")
    if not rows:
        return "<p>no executed notebooks</p>"
    return ("<table><tr><th>notebook</th><th>title</th><th>status</th><th>time</th><th>finished</th>"
            f"<th>error</th></tr>{''.join(rows)}</table>")


def _paper_page(paper: PaperEntry, papers: list[PaperEntry], profile: str, root: Path) -> str:
    writers = _writers(paper)
    body = [f"<h1>{_esc(paper.name)} — profile {_esc(profile)}</h1>"]
    body.append("<p>Values in percent. diff = reproduced − paper; "
                f'<span class="meta">colour: |diff| ≤ {AGREE:g} green, ≤ {CLOSE:g} yellow, else red.</span></p>')
    if paper.declared_missing:
        missing = ", ".join(map(_esc, paper.declared_missing))
        body.append(f'<p class="failed">declared outputs missing: {missing}</p>')
    body.append("<h2>Notebooks</h2>" + _notebook_rows(paper))
    body.append("<h2>Tables</h2>")
    for entry in paper.tables:
        rel = str(entry.path.relative_to(root)) if entry.path else ""
        body.append(_html_table(entry, writers.get(rel)))
    body.append("<h2>Figures</h2>")
    if not paper.figures:
        body.append("<p>no figures</p>")
    for figure in paper.figures:
        src = f"figures/{paper.name}/{figure.path.name}"
        rel = str(figure.path.relative_to(root))
        writer = writers.get(rel)
        link = f' · written by <a href="{_esc(writer.html)}">{_esc(writer.name)}</a>' if writer and writer.html else ""
        body.append(f'<figure id="{_esc(figure.name)}"><img src="{_esc(src)}" alt="{_esc(figure.name)}">'
                    f"<figcaption><b>{_esc(figure.name)}</b> · {_esc(_describe(figure.meta))}{link}"
                    "</figcaption></figure>")
    return _page(f"{paper.name} ({profile})", _nav(papers, f"{paper.name}.html"), "\n".join(body))


def _index_page(papers: list[PaperEntry], profile: str) -> str:
    rows = []
    for paper in papers:
        statuses = [nb.record.get("status") for nb in paper.notebooks]
        reproduced = sum(t.ours is not None for t in paper.tables)
        matched = [split_comparison(t.comparison())[0] for t in paper.tables if t.comparison() is not None]
        both = pd.concat(matched) if matched else pd.DataFrame(columns=["diff"])
        rows.append(f'<tr><td><a href="{_esc(paper.name)}.html">{_esc(paper.name)}</a></td>'
                    f"<td>{statuses.count('ok')} ok, {statuses.count('failed')} failed</td>"
                    f"<td>{reproduced} of {len(paper.tables)}</td><td>{len(paper.figures)}</td>"
                    f"<td>{_esc(agreement_summary(both))}</td></tr>")
    git = results.git_revision()
    revision = f"git {git['commit'][:10]}{' (dirty)' if git['dirty'] else ''}" if git["commit"] else "no git"
    body = [f"<h1>adlib reproduction report — profile {_esc(profile)}</h1>",
            f'<p class="meta">built {time.strftime("%Y-%m-%d %H:%M:%S %Z")} · {_esc(revision)}</p>',
            "<table><tr><th>paper</th><th>notebooks</th><th>tables reproduced</th><th>figures</th>"
            f"<th>agreement with the paper</th></tr>{''.join(rows)}</table>"]
    if not papers:
        body.append("<p>nothing to report yet: run <code>python -m adlib reproduce</code></p>")
    return _page(f"adlib report ({profile})", _nav(papers, "index.html"), "\n".join(body))


def render_notebook(executed: Path, target: Path) -> None:
    """The executed notebook as standalone HTML with its images embedded; skipped when up to date."""
    if target.exists() and target.stat().st_mtime >= executed.stat().st_mtime:
        return
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(template_name="lab", embed_images=True).from_notebook_node(
        nbformat.read(executed, as_version=4))
    results.atomic_write_text(target, body)


def build_site(papers: list[PaperEntry], output_root: Path, profile: str) -> Path:
    site = Path(output_root) / "results" / profile / "site"
    for paper in papers:
        for nb in paper.notebooks:
            if nb.executed is not None:
                nb.html = f"notebooks/{paper.name}/{nb.name}.html"
                render_notebook(nb.executed, site / nb.html)
        for figure in paper.figures:
            target = site / "figures" / paper.name / figure.path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists() or target.stat().st_mtime < figure.path.stat().st_mtime:
                with results.atomic_path(target) as tmp:
                    shutil.copyfile(figure.path, tmp)
        results.atomic_write_text(site / f"{paper.name}.html", _paper_page(paper, papers, profile, Path(output_root)))
    return results.atomic_write_text(site / "index.html", _index_page(papers, profile))


# ----------------------------------------------------------------------------------------- Markdown
def _md_table(df: pd.DataFrame, columns: list[str], numeric: dict[str, bool]) -> str:
    rule = "|".join("---:" if c in numeric else "---" for c in columns)
    lines = ["| " + " | ".join(columns) + " |", f"|{rule}|"]
    for record in df.to_dict("records"):
        cells = []
        for column in columns:
            value = record.get(column)
            if column in numeric:
                cells.append(_fmt(value, numeric[column], record.get("metric")))
            else:
                cells.append("" if value is None or value != value else str(value).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_markdown(papers: list[PaperEntry], output_root: Path, profile: str) -> Path:
    keys = results.KEY_COLUMNS
    out = [f"# adlib reproduction report — profile `{profile}`", "",
           f"Built {time.strftime('%Y-%m-%d %H:%M:%S %Z')}. Values in percent; diff = reproduced − paper. "
           "The HTML version with rendered notebooks: [site/index.html](site/index.html).", ""]
    for paper in papers:
        writers = _writers(paper)
        out += [f"## {paper.name}", ""]
        for nb in paper.notebooks:
            r = nb.record
            link = f"[{nb.name}](site/{nb.html})" if nb.html else nb.name
            line = f"- {link} — {r.get('title', '')}: **{r.get('status', '?')}** in {r.get('seconds', 0):.1f} s"
            if r.get("error"):
                line += f" — {r['error']}" + (f" at `{r['failed_cell']}`" if r.get("failed_cell") else "")
            out.append(line)
        if paper.declared_missing:
            out.append(f"- **declared outputs missing:** {', '.join(paper.declared_missing)}")
        out.append("")
        for entry in paper.tables:
            out += [f"### {paper.name} / {entry.name}", ""]
            rel = str(entry.path.relative_to(Path(output_root))) if entry.path else ""
            writer = writers.get(rel)
            source = _describe(entry.meta) + (f" · written by `{writer.name}`" if writer else "")
            if source.strip(" ·"):
                out += [f"_{source.strip(' ·')}_", ""]
            if entry.error:
                out += [f"could not read this table: {entry.error}", ""]
            elif entry.ours is None:
                out += [f"not reproduced in this profile ({len(entry.paper)} paper rows)", ""]
            elif entry.paper is None:
                out += ["no paper table: reproduced numbers only", "",
                        _md_table(entry.ours, keys + ["value"], {"value": False}), ""]
            else:
                both, ours_only, paper_only = split_comparison(entry.comparison())
                out += [agreement_summary(both), ""]
                if not both.empty:
                    out += [_md_table(both, keys + ["paper", "ours", "diff"],
                                      {"paper": False, "ours": False, "diff": True}), ""]
                if not ours_only.empty:
                    ours_only = with_dataset_reference(ours_only, entry.paper)
                    columns = keys + ["ours"] + ([REFERENCE] if ours_only[REFERENCE].notna().any() else [])
                    note = f" (“{REFERENCE}”: the paper's number for the whole dataset, not the same data)" \
                        if REFERENCE in columns else ""
                    out += [f"Reproduced rows with no paper row of the same dataset and setting{note}:", "",
                            _md_table(ours_only, columns, {"ours": False, REFERENCE: False}), ""]
                if not paper_only.empty:
                    out += [f"<details><summary>paper rows not reproduced ({len(paper_only)})</summary>", "",
                            _md_table(paper_only, keys + ["paper"], {"paper": False}), "", "</details>", ""]
        if paper.figures:
            out += [f"### {paper.name} figures", ""]
        for figure in paper.figures:
            rel = Path("..", "..", figure.path.relative_to(Path(output_root)))
            out += [f"![{figure.name}]({rel.as_posix()})", "", f"_{figure.name} · {_describe(figure.meta)}_", ""]
    path = Path(output_root) / "results" / profile / "REPORT.md"
    return results.atomic_write_text(path, "\n".join(out) + "\n")


def build_report(output_root: str | Path, profile: str, notebook_root: str | Path | None = None,
                 papers: list[str] | None = None, paper_root: str | Path | None = None) -> Path:
    """Write REPORT.md and site/ for `profile` under `output_root`; returns the REPORT.md path.
    Paper tables are read from `<paper_root>/results/paper/` (default: the repository)."""
    entries = collect(Path(output_root), profile, papers, notebook_root, paper_root)
    build_site(entries, Path(output_root), profile)
    return build_markdown(entries, Path(output_root), profile)
