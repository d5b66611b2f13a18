"""The report (REPORT.md + static site) built from an output tree made here, without executing notebooks.

The fixture is a small but realistic collection of a fake paper "demo" with its own ``PaperSpec``: multi-seed
tables written with ``adlib.results`` (quality metrics in percent, model costs, image counts, a variant that
could not run, rows pooled over categories and under a second protocol), claims decided by
``adlib.study.claims`` on those tables, a figure, an executed notebook, a failed one and one never run; and a
second paper "nospec" with numbers but no spec.
"""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from nbformat.v4 import new_code_cell, new_notebook, new_output  # noqa: E402

from adlib import results
from adlib.app import report  # noqa: E402
from adlib.study import claims, tables  # noqa: E402
from adlib.study.spec import Claim, Floor, PaperSpec, ProfileSpec, Side, TableSpec  # noqa: E402

ORANGE = (255, 127, 14)  # matplotlib's tab:orange, the colour of the test figure's bars
SEEDS = (0, 1, 2)
SUB = "efficientnet_lite0 (for the paper's dinov2_vits14)"

SPEC = PaperSpec(
    name="demo", title="Demo: a fake paper for the report tests", method="demo",
    profiles={"smoke": ProfileSpec(description="2-core CPU, minutes", image_size=256, backbone="efficientnet_lite0",
                                   paper_backbone="dinov2_vits14", seeds=SEEDS)},
    methods={"demo": "Demo", "patchcore": "PatchCore"},
    claims=(
        Claim("beats_patchcore", "Demo has a higher pixel max-F1 than PatchCore.", "Sec. 4, Table 2", table="table2",
              metric="f1max", favoured=Side("Demo", {"method": "Demo"}), against=(Side("PatchCore", {"method": "PatchCore"}),),
              floor=Floor()),
        Claim("smaller", "Demo has fewer parameters than PatchCore.", "Sec. 5, Fig. 7", table="fig7", metric="params_m",
              level="model", higher_is_better=False, favoured=Side("Demo", {"method": "Demo"}),
              against=(Side("PatchCore", {"method": "PatchCore"}),)),
        Claim("never_checked", "Demo is robust to noise.", "Sec. 6, Table 4", table="table4", metric="auroc",
              favoured=Side("Demo", {"method": "Demo"}), against=(Side("PatchCore", {"method": "PatchCore"}),)),
    ),
    tables={
        "table1": TableSpec("Table 1: datasets", rows=("dataset",), columns=("metric",)),
        "table2": TableSpec("Table 2: pixel level at 1024 px", image_size=1024,
                            backbones={"Demo": "dinov2_vits14", "PatchCore": "wide_resnet50", "RD4AD": "wide_resnet50"}),
        "table3": TableSpec("Table 3: image level per category at 256 px", image_size=256,
                            backbones={"*": "efficientnet_lite0"}),
        "fig7": TableSpec("Fig. 7: training cost on one GPU", image_size=1024, backbones={"Demo": "dinov2_vits14"},
                          rows=("method",), columns=("metric",)),
        "table4": TableSpec("Table 4: robustness to noise"),
        "table5": TableSpec("Table 5: a private dataset", note="private data: only the paper's numbers"),
    },
    figures={"fig1": "Fig. 1: bars"},
)
SPECS = {"demo": SPEC}


def _rows(*rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=results.TABLE_COLUMNS)


def _bar_figure() -> plt.Figure:
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.bar(["image", "pixel"], [90, 88], color="tab:orange")
    return fig


def _data(source: str, size: int = 256) -> str:
    synthetic = "synthetic, " if source.startswith("synthetic") else ""
    return f"{source} ({synthetic}40 train / 16 test images, {size}px)"


def _runs(methods: dict, sources: list[str], level: str, metrics: dict, protocol: str = "exact",
          scope: str = "category", spread: float = 0.5, size: int = 256) -> list[dict]:
    """Rows as ``adlib.study.run_grid`` makes them: per method, source, seed and metric; ``metrics`` maps a
    metric to its value per method (the seeds scatter around it by ``spread``); quality rows carry test-image
    resamples (the same draws per source: paired), a chance level and the test images' identity."""
    rng = np.random.default_rng(0)
    out = []
    for method, backbone in methods.items():
        for source in sources:
            draws = np.random.default_rng(len(source)).normal(0, 0.3, 100)
            for seed in SEEDS:
                for metric, values in metrics.items():
                    value = values[method] + spread * rng.standard_normal()
                    evidence = {} if level == "model" else {"boot": (value + draws).astype(np.float32), "chance": 1.0,
                                                            "test_id": source}
                    out.append({"dataset": source, "method": method, "setting": "default", "level": level,
                                "metric": metric, "value": value, **evidence,
                                "backbone": backbone, "data": _data(source, size), "seed": seed,
                                "protocol": protocol if level != "model" else "", "class_setting": "one-class",
                                "image_size": size, "scope": scope, "note": ""})
    return out


