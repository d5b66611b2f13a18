"""ViTAD parity fixture from ADer's own classes (zhangzjn/ADer ``model/vitad.py``, ``util/metric.py``).

    python benchmarks/parity/make_fixtures.py --reference /work/.mirror/zhangzjn+ADer/repo --model vitad

The model is ADer's ``ViTAD(net_t, net_fusion, net_s)`` built through ADer's own registry (``get_model``) at a
reduced size: the encoder is their ``vit_small_patch16_224_dino`` entry with ``embed_dim``, ``depth`` and
``num_heads`` overridden through its kwargs (the entry passes them on to timm), random weights from timm's
ViT init (``pretrained=False``: no weights can be downloaded here); the fuser is their ``fusion``; the decoder
is their ``ViT_Decoder`` class (its registry entry fixes the width, so the class is called directly).
Teachers/neck/students [1, 2, 3] / [4] / [1, 2, 3] are the paper's [3, 6, 9] / [12] / [3, 6, 9] at depth 4
and 3. The map is ADer's ``Evaluator.cal_anomaly_map`` exactly as ``trainer/vitad_trainer.py`` calls it
(``amap_mode='add', gaussian_sigma=4``); the image score follows ``Evaluator.run`` (``pooling_ks=[16, 16]``:
avg-pool 16 x 16, stride 1, then max), written out here because ``run`` only returns metrics.

Also written: ``vitad_checkpoint.pth``, the fixture's weights in ADer's checkpoint layout (``{'net': ...}``, as
``trainer/_base_trainer.py: save_checkpoint`` writes ``ckpt.pth``), for the evaluate-a-released-checkpoint test.
"""
from __future__ import annotations

import importlib.util
from argparse import Namespace
from pathlib import Path

REPOSITORY = "zhangzjn/ADer"
FILES = ("model/vitad.py", "util/metric.py", "trainer/vitad_trainer.py", "configs/vitad/vitad_mvtec.py",
         "configs/__base__/cfg_model_vitad.py", "loss/base_loss.py")

IMAGE = 96  # 6 x 6 tokens of 16 px
DIM, HEADS, DEPTH, DECODER_DEPTH = 32, 2, 4, 3
SEED = 0


def _shims():
    spec = importlib.util.spec_from_file_location("parity_ader_shims", Path(__file__).with_name("_ader.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _namespace(name: str, **kwargs) -> Namespace:
    return Namespace(name=name, kwargs=dict(pretrained=False, checkpoint_path="", strict=True, **kwargs))


def _build(root: Path, reduced: bool):
    shims = _shims()
    shims.import_models(root, ["model/vitad.py"])
    vitad = importlib.import_module("model.vitad")
    if not reduced:  # the paper's model, as configs/__base__/cfg_model_vitad.py builds it
        # the file itself: configs/__init__.py imports util.net, which needs Python < 3.10
        spec = importlib.util.spec_from_file_location("cfg_model_vitad", root / "configs/__base__/cfg_model_vitad.py")
        config_file = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(config_file)
        cfg = config_file.cfg_model_vitad()
        cfg.model_t.kwargs["pretrained"] = False
        return vitad.ViTAD(cfg.model_t, cfg.model_f, cfg.model_s)
    model_t = _namespace("vit_small_patch16_224_dino", img_size=IMAGE, teachers=[1, 2, 3], neck=[4],
                         embed_dim=DIM, depth=DEPTH, num_heads=HEADS)
    model_f = _namespace("fusion", dim=DIM, mul=1)
    model_s = _namespace("de_vit_small_patch16_224_dino", img_size=IMAGE, students=[1, 2, 3], depth=9)
    net = vitad.ViTAD(model_t, model_f, model_s)
    # their decoder entry fixes embed_dim=384; the same class at the reduced width:
    net.net_s = vitad.ViT_Decoder(students=[1, 2, 3], img_size=IMAGE, patch_size=16, embed_dim=DIM,
                                  depth=DECODER_DEPTH, num_heads=HEADS)
    return net


def make(root: Path) -> dict:
    import torch
    import torch.nn.functional as F
    from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from torchvision.transforms import Normalize

    torch.manual_seed(SEED)
    net = _build(root, reduced=True)
    net.eval()
    metric = _shims().import_metric()
    generator = torch.Generator().manual_seed(SEED + 1)
    images = torch.rand(2, 3, IMAGE, IMAGE, generator=generator)
    normalized = Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)(images)  # their test transform
    with torch.no_grad():
        feats_t, feats_n = net.net_t(normalized)
        fused = net.net_fusion(feats_n)
        feats_s = net.net_s(fused)
        anomaly_map, stage_maps = metric.Evaluator.cal_anomaly_map(
            feats_t, feats_s, [IMAGE, IMAGE], uni_am=False, amap_mode="add", gaussian_sigma=4)
        loss = _shims().ader_loss("CosLoss", avg=False, flat=True, lam=1.0)(feats_t, feats_s)  # vitad_mvtec.py
    anomaly_map = torch.from_numpy(anomaly_map)
    score = F.avg_pool2d(anomaly_map.unsqueeze(1), [16, 16], stride=1).squeeze(1).amax(dim=(1, 2))
    stages = {f"encoder_{i + 1}": f for i, f in enumerate(feats_t)}
    stages["fuser_input"] = feats_n[0]
    stages["fuser"] = fused
    stages.update({f"decoder_{i + 1}": f for i, f in enumerate(feats_s)})
    stages.update({f"stage_map_{i + 1}": torch.from_numpy(m) for i, m in enumerate(stage_maps)})
    stages["map"] = anomaly_map
    stages["score"] = score
    stages["loss"] = loss.reshape(1)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    return {
        "config": {"backbone": "dino_vits16", "pretrained": False, "image_size": IMAGE,
                   "backbone_kwargs": {"img_size": IMAGE, "embed_dim": DIM, "depth": DEPTH, "num_heads": HEADS},
                   "layers": (1, 2, 3, 4), "decoder_divisions": (1, 1, 1), "map_divisor": "ader"},
        "authors_config": {"model_t": dict(teachers=[1, 2, 3], neck=[4], img_size=IMAGE, embed_dim=DIM,
                                           depth=DEPTH, num_heads=HEADS),
                           "model_f": dict(dim=DIM, mul=1),
                           "model_s": dict(students=[1, 2, 3], img_size=IMAGE, embed_dim=DIM,
                                           depth=DECODER_DEPTH, num_heads=HEADS)},
        "state_dict": state,
        "files": {"vitad_checkpoint.pth": {"net": state, "epoch": 0, "iter": 0}},
        "input": images,
        "stages": {k: v.detach().float().clone() for k, v in stages.items()},
        "notes": ("ADer ViTAD at embed 32, 2 heads, encoder depth 4 (teachers 1-3, neck 4), decoder depth 3, "
                  "96 px, random timm init (seed 0); input: uniform images in [0, 1], ImageNet-normalised by "
                  "their transform; map: Evaluator.cal_anomaly_map(amap_mode='add', gaussian_sigma=4); "
                  "score: avg_pool 16x16 stride 1 then max (Evaluator.run with pooling_ks=[16, 16]); loss: "
                  "CosLoss(avg=False, flat=True) on the eval-mode features. "
                  "Checkpoint written alongside: tests/fixtures/parity/vitad_checkpoint.pth"),
    }


def full_keys(root: Path) -> dict:
    import torch

    with torch.device("meta"):
        net = _build(root, reduced=False)
    paper = {k: list(v.shape) for k, v in net.state_dict().items()}
    return {"paper": paper, "variants": {}, "config": {}}
