import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from adlib import results  # noqa: E402


def _table(values=(98.5, 97.0)):
    return pd.DataFrame({
        "dataset": ["MVTec AD", "MVTec AD"], "method": ["VarAD", "VarAD"], "setting": ["default", "default"],
        "level": ["image", "pixel"], "metric": ["auroc", "auroc"], "value": list(values),
    })


def test_write_table_stamps_columns_sidecar_and_run_log(tmp_path, monkeypatch):
    log = tmp_path / "run.log"
    monkeypatch.setenv(results.RUN_LOG_ENV, str(log))
    path = results.write_table(_table(), "varad", "table2", profile="smoke", backbone="efficientnet_lite0",
                               data="synthetic_ad", params={"m": 4}, root=tmp_path)
    assert path == tmp_path / "results" / "smoke" / "varad" / "table2.csv"
    df = pd.read_csv(path)
    assert list(df.columns[:9]) == results.TABLE_COLUMNS + results.PROVENANCE_COLUMNS
    assert set(df["backbone"]) == {"efficientnet_lite0"} and set(df["profile"]) == {"smoke"}
    meta = json.loads(results.meta_path(path).read_text())
    assert meta["params"] == {"m": 4} and meta["data"] == "synthetic_ad"
    assert "packages" in meta["provenance"] and "git" in meta["provenance"]
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    logged = [line["path"] for line in lines if "path" in line]
    assert [line["kind"] for line in lines if "path" not in line] == ["runtime"]  # the writer's runtime report
    assert str(path.resolve()) in logged and str(results.meta_path(path).resolve()) in logged
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    back = results.read_table("varad", "table2", profile="smoke", root=tmp_path)
    assert back["value"].tolist() == [98.5, 97.0]


def test_per_row_backbone_is_kept(tmp_path):
    df = _table()
    df["backbone"] = ["dinov2_vits14", None]
    path = results.write_table(df, "varad", "table4", profile="smoke", backbone="resnet18", data="x",
                               root=tmp_path)
    assert pd.read_csv(path)["backbone"].tolist() == ["dinov2_vits14", "resnet18"]


@pytest.mark.parametrize("change, message", [
    (lambda d: d.drop(columns="metric"), "missing columns"),
    (lambda d: d.assign(level="patch"), "level"),
    (lambda d: d.assign(metric="Image AUROC"), "metric"),
    (lambda d: d.assign(value=["high", "low"]), "numeric"),
    (lambda d: d.assign(level="image"), "duplicated"),
])
def test_bad_tables_are_rejected_with_a_clear_error(tmp_path, change, message):
    with pytest.raises(results.TableFormatError, match=message):
        results.write_table(change(_table()), "varad", "t", profile="smoke", backbone="b", data="d",
                            root=tmp_path)
    assert not (tmp_path / "results" / "smoke" / "varad" / "t.csv").exists()


def test_failed_write_leaves_previous_file_intact(tmp_path):
    path = results.atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError):
        with results.atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_compare_joins_and_keeps_one_sided_rows(tmp_path):
    paper = _table((98.0, 97.5))
    paper.loc[len(paper)] = ["VisA", "VarAD", "default", "image", "auroc", 90.0]
    ours = _table((97.0, 98.0)).iloc[[0]].copy()
    ours.loc[len(ours)] = ["synthetic_ad/grid", "VarAD", "default", "image", "auroc", 80.0]
    ours["profile"] = "smoke"
    table = results.compare(paper, ours)
    assert len(table) == 4
    row = table[(table.dataset == "MVTec AD") & (table.level == "image")].iloc[0]
    assert row["paper"] == 98.0 and row["ours"] == 97.0 and row["diff"] == pytest.approx(-1.0)
    only_paper = table[table.dataset == "VisA"].iloc[0]
    assert only_paper["paper"] == 90.0 and np.isnan(only_paper["ours"]) and np.isnan(only_paper["diff"])
    only_ours = table[table.dataset == "synthetic_ad/grid"].iloc[0]
    assert np.isnan(only_ours["paper"]) and only_ours["ours"] == 80.0 and only_ours["profile"] == "smoke"


def test_paper_table_reads_results_paper(tmp_path):
    path = tmp_path / "results" / "paper" / "varad" / "table1.csv"
    path.parent.mkdir(parents=True)
    _table().to_csv(path, index=False)
    assert len(results.paper_table("varad", "table1", root=tmp_path)) == 2
    with pytest.raises(FileNotFoundError, match="table9"):
        results.paper_table("varad", "table9", root=tmp_path)


def test_save_figure_footer_metadata_and_sidecar(tmp_path):
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    for _ in range(2):  # saving twice keeps one footer
        path = results.save_figure(fig, "varad", "fig3", profile="smoke", backbone="efficientnet_lite0",
                                   data="synthetic_ad", root=tmp_path)
    plt.close(fig)
    assert path == tmp_path / "figures" / "smoke" / "varad" / "fig3.png"
    footers = [t.get_text() for t in fig.texts if t.get_gid() == results.FOOTER_GID]
    assert footers == ["smoke · efficientnet_lite0 · synthetic_ad"]
    image = Image.open(path)
    assert image.text["adlib:backbone"] == "efficientnet_lite0" and image.size[0] > 50
    assert json.loads(results.meta_path(path).read_text())["kind"] == "figure"


def test_output_root_env(tmp_path, monkeypatch):
    monkeypatch.setenv(results.OUTPUT_ROOT_ENV, str(tmp_path))
    assert results.table_path("varad", "t", profile="smoke") == tmp_path / "results/smoke/varad/t.csv"
    # the paper's numbers are inputs from the repository, wherever outputs go
    assert results.paper_table_path("varad", "t") == results.repo_root() / "results/paper/varad/t.csv"
    monkeypatch.delenv(results.OUTPUT_ROOT_ENV)
    assert results.output_root() == results.repo_root()


def test_repository_paper_tables_follow_the_long_format():
    paper_dir = results.repo_root() / "results" / "paper"
    files = sorted(paper_dir.glob("*/*.csv"))
    if not files:
        pytest.skip("no paper tables under results/paper yet")
    for path in files:
        table = results.paper_table(path.parent.name, path.stem)
        assert len(table) > 0 and table["value"].notna().all(), path
        assert "nan" not in set(table["method"]), path  # empty cells stay empty, not the string "nan"
