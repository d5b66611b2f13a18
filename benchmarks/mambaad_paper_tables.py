"""Convert MambaAD's printed tables (the ``csv mambaad ..`` blocks of repro_spec.md) to the long format of
``results/paper/mambaad/table1.csv`` ... ``table5.csv`` and ``tableA1.csv`` ... ``tableA12.csv``.

    python benchmarks/mambaad_paper_tables.py [--spec ../shared/research/repro_spec.md] [--out results/paper/mambaad]

The CSVs are committed; this script documents how they were made and regenerates them. Values are as printed
(``100.`` is 100.0), including the paper's own errors (repro_spec §2.8; ``tests/test_paper_tables_mambaad.py``
names each). The ``setting`` labels are the ones ``adlib.papers.mambaad`` gives the same variants:

- Tab. 2 ``backbone=<adlib name>,depths=3-4-6-3``; ``params_m`` and ``flops_g`` at level ``model``.
- Tab. 3 ``scan=<methods joined by +>,dirs=<total>`` (row 8: ``scan=zigzag+hilbert,dirs=8``), the
  ``scan``/``directions`` config values of ``adlib.models.mambaad``.
- Tab. 4 ``hss=1|2/3,skip=yes|no,local=dw|dw+1x1,k=5+7``: HSS blocks per LSS (``M_i``), the residual of
  Eq. 7, "Only DWConv" / "DWConv + 1x1 Conv", the parallel kernel sizes.
- Tab. 5 ``params_m``, ``flops_g`` (level ``model``) and ``mad`` (level ``summary``).
- Per-category tables: ``<dataset>/<folder name>`` (``MVTec AD/metal_nut``, ``Real-IAD/bottle_cap``); the
  printed Mean rows are the dataset (``MVTec AD``). COCO-AD's subsets are ``COCO-AD/subset_0`` ...
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
DATASETS = {"MVTec-AD": "MVTec AD", "VisA": "VisA", "Uni-Medical": "Uni-Medical", "Real-IAD": "Real-IAD"}
# appendix table -> dataset display name (the PaperSpec's ``datasets`` values)
APPENDIX = {"A1": "MVTec AD", "A2": "MVTec AD", "A3": "VisA", "A4": "VisA", "A5": "MVTec 3D-AD", "A6": "MVTec 3D-AD",
            "A7": "Uni-Medical", "A8": "Uni-Medical", "A9": "COCO-AD", "A10": "COCO-AD", "A11": "Real-IAD",
            "A12": "Real-IAD"}
BACKBONES = {"ResNet18": "resnet18", "ResNet34": "resnet34", "ResNet50": "resnet50", "WideResNet50": "wide_resnet50"}
TAB3_METHODS = {"sweep_dirs": "sweep", "scan_dirs": "scan", "zorder_dirs": "zorder", "zigzag_dirs": "zigzag",
                "hilbert_dirs": "hilbert"}


def blocks(spec: Path) -> dict[str, list[dict[str, str]]]:
    """Every ``csv mambaad <id>`` block of the spec as rows of strings."""
    text = spec.read_text(encoding="utf-8")
    found = {}
    for match in re.finditer(r"```csv mambaad (\S+)[^\n]*\n(.*?)```", text, flags=re.S):
        found[match.group(1)] = list(csv.DictReader(io.StringIO(match.group(2))))
    return found


def metric_rows(row: dict, dataset: str, method: str, setting: str) -> list[list]:
    return [[dataset, method, setting, *METRICS[col], float(row[col])] for col in METRICS if col in row]


def folder(name: str) -> str:
    """The dataset folder name of a printed category ("Metal Nut" -> "metal_nut", "bottle cap" -> "bottle_cap")."""
    return name.strip().lower().replace(" ", "_")


def tab2_setting(row: dict) -> str:
    depths = "-".join(row["decoder_depth"].strip("[]").split(","))
    return f"backbone={BACKBONES[row['backbone']]},depths={depths}"


def tab3_setting(row: dict) -> str:
    parts = [(TAB3_METHODS[col], int(row[col])) for col in TAB3_METHODS if row[col] != "-"]
    return f"scan={'+'.join(m for m, _ in parts)},dirs={sum(n for _, n in parts)}"


def tab4_setting(row: dict) -> str:
    design = row["lss_design"]
    hss = "1" if design.startswith("M_i=1") else "2/3"
    skip = "no" if "noskip" in design else "yes"
    local = {"Only DWConv": "dw", "DWConv + 1x1 Conv": "dw+1x1"}[row["local_conv"]]
    kernels = "+".join(row["kernel_sizes"].removeprefix("k=").split(","))
    return f"hss={hss},skip={skip},local={local},k={kernels}"


def convert(b: dict[str, list[dict[str, str]]]) -> dict[str, list[list]]:
    out: dict[str, list[list]] = {}
    out["table1"] = [r for row in b["T1"] for r in metric_rows(row, DATASETS[row["dataset"]], row["method"], "default")]
    table2 = []
    for row in b["T2"]:
        setting = tab2_setting(row)
        table2 += metric_rows(row, "MVTec AD", "MambaAD", setting)
        table2 += [["MVTec AD", "MambaAD", setting, "model", "params_m", float(row["params_M"])],
                   ["MVTec AD", "MambaAD", setting, "model", "flops_g", float(row["flops_G"])]]
    out["table2"] = table2
    out["table3"] = [r for row in b["T3"] for r in metric_rows(row, "MVTec AD", "MambaAD", tab3_setting(row))]
    out["table4"] = [r for row in b["T4"] for r in metric_rows(row, "MVTec AD", "MambaAD", tab4_setting(row))]
    out["table5"] = [r for row in b["T5"] for r in (
        ["MVTec AD", row["method"], "default", "model", "params_m", float(row["params_M"])],
        ["MVTec AD", row["method"], "default", "model", "flops_g", float(row["flops_G"])],
        ["MVTec AD", row["method"], "default", "summary", "mad", float(row["mAD"])])]
    for table, dataset in APPENDIX.items():
        rows = []
        for row in b[table]:
            where = dataset if row["category"] == "Mean" else f"{dataset}/{folder(row['category'])}"
            rows += metric_rows(row, where, row["method"], "default")
        out[f"table{table}"] = rows
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT.parent / "shared" / "research" / "repro_spec.md")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "paper" / "mambaad")
    args = parser.parse_args(argv)
    tables = convert(blocks(args.spec))
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        with open(args.out / f"{name}.csv", "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(COLUMNS)
            writer.writerows(rows)
        print(f"{name}: {len(rows)} rows -> {args.out / (name + '.csv')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
