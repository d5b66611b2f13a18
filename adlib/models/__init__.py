"""Model registry: ``create_model(name, **config)``, ``available_models()``, ``display_name(name)``.

One line per model in ``MODELS``: the module, the model class, its config dataclass and the name tables
print. Modules are imported on first use, so importing ``adlib.models`` stays light. Models hold only the
model; how each is trained in each profile (its recipe) lives in ``adlib.papers``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Mapping

from adlib.config import coerce_fields


@dataclass(frozen=True)
class ModelEntry:
    module: str
    model_class: str
    config_class: str
    display: str  # the name the papers' tables use


MODELS: dict[str, ModelEntry] = {
    "varad": ModelEntry("adlib.models.varad", "VarAD", "VarADConfig", "VarAD"),
    "patchcore": ModelEntry("adlib.models.patchcore", "PatchCore", "PatchCoreConfig", "PatchCore"),
    "ladmim": ModelEntry("adlib.models.ladmim", "LADMIM", "LADMIMConfig", "LADMIM"),
    "mambaad": ModelEntry("adlib.models.mambaad", "MambaAD", "MambaADConfig", "MambaAD"),
    "rd4ad": ModelEntry("adlib.models.rd4ad", "RD4AD", "RD4ADConfig", "RD4AD"),
    "uniad": ModelEntry("adlib.models.uniad", "UniAD", "UniADConfig", "UniAD"),
    "vitad": ModelEntry("adlib.models.vitad", "ViTAD", "ViTADConfig", "ViTAD"),
}


def available_models() -> list[str]:
    return sorted(MODELS)


def display_name(name: str) -> str:
    """The name tables print for a registered model ("varad" -> "VarAD"); unknown names are returned as is."""
    entry = MODELS.get(name)
    return entry.display if entry else name


def _entry(name: str):
    if name not in MODELS:
        raise ValueError(f"model {name!r} unknown; available: {', '.join(available_models())}")
    entry = MODELS[name]
    module = importlib.import_module(entry.module)
    return module, getattr(module, entry.model_class), getattr(module, entry.config_class)


def config_class(name: str) -> type:
    return _entry(name)[2]


def model_config(name: str, config: Any = None, **overrides: Any) -> Any:
    """The model's config dataclass: ``config`` (or the defaults) with ``overrides`` applied.

    Each override is checked against its field's type (``adlib.config``: a list becomes a tuple, ``m=2.5`` is
    refused) and the result against the model's own rules (its ``_validate``, when it has one), so a bad value
    is reported here, before any data is read or any weight is built."""
    _, model_cls, config_cls = _entry(name)
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{name}: unknown config field(s) {unknown}; valid: {sorted(known)}")
    base = config if config is not None else config_cls()
    if not is_dataclass(base) or not isinstance(base, config_cls):
        raise TypeError(f"{name}: config must be a {config_cls.__name__}")
    values = {f.name: getattr(base, f.name) for f in fields(config_cls)}
    values.update(coerce_fields([config_cls], overrides))
    built = config_cls(**values)
    validate = getattr(model_cls, "_validate", None)
    if validate is not None:
        validate(built)
    return built


def typed_overrides(name: str, overrides: Mapping[str, Any], *others: type,
                    from_text: bool = False) -> list[dict[str, Any]]:
    """``overrides`` split over the fields of model ``name``'s config and of the dataclasses ``others`` (e.g.
    ``adlib.engine.FitConfig``): one dict per class, in that order, with the overrides that class has a field
    for (a name two classes share, such as a model's ``seed``, goes to both), each value checked against its
    field's type (``from_text``: values are command-line texts, see ``adlib.config``). A name no class has is
    a ValueError listing the valid ones; a value of the wrong type a ``ConfigValueError`` naming it."""
    classes = [config_class(name), *others]
    values = coerce_fields(classes, overrides, from_text=from_text)
    return [{k: v for k, v in values.items() if k in {f.name for f in fields(cls)}} for cls in classes]


def create_model(name: str, config: Any = None, **overrides: Any):
    """Build a model by name, e.g. ``create_model("varad", m=2, adapter="resblock")``."""
    _, model_cls, _ = _entry(name)
    return model_cls(model_config(name, config, **overrides))
