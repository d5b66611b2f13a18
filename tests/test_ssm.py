"""adlib.ssm: fast selective scans against the reference, the Mamba block's mamba_ssm compatibility, dispatch."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch

from adlib import ssm

FAST_IMPLS = ["torch", "native"]


def _needs(impl: str) -> None:
    if impl == "native" and not ssm.native_available():
        pytest.skip("no C compiler here: the native kernel is unavailable")


def _inputs(batch=2, dim=6, length=9, nstate=4, bc="input", seed=0, dtype=torch.float32, delta_scale=0.5):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    bc_shape = {"input": (batch, nstate, length), "invariant": (dim, nstate), "grouped": (batch, 2, nstate, length)}[bc]
    return {
        "u": rnd(batch, dim, length),
        "delta": rnd(batch, dim, length) * delta_scale,
        "A": -(torch.rand(dim, nstate, generator=g, dtype=dtype) * 2 + 0.1),
        "B": rnd(*bc_shape),
        "C": rnd(*bc_shape),
        "D": rnd(dim),
        "z": rnd(batch, dim, length),
        "delta_bias": rnd(dim) * 0.3,
    }


def _run(impl, inputs, use=("D", "z", "delta_bias"), delta_softplus=True, seed=1):
    """Output and gradients (for every tensor input) of selective_scan under a fixed random cotangent."""
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items() if k in ("u", "delta", "A", "B", "C") or k in use}
    kwargs = {k: leaves[k] for k in ("D", "z", "delta_bias") if k in leaves}
    y = ssm.selective_scan(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], **kwargs,
                           delta_softplus=delta_softplus, impl=impl)
    cot = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y.dtype)
    grads = torch.autograd.grad(y, list(leaves.values()), cot)
    return y.detach(), dict(zip(leaves, grads))


def _assert_close(got, want, what, tol=1e-4):
    """|got - want| <= tol, relative to the reference's magnitude where that exceeds 1 (sums over L grow)."""
    scale = max(1.0, want.abs().max().item())
    err = (got - want).abs().max().item()
    assert err <= tol * scale, f"{what}: max |diff| {err:.3g} > {tol:g} * {scale:.3g}"


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("length", [1, 2, 7, 63, 64, 65, 131])
def test_fast_matches_reference_all_gradients(impl, length):
    _needs(impl)
    inputs = _inputs(length=length, nstate=16)
    y_ref, g_ref = _run("reference", inputs)
    y, g = _run(impl, inputs)
    _assert_close(y, y_ref, f"{impl} output L={length}")
    assert set(g) == set(g_ref) == {"u", "delta", "A", "B", "C", "D", "z", "delta_bias"}
    for name in g_ref:
        if not (name == "A" and length == 1):  # at L = 1 dA is exactly 0 (the state starts at 0)
            assert g_ref[name].abs().max() > 0, f"reference gradient for {name} is all zero: vacuous test"
        _assert_close(g[name], g_ref[name], f"{impl} d{name} L={length}")


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("use,softplus", [((), False), (("D",), False), (("z",), True), (("delta_bias",), False),
                                          (("D", "z", "delta_bias"), False)])
def test_fast_matches_reference_options(impl, use, softplus):
    _needs(impl)
    inputs = _inputs(length=37, nstate=5)
    if not softplus:  # keep delta positive as softplus would
        inputs["delta"] = inputs["delta"].abs()
    y_ref, g_ref = _run("reference", inputs, use=use, delta_softplus=softplus)
    y, g = _run(impl, inputs, use=use, delta_softplus=softplus)
    _assert_close(y, y_ref, f"{impl} output")
    for name in g_ref:
        _assert_close(g[name], g_ref[name], f"{impl} d{name}")


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("bc", ["invariant", "grouped"])
def test_fast_matches_reference_b_c_layouts(impl, bc):
    _needs(impl)
    inputs = _inputs(length=21, bc=bc)
    y_ref, g_ref = _run("reference", inputs)
    y, g = _run(impl, inputs)
    _assert_close(y, y_ref, f"{impl} output ({bc} B, C)")
    for name in g_ref:
        _assert_close(g[name], g_ref[name], f"{impl} d{name} ({bc} B, C)")


