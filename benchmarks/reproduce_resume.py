"""Time `adlib reproduce` and a second `--resume` run (the issue: the second run finishes in seconds).

    python benchmarks/reproduce_resume.py            # the tiny test notebooks (seconds)
    python benchmarks/reproduce_resume.py --real     # the repository's notebooks, smoke profile (minutes)

Outputs go to a temporary folder; the repository's results/ are not touched.
"""
from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

from adlib import results
from adlib.app import reproduce


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="the repository's notebooks instead of the fixtures")
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    fixtures = results.repo_root() / "tests" / "fixtures" / "notebooks"
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(output_root=Path(tmp), jobs=args.jobs, resume=True)
        if args.real:
            config = reproduce.ReproduceConfig(**common)
        else:
            (Path(tmp) / "data").mkdir()
            config = reproduce.ReproduceConfig(notebook_root=fixtures, papers=["demo"], data_root=str(Path(tmp) / "data"),
                                               **common)
        for label in ("first run", "second run (--resume)"):
            start = time.perf_counter()
            summary = reproduce.reproduce(config, stream=io.StringIO())
            seconds = time.perf_counter() - start
            statuses = {s: sum(o.status == s for o in summary.outcomes) for s in ("ok", "skipped", "failed")}
            print(f"{label:24s} {seconds:7.2f} s  {statuses}  (report included)")


if __name__ == "__main__":
    main()