def _write_paper_tables(root: Path) -> None:
    paper = root / "results" / "paper" / "demo"
    paper.mkdir(parents=True)
    counts = {"n_categories": 15, "train_normal": 3629, "test_normal": 467, "test_abnormal": 1258}
    _rows(*[["MVTec AD", "", "default", "data", k, v] for k, v in counts.items()],
          ["VisA", "", "default", "data", "n_categories", 12]).to_csv(paper / "table1.csv", index=False)
    pixel = {"Demo": (98.0, 60.0, 55.0), "PatchCore": (97.5, 55.0, 50.0), "RD4AD": (96.0, 50.0, 45.0)}
    _rows(*[[d, m, "default", "pixel", metric, v - (2 if d == "VisA" else 0)] for d in ("MVTec AD", "VisA")
            for m, values in pixel.items() for metric, v in zip(("auroc", "f1max", "ap"), values)]
          ).to_csv(paper / "table2.csv", index=False)
    image = {"Demo": (99.4, 99.8, 98.4), "PatchCore": (100.0, 100.0, 100.0), "RD4AD": (99.0, 99.0, 98.0)}
    _rows(*[["MVTec AD/bottle", m, "default", "image", metric, v] for m, values in image.items()
            for metric, v in zip(("auroc", "ap", "f1max"), values)]).to_csv(paper / "table3.csv", index=False)
    _rows(["", "Demo", "default", "model", "params_m", 22.7], ["", "Demo", "default", "model", "train_s", 389],
          ["", "Demo", "default", "model", "fps", 8.0], ["", "Demo", "default", "model", "epochs", 10],
          ["", "CDO", "default", "model", "epochs", 50]).to_csv(paper / "fig7.csv", index=False)
    _rows(["MVTec AD", "Demo", "noise=0.1", "image", "auroc", 97.0]).to_csv(paper / "table4.csv", index=False)
    _rows(["Button/Class1", "Demo", "default", "pixel", "auroc", 95.1]).to_csv(paper / "table5.csv", index=False)


def _write_reproduced(root: Path, profile: str) -> Path:
    common = dict(profile=profile, root=root)
    methods = {"Demo": SUB, "PatchCore": "efficientnet_lite0"}
    sources = ["synthetic_ad/grid", "MVTec AD/bottle"]
    stats = [["synthetic_ad", "", "default", "data", "n_categories", 5], ["synthetic_ad", "", "default", "data", "train_normal", 200],
             ["MVTec AD/bottle", "", "default", "data", "n_categories", 1], ["MVTec AD/bottle", "", "default", "data", "train_normal", 209],
             ["MVTec AD/bottle", "", "default", "data", "test_normal", 20], ["MVTec AD/bottle", "", "default", "data", "test_abnormal", 63]]
    results.write_table(_rows(*stats), "demo", "table1", backbone="none (image counts)",
                        data="synthetic_ad, MVTec AD/bottle", **common)

    pixel = {"auroc": {"Demo": 97.0, "PatchCore": 95.0}, "f1max": {"Demo": 45.0, "PatchCore": 40.0},
             "ap": {"Demo": 40.0, "PatchCore": 35.0}, "aupro": {"Demo": 90.0, "PatchCore": 88.0}}
    rows = _runs(methods, sources, "pixel", pixel)
    rows += _runs(methods, ["MVTec AD/bottle"], "pixel", pixel, protocol="ader")  # a second protocol
    rows += _runs({"Demo": SUB}, ["synthetic_multi"], "pixel", pixel, scope="pooled")  # pooled over categories
    rows += _runs(methods, sources, "model", {"params_m": {"Demo": 5.2, "PatchCore": 3.1}, "fps": {"Demo": 4.0, "PatchCore": 9.0}})
    table2 = pd.DataFrame(rows)
    results.write_table(table2, "demo", "table2", backbone=f"{SUB}, efficientnet_lite0",
                        data=", ".join(_data(s) for s in sources), **common)

    image = {"auroc": {"Demo": 99.5, "PatchCore": 97.0}, "ap": {"Demo": 99.7, "PatchCore": 97.5},
             "f1max": {"Demo": 98.0, "PatchCore": 96.0}}
    rows = _runs({"Demo": "efficientnet_lite0", "PatchCore": "efficientnet_lite0"}, ["MVTec AD/bottle"], "image", image,
                 spread=0.1)
    rows += [{"dataset": "MVTec AD/bottle", "method": "RD4AD", "setting": "default", "level": "image", "metric": m,
              "value": float("nan"), "backbone": "wide_resnet50", "data": "MVTec AD/bottle", "seed": s,
              "protocol": "exact", "class_setting": "one-class", "image_size": 256, "scope": "category",
              "note": "cannot be run in this setting: weights for wide_resnet50 cannot be had offline"}
             for s in SEEDS for m in ("auroc", "ap", "f1max")]
    results.write_table(pd.DataFrame(rows), "demo", "table3", backbone="efficientnet_lite0",
                        data=_data("MVTec AD/bottle"), **common)

    cost = _runs(methods, ["synthetic_ad/grid"], "model",
                 {"params_m": {"Demo": 5.2, "PatchCore": 3.1}, "train_s": {"Demo": 38.5, "PatchCore": 4.2},
                  "fps": {"Demo": 4.0, "PatchCore": 9.0}, "flops_g": {"Demo": 1.3, "PatchCore": 0.8},
                  "epochs": {"Demo": 4.0, "PatchCore": 1.0}}, spread=0.0)
    fig7 = pd.DataFrame(cost)
    results.write_table(fig7, "demo", "fig7", backbone=f"{SUB}, efficientnet_lite0",
                        data=_data("synthetic_ad/grid"), **common)

    ablation = pd.DataFrame(_runs({"Demo": SUB}, ["synthetic_ad/grid"], "pixel", {"f1max": {"Demo": 44.0}}))
    results.write_table(pd.concat([ablation.assign(setting="dirs=all"), ablation.assign(setting="dirs=row", value=ablation["value"] - 1)]),
                        "demo", "fig4", backbone=SUB, data=_data("synthetic_ad/grid"), **common)

    setting = SimpleNamespace(paper=SPEC, profile=profile, output_root=root, protocol="exact")
    claims.check(setting, table2, ["beats_patchcore"])
    claims.check(setting, fig7, ["smaller"])
    return root


