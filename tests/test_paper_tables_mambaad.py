"""MambaAD's transcribed numbers (results/paper/mambaad): format, row counts, the paper's own cross-references
(mAD, Mean rows, Table 1 against the appendix, the ablation default rows) and, by name, each of the paper's
errors that repro_spec §2.8 lists, so that a transcription fix or slip shows up."""
from pathlib import Path

import pandas as pd
import pytest

from adlib.results import check_table

ROOT = Path(__file__).resolve().parents[1] / "results" / "paper"
PAPER = ROOT / "mambaad"
TABLES = ["table1", "table2", "table3", "table4", "table5"] + [f"tableA{i}" for i in range(1, 13)]
METHODS = ["RD4AD", "UniAD", "SimpleNet", "DeSTSeg", "DiAD", "MambaAD"]
DEFAULT = {"table2": "backbone=resnet34,depths=3-4-6-3", "table3": "scan=hilbert,dirs=8",
           "table4": "hss=2/3,skip=yes,local=dw+1x1,k=5+7"}
# appendix table -> (dataset, number of categories, level)
APPENDIX = {"A1": ("MVTec AD", 15, "image"), "A2": ("MVTec AD", 15, "pixel"), "A3": ("VisA", 12, "image"),
            "A4": ("VisA", 12, "pixel"), "A5": ("MVTec 3D-AD", 10, "image"), "A6": ("MVTec 3D-AD", 10, "pixel"),
            "A7": ("Uni-Medical", 3, "image"), "A8": ("Uni-Medical", 3, "pixel"), "A9": ("COCO-AD", 4, "image"),
            "A10": ("COCO-AD", 4, "pixel"), "A11": ("Real-IAD", 30, "image"), "A12": ("Real-IAD", 30, "pixel")}
# Printed Mean rows that are not the mean of the printed categories (repro_spec §2.8.6-7), as
# (table, method, metric): every other Mean matches within 0.1.
MEAN_ERRORS = {
    ("A2", "SimpleNet", "ap"),  # Capsule AP printed 5.4 for 35.4
    ("A2", "RD4AD", "ap"), ("A2", "RD4AD", "f1max"),  # Grid and Metal Nut rows (ViTAD's Tab. VI fits)
    ("A2", "UniAD", "auroc"), ("A2", "UniAD", "ap"), ("A2", "UniAD", "f1max"),  # the same for UniAD
    ("A3", "RD4AD", "ap"),  # macaroni1 AP printed 1.5, the Mean needs about 61.5
    ("A4", "DeSTSeg", "f1max"),  # capsules F1 printed 9.1, the Mean needs about 39.1
    ("A6", "RD4AD", "ap"),  # tire AP printed 3.2, the Mean needs about 23.2
    ("A7", "UniAD", "auroc"), ("A7", "UniAD", "ap"), ("A7", "UniAD", "f1max"),  # liver row is RD4AD's
    ("A8", "DiAD", "ap"), ("A8", "DiAD", "f1max"), ("A8", "DiAD", "aupro"),  # DiAD's Mean is SimpleNet's; liver differs
}


def load(name: str, paper: Path = PAPER) -> pd.DataFrame:
    return check_table(pd.read_csv(paper / f"{name}.csv", keep_default_na=False), name)


def value(df: pd.DataFrame, **where) -> float:
    mask = pd.Series(True, index=df.index)
    for key, wanted in where.items():
        mask &= df[key] == wanted
    (hit,) = df.loc[mask, "value"].tolist()
    return float(hit)


@pytest.mark.parametrize("table", TABLES)
def test_long_format(table):
    df = load(table)
    assert list(df.columns)[:6] == ["dataset", "method", "setting", "level", "metric", "value"]
    assert (df["value"] >= 0).all() and (df.loc[df.level != "model", "value"] <= 100).all()


@pytest.mark.parametrize("table,rows", [
    ("table1", 4 * 6 * 8), ("table2", 7 * 9), ("table3", 12 * 7), ("table4", 21 * 7), ("table5", 6 * 3),
    ("tableA1", 16 * 6 * 3), ("tableA2", 16 * 6 * 4), ("tableA3", 13 * 6 * 3), ("tableA4", 13 * 6 * 4),
    ("tableA5", 11 * 6 * 3), ("tableA6", 11 * 6 * 4), ("tableA7", 4 * 6 * 3), ("tableA8", 4 * 6 * 4),
    ("tableA9", 5 * 6 * 3), ("tableA10", 5 * 6 * 4), ("tableA11", 31 * 6 * 3), ("tableA12", 31 * 6 * 4)])
def test_row_counts(table, rows):
    df = load(table)
    assert len(df) == rows
    if table.startswith("tableA") or table == "table1":
        assert sorted(set(df.method)) == sorted(METHODS)


def test_table1_mad_is_the_mean_of_the_seven_metrics():
    df = load("table1")
    for (dataset, method), rows in df.groupby(["dataset", "method"]):
        seven = rows.loc[rows.level != "summary", "value"]
        assert len(seven) == 7
        assert abs(seven.mean() - value(rows, metric="mad")) <= 0.05, (dataset, method)


@pytest.mark.parametrize("table", list(APPENDIX))
def test_appendix_mean_rows_are_the_category_means_except_the_listed_errors(table):
    dataset, n, level = APPENDIX[table]
    df = load(f"table{table}")
    assert (df.level == level).all()
    cats = df[df.dataset != dataset]
    assert cats.dataset.str.startswith(dataset + "/").all() and cats.dataset.nunique() == n
    for (method, metric), rows in cats.groupby(["method", "metric"]):
        printed = value(df, dataset=dataset, method=method, metric=metric)
        fits = abs(rows.value.mean() - printed) <= 0.1 + 1e-9  # rounding of the printed values
        assert fits != ((table, method, metric) in MEAN_ERRORS), (table, method, metric, rows.value.mean(), printed)


