"""LADMIM at the paper's size on a GPU: one tokenizer (HVQ-Trans) epoch and one MIM epoch on random data, with
wall time and peak GPU memory per phase, and the scoring time per image.

    python benchmarks/gpu_ladmim.py                 # CUDA: PDN (random weights) at 224 px, the paper's sizes
    python benchmarks/gpu_ladmim.py --dry-run       # CPU: the same code path with tiny sizes (tests run this)

Paper size (repro_spec §3.2-3.4 and the HVQ-Trans / LADMIM code): PDN 384 x 24 x 24 at 224 px, HVQ-Trans width 64,
decoder 128, FFN 1024, 8 heads, K = 512, dropout 0.1, batch 16; MIM ViT width 512, 8 heads, 4 blocks, batch 32,
8 test masks. An "epoch" is one pass over ``--images`` random images (default 352, about one MVTec LOCO
category's training split). Random weights: the timing and memory do not depend on them. Prints one JSON
record (``--json PATH`` also writes it).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

PAPER = {"backbone": "pdn", "pretrained": False, "image_size": 224}
TINY = {"backbone": "pdn", "pretrained": False, "image_size": 64, "grid": 6, "codebook_size": 16, "hvq_dim": 16,
        "hvq_dec_dim": 16, "hvq_ffn": 32, "hvq_heads": 2, "mim_dim": 16, "mim_heads": 2, "num_test_masks": 2}


class RandomImages:
    """``n`` random images (B, 3, size, size) in [0, 1] as dataset items, generated from a seed."""

    def __init__(self, n: int, size: int, seed: int = 0) -> None:
        import torch

        self.images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": 0}


def run(dry_run: bool = False, images: int | None = None, device: str | None = None) -> dict:
    import torch

    from adlib import engine
    from adlib.models import create_model

    device = device or ("cpu" if dry_run else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available here; use --dry-run for the CPU check")
    config = TINY if dry_run else PAPER
    n = images or (8 if dry_run else 352)
    batch = {"tokenizer": 4 if dry_run else 16, "mim": 4 if dry_run else 32}
    engine.seed_everything(0)
    model = create_model("ladmim", **config).to(device)
    data = RandomImages(n, config["image_size"])
    cuda = device.startswith("cuda")
    marks, peaks = [time.perf_counter()], []

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def callback(epoch, m):
        sync()
        marks.append(time.perf_counter())
        if cuda:
            peaks.append(torch.cuda.max_memory_allocated() / 2**20)
            torch.cuda.reset_peak_memory_stats()
        return None

    fit = engine.FitConfig(batch_size=batch["tokenizer"], progress=False, seed=0, disk_cache=False, stages={
        "tokenizer": {"epochs": 1, "lr": 1e-4, "weight_decay": 1e-4},
        "mim": {"epochs": 1, "lr": 1e-4, "weight_decay": 1e-6, "batch_size": batch["mim"]}})
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result = engine.fit(model, data, fit, device=device, callback=callback, calibration=RandomImages(batch["mim"], config["image_size"], 1))
    sync()
    start = time.perf_counter()
    with torch.no_grad():
        scored = model.predict(data.images[: batch["mim"]].to(device))
    sync()
    score_s = time.perf_counter() - start
    count = lambda module: sum(p.numel() for p in module.parameters()) / 1e6
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "dry_run": dry_run,
        "config": config,
        "images": n,
        "batch": batch,
        "params_m": {"backbone": count(model.tokenizer), "hvq": count(model.hvq), "mim": count(model.mim) + count(model.head)},
        "tokens": model.tokens,
        "features_and_tokenizer_epoch_s": marks[1] - marks[0],
        "mim_epoch_s": marks[2] - marks[1],
        "peak_mib": {"tokenizer": peaks[0], "mim": peaks[1]} if cuda else None,
        "score_s_per_image": score_s / len(scored.scores),
        "losses": result.stage_losses,
        "finite": bool(torch.isfinite(scored.scores).all()),
    }


def main(argv: list[str] | None = None, *, dry_run: bool | None = None, device: str | None = None):
    """The command line (``argv``; returns the exit status), or, called with ``dry_run``/``device`` as a step of
    ``gpu_check.py`` (its ``main(dry_run, device)`` convention), the record itself."""
    if dry_run is not None:
        return run(dry_run, None, device)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the code path only")
    parser.add_argument("--images", type=int, default=None, help="images per epoch (default: 352, dry run 8)")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --dry-run)")
    parser.add_argument("--json", default=None, help="also write the record here")
    args = parser.parse_args(argv)
    record = run(args.dry_run, args.images, args.device)
    text = json.dumps(record, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if record["finite"] else 1


if __name__ == "__main__":
    sys.exit(main())
