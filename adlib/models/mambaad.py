"""MambaAD (He et al., NeurIPS 2024): a frozen CNN encoder, a Half-FPN bottleneck and a Mamba decoder.

Pipeline (Fig. 2 of the paper; shapes for a 256 px image and ResNet34):

1. the frozen encoder gives three maps, strides 4/8/16 (ResNet34 layers 1-3: 64x64x64, 128x32x32, 256x16x16);
2. the H-FPN bottleneck (``HalfFPN``, the release's ``MFF_OCE``) fuses them into one 512x8x8 map;
3. the decoder: four stages of LSS modules at 8, 16, 32, 64 px (channels 512, 256, 128, 64), with a
   ``PatchExpand2D`` between stages. An LSS module (Eq. 5-7) runs its input through cascaded HSS blocks and,
   in parallel, through depthwise k = 5 and k = 7 conv branches, fuses the three by a 1x1 conv and adds the
   input. An HSS block (Eq. 8) reads the map along 8 scan directions (Hilbert by default), runs one
   selective scan with its own projections per direction, decodes each back to the grid and sums them;
4. stages 1-3 reconstruct encoder maps 3, 2, 1. Loss: 5 x the sum of per-scale MSE. Anomaly map: the sum
   over scales of 1 - cosine similarity, upsampled to the image, Gaussian sigma 4. Image score: its max.

Everything the paper leaves to the code follows the release (lewandofskee/MambaAD ``model/mambaad.py``), as
``research/repro_spec.md`` section 2 records. Where adlib generalises the release:

- any input size: scan orders are built per feature-map size (``adlib.scans``: bijections at any h x w;
  the release's index only exists for 8/16/32/64 and silently breaks elsewhere). Sizes that are not a
  multiple of 32 give odd maps: the bottleneck rounds up (stride-2 convs) and each decoder stage's output is
  cropped to its encoder map (the extra row or column).
- any encoder with three taps: the bottleneck and decoder widths follow the encoder's (c1, c2, c3): the
  bottleneck gives 4 * (c3 // 2) channels and the decoder stages c3, c2, c1 (ResNet34: exactly the
  release's 64/128/256 -> 512 and [512, 256, 128, 64]); ``PatchExpand2D`` maps C_in to C_out (the release:
  C_in = 2 C_out).
- the ablations of Tables 2-4 are config fields (depths, scan methods and directions, HSS blocks per LSS,
  local conv form, kernel sizes, residual).

All 8 directions of an HSS block go through ONE selective-scan call over K * d_inner channels with
grouped B and C (``adlib.ssm.selective_scan``; mamba_ssm's ``selective_scan_fn`` on CUDA when installed).

Checked (``benchmarks/mambaad.py``, ``tests/test_mambaad.py``):

- given the release's weights (``load_release_state_dict``), the H-FPN and decoder outputs equal the release
  code's to 2e-5; parameter counts equal the release's module by module;
- Tables 2/5: parameters and FLOPs of all seven backbone/depth rows match the print when counted like the
  paper: the whole model (frozen encoder to layer 3 included, plus the release's scan indices, which it keeps
  as nn.Parameter: ResNet34 [3,4,6,3] 25.65 M -> "25.7"), fvcore's FLOPs (multiply-adds of convs and matrix
  products plus its norm estimates, the selective scan not counted: 8.30 G -> "8.3"). The ResNet50/WideResNet50
  rows (251/268 M) confirm that the H-FPN and decoder widths follow the encoder as above;
- the release runs 6 distinct Hilbert sequences in its 8 directions; the printed Fig. 3(a) shows 8 distinct
  ones (``direction_set="figure"``; see ``adlib.scans.MAMBAAD_FIGURE_DIRECTIONS``).

Use: ``create_model("mambaad", scan="zigzag+hilbert", directions=8)`` (Tab. 3 row 8), ``hss_per_lss=1``,
``local_conv="dw"``, ``kernel_sizes=(3, 5, 7)``, ``residual=False`` (Tab. 4), ``depths=(2, 2, 2, 2)``,
``backbone="resnet18"`` (Tab. 2). ``explain(images)`` returns every intermediate map; an HSS core's
``forward_core(x, trace={})`` fills ``trace`` with the sequences of each direction before and after the scan.

Checked against the release's code (lewandofskee/MambaAD 0434452 on zhangzjn/ADer 902937a; issue 22):
``tests/fixtures/parity/mambaad.pt`` holds the release's MAMBAAD at a reduced width (their classes and init,
mamba_ssm replaced by a reference selective-scan loop) and its outputs; with its weights loaded through
``authors.from_authors`` (the release's stacked directions permuted into adlib's order) every stage (encoder
maps, H-FPN, decoder maps, map, score) equals the release's within 1e-5 (``results/faithfulness/``). Deviations:

- on purpose, ``map_divisor``: ADer's ``cal_anomaly_map`` divides the scale sum by n_scales ** 2; adlib sums,
  as the paper; "ader" gives the code's scale;
- a bug, fixed: the Gaussian padded maps with PyTorch's reflect border where ADer's evaluator calls scipy's
  (edge sample repeated), which changes the map near its borders;
  ``smoothing_padding='reflect'`` restores it (``benchmarks/parity/faithfulness.py``: before and after);
- released weights (MambaAD issues #30/#31) carry ADer's copy's names: its 7x7 branch's 1x1 convs are
  ``conv1b3``/``conv1a3`` and it builds a 3x3 ``conv33`` its forward never calls; they load renamed, with
  conv33 ignored (``authors_layout``), and compute what the release's 7x7 branch computes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adlib.models.base import AnomalyModel, Prediction
from adlib.models.common import check_choice, gaussian_blur, image_score

LOCAL_CONVS = ("dw+1x1", "dw")  # Table 4: "DWConv + 1x1 Conv" (Eq. 6, the default) and "Only DWConv"


@dataclass
class MambaADConfig:
    """MambaAD settings. Paper values are the defaults except the encoder: the offline EfficientNet-Lite0
    (strides 4/8/16) stands in for ResNet34, whose ImageNet weights cannot be had offline; the paper recipe in
    ``adlib.papers.mambaad`` sets ``backbone="resnet34"``."""

    # --- encoder (frozen)
    backbone: str = "efficientnet_lite0"  # paper: ResNet34 (Tab. 2 also ResNet18/50, WideResNet50)
    layers: tuple | None = (1, 2, 3)  # three taps at strides 4/8/16 (ResNet: layers 1-3, as the release)
    pretrained: bool = True
    image_size: int | tuple[int, int] = 256  # paper: 256; any size works (see module docs)
    # timm keyword arguments that change the encoder's shape (a ResNet's ``channels``), with pretrained=False:
    # a release checkpoint carries its encoder (``authors_config`` sets them for a reduced one). None: timm's.
    backbone_kwargs: dict | None = None
    # --- decoder (Tab. 2)
    depths: tuple[int, ...] = (3, 4, 6, 3)  # HSS blocks per stage, mirroring ResNet34 (paper)
    # HSS blocks per LSS module: None = the paper's rule (3 when a stage's depth divides by 3, else 2);
    # Tab. 4's "M_i=1" is 1.
    hss_per_lss: int | None = None
    drop_path: float = 0.2  # stochastic depth, linear 0 -> 0.2 over the blocks, reversed (release; paper silent)
    # --- HSS block (Tab. 3)
    scan: str = "hilbert"  # sweep, scan, zorder, zigzag, hilbert, or several joined by "+" (Tab. 3 rows 8-12)
    directions: int = 8  # scan directions in all, split equally over the methods (paper: 8)
    # "release" (what the code runs: 6 distinct Hilbert sequences) or "figure" (the 8 printed in Fig. 3a)
    direction_set: str = "release"
    d_state: int = 16  # SSM state size (release; paper silent)
    expand: int = 2  # d_inner = expand * channels (release)
    d_conv: int = 3  # HSS depthwise conv kernel, "DWConv 3x3" in Eq. 8
    # --- LSS local branches (Tab. 4)
    local_conv: str = "dw+1x1"  # "dw+1x1": 1x1 ConvB, k x k depthwise ConvB, 1x1 ConvB (Eq. 6); "dw": only the DWConvB
    kernel_sizes: tuple[int, ...] = (5, 7)  # one parallel branch per kernel size (paper: 5 and 7)
    residual: bool = True  # the "+ X_i" of Eq. 7 (Tab. 4 "noskip": False)
    # --- loss, map, score
    loss_weight: float = 5.0  # L2Loss(lam=5) in the release; the paper says "sum of MSE"
    smoothing_sigma: float = 4.0  # Gaussian on the final map (release: gaussian_sigma=4)
    # The scale maps are summed (the paper: "sum of cosine similarities"); "ader" divides the sum by
    # n_scales ** 2 as ADer's ``cal_anomaly_map(amap_mode='add')`` does: a constant that changes no metric.
    map_divisor: str = "none"
    # The Gaussian's border: "symmetric" is scipy.ndimage.gaussian_filter's (the edge sample repeated), what
    # ADer's evaluator calls; "reflect" (PyTorch's) is what adlib used before the parity check found it.
    smoothing_padding: str = "symmetric"
    score_rule: str = "max"  # image score: plain max of the map (release: pooling_ks=None; paper silent)
    topk_ratio: float = 0.01  # for score_rule="topk_mean"
    scan_impl: str = "auto"  # adlib.ssm.selective_scan implementation ("auto": mamba_ssm on CUDA if present)


def lss_sizes(depth: int, hss_per_lss: int | None = None) -> list[int]:
    """HSS blocks of each LSS module of a stage with ``depth`` HSS blocks (the release's ``LSSLayer_up`` rule).

    [3, 4, 6, 3] -> [3], [2, 2], [3, 3], [3]. A depth that divides by neither 3 nor 2 has no module under the
    rule (the release leaves the stage undefined and fails at its first forward): it raises here.
    """
    if depth < 1:
        raise ValueError(f"depths: every stage needs at least one HSS block, got {depth}")
    if hss_per_lss is not None:
        if hss_per_lss < 1 or depth % hss_per_lss:
            raise ValueError(f"hss_per_lss={hss_per_lss} does not divide a stage depth of {depth}")
        return [hss_per_lss] * (depth // hss_per_lss)
    for size in (3, 2):
        if depth % size == 0:
            return [size] * (depth // size)
    raise ValueError(f"depths: a stage depth of {depth} divides by neither 3 nor 2, so the LSS rule gives no "
                     f"module (set hss_per_lss, e.g. 1)")


# ------------------------------------------------------------------------------------------- bottleneck


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, bias: bool = False) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=bias), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Bottleneck(nn.Module):
    """ResNet's bottleneck block (1x1, 3x3 with stride, 1x1 to 4 * planes), as timm's ``Bottleneck``."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = F.relu(self.bn2(self.conv2(y)), inplace=True)
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)), inplace=True)


