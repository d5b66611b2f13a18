"""Selective scan (Mamba's S6 recurrence) and the Mamba block, with mamba_ssm's semantics.

``selective_scan`` computes, per batch b, channel d and state n,

    x_t = exp(delta_t * A) * x_{t-1} + delta_t * B_t * u_t,    y_t = <C_t, x_t> + D * u_t,
    out_t = y_t * silu(z_t),

with ``delta = softplus(delta + delta_bias)`` when asked. Implementations, picked by name:

- ``reference``: one PyTorch step per position under autograd (the test oracle).
- ``torch``: pure PyTorch, chunked, with a hand-written backward (no per-step autograd graph).
- ``native``: a small C kernel compiled with the system compiler at first use (about a second, cached in
  ``$ADLIB_CACHE/ssm``, default ``~/.cache/adlib/ssm``; ``ADLIB_SCAN_NATIVE=0`` turns it off), forward
  and backward as tight loops over time, (batch, channel) rows shared among torch.get_num_threads() threads (calls
  below ``PARALLEL_MIN_WORK`` state updates stay on the calling thread).
- ``fast``: ``native`` on CPU tensors when it builds, else ``torch``.
- ``cuda``: mamba_ssm's ``selective_scan_fn`` (CUDA tensors, mamba_ssm installed).
- ``auto``: ``cuda`` when possible, else ``fast``. The environment variable ``ADLIB_SCAN_IMPL``
  replaces ``auto`` with a fixed name.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib
import itertools
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMPLS = ("auto", "reference", "fast", "torch", "native", "cuda")
ENV_IMPL = "ADLIB_SCAN_IMPL"

# Calls per backend that actually ran in this process ("native": the C kernel, "torch": the PyTorch
# chunked scan, "reference", "mamba_ssm": selective_scan_fn, "mamba_ssm.mamba_inner_fn": the fused block).
_USED: dict[str, int] = {}


def _ran(backend: str) -> None:
    _USED[backend] = _USED.get(backend, 0) + 1


def backends_used() -> dict[str, int]:
    """Selective-scan backends that ran in this process, with their call counts (for run records)."""
    return dict(sorted(_USED.items()))


# --------------------------------------------------------------------------------------------------
# Input checks and the parts every implementation shares
# --------------------------------------------------------------------------------------------------


def _check_inputs(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                  z: Tensor | None, delta_bias: Tensor | None) -> None:
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, dim, length), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be (dim={dim}, d_state), got {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError("selective_scan: complex A is not supported; pass a real (dim, d_state) A")
    d_state = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 2:
            ok = tuple(t.shape) == (dim, d_state)
        elif t.dim() == 3:
            ok = tuple(t.shape) == (batch, d_state, length)
        elif t.dim() == 4:
            ok = t.shape[0] == batch and t.shape[2:] == (d_state, length) and dim % t.shape[1] == 0
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"selective_scan: {name} must be (dim, d_state)=({dim}, {d_state}), "
                f"(batch, d_state, length)=({batch}, {d_state}, {length}) or (batch, groups, d_state, length) "
                f"with groups dividing dim; got {tuple(t.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (dim,):
            raise ValueError(f"selective_scan: {name} must be ({dim},), got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")


def _compute_dtype(u: Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _prepare_delta(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool, dtype: torch.dtype) -> Tensor:
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def _finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)


def _per_channel(t: Tensor, dim: int) -> Tensor:
    """B or C as a tensor broadcastable to (batch, dim, d_state, length)."""
    if t.dim() == 2:  # time-invariant (dim, d_state)
        return t[None, :, :, None]
    if t.dim() == 3:  # (batch, d_state, length)
        return t[:, None]
    return t.repeat_interleave(dim // t.shape[1], dim=1)  # grouped (batch, groups, d_state, length)


# --------------------------------------------------------------------------------------------------
# Reference: the plain algorithm, one autograd-recorded step per position
# --------------------------------------------------------------------------------------------------


def selective_scan_reference(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                             z: Tensor | None = None, delta_bias: Tensor | None = None,
                             delta_softplus: bool = False) -> Tensor:
    """Sequential reference: discretize, then one PyTorch step per position (float32, or float64 inputs)."""
    _ran("reference")
    dtype = _compute_dtype(u)
    dim = u.shape[1]
    delta = _prepare_delta(delta, delta_bias, delta_softplus, dtype)
    uc, A = u.to(dtype), A.to(dtype)
    Bc, Cc = _per_channel(B.to(dtype), dim), _per_channel(C.to(dtype), dim)
    delta_A = torch.exp(delta[..., None] * A[:, None, :])                 # (b, d, l, n)
    delta_B_u = (delta * uc)[..., None] * Bc.transpose(-1, -2)            # (b, d, l, n)
    C_steps = Cc.transpose(-1, -2).unbind(2) if Cc.shape[-1] > 1 else None
    x = u.new_zeros((u.shape[0], dim, A.shape[1]), dtype=dtype)
    ys = []
    for t, (a_t, bu_t) in enumerate(zip(delta_A.unbind(2), delta_B_u.unbind(2))):
        x = a_t * x + bu_t
        c_t = C_steps[t] if C_steps is not None else Cc[..., 0]
        ys.append((x * c_t).sum(-1))
    y = torch.stack(ys, dim=2)
    return _finish(y, uc, D, z, u.dtype)


# --------------------------------------------------------------------------------------------------
# Pure PyTorch fast path: chunked loop with an explicit backward
# --------------------------------------------------------------------------------------------------

_CHUNK = 64


def _time_major_bc(t: Tensor, dim: int, length: int) -> Tensor:
    """B or C as a contiguous (length or 1, batch or 1, dim or 1, d_state) tensor."""
    t = _per_channel(t, dim)                                   # (b|1, d|g|1, n, l|1)
    return t.permute(3, 0, 1, 2).contiguous()


def _slice_time(t: Tensor, start: int, stop: int) -> Tensor:
    return t[start:stop] if t.shape[0] > 1 else t


class _ChunkedScan(torch.autograd.Function):
    """y_t = <C_t, x_t>, x_t = exp(delta_t A) x_{t-1} + delta_t B_t u_t, all in time-major layout.

    u, delta: (L, batch, dim); A: (dim, N); B, C: (L|1, batch|1, dim|1, N). Returns y (L, batch, dim).
    Forward keeps only the state at each chunk start; backward recomputes a chunk's states, runs the
    adjoint recurrence h_t = C_t g_t + exp(delta_{t+1} A) h_{t+1} backwards, and reduces gradients
    with whole-chunk tensor ops.
    """

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
        length, batch, dim = u.shape
        x = u.new_zeros((batch, dim, A.shape[1]))
        y = torch.empty_like(u)
        starts = []
        for s in range(0, length, _CHUNK):
            e = min(s + _CHUNK, length)
            starts.append(x)
            states = _ChunkedScan._chunk_states(x, u[s:e], delta[s:e], A, _slice_time(B, s, e))[0]
            torch.sum(states * _slice_time(C, s, e), dim=-1, out=y[s:e])
            x = states[-1]
        ctx.save_for_backward(u, delta, A, B, C, torch.stack(starts))
        return y

    @staticmethod
    def _chunk_states(x0: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
        delta_A = torch.exp(delta[..., None] * A)                   # (k, b, d, n)
        states = ((delta * u)[..., None] * B).contiguous()          # delta B u, overwritten by states
        x = x0
        for a_t, state_t in zip(delta_A, states):
            x = state_t.addcmul_(a_t, x)
        return states, delta_A

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Tensor):
        u, delta, A, B, C, starts = ctx.saved_tensors
        length = u.shape[0]
        grad_y = grad_y.contiguous()
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dA = torch.zeros_like(A)
        dB, dC = torch.zeros_like(B), torch.zeros_like(C)
        carry = torch.zeros_like(starts[0])                          # exp(delta_{t+1} A) h_{t+1}
        chunk_starts = list(range(0, length, _CHUNK))
        for i in reversed(range(len(chunk_starts))):
            s = chunk_starts[i]
            e = min(s + _CHUNK, length)
            u_c, delta_c, B_c, C_c, g_c = u[s:e], delta[s:e], _slice_time(B, s, e), _slice_time(C, s, e), grad_y[s:e]
            states, delta_A = _ChunkedScan._chunk_states(starts[i], u_c, delta_c, A, B_c)
            h = (C_c * g_c[..., None]).contiguous()                 # becomes the adjoint h_t
            for t in range(e - s - 1, -1, -1):
                carry = h[t].add_(carry).mul(delta_A[t])
            prev = torch.cat([starts[i][None], states[:-1]])
            w = h * prev * delta_A                                   # d loss / d (delta_t A)
            dA += torch.einsum("kbdn,kbd->dn", w, delta_c)
            hB = (h * B_c).sum(-1)                                   # (k, b, d)
            ddelta[s:e] = torch.einsum("kbdn,dn->kbd", w, A) + hB * u_c
            du[s:e] = hB * delta_c
            h.mul_((delta_c * u_c)[..., None])
            _accumulate(dB, s, e, h)
            _accumulate(dC, s, e, states.mul_(g_c[..., None]))
        return du, ddelta, dA, dB, dC


def _accumulate(grad: Tensor, start: int, stop: int, value: Tensor) -> None:
    """Add a chunk's (k, batch, dim, N) gradient into a possibly broadcast (L|1, batch|1, dim|1, N) one."""
    target = grad[start:stop] if grad.shape[0] > 1 else grad
    target += value.sum_to_size(target.shape)


