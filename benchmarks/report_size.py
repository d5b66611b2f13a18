"""How long the report is per paper, how many cells it compares, and how long it takes to build.

    python benchmarks/report_size.py                       # the repository's results/smoke, in a temp copy
    python benchmarks/report_size.py --output-root DIR     # another output tree (built in a temp copy too)
    python benchmarks/report_size.py --fixture             # tests/test_report.py's VarAD-like full smoke tree

The copy keeps the repository's REPORT.md and site/ untouched. Prints, per paper: REPORT.md lines of its
section, tables shown in the paper's shape, cells beside a printed number, comparable cells, and the seconds
the whole build took (wall time: noisy on shared cores).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _copy_tree(source: Path, profile: str, target: Path) -> None:
    results = source / "results" / profile
    if results.is_dir():
        shutil.copytree(results, target / "results" / profile, ignore=shutil.ignore_patterns("site", "REPORT.md"))
    figures = source / "figures" / profile
    if figures.is_dir():
        shutil.copytree(figures, target / "figures" / profile)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-root", type=Path, default=REPO)
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--fixture", action="store_true", help="build tests/test_report.py's VarAD-like tree")
    args = parser.parse_args()

    import pandas as pd

    from adlib.app import report

    work = Path(tempfile.mkdtemp(prefix="adlib-report-"))
    if args.fixture:
        sys.path.insert(0, str(REPO / "tests"))
        from test_report import _varad_like

        _varad_like(work)
    else:
        _copy_tree(args.output_root, args.profile, work)
    notebooks = None if args.fixture else REPO / "notebooks"  # the fixture's run records have made-up names
    start = time.perf_counter()
    path = report.build_report(work, args.profile, notebook_root=notebooks)
    seconds = time.perf_counter() - start
    text = path.read_text()
    entries = report.collect(work, args.profile, notebook_root=notebooks)
    print(f"REPORT.md: {len(text.splitlines())} lines in all, built in {seconds:.1f} s ({work})")
    for entry in entries:
        start_at = text.find(f"\n## {entry.name}")
        end_at = text.find("\n## ", start_at + 1)
        section = text[start_at: end_at if end_at > 0 else None]
        cells = [c for v in report.views_of(entry).values() for c in v.shown()]
        beside = [c for c in cells if not pd.isna(c["ours"]) and not pd.isna(c["paper"])]
        comparable = [c for c in beside if not pd.isna(c["diff"])]
        print(f"  {entry.name:8s} {len(section.splitlines()):4d} lines, {len(report.views_of(entry))} tables in the "
              f"paper's shape, {len(beside)} cells beside a printed number, {len(comparable)} comparable")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
