"""Parity fixture for PatchCore: anomalib's ``PatchcoreModel`` (open-edge-platform/anomalib,
``src/anomalib/models/image/patchcore/torch_model.py``, with its ``KCenterGreedy`` and ``AnomalyMapGenerator``).

    python benchmarks/parity/make_fixtures.py --model patchcore \\
        --reference /work/.mirror/open-edge-platform+anomalib/repo

Run with a Python that has anomalib's dependencies (``pip install anomalib`` in a venv of its own); the
snapshot's ``src/`` goes first on the path, so its own ``anomalib`` is the one imported. Reduced size: the
backbone is timm's ``tf_efficientnet_lite0`` (adlib's ``efficientnet_lite0``) with random weights drawn by
timm's init, taps ``blocks.1`` and ``blocks.2`` (strides 4 and 8, adlib's layers 1 and 2), 64 x 64 images, four
training and two test images, a 10 % coreset, anomalib's default ``num_neighbors=9`` (the paper's reweighted
image score). anomalib's model takes normalised images (its pre-processor normalises); it gets the images that
adlib's extractor normalises itself, ``(x - 0.5) / 0.5`` (timm's mean and std for this network).

The "state dict" is the memory bank and the backbone: only the blocks up to ``blocks.2`` are kept (anomalib's
``features_only`` network also holds blocks 3-6, which it runs but never returns; adlib's ``authors_ignored``
lists them). The coreset stage is compared on anomalib's own projected features (``KCenterGreedy.features``,
its sparse random projection) from its own first pick: the input holds both.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import torch

REPOSITORY = "open-edge-platform/anomalib"
FILES = ("src/anomalib/models/image/patchcore/torch_model.py",
         "src/anomalib/models/components/sampling/k_center_greedy.py",
         "src/anomalib/models/image/patchcore/anomaly_map.py")
BACKBONE, LAYERS = "tf_efficientnet_lite0", ["blocks.1", "blocks.2"]
SIZE, TRAIN, TEST, RATIO = 64, 4, 2, 0.1
KEEP = ("conv_stem.", "bn1.", "blocks.0.", "blocks.1.", "blocks.2.")  # the network up to the last tap


def images(count: int, seed: int) -> torch.Tensor:
    """Smooth random images in [0, 1] (noise upsampled from 8 x 8), a bright square on the test images."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(count, 3, 8, 8, generator=g), size=SIZE, mode="bilinear")
    return base.clamp(0, 1)


def make(root: Path) -> dict:
    sys.path.insert(0, str(root / "src"))
    torch_model = importlib.import_module("anomalib.models.image.patchcore.torch_model")
    samplers = []

    class Recorded(torch_model.KCenterGreedy):  # their sampler, kept to read its projected features
        def select_coreset_idxs(self):
            samplers.append(self)
            self.selected = super().select_coreset_idxs()
            return self.selected

    torch_model.KCenterGreedy = Recorded
    torch.manual_seed(0)
    model = torch_model.PatchcoreModel(layers=LAYERS, backbone=BACKBONE, pre_trained=False, num_neighbors=9)
    train, test = images(TRAIN, 1), images(TEST, 2)
    test[1, :, 20:36, 28:44] = torch.tensor([0.9, 0.2, 0.1])[:, None, None]  # an anomaly
    normalise = lambda x: (x - 0.5) / 0.5
    model.train()
    with torch.no_grad():
        model(normalise(train))
        torch.manual_seed(3)  # the first pick
        np.random.seed(3)  # the projection: sklearn's sample_without_replacement with numpy's global state
        model.subsample_embedding(RATIO)
    sampler = samplers[0]
    seen = {}
    generate, neighbours = model.generate_embedding, model.nearest_neighbors

    def keep(name, value):  # the first call's result (the test patches'), every call answered with its own
        seen.setdefault(name, value)
        return value

    model.generate_embedding = lambda features: keep("embedding", generate(features))
    model.nearest_neighbors = lambda embedding, n_neighbors: keep("neighbours", neighbours(embedding, n_neighbors))
    model.eval()
    with torch.no_grad():
        out = model(normalise(test))
    grid = seen["embedding"].shape[-2:]
    state = {k: v for k, v in model.state_dict().items()
             if k == "memory_bank" or k.removeprefix("feature_extractor.feature_extractor.").startswith(KEEP)}
    return {"config": {"backbone": "efficientnet_lite0", "layers": [1, 2], "image_size": SIZE},
            "authors_config": {"layers": LAYERS, "backbone": BACKBONE, "pre_trained": False, "num_neighbors": 9},
            "state_dict": state,
            "input": {"images": test, "train_images": train, "projected": sampler.features,
                      "start": int(sampler.selected[0]), "count": int(sampler.coreset_size)},
            "stages": {"embedding": seen["embedding"], "coreset_indices": torch.tensor(sampler.selected).float(),
                       "memory_bank": model.memory_bank,
                       "patch_scores": seen["neighbours"][0].reshape(TEST, *grid),
                       "anomaly_map": out.anomaly_map[:, 0], "image_score": out.pred_score},
            "notes": "anomalib's PatchcoreModel, random tf_efficientnet_lite0 taps blocks.1/blocks.2, 64 px, a 10% "
                     "coreset; blocks 3-6 of its features_only network dropped from the state dict"}


def full_keys(root: Path) -> dict:
    """anomalib's defaults (wide_resnet50_2, layer2 + layer3: 512 + 1024 channels) on the meta device; the bank's
    length is a 10 % coreset of MVTec bottle's 209 training images at 256 px (32 x 32 patches each)."""
    sys.path.insert(0, str(root / "src"))
    torch_model = importlib.import_module("anomalib.models.image.patchcore.torch_model")
    with torch.device("meta"):
        model = torch_model.PatchcoreModel(layers=["layer2", "layer3"], backbone="wide_resnet50_2", pre_trained=False)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    shapes["memory_bank"] = [int(0.1 * 209 * 32 * 32), 512 + 1024]
    return {"paper": shapes, "variants": {}, "config": {"backbone": "wide_resnet50", "layers": [2, 3]}}
