"""`adlib run MODEL` for every registered model on an embedded set and on the MVTec LOCO subset (issue 21).

Each model runs in its own process through the command line a user types, with a short budget
(``--max-train-images 16 --epochs 1`` by default), and the script prints per model and data: ok or the error's
last line, the wall time, image and pixel AUROC, and (on LOCO) the logical AUROC. Exits non-zero when any run
fails. The run cache is off (``--no-cache``) so every fit is a real one.

    ADLIB_DATA=../shared/data OMP_NUM_THREADS=1 python benchmarks/run_every_model.py
    python benchmarks/run_every_model.py --models patchcore,varad --only synthetic
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def data_targets(only: str | None) -> dict[str, list[str]]:
    targets = {"synthetic_ad/capsule": ["--synthetic", "synthetic_ad", "--category", "capsule"]}
    loco = Path(os.environ.get("ADLIB_DATA", "")) / "mvtec_loco_subset"
    if (loco / "juice_bottle").is_dir():
        targets["mvtec_loco_subset/juice_bottle"] = ["--data-root", str(loco), "--category", "juice_bottle"]
    else:
        print(f"mvtec_loco_subset: not run: {loco}/juice_bottle not found (set ADLIB_DATA)")
    return {k: v for k, v in targets.items() if only is None or k.startswith(only)}


def percent(record: dict, *path: str) -> str:
    value = record
    for key in path:
        value = value.get(key, {}) if isinstance(value, dict) else {}
    return f"{100 * value:.1f}" if isinstance(value, float) else "-"


def main() -> int:
    from adlib import models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(models.available_models()))
    parser.add_argument("--only", default=None, help="run only the data whose name starts with this")
    parser.add_argument("--max-train-images", default="16")
    parser.add_argument("--epochs", default="1")
    args = parser.parse_args()
    failed = 0
    print(f"{'model':10s} {'data':32s} {'result':8s} {'wall s':>7s} {'img AUROC':>9s} {'px AUROC':>8s} {'logical':>7s}")
    for data, flags in data_targets(args.only).items():
        for model in args.models.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "run.json"
                command = [sys.executable, "-m", "adlib", "run", model, *flags, "--max-train-images",
                           args.max_train_images, "--epochs", args.epochs, "--no-progress", "--no-cache",
                           "--json", str(out)]
                start = time.perf_counter()
                done = subprocess.run(command, capture_output=True, text=True)
                wall = time.perf_counter() - start
                if done.returncode == 0 and out.exists():
                    record = json.loads(out.read_text())
                    print(f"{model:10s} {data:32s} {'ok':8s} {wall:7.0f} {percent(record, 'image', 'auroc'):>9s} "
                          f"{percent(record, 'pixel', 'auroc'):>8s} {percent(record, 'loco', 'logical'):>7s}")
                else:
                    failed += 1
                    last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
                    print(f"{model:10s} {data:32s} {'FAILED':8s} {wall:7.0f}  {last}")
    print(f"{failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
