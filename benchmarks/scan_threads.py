"""One VarAD smoke fit (synthetic capsule, the notebooks' 40 images, batch 1) under three thread settings.

    python benchmarks/scan_threads.py               # torch 2 threads, torch 1 thread, the scan forced threaded
    OMP_WAIT_POLICY=PASSIVE python benchmarks/scan_threads.py

Prints the fit's wall and CPU seconds for: ``default`` (torch's threads = 2, small scans on the calling thread,
``adlib.ssm.PARALLEL_MIN_WORK``), ``one thread`` (torch.set_num_threads(1)) and ``scan threaded`` (bound 0: every
scan shares its rows among the pool threads, the behaviour before the bound). The feature cache is warmed first,
so the fits time the predictor's training only. Wall times on a shared machine are noisy: the load is printed.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def fit_once(threads: int, parallel_min: int | None) -> tuple[float, float]:
    import torch

    import varad_smoke as vs
    from adlib import engine, ssm
    from adlib.data import synthetic_root

    torch.set_num_threads(threads)
    saved = ssm.PARALLEL_MIN_WORK
    if parallel_min is not None:
        ssm.PARALLEL_MIN_WORK = parallel_min
    try:
        train, _ = vs.datasets(synthetic_root() / "synthetic_ad", "capsule", 256, True)
        model, fit = vs.build("varad", 0, 256)
        start, cpu = time.perf_counter(), time.process_time()
        engine.fit(model, train, fit)
        return time.perf_counter() - start, time.process_time() - cpu
    finally:
        ssm.PARALLEL_MIN_WORK = saved


def main() -> int:
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, load {os.getloadavg()[0]:.1f}", flush=True)
    fit_once(2, None)  # warm the feature cache and the kernel build
    for label, threads, bound in (("default", 2, None), ("one thread", 1, None), ("scan threaded", 2, 0)):
        wall, cpu = fit_once(threads, bound)
        print(f"{label:14s} fit wall {wall:6.1f} s  cpu {cpu:6.1f} s  (load {os.getloadavg()[0]:.1f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
