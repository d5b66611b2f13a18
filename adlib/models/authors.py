"""Checkpoints in the authors' key names, loaded into adlib's models: ``from_authors(name, state_dict, **config)``.

A reviewer with the authors' released weights gets the paper's own model under adlib's checked protocols,
without training. Each model module that has a reference implementation provides two functions:

- ``authors_key_map(config) -> dict[str, str]``: adlib state-dict key -> the authors' key, for the model that
  ``config`` builds (every key of ``checkpoint_state()`` that comes from the authors' model, none invented);
- ``authors_config(state_dict, **config) -> config`` (optional): the config that matches a checkpoint's shapes
  (depths, widths, a released variant's kernel size), so that a paper-size checkpoint loads without the user
  knowing its hyper-parameters; ``config`` given by the caller wins;
- ``authors_ignored(config) -> set[str]`` (optional): the authors' keys that carry nothing adlib's model holds
  (an optimiser's step counter, a buffer recomputed at load), each with its reason in the module's docs; a
  name ending in "." ignores every key under it (a backbone adlib does not take from the checkpoint);
- ``authors_layout(state, config) -> state`` (optional): the authors' tensors in adlib's layout where the two
  store the same numbers differently (a 1 x 1 convolution's weight as a Linear's, a transposed codebook, two
  bias vectors as one); it may replace keys by new ones, which the key map then names. Applied to the
  checkpoint's tensors, and to meta tensors of its shapes in ``check_keys``;
- ``authors_model(config)`` (optional): builds the model for a name that is not in ``adlib.models.MODELS``
  (HVQ-Trans, a part of LADMIM), whose ``authors_config`` then gives the config;
- ``authors_stages(model, images) -> dict[str, Tensor]``: the outputs of the stages the paper names (encoder
  features, decoder or predictor output, anomaly map, image score), under the names the parity fixture uses.

An adlib tensor whose first dimension is 0 (PatchCore's memory bank before fitting) takes the checkpoint's
number of rows. ``AUTHORS`` names, per model, the reference code (repository, the files compared) that the key
names come from;
``benchmarks/parity/`` writes the fixtures and ``tests/test_parity.py`` checks each stage's output against them.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, Mapping

import torch


@dataclass(frozen=True)
class Reference:
    """The authors' code a model's key names and outputs are checked against."""

    repository: str  # owner/name on GitHub
    files: tuple[str, ...]  # the files compared
    note: str = ""


# Model name -> its reference implementation. A model absent here has no released code to load from (VarAD).
AUTHORS: dict[str, Reference] = {
    "vitad": Reference("zhangzjn/ADer", ("model/vitad.py",)),
    "mambaad": Reference("lewandofskee/MambaAD", ("models/mambaad.py",), "also ADer model/mambaad.py"),
    "rd4ad": Reference("hq-deng/RD4AD", ("resnet.py", "de_resnet.py"), "also ADer model/rd.py"),
    "uniad": Reference("zhiyuanyou/UniAD", ("models/reconstructions/uniad.py",), "also ADer model/uniad.py"),
    "hvq": Reference("RuiyingLu/HVQ-Trans", ("models/HVQ_TR_switch.py",)),
    "ladmim": Reference("SkyShunsuke/LADMIM", ("models/",)),
    "patchcore": Reference("open-edge-platform/anomalib", ("src/anomalib/models/image/patchcore/torch_model.py",)),
}


class AuthorsCheckpointError(ValueError):
    """A checkpoint in the authors' key names does not fit the model: keys missing, unexpected or of other shape."""


def _module(name: str):
    from adlib.models import MODELS

    if name not in AUTHORS:
        raise ValueError(f"model {name!r} has no authors' code to load from; models with one: {sorted(AUTHORS)}")
    module_name = MODELS[name].module if name in MODELS else f"adlib.models.{name}"
    module = importlib.import_module(module_name)
    if not hasattr(module, "authors_key_map"):
        raise NotImplementedError(f"{module_name} has no authors_key_map yet")
    return module