def build_tree(root: Path, profile: str = "smoke") -> Path:
    """An output tree as `adlib reproduce` leaves it (see the module docstring); returns REPORT.md."""
    _write_paper_tables(root)
    _write_reproduced(root, profile)
    other = root / "results" / "paper" / "nospec"  # a paper folder without a spec
    other.mkdir(parents=True)
    _rows(["VisA", "Other", "default", "pixel", "auroc", 97.0]).to_csv(other / "table1.csv", index=False)
    results.write_table(_rows(["synthetic_ad/carpet", "Other", "default", "pixel", "auroc", 60.0],
                              ["VisA", "Other", "default", "pixel", "auroc", 96.5]),
                        "nospec", "table1", profile=profile, backbone="resnet18", data="synthetic_ad/carpet, VisA", root=root)

    fig = _bar_figure()
    figure = results.save_figure(fig, "demo", "fig1", profile=profile, backbone=SUB, data=_data("synthetic_ad/grid"), root=root)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)

    nb = new_notebook(cells=[new_code_cell("plot()", execution_count=1, outputs=[new_output(
        "display_data", data={"image/png": base64.b64encode(buffer.getvalue()).decode(), "text/plain": "<Figure>"})])])
    executed = root / "results" / profile / "executed" / "demo"
    executed.mkdir(parents=True)
    nbformat.write(nb, executed / "01_demo.ipynb")
    outputs = [f"results/{profile}/demo/{t}.csv" for t in ("table1", "table2", "table3", "fig7", "claims")]
    record = {"notebook": "demo/01_demo", "title": "Demo notebook", "status": "ok", "seconds": 1.5,
              "end": "2026-01-01T00:00:00+0000", "declared_outputs": outputs,
              "written_files": outputs + [str(figure.relative_to(root))]}
    (executed / "01_demo.run.json").write_text(json.dumps(record))
    failed = dict(record, notebook="demo/02_broken", title="Broken", status="failed", error="ValueError: boom",
                  failed_cell="In [3] (cell 4): boom()", written_files=[],
                  declared_outputs=[f"results/{profile}/demo/table4.csv", f"figures/{profile}/demo/never.png"])
    (executed / "02_broken.run.json").write_text(json.dumps(failed))
    late = {"notebook": "demo/04_late", "title": "Late", "status": "deferred", "declared_outputs": [],
            "error": "time budget spent before it started"}
    (executed / "04_late.run.json").write_text(json.dumps(late))
    notebooks = root / "notebooks" / "demo"
    notebooks.mkdir(parents=True)
    never = new_notebook()
    never.metadata["adlib"] = {"title": "Never run", "outputs": ["figures/{profile}/demo/fig9.png"]}
    nbformat.write(never, notebooks / "03_never.ipynb")
    return report.build_report(root, profile, paper_root=root, notebook_root=root / "notebooks", specs=SPECS)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    build_tree(root)
    return root


def _section(text: str, paper: str) -> str:
    """The Markdown section of one paper (from its heading to the next paper's)."""
    start = text.index(f"\n## {paper}")
    end = text.find("\n## ", start + 1)
    return text[start: end if end > 0 else None]


def _md_table_after(text: str, heading: str) -> list[list[str]]:
    """Rows of the first Markdown table after a heading containing `heading` (cells split on unescaped |)."""
    start = text.index(heading)
    block = text[text.rfind("\n", 0, start) + 1:]
    lines = [line for line in block.splitlines() if line.startswith("|")]
    first = block.splitlines().index(lines[0])
    table = []
    for line in block.splitlines()[first:]:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return table


def _entry(root: Path, paper: str = "demo", table: str | None = None):
    entries = {e.name: e for e in report.collect(root, "smoke", paper_root=root, notebook_root=root / "notebooks", specs=SPECS)}
    entry = entries[paper]
    return entry if table is None else next(t for t in entry.tables if t.name == table)


# ----------------------------------------------------------------------------------------- structure
def test_summary_with_claims_comes_first(tree):
    demo = _section((tree / "results/smoke/REPORT.md").read_text(), "demo")
    order = [demo.index(s) for s in ("**Summary.**", "### Claims", "### Tables", "#### Table 1", "### Figures", "### Notebooks")]
    assert order == sorted(order)
    summary = demo[: demo.index("### Tables")]
    assert "1 ok, 1 failed, 1 not started, 1 not run" in summary and "ValueError: boom" in summary
    assert "Claims: 1 held, 1 failed, 1 not run" in summary and "**failed: smaller**" in summary
    # what ran against what the paper used: the substitution is named
    setup = _md_table_after(summary, "here (profile smoke)")
    backbone = next(r for r in setup if r[0] == "backbone: Demo")
    assert backbone[1] == "efficientnet_lite0 (substitute)" and backbone[2] == "dinov2_vits14"
    assert next(r for r in setup if r[0] == "resolution (px)")[1:] == ["256", "1024, 256"]
    assert next(r for r in setup if r[0] == "seeds")[1] == "0, 1, 2"
    data = _md_table_after(summary, "| data source")
    grid = next(r for r in data if r[0] == "synthetic_ad/grid")
    assert grid[1:4] == ["synthetic", "40 / 16", "256"] and "table2" in grid[4] and "fig7" in grid[4]
    assert next(r for r in data if r[0] == "MVTec AD/bottle")[1] == "real"


