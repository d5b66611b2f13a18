"""The papers layer: one file per paper, the only place in adlib that knows a paper.

Each module defines ``PAPER``, an ``adlib.study.spec.PaperSpec``: its tables and figures, its methods with
display names, its profiles (data, sizes, caps, seeds, ablation grids), the training recipe of every model
it runs per profile, and its claims. ``peers`` holds the recipes of the baselines the papers run beside
their own method (PatchCore, RD4AD, UniAD), from those baselines' own papers.

Adding a paper: a model file in ``adlib/models/`` (one line in its ``MODELS`` registry), a module here (one
line in ``PAPERS``), its notebooks in ``notebooks/<paper>/``, its printed numbers in
``results/paper/<paper>/`` and its tests.
"""
from __future__ import annotations

import importlib
from types import ModuleType

PAPERS: dict[str, str] = {
    "varad": "adlib.papers.varad",
    "vitad": "adlib.papers.vitad",
    "mambaad": "adlib.papers.mambaad",
    "ladmim": "adlib.papers.ladmim",
}
# Modules that hold recipes: the papers, plus the baselines' own recipes.
RECIPE_MODULES: dict[str, str] = {**PAPERS, "peers": "adlib.papers.peers"}


def available() -> list[str]:
    return sorted(PAPERS)


def _module(name: str) -> ModuleType:
    return importlib.import_module(RECIPE_MODULES[name])


def get(name: str):
    """The ``PaperSpec`` of paper ``name``."""
    if name not in PAPERS:
        raise ValueError(f"paper {name!r} unknown; expected one of {available()}")
    return _module(name).PAPER


def home(model: str) -> str:
    """The recipe module that owns ``model`` (its paper, or ``peers`` for a baseline)."""
    for name in RECIPE_MODULES:
        module = _module(name)
        owned = module.PAPER.home_models if hasattr(module, "PAPER") else tuple(getattr(module, "OWNS", ()))
        if model in owned:
            return name
    from adlib.models import available_models

    raise ValueError(f"no recipe module owns model {model!r}; registered models: {available_models()}")


def home_recipe(model: str, profile: str):
    """The recipe ``adlib run MODEL --profile PROFILE`` uses: the one of the model's own paper."""
    name = home(model)
    module = _module(name)
    recipes = module.PAPER.recipes if hasattr(module, "PAPER") else module.RECIPES
    if (model, profile) not in recipes:
        profiles = sorted(p for m, p in recipes if m == model)
        raise ValueError(f"{model}: no recipe for profile {profile!r} in adlib.papers.{name}; expected one of {profiles}")
    return recipes[(model, profile)]