def selective_scan_torch(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                         z: Tensor | None = None, delta_bias: Tensor | None = None,
                         delta_softplus: bool = False) -> Tensor:
    """Pure PyTorch selective scan with a hand-written backward; any device."""
    _ran("torch")
    dtype = _compute_dtype(u)
    batch, dim, length = u.shape
    delta = _prepare_delta(delta, delta_bias, delta_softplus, dtype)
    uc = u.to(dtype)
    y = _ChunkedScan.apply(
        uc.permute(2, 0, 1).contiguous(), delta.permute(2, 0, 1).contiguous(), A.to(dtype).contiguous(),
        _time_major_bc(B.to(dtype), dim, length), _time_major_bc(C.to(dtype), dim, length))
    return _finish(y.permute(1, 2, 0), uc, D, z, u.dtype)


# --------------------------------------------------------------------------------------------------
# mamba_ssm's CUDA kernel
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _optional(module: str, name: str) -> Callable | None:
    """``module.name`` if it imports, else None; looked up lazily on first use, then remembered."""
    try:
        return getattr(importlib.import_module(module), name)
    except Exception:  # ImportError, or a broken CUDA extension raising something else
        return None


def _mamba_ssm_scan() -> Callable | None:
    """mamba_ssm's ``selective_scan_fn`` if mamba_ssm imports, else None."""
    return _optional("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn")


