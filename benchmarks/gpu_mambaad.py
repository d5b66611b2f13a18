"""MambaAD's GPU check (a step of ``benchmarks/gpu_check.py``; also runs alone).

    python benchmarks/gpu_mambaad.py             # on a CUDA machine, about a minute
    python benchmarks/gpu_mambaad.py --dry-run   # tiny sizes on the CPU: checks this script (tests run it)

1. ``scan``: MambaAD's case of the selective scan, 8 directions as K * d_inner channels in one call with
   grouped B and C (batch, K, d_state, L), ``delta_softplus=True`` with a ``delta_bias`` and the D skip, forward
   and every gradient (u, delta, A, B, C, D, delta_bias), against the reference step loop: adlib's PyTorch scan
   on the device and, when ``mamba_ssm`` imports, its CUDA kernel (state-spaces/mamba #368 concerned the
   ``delta_softplus`` / ``delta_bias`` backward). Within 1e-4 relative is a pass. Also a whole HSS block with
   ``scan_impl="cuda"`` against ``"torch"`` on the same weights.
2. ``train_step``: one training step of the paper recipe (ResNet34 random weights, 256 px, batch 16, AdamW
   lr 0.005, wd 1e-4): median time over a few steps, peak memory, the selective-scan implementation that ran,
   and the implied time of 500 epochs on MVTec AD's 3,629 training images (multi-class).
"""
from __future__ import annotations

import statistics
import time

import torch

from gpu_common import cli, pick_device, run_checks, sync as _sync, rel as _rel  # noqa: E402

MVTEC_TRAIN_IMAGES = 3629  # MVTec AD, all 15 categories (the multi-class training set)


def scan_check(device: torch.device, dry_run: bool) -> dict:
    """The 8-direction grouped selective scan: adlib's (and mamba_ssm's) against the reference loop."""
    from adlib import ssm

    # MambaAD's finest stage at 256 px: 64 channels, d_inner 128, 8 directions, 64 x 64 tokens, d_state 16
    batch, k, d, length, nstate = (1, 8, 4, 64, 4) if dry_run else (2, 8, 128, 4096, 16)
    g = torch.Generator().manual_seed(0)
    dim = k * d
    base = {
        "u": torch.randn(batch, dim, length, generator=g),
        "delta": torch.randn(batch, dim, length, generator=g) * 0.5,
        "A": -torch.exp(torch.randn(dim, nstate, generator=g) * 0.5),
        "B": torch.randn(batch, k, nstate, length, generator=g),
        "C": torch.randn(batch, k, nstate, length, generator=g),
        "D": torch.randn(dim, generator=g),
        "delta_bias": torch.randn(dim, generator=g) * 0.3 - 2.0,  # softplus(dt + bias) in Mamba's dt range
    }
    cotangent = torch.randn(batch, dim, length, generator=g)

    def run(impl: str):
        # a fresh leaf per run: on the CPU .to(device) would return the same tensor and gradients would accumulate
        t = {name: v.detach().clone().to(device).requires_grad_(True) for name, v in base.items()}
        _sync(device)
        start = time.perf_counter()
        y = ssm.selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], delta_bias=t["delta_bias"],
                               delta_softplus=True, impl=impl)
        (y * cotangent.to(device)).sum().backward()
        _sync(device)
        return y.detach(), {name: v.grad.detach() for name, v in t.items()}, time.perf_counter() - start

    out = {"shape": f"batch {batch}, {k} directions x d_inner {d} = {dim} channels, L {length}, N {nstate}, "
                    f"grouped B/C {tuple(base['B'].shape)}"}
    y_ref, g_ref, t_ref = run("reference")
    out["reference_s"] = round(t_ref, 3)
    impls = ["torch"]
    if device.type == "cuda" and ssm._mamba_ssm_scan() is not None:
        impls.append("cuda")
    else:
        out["mamba_ssm"] = "not importable here (or no CUDA): only adlib's PyTorch scan was checked"
    for impl in impls:
        y, grads, seconds = run(impl)
        per_input = {name: _rel(grads[name], g_ref[name]) for name in g_ref}
        worst = max([_rel(y, y_ref), *per_input.values()])
        out[impl] = {"seconds": round(seconds, 4), "forward_rel": _rel(y, y_ref), "grad_rel": per_input,
                     "max_rel_diff": worst, "pass": worst <= 1e-4}
    if "cuda" in impls:
        out["hss_block_cuda_vs_torch"] = hss_block_check(device, dry_run)
    return out


