"""UniAD parity fixture from the authors' own classes (zhiyuanyou/UniAD ``models/reconstructions/uniad.py``,
``models/necks/mfcn.py``, ``models/backbones/resnet.py``, ``utils/eval_helper.py``).

    python benchmarks/parity/make_fixtures.py --reference /work/.mirror/zhiyuanyou+UniAD/repo --model uniad

Their model is backbone -> MFCN neck -> UniAD reconstruction (``models/model_helper.py`` chains them). The
MVTec config's backbone, EfficientNet-B4, cannot be reduced to a fixture-sized network that adlib's timm
encoder reproduces; the config names their ResNet backbone as the alternative ("resnet [1,2,3]"), so the
fixture uses their ``ResNet`` (Bottleneck, Wide-ResNet-50-2's layout) at 1/64 of its widths (the block's
``expansion`` divides, ``_ader.Scale(16)``, ``width_per_group=2``), outlayers [1, 2, 3] (strides 4, 8, 16),
their init with their ``msra_normal`` option (their default, normal std 0.01, fades a random encoder's features
to 1e-5). Neck: their ``MFCN(outstrides=[16])``. Reconstruction:
their ``UniAD`` with the MVTec config's structure at a reduced size (hidden 16, 2 heads, FFN 32, 2 + 2
layers, learned position embedding, 7 x 7 neighbour mask in all three attentions, xavier_uniform init) on
a 128 px input (8 x 8 tokens). Map: their ``pred`` (L2 error upsampled x16, align_corners=True); score: their
``EvalImageMax.encode_pred(preds, [16, 16])``. Their ``.cuda()`` calls (mask, evaluator) are made no-ops.

The EfficientNet-B4 backbone is compared by key listing (the paper listing maps it as ignored: adlib loads the
same TF AutoAugment ImageNet weights from timm, see ``adlib.models.uniad``) and by the padding of its stride-2
convs at 224 px, written into the listing (``efficientnet_b4_stride2_padding_at_224``): their port computes it
for 380 px.
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import SimpleNamespace

REPOSITORY = "zhiyuanyou/UniAD"
FILES = ("models/reconstructions/uniad.py", "models/necks/mfcn.py", "models/backbones/resnet.py",
         "models/initializer.py", "utils/eval_helper.py", "utils/criterion_helper.py", "experiments/MVTec-AD/config.yaml")

IMAGE = 128
SEED = 0
TRANSFORMER = dict(nhead=2, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=32, dropout=0.1,
                   activation="relu", normalize_before=False)


def _shims():
    spec = importlib.util.spec_from_file_location("parity_ader_shims", Path(__file__).with_name("_ader.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _no_cuda():
    """Their mask and evaluator call ``.cuda()``; on the CPU it returns the tensor itself."""
    import torch

    torch.Tensor.cuda = lambda self, *args, **kwargs: self


def _reconstruction(inplanes: int, feature_size, hidden: int, transformer: dict):
    uniad = importlib.import_module("models.reconstructions.uniad")
    return uniad.UniAD(
        inplanes=[inplanes], instrides=[16], feature_size=list(feature_size), feature_jitter=None,
        neighbor_mask=SimpleNamespace(neighbor_size=[7, 7], mask=[True, True, True]), hidden_dim=hidden,
        pos_embed_type="learned", save_recon=None, initializer={"method": "xavier_uniform"}, **transformer)


def _build(reduced: bool):
    import torch

    mfcn = importlib.import_module("models.necks.mfcn")
    if not reduced:  # experiments/MVTec-AD/config.yaml: EfficientNet-B4 outlayers [1, 2, 3, 4] -> 272 channels
        efficientnet = importlib.import_module("models.backbones.efficientnet")
        backbone = efficientnet.efficientnet_b4(pretrained=False, outblocks=[1, 5, 9, 21], outstrides=[2, 4, 8, 16])
        neck = mfcn.MFCN(inplanes=[24, 32, 56, 160], outplanes=[272], instrides=[2, 4, 8, 16], outstrides=[16])
        transformer = dict(TRANSFORMER, nhead=8, num_encoder_layers=4, num_decoder_layers=4, dim_feedforward=1024)
        return backbone, neck, _reconstruction(272, (14, 14), 256, transformer)
    resnet = importlib.import_module("models.backbones.resnet")
    block = type("ReducedBottleneck", (resnet.Bottleneck,), {"expansion": _shims().Scale(16)})
    torch.manual_seed(SEED)
    # initializer: their option "msra_normal" (Kaiming), not the default normal(0.01), under which the random
    # encoder's features fade to 1e-5 at layer3 and the reconstruction would hardly depend on its input
    backbone = resnet.ResNet(block, [3, 4, 6, 3], outlayers=[1, 2, 3], outstrides=[4, 8, 16], width_per_group=2,
                             initializer={"method": "msra_normal"})
    neck = mfcn.MFCN(inplanes=backbone.get_outplanes(), outplanes=[sum(backbone.get_outplanes())],
                     instrides=[4, 8, 16], outstrides=[16])
    return backbone, neck, _reconstruction(sum(backbone.get_outplanes()), (IMAGE // 16,) * 2, 16, TRANSFORMER)


def make(root: Path) -> dict:
    import torch
    from torchvision import transforms

    _no_cuda()
    backbone, neck, reconstruction = (m.eval() for m in _build(reduced=True))
    eval_helper = importlib.import_module("utils.eval_helper")
    generator = torch.Generator().manual_seed(SEED + 1)
    pixels = torch.randint(0, 256, (2, 3, IMAGE, IMAGE), generator=generator, dtype=torch.uint8)
    images = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])(pixels.float() / 255)
    with torch.no_grad():
        batch = {"image": images}
        batch.update(backbone(batch))
        batch.update(neck(batch))
        batch.update(reconstruction(batch))
    criterion = importlib.import_module("utils.criterion_helper")
    loss = criterion.FeatureMSELoss(weight=1.0)(batch)  # the MVTec config's criterion, eval mode (no jitter)
    preds = batch["pred"][:, 0]
    score = torch.from_numpy(eval_helper.EvalImageMax.encode_pred(preds.numpy(), [16, 16]))
    stages = {f"encoder_{i + 1}": f for i, f in enumerate(batch["features"])}
    stages.update(neck=batch["feature_align"], reconstruction=batch["feature_rec"], map=preds, score=score,
                  loss=loss.reshape(1))
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state.update({f"reconstruction.{k}": v for k, v in reconstruction.state_dict().items()})
    return {
        "config": {"backbone": "wide_resnet50", "pretrained": False, "layers": (1, 2, 3), "image_size": IMAGE,
                   "backbone_kwargs": {"channels": (1, 2, 4, 8)}, "hidden_dim": 16, "num_heads": 2,
                   "num_encoder_layers": 2, "num_decoder_layers": 2, "dim_feedforward": 32},
        "authors_config": {"backbone": "models.backbones.resnet.ResNet(Bottleneck expansion 4/64, [3, 4, 6, 3], "
                                       "outlayers [1, 2, 3], width_per_group 2, initializer msra_normal)",
                           "neck": "MFCN(outstrides=[16])",
                           "reconstruction": dict(hidden_dim=16, pos_embed_type="learned", feature_size=[8, 8],
                                                  neighbor_size=[7, 7], mask=[True, True, True], **TRANSFORMER)},
        "state_dict": {k: v.clone() for k, v in state.items()},
        "input": pixels,
        "stages": {k: v.detach().float().clone() for k, v in stages.items()},
        "notes": ("UniAD's ResNet backbone at 1/64 of Wide-ResNet-50-2's widths, MFCN to stride 16, UniAD "
                  "reconstruction at hidden 16 / 2 heads / FFN 32 / 2+2 layers, 128 px, seed 0, ImageNet-normalised "
                  "8-bit input; map: pred; score: EvalImageMax.encode_pred(avgpool 16); loss: FeatureMSELoss in eval "
                  "mode (no jitter, no dropout)."),
    }


def full_keys(root: Path) -> dict:
    import torch

    _no_cuda()
    with torch.device("meta"):
        backbone, _, reconstruction = _build(reduced=False)
    listing = {f"backbone.{k}": list(v.shape) for k, v in backbone.state_dict().items()}
    listing.update({f"reconstruction.{k}": list(v.shape) for k, v in reconstruction.state_dict().items()})
    return {"paper": listing, "variants": {}, "config": {"backbone": "efficientnet_b4"},
            "efficientnet_b4_stride2_padding_at_224": _stride2_padding(224)}


def _stride2_padding(size: int) -> list[dict]:
    """Their EfficientNet-B4's stride-2 convs as the MVTec config runs them (224 px): the input size each sees
    and the fixed padding (left, right, top, bottom) its Conv2dStaticSamePadding applies (computed at build
    time for B4's default image size, 380 px)."""
    import torch

    efficientnet = importlib.import_module("models.backbones.efficientnet")
    backbone = efficientnet.efficientnet_b4(pretrained=False, outblocks=[1, 5, 9, 21], outstrides=[2, 4, 8, 16])
    table, hooks = [], []
    for module in backbone.modules():
        if type(module).__name__ == "Conv2dStaticSamePadding" and module.stride[0] == 2:
            def record(m, args):
                pad = m.static_padding.padding if hasattr(m.static_padding, "padding") else (0, 0, 0, 0)
                table.append({"input": list(args[0].shape[-2:]), "kernel": list(m.kernel_size), "padding": list(pad)})
            hooks.append(module.register_forward_pre_hook(record))
    with torch.no_grad():
        backbone.extract_features(torch.zeros(1, 3, size, size))
    return table