def selective_scan_cuda(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                        z: Tensor | None = None, delta_bias: Tensor | None = None,
                        delta_softplus: bool = False) -> Tensor:
    """mamba_ssm's fused CUDA kernel; CUDA tensors and an importable mamba_ssm are required."""
    if u.device.type != "cuda":
        raise RuntimeError(
            f"selective_scan(impl='cuda') needs CUDA tensors, got u on {u.device}; "
            "use impl='fast' or impl='auto' for CPU tensors")
    fn = _mamba_ssm_scan()
    if fn is None:
        raise RuntimeError(
            "selective_scan(impl='cuda') needs mamba_ssm (pip install 'adlib[cuda]' on a CUDA machine); "
            "it could not be imported. Use impl='fast' or impl='auto'.")
    _ran("mamba_ssm")
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


# --------------------------------------------------------------------------------------------------
# Native CPU kernel: plain C compiled at first use with the system compiler, called through ctypes
# --------------------------------------------------------------------------------------------------
# Per (batch, channel) row the forward is one loop over time with the d_state-wide state in registers;
# the backward recomputes that row's states into a per-thread buffer (2 * L * N values), then runs the
# adjoint recurrence backwards in time. Rows are handed out in blocks to torch.get_num_threads() workers;
# ctypes releases the GIL, so Python threads run them in parallel. dB and dC are summed per block of rows
# (blocks fixed by the sizes and the thread count), then reduced in block order, so that the gradients are
# the same bits whichever worker ran which block.
# No torch headers are needed, so a build takes well under a second.

_KERNEL_HEADER = r"""
#include <math.h>
#include <stdint.h>

/* GCC on x86-64 compiles AVX-512, AVX2 and baseline copies and picks one at load time. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(ADLIB_NO_MULTIVERSION)
#define MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MULTIVERSION
#endif

/* exp for float32 written so that loops over it vectorize: 2^k * p(r), |r| <= ln2 / 2,
   relative error about 1e-7; exactly 0 below float32's normal range. */
static inline float exp_f32(float x) {
    const float hi = 88.3762626647949f, lo = -87.3365478515625f;
    float xc = x > hi ? hi : x;
    xc = xc < lo ? lo : xc;
    float t = xc * 1.44269504088896341f + 0.5f;
    float kf = (float)(int32_t)t;
    kf = kf > t ? kf - 1.0f : kf;                                 /* floor(t) */
    float r = xc - kf * 0.693359375f + kf * 2.12194440e-4f;       /* xc - k ln2 in two parts */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale = { .i = ((int32_t)kf + 127) << 23 };
    return x < lo ? 0.0f : p * scale.f;
}

static inline double exp_f64(double x) { return exp(x); }
"""

