"""No measured number is typed into a notebook's prose (issue 23): measured numbers reach prose through code.

The convention, per sentence of a markdown cell (list items, table rows and headings count as sentences):

1. **What counts as a number that states a result**: a decimal number (``40.5``, ``0.7``), a "±" expression, or
   any number next to a metric name (``max-F1 about 42``, ``86.6 Avg``, ``mAD 86``, ``93 % AUROC``; metric names
   in ``METRIC``), or a decimal with a cost unit (``38.6 M``, ``1.1 h``, ``2.5 s``).
2. **Not a result**: a reference (a number right after "Sec.", "§", "Eq.", "Table", "Tab.", "Fig.", "row",
   "stage", "block", "layer", "step", "v"); a size or a count with its unit (``128 px``, ``1024×1024``,
   ``3 epochs``, ``40 test images``, ``3 seeds``, ``4 categories``); anything inside a code span (settings are
   written as code: ```mask_ratio=0.2```), inside LaTeX (``$m = 4$``) or inside a link target.
3. **A quotation of the paper** is allowed: the sentence names the table or figure it comes from ("(Tab. 8)",
   "Table VII", "Fig. 5"), and where the repository has that table's printed numbers
   (``results/paper/<paper>/<table>.csv``, for every table or figure the sentence names), every quoted number must
   be one of them (at its printed precision) or appear in the table's labels (a setting such as ``block-0.2``). A
   number the paper prints in another table than the one named, or a misquote (75.7 where the paper prints 75.6),
   fails. A constant stated as such ("a constant score has AUROC 50 at chance") is not a result.

Everything else is a typed measured number: render it from the results in a code cell instead
(``claims.closing``, ``claims.explain``, ``study.pivot``, an f-string over a table).

Notebooks in ``PENDING`` still type numbers (the chapters are rewritten after the library change that brought
this test); each is an expected failure until its chapter is fixed, then it must be removed from the set. Every
other notebook must pass.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*/*.ipynb"))
PAPER_TABLES = ROOT / "results" / "paper"

METRIC = (r"(?:m?AU-?ROC|AU-?PRO|m?AP|(?:max-?)?F1(?:[- ]?max)?|mAD|Avg\.?|accuracy|FPS|GFLOPs|FLOPs|Params|"
          r"parameters|AUC)")
NUMBER = r"\d+(?:\.\d+)?"
REFERENCE_BEFORE = re.compile(r"(?:Sec\.|Section|Sections|§|Eqs?\.|Equations?|Tab\.|Tables?|Figs?\.|Figures?|"
                              r"Appendix|rows?|stages?|blocks?|layers?|steps?|v|version|Lemma|Theorem|arXiv)"
                              r"\s*(?:[\w.]+\s*(?:[-–]|,|and|to)\s*)*$", re.IGNORECASE)  # "Sec. 4.2-4.4", "rows 5-7"
CONSTANT_BEFORE = re.compile(r"(?:chance|random guess|constant score|same score)[^.;]{0,40}$", re.IGNORECASE)  # AUROC 50 at chance
UNIT_AFTER = re.compile(r"^\s*(?:px|pixels\b|[×x]\s*\d|epochs?|(?:training |test |normal |defective |anomalous )?"
                        r"images?|seeds?|categor(?:y|ies)|channels?|tokens?|directions?|heads?|bits?|threads?|cores?|"
                        r"workers?|batch|classes|regions?|defects?|-?d\b|-?dim)", re.IGNORECASE)
COST_AFTER = re.compile(r"^\s*(?:M|G|GB|MB|h|s|ms|min)\b")
TABLE_REF = re.compile(r"\b(Tab\.|Tables?|Figs?\.|Figures?)\s*((?:[A-Z]?\d+|[IVX]+)(?:\s*(?:,|and|-|–|to)\s*"
                       r"(?:[A-Z]?\d+|[IVX]+))*)")
ABBREVIATIONS = {"tab", "fig", "figs", "sec", "eq", "eqs", "e.g", "i.e", "al", "vs", "cf", "approx", "no", "resp",
                 "etc", "ca"}
ROMAN = {"I": 1, "II": 2, "III": 3, "IV": 4, "V": 5, "VI": 6, "VII": 7, "VIII": 8, "IX": 9, "X": 10, "XI": 11,
         "XII": 12, "XIII": 13, "XIV": 14, "XV": 15}

# Notebooks that typed measured numbers when this test came in (see the module docstring); fixed ones leave.
PENDING: set[str] = set()


def clean(text: str) -> str:
    """Prose only: code spans, LaTeX, link targets, HTML comments and URLs taken out."""
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.S)
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\$\$.*?\$\$", " ", text, flags=re.S)
    text = re.sub(r"\$[^$]*\$", " ", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    return re.sub(r"https?://\S+", " ", text)


def sentences(text: str) -> list[str]:
    """Sentences of a markdown cell; each line that starts a list item or a heading starts one, and a markdown
    table is one sentence together with the sentence just before it (its caption)."""
    out: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        if paragraph.lstrip().startswith("|"):  # a table: its rows go with their caption
            caption = out.pop() if out else ""
            out.append(" ".join(f"{caption} {paragraph}".split()))
            continue
        for block in re.split(r"\n(?=\s*(?:[-*+]\s|\d+\.\s|#))", paragraph):
            start = 0
            for match in re.finditer(r"[.!?](?=\s+[A-Z(*\"'])", block):
                word = re.search(r"([A-Za-z.]+)$", block[start:match.start()])
                if word and word.group(1).lower().rstrip(".") in ABBREVIATIONS:
                    continue
                out.append(" ".join(block[start:match.end()].split()))
                start = match.end()
            out.append(" ".join(block[start:].split()))
    return [s for s in out if s]


def results_in(sentence: str) -> list[tuple[int, str]]:
    """(position, number) of each number in the sentence that states a result (rule 1 less rule 2)."""
    found: dict[int, str] = {}
    for match in re.finditer(NUMBER, sentence):
        value, start, end = match.group(0), match.start(), match.end()
        if re.match(r"[\w.]", sentence[end:end + 1] or " ") and not sentence[end:end + 1] == ".":
            continue  # part of a word or label (k5, 3x3, v2)
        if start and re.match(r"[\w.]", sentence[start - 1]):
            continue
        before, after = sentence[:start], sentence[end:]
        if REFERENCE_BEFORE.search(before.rstrip()) or CONSTANT_BEFORE.search(before):
            continue
        decimal = "." in value
        near_metric = re.search(METRIC + r"\W+(?:[a-z]+\W+){0,2}$", before) or re.match(r"\s*%?\s*" + METRIC, after)
        plus_minus = re.match(r"\s*±", after) or re.search(r"±\s*$", before)
        if UNIT_AFTER.match(after):
            continue
        if decimal or near_metric or plus_minus or (decimal and COST_AFTER.match(after)):
            found[start] = value
    return sorted(found.items())


def table_names(sentence: str) -> list[str]:
    """The paper's tables and figures a sentence names, as file stems ("Table VII" -> table7, "Fig. 5" -> fig5)."""
    names = []
    for kind, refs in TABLE_REF.findall(sentence):
        prefix = "fig" if kind.lower().startswith("fig") else "table"
        for ref in re.findall(r"[A-Z]?\d+|[IVX]+", refs):
            names.append(prefix + (str(ROMAN[ref]) if ref in ROMAN else ref))
    return names


