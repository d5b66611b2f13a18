"""adlib.papers.mambaad: Tables A1-A12 from the main table's runs (paper-only rows say why) and Figs. 1-2 read
from built models."""
import math

import pandas as pd
import pytest

from adlib import papers, results, study
from adlib.models import create_model
from adlib.papers import mambaad


def _rows(dataset, method, level, metrics, value, note="", scope="category"):
    return [{"dataset": dataset, "method": method, "setting": "default", "level": level, "metric": m, "value": value,
             "backbone": "efficientnet_lite0", "data": dataset, "seed": seed, "protocol": p,
             "class_setting": "multi-class", "image_size": 128, "scope": scope, "note": note}
            for seed in (0, 1) for p in ("ader", "exact") for m in metrics]


IMAGE, PIXEL = ("auroc", "ap", "f1max"), ("auroc", "ap", "f1max", "aupro")
CPU = "not run in the smoke profile: CPU budget"


@pytest.fixture()
def setting(tmp_path):
    for category in ("bottle", "cable"):  # cable is on the "machine" but the smoke profile runs only bottle
        (tmp_path / "mvtec_ad" / category / "train" / "good").mkdir(parents=True)
    return study.resolve_setting(papers.get("mambaad"), profile="smoke", data_root=tmp_path,
                                 output_root=tmp_path / "out")


@pytest.fixture()
def runs():
    rows = []
    for level, metrics in (("image", IMAGE), ("pixel", PIXEL)):
        rows += _rows("MVTec AD/bottle", "MambaAD", level, metrics, 97.0)
        rows += _rows("MVTec AD/bottle", "PatchCore", level, metrics, 96.0)
        rows += _rows("synthetic_multi/pill", "MambaAD", level, metrics, 90.0)
        rows += _rows("synthetic_multi", "MambaAD", level, metrics, 91.0, scope="mean")
        rows += _rows("synthetic_multi", "MambaAD", level, metrics, 92.0, scope="pooled")
    rows += _rows("MVTec AD/bottle", "RD4AD", "pixel", PIXEL, float("nan"), note=CPU)  # as run_grid's skip writes
    rows += [{**r, "level": "model", "metric": "train_s", "protocol": "", "value": 5.0}
             for r in _rows("MVTec AD/bottle", "MambaAD", "model", ("train_s",), 5.0)[:1]]
    return pd.DataFrame(rows)


def test_every_appendix_table_is_mapped_and_valid(setting, runs):
    tables = mambaad.appendix_tables(setting, runs)
    assert sorted(tables) == sorted(f"tableA{i}" for i in range(1, 13)) == sorted(mambaad.APPENDIX)
    for name, df in tables.items():
        results.check_table(df, name)  # writable as a reproduced table
        folder, level = mambaad.APPENDIX[name]
        assert set(df.level) == {level}
        # both protocols where ours exist; a table of the paper's numbers only is set out under the paper's
        assert set(df.protocol) == ({"ader", "exact"} if folder == "mvtec_ad" else {"ader"})
        assert "pooled" not in set(df.scope)


def test_a_missing_dataset_gives_the_papers_rows_with_the_reason(setting, runs):
    a3 = mambaad.appendix_tables(setting, runs)["tableA3"]
    printed = results.paper_table("mambaad", "tableA3")
    assert a3.value.isna().all()
    # the paper's methods adlib ran (MambaAD; RD4AD recorded), one row per printed row; never PatchCore
    assert set(a3.method) == {"MambaAD", "RD4AD"}
    for method in ("MambaAD", "RD4AD"):
        assert set(a3[a3.method == method].dataset) == set(printed.dataset)
    (note,) = set(a3.note)  # where it was looked for and how to get it
    assert note.startswith(f"VisA is missing: no visa/ under {setting.real_root}") and note.endswith("number only")
    assert "python -m adlib data download visa" in note
    view = study.tables.side_by_side(setting.paper.tables["tableA3"], printed, a3)
    assert view["diff"].isna().all() and view["not_comparable"].str.startswith("not run here").all()


