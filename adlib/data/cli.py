"""`python -m adlib data stats|synth|download|convert-visa ...` (no torch import at module import time)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    stats = sub.add_parser("stats", help="Table-I-style counts per dataset and category")
    stats.add_argument("--root", required=True, type=Path,
                       help="a dataset folder (holding categories) or a folder of dataset folders")
    stats.add_argument("--csv", type=Path, default=None, help="also write the rows to this CSV file")
    stats.set_defaults(_data_handler=_stats)

    synth = sub.add_parser("synth", help="write the embedded synthetic benchmark (MVTec / LOCO layouts)")
    synth.add_argument("--out", required=True, type=Path, help="output folder (dataset folders go inside)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--size", type=int, default=256, help="image side in px (default 256)")
    synth.add_argument("--hr-size", type=int, default=None,
                       help="image side of synthetic_hr in px (default 2 * size; 1024 supported)")
    synth.add_argument("--datasets", nargs="+", default=None, help="subset of the synthetic datasets")
    synth.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    synth.set_defaults(_data_handler=_synth)

    download = sub.add_parser("download", help="download, verify and extract an official dataset")
    download.add_argument("name", help="mvtec_ad, visa, btad, mvtec_loco or dtd_synthetic")
    download.add_argument("--root", required=True, type=Path, help="folder that receives the dataset folder")
    download.add_argument("--url", default=None, help="override the source address (mirror, file://...)")
    download.add_argument("--sha256", default=None, help="expected sha256 of the archive")
    download.add_argument("--quiet", action="store_true", help="no progress bar")
    download.set_defaults(_data_handler=_download)

    visa = sub.add_parser("convert-visa", help="convert extracted VisA to the MVTec layout (split_csv/1cls.csv)")
    visa.add_argument("--src", required=True, type=Path, help="extracted VisA_20220922 folder")
    visa.add_argument("--out", required=True, type=Path, help="new output folder")
    visa.set_defaults(_data_handler=_convert_visa)


def main(args: argparse.Namespace) -> int:
    from .layout import DatasetError
    from .download import DownloadError, UnsafeArchiveError

    try:
        return int(args._data_handler(args) or 0)
    except (DatasetError, DownloadError, UnsafeArchiveError, ValueError, PermissionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk or a vanished folder half-way: one line naming the path
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error}", file=sys.stderr)
        return 2


def _stats(args) -> int:
    from adlib.io import check_writable, remove_stale

    from .layout import dataset_stats, format_stats

    if args.csv:  # before reading the dataset: a long listing is not lost to an unwritable path
        remove_stale([args.csv.parent], recursive=False)
        check_writable(args.csv, "--csv")
    rows = dataset_stats(args.root)
    print(format_stats(rows))
    if args.csv:
        import csv

        from adlib.io import atomic_path

        with atomic_path(args.csv) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


def _synth(args) -> int:
    from adlib.io import check_writable_dir, remove_stale

    from .synth import DATASETS, generate

    check_writable_dir(args.out, "--out")  # before generating: fail now, not after minutes of work
    remove_stale([args.out])
    start = time.perf_counter()
    out = generate(args.out, seed=args.seed, size=args.size, hr_size=args.hr_size,
                   datasets=tuple(args.datasets or DATASETS), workers=args.workers)
    print(f"wrote {', '.join(args.datasets or DATASETS)} to {out} in {time.perf_counter() - start:.1f} s")
    return 0


def _download(args) -> int:
    from adlib.io import check_writable_dir

    from .download import SOURCES, download_dataset

    check_writable_dir(args.root, "--root")

    source = SOURCES.get(args.name)
    if source is not None:
        print(f"{args.name}: licence {source.license}; terms at {source.page}", file=sys.stderr)
    target = download_dataset(args.name, args.root, url=args.url, sha256=args.sha256, progress=not args.quiet)
    print(f"{args.name} is in {target}")
    return 0


def _convert_visa(args) -> int:
    from .visa import convert_visa

    counts = convert_visa(args.src, args.out)
    for name, row in sorted(counts.items()):
        print(f"{name}: train good {row['train_good']}, test good {row['test_good']}, test bad {row['test_bad']}")
    return 0
