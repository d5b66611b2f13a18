"""What extracting frozen features one image at a time costs against batched extraction (issue 25, case 3).

    python benchmarks/feature_extraction.py [--sizes 64 256] [--batch 8] [--images 16] [--repeats 3]
                                            [--model patchcore] [--device cpu] [--threads N]

The engine extracts frozen features image by image (``engine.extract_frozen``), so that a cached image's
features have the bits they would have in any batch. This times, per input size, ``model.extract`` on batches
of ``--batch`` images against ``extract_frozen`` (no disk cache) over the same ``--images`` random images
(median of ``--repeats`` passes, after one warm-up pass), and says whether the batched features of an image
equal its one-image features bit for bit (when they do not, the batch a cache entry came from would change
results). The model is built with its defaults (the offline EfficientNet-Lite0 for every peer). Timings on a
shared machine are upper bounds: the load average is printed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return all(_equal(a[k], b[k]) for k in a)
    return all(_equal(x, y) for x, y in zip(a, b))


def main() -> None:
    from adlib import engine
    from adlib.models import create_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="patchcore")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"{args.model}, {args.images} images, batches of {args.batch}, device {device}, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    for size in args.sizes:
        model = create_model(args.model, image_size=size).to(device).eval()
        images = torch.rand(args.images, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        def batched():
            with torch.no_grad():
                out = [model.extract(chunk) for chunk in images.split(args.batch)]
            sync()
            return out

        def one_by_one():
            with torch.no_grad():
                out = [engine.extract_frozen(model, chunk, device)[0] for chunk in images.split(args.batch)]
            sync()
            return out

        t_batch = _timed(batched, args.repeats)
        t_one = _timed(one_by_one, args.repeats)
        with torch.no_grad():
            first = model.extract(images[: args.batch])
            single = engine.extract_frozen(model, images[:1], device)[0]
        same = _equal(engine._to_device(engine._index(first, slice(0, 1)), torch.device("cpu")), single)
        print(f"  {size:>5} px: batched {1000 * t_batch / args.images:8.2f} ms/image, one by one "
              f"{1000 * t_one / args.images:8.2f} ms/image ({t_one / t_batch:.2f}x); batched bits of an image "
              f"{'equal' if same else 'differ from'} its one-image bits")


if __name__ == "__main__":
    main()