class HalfFPN(nn.Module):
    """The H-FPN bottleneck (the release's ``MFF_OCE``): fuse the three encoder maps into one at stride 32.

    f0 = CBR3x3/2(x1) at stride 8; f1 = CBR1x1(x2) + f0; f2 = CBR3x3/2(f1) + CBR1x1(x3) at stride 16;
    f2 = CBR1x1(f2); then 3 ResNet bottlenecks (planes c3 // 2, the first with stride 2) -> 4 * (c3 // 2)
    channels. ResNet34 (64, 128, 256): 512 x 8 x 8 at 256 px, exactly the release.
    """

    def __init__(self, channels: tuple[int, int, int], blocks: int = 3) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.down1 = _conv_bn_relu(c1, c2, 3, stride=2)          # release: conv1, bn1
        self.lateral2 = _conv_bn_relu(c2, c2, 1, bias=True)      # conv21, bn21
        self.down2 = _conv_bn_relu(c2, c3, 3, stride=2)          # conv2, bn2
        self.lateral3 = _conv_bn_relu(c3, c3, 1, bias=True)      # conv31, bn31
        self.fuse = _conv_bn_relu(c3, c3, 1, bias=True)          # convf, bnf
        planes = c3 // 2
        layers = [Bottleneck(c3, planes, stride=2)]
        layers += [Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(blocks - 1)]
        self.blocks = nn.Sequential(*layers)                     # bn_layer
        self.out_channels = planes * Bottleneck.expansion
        for m in self.modules():  # release init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x1, x2, x3 = feats
        f1 = self.lateral2(x2) + _crop(self.down1(x1), x2.shape[-2:])
        f2 = _crop(self.down2(f1), x3.shape[-2:]) + self.lateral3(x3)
        return self.blocks(self.fuse(f2))


