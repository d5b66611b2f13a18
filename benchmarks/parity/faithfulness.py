"""Faithfulness tables: each parity fixture's stages, the authors' outputs against adlib's, one CSV per model.

    python benchmarks/parity/faithfulness.py [--model NAME ...] [--out results/faithfulness]

For every ``tests/fixtures/parity/<model>.pt`` (written from the authors' code by ``make_fixtures.py``) the
authors' state dict is loaded by ``adlib.models.authors.from_authors`` under the fixture's config and every
stage is computed again by adlib. ``results/faithfulness/<model>.csv`` has one row per stage: ``component``,
``reference_file`` (the repository and the files compared), ``commit``, ``largest_difference`` (max |adlib -
authors| / max |authors|), ``status`` ("matches" within 1e-5 relative, else "deviates") and ``reason``: the
config switches the fixture needs that differ from adlib's defaults (a model module's ``AUTHORS_SWITCHES``;
each is a deviation documented in its docstring), or the difference that makes it deviate.
"""
from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "parity"
RTOL = 1e-5


def switches(model) -> str:
    """The model's ``AUTHORS_SWITCHES`` whose value differs from its config class's default."""
    import importlib

    names = getattr(importlib.import_module(model.__module__), "AUTHORS_SWITCHES", ())
    config = getattr(model, "config", None)
    if not is_dataclass(config):
        return ""
    default = type(config)()
    known = {f.name for f in fields(config)}
    return ", ".join(f"{n}={getattr(config, n)!r}" for n in names
                     if n in known and getattr(config, n) != getattr(default, n))


def rows(fixture: dict) -> list[dict]:
    from adlib.models import authors

    model, differences = authors.stage_differences(fixture)
    reference = fixture["reference"]
    files = "; ".join(f"{reference['repository']}/{f}" for f in reference["files"])
    also = "; ".join(f"{a['repository']}@{a['commit'][:7]}" for a in reference.get("also", []))
    used = switches(model)
    out = []
    for stage, difference in differences.items():
        ok = difference <= RTOL
        reason = (f"with {used} (adlib's defaults differ on purpose: see the model's docstring)" if used else
                  "with adlib's defaults") if ok else f"largest relative difference {difference:.2e} > {RTOL:g}"
        out.append({"component": stage, "reference_file": files + (f" (with {also})" if also else ""),
                    "commit": reference["commit"], "largest_difference": f"{difference:.3g}",
                    "status": "matches" if ok else "deviates", "reason": reason})
    return out


def main(argv: list[str] | None = None) -> int:
    from adlib.io import atomic_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="a fixture's model name (default: every fixture)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "faithfulness")
    args = parser.parse_args(argv)
    names = args.model or sorted(p.stem for p in FIXTURES.glob("*.pt"))
    status = 0
    for name in names:
        path = FIXTURES / f"{name}.pt"
        if not path.is_file():
            raise SystemExit(f"--model {name}: no fixture {path} (benchmarks/parity/make_fixtures.py writes it)")
        table = rows(torch.load(path, map_location="cpu", weights_only=False))
        target = args.out / f"{name}.csv"
        with atomic_path(target) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
        worst = max(table, key=lambda r: float(r["largest_difference"]))
        print(f"{name}: {len(table)} stages, largest difference {worst['largest_difference']} ({worst['component']}), "
              f"{sum(r['status'] == 'matches' for r in table)} match -> {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}")
        status |= any(r["status"] != "matches" for r in table)
    return status


if __name__ == "__main__":
    sys.exit(main())