def test_reference_matches_explicit_recurrence():
    """The oracle itself, against the textbook recurrence written with Python scalars."""
    x = _inputs(batch=1, dim=2, length=5, nstate=3)
    y = ssm.selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], z=x["z"],
                           delta_bias=x["delta_bias"], delta_softplus=True, impl="reference")
    for d in range(2):
        state = [0.0] * 3
        for t in range(5):
            dt = math.log1p(math.exp(x["delta"][0, d, t].item() + x["delta_bias"][d].item()))
            u = x["u"][0, d, t].item()
            out = 0.0
            for n in range(3):
                state[n] = math.exp(dt * x["A"][d, n].item()) * state[n] + dt * x["B"][0, n, t].item() * u
                out += state[n] * x["C"][0, n, t].item()
            zt = x["z"][0, d, t].item()
            out = (out + x["D"][d].item() * u) * zt / (1 + math.exp(-zt))
            assert y[0, d, t].item() == pytest.approx(out, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_long_sequence_large_delta_is_stable(impl):
    """L = 5329 with deltas up to ~20 and |A| up to 16: no NaN/inf, matches a float64 reference."""
    _needs(impl)
    inputs = _inputs(batch=1, dim=3, length=5329, nstate=16, delta_scale=8.0, seed=3)
    inputs["A"] = inputs["A"] * 8
    y, g = _run(impl, inputs)
    y64, g64 = _run("reference", {k: v.double() for k, v in inputs.items()})
    assert torch.isfinite(y).all() and all(torch.isfinite(t).all() for t in g.values())
    _assert_close(y.double(), y64, f"{impl} output vs float64")
    for name in g64:
        _assert_close(g[name].double(), g64[name], f"{impl} d{name} vs float64", tol=1e-4)


def test_native_float64_path_matches_reference():
    _needs("native")
    inputs = {k: v.double() for k, v in _inputs(length=33).items()}
    y_ref, g_ref = _run("reference", inputs)
    y, g = _run("native", inputs)
    assert y.dtype == torch.float64
    _assert_close(y, y_ref, "float64 output", tol=1e-10)
    for name in g_ref:
        _assert_close(g[name], g_ref[name], f"float64 d{name}", tol=1e-10)


@pytest.mark.parametrize("impl", ["reference", "torch", "fast"])
def test_low_precision_inputs_return_their_dtype(impl):
    x = {k: v.to(torch.bfloat16) for k, v in _inputs().items()}
    y = ssm.selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], z=x["z"], impl=impl)
    assert y.dtype == torch.bfloat16 and y.shape == x["u"].shape


def test_bad_shapes_raise_clear_errors():
    x = _inputs()
    with pytest.raises(ValueError, match="A must be"):
        ssm.selective_scan(x["u"], x["delta"], x["A"][:, None], x["B"], x["C"])
    with pytest.raises(ValueError, match="B must be"):
        ssm.selective_scan(x["u"], x["delta"], x["A"], x["B"][:, :, :-1], x["C"])
    with pytest.raises(ValueError, match="impl="):
        ssm.selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], impl="gpu")


# ------------------------------------------------------------------------------------------------ dispatch


@pytest.fixture(autouse=True)
def _forget_optional_imports():
    """ssm remembers whether mamba_ssm / causal_conv1d import; these tests fake both ways."""
    ssm._optional.cache_clear()
    yield
    ssm._optional.cache_clear()


def _fake_mamba_ssm(monkeypatch, with_causal_conv=True):
    calls = []
    iface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    iface.selective_scan_fn = lambda *args, **kw: calls.append(("selective_scan_fn", args, kw)) or "scan"
    iface.mamba_inner_fn = lambda *args, **kw: calls.append(("mamba_inner_fn", args, kw)) or "inner"
    ops = types.ModuleType("mamba_ssm.ops")
    ops.selective_scan_interface = iface
    pkg = types.ModuleType("mamba_ssm")
    pkg.ops = ops
    for name, module in (("mamba_ssm", pkg), ("mamba_ssm.ops", ops), ("mamba_ssm.ops.selective_scan_interface", iface)):
        monkeypatch.setitem(sys.modules, name, module)
    if with_causal_conv:
        conv = types.ModuleType("causal_conv1d")
        conv.causal_conv1d_fn = lambda *args, **kw: None
        monkeypatch.setitem(sys.modules, "causal_conv1d", conv)
    ssm._optional.cache_clear()
    return calls