def _crop(x: torch.Tensor, size) -> torch.Tensor:
    """Top-left crop of (..., H, W) to ``size`` (stride-2 convs and 2x upsampling round odd sizes up)."""
    h, w = int(size[0]), int(size[1])
    if x.shape[-2] < h or x.shape[-1] < w:
        raise ValueError(f"feature map {tuple(x.shape[-2:])} is smaller than the target {(h, w)}")
    return x[..., :h, :w]


# ------------------------------------------------------------------------------------------- HSS block


def _gather_directions(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, d, L) or (B, K, d, L) -> (B, K, d, L): row k read along index[k] (one gather for all K)."""
    b, k, length = x.shape[0], index.shape[0], index.shape[1]
    d = x.shape[-2]
    src = x.unsqueeze(1).expand(b, k, d, length) if x.dim() == 3 else x
    return torch.gather(src, 3, index.view(1, k, 1, length).expand(b, k, d, length))


class _HSEncode(torch.autograd.Function):
    """HS encoder: (B, d, L) -> (B, K, d, L) along K scan orders. The orders are permutations, so the
    backward is the HS decoder (gather with the inverses, sum over K), not a scatter."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, orders: torch.Tensor, inverses: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(orders, inverses)
        return _gather_directions(x, orders)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        orders, inverses = ctx.saved_tensors
        return _HSDecode.apply(grad, orders, inverses), None, None