# Instantiated once for float (own vectorizable exp) and once for double (libm exp).
_KERNEL_TEMPLATE = r"""
/* Rows are (batch, channel) pairs bd in [begin, end). B and C are compact (batch|1, groups, L|1, N)
   arrays: row bd reads offset b * sb + (d / group_size) * sg and steps sl per time step. */
static inline void fwd_rows_SUFFIX(
        const SCALAR* restrict u, const SCALAR* restrict delta, const SCALAR* restrict A,
        const SCALAR* restrict B, const SCALAR* restrict C, SCALAR* restrict y,
        int64_t dim, int64_t length, int64_t nstate, int64_t group_size,
        int64_t sb, int64_t sg, int64_t sl, int64_t begin, int64_t end) {
    SCALAR x[nstate];
    for (int64_t bd = begin; bd < end; ++bd) {
        const int64_t b = bd / dim, d = bd % dim, off = b * sb + (d / group_size) * sg;
        const SCALAR* restrict Ad = A + d * nstate;
        const SCALAR* restrict ub = u + bd * length;
        const SCALAR* restrict db = delta + bd * length;
        for (int64_t n = 0; n < nstate; ++n) x[n] = 0;
        for (int64_t t = 0; t < length; ++t) {
            const SCALAR* restrict Bt = B + off + t * sl;
            const SCALAR* restrict Ct = C + off + t * sl;
            const SCALAR dt = db[t], dtu = dt * ub[t];
            SCALAR acc = 0;
            _Pragma("omp simd reduction(+:acc)")
            for (int64_t n = 0; n < nstate; ++n) {
                x[n] = EXP(dt * Ad[n]) * x[n] + dtu * Bt[n];
                acc += x[n] * Ct[n];
            }
            y[bd * length + t] = acc;
        }
    }
}

/* Backward of one row: recompute a_t = exp(delta_t A) and x_{t-1} into work (2 L N values), then run
   the adjoint h_t = C_t g_t + a_{t+1} h_{t+1} backwards in time. dB and dC are accumulated (+=) into a
   buffer laid out like B whose first batch index is gb0 (a block's own buffer, see _NativeScan). */
static inline void bwd_rows_SUFFIX(
        const SCALAR* restrict u, const SCALAR* restrict delta, const SCALAR* restrict A,
        const SCALAR* restrict B, const SCALAR* restrict C, const SCALAR* restrict gy,
        SCALAR* restrict du, SCALAR* restrict ddelta, SCALAR* restrict dA,
        SCALAR* restrict dB, SCALAR* restrict dC, SCALAR* restrict work,
        int64_t dim, int64_t length, int64_t nstate, int64_t group_size,
        int64_t sb, int64_t sg, int64_t sl, int64_t gb0, int64_t begin, int64_t end) {
    SCALAR x[nstate], h[nstate];
    double gA[nstate];                                /* a sum over L terms: keep it in double */
    SCALAR* restrict xs = work;                       /* row t holds x_{t-1} */
    SCALAR* restrict as = work + length * nstate;     /* row t holds a_t */
    for (int64_t bd = begin; bd < end; ++bd) {
        const int64_t b = bd / dim, d = bd % dim, off = b * sb + (d / group_size) * sg;
        const int64_t goff = off - gb0 * sb;          /* the same element in this block's dB/dC buffer */
        const SCALAR* restrict Ad = A + d * nstate;
        const SCALAR* restrict ub = u + bd * length;
        const SCALAR* restrict db = delta + bd * length;
        const SCALAR* restrict gb = gy + bd * length;
        for (int64_t n = 0; n < nstate; ++n) { x[n] = 0; h[n] = 0; gA[n] = 0; }
        for (int64_t t = 0; t < length; ++t) {
            const SCALAR* restrict Bt = B + off + t * sl;
            SCALAR* restrict xt = xs + t * nstate;
            SCALAR* restrict at = as + t * nstate;
            const SCALAR dt = db[t], dtu = dt * ub[t];
            _Pragma("omp simd")
            for (int64_t n = 0; n < nstate; ++n) at[n] = EXP(dt * Ad[n]);
            _Pragma("omp simd")
            for (int64_t n = 0; n < nstate; ++n) {
                xt[n] = x[n];
                x[n] = at[n] * x[n] + dtu * Bt[n];
            }
        }
        for (int64_t t = length - 1; t >= 0; --t) {
            const SCALAR* restrict Bt = B + off + t * sl;
            const SCALAR* restrict Ct = C + off + t * sl;
            SCALAR* restrict dBt = dB + goff + t * sl;
            SCALAR* restrict dCt = dC + goff + t * sl;
            const SCALAR* restrict xp = xs + t * nstate;
            const SCALAR* restrict at = as + t * nstate;
            const SCALAR g = gb[t], dt = db[t], uu = ub[t], dtu = dt * uu;
            SCALAR sum_w = 0, sum_b = 0;
            _Pragma("omp simd reduction(+:sum_w, sum_b)")
            for (int64_t n = 0; n < nstate; ++n) {
                const SCALAR hn = h[n] + Ct[n] * g;
                const SCALAR w = hn * xp[n] * at[n];        /* d loss / d (delta_t A_n) */
                gA[n] += (double)(w * dt);
                sum_w += w * Ad[n];
                sum_b += hn * Bt[n];
                dBt[n] += hn * dtu;
                dCt[n] += g * (at[n] * xp[n] + dtu * Bt[n]);
                h[n] = hn * at[n];
            }
            ddelta[bd * length + t] = sum_w + sum_b * uu;
            du[bd * length + t] = sum_b * dt;
        }
        for (int64_t n = 0; n < nstate; ++n) dA[bd * nstate + n] = (SCALAR)gA[n];
    }
}

/* Entry points; N = 16 (Mamba's default) gets a specialised copy with a fixed trip count. */
MULTIVERSION void scan_fwd_SUFFIX(
        const SCALAR* u, const SCALAR* delta, const SCALAR* A, const SCALAR* B, const SCALAR* C, SCALAR* y,
        int64_t dim, int64_t length, int64_t nstate, int64_t group_size,
        int64_t sb, int64_t sg, int64_t sl, int64_t begin, int64_t end) {
    if (nstate == 16)
        fwd_rows_SUFFIX(u, delta, A, B, C, y, dim, length, 16, group_size, sb, sg, sl, begin, end);
    else
        fwd_rows_SUFFIX(u, delta, A, B, C, y, dim, length, nstate, group_size, sb, sg, sl, begin, end);
}

MULTIVERSION void scan_bwd_SUFFIX(
        const SCALAR* u, const SCALAR* delta, const SCALAR* A, const SCALAR* B, const SCALAR* C,
        const SCALAR* gy, SCALAR* du, SCALAR* ddelta, SCALAR* dA, SCALAR* dB, SCALAR* dC, SCALAR* work,
        int64_t dim, int64_t length, int64_t nstate, int64_t group_size,
        int64_t sb, int64_t sg, int64_t sl, int64_t gb0, int64_t begin, int64_t end) {
    if (nstate == 16)
        bwd_rows_SUFFIX(u, delta, A, B, C, gy, du, ddelta, dA, dB, dC, work, dim, length, 16,
                        group_size, sb, sg, sl, gb0, begin, end);
    else
        bwd_rows_SUFFIX(u, delta, A, B, C, gy, du, ddelta, dA, dB, dC, work, dim, length, nstate,
                        group_size, sb, sg, sl, gb0, begin, end);
}
"""

