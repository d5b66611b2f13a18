"""Parity fixture for LADMIM (SkyShunsuke/LADMIM: ``src/model.py``'s MIM ViT, ``src/train_engine.py``'s scoring).

    python benchmarks/parity/make_fixtures.py --model ladmim --reference /work/.mirror/SkyShunsuke+LADMIM/repo \\
        --also HVQ-Trans=/work/.mirror/RuiyingLu+HVQ-Trans/repo

LADMIM's tokenizer is a git submodule (``HVQ-Trans``, a fork at ee24d2e) that its snapshot does not contain and
that is not public; its ``tokenizer.py`` (``build_tokenizer``) is missing too. The upstream HVQ-Trans
(RuiyingLu/HVQ-Trans, ``HVQ_TR_switch``) is exported into that submodule's folder and stands in for the fork,
behind the small interface LADMIM's scoring calls (``get_codebook_indices``, ``extract_feature``): the index
maps o^L..o^1 of upstream's ``encode`` (its order; ``--codebook_indices 0 1 2 3`` takes all four) and the fixed
feature map h^0. The MIM ViT is LADMIM's ``VisionTransformerMIM`` as ``get_model_with_args`` builds it for
``scripts/train.sh`` (feature input, patch 1, qkv bias, layer scale 1e-4, a class and a histogram token) at a
reduced size (width 32, depth 2, 4 heads; HVQ-Trans at embed_dim 8 on its fixed 14 x 14 grid, 40 channels).

Scoring runs LADMIM's own ``get_pred_dist`` / ``get_target_dist`` / ``calculate_l1_distance`` per image and
mask (masks from its ``BlockMaskingSampler``, seeded), S_MIM the mean over masks as in ``evaluate``; S_HVQ is
HVQ-Trans' ``max_score`` (what ``evaluate`` reads from HVQ-Trans' results file: its evaluator's "max" metric on
``pred``), and the final score their z-score sum over the test set (here the fixture's images), restated from
``evaluate`` (``(x - mean) / np.std(x)``). Shims (CPU): ``wandb`` is an empty stand-in (imported by
``train_engine``), those of ``benchmarks/parity/hvq.py`` for HVQ-Trans, and the tokenizer interface above.
The released ``train_engine.py`` does not import as published: it imports ``hist_ot_loss`` from ``loss``,
``VISA_CLASS_TO_ID`` from ``dataset`` and five samplers from ``mask_sampler`` that the release does not
define (``dataset`` itself imports two more); those names get stand-ins that raise if called (none is), and
``dataset`` (data loading only) is replaced by a module holding the three class-id tables.
"""
from __future__ import annotations

import importlib
import importlib.util
import random
import sys
import types
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch

REPOSITORY = "SkyShunsuke/LADMIM"
FILES = ("src/model.py", "src/transformer.py", "src/train_engine.py", "src/loss.py", "src/mask_sampler.py")
ALSO = {"HVQ-Trans": "RuiyingLu/HVQ-Trans"}
HERE = Path(__file__).resolve().parent
GRID = 14  # upstream HVQ_TR_switch's fixed feature_size
CHANNELS = 40  # adlib's efficientnet_lite0 stride-8 tap (layers=(2,)) at 112 px: a 14 x 14 x 40 map
HVQ_SMALL = {"channel": CHANNELS, "embed_dim": 8}
MIM_SMALL = {"embed_dim": 32, "depth": 2, "num_heads": 4}
MIM_PAPER = {"embed_dim": 512, "depth": 4, "num_heads": 8}  # scripts/train.sh
K, LEVELS, IMAGES, MASKS = 512, (0, 1, 2, 3), 4, 3
SPREAD = torch.tensor([0.1, 0.5, 2.0, 8.0])  # per-image scale of the random feature maps