def _no_mamba_ssm(monkeypatch):
    for name in ("mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.selective_scan_interface", "causal_conv1d"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    ssm._optional.cache_clear()


def test_dispatch_auto_picks_by_device_and_mamba_ssm(monkeypatch):
    monkeypatch.delenv(ssm.ENV_IMPL, raising=False)
    _no_mamba_ssm(monkeypatch)
    assert ssm.resolve_impl("auto", torch.device("cpu")) == "fast"
    assert ssm.resolve_impl("auto", torch.device("cuda")) == "fast"
    _fake_mamba_ssm(monkeypatch)
    assert ssm.resolve_impl("auto", torch.device("cuda")) == "cuda"
    assert ssm.resolve_impl("auto", torch.device("cpu")) == "fast"
    for name in ("reference", "fast", "torch", "native", "cuda"):
        assert ssm.resolve_impl(name, torch.device("cpu")) == name


def test_env_var_overrides_auto_only(monkeypatch):
    monkeypatch.setenv(ssm.ENV_IMPL, "reference")
    assert ssm.resolve_impl("auto", "cpu") == "reference"
    assert ssm.resolve_impl("torch", "cpu") == "torch"
    monkeypatch.setenv(ssm.ENV_IMPL, "bogus")
    with pytest.raises(ValueError, match=ssm.ENV_IMPL):
        ssm.resolve_impl("auto", "cpu")


def test_env_var_routes_selective_scan(monkeypatch):
    calls = []
    monkeypatch.setitem(ssm._REGISTRY, "reference", lambda *a, **k: calls.append("reference") or "ref")
    monkeypatch.setenv(ssm.ENV_IMPL, "reference")
    x = _inputs()
    assert ssm.selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"]) == "ref" and calls == ["reference"]


def test_cuda_impl_on_cpu_tensors_raises(monkeypatch):
    x = _inputs()
    _fake_mamba_ssm(monkeypatch)
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        ssm.selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], impl="cuda")
    _no_mamba_ssm(monkeypatch)
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        ssm.selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], impl="cuda")


def test_cuda_impl_forwards_to_mamba_ssm(monkeypatch):
    """selective_scan_cuda hands every argument to mamba_ssm's selective_scan_fn in its positional order."""
    calls = _fake_mamba_ssm(monkeypatch)
    x = _inputs()
    fake_u = types.SimpleNamespace(device=torch.device("cuda"))
    out = ssm.selective_scan_cuda(fake_u, x["delta"], x["A"], x["B"], x["C"], x["D"], z=x["z"],
                                  delta_bias=x["delta_bias"], delta_softplus=True)
    assert out == "scan"
    (name, args, _), = calls
    assert name == "selective_scan_fn" and args[0] is fake_u and args[5] is x["D"] and args[6] is x["z"]
    assert args[7] is x["delta_bias"] and args[8] is True


def test_fast_falls_back_to_torch_without_native(monkeypatch):
    monkeypatch.setattr(ssm, "native_available", lambda: False)
    monkeypatch.setattr(ssm, "selective_scan_torch", lambda *a, **k: "torch")
    x = _inputs()
    assert ssm.selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], impl="fast") == "torch"


def test_native_build_fallbacks(monkeypatch, tmp_path):
    monkeypatch.setattr(ssm, "_cache_dir", lambda: tmp_path)
    ssm._native_library.cache_clear()
    try:
        monkeypatch.setenv(ssm.ENV_NATIVE, "0")
        assert ssm._native_library() is None
        ssm._native_library.cache_clear()
        monkeypatch.delenv(ssm.ENV_NATIVE)
        monkeypatch.setattr(ssm, "_compiler", lambda: None)
        with pytest.warns(UserWarning, match="no C compiler"):
            assert ssm._native_library() is None
        x = _inputs()
        with pytest.raises(RuntimeError, match="could not be built"):
            ssm.selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], impl="native")
        y = ssm.selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], impl="fast")
        assert torch.isfinite(y).all()
    finally:
        ssm._native_library.cache_clear()


# ------------------------------------------------------------------------------------------------ Mamba

# mamba_ssm.modules.mamba_simple.Mamba(d_model=16) with defaults (d_state 16, d_conv 4, expand 2,
# dt_rank ceil(16 / 16) = 1, conv_bias True, bias False): its state_dict, in order.
MAMBA_SSM_D16_STATE = [
    ("A_log", (32, 16)),
    ("D", (32,)),
    ("in_proj.weight", (64, 16)),
    ("conv1d.weight", (32, 1, 4)),
    ("conv1d.bias", (32,)),
    ("x_proj.weight", (33, 32)),
    ("dt_proj.weight", (32, 1)),
    ("dt_proj.bias", (32,)),
    ("out_proj.weight", (16, 32)),
]


def test_mamba_state_dict_matches_mamba_ssm():
    block = ssm.Mamba(d_model=16)
    assert [(k, tuple(v.shape)) for k, v in block.state_dict().items()] == MAMBA_SSM_D16_STATE
    assert block.conv1d.groups == 32 and block.conv1d.padding == (3,)