class _HSDecode(torch.autograd.Function):
    """HS decoder: (B, K, d, L) -> (B, d, L): each direction back to row-major order, summed over K."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, orders: torch.Tensor, inverses: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(orders, inverses)
        return _gather_directions(y, inverses).sum(dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        orders, inverses = ctx.saved_tensors
        return _HSEncode.apply(grad, orders, inverses), None, None


class SS2D(nn.Module):
    """The HSS block's core (Eq. 8, the release's ``SS2D``) on channels-last (B, H, W, C) maps.

    in_proj -> (x, z); x -> depthwise 3x3 conv -> SiLU -> HS encoder (K scan orders, one gather) -> one
    selective scan over K * d_inner channels, each direction with its own x_proj, dt_proj, A and D ->
    HS decoder (inverse orders, one gather) -> sum over directions -> LayerNorm -> * SiLU(z) -> out_proj.
    Parameter names and shapes are the release's.
    """

    def __init__(self, dim: int, config: MambaADConfig) -> None:
        super().__init__()
        from adlib.scans import hybrid_directions

        self.scan, self.count, self.variant = config.scan, config.directions, config.direction_set
        with torch.device("cpu"):  # validates scan/directions early (on the CPU: a model may be built on meta)
            hybrid_directions(2, 2, self.scan, self.count, self.variant)
        self.d_state, self.scan_impl = config.d_state, config.scan_impl
        self.d_inner = int(config.expand * dim)
        self.dt_rank = math.ceil(dim / 16)
        k, d, n, r = self.count, self.d_inner, self.d_state, self.dt_rank
        self.in_proj = nn.Linear(dim, 2 * d, bias=False)
        self.conv2d = nn.Conv2d(d, d, config.d_conv, padding=(config.d_conv - 1) // 2, groups=d, bias=True)
        bound = 1 / math.sqrt(d)  # nn.Linear's default init, as the release's stacked x_proj weights
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, d).uniform_(-bound, bound))
        std = r ** -0.5
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d, r).uniform_(-std, std))
        dt = torch.exp(torch.rand(k, d) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt), dt in [1e-3, 0.1]
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(k * d, 1))
        self.Ds = nn.Parameter(torch.ones(k * d))
        self.A_logs._no_weight_decay = self.Ds._no_weight_decay = True
        self.out_norm = nn.LayerNorm(d)
        self.out_proj = nn.Linear(d, dim, bias=False)
        self._orders: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def orders(self, h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, L) scan orders and their inverses for an h x w map, cached per size and device."""
        key = (h, w, str(device))
        if key not in self._orders:
            from adlib.scans import hybrid_directions, stack_directions

            self._orders[key] = stack_directions(hybrid_directions(h, w, self.scan, self.count, self.variant), device)
        return self._orders[key]

    def forward_core(self, x: torch.Tensor, trace: dict | None = None) -> torch.Tensor:
        """(B, d_inner, H, W) -> (B, d_inner, H, W): HS encoder, SSM, HS decoder, sum. ``trace`` (a dict)
        receives the intermediate sequences for the walkthrough."""
        from adlib.ssm import selective_scan

        b, d, h, w = x.shape
        length, k = h * w, self.count
        orders, inverses = self.orders(h, w, x.device)
        xs = _HSEncode.apply(x.flatten(2), orders, inverses)                 # HS encoder: (B, K, d, L)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        y = selective_scan(
            xs.reshape(b, k * d, length).float(), dts.reshape(b, k * d, length).float(),
            -torch.exp(self.A_logs.float()), Bs.float().contiguous(), Cs.float().contiguous(), self.Ds.float(),
            delta_bias=self.dt_projs_bias.float().view(-1), delta_softplus=True, impl=self.scan_impl,
        ).view(b, k, d, length)                                              # one call over K * d channels
        out = _HSDecode.apply(y, orders, inverses).view(b, d, h, w).to(x.dtype)  # HS decoder, summed
        if trace is not None:
            decoded = _gather_directions(y.detach(), inverses).view(b, k, d, h, w)
            trace.update(orders=orders, sequences=xs.detach(), scanned=y.detach(), decoded=decoded,
                         summed=out.detach())
        return out

    def forward(self, x: torch.Tensor, trace: dict | None = None) -> torch.Tensor:
        x, z = self.in_proj(x).chunk(2, dim=-1)                             # (B, H, W, d) each
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2).contiguous()))
        y = self.forward_core(x, trace).permute(0, 2, 3, 1)
        return self.out_proj(self.out_norm(y) * F.silu(z))


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample with probability p while training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = 1 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


class HSSBlock(nn.Module):
    """x + DropPath(SS2D(LN(x))) (Eq. 8, second line), channels-last."""

    def __init__(self, dim: int, drop_path: float, config: MambaADConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = SS2D(dim, config)  # the release's attribute name
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.self_attention(self.ln_1(x)))