_KERNEL_SOURCE = _KERNEL_HEADER + "".join(
    _KERNEL_TEMPLATE.replace("SCALAR", scalar).replace("SUFFIX", suffix).replace("EXP(", exp + "(")
    for scalar, suffix, exp in (("float", "f32", "exp_f32"), ("double", "f64", "exp_f64")))


# No -ffast-math: linking with it would switch the whole process to flush-to-zero. -fopenmp-simd only
# honours the `omp simd` pragmas (no OpenMP runtime is linked).
_CFLAGS = ("-O3", "-fopenmp-simd", "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros",
           "-ffinite-math-only", "-fno-math-errno", "-shared", "-fPIC")
ENV_NATIVE = "ADLIB_SCAN_NATIVE"   # "0" disables the compiled kernel


def _cache_dir() -> Path:
    return Path(os.environ.get("ADLIB_CACHE", Path.home() / ".cache" / "adlib")) / "ssm"


def _compiler() -> list[str] | None:
    """The C compiler command: $CC, Python's build compiler, cc, gcc or clang, whichever exists first."""
    for command in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc", "clang"):
        words = shlex.split(command or "")
        if words and shutil.which(words[0]):
            return words
    return None


def _compile(compiler: list[str], source: Path, target: Path, *extra: str) -> None:
    subprocess.run([*compiler, *_CFLAGS, *extra, "-o", str(target), str(source), "-lm"],
                   check=True, capture_output=True, text=True, timeout=300)


@functools.lru_cache(maxsize=None)
def _native_library() -> ctypes.CDLL | None:
    """Build (once per source/flags/machine, cached on disk) and load the kernel; None when impossible."""
    if os.environ.get(ENV_NATIVE, "1") == "0" or sys.platform == "win32":
        return None
    compiler = _compiler()
    if compiler is None:
        warnings.warn("adlib.ssm: no C compiler found; the selective scan uses the slower pure PyTorch path")
        return None
    key = hashlib.sha256("\0".join((_KERNEL_SOURCE, *compiler, *_CFLAGS, platform.machine())).encode()).hexdigest()[:16]
    path = _cache_dir() / f"scan_{key}.so"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                source = Path(tmp) / "scan.c"
                source.write_text(_KERNEL_SOURCE)
                built = Path(tmp) / "scan.so"
                try:
                    _compile(compiler, source, built)
                except subprocess.CalledProcessError:  # e.g. no ifunc support (musl): one plain copy
                    _compile(compiler, source, built, "-DADLIB_NO_MULTIVERSION")
                os.replace(built, path)
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        warnings.warn(f"adlib.ssm: building the native selective scan failed ({detail.strip()[:500]}); "
                      "using the pure PyTorch path")
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    for suffix in ("f32", "f64"):
        getattr(lib, f"scan_fwd_{suffix}").argtypes = [ptr] * 6 + [i64] * 9
        getattr(lib, f"scan_bwd_{suffix}").argtypes = [ptr] * 12 + [i64] * 10
    return lib