def test_mvtec_rows_are_ours_only_for_what_ran(setting, runs):
    a1 = mambaad.appendix_tables(setting, runs)["tableA1"]
    ran = a1[a1.value.notna()]
    assert set(ran.dataset) == {"MVTec AD/bottle", "synthetic_multi/pill"}  # the synthetic mean stays in table1
    assert set(ran.method) == {"MambaAD", "PatchCore"} and set(ran.metric) == set(IMAGE)
    notes = a1[a1.value.isna()].groupby(["dataset", "method"]).note.first()
    assert notes["MVTec AD/bottle", "RD4AD"] == CPU  # ran here, the method not: its own reason, at both levels
    assert "on this machine, but the smoke profile runs only bottle" in notes["MVTec AD/cable", "MambaAD"]
    assert "not on this machine (its mvtec_ad/ holds only bottle, cable)" in notes["MVTec AD/carpet", "MambaAD"]
    assert "mean over the paper's 15 MVTec AD categories: only MVTec AD/bottle ran" in notes["MVTec AD", "MambaAD"]
    assert ("MVTec AD/bottle", "MambaAD") not in notes.index
    cover = mambaad.appendix_coverage(setting, mambaad.appendix_tables(setting, runs)).set_index("table")
    assert cover.loc["tableA1", "with ours"] == "MVTec AD/bottle" and cover.loc["tableA1", "paper only"] == 15
    assert cover.loc["tableA3", "with ours"] == "none" and cover.loc["tableA3", "paper only"] == 13
    assert cover.loc["tableA1", "ours, not printed"] == "synthetic_multi/pill"


def test_without_a_data_root_every_real_row_is_paper_only(tmp_path, runs, monkeypatch):
    monkeypatch.delenv("ADLIB_DATA", raising=False)
    setting = study.resolve_setting(papers.get("mambaad"), profile="smoke", output_root=tmp_path)
    a12 = mambaad.appendix_tables(setting, runs[~runs.dataset.str.startswith("MVTec")])["tableA12"]
    assert a12.value.isna().all() and all("no data root" in n for n in a12.note)


def test_figure2_structure_is_read_from_the_model():
    model = create_model("mambaad", pretrained=False, image_size=64, depths=(2, 4, 3, 3), kernel_sizes=(3, 5)).eval()
    s = mambaad.mambaad_structure(model, 64)
    assert [st["hss"] for st in s["stages"]] == [[2], [2, 2], [3], [3]]  # the LSS rule, from the modules
    assert [st["map"] for st in s["stages"]] == [2, 4, 8, 16] and s["bottleneck"][1:] == (2, 2)
    assert s["lss"]["kernels"] == [3, 5] and s["lss"]["branches"][1][1].startswith("DWConv5x5")
    assert s["lss"]["fuse_in"] == 3 * s["lss"]["dim"] and s["hss"]["directions"] == 8
    assert len(s["hss"]["drop_path"]) == 12
    fig = mambaad.figure2(s)
    assert len(fig.axes) == 4


def test_figure1_structures_count_tokens_and_pairs():
    models = {"RD4AD": create_model("rd4ad", pretrained=False, image_size=128).eval(),
              "UniAD": create_model("uniad", pretrained=False, image_size=128).eval(),
              "MambaAD": create_model("mambaad", pretrained=False, image_size=128, depths=(2, 2, 2, 2)).eval()}
    s = mambaad.peer_structures(models, 128)
    assert s["UniAD"]["maps"] == [(8, 8)] and "4,096 pairs" in s["UniAD"]["global"]  # (8 x 8)^2
    assert [side for side, _ in s["RD4AD"]["maps"]] == [8, 16, 32]  # decoder stages, deepest first
    assert s["MambaAD"]["maps"] == [(4, 2), (8, 2), (16, 2), (32, 2)]
    timing = pd.DataFrame([{"method": m, "seed": 0, "setting": f"size={t}", "metric": k, "value": v}
                           for m, p in (("MambaAD", 1), ("attention", 2)) for t in (64, 256)
                           for k, v in (("tokens", t), ("seconds", 1e-3 * t ** p))]
                          + [{"method": m, "seed": 0, "setting": "default", "metric": "exponent", "value": p}
                             for m, p in (("MambaAD", 1.0), ("attention", 2.0))])
    fig = mambaad.figure1(s, timing, 128)
    assert len(fig.axes) == 4 and "MambaAD p = 1.00" in fig.axes[-1].get_title(loc="left")
