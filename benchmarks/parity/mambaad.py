"""MambaAD parity fixture from the authors' own classes (lewandofskee/MambaAD ``model/mambaad.py`` on ADer).

    python benchmarks/parity/make_fixtures.py --reference /work/.mirror/lewandofskee+MambaAD/repo --model mambaad \
        --also ader=/work/.mirror/zhangzjn+ADer/repo

MambaAD's release is three files to be dropped into ADer (its README: "Clone this repo to ADer"): the ADer
snapshot (``--also ader=``, exported into ``root/ader`` and recorded with its commit) gets the release's files
laid over it, and the model is built from the release's classes at a reduced size:

- encoder: ADer's ``timm_resnet34`` entry (their ``get_model``: timm ``resnet34``, ``features_only``,
  ``out_indices=[1, 2, 3]``) with ``channels=(4, 8, 16, 32)`` passed through its kwargs (timm's argument), random
  init: no ImageNet weights can be downloaded;
- bottleneck: the release's ``MFF_OCE`` with timm's Bottleneck whose ``expansion`` is 4 / 4 (``_ader.Scale(4)``:
  their hard-coded 16/32/64/128 x expansion become 4/8/16/32) and ``width_per_group=4``;
- decoder: the release's ``MambaUPNet(dims_decoder=[32, 16, 8, 4], depths_decoder=[2, 2, 2, 2],
  scan_type='hilbert', num_direction=8)`` at 256 px (the release's scan indices exist for 8-64 px only);
- ``mamba_ssm``'s CUDA ``selective_scan_fn`` -> ``_ader.reference_selective_scan`` (a loop, same semantics).

The map is ADer's ``Evaluator.cal_anomaly_map`` as the release's ``trainer/mambaad_trainer.py`` calls it, the
score the map's max (the release config: ``pooling_ks=None``). The state dict is stored without the scan
index buffers (``*.scans.index_flat[_inv]``, int64 copies of the scan order that adlib rebuilds).

Key listings: "paper" is the release's model at the paper's size (ResNet34, [3, 4, 6, 3], Hilbert, 8
directions); variant "ader_layout" is ADer's own ``model/mambaad.py`` at the same size: its 7x7 branch's 1x1
convs are named ``conv1b3``/``conv1a3`` and it builds an unused 3x3 ``conv33``, the layout MambaAD issues #30
and #31 report in the released checkpoints (read there as a 3x3 branch; ADer's forward never calls conv33).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
from argparse import Namespace
from pathlib import Path

REPOSITORY = "lewandofskee/MambaAD"
FILES = ("model/mambaad.py", "trainer/mambaad_trainer.py", "configs/mambaad/mambaad_mvtec.py")
ALSO = {"ader": "zhangzjn/ADer"}  # its model/__init__.py, model/ad_factory.py, model/mambaad.py, util/metric.py,
# loss/base_loss.py run with the release's files

IMAGE = 256  # the release's scans are built for 8, 16, 32, 64 px maps: a 256 px input
CHANNELS = (4, 8, 16, 32)
DIMS, DEPTHS = [32, 16, 8, 4], [2, 2, 2, 2]
SEED = 0
_laid = []


def _shims():
    spec = importlib.util.spec_from_file_location("parity_ader_shims", Path(__file__).with_name("_ader.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lay_over_ader(root: Path) -> Path:
    """ADer's tree (``root/ader``) with the release's files laid over it, first on sys.path (once)."""
    import sys

    ader = root / "ader"
    if _laid:
        return ader
    shutil.copy(ader / "model" / "mambaad.py", ader / "model" / "ader_mambaad.py")  # ADer's own, for its keys
    for name in FILES:
        (ader / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / name, ader / name)
    sys.path.insert(0, str(ader))
    os.chdir(ader)
    shims = _shims()
    scan = shims.reference_selective_scan
    shims.stub("mamba_ssm")
    shims.stub("mamba_ssm.ops")
    shims.stub("mamba_ssm.ops.selective_scan_interface", selective_scan_fn=scan, selective_scan_ref=scan)
    shims.import_models(ader, ["model/ad_factory.py", "model/mambaad.py", "model/ader_mambaad.py"])
    _laid.append(ader)
    return ader


def _encoder_spec(channels=None) -> Namespace:
    kwargs = dict(pretrained=False, checkpoint_path=None, strict=False, features_only=True, out_indices=[1, 2, 3])
    if channels:
        kwargs["channels"] = channels
    return Namespace(name="timm_resnet34", kwargs=kwargs)


def _build(root: Path, reduced: bool, module: str = "model.mambaad"):
    _lay_over_ader(root)
    release = importlib.import_module(module)
    model_s = dict(depths_decoder=[3, 4, 6, 3], scan_type="hilbert", num_direction=8)
    if not reduced:  # configs/mambaad/mambaad_mvtec.py
        return release.MAMBAAD(_encoder_spec(), model_s)
    from timm.models.resnet import Bottleneck

    class QuarterWidthBottleneck(Bottleneck):
        expansion = _shims().Scale(4)  # 4 / 4: MFF_OCE's 16/32/64/128 x expansion become 4/8/16/32

    net = release.MAMBAAD(_encoder_spec(CHANNELS), dict(model_s, depths_decoder=DEPTHS))
    torch_seed()
    net.net_t = release.get_model(_encoder_spec(CHANNELS))
    net.mff_oce = release.MFF_OCE(QuarterWidthBottleneck, 3, width_per_group=4)
    net.net_s = release.MambaUPNet(dims_decoder=DIMS, depths_decoder=DEPTHS, scan_type="hilbert", num_direction=8)
    return net


def torch_seed():
    import torch

    torch.manual_seed(SEED)


def make(root: Path) -> dict:
    import torch

    net = _build(root, reduced=True).eval()
    metric = _shims().import_metric()
    from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from torchvision.transforms import Normalize

    generator = torch.Generator().manual_seed(SEED + 1)
    pixels = torch.randint(0, 256, (1, 3, IMAGE, IMAGE), generator=generator, dtype=torch.uint8)
    images = pixels.float() / 255  # an 8-bit image, stored as such (tests/test_parity.py divides by 255)
    with torch.no_grad():
        feats_t, feats_s = net(Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)(images))
        bottleneck = net.mff_oce(feats_t)
        anomaly_map, _ = metric.Evaluator.cal_anomaly_map(feats_t, feats_s, [IMAGE, IMAGE], uni_am=False,
                                                          amap_mode="add", gaussian_sigma=4)
        loss = _shims().ader_loss("L2Loss", lam=5.0)(feats_t, feats_s)  # configs/mambaad/mambaad_mvtec.py
    anomaly_map = torch.from_numpy(anomaly_map)
    stages = {f"encoder_{i + 1}": f for i, f in enumerate(feats_t)}
    stages["bottleneck"] = bottleneck
    stages.update({f"decoder_{i + 1}": f for i, f in enumerate(feats_s)})
    stages["map"] = anomaly_map
    stages["score"] = anomaly_map.flatten(1).amax(dim=1)  # Evaluator.run with pooling_ks=None
    stages["loss"] = loss.reshape(1)
    state = {k: v.clone() for k, v in net.state_dict().items() if ".scans.index_flat" not in k}
    return {
        "config": {"backbone": "resnet34", "pretrained": False, "image_size": IMAGE,
                   "backbone_kwargs": {"channels": CHANNELS}, "depths": tuple(DEPTHS), "map_divisor": "ader"},
        "authors_config": {"model_t": vars(_encoder_spec(CHANNELS)),
                           "mff_oce": dict(block="timm Bottleneck, expansion 4 / 4", layers=3, width_per_group=4),
                           "model_s": dict(dims_decoder=DIMS, depths_decoder=DEPTHS, scan_type="hilbert",
                                           num_direction=8)},
        "state_dict": state,
        "files": {"mambaad_checkpoint.pth": {"net": state, "epoch": 0, "iter": 0}},
        "input": pixels,
        "stages": {k: v.detach().float().clone() for k, v in stages.items()},
        "notes": ("MambaAD release classes on ADer: timm resnet34 features_only at channels (4, 8, 16, 32), MFF_OCE "
                  "at a quarter width (expansion 4/4, width_per_group 4), MambaUPNet dims [32, 16, 8, 4] depths "
                  "[2, 2, 2, 2], Hilbert, 8 directions, d_state 16; seed 0; mamba_ssm replaced by a reference "
                  "selective-scan loop; input: one uniform 8-bit 256 px image, ImageNet-normalised; map: "
                  "Evaluator.cal_anomaly_map(amap_mode='add', gaussian_sigma=4); score: max; loss: L2Loss(lam=5) on "
                  "the eval-mode features. Scan index buffers "
                  "left out of the state dict."),
    }


def full_keys(root: Path) -> dict:
    listings = {}
    for name, module in (("paper", "model.mambaad"), ("ader_layout", "model.ader_mambaad")):
        net = _build(root, reduced=False, module=module)  # on the CPU: the release calls .item() at build time
        listings[name] = {k: list(v.shape) for k, v in net.state_dict().items()}
    return {"paper": listings["paper"], "variants": {"ader_layout": listings["ader_layout"]},
            "config": {"backbone": "resnet34"}}
