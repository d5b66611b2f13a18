"""What `adlib.data.check_split` costs on a real test split, per mode, against decoding every image.

    ADLIB_DATA=../shared/data python benchmarks/check_split.py [--category bottle] [--repeats 3]

Prints the median seconds of each mode (header: sizes only; verify: PNG chunk checksums / JPEG at 1/8
scale; full: every image decoded). Masks are decoded in every mode (their values are checked).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from adlib.data import AnomalyDataset, check_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.path.join(os.environ.get("ADLIB_DATA", "../shared/data"), "mvtec_ad"))
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    test = AnomalyDataset(args.root, args.category, "test")
    check_split(test, "header")  # warm the file cache: every mode then reads from memory
    print(f"{args.category} test split: {len(test)} images, {sum(test.labels)} with masks")
    for mode in ("header", "verify", "full"):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            report = check_split(test, mode)
            times.append(time.perf_counter() - start)
        print(f"  {mode:>6}: {statistics.median(times):.2f} s  ({report.statement()})")


if __name__ == "__main__":
    main()
