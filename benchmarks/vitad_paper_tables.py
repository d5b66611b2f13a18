"""Convert ViTAD's printed tables (the ``csv vitad T..`` blocks of repro_spec.md) to the long format of
``results/paper/vitad/table1.csv`` ... ``table13.csv``.

    python benchmarks/vitad_paper_tables.py [--spec ../shared/research/repro_spec.md] [--out results/paper/vitad]

The CSVs are committed; this script documents how they were made and can regenerate them. Variant labels
(the ``setting`` column) are the ones the ViTAD notebooks use for the same variants:

- Tab. I ``encoder=<row>``; Tab. II ``stages=...`` as printed; Tab. III ``default`` for all four factors on,
  else the factors switched off (``before_norm=no,pos_embed=no``); Tab. VIII ``fuser=linear`` (ViTAD),
  ``fuser=cat,layers=...``, ``fuser=add,layers=...``, ``fuser=vit,depth=n``, ``fuser=conv,depth=n``;
  Tab. IX ``init=IN1K|DINO,scale=ViT-S``; Tab. X ``encoder=4x3,decoder=3x3`` (``decoder=2-3-4`` for blocks
  per division); Tab. XI ``loss=<name>`` per method; Tab. XII ``<factor>=<value>``.
- Categories use the dataset folder names (``MVTec AD/metal_nut``, ``VisA/pipe_fryum``); the printed
  Average rows are the dataset's mean (``MVTec AD``).
- Tab. IV (no numbers in the paper) holds each method's properties as 1 (yes) / 0 (no), level ``model``.
- Tab. XIII: ``params_m``, ``flops_g``, ``train_memory_mb``, ``train_h`` (hours, as printed), level ``model``.
"""
from __future__ import annotations

import argparse
import csv
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["dataset", "method", "setting", "level", "metric", "value"]
METRICS = {
    "img_auroc": ("image", "auroc"), "img_ap": ("image", "ap"), "img_f1max": ("image", "f1max"),
    "px_auroc": ("pixel", "auroc"), "px_ap": ("pixel", "ap"), "px_f1max": ("pixel", "f1max"),
    "px_aupro": ("pixel", "aupro"), "mAD": ("summary", "mad"),
}
MVTEC = {"Carpet": "carpet", "Grid": "grid", "Leather": "leather", "Tile": "tile", "Wood": "wood",
         "Bottle": "bottle", "Cable": "cable", "Capsule": "capsule", "Hazelnut": "hazelnut", "Metal Nut": "metal_nut",
         "Pill": "pill", "Screw": "screw", "Toothbrush": "toothbrush", "Transistor": "transistor", "Zipper": "zipper"}
VISA = {"PCB1": "pcb1", "PCB2": "pcb2", "PCB3": "pcb3", "PCB4": "pcb4", "Macaroni1": "macaroni1",
        "Macaroni2": "macaroni2", "Capsules": "capsules", "Candle": "candle", "Cashew": "cashew",
        "Chewing Gum": "chewinggum", "Fryum": "fryum", "Pipe Fryum": "pipe_fryum"}
TAB3_FACTORS = ("before_norm", "add_linear", "use_pos_embed", "remove_cls_token")
TAB3_NAMES = {"before_norm": "before_norm", "add_linear": "add_linear", "use_pos_embed": "pos_embed",
              "remove_cls_token": "remove_cls"}
TAB4_PROPERTIES = ("pyramidal_encoder", "heavy_fuser", "pyramidal_decoder", "multi_resolution_features",
                   "image_feature_augmentation", "category_aug", "category_emb", "category_rec")


def blocks(spec: Path) -> dict[str, list[dict[str, str]]]:
    """Every ``csv vitad <id>`` block of the spec as rows of strings."""
    text = spec.read_text(encoding="utf-8")
    found = {}
    for match in re.finditer(r"```csv vitad (\S+)[^\n]*\n(.*?)```", text, flags=re.S):
        found[match.group(1)] = list(csv.DictReader(io.StringIO(match.group(2))))
    return found


