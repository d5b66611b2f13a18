"""Issue 4 target: smoke-profile VarAD and PatchCore on real MVTec AD bottle, with wall times and CPU load.

    ADLIB_DATA=/work/shared/data python benchmarks/varad_bottle.py [--models varad patchcore] [--json OUT]

Runs exactly what `python -m adlib run MODEL --data-root $ADLIB_DATA/mvtec_ad --category bottle --profile smoke`
runs, one model after the other, and prints image/pixel AUROC, AP, max-F1, AU-PRO, the wall time of the whole
command (model build, training, evaluation) and the 1-minute load average before and after (other processes
on a shared machine slow it down).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["varad", "patchcore"])
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--json", default=None, help="write all records to this file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    data = os.environ.get("ADLIB_DATA")
    if not data or not (Path(data) / "mvtec_ad" / args.category).is_dir():
        print(f"set ADLIB_DATA to a folder with mvtec_ad/{args.category}", file=sys.stderr)
        return 2

    from adlib.app import cli
    from adlib.app.run import _format, execute

    records = []
    for model in args.models:
        argv = ["run", model, "--data-root", str(Path(data) / "mvtec_ad"), "--category", args.category,
                "--profile", "smoke", "--no-progress"]
        for o in args.overrides:
            argv += ["--set", o]
        run_args = cli.build_parser().parse_args(argv)
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        record = execute(run_args)
        record["timing"]["wall_s"] = time.perf_counter() - start
        record["timing"]["load_before"] = load_before
        record["timing"]["load_after"] = os.getloadavg()[0]
        records.append(record)
        print(_format(record))
        print(f"  wall {record['timing']['wall_s']:.0f} s (load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} cores)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