def _tensors(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def unwrap(checkpoint: Any) -> dict[str, torch.Tensor]:
    """The state dict inside a released checkpoint file's object: the dict itself, or what it holds under one
    of the usual keys ("state_dict", "model", "net", "net_S"...), with a "module." prefix (DataParallel) removed.
    A file that holds only state dicts of sub-modules (RD4AD's ``{"bn": ..., "decoder": ...}``) gives their
    union under "<name>." prefixes."""
    state = checkpoint
    for _ in range(3):
        if _tensors(state):
            break
        if not isinstance(state, Mapping):
            raise AuthorsCheckpointError(f"not a checkpoint: a {type(state).__name__}, expected a dict of tensors")
        inner = [k for k in ("state_dict", "model", "net", "state") if isinstance(state.get(k), Mapping)]
        if inner:
            state = state[inner[0]]
        elif state and all(_tensors(v) for v in state.values()):
            state = {f"{name}.{k}": v for name, part in state.items() for k, v in part.items()}
        else:
            raise AuthorsCheckpointError(f"no state dict in the checkpoint; its top-level keys: {sorted(state)[:10]}")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _build(name: str, module, cfg):
    from adlib.models import create_model

    return module.authors_model(cfg) if hasattr(module, "authors_model") else create_model(name, cfg)


def _layout(module, state: Mapping[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    return dict(module.authors_layout(dict(state), cfg)) if hasattr(module, "authors_layout") else dict(state)


def _fits(own: tuple[int, ...], theirs: tuple[int, ...]) -> bool:
    """Same shape, or an empty adlib tensor (0, ...) that takes any number of rows of the same width."""
    return own == theirs or (len(own) == len(theirs) and own[:1] == (0,) and own[1:] == theirs[1:])


def check_keys(name: str, shapes: Mapping[str, tuple[int, ...]], strict: bool = True, **config: Any) -> tuple[Any, dict]:
    """(config, key map) for a checkpoint whose keys have ``shapes`` (the authors' names -> shape); raises
    ``AuthorsCheckpointError`` naming the keys that are missing, of another shape, or (``strict``) unused.
    Needs no tensor: a paper-size checkpoint's listing is checked without building its weights. The key map
    names the keys after ``authors_layout``."""
    from adlib.models import model_config

    module = _module(name)
    if hasattr(module, "authors_config"):
        cfg = module.authors_config(dict(shapes), **config)
    else:
        cfg = model_config(name, None, **config)
    # shapes only: the encoder's pretrained weights (which may not be had here) change no shape
    shape_cfg = dataclasses.replace(cfg, pretrained=False) if getattr(cfg, "pretrained", False) else cfg
    with torch.device("meta"):
        own = {k: tuple(v.shape) for k, v in _build(name, module, shape_cfg).state_dict().items()}
        shapes = {k: tuple(v.shape) for k, v in _layout(module, {k: torch.empty(s) for k, s in shapes.items()},
                                                          cfg).items()}
    key_map = module.authors_key_map(cfg)
    unknown = [ours for ours in key_map if ours not in own]
    if unknown:
        raise AuthorsCheckpointError(f"{name}: the key map names adlib keys the model lacks: {unknown[:5]}")
    missing = [theirs for theirs in key_map.values() if theirs not in shapes]
    other = [f"{theirs} {tuple(shapes[theirs])} for {ours} {own[ours]}" for ours, theirs in key_map.items()
             if theirs in shapes and not _fits(own[ours], tuple(shapes[theirs]))]
    ignored = set(module.authors_ignored(cfg)) if hasattr(module, "authors_ignored") else set()
    prefixes = tuple(k for k in ignored if k.endswith("."))
    unused = sorted(k for k in set(shapes) - set(key_map.values()) - ignored if not k.startswith(prefixes))
    if missing or other or (strict and unused):
        parts = [f"missing {missing[:5]}" if missing else "", f"other shapes {other[:3]}" if other else "",
                 f"unexpected {unused[:5]}" if strict and unused else ""]
        raise AuthorsCheckpointError(f"{name}: the checkpoint does not fit: " + "; ".join(p for p in parts if p))
    return cfg, key_map


def from_authors(name: str, state_dict: Mapping[str, torch.Tensor], strict: bool = True, **config: Any):
    """An adlib model ``name`` holding the weights of ``state_dict`` (the authors' key names, or a released
    checkpoint object that holds them, see ``unwrap``), in eval mode.

    ``config`` overrides the model's config fields; the rest come from ``authors_config`` (the checkpoint's
    shapes) when the module has it, else the config's defaults. Every adlib key the map names must be found with
    the same shape and (``strict``) every authors' key used or declared ignored, else ``AuthorsCheckpointError``.
    """
    state = unwrap(state_dict)
    cfg, key_map = check_keys(name, {k: tuple(v.shape) for k, v in state.items()}, strict=strict, **config)
    module = _module(name)
    model = _build(name, module, cfg)
    state = _layout(module, state, cfg)
    own = model.state_dict()
    own.update({ours: state[theirs].to(own[ours].dtype).clone() for ours, theirs in key_map.items()})
    model.load_state_dict(own)
    model.eval()
    return model


def load(name: str, path: str, strict: bool = True, **config: Any):
    """``from_authors`` on a checkpoint file (``torch.load`` on the CPU; the file's objects are only tensors and
    plain containers, so ``weights_only`` loading is tried first)."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # an authors' file pickling their own classes (an args namespace, an optimiser)
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return from_authors(name, checkpoint, strict=strict, **config)


def relative_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours - theirs| / max |theirs| (the absolute difference when ``theirs`` is all zero)."""
    ours, theirs = ours.detach().double(), theirs.detach().double()
    if ours.shape != theirs.shape:
        raise AuthorsCheckpointError(f"shape {tuple(ours.shape)} != the authors' {tuple(theirs.shape)}")
    scale = theirs.abs().max().item()
    diff = (ours - theirs).abs().max().item()
    return diff / scale if scale > 0 else diff


def stage_differences(fixture: Mapping[str, Any]) -> tuple[Any, dict[str, float]]:
    """(the model loaded from a parity fixture's state dict and config, {stage: relative_difference}) for every
    stage the fixture holds (``benchmarks/parity/make_fixtures.py`` writes them)."""
    model = from_authors(fixture["model"], fixture["state_dict"], **fixture["config"])
    module = importlib.import_module(model.__module__)
    images = fixture["input"]  # an 8-bit input is stored as uint8, as an image file holds it
    if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
        images = images.float() / 255
    with torch.no_grad():
        ours = module.authors_stages(model, images)
    missing = sorted(set(fixture["stages"]) - set(ours))
    if missing:
        raise AuthorsCheckpointError(f"{fixture['model']}: stages adlib does not give: {missing}")
    return model, {stage: relative_difference(ours[stage], theirs) for stage, theirs in fixture["stages"].items()}