def test_claims_table_has_verdicts_numbers_and_reasons(tree):
    rows = _md_table_after((tree / "results/smoke/REPORT.md").read_text(), "| claim | where")
    by_text = {r[0]: r for r in rows}
    beats = by_text["Demo has a higher pixel max-F1 than PatchCore."]
    assert beats[1] == "Sec. 4, Table 2" and beats[8] == "held"
    fav, other = beats[3].split(" vs ")
    assert re.fullmatch(r"\d+\.\d ± \d+\.\d", fav) and re.fullmatch(r"\d+\.\d ± \d+\.\d", other)
    assert beats[7] == "3" and beats[2] == "Demo vs PatchCore · pixel max-F1 (%)"
    assert re.fullmatch(r"\[\+\d+\.\d, \+\d+\.\d\]", beats[5]) and beats[6].startswith("1.0")  # interval, floor
    smaller = by_text["Demo has fewer parameters than PatchCore."]
    assert smaller[8] == "**failed**" and "Params (M)" in smaller[2] and smaller[5] == "does not apply"
    never = by_text["Demo is robust to noise."]
    assert never[8] == "not run" and "02_broken failed: ValueError: boom" in never[9]
    recorded = pd.read_csv(tree / "results/smoke/demo/claims.csv")
    assert set(recorded["verdict"]) <= set(claims.VERDICTS) and list(recorded.columns) == claims.COLUMNS


def test_report_is_short_and_keeps_long_rows_in_the_csvs(tree):
    text = (tree / "results/smoke/REPORT.md").read_text()
    demo = _section(text, "demo")
    assert len(demo.splitlines()) < 150
    assert "| synthetic_ad/grid | Demo | default | pixel" not in text  # no long-format rows
    assert "Values in percent" not in text
    md_dir = tree / "results/smoke"
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert "demo/table2.csv" in links and "../paper/demo/table2.csv" in links
    for link in links:
        assert (md_dir / link).resolve().exists(), link


# ----------------------------------------------------------------------------------------- comparability
def test_incomparable_rows_never_get_a_diff_or_an_agreement_count(tree):
    view = report.build_view(_entry(tree, table="table2"))
    shown = view.shown()
    assert shown and all(pd.isna(c["diff"]) for c in shown)
    beside = [c for c in shown if not pd.isna(c["ours"]) and not pd.isna(c["paper"])]
    assert beside and all("256 px, the paper 1024 px" in c["not_comparable"] for c in beside)
    assert all("the paper's number is for all of MVTec AD" in c["not_comparable"] for c in beside)  # bottle vs the mean
    assert report.headline(shown).startswith("No comparable cell in this profile: 6 cells stand beside")
    text = (tree / "results/smoke/REPORT.md").read_text()
    table2 = text[text.index("#### Table 2"): text.index("#### Table 3")]
    assert "Δ" not in table2 and "within 1 point" not in table2
    fig7 = text[text.index("#### Fig. 7"):]
    fig7 = fig7[: fig7.index("####", 5)]
    assert "Δ" not in fig7 and "speed depends on the hardware" in fig7


def test_comparable_rows_get_a_diff_and_only_they_are_counted(tree):
    view = report.build_view(_entry(tree, table="table3"))
    comparable = [c for c in view.shown() if not pd.isna(c["diff"])]
    assert {c["method"] for c in comparable} == {"Demo", "PatchCore"} and len(comparable) == 6
    for c in comparable:
        assert c["diff"] == pytest.approx(c["ours"] - c["paper"])
    demo_auroc = next(c for c in comparable if c["method"] == "Demo" and c["metric"] == "auroc")
    assert report.agreement(demo_auroc["diff"], demo_auroc["paper"], "auroc", "image") == "agree"
    assert report.headline(view.shown()).startswith("3 of 6 comparable cells agree with the paper (within 1 point")
    text = (tree / "results/smoke/REPORT.md").read_text()
    rows = _md_table_after(text, "#### Table 3")
    demo = next(r for r in rows if r[0] == "Demo")
    assert re.fullmatch(r"99\.\d ± 0\.\d \(99\.4\) \*\*Δ[+-]0\.\d\*\*", demo[1]), demo[1]
    # the index counts comparable cells only: table2's six side-by-side cells are not in it
    overview = _md_table_after(text, "| paper | notebooks")
    demo = next(r for r in overview if r[0].startswith("[demo]"))
    assert demo[4].startswith("3 of 6 agree") and demo[5] == "none comparable (8 side by side)"
    assert demo[7].startswith("6 quality cell(s) match the paper's data")


def test_comparability_rule():
    spec = TableSpec("t", image_size=1024, backbones={"A": "dinov2_vits14", "*": "wide_resnet50"}, protocol="ader",
                     class_setting="multi-class")
    row = {"dataset": "MVTec AD", "method": "A", "setting": "default", "level": "pixel", "metric": "auroc",
           "backbone": "dinov2_vits14", "image_size": 1024, "protocol": "ader", "class_setting": "multi-class"}
    assert tables.comparability(spec, row) == ""
    assert tables.comparability(spec, {**row, "image_size": "256"}) == "256 px, the paper 1024 px"
    assert "backbone efficientnet_lite0, the paper dinov2_vits14" in tables.comparability(
        spec, {**row, "backbone": "efficientnet_lite0 (for the paper's dinov2_vits14)"})
    assert tables.comparability(spec, {**row, "protocol": "exact"}) == "protocol exact, the paper ader"
    assert tables.comparability(spec, {**row, "class_setting": "one-class"}) == "one-class, the paper multi-class"
    assert tables.comparability(spec, {**row, "dataset": "synthetic_ad"}) == "synthetic data"
    assert tables.comparability(spec, {**row, "image_size": ""}) == "resolution not recorded"
    assert tables.comparability(spec, {**row, "setting": "backbone=vit_b16", "backbone": "vit_b16"}) == ""
    assert tables.comparability(spec, {**row, "method": "B", "backbone": "wide_resnet50"}) == ""
    assert "hardware" in tables.comparability(spec, {**row, "level": "model", "metric": "fps"})
    assert tables.comparability(None, row) == tables.NO_SPEC