def native_available() -> bool:
    """Whether the compiled CPU kernel can be used (builds it on the first call)."""
    return _native_library() is not None


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}   # by (process id, size): threads do not survive fork


# Below this many state updates (rows x length x d_state) a call runs on the calling thread alone. Measured
# (VarAD smoke fit, 40 images at batch 1, 2 cores, one other busy process): torch and the scan on 2 threads
# 262 s, the scan on 1 thread 13.3 s, everything on 1 thread 13.8 s. Pool threads that wake for a few
# milliseconds of work compete with torch's OpenMP workers, which spin between operations; a larger scan
# amortises that. ADLIB_SCAN_PARALLEL_MIN overrides the bound (0: always share the rows among threads).
def _parallel_min_work() -> int:
    raw = os.environ.get("ADLIB_SCAN_PARALLEL_MIN", str(1 << 24))
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"ADLIB_SCAN_PARALLEL_MIN={raw!r}: expected a whole number of state updates") from None


PARALLEL_MIN_WORK = _parallel_min_work()


def _threads(rows: int, work: int | None = None) -> int:
    if work is not None and work < PARALLEL_MIN_WORK:
        return 1
    return max(1, min(torch.get_num_threads(), rows))


def _run_blocks(fn: Callable[[int, int], None], count: int, threads: int) -> None:
    """Call fn(worker, block) for block in range(count); ``worker`` < threads names the caller's buffers.

    Workers (the calling thread plus pool threads) take blocks from a shared counter, so a worker the OS
    has descheduled (a busy machine) delays only its current block, not a fixed share of the work. Which
    worker runs which block varies from run to run: results must not depend on it (see _NativeScan).
    """
    threads = max(1, min(threads, count))
    if threads == 1:
        for block in range(count):
            fn(0, block)
        return
    blocks = itertools.count()                       # next() is atomic under the GIL

    def work(worker: int) -> None:
        while (block := next(blocks)) < count:
            fn(worker, block)

    key = (os.getpid(), threads - 1)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(threads - 1, thread_name_prefix="adlib-scan")
    futures = [_POOLS[key].submit(work, worker) for worker in range(1, threads)]
    work(0)
    for future in futures:
        future.result()