@lru_cache(maxsize=None)
def printed(paper: str, name: str) -> tuple[set, str] | None:
    """The numbers (as printed strings at 1-2 decimals) and the label text of a paper table, None without one."""
    path = PAPER_TABLES / paper / f"{name}.csv"
    if not path.exists():
        return None
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    values = set()
    for v in pd.to_numeric(table["value"], errors="coerce").dropna():
        values |= {f"{v:.0f}", f"{v:.1f}", f"{v:.2f}", f"{v:.3f}", f"{100 * v:.1f}" if v <= 1 else f"{v:.1f}",
                   f"{v / 1000:.1f}", f"{v / 1024:.1f}"}  # MB printed as GB
    labels = " ".join(" ".join(table[c].astype(str)) for c in table.columns if c != "value")
    return values, labels


def offences(paper: str, source: str) -> list[str]:
    """Why each typed number of one markdown cell breaks the convention."""
    out = []
    for sentence in sentences(clean(source)):
        numbers = results_in(sentence)
        if not numbers:
            continue
        names = table_names(sentence)
        if not names:
            out += [f"{value!r} in: {sentence[:160]}" for _, value in numbers]
            continue
        tables = [t for t in (printed(paper, n) for n in names) if t is not None]
        if len(tables) < len(names):
            continue  # it may quote a figure or table the repository has no numbers for
        for _, value in numbers:
            if any(value in values or re.search(rf"(?<![\d.]){re.escape(value)}(?![\d])", labels)
                   for values, labels in tables):
                continue
            out.append(f"{value!r} is not a number of {', '.join(names)}: {sentence[:160]}")
    return out


