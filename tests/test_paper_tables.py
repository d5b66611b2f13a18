"""The transcribed paper numbers agree with the paper's own cross-references (sums, repeated cells)."""
from pathlib import Path

import pandas as pd
import pytest

PAPER = Path(__file__).resolve().parents[1] / "results" / "paper" / "varad"


def load(name: str) -> pd.DataFrame:
    return pd.read_csv(PAPER / f"{name}.csv", keep_default_na=False)


def value(df, **where) -> float:
    mask = pd.Series(True, index=df.index)
    for key, wanted in where.items():
        mask &= df[key] == wanted
    (hit,) = df.loc[mask, "value"].tolist()
    return float(hit)


@pytest.mark.parametrize("table", ["table1", "table2", "table3", "table4", "table5", "table6",
                                   "fig5", "fig7"])
def test_long_format(table):
    df = load(table)
    assert list(df.columns) == ["dataset", "method", "setting", "level", "metric", "value"]
    assert not df.duplicated(["dataset", "method", "setting", "level", "metric"]).any()
    assert (pd.to_numeric(df["value"]) >= 0).all()


@pytest.mark.parametrize("table,datasets,summary", [
    ("table1", ["MVTec AD", "VisA", "BTAD", "DTD-Synthetic"], "Summary"),
    ("table6", [f"Button/Class{i}" for i in range(1, 5)], "Button/Summary"),
])
def test_summary_rows_are_sums(table, datasets, summary):
    df = load(table)
    for metric in set(df["metric"]):
        parts = sum(value(df, dataset=d, metric=metric) for d in datasets)
        assert parts == value(df, dataset=summary, metric=metric), metric


def test_table4_dinov2_small_column_repeats_varad_row_of_table2():
    t2, t4 = load("table2"), load("table4")
    for dataset in ["MVTec AD", "VisA", "BTAD", "DTD-Synthetic"]:
        for metric in ["auroc", "f1max", "ap"]:
            assert value(t2, dataset=dataset, method="VarAD", metric=metric) == value(
                t4, dataset=dataset, setting="backbone=dinov2_vits14", metric=metric)


def test_table5_average_row_is_the_class_mean():
    df = load("table5")
    for method in set(df["method"]):
        for metric in ["auroc", "f1max", "ap"]:
            classes = [value(df, dataset=f"Button/Class{i}", method=method, metric=metric) for i in range(1, 5)]
            average = value(df, dataset="Button/Average", method=method, metric=metric)
            assert abs(sum(classes) / 4 - average) <= 0.1, (method, metric)
