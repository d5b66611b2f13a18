"""Issue 11 targets: the peers RD4AD and UniAD (and PatchCore beside them) in the smoke profile, with fit times.

    ADLIB_DATA=/work/shared/data python benchmarks/peers.py                      # all, 3 seeds
    ADLIB_DATA=/work/shared/data python benchmarks/peers.py --max-train-images 40  # the notebooks' cap
    python benchmarks/peers.py --quick --skip-bottle                             # fewer images, no real data

Every run is exactly ``python -m adlib run MODEL --profile smoke --seed S ...`` (``adlib.app.run.execute``):

- one-class on real MVTec AD bottle (``--data-root $ADLIB_DATA/mvtec_ad --category bottle``): targets
  pixel AUROC >= 95 (RD4AD) and >= 93 (UniAD), mean over the seeds;
- multi-class on the embedded ``synthetic_multi`` (``--setting multi-class --categories all``: one model for
  all four categories, evaluated per category): each model within 5 points of PatchCore's mean pixel AUROC.

Printed per run: the metrics (exact protocol; ``--protocol both`` adds ADer's), the fit's wall seconds and
its CPU seconds (``time.process_time`` summed over torch's threads during the fit, ``FitResult.cpu_seconds``; on
an idle 2-core machine the fit's wall time lies between CPU/2 and CPU; a fit read from the run cache keeps the
seconds it took and is marked "cache"; ``--no-cache`` trains every one), and the load average, because other
processes on a shared machine stretch wall times (``--threads 1`` keeps torch's threads from fighting them
for the cores). ``--quick`` caps training images (40 for bottle, 80 in
all for the multi-class set) and runs one seed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

TARGETS = {"rd4ad": 0.95, "uniad": 0.93}  # bottle pixel AUROC, mean over seeds
MULTI_MARGIN = 0.05  # multi-class: within 5 points of PatchCore's mean pixel AUROC


def run_one(model: str, setting: str, seed: int, args, data_root: Path | None) -> dict:
    from adlib.app import cli
    from adlib.app.run import execute

    argv = ["run", model, "--profile", "smoke", "--seed", str(seed), "--no-progress", "--protocol", args.protocol]
    if setting == "one-class":
        argv += ["--data-root", str(data_root), "--category", "bottle"]
        cap = 40 if args.quick else args.max_train_images
    else:
        argv += ["--setting", "multi-class", "--categories", "all", "--synthetic", "synthetic_multi"]
        cap = 80 if args.quick else args.max_train_images_multi
    if cap:
        argv += ["--max-train-images", str(cap)]
    for override in args.overrides:
        argv += ["--set", override]
    if args.no_cache:
        argv.append("--no-cache")
    load = os.getloadavg()[0]
    record = execute(cli.build_parser().parse_args(argv))
    record["bench"] = {"fit_cpu_s": record["timing"]["train_cpu_s"], "load_before": load,
                       "load_after": os.getloadavg()[0], "seed": seed, "setting": setting, "argv": argv,
                       "fit": ", ".join(f"{n} {k}" for k, n in record["fits"].items() if n)}
    return record


def _fmt(values: list[float], scale: float = 100.0) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ({min(values) * scale:.1f}-{max(values) * scale:.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["rd4ad", "uniad", "patchcore"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="fewer training images and one seed")
    parser.add_argument("--max-train-images", type=int, default=None, help="bottle: at most N training images")
    parser.add_argument("--max-train-images-multi", type=int, default=None,
                        help="multi-class: at most N training images in all")
    parser.add_argument("--protocol", default="exact", choices=["exact", "ader", "both"])
    parser.add_argument("--skip-bottle", action="store_true")
    parser.add_argument("--skip-multi", action="store_true")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's); 1 avoids thread contention on a busy machine")
    parser.add_argument("--json", default=None, help="write all run records to this file")
    parser.add_argument("--no-cache", action="store_true", help="train every fit (the run cache neither read nor written)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    seeds = args.seeds[:1] if args.quick else args.seeds
    data = os.environ.get("ADLIB_DATA")
    data_root = Path(data) / "mvtec_ad" if data else None
    settings = []
    if not args.skip_bottle:
        if data_root is None or not (data_root / "bottle").is_dir():
            print("no MVTec AD bottle: set ADLIB_DATA (or pass --skip-bottle)", file=sys.stderr)
            return 2
        settings.append("one-class")
    if not args.skip_multi:
        settings.append("multi-class")

    records = []
    for setting in settings:
        for model in args.models:
            for seed in seeds:
                record = run_one(model, setting, seed, args, data_root)
                records.append(record)
                b, t = record["bench"], record["timing"]
                pixel, image = record["pixel"], record["image"]
                print(f"{model:>9} {setting:>11} seed {seed}: pixel AUROC {100 * pixel.get('auroc', float('nan')):.1f} "
                      f"AU-PRO {100 * pixel.get('aupro', float('nan')):.1f} | image AUROC "
                      f"{100 * image.get('auroc', float('nan')):.1f} | fit {t['train_s']:.0f} s wall, "
                      f"{b['fit_cpu_s']:.0f} s CPU on {record['fit'].get('train_images')} images [{b['fit']}] "
                      f"(load {b['load_before']:.1f} -> {b['load_after']:.1f})", flush=True)
                for protocol, m in record["metrics"].items():
                    if protocol != "exact":
                        print(f"{'':>22}[{protocol}] pixel AUROC {100 * m['pixel'].get('auroc', float('nan')):.1f} "
                              f"image AUROC {100 * m['image'].get('auroc', float('nan')):.1f}")
                    for category, values in m.get("categories", {}).items():
                        print(f"{'':>22}[{protocol}] {category:>8}: pixel AUROC {100 * values['pixel'].get('auroc', float('nan')):.1f}"
                              f" image AUROC {100 * values['image'].get('auroc', float('nan')):.1f}")

    print(f"\nsummary (exact protocol; mean over seeds {seeds}, min-max in brackets; "
          f"{os.cpu_count()} cores, torch threads {__import__('torch').get_num_threads()})")
    print(f"{'model':>9} {'setting':>11} {'train':>5} | {'pixel AUROC':>17} {'AU-PRO':>17} {'image AUROC':>17} | "
          f"{'fit wall s':>10} {'fit CPU s':>9}")
    means: dict[tuple[str, str], float] = {}
    for setting in settings:
        for model in args.models:
            rows = [r for r in records if r["model"] == model and r["bench"]["setting"] == setting]
            if not rows:
                continue
            exact = [r["metrics"]["exact"] if "exact" in r["metrics"] else r for r in rows]
            pix = [m["pixel"]["auroc"] for m in exact]
            means[(model, setting)] = statistics.fmean(pix)
            print(f"{model:>9} {setting:>11} {rows[0]['fit'].get('train_images', 0):>5} | {_fmt(pix):>17} "
                  f"{_fmt([m['pixel'].get('aupro', float('nan')) for m in exact]):>17} "
                  f"{_fmt([m['image'].get('auroc', float('nan')) for m in exact]):>17} | "
                  f"{statistics.fmean(r['timing']['train_s'] for r in rows):>10.0f} "
                  f"{statistics.fmean(r['bench']['fit_cpu_s'] for r in rows):>9.0f}")
    print()
    for model, target in TARGETS.items():
        if (model, "one-class") in means:
            value = means[(model, "one-class")]
            print(f"target {model} bottle pixel AUROC >= {100 * target:.0f}: {100 * value:.1f} -> "
                  f"{'met' if value >= target else 'NOT met'}")
    reference = means.get(("patchcore", "multi-class"))
    for model in TARGETS:
        if reference is not None and (model, "multi-class") in means:
            gap = means[(model, "multi-class")] - reference
            print(f"target {model} multi-class within {100 * MULTI_MARGIN:.0f} points of PatchCore "
                  f"({100 * reference:.1f}): {100 * means[(model, 'multi-class')]:.1f} ({100 * gap:+.1f}) -> "
                  f"{'met' if gap >= -MULTI_MARGIN else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
