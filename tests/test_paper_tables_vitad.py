"""ViTAD's transcribed numbers (results/paper/vitad/) agree with the paper's own cross-references: every mAD is
the mean of its seven metrics, the Average rows are the category means, and the final model's row repeats
across the ablation tables."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adlib.results import check_table

PAPER = Path(__file__).resolve().parents[1] / "results" / "paper" / "vitad"
TABLES = [f"table{i}" for i in range(1, 14)]
SEVEN = [("image", "auroc"), ("image", "ap"), ("image", "f1max"),
         ("pixel", "auroc"), ("pixel", "ap"), ("pixel", "f1max"), ("pixel", "aupro")]
MVTEC = ["carpet", "grid", "leather", "tile", "wood", "bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill",
         "screw", "toothbrush", "transistor", "zipper"]
VISA = ["pcb1", "pcb2", "pcb3", "pcb4", "macaroni1", "macaroni2", "capsules", "candle", "cashew", "chewinggum",
        "fryum", "pipe_fryum"]
# The final model (DINO ViT-S/16, stages 1-3, linear fuser, 4x3 / 3x3, Cos_f, 100 epochs, step, no augmentation).
VITAD = [98.3, 99.4, 97.3, 97.7, 55.3, 58.7, 91.4]


def load(name: str) -> pd.DataFrame:
    return pd.read_csv(PAPER / f"{name}.csv", keep_default_na=False)


def value(df, **where) -> float:
    mask = pd.Series(True, index=df.index)
    for key, wanted in where.items():
        mask &= df[key] == wanted
    (hit,) = df.loc[mask, "value"].tolist()
    return float(hit)


def seven(df, **where) -> list[float]:
    return [value(df, level=level, metric=metric, **where) for level, metric in SEVEN]


@pytest.mark.parametrize("table", TABLES)
def test_long_format(table):
    df = load(table)
    assert list(df.columns) == ["dataset", "method", "setting", "level", "metric", "value"]
    check_table(df, table)  # levels, metric names, numeric values, no duplicated keys
    assert (pd.to_numeric(df["value"]) >= 0).all()


# Rows of each printed block (the spec's CSV blocks) times the metrics each row carries.
@pytest.mark.parametrize("table,rows,per_row", [
    ("table1", 10, 8), ("table2", 4, 8), ("table3", 10, 8), ("table4", 6, 8), ("table5", 96, 3),
    ("table8", 15, 8), ("table9", 7, 8), ("table10", 10, 8), ("table11", 12, 8), ("table12", 13, 8), ("table13", 6, 4),
])
def test_row_counts(table, rows, per_row):
    df = load(table)
    assert len(df) == rows * per_row
    assert df.groupby(["dataset", "method", "setting"]).ngroups == rows


def test_row_counts_with_mad_rows():
    t6, t7 = load("table6"), load("table7")
    assert len(t6[t6["level"] == "pixel"]) == 96 * 4 and len(t6[t6["metric"] == "mad"]) == 6
    assert len(t7[t7["level"] != "summary"]) == 52 * 7 and len(t7[t7["metric"] == "mad"]) == 4


@pytest.mark.parametrize("table", ["table1", "table2", "table3", "table8", "table9", "table10", "table11", "table12"])
def test_mad_is_the_mean_of_the_seven(table):
    df = load(table)
    for (method, setting), _ in df.groupby(["method", "setting"]):
        metrics = seven(df, method=method, setting=setting)
        assert abs(np.mean(metrics) - value(df, method=method, setting=setting, metric="mad")) <= 0.06, (method, setting)


@pytest.mark.parametrize("image,pixel,dataset", [("table5", "table6", "MVTec AD"), ("table7", "table7", "VisA")])
def test_dataset_mad_combines_the_image_and_pixel_averages(image, pixel, dataset):
    img, pix = load(image), load(pixel)
    for method in pix.loc[pix["metric"] == "mad", "method"]:
        values = [value(img, dataset=dataset, method=method, level="image", metric=m) for m in ("auroc", "ap", "f1max")]
        values += [value(pix, dataset=dataset, method=method, level="pixel", metric=m)
                   for m in ("auroc", "ap", "f1max", "aupro")]
        assert abs(np.mean(values) - value(pix, dataset=dataset, method=method, metric="mad")) <= 0.06, method


@pytest.mark.parametrize("table,dataset,categories", [("table5", "MVTec AD", MVTEC), ("table6", "MVTec AD", MVTEC),
                                                      ("table7", "VisA", VISA)])
def test_average_rows_are_the_category_means(table, dataset, categories):
    df = load(table)
    parts = df[df["dataset"].str.startswith(dataset + "/")]
    assert sorted(parts["dataset"].str.split("/").str[1].unique()) == sorted(categories)
    for (method, level, metric), part in parts.groupby(["method", "level", "metric"]):
        assert len(part) == len(categories)
        printed = value(df, dataset=dataset, method=method, level=level, metric=metric)
        assert abs(part["value"].mean() - printed) <= 0.15, (method, level, metric)


@pytest.mark.parametrize("table,where", [
    ("table1", {"setting": "encoder=DINO"}),
    ("table2", {"setting": "stages=1+2+3"}),
    ("table3", {"setting": "default"}),
    ("table8", {"setting": "fuser=linear"}),
    ("table9", {"setting": "init=DINO,scale=ViT-S"}),
    ("table10", {"setting": "encoder=4x3,decoder=3x3"}),
    ("table11", {"method": "ViTAD", "setting": "loss=Cosf"}),
    ("table12", {"setting": "epochs=100"}),
    ("table12", {"setting": "scheduler=Step"}),
    ("table12", {"setting": "augmentation=None"}),
])
def test_final_model_row_repeats_across_tables(table, where):
    df = load(table)
    assert seven(df, **{"method": "ViTAD", **where}) == VITAD
    assert value(df, **{"method": "ViTAD", **where}, metric="mad") == 85.4


def test_final_model_row_is_the_mvtec_average():
    t5, t6 = load("table5"), load("table6")
    ours = [value(t5, dataset="MVTec AD", method="ViTAD", level="image", metric=m) for m in ("auroc", "ap", "f1max")]
    ours += [value(t6, dataset="MVTec AD", method="ViTAD", level="pixel", metric=m) for m in ("auroc", "ap", "f1max", "aupro")]
    assert ours == VITAD and value(t6, dataset="MVTec AD", method="ViTAD", metric="mad") == 85.4


@pytest.mark.parametrize("method,loss", [("RD", "Cosf"), ("UniAD", "MSE")])
def test_loss_table_defaults_repeat_the_comparison_rows(method, loss):
    """Tab. XI's dagger rows (each method's own loss) are Tab. V/VI's averages of that method."""
    t5, t6, t11 = load("table5"), load("table6"), load("table11")
    printed = [value(t5, dataset="MVTec AD", method=method, level="image", metric=m) for m in ("auroc", "ap", "f1max")]
    printed += [value(t6, dataset="MVTec AD", method=method, level="pixel", metric=m) for m in ("auroc", "ap", "f1max", "aupro")]
    assert seven(t11, method=method, setting=f"loss={loss}") == printed
    assert value(t11, method=method, setting=f"loss={loss}", metric="mad") == value(t6, dataset="MVTec AD", method=method, metric="mad")


