"""Shared pieces of the GPU checks (``gpu_check.py`` and the per-paper ``gpu_<paper>.py`` steps)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Callable, Sequence

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the reference's largest magnitude."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def pick_device(device: str | None, dry_run: bool) -> torch.device:
    """``device``, else CUDA when present, the CPU for a dry run."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() and not dry_run else "cpu"))


def run_checks(checks: Sequence[tuple[str, Callable]], device: torch.device, dry_run: bool,
               out: dict | None = None) -> dict:
    """Each ``fn(device, dry_run) -> dict`` under its name, with the seconds it took as ``step_s``."""
    out = {} if out is None else out
    for name, fn in checks:
        start = time.perf_counter()
        out[name] = fn(device, dry_run)
        out[name]["step_s"] = round(time.perf_counter() - start, 1)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def cli(name: str, doc: str, main: Callable[..., dict]) -> None:
    """The command line of a ``main(dry_run, device)`` step: refuses to run without CUDA unless --dry-run."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available() and args.device is None:
        print(f"{name}: no CUDA device here; use --dry-run to check the script on the CPU", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(main(dry_run=args.dry_run, device=args.device), indent=2, default=str))
