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
