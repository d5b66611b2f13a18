"""UniAD's EfficientNet-B4 encoder pads as the authors' port does (issue 22).

UniAD's backbone (zhiyuanyou/UniAD ``models/backbones/efficientnet``, lukemelas' port) computes each conv's
TensorFlow "same" padding once, for B4's default 380 px, and keeps it when the MVTec config feeds 224 px:
``tests/fixtures/parity/uniad_keys.json`` holds, from their code, the padding each stride-2 conv applies at
224 px. adlib's timm encoder pads per input (TF SAME) unless ``static_padding_size`` fixes it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from adlib.models import create_model

LISTING = Path(__file__).parent / "fixtures" / "parity" / "uniad_keys.json"


def _paddings_at(model, size: int) -> list[dict]:
    """Per stride-2 conv of the encoder: its input size at ``size`` px and the padding it applies."""
    from timm.layers import Conv2dSame
    from timm.layers.padding import pad_same_arg

    fixed = {name: pads for name, _, pads in model.static_paddings}
    table, hooks = [], []
    for name, conv in model.tokenizer.named_modules():
        if isinstance(conv, Conv2dSame):
            def record(m, args, name=name):
                hw = list(args[0].shape[-2:])
                pads = fixed.get(name) or tuple(pad_same_arg(hw, list(m.kernel_size), list(m.stride), list(m.dilation)))
                table.append({"input": hw, "kernel": list(m.kernel_size), "padding": list(pads)})
            hooks.append(conv.register_forward_pre_hook(record))
    with torch.no_grad():
        model.tokenizer(torch.zeros(1, 3, size, size))
    return table


def test_the_b4_encoder_pads_its_stride2_convs_as_uniads_efficientnet_at_224_px():
    theirs = json.loads(LISTING.read_text())["efficientnet_b4_stride2_padding_at_224"]
    model = create_model("uniad", backbone="efficientnet_b4", pretrained=False)  # static_padding_size="auto": 380
    ours = _paddings_at(model, 224)
    assert ours == theirs[:len(ours)] and len(ours) == 4  # theirs also lists the stride-32 stage adlib never runs
    assert {"input": [56, 56], "kernel": [5, 5], "padding": [2, 2, 2, 2]} in ours
    dynamic = _paddings_at(create_model("uniad", backbone="efficientnet_b4", pretrained=False,
                                        static_padding_size=None), 224)
    assert {"input": [56, 56], "kernel": [5, 5], "padding": [1, 2, 1, 2]} in dynamic and dynamic != ours


def test_static_padding_changes_the_features_only_where_the_paddings_differ():
    torch.manual_seed(0)
    static = create_model("uniad", backbone="efficientnet_b4", pretrained=False).eval()
    dynamic = create_model("uniad", backbone="efficientnet_b4", pretrained=False, static_padding_size=None).eval()
    dynamic.load_state_dict(static.state_dict())
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        a, b = static.tokenizer(x), dynamic.tokenizer(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # strides 2 and 4: same padding
    assert not torch.allclose(a[2], b[2])  # stride 8: after the 5 x 5 conv padded (2, 2) instead of (1, 2)
    assert create_model("uniad", pretrained=False).static_paddings == []  # Lite0 (smoke): padding per input
