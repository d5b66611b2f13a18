"""LADMIM against PatchCore on real logical anomalies: the derived MVTec LOCO subset (juice_bottle), smoke profile.

    ADLIB_DATA=/work/shared/data OMP_NUM_THREADS=1 python benchmarks/ladmim_loco.py [--seeds 0 1 2]
        [--image-size N] [--max-train N] [--tokenizer-epochs N] [--mim-epochs N] [--set KEY=VALUE ...]
        [--no-patchcore] [--json FILE]

The data is ``$ADLIB_DATA/mvtec_loco_subset`` (read its SOURCE.md: a derived split, not the official one; its
numbers are never the paper's official-split cells). Every number comes from ``adlib.study.run_grid``: LADMIM
with the smoke profile's setting for the subset (``adlib.papers.ladmim.loco_subset_setting``: image size,
training-image cap, epochs per stage), standardised on the subset's validation split, and PatchCore (its smoke
recipe at the same image size) on the same images, over the seeds. Printed, mean +- std over seeds:

- the logical-anomaly image AUROC (normal test images against the logical anomalies, ``adlib.loco``) per scorer
  of LADMIM (S'_HVQ + S'_MIM standardised on the validation split, S_HVQ alone, S_MIM alone) and PatchCore;
- the same per kind of logical anomaly (``adlib.loco.anomaly_kinds``; where the kinds come from is printed);
- the validation split's mean S_HVQ and S_MIM (the standardisation's statistics: how well the fitted model
  reconstructs and predicts held-out normal images, which needs no anomaly: the criterion settings are chosen
  by), the training losses, and wall and CPU seconds per fit.

The options override the profile's setting (to measure training length and image size); without them it is the
setting the LADMIM chapter runs. On a shared machine wall times are upper bounds; the CPU seconds of this process
(one thread) are the budget's measure.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

# (method, setting label) -> column name: LADMIM's scorers read from one fit (paper.scorers), PatchCore's score
COLUMNS = {("LADMIM", "scorer=sum"): "S'_HVQ + S'_MIM", ("LADMIM", "scorer=hvq"): "S_HVQ",
           ("LADMIM", "scorer=mim"): "S_MIM", ("PatchCore", "default"): "PatchCore"}


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def _fmt(values) -> str:
    values = np.asarray(values, dtype=float)
    if len(values) == 0 or np.isnan(values).all():
        return "–"
    return f"{values.mean():5.1f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:4.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: the profile's (0 1 2)")
    parser.add_argument("--image-size", type=int, default=None, help="default: the profile's subset setting")
    parser.add_argument("--max-train", type=int, default=None, help="training images (spread evenly); default: "
                                                                     "the profile's subset setting")
    parser.add_argument("--tokenizer-epochs", type=int, default=None, help="HVQ-Trans epochs")
    parser.add_argument("--mim-epochs", type=int, default=None, help="MIM ViT epochs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a LADMIM config or FitConfig field (repeatable)")
    parser.add_argument("--no-patchcore", action="store_true")
    parser.add_argument("--json", default=None, help="write the LOCO rows and per-kind rows here")
    args = parser.parse_args(argv)

    from adlib import loco, papers, study
    from adlib.papers import ladmim as paper

    if not os.environ.get("ADLIB_DATA"):
        raise SystemExit("ADLIB_DATA is not set; expected the folder holding mvtec_loco_subset/")
    base = study.resolve_setting(papers.get("ladmim"), "smoke", synthetic=False, seeds=args.seeds)
    setting, overrides = paper.loco_subset_setting(base, image_size=args.image_size, max_train=args.max_train)
    sources = setting.real_sources([paper.LOCO_SUBSET_FOLDER])
    if not sources:
        raise SystemExit(f"no {paper.LOCO_SUBSET_FOLDER}/ under ADLIB_DATA={os.environ['ADLIB_DATA']}")
    stages = {k: dict(v) for k, v in overrides.get("stages", {}).items()}
    for stage, epochs in (("tokenizer", args.tokenizer_epochs), ("mim", args.mim_epochs)):
        if epochs is not None:
            stages.setdefault(stage, {})["epochs"] = epochs
    overrides = {**overrides, **({"stages": stages} if stages else {}), **_overrides(args.overrides)}
    print(f"{paper.LOCO_SUBSET}: {', '.join(s.name for s in sources)}, {setting.image_size} px, "
          f"{setting.caps}, seeds {list(setting.seeds)}; LADMIM overrides {overrides or 'none'}; "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, torch threads "
          f"{__import__('torch').get_num_threads()}", flush=True)

    cpu = {"last": time.process_time()}
    seconds = []

    def log(line: str) -> None:  # run_grid logs once per run: the CPU seconds since the last line are that fit's
        now = time.process_time()
        spent, cpu["last"] = now - cpu["last"], now
        if "image AUROC" in line:  # a fitted run (not a run recorded as not run)
            seconds.append(spent)
        print(f"  {line} [{spent:.0f} CPU-s]", flush=True)

    start = time.perf_counter()
    runs: dict = {}
    study.run_grid(setting, {"default": overrides}, sources, models=("ladmim",), seeds=setting.seeds, keep=runs, log=log)
    if not args.no_patchcore:  # its own recipe at the same image size, on the same (capped) images
        study.run_grid(setting, {"default": {}}, sources, models=("patchcore",), seeds=setting.seeds, keep=runs, log=log)
    wall = time.perf_counter() - start
    if not runs:
        raise SystemExit("no run finished (see the log above)")

    labels = {label for _, label in COLUMNS}
    scorers = lambda run: {k: v for k, v in paper.scorers(run).items() if k in labels}
    table = loco.runs_table(runs, scorers)
    kinds = loco.runs_kinds_table(runs, scorers)
    logical = table[(table["metric"] == "auroc_logical") & (table["scope"] == "mean")]
    shown = [(key, name) for key, name in COLUMNS.items()
             if ((logical["method"] == key[0]) & (logical["setting"] == key[1])).any()]

    def cells(rows, key):
        return rows[(rows["method"] == key[0]) & (rows["setting"] == key[1])].sort_values("seed")["value"]

    print("\nlogical-anomaly image AUROC, mean ± std over seeds (%):")
    for key, name in shown:
        print(f"  {name:<16} {_fmt(cells(logical, key))}   per seed {[round(v, 1) for v in cells(logical, key)]}")
    if len(kinds):
        test = next(iter(runs.values())).test
        counts = dict(zip(*np.unique(loco.anomaly_kinds(test), return_counts=True)))
        print(f"\nper kind of logical anomaly: image AUROC against the {counts.get('good', 0)} normal test images, "
              f"mean ± std over seeds (%); {kinds['note'].iloc[0]}")
        print(f"  {'kind (images)':<46}" + "".join(f"{name:>18}" for _, name in shown))
        for metric in dict.fromkeys(kinds["metric"]):
            kind = metric.removeprefix("auroc_logical_")
            part = kinds[kinds["metric"] == metric]
            print(f"  {kind + f' ({counts.get(kind, 0)})':<46}" + "".join(f"{_fmt(cells(part, key)):>18}"
                                                                        for key, _ in shown))

    print("\nper LADMIM fit: validation (normal) mean S_HVQ / S_MIM, final training losses")
    for run in runs.values():
        if run.model_name != "ladmim":
            continue
        losses = {stage: round(values[-1], 3) for stage, values in run.fit.stage_losses.items()}
        print(f"  seed {run.seed}: S_HVQ {float(run.model.hvq_mean):.4f}  S_MIM {float(run.model.mim_mean):.4f}  "
              f"losses {losses}  train {run.fit.train_seconds:.0f} s wall, {run.train_images} images")
    by_model: dict[str, list[float]] = {}
    for s, run in zip(seconds, runs.values()):  # run_grid fits in the order it keeps the runs
        by_model.setdefault(run.method, []).append(s)
    print(f"\nCPU seconds per fit: " + ", ".join(f"{m} {np.mean(v):.0f} (x{len(v)})" for m, v in by_model.items())
          + f"; all {sum(seconds):.0f} CPU-s, wall {wall:.0f} s (load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    if args.json:
        Path(args.json).write_text(json.dumps({"loco": table.to_dict("records"), "kinds": kinds.to_dict("records")},
                                              default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