def test_in1k_vit_s_repeats_between_tables_1_and_9():
    assert seven(load("table1"), setting="encoder=IN1K") == seven(load("table9"), setting="init=IN1K,scale=ViT-S")


def test_moco_and_mae_rows_are_identical_as_printed():
    """repro_spec §1.11.5: the paper prints the same numbers for MoCo and MAE (a likely copy error); this test
    documents it so that nobody mistakes a match with one of them for evidence."""
    t1 = load("table1")
    assert seven(t1, setting="encoder=MoCo") == seven(t1, setting="encoder=MAE")


def test_table3_labels_name_the_factors_switched_off():
    settings = set(load("table3")["setting"])
    assert "default" in settings and "before_norm=no" in settings
    assert "before_norm=no,add_linear=no,pos_embed=no,remove_cls=no" in settings
    assert len(settings) == 10


def test_table4_vitad_is_plain_and_table13_size():
    t4, t13 = load("table4"), load("table13")
    plain = t4[(t4["method"] == "ViTAD") & (t4["metric"] != "category_rec")]
    assert (plain["value"] == 0).all() and value(t4, method="ViTAD", metric="category_rec") == 1
    assert value(t13, method="ViTAD", metric="params_m") == 38.6
    assert value(t13, method="ViTAD", metric="flops_g") == 10.7


@pytest.mark.parametrize("profile", ["smoke", "paper"])
@pytest.mark.parametrize("table", ["table1", "table2", "table3", "table8", "table9", "table10", "table11", "table12"])
def test_every_printed_row_has_a_variant_or_a_reason(profile, table):
    """The paper spec's grids (adlib.papers.vitad) name every ViTAD row of the printed ablation tables with the
    same label, either as a variant to run or with the reason it cannot run in that profile."""
    from adlib import papers

    grids = papers.get("vitad").profile(profile).grids
    printed = set(load(table).query("method == 'ViTAD'")["setting"])
    named = set(grids.get(table, {})) | set(grids.get(f"{table}_not_run", {})) | set(grids.get(f"{table}_epochs", {}))
    assert printed <= named, sorted(printed - named)


def test_claims_point_at_printed_rows():
    """Each claim's sides select rows that the paper's own table has (Fig. 9 prints no numbers; PatchCore is
    not in ViTAD's tables)."""
    from adlib import papers

    for claim in papers.get("vitad").claims:
        if claim.table == "fig9":
            continue
        df = load(claim.table)
        for side in (claim.favoured, *claim.against):
            if side.where.get("method") == "PatchCore":
                continue
            mask = pd.Series(True, index=df.index)
            for key, wanted in side.where.items():
                mask &= df[key] == wanted
            assert mask.any(), (claim.id, side)
