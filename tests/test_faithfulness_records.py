"""The committed faithfulness tables (``results/faithfulness/<model>.csv``, read by the report) are what
``benchmarks/parity/faithfulness.py`` computes from the parity fixtures now: a model change that moves a stage
away from the authors' code, or a new fixture, cannot leave a stale "matches" on the report's page."""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "results" / "faithfulness"
FIXTURES = ROOT / "tests" / "fixtures" / "parity"


def _faithfulness():
    spec = importlib.util.spec_from_file_location("faithfulness", ROOT / "benchmarks" / "parity" / "faithfulness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_fixture_has_its_record():
    assert sorted(p.stem for p in FIXTURES.glob("*.pt") if not p.stem.endswith("_checkpoint")) == \
        sorted(p.stem for p in RECORDS.glob("*.csv"))


@pytest.mark.parametrize("name", sorted(p.stem for p in RECORDS.glob("*.csv")))
def test_the_record_is_what_the_fixture_gives_now(name):
    with open(RECORDS / f"{name}.csv", newline="") as handle:
        committed = list(csv.DictReader(handle))
    fixture = torch.load(FIXTURES / f"{name}.pt", map_location="cpu", weights_only=False)
    fresh = _faithfulness().rows(fixture)
    assert [r["component"] for r in committed] == [r["component"] for r in fresh]
    for old, new in zip(committed, fresh):
        for column in ("reference_file", "commit", "status", "reason"):
            assert old[column] == str(new[column]), (name, old["component"], column)
        # the difference itself may move in its last bits with the machine; the verdict may not
        assert abs(float(old["largest_difference"]) - float(new["largest_difference"])) <= 1e-5