def test_side_by_side_joins_unnamed_datasets_and_marks_references():
    paper = _rows(["", "A", "default", "model", "params_m", 22.7], ["MVTec AD", "A", "default", "pixel", "auroc", 97.0])
    ours = pd.DataFrame([{"dataset": "synthetic_ad/grid", "method": "A", "setting": "default", "level": "model",
                          "metric": "params_m", "value": 5.0, "backbone": "b", "seed": s} for s in SEEDS]
                        + [{"dataset": "MVTec AD/bottle", "method": "A", "setting": "default", "level": "pixel",
                            "metric": "auroc", "value": 99.0 + s, "backbone": "b", "seed": s} for s in SEEDS])
    out = tables.side_by_side(TableSpec("t"), paper, ours)
    params = out[out["metric"] == "params_m"].iloc[0]
    assert params["paper"] == 22.7 and params["ours"] == 5.0 and params["seeds"] == 3  # joined without a dataset
    bottle = out[out["dataset"] == "MVTec AD/bottle"].iloc[0]
    assert bottle["reference"] and bottle["paper"] == 97.0 and pd.isna(bottle["diff"])
    assert bottle["ours"] == pytest.approx(100.0) and bottle["ours_std"] == pytest.approx(1.0)
    whole = out[out["dataset"] == "MVTec AD"].iloc[0]
    assert not whole["from_ours"] and whole["not_comparable"] == "not run here"



def test_a_complete_dataset_is_compared_by_its_mean_not_its_categories():
    """The paper profile: every category ran, so the mean row stands against the paper's printed mean (and is
    comparable when everything else matches); the categories stay in the CSV."""
    spec = TableSpec("t", image_size=256, backbones={"*": "b"})
    paper = _rows(["MVTec AD", "A", "default", "pixel", "auroc", 97.0])
    base = {"method": "A", "setting": "default", "level": "pixel", "metric": "auroc", "backbone": "b",
            "image_size": 256, "protocol": "exact", "class_setting": "one-class"}
    ours = pd.DataFrame([{**base, "dataset": d, "value": v + s / 10, "seed": s, "scope": scope}
                         for s in SEEDS for d, v, scope in (("MVTec AD/a", 96.0, "category"), ("MVTec AD/b", 98.0, "category"),
                                                             ("MVTec AD", 97.0, "mean"))])
    view = report.build_view(report.TableEntry("t", ours=ours, paper=paper, spec=spec))
    assert view.col_values == [("MVTec AD", "auroc")]
    cell = view.cells[(("A",), ("MVTec AD", "auroc"))]
    assert cell["diff"] == pytest.approx(0.1) and cell["not_comparable"] == ""
    assert any("per-category rows of MVTec AD" in note for note in view.left_out)

# ----------------------------------------------------------------------------------------- cells and units
def test_units_are_right_per_metric(tree):
    text = (tree / "results/smoke/REPORT.md").read_text()
    fig7 = _md_table_after(text, "#### Fig. 7")
    header = fig7[0]
    assert header[1:] == ["Params (M)", "train time (s)", "FPS", "epochs"], header  # the paper's order
    assert "not shown: metrics the paper's table does not print (model flops_g)" in text
    demo = next(r for r in fig7 if r[0] == "Demo")
    assert demo[1].startswith("5.20 ± 0.00 (22.7)") and demo[2].startswith("38.5 ± 0.0 (389)")
    assert demo[3].startswith("4.00 ± 0.00 (8.00)") and demo[4].startswith("4 ± 0 (10)")
    table1 = _md_table_after(text, "#### Table 1")
    assert table1[0][1:3] == ["categories", "train normal"]
    bottle = next(r for r in table1 if r[0] == "MVTec AD/bottle")
    assert bottle[2].startswith("209 (3629)")  # counts as integers, the whole dataset for reference only
    table2 = _md_table_after(text, "#### Table 2")
    assert table2[0][1] == "synthetic_ad/grid · AUROC (%)"
    assert tables.format_value(0.0523, "params_m", "model") == "0.052"
    assert tables.format_value(389.0, "train_s", "model") == "389" and tables.format_value(2.54, "train_s", "model") == "2.54"
    assert tables.format_value(97.04, "auroc", "pixel") == "97.0" and tables.format_value(3629.0, "train_normal", "data") == "3629"
    assert tables.metric_label("train_h", "model") == "train_h (h)" and tables.metric_label("flops_g", "model") == "GFLOPs"


