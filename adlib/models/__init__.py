"""Model registry: ``create_model(name, **config)``, ``available_models()``, ``model_profile(name, profile)``.

Each model lives in its own module with a dataclass config, the model class and a ``profile(name)`` helper.
Modules are imported on first use, so importing ``adlib.models`` stays light.
"""
from __future__ import annotations

import importlib
from dataclasses import fields, is_dataclass
from typing import Any

# name -> (module, model class, config class)
MODELS: dict[str, tuple[str, str, str]] = {
    "varad": ("adlib.models.varad", "VarAD", "VarADConfig"),
    "patchcore": ("adlib.models.patchcore", "PatchCore", "PatchCoreConfig"),
}


def available_models() -> list[str]:
    return sorted(MODELS)


def _entry(name: str):
    if name not in MODELS:
        raise ValueError(f"model {name!r} unknown; available: {', '.join(available_models())}")
    module_name, model_cls, config_cls = MODELS[name]
    module = importlib.import_module(module_name)
    return module, getattr(module, model_cls), getattr(module, config_cls)


def model_config(name: str, config: Any = None, **overrides: Any) -> Any:
    """The model's config dataclass: ``config`` (or the defaults) with ``overrides`` applied."""
    _, _, config_cls = _entry(name)
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{name}: unknown config field(s) {unknown}; valid: {sorted(known)}")
    base = config if config is not None else config_cls()
    if not is_dataclass(base) or not isinstance(base, config_cls):
        raise TypeError(f"{name}: config must be a {config_cls.__name__}")
    values = {f.name: getattr(base, f.name) for f in fields(config_cls)}
    for key, value in overrides.items():
        values[key] = tuple(value) if isinstance(value, list) else value
    return config_cls(**values)


def create_model(name: str, config: Any = None, **overrides: Any):
    """Build a model by name, e.g. ``create_model("varad", m=2, adapter="resblock")``."""
    _, model_cls, _ = _entry(name)
    return model_cls(model_config(name, config, **overrides))


def model_profile(name: str, profile: str, **overrides: Any):
    """The model's preset (``RunProfile`` with ``.model`` config and ``.fit`` engine settings)."""
    module, _, _ = _entry(name)
    return module.profile(profile, **overrides)
