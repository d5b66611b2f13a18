"""What the run cache saves: a part of the notebook collection with the cache off, on (empty) and on again (warm).

    python benchmarks/run_cache.py --only 'ladmim/*'                  # one paper's notebooks, smoke profile
    ADLIB_DATA=/work/shared/data python benchmarks/run_cache.py --only 'vitad/0[01]*' --jobs 2

Each pass is ``python -m adlib reproduce --only PATTERN --output-root TMP/<pass> --no-report`` in a fresh
process, all three with the same empty run cache folder (``ADLIB_RUN_CACHE_DIR``, a temporary folder: the
user's cache is neither read nor filled): ``off`` (``ADLIB_RUN_CACHE=0``: every fit trains, as before the
cache), ``cold`` (the cache on and empty: a fit repeated across notebooks trains once) and ``warm`` (the same
notebooks again: every fit is read). Printed per pass: the wall time, the notebooks that ended ok, and the
fits trained and read from the cache, summed over the notebooks' run records (their kernels report them,
``adlib.results.runtime``); then whether the tables the passes wrote hold the same numbers (timing rows apart).
Wall times on a shared machine are upper bounds: the load average is printed with them.
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

TIMING_METRICS = {"train_s", "fps", "seconds", "eval_s", "time_s", "ms_per_image"}  # differ from run to run


def one_pass(name: str, args, root: Path, cache: Path, enabled: bool) -> dict:
    out = root / name
    command = [sys.executable, "-m", "adlib", "reproduce", "--only", args.only, "--output-root", str(out),
               "--no-report", "--jobs", str(args.jobs)]
    if args.data_root:
        command += ["--data-root", args.data_root]
    env = {**os.environ, "ADLIB_RUN_CACHE": "1" if enabled else "0", "ADLIB_RUN_CACHE_DIR": str(cache)}
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    records = [json.loads(p.read_text()) for p in sorted(out.rglob("*.run.json"))]
    fits = {"trained": 0, "cache": 0}
    for record in records:
        for key in fits:
            fits[key] += int((record.get("kernel") or {}).get("fits", {}).get(key, 0))
    return {"name": name, "wall": wall, "load": (load + os.getloadavg()[0]) / 2, "returncode": done.returncode,
            "ok": sum(r.get("status") == "ok" for r in records), "notebooks": len(records), "fits": fits,
            "out": out, "tail": (done.stdout + done.stderr)[-2000:]}


def tables(out: Path) -> dict[str, "object"]:
    import pandas as pd

    found = {}
    for path in sorted((out / "results").rglob("*.csv")) if (out / "results").is_dir() else []:
        table = pd.read_csv(path)
        if "metric" in table.columns:
            table = table[~table["metric"].astype(str).isin(TIMING_METRICS)]
        if "level" in table.columns:
            table = table[table["level"].astype(str) != "model"]
        found[str(path.relative_to(out))] = table.drop(columns=[c for c in ("fit",) if c in table.columns])
    return found


def same_numbers(a: Path, b: Path) -> tuple[int, list[str]]:
    """(tables with the same values, names of those that differ or exist in one pass only)."""
    import numpy as np

    left, right = tables(a), tables(b)
    differ = sorted(set(left) ^ set(right))
    same = 0
    for name in sorted(set(left) & set(right)):
        x, y = left[name], right[name]
        if "value" in x.columns and "value" in y.columns and len(x) == len(y):
            ok = np.array_equal(x["value"].to_numpy(dtype=float), y["value"].to_numpy(dtype=float), equal_nan=True)
        else:
            ok = x.equals(y)
        if ok:
            same += 1
        else:
            differ.append(name)
    return same, differ


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", required=True, help="notebooks to run: adlib reproduce's --only pattern")
    parser.add_argument("--data-root", default=None, help="passed to adlib reproduce (default: embedded data only)")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks at a time (two kernels then share the cache)")
    parser.add_argument("--passes", default="off,cold,warm", help="which passes, in order (default: all three)")
    parser.add_argument("--keep", default=None, metavar="DIR", help="work in DIR and keep it (default: a temp folder)")
    args = parser.parse_args(argv)
    passes = [p for p in args.passes.split(",") if p]
    unknown = sorted(set(passes) - {"off", "cold", "warm"})
    if unknown:
        parser.error(f"--passes: unknown {unknown}; expected off, cold, warm")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="adlib-run-cache-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "runs"
    print(f"adlib reproduce --only {args.only!r} --jobs {args.jobs}{' --data-root ' + args.data_root if args.data_root else ''}"
          f"; {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}; work in {work}",
          flush=True)
    results = []
    for name in passes:
        result = one_pass(name, args, work, cache, enabled=name != "off")
        results.append(result)
        f = result["fits"]
        print(f"  {name:5s} cache {'off' if name == 'off' else 'on '}: {result['wall']:7.1f} s wall (load "
              f"{result['load']:.1f}), notebooks ok {result['ok']}/{result['notebooks']}, fits trained "
              f"{f['trained']}, read from the cache {f['cache']}", flush=True)
        if result["returncode"] != 0 or result["ok"] < result["notebooks"]:
            print("    " + result["tail"].replace("\n", "\n    "))
    by_name = {r["name"]: r for r in results}
    for a, b in (("off", "cold"), ("off", "warm"), ("cold", "warm")):
        if a in by_name and b in by_name:
            same, differ = same_numbers(by_name[a]["out"], by_name[b]["out"])
            print(f"  tables {a} vs {b}: {same} hold the same numbers (timing rows apart)"
                  + (f"; differ: {', '.join(differ)}" if differ else ""))
    if "off" in by_name:
        base = by_name["off"]["wall"]
        for name in ("cold", "warm"):
            if name in by_name:
                print(f"  {name}: {by_name[name]['wall'] / base:.2f} x the time with the cache off")
    return 0 if all(r["returncode"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