def test_blank_cells_carry_a_reason(tree):
    text = (tree / "results/smoke/REPORT.md").read_text()
    for heading in ("#### Table 1", "#### Table 2", "#### Table 3", "#### Fig. 7"):
        rows = _md_table_after(text, heading)[2:]
        for row in rows:
            for cell in row[1:]:
                if "–" in cell or "(" in cell and "Δ" not in cell:
                    assert re.search(r"[⁰¹²³⁴⁵⁶⁷⁸⁹]+$", cell), f"{heading}: {cell!r} has no note"
    table3 = text[text.index("#### Table 3"):text.index("#### Fig. 7")]
    rd4ad = next(r for r in _md_table_after(text, "#### Table 3") if r[0] == "RD4AD")
    assert rd4ad[1].startswith("– (99.0)")
    assert "not run here: cannot be run in this setting: weights for wide_resnet50 cannot be had offline" in table3
    table2 = text[text.index("#### Table 2"):text.index("#### Table 3")]
    assert "not in the paper" in table2  # synthetic columns
    assert "The paper's methods with nothing run here: RD4AD" in table2
    assert "The paper's datasets with nothing run here: VisA, MVTec AD (beside MVTec AD/bottle for reference only)" in table2
    assert "rows pooled over categories" in table2 and "rows under protocol ader (shown: exact)" in table2
    assert "pixel aupro" in table2 and "model params_m" in table2  # left out, said so
    site = (tree / "results/smoke/site/demo.html").read_text()
    assert re.search(r'<td class="num blank" title="not run here: cannot be run', site)


def test_paper_only_and_reproduced_only_tables_are_listed_with_reasons(tree):
    demo = _section((tree / "results/smoke/REPORT.md").read_text(), "demo")
    paper_only = demo[demo.index("#### Paper only"):demo.index("#### Reproduced only")]
    assert "table4](../paper/demo/table4.csv) — Table 4: robustness to noise: its notebook 02_broken failed: ValueError: boom" in paper_only
    assert "Table 5: a private dataset: no notebook reproduces it; private data: only the paper's numbers" in paper_only
    ours_only = demo[demo.index("#### Reproduced only"):demo.index("### Figures")]
    assert "[fig4](demo/fig4.csv) — 6 rows, Demo on synthetic_ad/grid" in ours_only


def test_figures_and_notebooks_with_provenance(tree):
    demo = _section((tree / "results/smoke/REPORT.md").read_text(), "demo")
    assert "- ![fig1](../../figures/smoke/demo/fig1.png) **fig1** — Fig. 1: bars · profile smoke · backbone " + SUB in demo
    assert "written by [01_demo](site/notebooks/demo/01_demo.html)" in demo
    notebooks = demo[demo.index("### Notebooks"):]
    assert "- 1 ran ok (2 s in all): [01_demo](site/notebooks/demo/01_demo.html)" in notebooks
    assert "**failed** in 1.5 s" in notebooks and "at `In [3] (cell 4): boom()`" in notebooks
    assert "`03_never` — Never run: **not run**" in notebooks
    assert "`04_late` — Late: **not started** — the time budget was spent before it started" in notebooks
    assert "**Declared outputs missing:** " in notebooks and "figures/smoke/demo/never.png" in notebooks


def test_paper_without_a_spec_still_renders(tree):
    text = (tree / "results/smoke/REPORT.md").read_text()
    other = _section(text, "nospec")
    assert "**No spec:** no spec given" in other
    rows = _md_table_after(other, "#### `table1`")
    assert rows[0] == ["method", "synthetic_ad/carpet · AUROC (%)", "VisA · AUROC (%)"]
    assert rows[2][2].startswith("96.5 (97.0)") and "Δ" not in other
    assert tables.NO_SPEC in other


