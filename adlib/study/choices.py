"""The choices a paper states or leaves open, read from a model config's comments, with the value a run uses."""
from __future__ import annotations

import inspect
from dataclasses import fields

import pandas as pd


def open_choices(model: str, setting=None, keyword: str = "paper") -> pd.DataFrame:
    """The fields of ``model``'s config whose comments mention ``keyword``: the choices the paper fixes or
    leaves open, with the value adlib uses (the config default, or, given a ``setting``, the value this
    setting's runs use: the paper's recipe for the profile plus the setting)."""
    from adlib.models import config_class

    if setting is None:
        config = config_class(model)()
    else:
        from adlib.study.grid import configs

        config = configs(setting, model)[0]
    names = {f.name for f in fields(config)}
    rows, pending = [], []
    for line in inspect.getsource(type(config)).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("# ").strip())
            continue
        head = stripped.split(":", 1)[0].strip()
        if head in names:
            note = " ".join(pending)
            if "#" in stripped:
                note = (note + " " + stripped.split("#", 1)[1].strip()).strip()
            if keyword.lower() in note.lower():
                rows.append({"field": head, "adlib": repr(getattr(config, head)), "note": note})
        pending = []
    return pd.DataFrame(rows, columns=["field", "adlib", "note"])
