"""LADMIM at the paper's size on a GPU: one tokenizer (HVQ-Trans) epoch and one MIM epoch on random data, with
wall time and peak GPU memory per phase, and the scoring time per image.

    python benchmarks/gpu_ladmim.py                 # CUDA: PDN (random weights) at 224 px, the paper's sizes
    python benchmarks/gpu_ladmim.py --dry-run       # CPU: the same code path with tiny sizes (tests run this)

Paper size (repro_spec §3.2-3.4 and the HVQ-Trans / LADMIM code): PDN 384 x 24 x 24 at 224 px, HVQ-Trans width 64,
decoder 128, FFN 1024, 8 heads, K = 512, dropout 0.1, batch 16; MIM ViT width 512, 8 heads, 4 blocks, batch 32,
8 test masks. An "epoch" is one pass over ``--images`` random images (default 352, about one MVTec LOCO
category's training split), written as PNG files into a temporary folder in the MVTec LOCO layout and fitted
through ``adlib.study.run_one`` (the notebooks' run path, the run cache off; a per-epoch callback marks the
phases, so the first phase includes reading and decoding the images). Random weights: the timing and memory do
not depend on them. Prints one JSON record (``--json PATH`` also writes it).
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


def random_folder(root: Path, n: int, size: int, calibration: int, seed: int = 0) -> Path:
    """A category "random" in the MVTec LOCO layout under ``root``: ``n`` random training images, ``calibration``
    normal validation images, two good and two anomalous test images (a mask folder each)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    cat = root / "random"
    for split, count in (("train/good", n), ("validation/good", calibration), ("test/good", 2),
                         ("test/noise", 2)):
        (cat / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(cat / split / f"{i:03d}.png")
            if split == "test/noise":
                mask = np.zeros((size, size), np.uint8)
                mask[: size // 4, : size // 4] = 255
                (cat / "ground_truth/noise" / f"{i:03d}").mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(cat / "ground_truth/noise" / f"{i:03d}" / "000.png")
    return root


def run(dry_run: bool = False, images: int | None = None, device: str | None = None) -> dict:
    import tempfile

    import torch

    from adlib import papers
    from adlib.study import DataSource, resolve_setting, run_one

    device = device or ("cpu" if dry_run else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available here; use --dry-run for the CPU check")
    config = TINY if dry_run else PAPER
    n = images or (8 if dry_run else 352)
    batch = {"tokenizer": 4 if dry_run else 16, "mim": 4 if dry_run else 32}
    cuda = device.startswith("cuda")
    marks, peaks = [], []

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

    fit = {"batch_size": batch["tokenizer"], "disk_cache": False, "grad_clip": None, "stages": {
        "tokenizer": {"epochs": 1, "lr": 1e-4, "weight_decay": 1e-4},
        "mim": {"epochs": 1, "lr": 1e-4, "weight_decay": 1e-6, "batch_size": batch["mim"]}}}
    # the paper profile's recipe ({"backbone": "pdn", "image_size": 224}, the config's paper-size defaults) under
    # ``config``; the engine settings of the phases are this script's
    setting = resolve_setting(papers.get("ladmim"), "paper", synthetic=False, image_size=config["image_size"],
                              backbone=config["backbone"], device=device, max_train=None, max_test=None)
    with tempfile.TemporaryDirectory() as tmp:
        root = random_folder(Path(tmp) / "random_images", n, config["image_size"], batch["mim"])
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        marks.append(time.perf_counter())
        result = run_one(setting, DataSource("random", root, "random"), "ladmim", seed=0, cache=False,
                         callback=callback, **config, **fit)
        model = result.model
        scored_images = torch.stack([result.test[i % len(result.test)]["image"] for i in range(batch["mim"])])
    sync()
    start = time.perf_counter()
    with torch.no_grad():
        scored = model.predict(scored_images.to(device))
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
        "losses": result.fit.stage_losses,
        "calibration": result.calibration,
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