def _run_rows(fn: Callable[[int, int, int], None], rows: int, work: int | None = None) -> None:
    """Call fn(worker, begin, end) over blocks of rows (about 8 blocks per thread; one thread below
    ``PARALLEL_MIN_WORK`` state updates)."""
    threads = _threads(rows, work)
    block = max(1, -(-rows // (8 * threads)))
    _run_blocks(lambda worker, k: fn(worker, k * block, min(k * block + block, rows)), -(-rows // block), threads)


def _row_blocks(batch: int, dim: int, threads: int) -> list[tuple[int, int, int]]:
    """(batch index, first row, end row) blocks, each inside one batch index: the same batch's channels are
    split into the same number of blocks (about 8 blocks per thread overall). Depends on the sizes and the
    thread count only, never on timing."""
    per_batch = max(1, min(dim, -(-8 * threads // batch))) if threads > 1 else 1
    edges = [round(i * dim / per_batch) for i in range(per_batch + 1)]
    return [(b, b * dim + edges[i], b * dim + edges[i + 1]) for b in range(batch) for i in range(per_batch)]


def _compact_bc(t: Tensor, dim: int) -> tuple[Tensor, int]:
    """B or C as contiguous (batch|1, groups, length|1, N) plus the channels per group."""
    if t.dim() == 2:
        return t[None, :, None, :].contiguous(), 1
    if t.dim() == 3:
        return t.transpose(1, 2)[:, None].contiguous(), dim
    return t.transpose(2, 3).contiguous(), dim // t.shape[1]


def _common_layout(B: Tensor, C: Tensor, dim: int) -> tuple[Tensor, Tensor, int]:
    """Compact B and C sharing one layout (the kernel indexes both alike)."""
    Bc, gs_b = _compact_bc(B, dim)
    Cc, gs_c = _compact_bc(C, dim)
    if Bc.shape == Cc.shape and gs_b == gs_c:
        return Bc, Cc, gs_b
    per_channel = [t.repeat_interleave(dim // t.shape[1], dim=1) for t in (Bc, Cc)]
    shape = torch.broadcast_shapes(*(t.shape for t in per_channel))
    return per_channel[0].expand(shape).contiguous(), per_channel[1].expand(shape).contiguous(), 1


def _strides(t: Tensor, group_size: int) -> list[int]:
    """group size and element strides (batch, group, time) of a compact B/C; 0 where broadcast."""
    batch, groups, length, nstate = t.shape
    return [group_size, groups * length * nstate if batch > 1 else 0, length * nstate,
            nstate if length > 1 else 0]


class _NativeScan(torch.autograd.Function):
    """y = scan(u, delta, A, B, C) with the C kernel; u, delta (batch, dim, L); B, C compact (see _compact_bc)."""

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, group_size: int) -> Tensor:
        lib = _native_library()
        batch, dim, length = u.shape
        suffix = "f64" if u.dtype == torch.float64 else "f32"
        kernel = getattr(lib, f"scan_fwd_{suffix}")
        y = torch.empty_like(u)
        sizes = [dim, length, A.shape[1], *_strides(B, group_size)]
        args = [t.data_ptr() for t in (u, delta, A, B, C, y)]
        _run_rows(lambda i, begin, end: kernel(*args, *sizes, begin, end), batch * dim, batch * dim * length * A.shape[1])
        ctx.save_for_backward(u, delta, A, B, C)
        ctx.group_size = group_size
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Tensor):
        u, delta, A, B, C = ctx.saved_tensors
        lib = _native_library()
        batch, dim, length = u.shape
        nstate = A.shape[1]
        kernel = getattr(lib, f"scan_bwd_{'f64' if u.dtype == torch.float64 else 'f32'}")
        grad_y = grad_y.contiguous().to(u.dtype)
        threads = _threads(batch * dim, batch * dim * length * nstate)
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dA_rows = u.new_empty((batch, dim, nstate))
        # dB and dC sum over the rows (channels) that share a B/C entry. For results that do not depend on
        # which thread ran which rows, each block of rows sums into its own buffer (one batch slice of B's
        # layout), and the buffers are added in block order afterwards.
        blocks = _row_blocks(batch, dim, threads)
        sliced = B.shape[0] > 1                      # B, C per batch: a block touches only its batch's slice
        dB_parts = B.new_zeros((len(blocks), 1, *B.shape[1:]))
        dC_parts = C.new_zeros((len(blocks), 1, *C.shape[1:]))
        work = u.new_empty((threads, 2 * length * nstate))
        sizes = [dim, length, nstate, *_strides(B, ctx.group_size)]
        shared = [t.data_ptr() for t in (u, delta, A, B, C, grad_y, du, ddelta, dA_rows)]

        def run(worker: int, k: int) -> None:
            b, begin, end = blocks[k]
            kernel(*shared, dB_parts[k].data_ptr(), dC_parts[k].data_ptr(), work[worker].data_ptr(), *sizes,
                   b if sliced else 0, begin, end)

        _run_blocks(run, len(blocks), threads)
        if sliced:
            dB = dB_parts.view(batch, -1, *B.shape[1:]).sum(1)
            dC = dC_parts.view(batch, -1, *C.shape[1:]).sum(1)
        else:
            dB, dC = dB_parts.sum(0), dC_parts.sum(0)
        return du, ddelta, dA_rows.sum(0), dB, dC, None


def selective_scan_native(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                          z: Tensor | None = None, delta_bias: Tensor | None = None,
                          delta_softplus: bool = False) -> Tensor:
    """Selective scan with the compiled CPU kernel (float32 math, float64 for float64 inputs)."""
    if u.device.type != "cpu":
        raise RuntimeError(f"selective_scan(impl='native') runs on CPU tensors, got u on {u.device}")
    if _native_library() is None:
        raise RuntimeError("selective_scan(impl='native'): the C kernel could not be built or loaded "
                           f"(is a C compiler installed? is {ENV_NATIVE}=0 set?); use impl='fast' or 'torch'")
    _ran("native")
    dtype = _compute_dtype(u)
    dim = u.shape[1]
    delta = _prepare_delta(delta, delta_bias, delta_softplus, dtype)
    uc = u.to(dtype)
    Bc, Cc, group_size = _common_layout(B.to(dtype), C.to(dtype), dim)
    y = _NativeScan.apply(uc.contiguous(), delta.contiguous(), A.to(dtype).contiguous(), Bc, Cc, group_size)
    return _finish(y, uc, D, z, u.dtype)


# --------------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------------


def selective_scan_fast(u: Tensor, *args, **kwargs) -> Tensor:
    """Fastest local implementation: the compiled kernel for CPU tensors when it builds, else PyTorch."""
    if u.device.type == "cpu" and native_available():
        return selective_scan_native(u, *args, **kwargs)
    return selective_scan_torch(u, *args, **kwargs)


_REGISTRY: dict[str, Callable[..., Tensor]] = {
    "reference": selective_scan_reference,
    "torch": selective_scan_torch,
    "native": selective_scan_native,
    "fast": selective_scan_fast,
    "cuda": selective_scan_cuda,
}


def resolve_impl(impl: str, device: torch.device | str) -> str:
    """The implementation name ``selective_scan`` runs for ``impl`` on tensors on ``device``."""
    if impl == "auto":
        impl = os.environ.get(ENV_IMPL, "").strip() or "auto"
        if impl not in IMPLS:
            raise ValueError(f"environment variable {ENV_IMPL}={impl!r}: expected one of {IMPLS}")
    if impl == "auto":
        return "cuda" if torch.device(device).type == "cuda" and _mamba_ssm_scan() is not None else "fast"
    if impl not in _REGISTRY:
        raise ValueError(f"selective_scan: impl={impl!r}, expected one of {IMPLS}")
    return impl


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   impl: str = "auto") -> Tensor:
    """Selective scan with mamba_ssm's ``selective_scan_fn`` semantics; returns (batch, dim, length) in u's dtype.

    u, delta, z: (batch, dim, length); A: (dim, d_state); B, C: (batch, d_state, length), (dim, d_state)
    or (batch, groups, d_state, length); D, delta_bias: (dim,). ``impl`` is one of ``IMPLS``.
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    fn = _REGISTRY[resolve_impl(impl, u.device)]
    return fn(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)


# --------------------------------------------------------------------------------------------------
# Mamba block
# --------------------------------------------------------------------------------------------------


def causal_depthwise_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """What causal_conv1d computes: ``y[:, c, t] = bias[c] + sum_k weight[c, 0, k] * x[:, c, t - K + 1 + k]``.

    x (B, D, L), weight (D, 1, K). On the CPU this is a sum of K shifted products, because PyTorch's
    depthwise ``conv1d`` backward is many times slower there than the scan itself; elsewhere it is the
    library convolution.
    """
    kernel, length = weight.shape[-1], x.shape[-1]
    if x.device.type != "cpu":
        return F.conv1d(x, weight, bias, padding=kernel - 1, groups=x.shape[1])[..., :length]
    padded = F.pad(x, (kernel - 1, 0))
    taps = weight[:, 0, :, None]                                    # (D, K, 1)
    y = padded[..., :length] * taps[:, 0]
    for k in range(1, kernel):
        y = y + padded[..., k:k + length] * taps[:, k]
    return y if bias is None else y + bias[:, None]


class Mamba(nn.Module):
    """Mamba block with mamba_ssm's parameter names, shapes and initialization: (B, L, d_model) -> same.

    State dicts load both ways with ``mamba_ssm.Mamba``. ``scan_impl`` is passed to ``selective_scan``.
    On CUDA, with ``scan_impl`` resolving to ``cuda`` and ``use_fast_path``, mamba_ssm's fused
    ``mamba_inner_fn`` runs when it and causal_conv1d import (as in mamba_ssm); otherwise the layers
    below run with a grouped ``nn.Conv1d`` as the causal convolution.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init: str = "random", dt_scale: float = 1.0, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, bias: bool = False, use_fast_path: bool = True,
                 layer_idx: int | None = None, scan_impl: str = "auto",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_impl, self.use_fast_path, self.layer_idx = scan_impl, use_fast_path, layer_idx

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)

        std = self.dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        else:
            raise ValueError(f"Mamba: dt_init={dt_init!r}, expected 'random' or 'constant'")
        # dt_proj.bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max]
        dt = torch.exp(torch.rand(self.d_inner, device=device) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True

        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def forward(self, hidden_states: Tensor) -> Tensor:
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(f"Mamba: expected input (batch, length, {self.d_model}), got {tuple(hidden_states.shape)}")
        length = hidden_states.shape[1]
        xz = self.in_proj(hidden_states).transpose(1, 2)            # (b, 2*d_inner, l)
        A = -torch.exp(self.A_log.float())
        fused = self._fused_cuda_fn(hidden_states.device)
        if fused is not None:
            _ran("mamba_ssm.mamba_inner_fn")
            return fused(xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
                         self.out_proj.weight, self.out_proj.bias, A, None, None, self.D.float(),
                         delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        x, z = xz.chunk(2, dim=1)
        x = self.act(causal_depthwise_conv1d(x, self.conv1d.weight, self.conv1d.bias))
        x_dbl = self.x_proj(x.transpose(1, 2))                      # (b, l, dt_rank + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)         # (b, d_inner, l); bias added in the scan
        y = selective_scan(x, dt, A, B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(),
                           self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
                           impl=self.scan_impl)
        return self.out_proj(y.transpose(1, 2))

    def _fused_cuda_fn(self, device: torch.device) -> Callable | None:
        """mamba_ssm's ``mamba_inner_fn`` when this forward should and can use it, else None."""
        if not self.use_fast_path or resolve_impl(self.scan_impl, device) != "cuda":
            return None
        if _optional("causal_conv1d", "causal_conv1d_fn") is None:  # mamba_inner_fn needs it
            return None
        return _optional("mamba_ssm.ops.selective_scan_interface", "mamba_inner_fn")
