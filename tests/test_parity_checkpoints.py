"""A checkpoint in the authors' own format evaluates with adlib's protocol, without training (issue 22).

``benchmarks/parity/{vitad,mambaad}.py`` write, next to each parity fixture, the fixture's weights as the
authors' trainer saves them (ADer's ``ckpt.pth``: ``{"net": state dict, "epoch": ..., ...}``). Loaded by
``adlib.models.authors.load`` and run through ``adlib.engine.evaluate``, the image scores adlib reports for the
fixture's images are the authors' own scores for them.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from adlib import engine
from adlib.models import authors

FIXTURES = Path(__file__).parent / "fixtures" / "parity"


def _images(fixture: dict) -> torch.Tensor:
    images = fixture["input"]
    return images.float() / 255 if images.dtype == torch.uint8 else images


@pytest.mark.parametrize("name,config", [
    # ViTAD's checkpoint does not say its encoder's head count (qkv weights have the same shape for any): the
    # caller gives what the checkpoint cannot, the rest comes from its shapes
    ("vitad", {"backbone_kwargs": {"img_size": 96, "embed_dim": 32, "depth": 4, "num_heads": 2}}),
    ("mambaad", {}),  # everything from the checkpoint's shapes (encoder widths, depths, d_state)
])
def test_an_authors_checkpoint_evaluates_to_the_authors_scores_without_training(name, config):
    fixture = torch.load(FIXTURES / f"{name}.pt", map_location="cpu", weights_only=False)
    model = authors.load(name, FIXTURES / f"{name}_checkpoint.pth", map_divisor="ader", **config)
    assert not model.training
    images = _images(fixture)
    theirs = fixture["stages"]["score"]
    if len(images) == 1:  # one good image and, as a defect, the same image upside down
        images = torch.cat([images, images.flip(-2)])
    size = images.shape[-1]
    items = []
    for i, image in enumerate(images):
        mask = torch.zeros(1, size, size)
        if i % 2:
            mask[:, size // 4: size // 2, size // 4: size // 2] = 1
        items.append({"image": image, "mask": mask, "label": i % 2, "path": f"{name}_{i}"})
    result = engine.evaluate(model, items, batch_size=2, progress=False)
    scores = torch.as_tensor(result.scores)[: len(theirs)]
    assert ((scores.double() - theirs.double()).abs().max() / theirs.abs().max()).item() <= 1e-5
    assert result.image and all(math.isfinite(v) for v in result.image.values())
    assert result.pixel and all(math.isfinite(v) for v in result.pixel.values())


def test_the_checkpoint_files_are_in_the_authors_layout():
    for name in ("vitad", "mambaad"):
        checkpoint = torch.load(FIXTURES / f"{name}_checkpoint.pth", map_location="cpu", weights_only=True)
        assert set(checkpoint) >= {"net", "epoch"}
        prefixes = {k.split(".")[0] for k in checkpoint["net"]}
        assert {"net_t", "net_s"} <= prefixes