def _varad_like(root: Path) -> None:
    """What VarAD's nine smoke notebooks leave (the tables, variants, claims and figures they write), with
    made-up numbers, under the real VarAD spec: 256 px, EfficientNet-Lite0 for DINOv2, 3 seeds."""
    from adlib import papers

    spec = papers.get("varad")
    methods = {"VarAD": SUB, "PatchCore": "efficientnet_lite0"}
    sources = ["synthetic_ad/bottle", "MVTec AD/bottle"]
    quality = {m: {"VarAD": 60.0, "PatchCore": 55.0} for m in ("auroc", "f1max", "ap", "aupro")}
    write = dict(profile="smoke", backbone=SUB, data="see rows", root=root)
    main = pd.DataFrame(_runs(methods, sources, "pixel", quality) + _runs(methods, sources, "image", quality)
                        + _runs(methods, sources, "model", {"params_m": {"VarAD": 5.0, "PatchCore": 3.0},
                                                            "train_s": {"VarAD": 40.0, "PatchCore": 4.0}}))
    results.write_table(main[main["level"] != "image"], "varad", "table2", **write)
    results.write_table(main[main["level"] == "image"], "varad", "table3", **write)
    one = {"VarAD": SUB}
    ablation = []
    for labels, value in ((["dirs=all", "dirs=row_tl", "dirs=row_br", "dirs=col_tr", "dirs=col_bl"], 50.0),
                          (["m=1", "m=2", "m=4", "m=6"], 48.0), (["adapter=w/o", "adapter=linear", "adapter=resblock"], 45.0),
                          (["layers=all", "layers=2", "layers=3", "deeper=2+3+4"], 47.0)):
        for i, label in enumerate(labels):
            rows = pd.DataFrame(_runs(one, sources[:1], "pixel", {"f1max": {"VarAD": value - i}}, size=128))
            ablation.append(rows.assign(setting=label))
    results.write_table(pd.concat(ablation), "varad", "fig4", **write)
    backbones = ["vit_b16", "dinov2_vits14", "efficientnet_lite0"]
    no_weights = "cannot be run in this setting: no offline weights"
    table4 = pd.concat([pd.DataFrame(_runs({"VarAD": b}, sources[:1], "pixel", {m: {"VarAD": 50.0} for m in ("auroc", "f1max", "ap")}))
                        .assign(setting=f"backbone={b}") for b in backbones[2:]]
                       + [pd.DataFrame(_runs({"VarAD": b}, sources[:1], "pixel", {m: {"VarAD": 0.0} for m in ("auroc", "f1max", "ap")}))
                          .assign(setting=f"backbone={b}", value=float("nan"), note=no_weights) for b in backbones[:2]]
                       + [pd.DataFrame(_runs({"VarAD": b}, sources[:1], "model", {"params_m": {"VarAD": 20.0}, "fps": {"VarAD": 2.0}}))
                          .assign(setting=f"backbone={b}", dataset="") for b in backbones])
    results.write_table(table4, "varad", "table4", **write)
    fig5 = pd.concat([pd.DataFrame(_runs(methods, ["synthetic_hr/wafer"], "pixel", {m: {"VarAD": 40.0 + r / 64, "PatchCore": 40.0}
                                                                                    for m in ("auroc", "f1max", "ap")}, size=r))
                      .assign(setting=f"res={r}") for r in (128, 256, 512)])
    results.write_table(fig5, "varad", "fig5", **write)
    fig7 = pd.DataFrame(_runs(methods, sources[:1], "model", {"params_m": {"VarAD": 5.0, "PatchCore": 3.0},
                                                             "train_s": {"VarAD": 40.0, "PatchCore": 4.0},
                                                             "fps": {"VarAD": 3.0, "PatchCore": 9.0},
                                                             "epochs": {"VarAD": 4.0, "PatchCore": 1.0}}))
    results.write_table(fig7, "varad", "fig7", **write)
    counts = [[d, "", "default", "data", k, v] for d in ("synthetic_ad", "MVTec AD/bottle")
              for k, v in (("n_categories", 1), ("train_normal", 209), ("test_normal", 20), ("test_abnormal", 63))]
    results.write_table(_rows(*counts), "varad", "table1", **write)
    setting = SimpleNamespace(paper=spec, profile="smoke", output_root=root, protocol="exact")
    for table, frame in (("table2", main), ("fig4", pd.concat(ablation)), ("fig5", fig5), ("fig7", fig7)):
        claims.check(setting, frame, [c.id for c in spec.claims if c.table == table])
    fig = _bar_figure()
    first = results.save_figure(fig, "varad", "fig3", profile="smoke", backbone=SUB, data="synthetic_ad/bottle", root=root)
    plt.close(fig)
    for name in list(spec.figures)[1:] + [f"walkthrough_{i}" for i in range(6)]:  # copies: drawing is slow
        shutil.copyfile(first, first.with_name(f"{name}.png"))
        shutil.copyfile(results.meta_path(first), results.meta_path(first.with_name(f"{name}.png")))
    executed = root / "results" / "smoke" / "executed" / "varad"
    executed.mkdir(parents=True)
    for i in range(9):
        record = {"title": f"notebook {i}", "status": "ok", "seconds": 60.0, "end": "2026-01-01T00:00:00+0000"}
        (executed / f"0{i}_notebook.run.json").write_text(json.dumps(record))


def test_real_paper_spec_full_smoke_collection_fits_one_screen(tmp_path):
    """The VarAD spec with the repository's printed numbers and a whole smoke collection's outputs: a 256 px
    CPU run on a substitute backbone is never comparable with the 1024 px paper, and the section stays short."""
    _varad_like(tmp_path)
    text = report.build_report(tmp_path, "smoke", papers=["varad"]).read_text()
    varad = _section(text, "varad")
    assert len(varad.splitlines()) < 150, len(varad.splitlines())
    assert "**Δ" not in text and "No comparable cell in this profile" in varad
    for name in ("table1", "table2", "table3", "table4", "fig5", "fig7"):
        assert f"`{name}`" in varad
    assert "dinov2_vits14" in varad and "efficientnet_lite0 (substitute)" in varad
    recorded = pd.read_csv(tmp_path / "results/smoke/varad/claims.csv")
    assert {c.id for c in __import__("adlib.papers", fromlist=["get"]).get("varad").claims} == set(recorded["claim"])
    table4 = _md_table_after(varad, "#### Table IV")
    vit = next(r for r in table4 if r[0] == "backbone=vit_b16")
    assert vit[1].startswith("–") and re.search(r"[⁰¹²³⁴⁵⁶⁷⁸⁹]$", vit[1])
    assert "not run here: cannot be run in this setting: no offline weights; not in the paper" in varad


# ----------------------------------------------------------------------------------------- site
def _local_links(page: Path) -> list[str]:
    text = page.read_text()
    links = re.findall(r'(?:href|src)="([^"]+)"', text)
    return [link for link in links if not re.match(r"(https?:|data:|#|mailto:)", link)]


