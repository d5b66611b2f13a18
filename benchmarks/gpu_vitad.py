"""ViTAD's GPU check (a step of ``benchmarks/gpu_check.py``; also runs alone).

    python benchmarks/gpu_vitad.py             # on a CUDA machine, well under a minute
    python benchmarks/gpu_vitad.py --dry-run   # tiny sizes on the CPU: checks this script (tests run it)

1. ``train_step``: the paper recipe's training step (``adlib.papers.vitad`` profile "paper": DINO ViT-S/16 at
   256 px with random weights, which cost the same as DINO's; batch 8; AdamW lr 1e-4, wd 1e-4; gradient norm
   clipped at 5): the frozen encoder's forward without gradient, the fuser and decoder forward and backward, the
   optimiser step. Median time over a few steps after a warm-up, peak memory, and the implied time of the
   paper's 100 epochs on MVTec AD's 3,629 training images (multi-class), beside Table XIII's 2.3 GB and 1.1 h
   on one V100 (never a difference: the hardware differs).
2. ``inference``: test-time FPS at batch 1 and batch 8 (encoder, fuser, decoder, map, smoothing, score).
3. ``counts``: parameters (frozen encoder included, as Table XIII) of the model that ran.
"""
from __future__ import annotations

import statistics
import time

import torch

from gpu_common import cli, pick_device, run_checks, sync as _sync  # noqa: E402

MVTEC_TRAIN_IMAGES = 3629  # MVTec AD, all 15 categories (the multi-class training set)
PAPER = {"params_m": 38.6, "flops_g": 10.7, "train_memory_mb": 2300.0, "train_h": 1.1, "gpu": "one V100",
         "epochs": 100, "batch_size": 8}  # Table XIII, ViTAD row


def _build(device: torch.device, dry_run: bool):
    """(model, FitConfig, image size) of the paper recipe; the dry run swaps in a small CNN at 64 px."""
    from adlib import papers
    from adlib.engine import seed_everything
    from adlib.models import create_model

    recipe = papers.get("vitad").recipe("vitad", "paper")
    overrides = {**recipe.model, "pretrained": False}
    if dry_run:
        overrides.update(backbone="efficientnet_lite0", image_size=64, decoder_dim=32, decoder_heads=2,
                         decoder_divisions=(1, 1, 1))
    seed_everything(0)
    model = create_model("vitad", **overrides).to(device)
    return model, recipe.fit, overrides["image_size"]


def train_step(device: torch.device, dry_run: bool) -> dict:
    """The paper recipe's training step on ``device``: time and peak memory."""
    model, fit, size = _build(device, dry_run)
    batch = 2 if dry_run else fit.batch_size
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=fit.lr, weight_decay=fit.weight_decay, betas=tuple(fit.betas))
    images = torch.rand(batch, 3, size, size, device=device)
    steps = 3 if dry_run else 12
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    model.train()
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        features = model.extract(images)  # the frozen encoder, no gradient
        loss = model.loss(features)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, fit.grad_clip)
        optimizer.step()
        _sync(device)
        times.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
    step = statistics.median(times[1:])  # the first step allocates and picks kernels
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    steps_per_epoch = -(-MVTEC_TRAIN_IMAGES // batch)
    return {"image_size": size, "batch_size": batch, "backbone": model.config.backbone,
            "tokens": model.grid[0] * model.grid[1], "width": model.width, "first_loss": round(losses[0], 4),
            "last_loss": round(losses[-1], 4), "train_step_s": round(step, 4), "train_peak_mb": round(peak, 1),
            "paper_100_epochs_h": round(step * steps_per_epoch * fit.epochs / 3600, 2),
            "estimate_assumes": f"{MVTEC_TRAIN_IMAGES} MVTec AD training images, {steps_per_epoch} steps per epoch, "
                                f"{fit.epochs} epochs, the encoder run every step (no feature cache)",
            "paper": {k: PAPER[k] for k in ("train_memory_mb", "train_h", "gpu")},
            "note": "random weights (the cost only); peak memory is PyTorch's allocated peak, the paper's figure "
                    "is probably the process total (nvidia-smi), so read them side by side only"}


def inference(device: torch.device, dry_run: bool) -> dict:
    """Test-time images per second at batch 1 and 8 (the whole predict: map, smoothing, image score)."""
    model, _, size = _build(device, dry_run)
    model.eval()
    out = {}
    for batch in (1, 8):
        images = torch.rand(batch, 3, size, size, device=device)
        repeats = 2 if dry_run else 20
        with torch.no_grad():
            model.predict(images)  # warm-up
            _sync(device)
            start = time.perf_counter()
            for _ in range(repeats):
                prediction = model.predict(images)
            _sync(device)
        out[f"fps_batch{batch}"] = round(repeats * batch / (time.perf_counter() - start), 1)
        assert prediction.maps.shape == (batch, size, size) and torch.isfinite(prediction.scores).all()
    return out


def counts(device: torch.device, dry_run: bool) -> dict:
    from adlib.models.vitad import parameter_groups

    model, _, _ = _build(device, dry_run)
    groups = parameter_groups(model)
    return {"params_m": round(sum(groups.values()) / 1e6, 3),
            "trainable_m": round((groups["fuser"] + groups["decoder"] + groups["readouts"]) / 1e6, 3),
            "paper_params_m": PAPER["params_m"]}


def main(dry_run: bool = False, device: str | None = None) -> dict:
    """All checks; ``device`` defaults to CUDA when present (the CPU for ``dry_run``)."""
    dev = pick_device(device, dry_run)
    out = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"}
    return run_checks((("train_step", train_step), ("inference", inference), ("counts", counts)), dev, dry_run, out)


if __name__ == "__main__":
    cli("gpu_vitad", __doc__, main)