def notebook_offences(path: Path) -> list[str]:
    paper = path.parent.name
    cells = json.loads(path.read_text())["cells"]
    return [f"cell {i}: {o}" for i, cell in enumerate(cells) if cell["cell_type"] == "markdown"
            for o in offences(paper, "".join(cell["source"]))]


def _case(path: Path):
    name = f"{path.parent.name}/{path.stem}"
    marks = [pytest.mark.xfail(reason="typed numbers in this chapter's prose are fixed in its rewrite (issue 23); "
                                      "remove it from PENDING then", strict=False)] if name in PENDING else []
    return pytest.param(path, id=name, marks=marks)


@pytest.mark.parametrize("path", [_case(p) for p in NOTEBOOKS])
def test_no_measured_number_is_typed_in_prose(path):
    found = notebook_offences(path)
    assert not found, f"{path.relative_to(ROOT)} types measured numbers:\n" + "\n".join(found)


def test_the_convention_tells_quotes_from_typed_results():
    assert results_in("pixel max-F1 about 42 over 3 seeds") == [(19, "42")]
    assert results_in("at 128 px with 40 test images, 3 epochs, seeds 0, 1, 2 (Sec. 4.3, Eq. 4)") == []
    assert [v for _, v in results_in("mAD 86.0 against 82.3 and 81.7")] == ["86.0", "82.3", "81.7"]
    assert [v for _, v in results_in("image AUROC 93.5 ± 4.0")] == ["93.5", "4.0"]
    assert table_names("On VisA (Table VII) it reports mAD 75.7; Tab. 8 and Fig. 5, Tables A1-A12") == \
        ["table7", "table8", "fig5", "tableA1", "tableA12"]
    assert sentences("The paper (Tab. 8) prints 86.6. Ours is 80.1 here.\n- a list item 3.5") == \
        ["The paper (Tab. 8) prints 86.6.", "Ours is 80.1 here.", "- a list item 3.5"]
    # a misquote of a printed table fails, the printed number passes, our number with no reference fails
    assert offences("ladmim", "The histogram is best (Tab. 8: 86.6 Avg).") == []
    assert offences("ladmim", "The histogram is best (Tab. 8: 86.9 Avg).")
    assert offences("varad", "Here VarAD reaches max-F1 40.5 on washer.")
    assert offences("varad", "Settings are code: `mask_ratio=0.2`, $m = 4$, 1024×1024 px.") == []
    assert offences("ladmim", "A constant score is at chance (AUROC 50); see Sec. 4.2-4.4.") == []
    caption = "The paper's Table II (pixel AUROC / max-F1 / AP):\n\n| data | PatchCore |\n| --- | --- |\n| MVTec AD | 95.8 / 60.1 |"
    assert offences("varad", caption) == [] and offences("varad", caption.replace("Table II", "table"))


def last_code_cell(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    code = [("".join(c["source"])) for c in cells if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    return code[-1] if code else ""


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[f"{p.parent.name}/{p.stem}" for p in NOTEBOOKS])
def test_every_chapter_ends_with_its_verdicts(path):
    """Issue 23 item 4: each notebook closes with a verdicts section rendered from claims.csv and the tables by
    ``claims.closing`` (its "## Verdicts" heading, what held, failed, was not testable here, and why), never with
    hand-written prose: the last code cell renders it."""
    assert "claims.closing(" in last_code_cell(path), \
        f"{path.relative_to(ROOT)}: the last code cell does not render claims.closing(...)"