# ------------------------------------------------------------------------------------------- LSS module


def _conv_block(dim: int, kernel: int, depthwise: bool) -> nn.Sequential:
    """ConvB: Conv2d + InstanceNorm2d + SiLU (depthwise without bias, the 1x1 with, as the release)."""
    groups = dim if depthwise else 1
    return nn.Sequential(nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=groups, bias=not depthwise),
                         nn.InstanceNorm2d(dim), nn.SiLU())


def local_branch(dim: int, kernel: int, form: str) -> nn.Sequential:
    """Eq. 6: ConvB1x1(DWConvB_kxk(ConvB1x1(x))) for "dw+1x1"; DWConvB_kxk(x) alone for "dw"."""
    if form == "dw":
        return _conv_block(dim, kernel, True)
    return nn.Sequential(_conv_block(dim, 1, False), _conv_block(dim, kernel, True), _conv_block(dim, 1, False))


class LSS(nn.Module):
    """Locality-enhanced state space module (Eq. 5-7), channels-last (B, H, W, C).

    X_o = Conv1x1(Concat(HSS_n(...HSS_1(X_i)), L_k1(X_i), L_k2(X_i), ...)) + X_i: the local branches read
    the module input, not the HSS output (release).
    """

    def __init__(self, dim: int, hss_blocks: int, drop_path: float, config: MambaADConfig) -> None:
        super().__init__()
        self.hss = nn.ModuleList(HSSBlock(dim, drop_path, config) for _ in range(hss_blocks))
        self.local = nn.ModuleList(local_branch(dim, k, config.local_conv) for k in config.kernel_sizes)
        self.fuse = nn.Conv2d(dim * (1 + len(self.local)), dim, 1)
        self.residual = config.residual
        for m in self.modules():  # release init of every conv in the module (the HSS depthwise conv too)
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = x
        for block in self.hss:                                              # Eq. 5
            g = block(g)
        # Convs run on contiguous NCHW tensors: PyTorch's CPU depthwise backward falls back to a path up to
        # 50x slower when input and incoming gradient have mixed memory formats (measured: 5 s for one 7x7).
        xc = x.permute(0, 3, 1, 2).contiguous()
        parts = [g.permute(0, 3, 1, 2)] + [branch(xc) for branch in self.local]  # Eq. 6
        out = self.fuse(torch.cat(parts, dim=1)).permute(0, 2, 3, 1).contiguous()  # Eq. 7
        return out + x if self.residual else out


