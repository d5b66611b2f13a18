"""adlib.study.cost: FLOP counting that does not depend on what ran earlier in the process."""
import torch
import torch.nn.functional as F
import torch.utils.flop_counter as fc

from adlib.models.base import Prediction
from adlib.study.cost import flops_g


class _Attention(torch.nn.Module):
    """predict = one attention of N tokens of width D over a 1-pixel 'image' (no other FLOPs)."""

    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.tokens, self.dim = tokens, dim

    def predict(self, images):
        q = torch.ones(1, 1, self.tokens, self.dim)
        out = F.scaled_dot_product_attention(q, q, q)
        return Prediction(images[:, 0] * 0, out.sum().view(1))


def test_flops_g_counts_cpu_attention_even_when_nothing_registered_it_before():
    kernel = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if kernel is not None:
        fc.flop_registry.pop(kernel, None)  # a fresh process: no other counter has registered it
    tokens, dim = 64, 16
    # Q K^T and A V: tokens^2 * dim multiply-adds each, two FLOPs per multiply-add
    assert flops_g(_Attention(tokens, dim), image_size=1) * 1e9 == 2 * 2 * tokens * tokens * dim


class _ConvNormScan(torch.nn.Module):
    """A 1x1 conv, a BatchNorm and a module that declares its own scan multiply-adds (as a selective scan does)."""

    class Scan(torch.nn.Module):
        def forward(self, x):
            return x

        def scan_macs(self, x):
            return 7 * x.numel()

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm, self.scan = torch.nn.Conv2d(3, 4, 1, bias=False), torch.nn.BatchNorm2d(4), self.Scan()

    def predict(self, images):
        return self.scan(self.norm(self.conv(images)))


def test_fvcore_flops_adds_norm_estimates_and_declared_scans():
    from adlib.study.cost import fvcore_flops, parameter_parts

    model, size = _ConvNormScan().eval(), 8
    counts = fvcore_flops(model, size)
    assert counts["conv_matmul_gmacs"] * 1e9 == 3 * 4 * size * size  # one multiply-add per weight and pixel
    assert counts["norms_g"] * 1e9 == 2 * 4 * size * size  # BatchNorm in eval: 2 per element
    assert counts["scan_gmacs"] * 1e9 == 7 * 4 * size * size
    assert counts["fvcore_g"] == counts["conv_matmul_gmacs"] + counts["norms_g"]  # the scan is reported apart
    parts = parameter_parts(model, {"conv": "conv", "norm": "norm"})
    assert parts["conv"] * 1e6 == 12 and parts["norm"] * 1e6 == 8 and parts["total"] * 1e6 == 20


def test_cpu_seconds_warms_up_then_times_each_repeat():
    from adlib.study.cost import cpu_seconds

    calls = []
    assert cpu_seconds(lambda: calls.append(1), repeats=3) >= 0 and len(calls) == 4  # a warm-up, then 3 timed
