"""Selective-scan speed and agreement: adlib fast / torch / reference against mambapy's parallel scan.

    python benchmarks/scan.py                                   # batch 1 and 8, L 256 / 1369 / 5329
    python benchmarks/scan.py --batches 1 --lengths 256 5329 --repeats 3 --skip-reference-above 1369

What is timed, per call (median of --repeats after one warm-up call, milliseconds):
- adlib ``selective_scan(u, delta, A, B, C, D, delta_softplus=True, impl=...)`` on mamba_ssm's layout:
  u, delta (batch, d_inner, L), A (d_inner, N), B, C (batch, N, L), D (d_inner,).
- mambapy: ``softplus(delta)`` followed by ``mambapy.mamba.MambaBlock.selective_scan`` (discretize,
  ``pscan`` Blelloch scan padded to the next power of two, contraction with C, + D * x) on its own
  layout: x, delta (batch, L, d_inner), B, C (batch, L, N). Inputs are built in each layout before timing.
- "fwd" is the forward with autograd recording (inputs require grad), "fwd+bwd" adds the backward of
  ``(y * g).sum()`` for a fixed random g, so every input gets a gradient.
The difference columns compare each output and all six gradients (u, delta, A, B, C, D) with the
reference's (or with adlib fast where the reference was skipped): the largest absolute difference, and
for gradients also relative to that gradient's largest magnitude.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from adlib import ssm

NAMES = ("u", "delta", "A", "B", "C", "D")


@dataclass
class Result:
    impl: str
    fwd_ms: float
    fwd_bwd_ms: float
    y: torch.Tensor
    grads: dict[str, torch.Tensor]


def make_inputs(batch: int, dim: int, length: int, nstate: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "u": torch.randn(batch, dim, length, generator=g),
        "delta": torch.randn(batch, dim, length, generator=g) - 2.0,     # softplus -> about 0.13
        "A": -torch.exp(torch.randn(dim, nstate, generator=g) * 0.5),
        "B": torch.randn(batch, nstate, length, generator=g),
        "C": torch.randn(batch, nstate, length, generator=g),
        "D": torch.randn(dim, generator=g),
    }


def adlib_fn(impl: str):
    def run(t: dict[str, torch.Tensor]) -> torch.Tensor:
        return ssm.selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], delta_softplus=True, impl=impl)

    return run, (lambda x: x), (lambda y: y)


def mambapy_fn():
    from mambapy.mamba import MambaBlock

    def run(t: dict[str, torch.Tensor]) -> torch.Tensor:
        return MambaBlock.selective_scan(None, t["u"], F.softplus(t["delta"]), t["A"], t["B"], t["C"], t["D"])

    def to_layout(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: (v.transpose(1, 2).contiguous() if v.dim() == 3 else v) for k, v in x.items()}

    return run, to_layout, (lambda y: y.transpose(1, 2))


def measure(name: str, fn, to_layout, from_layout, inputs, cotangent, repeats: int) -> Result:
    leaves = {k: v.clone().requires_grad_() for k, v in to_layout(inputs).items()}
    g = to_layout({"y": cotangent})["y"]
    fwd, both = [], []
    for i in range(repeats + 1):
        for leaf in leaves.values():
            leaf.grad = None
        t0 = time.perf_counter()
        y = fn(leaves)
        t1 = time.perf_counter()
        (y * g).sum().backward()
        t2 = time.perf_counter()
        if i > 0:  # the first call is the warm-up (builds/loads the native kernel, allocator, caches)
            fwd.append(t1 - t0)
            both.append(t2 - t0)
    grads = {k: (from_layout(v.grad) if v.grad.dim() == 3 else v.grad) for k, v in leaves.items()}
    return Result(name, 1e3 * statistics.median(fwd), 1e3 * statistics.median(both), from_layout(y.detach()), grads)


def differences(res: Result, base: Result) -> tuple[float, float, float]:
    out = (res.y - base.y).abs().max().item()
    grad_abs = max((res.grads[k] - base.grads[k]).abs().max().item() for k in NAMES)
    grad_rel = max(((res.grads[k] - base.grads[k]).abs().max() / base.grads[k].abs().max().clamp_min(1e-30)).item()
                   for k in NAMES)
    return out, grad_abs, grad_rel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1369, 5329])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--d-inner", type=int, default=768)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip-reference-above", type=int, default=None, metavar="L",
                        help="do not run the reference loop for lengths above L (slow, memory-hungry)")
    parser.add_argument("--skip-torch-above", type=int, default=None, metavar="L",
                        help="do not run adlib's pure PyTorch fallback for lengths above L")
    parser.add_argument("--mambapy-max-gb", type=float, default=2.0,
                        help="skip mambapy where one of its (batch, 2^ceil(log2 L), d_inner, N) float32 tensors "
                             "exceeds this many GB (it keeps several)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {args.threads} threads, d_inner {args.d_inner}, d_state {args.d_state}, "
          f"median of {args.repeats} (warm-up excluded); native kernel available: {ssm.native_available()}")
    header = (f"{'batch':>5} {'L':>5} {'impl':<10} {'fwd ms':>9} {'fwd+bwd ms':>11} {'ref/this':>9} "
              f"{'mambapy/this':>12} {'max|dy|':>9} {'max|dgrad|':>10} {'rel dgrad':>9}  compared with")
    print(header)
    print("-" * len(header))
    for batch in args.batches:
        for length in args.lengths:
            inputs = make_inputs(batch, args.d_inner, length, args.d_state)
            cot = torch.randn(batch, args.d_inner, length, generator=torch.Generator().manual_seed(1))
            runs: list[tuple[str, tuple]] = [("fast", adlib_fn("fast"))]
            if args.skip_torch_above is None or length <= args.skip_torch_above:
                runs.append(("torch", adlib_fn("torch")))
            if args.skip_reference_above is None or length <= args.skip_reference_above:
                runs.append(("reference", adlib_fn("reference")))
            padded_gb = batch * 2 ** math.ceil(math.log2(length)) * args.d_inner * args.d_state * 4 / 1e9
            skipped_mambapy = padded_gb > args.mambapy_max_gb
            if not skipped_mambapy:
                runs.append(("mambapy", mambapy_fn()))
            results = {name: measure(name, *fns, inputs, cot, args.repeats) for name, fns in runs}
            base = results.get("reference", results["fast"])
            ref, mpy = results.get("reference"), results.get("mambapy")
            for res in results.values():
                ratio_ref = f"{ref.fwd_bwd_ms / res.fwd_bwd_ms:9.1f}" if ref else f"{'-':>9}"
                ratio_mpy = f"{mpy.fwd_bwd_ms / res.fwd_bwd_ms:12.1f}" if mpy else f"{'-':>12}"
                if res is base:
                    diffs = f"{'':>9} {'':>10} {'':>9}  (baseline)"
                else:
                    out, gabs, grel = differences(res, base)
                    diffs = f"{out:9.2e} {gabs:10.2e} {grel:9.1e}  {base.impl}"
                print(f"{batch:>5} {length:>5} {res.impl:<10} {res.fwd_ms:9.1f} {res.fwd_bwd_ms:11.1f} "
                      f"{ratio_ref} {ratio_mpy} {diffs}", flush=True)
            if skipped_mambapy:
                print(f"{batch:>5} {length:>5} {'mambapy':<10} skipped: {padded_gb:.1f} GB per padded tensor "
                      f"> --mambapy-max-gb {args.mambapy_max_gb}", flush=True)
            if ref is None:
                print(f"{batch:>5} {length:>5} {'reference':<10} skipped (--skip-reference-above "
                      f"{args.skip_reference_above})", flush=True)
    print("ratios are fwd+bwd time of the reference (ref/this) or mambapy (mambapy/this) over this row's time")


if __name__ == "__main__":
    main()
