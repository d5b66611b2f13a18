"""Shims that let ADer-based reference code (zhangzjn/ADer, lewandofskee/MambaAD) import on a CPU without its
CUDA-only or unused dependencies. Written for the parity fixtures; nothing here is the authors' code.

- ``model/__init__.py`` (and ``loss/__init__.py``) import every file they find (``glob.glob('model/[!_]*.py')``),
  so any model needs the imports of all (mamba_ssm, faiss, compiled CUDA ops...): ``import_globbed`` narrows
  that glob to the files named;
- ``util/metric.py`` imports ``adeval`` (a CUDA accumulator) at the top; only its ``cal_anomaly_map`` is
  used here, so ``adeval`` is a stub module;
- ``mamba_ssm``'s ``selective_scan_fn`` is a CUDA kernel: ``reference_selective_scan`` is a plain loop over
  the sequence with the same signature and semantics (delta_bias, delta_softplus, D skip, grouped B/C).
"""
from __future__ import annotations

import glob
import importlib
import sys
import types
from pathlib import Path


class Scale:
    """A block ``expansion`` that divides: ``planes * Scale(8) == planes // 8``. Reference classes whose widths
    are hard-coded multiples of ``block.expansion`` (MFF_OCE, RD4AD's BN_layer and decoder) then build at a
    fraction of their width with their own code unchanged."""

    def __init__(self, divisor: int) -> None:
        self.divisor = divisor

    def __rmul__(self, other: int) -> int:
        if other % self.divisor:
            raise ValueError(f"width {other} is not divisible by {self.divisor}")
        return other // self.divisor

    __mul__ = __rmul__

    def __repr__(self) -> str:
        return f"1/{self.divisor}"


def stub(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def import_globbed(package: str, files: list[str]):
    """ADer's ``package`` (``model``, ``loss``) whose ``__init__`` imports every file its glob finds
    (``glob.glob('<package>/[!_]*.py')``), with the glob narrowed to ``files`` (e.g. ["model/vitad.py"])."""
    real_glob = glob.glob

    def narrowed(pattern, *args, **kwargs):
        if pattern == f"{package}/[!_]*.py":
            return list(files)
        return real_glob(pattern, *args, **kwargs)

    glob.glob = narrowed
    try:
        return importlib.import_module(package)
    finally:
        glob.glob = real_glob


def import_models(root: Path, files: list[str]):
    """The reference's ``model`` package with only ``files`` imported by its glob."""
    return import_globbed("model", files)


def ader_loss(name: str, **kwargs):
    """An ADer loss term (``loss/base_loss.py``) by its registry name, built as ``get_loss_terms`` builds it."""
    loss = import_globbed("loss", ["loss/base_loss.py"])
    return loss.LOSS.get_module(name)(**kwargs).eval()


def import_metric():
    """ADer's ``util/metric.py`` (its ``Evaluator.cal_anomaly_map``), with ``adeval`` stubbed."""
    if "adeval" not in sys.modules:
        stub("adeval", EvalAccumulatorCuda=None)
    return importlib.import_module("util.metric")


def reference_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                             return_last_state=False):
    """mamba_ssm's ``selective_scan_fn`` semantics, one step at a time (float32, CPU).

    u, delta: (b, d, l); A: (d, n); B, C: (b, g, n, l) with d divisible by g (or (b, n, l)); D: (d,);
    h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t;  y_t = C_t h_t + D u_t (then * silu(z) when z is given)."""
    import torch
    import torch.nn.functional as F

    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, length = u.shape
    n = A.shape[1]
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    B = B.float().repeat_interleave(d // B.shape[1], dim=1)  # (b, d, n, l)
    C = C.float().repeat_interleave(d // C.shape[1], dim=1)
    h = u.new_zeros(b, d, n)
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[..., t]
        ys.append((h * C[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D[:, None].float()
    if z is not None:
        y = y * F.silu(z.float())
    return (y, h) if return_last_state else y