class PatchExpand2D(nn.Module):
    """2x upsampling, channels-last: Linear(C_in -> 4 C_out, no bias), 2x2 pixel shuffle, LayerNorm(C_out)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.expand = nn.Linear(in_dim, 4 * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        x = self.expand(x).view(b, h, w, 2, 2, self.out_dim)               # 'b h w (p1 p2 c)'
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, self.out_dim)
        return self.norm(x)


class MambaDecoder(nn.Module):
    """Four stages of LSS modules (the release's ``MambaUPNet``); stage i > 0 starts with a PatchExpand2D.

    ``forward(x, sizes)`` takes the bottleneck map (B, C0, h, w) and the three target sizes (strides 16, 8,
    4) and returns the stage 1-3 outputs channels-first, in encoder order (stride 4 first).
    """

    def __init__(self, dims: list[int], config: MambaADConfig) -> None:
        super().__init__()
        depths = list(config.depths)
        rates = torch.linspace(0, config.drop_path, sum(depths), device="cpu").tolist()[::-1]
        self.stages = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            sizes = lss_sizes(depth, config.hss_per_lss)
            start = sum(depths[:i])
            # one rate per LSS module: the j-th module of a stage takes the stage's j-th rate (release)
            self.stages.append(nn.ModuleList(LSS(dim, n, rates[start + j], config) for j, n in enumerate(sizes)))
            self.upsample.append(PatchExpand2D(dims[i - 1], dim) if i > 0 else nn.Identity())
        for m in self.modules():  # release: trunc_normal(0.02) Linear, LayerNorm 1/0 (convs keep the LSS init)
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        x = x.permute(0, 2, 3, 1)
        outs = []
        for i, (up, stage) in enumerate(zip(self.upsample, self.stages)):
            if i > 0:
                x = up(x)
                h, w = sizes[i - 1]
                x = x[:, :h, :w] if (x.shape[1], x.shape[2]) != (h, w) else x
            for lss in stage:
                x = lss(x)
            if i > 0:
                outs.insert(0, x.permute(0, 3, 1, 2))
        return outs


# ------------------------------------------------------------------------------------------------ model


class MambaAD(AnomalyModel):
    """MambaAD over a frozen encoder. ``encoder`` may be given (tests); otherwise it is built from the config."""

    name = "mambaad"
    trainable = True

    def __init__(self, config: MambaADConfig | None = None, encoder: nn.Module | None = None) -> None:
        config = config or MambaADConfig()
        self._validate(config)
        super().__init__(config)
        if encoder is None:
            from adlib import backbones

            encoder = backbones.create(config.backbone, layers=config.layers, pretrained=config.pretrained,
                                       timm_kwargs=config.backbone_kwargs)
        self.tokenizer = encoder  # the frozen encoder; the base class knows it by this name
        for p in self.tokenizer.parameters():
            p.requires_grad_(False)
        self.tokenizer.eval()
        channels = tuple(int(c) for c in getattr(encoder, "channels", ()))
        if len(channels) != 3:
            raise ValueError(f"MambaAD needs an encoder with exactly three taps (strides 4/8/16), got channels "
                             f"{channels}; set layers to three stages, e.g. (1, 2, 3)")
        self.bottleneck = HalfFPN(channels)
        c1, c2, c3 = channels
        self.dims = [self.bottleneck.out_channels, c3, c2, c1]
        self.decoder = MambaDecoder(self.dims, config)

    @staticmethod
    def _validate(config: MambaADConfig) -> None:
        check_choice("local_conv", config.local_conv, LOCAL_CONVS)
        check_choice("map_divisor", config.map_divisor, ("none", "ader"))
        check_choice("smoothing_padding", config.smoothing_padding, ("symmetric", "reflect"))
        image_score(torch.zeros(1, 1, 1), config.score_rule)
        if len(config.depths) != 4:
            raise ValueError(f"depths={config.depths!r}: expected 4 stage depths (the bottleneck stage and three "
                             f"reconstructing ones), e.g. (3, 4, 6, 3)")
        for depth in config.depths:
            lss_sizes(int(depth), config.hss_per_lss)
        if any(int(k) < 1 or int(k) % 2 == 0 for k in config.kernel_sizes):
            raise ValueError(f"kernel_sizes={config.kernel_sizes!r}: expected odd kernel sizes >= 1")
        if config.d_conv < 1 or config.d_conv % 2 == 0:
            raise ValueError(f"d_conv={config.d_conv}: expected an odd kernel size")
        from adlib.scans import hybrid_directions

        with torch.device("cpu"):  # a model may be built on the meta device (shapes only)
            hybrid_directions(2, 2, config.scan, config.directions, config.direction_set)

    @property
    def encoder(self) -> nn.Module:
        return self.tokenizer

    # ---- engine interface

    def feature_key(self) -> str | None:
        return self.tokenizer_key()

    def extract(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The frozen encoder's three maps (strides 4, 8, 16)."""
        return [f.detach() for f in self.tokenizer(images)]

    def reconstruct(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Decoder reconstructions of the encoder maps, in the same order and shapes."""
        sizes = [tuple(f.shape[-2:]) for f in reversed(features)]  # strides 16, 8, 4
        return self.decoder(self.bottleneck(features), sizes)

    def loss(self, features: list[torch.Tensor]) -> torch.Tensor:
        recon = self.reconstruct(features)
        return self.config.loss_weight * sum(F.mse_loss(r, f) for r, f in zip(recon, features))

    def anomaly_maps(self, features: list[torch.Tensor], recon: list[torch.Tensor],
                     size: tuple[int, int]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per scale 1 - cos over channels, upsampled bilinearly (align_corners=True, as ADer) to ``size``;
        their sum, Gaussian-smoothed."""
        up = [F.interpolate((1 - F.cosine_similarity(f, r, dim=1)).unsqueeze(1), size=size, mode="bilinear",
                            align_corners=True).squeeze(1) for f, r in zip(features, recon)]
        total = torch.stack(up).sum(dim=0)
        if self.config.map_divisor == "ader":
            total = total / len(up) ** 2
        return up, gaussian_blur(total, self.config.smoothing_sigma, padding=self.config.smoothing_padding)

    def predict(self, images: torch.Tensor) -> Prediction:
        out = self.explain(images)
        return Prediction(out["map"], out["scores"])

    @torch.no_grad()
    def explain(self, images: torch.Tensor) -> dict[str, Any]:
        """Everything the notebooks draw for images (B, 3, H, W) in [0, 1]: ``features`` (encoder maps),
        ``bottleneck`` (B, C0, h, w), ``reconstructions`` (decoder maps, encoder order), ``scale_maps``
        (B, H, W) per scale, ``map`` (B, H, W) and ``scores`` (B,)."""
        features = self.extract(images)
        bottleneck = self.bottleneck(features)
        recon = self.decoder(bottleneck, [tuple(f.shape[-2:]) for f in reversed(features)])
        scale_maps, amap = self.anomaly_maps(features, recon, tuple(images.shape[-2:]))
        return {"features": features, "bottleneck": bottleneck, "reconstructions": recon, "scale_maps": scale_maps,
                "map": amap, "scores": image_score(amap, self.config.score_rule, self.config.topk_ratio)}

    def hss_blocks(self) -> list[HSSBlock]:
        """Every HSS block of the decoder, in forward order."""
        return [m for m in self.decoder.modules() if isinstance(m, HSSBlock)]


# ------------------------------------------------------------------ the authors' checkpoints (the release)
# The release's MAMBAAD (lewandofskee/MambaAD model/mambaad.py, run inside ADer) holds net_t (timm features_only
# ResNet), mff_oce (the H-FPN) and net_s (MambaUPNet: layers_up.i.upsample / .blocks.j.smm_blocks.k). A released
# checkpoint keeps them under "net", the encoder's weights included. The released weights (MambaAD issues #30,
# #31) carry ADer's copy's names: the 7x7 branch's 1x1 convs are conv1b3/conv1a3 and an unused 3x3 conv33 is
# built; ``authors_layout`` renames the former, ``authors_ignored`` lists the latter.

# Config fields whose fixture value is the release's behaviour where adlib's default differs on purpose, and the
# values that give adlib's behaviour before the bug fixes the parity check made (benchmarks/parity/faithfulness.py).
AUTHORS_SWITCHES = ("map_divisor",)
AUTHORS_FIXES = {"smoothing_padding": "reflect"}

_RELEASE_HFPN = {"down1.0.": "conv1.", "down1.1.": "bn1.", "lateral2.0.": "conv21.", "lateral2.1.": "bn21.",
                 "down2.0.": "conv2.", "down2.1.": "bn2.", "lateral3.0.": "conv31.", "lateral3.1.": "bn31.",
                 "fuse.0.": "convf.", "fuse.1.": "bnf.", "blocks.": "bn_layer."}
_RELEASE_LSS = {"hss.": "smm_blocks.", "local.0.0.": "conv1b5.", "local.0.1.": "conv55.", "local.0.2.": "conv1a5.",
                "local.1.0.": "conv1b7.", "local.1.1.": "conv77.", "local.1.2.": "conv1a7.", "fuse.": "finalconv11."}
# adlib's direction k is the release's RELEASE_ORDER[k] (release: x, x^T, rot, rot^T, then the four reversed)
RELEASE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)
_RELEASE_DESIGN = dict(directions=8, scan="hilbert", direction_set="release", kernel_sizes=(5, 7),
                       local_conv="dw+1x1", residual=True, hss_per_lss=None)


def _swap(name: str, table: dict[str, str]) -> str | None:
    for old, new in table.items():
        if name.startswith(old):
            return new + name[len(old):]
    return None


def _authors_key(ours: str) -> str | None:
    """The release's key of adlib key ``ours`` (None: not the release's)."""
    if ours.startswith("tokenizer.model."):
        return "net_t." + ours[len("tokenizer.model."):]
    if ours.startswith("bottleneck."):
        rest = _swap(ours[len("bottleneck."):], _RELEASE_HFPN)
        return None if rest is None else "mff_oce." + rest
    parts = ours.split(".")
    if ours.startswith("decoder.upsample."):
        return f"net_s.layers_up.{parts[2]}.upsample." + ".".join(parts[3:])
    if ours.startswith("decoder.stages."):
        rest = _swap(".".join(parts[4:]), _RELEASE_LSS)
        return None if rest is None else f"net_s.layers_up.{parts[2]}.blocks.{parts[3]}." + rest
    return None


def authors_key_map(config: MambaADConfig) -> dict[str, str]:
    """adlib key -> the release's key, for the release's design (8 Hilbert directions, 5x5 and 7x7 branches)."""
    differs = {k: getattr(config, k) for k, v in _RELEASE_DESIGN.items()
               if (tuple(getattr(config, k)) if k == "kernel_sizes" else getattr(config, k)) != v}
    if differs:
        raise ValueError(f"the release's MambaAD has {_RELEASE_DESIGN}; this config differs in {differs}")
    with torch.device("meta"):
        own = MambaAD(config).state_dict()
    key_map = {ours: _authors_key(ours) for ours in own}
    unknown = [k for k, v in key_map.items() if v is None]
    if unknown:
        raise ValueError(f"adlib keys without a release counterpart: {unknown[:5]}")
    return key_map


_DIRECTION_PARAMETERS = ("x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", ".Ds")


def authors_layout(state: dict, config: MambaADConfig) -> dict:
    """A release checkpoint in adlib's layout: the stacked per-direction parameters permuted into adlib's
    direction order (release: x, x^T, rot, rot^T, then the four reversed); a checkpoint in ADer's layout (the 7x7
    branch's 1x1 convs named conv1b3/conv1a3: the released weights, MambaAD issues #30/#31) renamed to the
    release's conv1b7/conv1a7, the same computation (ADer's forward runs conv1a3(conv77(conv1b3(x))))."""
    k = len(RELEASE_ORDER)
    ader = any(".conv1b3." in name for name in state) and not any(".conv1b7." in name for name in state)
    out = {}
    for name, value in state.items():
        if ader:
            name = name.replace(".conv1b3.", ".conv1b7.").replace(".conv1a3.", ".conv1a7.")
        if name.startswith("net_s.") and name.endswith(_DIRECTION_PARAMETERS):
            value = value.reshape(k, -1, *value.shape[1:])[list(RELEASE_ORDER)].reshape(value.shape)
        out[name] = value
    return out


def authors_ignored(config: MambaADConfig) -> set[str]:
    """Release keys adlib does not hold: each HSS block's scan index and its inverse (``scans.index_flat``,
    ``index_flat_inv``, int64 copies of the scan order kept as parameters; adlib rebuilds the orders), and
    ADer's unused ``conv33`` (3x3 depthwise conv, its IN and SiLU: built, never called) of every LSS module."""
    ignored = set()
    for ours, theirs in authors_key_map(config).items():
        if theirs.endswith("self_attention.in_proj.weight"):
            ignored |= {theirs.replace("in_proj.weight", f"scans.{n}") for n in ("index_flat", "index_flat_inv")}
        if theirs.endswith("finalconv11.weight"):
            ignored.add(theirs.replace("finalconv11.weight", "conv33.0.weight"))
    return ignored


def authors_config(shapes, **config) -> MambaADConfig:
    """The config of a release checkpoint: the encoder (ResNet18/34/50 or Wide-ResNet50 by its blocks and
    widths, weights from ``net_t``: ``pretrained=False``), the decoder depths and ``d_state``."""
    from adlib.models import model_config

    derived: dict[str, Any] = {}
    if "net_t.conv1.weight" in shapes:
        blocks = tuple(len({k.split(".")[2] for k in shapes if k.startswith(f"net_t.layer{i}.")}) for i in (1, 2, 3))
        bottleneck = "net_t.layer1.0.conv3.weight" in shapes
        out = "conv3" if bottleneck else "conv2"
        widths = tuple(shapes[f"net_t.layer{i}.0.{out}.weight"][0] for i in (1, 2, 3))
        wide = bottleneck and shapes["net_t.layer1.0.conv1.weight"][0] * 2 == widths[0]  # inner width / output
        names = {((2, 2, 2), False): "resnet18", ((3, 4, 6), False): "resnet34",
                 ((3, 4, 6), True): "wide_resnet50" if wide else "resnet50"}
        name = names.get((blocks, bottleneck))
        if name is None:
            raise ValueError(f"net_t: a ResNet with blocks {blocks} is none of resnet18/34/50, wide_resnet50")
        standard = (256, 512, 1024) if bottleneck else (64, 128, 256)
        derived.update(backbone=name, pretrained=False, layers=(1, 2, 3))
        if widths != standard:
            planes = tuple(w // (4 if bottleneck else 1) for w in widths)
            derived["backbone_kwargs"] = {"channels": planes + (2 * planes[-1],)}
    depths = []
    for stage in range(4):
        prefix = f"net_s.layers_up.{stage}.blocks."
        modules = {k[len(prefix):].split(".")[0] for k in shapes if k.startswith(prefix)}
        depths.append(sum(len({k.split(".")[6] for k in shapes if k.startswith(f"{prefix}{m}.smm_blocks.")})
                          for m in modules))
    if all(depths):
        derived["depths"] = tuple(depths)
    x_proj = shapes.get("net_s.layers_up.0.blocks.0.smm_blocks.0.self_attention.x_proj_weight")
    dim = shapes.get("net_s.layers_up.0.blocks.0.smm_blocks.0.ln_1.weight")
    if x_proj is not None and dim is not None:
        derived["d_state"] = (x_proj[1] - math.ceil(dim[0] / 16)) // 2
    derived.update(config)
    return model_config("mambaad", None, **derived)


def authors_stages(model: MambaAD, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Encoder maps, the H-FPN output, the decoder maps (encoder order), the map and the image score."""
    out = model.explain(images)
    stages = {f"encoder_{i + 1}": f for i, f in enumerate(out["features"])}
    stages["bottleneck"] = out["bottleneck"]
    stages.update({f"decoder_{i + 1}": r for i, r in enumerate(out["reconstructions"])})
    stages["map"], stages["score"] = out["map"], out["scores"]
    stages["loss"] = model.loss(out["features"]).reshape(1)  # 5 x sum of MSEs, eval mode (ADer's L2Loss)
    return stages
