"""RD4AD parity fixture from the authors' own classes (hq-deng/RD4AD ``resnet.py``, ``de_resnet.py``,
``test.py``).

    python benchmarks/parity/make_fixtures.py --reference /work/.mirror/hq-deng+RD4AD/repo --model rd4ad

``main.py`` builds ``encoder, bn = wide_resnet50_2(pretrained=True)`` and ``decoder = de_wide_resnet50_2()``:
their ``ResNet`` (a torchvision copy returning layer1-3), ``BN_layer(AttnBottleneck, 3)`` (the OCBE) and
``de_resnet.ResNet(Bottleneck, [3, 4, 6, 3])`` with ``width_per_group=128``. Every width in those classes is a
hard-coded plane count times ``block.expansion``; here each block class is subclassed with an ``expansion`` of
4 / 64 (``_ader.Scale(16)``) and ``width_per_group=2``, so the model is Wide-ResNet-50-2's at 1/64 of its
widths (layer1-3: 4, 8, 16 channels, inner width half the output as in WRN50), their code unchanged. The
encoder gets random weights from their init (no ImageNet download). The map is their ``cal_anomaly_map(...,
amap_mode='a')`` followed by ``gaussian_filter(sigma=4)``, one image at a time as their ``evaluation`` runs
(batch size 1); the score is the map's max.

The fixture's state dict holds their checkpoint's two parts as ``main.py`` saves them (``{'bn': ...,
'decoder': ...}``, flattened to ``bn.*``/``decoder.*``) plus the reduced encoder under ``encoder.*`` (a real
checkpoint has none: the encoder is torchvision's ImageNet Wide-ResNet-50-2).
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

REPOSITORY = "hq-deng/RD4AD"
FILES = ("resnet.py", "de_resnet.py", "test.py", "main.py")

IMAGE = 64
SEED = 0


def _shims():
    spec = importlib.util.spec_from_file_location("parity_ader_shims", Path(__file__).with_name("_ader.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(reduced: bool):
    resnet = importlib.import_module("resnet")
    de_resnet = importlib.import_module("de_resnet")
    if not reduced:  # main.py
        encoder, bn = resnet.wide_resnet50_2(pretrained=False)
        return encoder, bn, de_resnet.de_wide_resnet50_2(pretrained=False)
    scale = _shims().Scale(16)
    blocks = {name: type(f"Reduced{cls.__name__}", (cls,), {"expansion": scale})
              for name, cls in (("encoder", resnet.Bottleneck), ("ocbe", resnet.AttnBottleneck),
                                ("decoder", de_resnet.Bottleneck))}
    encoder = resnet.ResNet(blocks["encoder"], [3, 4, 6, 3], width_per_group=2)
    bn = resnet.BN_layer(blocks["ocbe"], 3, width_per_group=2)
    decoder = de_resnet.ResNet(blocks["decoder"], [3, 4, 6, 3], width_per_group=2)
    return encoder, bn, decoder


def make(root: Path) -> dict:
    import numpy as np
    import torch
    from scipy.ndimage import gaussian_filter
    from torchvision import transforms

    test = _load_test(root)
    torch.manual_seed(SEED)
    encoder, bn, decoder = (m.eval() for m in _build(reduced=True))
    generator = torch.Generator().manual_seed(SEED + 1)
    pixels = torch.randint(0, 256, (2, 3, IMAGE, IMAGE), generator=generator, dtype=torch.uint8)
    images = pixels.float() / 255
    # dataset.py get_data_transforms: ImageNet mean/std
    normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    maps, stages = [], {}
    with torch.no_grad():
        inputs = encoder(normalize(images))
        embedding = bn(inputs)
        outputs = decoder(embedding)
        loss = _load_main().loss_fucntion(inputs, outputs)  # main.py's training loss (their spelling)
        for i in range(images.shape[0]):  # their evaluation: batch size 1
            anomaly_map, _ = test.cal_anomaly_map([f[i:i + 1] for f in inputs], [f[i:i + 1] for f in outputs],
                                                  IMAGE, amap_mode="a")
            maps.append(gaussian_filter(anomaly_map, sigma=4))
    anomaly_map = torch.from_numpy(np.stack(maps))
    stages.update({f"encoder_{i + 1}": f for i, f in enumerate(inputs)})
    stages["bottleneck"] = embedding
    stages.update({f"decoder_{i + 1}": f for i, f in enumerate(outputs)})
    stages["map"] = anomaly_map
    stages["score"] = anomaly_map.flatten(1).amax(dim=1)  # np.max(anomaly_map)
    stages["loss"] = loss.reshape(1)
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state.update({f"bn.{k}": v for k, v in bn.state_dict().items()})
    state.update({f"decoder.{k}": v for k, v in decoder.state_dict().items()})
    return {
        "config": {"backbone": "wide_resnet50", "pretrained": False, "image_size": IMAGE,
                   "backbone_kwargs": {"channels": (1, 2, 4, 8)}},
        "authors_config": {"encoder": "ResNet(Bottleneck, [3, 4, 6, 3], width_per_group=2), expansion 4/64",
                           "bn": "BN_layer(AttnBottleneck, 3, width_per_group=2), expansion 4/64",
                           "decoder": "de_resnet.ResNet(Bottleneck, [3, 4, 6, 3], width_per_group=2), expansion 4/64"},
        "state_dict": {k: v.clone() for k, v in state.items()},
        "input": pixels,
        "stages": {k: v.detach().float().clone() for k, v in stages.items()},
        "notes": ("RD4AD's classes at 1/64 of Wide-ResNet-50-2's widths (block expansion 4/64, width_per_group 2), "
                  "their init (seed 0), two uniform 8-bit 64 px images, ImageNet-normalised; map: test.py "
                  "cal_anomaly_map(amap_mode='a') + scipy gaussian_filter(sigma=4) per image; score: max; loss: "
                  "main.py loss_fucntion on the eval-mode features."),
    }


def _load_test(root: Path):
    """test.py's ``cal_anomaly_map``: test.py imports cv2, matplotlib, pandas and sklearn's manifold at the top
    for its plots; those it does not need here are stubbed when absent."""
    import sys

    shims = _shims()
    for name in ("cv2",):
        if importlib.util.find_spec(name) is None:
            shims.stub(name)
    sys.modules.setdefault("dataset", shims.stub("dataset", get_data_transforms=None, load_data=None,
                                                 MVTecDataset=None))
    return importlib.import_module("test")


def _load_main():
    """main.py (its loss_fucntion); it imports dataset.py, whose classes are not used here."""
    _load_test(None)
    return importlib.import_module("main")


def full_keys(root: Path) -> dict:
    import torch

    with torch.device("meta"):
        encoder, bn, decoder = _build(reduced=False)
    listing = {f"encoder.{k}": list(v.shape) for k, v in encoder.state_dict().items()}
    checkpoint = {f"bn.{k}": list(v.shape) for k, v in bn.state_dict().items()}
    checkpoint.update({f"decoder.{k}": list(v.shape) for k, v in decoder.state_dict().items()})
    # the released checkpoint ({'bn', 'decoder'}) with the encoder loaded from ImageNet weights; the listing
    # with the encoder is what a state dict of all three parts holds (adlib then takes the encoder from it)
    return {"paper": checkpoint, "variants": {"with_encoder": {**listing, **checkpoint}},
            "config": {"backbone": "wide_resnet50"}}