def test_site_links_are_relative_and_resolve(tree):
    site = tree / "results/smoke/site"
    pages = sorted(site.rglob("*.html"))
    assert {p.relative_to(site).as_posix() for p in pages} >= {
        "index.html", "demo.html", "nospec.html", "notebooks/demo/01_demo.html"}
    for page in pages:
        assert str(tree) not in page.read_text(), f"{page} has an absolute path"
        for link in _local_links(page):
            assert (page.parent / link.split("#")[0]).exists(), f"{page.name}: broken link {link}"
    demo = (site / "demo.html").read_text()
    assert 'src="figures/demo/fig1.png"' in demo and 'href="notebooks/demo/01_demo.html"' in demo
    assert 'href="data/demo/table2.csv"' in demo and 'href="data/demo/paper/table2.csv"' in demo
    assert demo.index("Summary.") < demo.index(">Claims<") < demo.index(">Tables<")
    assert '<th colspan="3">MVTec AD/bottle</th>' in demo  # the paper's two-level header: dataset over metrics
    assert re.search(r'<td class="num agree" title="comparable: ours − paper = [+-]0\.\d">', demo)
    assert 'class="num differs"' not in (site / "demo.html").read_text().split("Table 3")[0]
    assert "ValueError: boom" in demo and "not run" in demo
    index = (site / "index.html").read_text()
    assert "quality cells" in index and 'href="demo.html"' in index


def test_rebuild_is_incremental(tree):
    rendered = tree / "results/smoke/site/notebooks/demo/01_demo.html"
    before = rendered.stat().st_mtime_ns
    report.build_report(tree, "smoke", paper_root=tree, specs=SPECS)
    assert rendered.stat().st_mtime_ns == before  # unchanged executed notebook: not rendered again


def test_notebook_root_lists_notebooks_not_run(tmp_path):
    notebooks = tmp_path / "notebooks" / "demo"
    notebooks.mkdir(parents=True)
    nbformat.write(new_notebook(), notebooks / "01_never.ipynb")
    report.build_report(tmp_path / "out", "smoke", notebook_root=tmp_path / "notebooks", paper_root=tmp_path, specs={})
    assert "01_never" in (tmp_path / "out/results/smoke/REPORT.md").read_text()
    assert "not run" in (tmp_path / "out/results/smoke/site/demo.html").read_text()


def test_empty_tree_still_builds(tmp_path):
    path = report.build_report(tmp_path, "paper", paper_root=tmp_path, specs={})
    assert path.exists() and "nothing to report" in (tmp_path / "results/paper/site/index.html").read_text()


def test_front_page_counts_kinds_apart_and_lists_the_main_paper_first(tmp_path):
    """Quality cells, cost/count cells and 0/1 architecture properties are counted apart; a printed table counts
    as reproduced only with a computed row; the main paper comes first and is marked; its Faithfulness part says
    what the release allows and shows the recorded checks."""
    profile = ProfileSpec(description="CPU", image_size=256, backbone="b", paper_backbone="b", seeds=SEEDS)
    ticks = TableSpec("Table 4: properties (1 = yes)", rows=("method",), columns=("metric",))
    quality = TableSpec("Table 2: pixel level", image_size=256, backbones={"*": "b"})
    specs = {"alpha": PaperSpec(name="alpha", title="Alpha", method="alpha", profiles={"smoke": profile},
                                tables={"table4": ticks, "table2": quality}),
             "zeta": PaperSpec(name="zeta", title="Zeta", method="zeta", profiles={"smoke": profile}, main=True,
                               methods={"zeta": "Zeta"}, reference_code="The release holds no readable code.")}
    for name in specs:
        (tmp_path / "results" / "paper" / name).mkdir(parents=True)
    _rows(["", "A", "default", "model", "pyramidal_encoder", 1.0], ["", "A", "default", "model", "heavy_fuser", 0.0]
          ).to_csv(tmp_path / "results/paper/alpha/table4.csv", index=False)
    _rows(["MVTec AD", "A", "default", "pixel", "auroc", 97.0]).to_csv(tmp_path / "results/paper/alpha/table2.csv", index=False)
    write = dict(profile="smoke", backbone="b", data="d", root=tmp_path)
    results.write_table(_rows(["", "A", "default", "model", "pyramidal_encoder", 1.0],
                              ["", "A", "default", "model", "heavy_fuser", 0.0]), "alpha", "table4", **write)
    not_run = _rows(["MVTec AD", "A", "default", "pixel", "auroc", float("nan")]).assign(note="no data here")
    results.write_table(not_run, "alpha", "table2", **write)
    faithful = tmp_path / "results" / "faithfulness"
    faithful.mkdir(parents=True)
    pd.DataFrame([{"component": "selective scan", "reference_file": "reference loop", "commit": "",
                   "largest_difference": "3e-7", "status": "ok", "reason": "within 1e-5"}]).to_csv(faithful / "zeta.csv", index=False)
    text = report.build_report(tmp_path, "smoke", paper_root=tmp_path, specs=specs).read_text()
    overview = _md_table_after(text, "| paper | notebooks")[2:]
    assert [r[0].split("]")[0] for r in overview] == ["[zeta", "[alpha"] and "**(main paper)**" in overview[0][0]
    alpha = overview[1]
    assert alpha[3] == "1 of 2 with a computed row"  # the not-run table2 does not count
    assert alpha[4] == "none here" and alpha[5] == "none here" and alpha[6].startswith("2 of 2 agree")
    assert text.index("\n## zeta") < text.index("\n## alpha")
    zeta = _section(text, "zeta")
    assert "### Faithfulness" in zeta and "The release holds no readable code." in zeta
    rows = _md_table_after(zeta, "| model | component")
    assert rows[2][:2] == ["zeta", "selective scan"] and rows[2][5] == "ok"
    assert "### Faithfulness" not in _section(text, "alpha")
    site = (tmp_path / "results/smoke/site/zeta.html").read_text()
    assert 'href="data/zeta/zeta.csv"' in site and (tmp_path / "results/smoke/site/data/zeta/zeta.csv").exists()