def hss_block_check(device: torch.device, dry_run: bool, impls: tuple[str, str] = ("torch", "cuda")) -> dict:
    """One HSS core (SS2D) with mamba_ssm's kernel (``impls[1]``) against adlib's PyTorch scan on the same weights."""
    from adlib.models.mambaad import SS2D, MambaADConfig

    torch.manual_seed(0)
    dim, side = (8, 8) if dry_run else (64, 64)
    results = {}
    weights = SS2D(dim, MambaADConfig()).state_dict()
    for impl in impls:
        core = SS2D(dim, MambaADConfig(scan_impl=impl)).to(device)
        core.load_state_dict(weights)
        x = torch.randn(2, side, side, dim, generator=torch.Generator().manual_seed(1)).to(device).requires_grad_(True)
        y = core(x)
        y.square().mean().backward()
        results[impl] = (y.detach(), x.grad.detach(), {n: p.grad.detach() for n, p in core.named_parameters()})
    (y0, gx0, gp0), (y1, gx1, gp1) = results[impls[0]], results[impls[1]]
    worst_param = max(_rel(gp1[n], gp0[n]) for n in gp0)
    return {"forward_rel": _rel(y1, y0), "input_grad_rel": _rel(gx1, gx0), "param_grad_rel_max": worst_param,
            "pass": max(_rel(y1, y0), _rel(gx1, gx0), worst_param) <= 1e-3}


def train_step(device: torch.device, dry_run: bool) -> dict:
    """The paper recipe's training step on ``device``: time, peak memory, scan implementation."""
    from adlib import papers, ssm
    from adlib.engine import seed_everything
    from adlib.models import create_model

    recipe = papers.get("mambaad").recipe("mambaad", "paper")
    overrides = {**recipe.model, "pretrained": False}
    batch = recipe.fit.batch_size
    if dry_run:
        overrides.update(backbone="efficientnet_lite0", image_size=64)
        batch = 2
    size = overrides["image_size"]
    seed_everything(0)
    model = create_model("mambaad", **overrides).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.fit.lr, weight_decay=recipe.fit.weight_decay,
                                  betas=tuple(recipe.fit.betas))
    images = torch.rand(batch, 3, size, size, device=device)
    steps = 2 if dry_run else 6
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    model.train()
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
    step = statistics.median(times[1:])  # the first step builds scan orders and kernels
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    steps_per_epoch = -(-MVTEC_TRAIN_IMAGES // batch)
    return {"image_size": size, "batch_size": batch, "backbone": overrides["backbone"], "loss": float(loss.detach()),
            "train_step_s": round(step, 4), "train_peak_mb": round(peak, 1),
            "scan_impl": ssm.resolve_impl(model.config.scan_impl, device),
            "paper_500_epochs_h": round(step * steps_per_epoch * recipe.fit.epochs / 3600, 1),
            "estimate_assumes": f"{MVTEC_TRAIN_IMAGES} MVTec AD training images, {steps_per_epoch} steps per epoch, "
                                f"{recipe.fit.epochs} epochs, encoder run every step",
            "note": "random weights (the cost only); the paper used one V100 32GB"}


def main(dry_run: bool = False, device: str | None = None) -> dict:
    """Both checks; ``device`` defaults to CUDA when present (the CPU for ``dry_run``)."""
    dev = pick_device(device, dry_run)
    return run_checks((("scan", scan_check), ("train_step", train_step)), dev, dry_run, out={})


if __name__ == "__main__":
    cli("gpu_mambaad", __doc__, main)
