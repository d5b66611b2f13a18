"""Time adlib's feature extractors and the missing-weights failure.

    python benchmarks/backbones.py [--size 256] [--repeats 10] [--threads 2] [--names efficientnet_lite0 ...]

Prints, per backbone (default: the offline EfficientNet-Lite0 with its ImageNet weights, then a few others
with random weights, which cost the same): build time, output shapes, channels/strides and the median
time of one forward of a single image at ``--size`` px (no grad). Then the time ``create`` takes to raise
``WeightsUnavailableError`` for timm weights that are neither cached nor downloadable here (with and
without ``HF_HUB_OFFLINE``), against the ~45 s a plain ``timm.create_model(pretrained=True)`` spends
retrying an unreachable hub (``--timm-baseline`` measures that too).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from adlib import backbones


def _time_forward(fe: torch.nn.Module, size: int, repeats: int) -> float:
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        fe(x)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fe(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _time_missing(name: str, offline: bool) -> tuple[float, str]:
    saved = {k: os.environ.get(k) for k in ("HF_HUB_CACHE", "HF_HUB_OFFLINE")}
    with tempfile.TemporaryDirectory() as empty_cache:
        os.environ["HF_HUB_CACHE"] = empty_cache
        if offline:
            os.environ["HF_HUB_OFFLINE"] = "1"
        else:
            os.environ.pop("HF_HUB_OFFLINE", None)
        start = time.perf_counter()
        try:
            backbones.create(name)
            outcome = "loaded (weights were reachable)"
        except backbones.WeightsUnavailableError as err:
            outcome = f"WeightsUnavailableError: {str(err)[:90]}..."
        elapsed = time.perf_counter() - start
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return elapsed, outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--names", nargs="*", default=["efficientnet_lite0", "resnet18", "wide_resnet50",
                                                       "dino_vits16", "dinov2_vits14"])
    parser.add_argument("--timm-baseline", action="store_true", help="also time timm's own failing download")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input 1 x 3 x {args.size} x {args.size}")
    print(f"{'backbone':<20}{'weights':<10}{'build s':>9}{'forward ms':>12}  layers -> shapes (channels/strides)")
    for name in args.names:
        pretrained = backbones.SPECS[name].source == "package"
        start = time.perf_counter()
        fe = backbones.create(name, pretrained=pretrained)
        build = time.perf_counter() - start
        with torch.no_grad():
            shapes = [tuple(f.shape) for f in fe(torch.rand(1, 3, args.size, args.size))]
        ms = 1000 * _time_forward(fe, args.size, args.repeats)
        weights = "ImageNet" if pretrained else "random"
        print(f"{name:<20}{weights:<10}{build:>9.2f}{ms:>12.1f}  {fe.layers} -> {shapes} ({fe.channels}/{fe.strides})")
    for offline in (True, False):
        elapsed, outcome = _time_missing("dinov2_vits14", offline)
        print(f"missing weights, HF_HUB_OFFLINE={'1' if offline else 'unset'}: {elapsed * 1000:.1f} ms -> {outcome}")
    if args.timm_baseline:
        import timm

        start = time.perf_counter()
        try:
            timm.create_model("vit_small_patch14_dinov2.lvd142m", pretrained=True)
        except Exception as err:  # whatever the hub client raises
            print(f"timm.create_model(pretrained=True) failed after {time.perf_counter() - start:.1f} s "
                  f"({type(err).__name__})")


if __name__ == "__main__":
    main()