def test_a2_typos_are_what_repro_spec_says():
    a2 = load("tableA2")
    vitad = load("table6", ROOT / "vitad")  # ViTAD's Tab. VI prints the same methods per category
    # SimpleNet Capsule AP: 35.4 (ViTAD Tab. VI) instead of the printed 5.4 restores the Mean of 45.9
    simple = a2[(a2.method == "SimpleNet") & (a2.metric == "ap") & (a2.dataset != "MVTec AD")].set_index("dataset")
    assert simple.loc["MVTec AD/capsule", "value"] == 5.4
    fixed = simple.value.sum() - 5.4 + value(vitad, dataset="MVTec AD/capsule", method="SimpleNet", metric="ap")
    assert abs(fixed / 15 - value(a2, dataset="MVTec AD", method="SimpleNet", metric="ap")) <= 0.05
    # RD4AD and UniAD: with ViTAD's Grid and Metal Nut rows the Means come within 0.25 (up to 4.4 off as printed;
    # UniAD's other categories differ slightly between the two papers, repro_spec §2.8.12)
    for ours, theirs in (("RD4AD", "RD"), ("UniAD", "UniAD")):
        for metric in ("auroc", "ap", "f1max"):
            rows = a2[(a2.method == ours) & (a2.metric == metric) & (a2.dataset != "MVTec AD")].set_index("dataset")
            mean = value(a2, dataset="MVTec AD", method=ours, metric=metric)
            as_printed = abs(rows.value.mean() - mean)
            for cat in ("MVTec AD/grid", "MVTec AD/metal_nut"):
                rows.loc[cat, "value"] = value(vitad, dataset=cat, method=theirs, metric=metric)
            assert abs(rows.value.mean() - mean) <= 0.25, (ours, metric)
            assert as_printed > 1.0 or ("A2", ours, metric) not in MEAN_ERRORS, (ours, metric)


def test_table1_equals_the_appendix_means_except_visa_uniad_and_medical_diad():
    # repro_spec §2.8.5: Table 1's VisA UniAD row is ViTAD's Tab. VII row, not the A3/A4 Mean;
    # §2.8.6: Table 1's Uni-Medical DiAD row is not A7/A8's Mean (those are SimpleNet's; pixel AUROC agrees anyway).
    differs = {("VisA", "UniAD", level, m) for level, m in [("image", "auroc"), ("image", "ap"), ("image", "f1max"),
               ("pixel", "auroc"), ("pixel", "ap"), ("pixel", "f1max"), ("pixel", "aupro")]}
    differs |= {("Uni-Medical", "DiAD", level, m) for level, m in [("image", "auroc"), ("image", "ap"),
                ("image", "f1max"), ("pixel", "ap"), ("pixel", "f1max"), ("pixel", "aupro")]}
    t1 = load("table1")
    checked = 0
    for table, (dataset, _, level) in APPENDIX.items():
        if dataset not in set(t1.dataset):
            continue
        means = load(f"table{table}")
        for _, row in means[means.dataset == dataset].iterrows():
            printed = value(t1, dataset=dataset, method=row.method, level=level, metric=row.metric)
            assert (printed != row.value) == ((dataset, row.method, level, row.metric) in differs), (table, row.method)
            checked += 1
    assert checked == 4 * 6 * 7
    vitad7 = load("table7", ROOT / "vitad")
    for level, metric in [("image", "auroc"), ("pixel", "ap")]:
        assert value(t1, dataset="VisA", method="UniAD", level=level, metric=metric) == value(
            vitad7, dataset="VisA", method="UniAD", level=level, metric=metric)


def test_a7_diad_rows_are_simplenets_rows():
    a7 = load("tableA7")
    diad = a7[a7.method == "DiAD"].set_index(["dataset", "metric"]).value
    simple = a7[a7.method == "SimpleNet"].set_index(["dataset", "metric"]).value
    assert diad.equals(simple)


def test_table5_mad_of_destseg_and_simplenet_are_swapped_against_table1():
    t1, t5 = load("table1"), load("table5")
    for method in METHODS:
        mad5 = value(t5, method=method, metric="mad")
        mad1 = value(t1, dataset="MVTec AD", method=method, metric="mad")
        if method in ("DeSTSeg", "SimpleNet"):
            other = "SimpleNet" if method == "DeSTSeg" else "DeSTSeg"
            assert mad5 == value(t1, dataset="MVTec AD", method=other, metric="mad") != mad1
        else:
            assert mad5 == mad1, method


@pytest.mark.parametrize("table", ["table2", "table3", "table4"])
def test_ablation_default_rows_repeat_mambaads_table1_row(table):
    t1, df = load("table1"), load(table)
    default = df[df.setting == DEFAULT[table]]
    assert len(default[default.level != "model"]) == 7
    for _, row in default[default.level != "model"].iterrows():
        assert row.value == value(t1, dataset="MVTec AD", method="MambaAD", level=row.level, metric=row.metric)


def test_table5_cost_of_mambaad_is_table2s_default_row():
    t2, t5 = load("table2"), load("table5")
    for metric, printed in (("params_m", 25.7), ("flops_g", 8.3)):
        assert value(t5, method="MambaAD", metric=metric) == printed
        assert value(t2, setting=DEFAULT["table2"], metric=metric) == printed


def test_table3_settings_match_the_models_scan_configs():
    from adlib.scans import hybrid_directions

    for setting in sorted(set(load("table3").setting)):
        scan, dirs = (part.split("=")[1] for part in setting.split(","))
        assert len(hybrid_directions(8, 8, scan, int(dirs))) == int(dirs)  # every row is a valid config
