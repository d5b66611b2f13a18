"""Faithfulness tables: each parity fixture's stages, the authors' outputs against adlib's, one CSV per model.

    python benchmarks/parity/faithfulness.py [--model NAME ...] [--out results/faithfulness]

For every ``tests/fixtures/parity/<model>.pt`` (written from the authors' code by ``make_fixtures.py``) the
authors' state dict is loaded by ``adlib.models.authors.from_authors`` under the fixture's config and every
stage is computed again by adlib. ``results/faithfulness/<model>.csv`` has one row per stage: ``component``,
``reference_file`` (the repository and the files compared), ``commit``, ``largest_difference`` (max |adlib -
authors| / max |authors|), ``status`` ("matches" within 1e-5 relative, else "deviates") and ``reason``: the
config switches the fixture needs that differ from adlib's defaults (a model module's ``AUTHORS_SWITCHES``;
each is a deviation documented in its docstring), or the difference that makes it deviate.

``--switches`` also prints, for each of those switches set back to adlib's default alone, the largest
difference it makes (or why the authors' checkpoint then does not load): what each deviation amounts to.
A model module's ``AUTHORS_FIXES`` ({config field: its value before a bug fix the parity work made}) makes the
summary line print the largest difference before those fixes and after.
``--config KEY=VALUE`` loads with that config field changed and only prints the differences (no CSV):
adlib's behaviour before a fix, e.g. ``--model patchcore --config pool_include_pad=False``.
"""
from __future__ import annotations

import argparse
import ast
import csv
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "parity"
RTOL = 1e-5


def switches(model) -> dict:
    """The model's ``AUTHORS_SWITCHES`` whose value differs from its config class's default: {name: value}."""
    import importlib

    names = getattr(importlib.import_module(model.__module__), "AUTHORS_SWITCHES", ())
    config = getattr(model, "config", None)
    if not is_dataclass(config):
        return {}
    default = type(config)()
    known = {f.name for f in fields(config)}
    return {n: getattr(config, n) for n in names if n in known and getattr(config, n) != getattr(default, n)}


def rows(fixture: dict) -> list[dict]:
    from adlib.models import authors

    model, differences = authors.stage_differences(fixture)
    reference = fixture["reference"]
    files = "; ".join(f"{reference['repository']}/{f}" for f in reference["files"])
    also = "; ".join(f"{a['repository']}@{a['commit'][:7]}" for a in reference.get("also", []))
    used = ", ".join(f"{name}={value!r}" for name, value in switches(model).items())
    out = []
    for stage, difference in differences.items():
        ok = difference <= RTOL
        reason = (f"with {used} (adlib's defaults differ on purpose: see the model's docstring)" if used else
                  "with adlib's defaults") if ok else f"largest relative difference {difference:.2e} > {RTOL:g}"
        out.append({"component": stage, "reference_file": files + (f" (with {also})" if also else ""),
                    "commit": reference["commit"], "largest_difference": f"{difference:.3g}",
                    "status": "matches" if ok else "deviates", "reason": reason})
    return out


def before_fixes(fixture: dict) -> tuple[dict, float | None]:
    """(the model module's ``AUTHORS_FIXES``, the largest stage difference with them undone; None: no fixes)."""
    import importlib

    from adlib.models import MODELS, authors

    module = MODELS[fixture["model"]].module if fixture["model"] in MODELS else f"adlib.models.{fixture['model']}"
    fixes = getattr(importlib.import_module(module), "AUTHORS_FIXES", {})
    if not fixes:
        return {}, None
    _, differences = authors.stage_differences({**fixture, "config": {**fixture["config"], **fixes}})
    return fixes, max(differences.values())


def switch_effects(fixture: dict) -> dict[str, str]:
    """{switch: the largest stage difference with that switch at adlib's default, or the load error}."""
    from adlib.models import authors

    model, _ = authors.stage_differences(fixture)
    default = type(model.config)()
    out = {}
    for name in switches(model):
        try:
            _, differences = authors.stage_differences(
                {**fixture, "config": {**fixture["config"], name: getattr(default, name)}})
            stage = max(differences, key=differences.get)
            out[name] = f"{differences[stage]:.3g} ({stage})" + (" (no effect on these stages)" if
                                                                  differences[stage] <= RTOL else "")
        except Exception as error:  # the checkpoint no longer fits, or a stage cannot be computed
            out[name] = f"does not load: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
    return out


def main(argv: list[str] | None = None) -> int:
    from adlib.io import atomic_path
    from adlib.models import authors

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="a fixture's model name (default: every fixture)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "faithfulness")
    parser.add_argument("--switches", action="store_true", help="print what each switch back to a default changes")
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                        help="load with a config field changed (a Python literal); print only")
    args = parser.parse_args(argv)
    try:
        changed = {k: ast.literal_eval(v) for k, v in (item.split("=", 1) for item in args.config)}
    except (ValueError, SyntaxError) as error:
        raise SystemExit(f"--config {args.config}: expected KEY=VALUE with a Python literal value ({error})")
    names = args.model or sorted(p.stem for p in FIXTURES.glob("*.pt"))
    status = 0
    for name in names:
        path = FIXTURES / f"{name}.pt"
        if not path.is_file():
            raise SystemExit(f"--model {name}: no fixture {path} (benchmarks/parity/make_fixtures.py writes it)")
        fixture = torch.load(path, map_location="cpu", weights_only=False)
        if changed:
            _, differences = authors.stage_differences({**fixture, "config": {**fixture["config"], **changed}})
            print(f"{name} with {changed}: " + ", ".join(f"{k} {v:.3g}" for k, v in differences.items()))
            continue
        table = rows(fixture)
        target = args.out / f"{name}.csv"
        with atomic_path(target) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
        worst = max(table, key=lambda r: float(r["largest_difference"]))
        fixes, before = before_fixes(fixture)
        print(f"{name}: {len(table)} stages, largest difference {worst['largest_difference']} ({worst['component']}), "
              f"{sum(r['status'] == 'matches' for r in table)} match -> {target}"
              + (f"; before the parity fixes ({fixes}): {before:.3g}" if fixes else ""))
        status |= any(r["status"] != "matches" for r in table)
        if args.switches:
            for switch, effect in switch_effects(fixture).items():
                print(f"  {switch} at adlib's default: {effect}")
    return status


if __name__ == "__main__":
    sys.exit(main())
