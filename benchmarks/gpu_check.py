"""The GPU check: the paper profiles' speed and memory, and adlib's selective scan on CUDA.

Run it as one script when a session is lent a GPU (it is sized for about 8 minutes on one H200):

    python benchmarks/gpu_check.py                 # on the GPU machine
    python benchmarks/gpu_check.py --dry-run       # tiny sizes on the CPU: checks the script itself (tests do this)

What it prints, step by step (each step is timed and a failing step does not stop the others):

1. ``scan``: ``adlib.ssm.selective_scan`` on CUDA (the pure-PyTorch path, ``impl="torch"``) against the
   reference step loop, forward and all gradients (u, delta, A, B, C, D, delta_bias) with
   ``delta_softplus=True``; within 1e-4 relative is a pass. With ``mamba_ssm`` importable, its fused kernel
   against the same reference, including the ``delta_softplus`` / ``delta_bias`` backward
   (state-spaces/mamba #368). Also MambaAD's case: 8 directions as K·d channels in one call.
2. ``varad``: the VarAD paper profile at 1024 px (DINOv2 ViT-S/14, random weights: the same cost): training
   step time at batch size 2 (the paper's Fig. 7 batch), inference FPS at batch 1, peak memory; beside the
   paper's 8.0 FPS and 389 s of training (10 epochs, one NVIDIA 3090 Ti). The training-time estimate assumes
   a category of 209 training images (MVTec AD bottle) and says so.
3. the other papers' steps, from ``benchmarks/gpu_<paper>.py`` modules that define ``main(dry_run=...)``.
4. ``path_check``: ``python -m adlib reproduce --profile paper --check --device cuda`` (the paper profile's code
   path at a cut scale, issue 20) in a subprocess with a time limit; prints each notebook's status and seconds.
   It needs the notebook runner (papermill, nbformat, nbclient, ipykernel, jupyter_client): where they do not
   import, the step says which are missing and how to bring them (wheels, see the device notes) and skips.
   ``--dry-run`` runs it on the CPU on the cheapest notebook (``varad/01*``), which checks the step itself.
   On the lent machine (which has torch, timm, pandas, matplotlib, scikit-learn and scipy but not the runner)
   carry the wheels of papermill and its dependencies (nbformat, nbclient, jupyter_client, ipykernel, ipython,
   traitlets, pyzmq, tornado, fastjsonschema, jsonschema, tenacity, entrypoints, ...) and run
   ``python benchmarks/gpu_check.py --only path_check`` (limit: PATH_CHECK_LIMIT_S) or the whole script.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import sync as _sync, rel as _rel, peak_mb as _peak_mb, reset_peak as _reset_peak  # noqa: E402

PAPER_VARAD = {"fps": 8.0, "train_s": 389.0, "epochs": 10, "batch_size": 2}


def scan_check(device: torch.device, dry_run: bool) -> dict:
    """adlib's scan (and mamba_ssm's, if present) against the reference loop on ``device``."""
    from adlib import ssm

    batch, dim, length, nstate = (1, 8, 64, 4) if dry_run else (2, 768, 1369, 16)
    g = torch.Generator().manual_seed(0)
    base = {
        "u": torch.randn(batch, dim, length, generator=g), "delta": torch.randn(batch, dim, length, generator=g) - 2,
        "A": -torch.exp(torch.randn(dim, nstate, generator=g) * 0.5), "B": torch.randn(batch, nstate, length, generator=g),
        "C": torch.randn(batch, nstate, length, generator=g), "D": torch.randn(dim, generator=g),
        "delta_bias": torch.randn(dim, generator=g) * 0.1,
    }
    weight = torch.randn(batch, dim, length, generator=g)

    def run(impl: str) -> tuple[torch.Tensor, dict[str, torch.Tensor], float]:
        t = {k: v.detach().clone().to(device).requires_grad_(True) for k, v in base.items()}  # fresh leaves per run
        _sync(device)
        start = time.perf_counter()
        y = ssm.selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], delta_bias=t["delta_bias"],
                               delta_softplus=True, impl=impl)
        (y * weight.to(device)).sum().backward()
        _sync(device)
        return y.detach(), {k: v.grad.detach() for k, v in t.items()}, time.perf_counter() - start

    out = {"shape": f"batch {batch}, d {dim}, L {length}, N {nstate}"}
    y_ref, g_ref, t_ref = run("reference")
    out["reference_s"] = round(t_ref, 3)
    impls = ["torch"] + (["cuda"] if device.type == "cuda" and ssm._mamba_ssm_scan() is not None else [])
    for impl in impls:
        y, grads, seconds = run(impl)
        worst = max([_rel(y, y_ref)] + [_rel(grads[k], g_ref[k]) for k in g_ref])
        out[impl] = {"seconds": round(seconds, 4), "max_rel_diff": worst, "pass": worst <= 1e-4,
                     "per_input": {k: _rel(grads[k], g_ref[k]) for k in g_ref}}
    if "cuda" not in impls:
        out["mamba_ssm"] = "not importable here: only adlib's PyTorch scan was checked"
    # MambaAD: 8 directions of d channels each as one call with 8·d channels
    k_dirs = 8
    u = torch.randn(batch, k_dirs * dim // 8, length, device=device)
    delta = torch.randn_like(u) - 2
    A = -torch.rand(u.shape[1], nstate, device=device) - 0.5
    Bm, Cm = (torch.randn(batch, k_dirs, nstate, length, device=device) for _ in range(2))
    y_one = ssm.selective_scan(u, delta, A, Bm, Cm, impl="torch", delta_softplus=True)
    y_ref8 = ssm.selective_scan_reference(u, delta, A, Bm, Cm, delta_softplus=True)
    out["grouped_8_directions_max_rel_diff"] = _rel(y_one, y_ref8)
    return out


def varad_check(device: torch.device, dry_run: bool) -> dict:
    """The VarAD paper profile's training step, inference speed and memory."""
    from adlib import papers
    from adlib.engine import seed_everything
    from adlib.models import create_model

    recipe = papers.get("varad").recipe("varad", "paper")
    overrides = dict(recipe.model)
    overrides["pretrained"] = False
    if dry_run:
        overrides.update(backbone="efficientnet_lite0", layers=None, image_size=64, m=1)
    size = overrides["image_size"]
    seed_everything(0)
    model = create_model("varad", **overrides).to(device)
    batch = recipe.fit.batch_size
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.fit.lr)
    images = torch.rand(batch, 3, size, size, device=device)
    steps = 2 if dry_run else 6
    _reset_peak(device)
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            features = model.extract(images)
        loss = model.loss(features)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        times.append(time.perf_counter() - start)
    step = sorted(times[1:])[len(times[1:]) // 2]
    train_peak = _peak_mb(device)
    model.eval()
    one = torch.rand(1, 3, size, size, device=device)
    with torch.no_grad():
        model.predict(one)
        _sync(device)
        start = time.perf_counter()
        n = 2 if dry_run else 10
        for _ in range(n):
            model.predict(one)
        _sync(device)
    fps = n / (time.perf_counter() - start)
    images_per_epoch = 209
    estimate = step * (images_per_epoch / batch) * recipe.fit.epochs
    return {"image_size": size, "batch_size": batch, "train_step_s": round(step, 4),
            "train_estimate_s": round(estimate, 1),
            "train_estimate_assumes": f"{images_per_epoch} training images x {recipe.fit.epochs} epochs, "
                                      f"frozen features recomputed every step (no cache)",
            "inference_fps": round(fps, 2), "train_peak_mb": round(train_peak, 1),
            "paper": PAPER_VARAD, "note": "random weights (cost only); side by side with the paper's 3090 Ti, "
                                          "never a difference: the hardware differs"}


RUNNER_MODULES = ("papermill", "nbformat", "nbclient", "ipykernel", "jupyter_client")
PATH_CHECK_LIMIT_S = 420  # the whole path check on the device; notebooks not started after 5 minutes are deferred
PATH_CHECK_DRY_ONLY = "varad/01*"  # a dry run: the cheapest notebook, on the CPU


def path_check(device: torch.device, dry_run: bool, only: str | None = None,
               limit_s: float = PATH_CHECK_LIMIT_S) -> dict:
    """``adlib reproduce --profile paper --check`` on ``device`` in a subprocess; per notebook its status and
    seconds (parsed from the runner's summary), the run's total, and its last lines when it fails."""
    import importlib.util
    import os
    import re
    import subprocess
    import tempfile

    missing = [m for m in RUNNER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return {"skipped": f"the notebook runner is not importable here ({', '.join(missing)}): bring their wheels "
                           "with adlib's other pure-Python dependencies (see the device notes) and run again"}
    only = only or (PATH_CHECK_DRY_ONLY if dry_run else None)
    root = Path(tempfile.mkdtemp(prefix="adlib-path-check-"))
    command = [sys.executable, "-m", "adlib", "reproduce", "--profile", "paper", "--check", "--device", str(device),
               "--output-root", str(root), "--no-report", "--time-budget", str(int(limit_s * 0.7))]
    command += ["--only", only] if only else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                     os.environ.get("PYTHONPATH", "")]))}
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit_s, env=env)
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as error:
        output = (error.stdout or b"").decode(errors="replace") if isinstance(error.stdout, bytes) else (error.stdout or "")
        code = "timeout"
    times = {label: {"status": status, "seconds": float(seconds)}
             for seconds, status, label in re.findall(r"^\s+([\d.]+) s\s+(\w+)\s+(\S+)", output, re.M)}
    out = {"command": " ".join(command), "returncode": code, "seconds": round(time.perf_counter() - start, 1),
           "notebooks": times, "output_root": str(root),
           "note": "path check: not results (cut scale, random weights, stand-in data)"}
    if code != 0:
        out["tail"] = output[-3000:]
    return out


