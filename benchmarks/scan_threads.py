"""One VarAD smoke fit (synthetic capsule, the notebooks' 40 images, batch 1) under three thread settings.

    python benchmarks/scan_threads.py               # torch 2 threads, torch 1 thread, the scan forced threaded
    OMP_WAIT_POLICY=PASSIVE python benchmarks/scan_threads.py

Prints the fit's wall and CPU seconds for: ``default`` (torch's threads = 2, small scans on the calling thread,
``adlib.ssm.PARALLEL_MIN_WORK``), ``one thread`` (torch.set_num_threads(1)) and ``scan threaded`` (bound 0: every
scan shares its rows among the pool threads, the behaviour before the bound). The feature cache is warmed first,
so the fits time the predictor's training only. Each fit is ``adlib.study.run_one`` (the notebooks' run path,
VarAD's smoke profile) with the run cache off; the times are those of the fit alone (``FitResult.train_seconds``
and ``cpu_seconds``). Wall times on a shared machine are noisy: the load is printed.
"""
from __future__ import annotations

import os


def fit_once(threads: int, parallel_min: int | None) -> tuple[float, float]:
    import torch

    from adlib import papers, ssm
    from adlib.study import resolve_setting, run_one

    torch.set_num_threads(threads)
    saved = ssm.PARALLEL_MIN_WORK
    if parallel_min is not None:
        ssm.PARALLEL_MIN_WORK = parallel_min
    try:
        setting = resolve_setting(papers.get("varad"), "smoke", image_size=256)  # the notebooks' caps: 40 images
        source = setting.synthetic_sources("synthetic_ad", categories=["capsule"])
        run = run_one(setting, source, "varad", seed=0, cache=False)
        return run.fit.train_seconds, run.fit.cpu_seconds
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