def number(text: str) -> float:
    return float(text)  # "100." (as printed) is 100.0


def metric_rows(row: dict, dataset: str, method: str, setting: str) -> list[list]:
    return [[dataset, method, setting, *METRICS[col], number(row[col])] for col in METRICS if col in row]


def category(dataset: str, names: dict[str, str], printed: str) -> str:
    return dataset if printed == "Average" else f"{dataset}/{names[printed]}"


def convert(b: dict[str, list[dict[str, str]]]) -> dict[str, list[list]]:
    out: dict[str, list[list]] = {}
    out["table1"] = [r for row in b["T1"] for r in metric_rows(row, "MVTec AD", "ViTAD", f"encoder={row['encoder_init']}")]
    out["table2"] = [r for row in b["T2"] for r in metric_rows(row, "MVTec AD", "ViTAD", row["restraint_stages"])]
    table3 = []
    for row in b["T3"]:
        off = [TAB3_NAMES[f] + "=no" for f in TAB3_FACTORS if row[f] == "no"]
        table3 += metric_rows(row, "MVTec AD", "ViTAD", ",".join(off) or "default")
    out["table3"] = table3
    out["table4"] = [["", row["method"], "default", "model", p, 1.0 if row[p] == "yes" else 0.0]
                     for row in b["T4"] for p in TAB4_PROPERTIES]
    out["table5"] = [r for row in b["T5"] for r in
                     metric_rows(row, category("MVTec AD", MVTEC, row["category"]), row["method"], "default")]
    out["table6"] = [r for row in b["T6"] for r in
                     metric_rows(row, category("MVTec AD", MVTEC, row["category"]), row["method"], "default")]
    out["table6"] += [["MVTec AD", row["method"], "default", "summary", "mad", number(row["mAD"])] for row in b["T6mAD"]]
    out["table7"] = [r for row in b["T7"] for r in
                     metric_rows(row, category("VisA", VISA, row["category"]), row["method"], "default")]
    out["table7"] += [["VisA", row["method"], "default", "summary", "mad", number(row["mAD"])] for row in b["T7mAD"]]
    table8 = []
    for row in b["T8"]:
        fuser = row["fuser"].lower()
        setting = "fuser=linear" if fuser.startswith("vitad") else f"fuser={fuser},{row['variant']}"
        table8 += metric_rows(row, "MVTec AD", "ViTAD", setting)
    out["table8"] = table8
    init = {"ImageNet-1K": "IN1K", "DINO": "DINO"}
    out["table9"] = [r for row in b["T9"] for r in
                     metric_rows(row, "MVTec AD", "ViTAD", f"init={init[row['pretraining']]},scale={row['scale']}")]
    table10 = []
    for row in b["T10"]:
        decoder = row["decoder"].replace("layers_per_division=", "")
        table10 += metric_rows(row, "MVTec AD", "ViTAD", f"encoder={row['encoder_divisions_x_layers']},decoder={decoder}")
    out["table10"] = table10
    out["table11"] = [r for row in b["T11"] for r in metric_rows(row, "MVTec AD", row["model"], f"loss={row['loss']}")]
    out["table12"] = [r for row in b["T12"] for r in
                      metric_rows(row, "MVTec AD", "ViTAD", f"{row['factor']}={row['setting']}")]
    units = {"params_M": "params_m", "flops_G": "flops_g", "train_memory_MB": "train_memory_mb", "train_time_h": "train_h"}
    out["table13"] = [["", row["method"], "default", "model", units[k], number(row[k])] for row in b["T13"] for k in units]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT.parent / "shared" / "research" / "repro_spec.md")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "paper" / "vitad")
    args = parser.parse_args()
    tables = convert(blocks(args.spec))
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        with open(args.out / f"{name}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(COLUMNS)
            writer.writerows([*row[:5], repr(float(row[5]))] for row in rows)
        print(f"{name}: {len(rows)} rows -> {args.out / (name + '.csv')}")


if __name__ == "__main__":
    main()
