"""The report (REPORT.md + static site) built from an output tree made here, without executing notebooks."""
from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from nbformat.v4 import new_code_cell, new_notebook, new_output  # noqa: E402

from adlib import report, results  # noqa: E402

ORANGE = (255, 127, 14)  # matplotlib's tab:orange, the colour of the test figure's bars


def _rows(*rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=results.TABLE_COLUMNS)


def _bar_figure() -> plt.Figure:
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.bar(["image", "pixel"], [90, 88], color="tab:orange")
    return fig


def build_tree(root: Path, profile: str = "smoke") -> Path:
    """An output tree as `adlib reproduce` leaves it: paper tables, reproduced tables and figures with
    sidecars, one executed notebook (with an image output) and its run record."""
    paper_dir = root / "results" / "paper" / "demo"
    paper_dir.mkdir(parents=True)
    _rows(["MVTec AD", "Demo", "default", "image", "auroc", 90.5],
          ["MVTec AD", "Demo", "default", "pixel", "auroc", 95.0],
          ["VisA", "Demo", "default", "image", "auroc", 85.0]).to_csv(paper_dir / "table1.csv", index=False)
    _rows(["MVTec AD", "Demo", "m=4", "pixel", "aupro", 80.0]).to_csv(paper_dir / "table2.csv", index=False)
    common = dict(profile=profile, backbone="efficientnet_lite0", data="synthetic_ad", root=root)
    results.write_table(_rows(["MVTec AD", "Demo", "default", "image", "auroc", 90.0],
                              ["synthetic_ad/grid", "Demo", "default", "image", "auroc", 75.0]),
                        "demo", "table1", **common)
    results.write_table(_rows(["synthetic_ad/grid", "Demo", "default", "model", "fps", 3.5]),
                        "demo", "table3", **common)
    # a paper whose reproduced rows use other dataset names than the paper's rows: shown side by side
    synth_paper = root / "results" / "paper" / "other"
    synth_paper.mkdir(parents=True)
    _rows(["VisA", "Other", "default", "pixel", "auroc", 97.0]).to_csv(synth_paper / "table1.csv", index=False)
    results.write_table(_rows(["synthetic_ad/carpet", "Other", "default", "pixel", "auroc", 60.0]),
                        "other", "table1", **common)

    fig = _bar_figure()
    figure = results.save_figure(fig, "demo", "fig1", **common)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)

    nb = new_notebook(cells=[new_code_cell("plot()", execution_count=1, outputs=[new_output(
        "display_data", data={"image/png": base64.b64encode(buffer.getvalue()).decode(), "text/plain": "<Figure>"})])])
    executed = root / "results" / profile / "executed" / "demo"
    executed.mkdir(parents=True)
    nbformat.write(nb, executed / "01_demo.ipynb")
    record = {"notebook": "demo/01_demo", "title": "Demo notebook", "status": "ok", "seconds": 1.5,
              "end": "2026-01-01T00:00:00+0000", "declared_outputs": ["results/smoke/demo/table1.csv"],
              "written_files": ["results/smoke/demo/table1.csv", str(figure.relative_to(root))]}
    (executed / "01_demo.run.json").write_text(json.dumps(record))
    failed = dict(record, notebook="demo/02_broken", title="Broken", status="failed", error="ValueError: boom",
                  failed_cell="In [3] (cell 4): boom()", declared_outputs=["figures/smoke/demo/never.png"],
                  written_files=[])
    (executed / "02_broken.run.json").write_text(json.dumps(failed))
    return report.build_report(root, profile, paper_root=root)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    build_tree(root)
    return root


def test_markdown_report_shows_paper_beside_reproduced(tree):
    text = (tree / "results/smoke/REPORT.md").read_text()
    assert "| MVTec AD | Demo | default | image | auroc | 90.5 | 90.0 | -0.5 |" in text
    assert "1 row matches the paper: 1 agree" in text
    assert "not reproduced in this profile (1 paper rows)" in text  # table2: paper only
    assert "no paper table: reproduced numbers only" in text  # table3: reproduced only
    assert "| synthetic_ad/grid | Demo | default | image | auroc | 75.0 |" in text
    assert "backbone efficientnet_lite0 · data synthetic_ad" in text
    assert "**failed**" in text and "ValueError: boom" in text and "In [3]" in text
    assert "declared outputs missing:** figures/smoke/demo/never.png" in text
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (tree / "results/smoke" / link).resolve().exists(), link


def _local_links(page: Path) -> list[str]:
    text = page.read_text()
    links = re.findall(r'(?:href|src)="([^"]+)"', text)
    return [link for link in links if not re.match(r"(https?:|data:|#|mailto:)", link)]


def test_site_links_are_relative_and_resolve(tree):
    site = tree / "results/smoke/site"
    pages = sorted(site.rglob("*.html"))
    assert {p.relative_to(site).as_posix() for p in pages} >= {
        "index.html", "demo.html", "other.html", "notebooks/demo/01_demo.html"}
    for page in pages:
        assert str(tree) not in page.read_text(), f"{page} has an absolute path"
        for link in _local_links(page):
            assert (page.parent / link.split("#")[0]).exists(), f"{page.name}: broken link {link}"
    demo = (site / "demo.html").read_text()
    assert 'src="figures/demo/fig1.png"' in demo and 'href="notebooks/demo/01_demo.html"' in demo
    assert 'class="num differs"' not in demo and 'class="num agree">-0.5<' in demo
    assert "not reproduced in this profile" in demo and "ValueError: boom" in demo
    other = (site / "other.html").read_text()
    assert "other datasets than the paper" in other and "Paper (printed)" in other
    assert "synthetic_ad/carpet" in other and "VisA" in other


def test_category_rows_get_the_whole_dataset_number_for_reference():
    paper = _rows(["MVTec AD", "Demo", "default", "pixel", "auroc", 97.0])
    ours = _rows(["MVTec AD/bottle", "Demo", "default", "pixel", "auroc", 99.0],
                 ["MVTec AD/bottle", "Demo", "default", "pixel", "ap", 70.0],
                 ["synthetic_ad", "Demo", "default", "pixel", "auroc", 60.0])
    out = report.with_dataset_reference(ours, paper)
    assert out[report.REFERENCE].iloc[0] == 97.0 and out[report.REFERENCE].iloc[1:].isna().all()


def test_rebuild_is_incremental(tree):
    rendered = tree / "results/smoke/site/notebooks/demo/01_demo.html"
    before = rendered.stat().st_mtime_ns
    report.build_report(tree, "smoke", paper_root=tree)
    assert rendered.stat().st_mtime_ns == before  # unchanged executed notebook: not rendered again


def test_notebook_root_lists_notebooks_not_run(tmp_path):
    notebooks = tmp_path / "notebooks" / "demo"
    notebooks.mkdir(parents=True)
    nbformat.write(new_notebook(), notebooks / "01_never.ipynb")
    report.build_report(tmp_path / "out", "smoke", notebook_root=tmp_path / "notebooks", paper_root=tmp_path)
    assert "01_never" in (tmp_path / "out/results/smoke/REPORT.md").read_text()
    assert "not run" in (tmp_path / "out/results/smoke/site/demo.html").read_text()


def test_empty_tree_still_builds(tmp_path):
    path = report.build_report(tmp_path, "paper", paper_root=tmp_path)
    assert path.exists() and "nothing to report" in (tmp_path / "results/paper/site/index.html").read_text()