def _hvq_fixture_module():
    spec = importlib.util.spec_from_file_location("parity_hvq_for_ladmim", HERE / "hvq.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mim_model(root: Path, grid: int, in_chans: int, size: dict):
    """LADMIM's ViT as ``get_model_with_args`` builds it for scripts/train.sh."""
    sys.path.insert(0, str(root / "src"))
    model = importlib.import_module("model")
    args = Namespace(input_type="feature", window_size=grid, patch_size=1, in_channel=in_chans, codebook_size=K,
                     codebook_dim=64, num_codebooks=len(LEVELS), mlp_ratio=4, qkv_bias=True, qk_scale=None,
                     drop_rate=0.0, attn_drop_rate=0.1, drop_path=0.0, abs_pos_emb=True, rel_pos_bias=False,
                     tokenizer="hvq", **size)
    return model.get_model_with_args(args)


class Tokenizer:
    """The fork's interface that LADMIM's scoring calls, over upstream's HVQ_TR_switch (class 0)."""

    def __init__(self, hvq, features: torch.Tensor) -> None:
        self.hvq, self.features = hvq, features
        self.hvq.extract_feature = lambda inputs: inputs["features"]
        encode, self.ids = self.hvq.encode, None

        def keep(*args):
            out = encode(*args)
            self.ids = out[2]  # (levels, B, N): o^L, ..., o^1
            return out

        self.hvq.encode = keep

    def run(self, features: torch.Tensor) -> dict:
        batch = len(features)
        with torch.no_grad():
            return self.hvq({"image": features, "features": features, "clslabel": torch.zeros(batch, dtype=torch.long)})

    def get_codebook_indices(self, features, clsids):
        self.run(features)
        return self.ids.permute(1, 0, 2)  # (B, levels, N)

    def extract_feature(self, features):
        return features


def block_masks(root: Path, count: int, masked: int, smallest: int) -> torch.Tensor:
    """``count`` masks of their BlockMaskingSampler (seeded), (count, N) bool."""
    sys.path.insert(0, str(root / "src"))
    sampler = importlib.import_module("mask_sampler").BlockMaskingSampler(
        input_size=GRID, num_masking_patches=masked, min_num_patches=smallest)
    random.seed(0)
    np.random.seed(0)
    return torch.stack([torch.from_numpy(sampler(None, None)).flatten().bool() for _ in range(count)])


def absent(module, names) -> None:
    """Stand-ins for names a released file imports from ``module`` that the release does not define."""
    for name in names:
        if not hasattr(module, name):
            def missing(*args, _name=name, **kwargs):
                raise NotImplementedError(f"{_name} is imported but not defined in the LADMIM release")
            setattr(module, name, missing)


def scoring_module(root: Path):
    """LADMIM's ``train_engine`` (its ``get_pred_dist`` / ``get_target_dist``), importable on a CPU."""
    sys.path.insert(0, str(root / "src"))
    sys.modules.setdefault("wandb", types.ModuleType("wandb"))
    dataset = types.ModuleType("dataset")
    dataset.AD_CLASS_TO_ID, dataset.LOCO_CLASS_TO_ID, dataset.VISA_CLASS_TO_ID = {}, {}, {}
    sys.modules["dataset"] = dataset
    absent(importlib.import_module("loss"), ["hist_ot_loss"])
    absent(importlib.import_module("mask_sampler"), ["ObjectMaskingSampler", "DivisionMaskingSampler",
                                                     "ManualMaskSampler", "KMeansMaskingSampler",
                                                     "GroundTruthMaskSampler"])
    return importlib.import_module("train_engine")


def make(root: Path) -> dict:
    hvq_fixture = _hvq_fixture_module()
    hvq_cls = hvq_fixture.hvq_class(root / "HVQ-Trans")
    torch.manual_seed(0)
    hvq = hvq_cls(**HVQ_SMALL).eval()
    torch.manual_seed(1)
    mim = mim_model(root, GRID, CHANNELS, MIM_SMALL).eval()
    features = torch.randn(IMAGES, CHANNELS, GRID, GRID, generator=torch.Generator().manual_seed(2))
    features = features * SPREAD.view(-1, 1, 1, 1)  # images far apart: the z-scores below are well conditioned
    masks = block_masks(root, MASKS, masked=40, smallest=10)
    engine = scoring_module(root)
    loss = importlib.import_module("loss")
    tokenizer = Tokenizer(hvq, features)
    args = Namespace(tokenizer="hvq", codebook_size=K, device="cpu")
    (predicted, target), s_mim = (torch.zeros(IMAGES, MASKS, len(LEVELS), K) for _ in range(2)), []
    for i in range(IMAGES):
        image = features[i:i + 1]
        distances = []
        for j, mask in enumerate(masks):
            mask = mask[None]
            d, out_pred, out_tar = 0, None, None
            for level in LEVELS:
                pred_hist, out_pred = engine.get_pred_dist(image, mask, mim, tokenizer, level, out_pred, args)
                target_hist, out_tar = engine.get_target_dist(image, [0], mask, tokenizer, level, out_tar, args,
                                                              pred_hist)
                predicted[i, j, level], target[i, j, level] = pred_hist.float(), target_hist.float()
                d += loss.calculate_l1_distance(pred_hist, target_hist)
            distances.append(float(d))
        s_mim.append(np.mean(distances))
    codes = tokenizer.get_codebook_indices(features, [0] * IMAGES)
    pred = tokenizer.run(features)["pred"]
    s_hvq = hvq_fixture.release_image_score(root / "HVQ-Trans", pred).numpy()
    s_mim = np.array(s_mim)
    score = (s_hvq - s_hvq.mean()) / np.std(s_hvq) + (s_mim - s_mim.mean()) / np.std(s_mim)  # evaluate's z-scores
    state = {**{f"hvq.{k}": v for k, v in hvq_fixture.class_zero(hvq.state_dict()).items()},
             **{f"mim.{k}": v for k, v in mim.state_dict().items()}}
    config = {"backbone": "efficientnet_lite0", "layers": [2], "pretrained": False, "image_size": 112,
              "mim_heads": MIM_SMALL["num_heads"], "hvq_classes": 1}
    return {"config": config, "authors_config": {"hvq": HVQ_SMALL, "mim": MIM_SMALL}, "state_dict": state,
            "input": {"features": features, "masks": masks},
            "stages": {"codes": codes.float(), "predicted": predicted, "target": target,
                       "s_hvq": torch.as_tensor(s_hvq).float(), "s_mim": torch.as_tensor(s_mim).float(),
                       "score": torch.as_tensor(score).float()},
            "notes": "LADMIM's ViT and scoring functions with upstream HVQ-Trans standing in for the fork; the "
                     "feature map h^0 and the masks are the input (the fork's PDN wrapper is not public)"}


def full_keys(root: Path) -> dict:
    """The paper's sizes: train.sh's ViT (512 wide, depth 4, 24 x 24 grid, 384 PDN channels) and HVQ-Trans at
    LADMIM's d_q = 64 on 384 channels (meta device), its position embeddings rebuilt for the 24 x 24 grid
    (upstream fixes 14)."""
    hvq_fixture = _hvq_fixture_module()
    with torch.device("meta"):
        hvq = hvq_fixture.hvq_class(root / "HVQ-Trans", backbone=True)(channel=384, embed_dim=64)
        transformer = importlib.import_module("models.transformer")
        hvq.pos_embed = transformer.build_position_embedding("learned", (24, 24), 64)
    mim = mim_model(root, 24, 384, MIM_PAPER)  # on the CPU: its constructor calls .item() (a few seconds)
    shapes = {**{f"hvq.{k}": list(v.shape) for k, v in hvq.state_dict().items()},
              **{f"mim.{k}": list(v.shape) for k, v in mim.state_dict().items()}}
    return {"paper": shapes, "variants": {}, "config": {}}
