"""Parity fixture for HVQ-Trans (RuiyingLu/HVQ-Trans, ``models/HVQ_TR_switch.py``), LADMIM's tokenizer.

    python benchmarks/parity/make_fixtures.py --model hvq --reference /work/.mirror/RuiyingLu+HVQ-Trans/repo

The authors' ``HVQ_TR_switch`` is built by their own constructor and init (seeded) at a reduced width
(``embed_dim`` 8, ``channel`` 32; their 4 layers, 8 heads, FFN 1024, 512 codes and 14 x 14 grid are fixed in
their code) and run in eval mode on a fixed random feature map, class label 0. Shims, all CPU-only:

- ``lmdb`` (imported, unused) and ``distributed`` (``all_reduce``, used by the EMA update in training only)
  are empty stand-ins;
- the EfficientNet-B4 encoder is not built (``nn.Identity``) and ``extract_feature`` returns the fixed map:
  adlib's ``HVQTrans`` starts from the feature map, the frozen backbone is not part of it (the paper-size key
  listing builds the real one, with ``pretrained=False``, on the meta device);
- ``torch.Tensor.cuda`` is the identity, for their evaluator's ``EvalImageMax`` (image score).

Stages (adlib's names): ``encoder`` (h^0..h^L, their ``TransformerEncoder`` with ``return_src``), ``codes``
(o^1..o^L: ``quantize_list_1..4``, each on [h^{l-1}, z^top]), ``top_codes`` (``quantize_list_5``),
``quantized`` and ``quantized_top`` (the quantisers' outputs), ``reconstruction`` (``feature_rec``),
``anomaly_map`` (``pred``: the per-token L2 error upsampled x16) and ``image_score`` (their "max" metric, a
16 x 16 box mean, as LADMIM's release reads it). The state dict keeps class 0's codebooks and output head
only (the other 14 classes are never used for label 0; adlib's ``authors_ignored`` lists them).
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import torch

REPOSITORY = "RuiyingLu/HVQ-Trans"
FILES = ("models/HVQ_TR_switch.py", "models/transformer.py", "utils/eval_helper.py")
SMALL = {"channel": 32, "embed_dim": 8}
PAPER = {"channel": 272, "embed_dim": 256}  # tools/train_val.py: HVQ_TR_switch(channel=272, embed_dim=256)
GRID = (14, 14)  # HVQ_TR_switch.feature_size, fixed in their code
BATCH = 2


def install_shims() -> None:
    """Stand-ins for modules their code imports but a CPU forward pass never uses."""
    sys.modules.setdefault("lmdb", types.ModuleType("lmdb"))
    distributed = types.ModuleType("distributed")
    distributed.all_reduce = lambda tensor, *args, **kwargs: tensor
    sys.modules.setdefault("distributed", distributed)


def hvq_class(root: Path, backbone: bool = False):
    """Their ``HVQ_TR_switch``; without ``backbone`` its EfficientNet-B4 is an ``nn.Identity``, else it is built
    with ``pretrained=False`` (no download)."""
    install_shims()
    sys.path.insert(0, str(root))
    module = importlib.import_module("models.HVQ_TR_switch")
    build = module.efficientnet_b4
    module.efficientnet_b4 = (lambda **kw: build(**{**kw, "pretrained": False})) if backbone else \
        (lambda **kw: torch.nn.Identity())
    return module.HVQ_TR_switch


def load_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def release_image_score(root: Path, pred: torch.Tensor) -> torch.Tensor:
    """Their evaluator's "max" image score (avgpool 16 x 16, stride 1, max) on ``pred`` (B, 1, H, W)."""
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # CPU shim: EvalImageMax moves the maps to CUDA
    evaluator = load_file(root / "utils" / "eval_helper.py", "hvq_eval_helper")
    return torch.as_tensor(evaluator.EvalImageMax.encode_pred(pred[:, 0].numpy(), avgpool_size=[16, 16]))


def class_zero(state: dict) -> dict:
    """Their state dict without the codebooks and output heads of classes 1..14."""
    keep = {}
    for key, value in state.items():
        parts = key.split(".")
        if (parts[0].startswith("quantize_list_") or parts[0] == "output_proj_list") and parts[1] != "0":
            continue
        keep[key] = value
    return keep


def run(model, feature: torch.Tensor) -> dict[str, torch.Tensor]:
    """Their forward on ``feature`` (class 0), with hooks on the encoder and the class-0 quantisers."""
    seen: dict[str, list] = {}

    def hook(name):
        return lambda module, args, output: seen.setdefault(name, []).append(output)

    model.encoder.register_forward_hook(hook("encoder"))
    for level in range(1, 6):
        getattr(model, f"quantize_list_{level}")[0].register_forward_hook(hook(f"q{level}"))
    model.extract_feature = lambda inputs: feature
    batch = len(feature)
    with torch.no_grad():
        out = model({"image": torch.zeros(batch, 3, 224, 224), "clslabel": torch.zeros(batch, dtype=torch.long)})
    per_image = lambda name, part: torch.stack([output[part] for output in seen[name]])  # one call per image
    return {
        "encoder": seen["encoder"][0].permute(0, 2, 1, 3),  # (L + 1, N, B, d) -> (L + 1, B, N, d)
        "codes": torch.stack([per_image(f"q{level}", 2) for level in range(1, 5)], dim=1).float(),
        "top_codes": per_image("q5", 2).float(),
        "quantized": torch.stack([per_image(f"q{level}", 0) for level in range(1, 5)], dim=1),
        "quantized_top": per_image("q5", 0),
        "reconstruction": out["feature_rec"],
        "anomaly_map": out["pred"][:, 0],
    }


def make(root: Path) -> dict:
    torch.manual_seed(0)
    model = hvq_class(root)(**SMALL).eval()
    feature = torch.randn(BATCH, SMALL["channel"], *GRID, generator=torch.Generator().manual_seed(1))
    stages = run(model, feature)
    stages["image_score"] = release_image_score(root, stages["anomaly_map"][:, None])
    return {"config": {"switch_class": 0}, "authors_config": dict(SMALL), "state_dict": class_zero(model.state_dict()),
            "input": feature, "stages": stages,
            "notes": "their HVQ_TR_switch in eval mode on a random 14 x 14 feature map, class 0; backbone not "
                     "built (the feature map is the input); classes 1..14 dropped from the state dict"}


def full_keys(root: Path) -> dict:
    with torch.device("meta"):
        model = hvq_class(root, backbone=True)(**PAPER)
    return {"paper": {k: list(v.shape) for k, v in model.state_dict().items()}, "variants": {},
            "config": {"switch_class": 0}}