STEPS = {"scan": scan_check, "varad": varad_check, "path_check": path_check}
PAPER_MODULES = ("gpu_vitad", "gpu_mambaad", "gpu_ladmim")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (checks the script)")
    parser.add_argument("--only", nargs="*", default=None,
                        help="steps to run (scan, varad, vitad, mambaad, ladmim, path_check)")
    parser.add_argument("--check-only", default=None, metavar="PATTERN",
                        help="path_check: only these notebooks (adlib reproduce --only PATTERN)")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.dry_run:
        print("gpu_check: no CUDA device here; use --dry-run to check the script on the CPU", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"
    print(f"gpu_check on {name}, torch {torch.__version__}")
    failed = 0
    steps = dict(STEPS)
    for module_name in PAPER_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        steps[module_name.removeprefix("gpu_")] = lambda device, dry_run, m=module: m.main(dry_run=dry_run, device=str(device))
    if args.check_only:
        steps["path_check"] = lambda device, dry_run: path_check(device, dry_run, only=args.check_only)
    for step, fn in steps.items():
        if args.only and step not in args.only:
            continue
        start = time.perf_counter()
        try:
            result = fn(device, args.dry_run)
            print(f"[{step}] {time.perf_counter() - start:.1f} s: {result}", flush=True)
        except Exception:
            failed += 1
            print(f"[{step}] FAILED after {time.perf_counter() - start:.1f} s:\n{traceback.format_exc(limit=4)}", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