def test_mamba_initialization_matches_mamba_ssm():
    torch.manual_seed(0)
    block = ssm.Mamba(d_model=32, d_state=8, dt_min=0.001, dt_max=0.1)
    assert torch.equal(block.A_log, torch.log(torch.arange(1, 9, dtype=torch.float32)).expand(64, 8))
    assert torch.equal(block.D, torch.ones(64))
    dt = torch.nn.functional.softplus(block.dt_proj.bias)
    assert dt.min() >= 0.001 * 0.999 and dt.max() <= 0.1 * 1.001
    bound = block.dt_rank ** -0.5
    assert block.dt_proj.weight.abs().max() <= bound


def test_mamba_is_causal_and_impls_agree():
    torch.manual_seed(0)
    block = ssm.Mamba(d_model=8, d_state=4, scan_impl="fast")
    x = torch.randn(2, 12, 8)
    y = block(x)
    assert y.shape == x.shape
    x2 = x.clone()
    x2[:, 7] += 3.0
    y2 = block(x2)
    assert torch.equal(y2[:, :7], y[:, :7])
    assert (y2[:, 7:] - y[:, 7:]).abs().max() > 1e-3
    block.scan_impl = "reference"
    _assert_close(block(x), y, "Mamba fast vs reference")


def test_mamba_loads_a_mamba_ssm_shaped_state_dict():
    state = {k: torch.randn(shape) for k, shape in MAMBA_SSM_D16_STATE}
    block = ssm.Mamba(d_model=16)
    block.load_state_dict(state)
    assert torch.equal(block.x_proj.weight, state["x_proj.weight"])


def test_mamba_uses_mamba_inner_fn_on_cuda_when_available(monkeypatch):
    monkeypatch.delenv(ssm.ENV_IMPL, raising=False)
    block = ssm.Mamba(d_model=16)
    _no_mamba_ssm(monkeypatch)
    assert block._fused_cuda_fn(torch.device("cuda")) is None
    _fake_mamba_ssm(monkeypatch)
    assert block._fused_cuda_fn(torch.device("cpu")) is None
    fused = block._fused_cuda_fn(torch.device("cuda"))
    assert fused is sys.modules["mamba_ssm.ops.selective_scan_interface"].mamba_inner_fn
    block.use_fast_path = False
    assert block._fused_cuda_fn(torch.device("cuda")) is None
    block.use_fast_path = True
    monkeypatch.setitem(sys.modules, "causal_conv1d", None)
    ssm._optional.cache_clear()
    assert block._fused_cuda_fn(torch.device("cuda")) is None  # mamba_inner_fn needs causal_conv1d


@pytest.mark.parametrize("bc", ["input", "invariant", "grouped"])
def test_native_with_several_workers_matches_reference(bc):
    """Rows split over 3 workers in blocks (per-worker dB/dC buffers), whatever this machine's core count."""
    _needs("native")
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        inputs = _inputs(batch=3, dim=10, length=40, bc=bc)
        y, g = _run("native", inputs)
    finally:
        torch.set_num_threads(before)
    y_ref, g_ref = _run("reference", inputs)
    _assert_close(y, y_ref, f"output, 3 workers ({bc})")
    for name in g_ref:
        _assert_close(g[name], g_ref[name], f"d{name}, 3 workers ({bc})")


@pytest.mark.parametrize("kernel,length", [(4, 1), (4, 37), (2, 5), (1, 9)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_causal_depthwise_conv1d_matches_a_padded_conv1d(kernel, length, with_bias):
    from adlib.ssm import causal_depthwise_conv1d

    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 6, kernel, groups=6, padding=kernel - 1, bias=with_bias)
    x = torch.randn(3, 6, length, requires_grad=True)
    expected = conv(x)[..., :length]
    grads_expected = torch.autograd.grad(expected.pow(2).sum(), [x, *conv.parameters()])
    x2 = x.detach().clone().requires_grad_(True)
    got = causal_depthwise_conv1d(x2, conv.weight, conv.bias)
    grads_got = torch.autograd.grad(got.pow(2).sum(), [x2, *conv.parameters()])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    for g, e in zip(grads_got, grads_expected):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-5)


def test_small_scans_run_on_the_calling_thread(monkeypatch):
    monkeypatch.setattr(ssm, "PARALLEL_MIN_WORK", 1000)
    assert ssm._threads(64, work=999) == 1
    assert ssm._threads(64, work=1000) == min(torch.get_num_threads(), 64)
    assert ssm._threads(64) == min(torch.get_num_threads(), 64)  # no work given: the rows decide
