"""adlib's models compute what the authors' released code computes (issue 22).

Each fixture under ``tests/fixtures/parity/`` was written by ``benchmarks/parity/make_fixtures.py`` from the
authors' own classes (their init, a reduced width or depth, a fixed input) at the commit it records. Here the
authors' state dict is loaded through ``adlib.models.authors.from_authors`` and every stage the fixture holds is
compared with what adlib's model computes, within 1e-5 relative (float32). The paper-size key listings check
that a full checkpoint maps with no missing and no unexpected key, released variants included.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adlib.models import authors

FIXTURES = Path(__file__).parent / "fixtures" / "parity"
RTOL = 1e-5


def load_fixture(name: str) -> dict:
    path = FIXTURES / f"{name}.pt"
    if not path.is_file():
        pytest.fail(f"no parity fixture {path.name}: write it with benchmarks/parity/make_fixtures.py --model {name}")
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.parametrize("name", sorted(authors.AUTHORS))
def test_every_stage_matches_the_authors_code(name):
    fixture = load_fixture(name)
    assert fixture["reference"]["commit"] and len(fixture["reference"]["commit"]) == 40
    _, differences = authors.stage_differences(fixture)  # every stage: max |ours - theirs| / max |theirs|
    assert max(differences.values()) <= RTOL, differences


@pytest.mark.parametrize("name", sorted(authors.AUTHORS))
def test_the_paper_size_checkpoint_maps_without_missing_or_unexpected_keys(name):
    path = FIXTURES / f"{name}_keys.json"
    assert path.is_file(), f"no key listing {path.name}: benchmarks/parity/make_fixtures.py --model {name} writes it"
    listing = json.loads(path.read_text())
    for variant, shapes in {"paper": listing["paper"], **listing.get("variants", {})}.items():
        config, key_map = authors.check_keys(name, {k: tuple(v) for k, v in shapes.items()},
                                             **listing.get("config", {}))
        assert key_map, f"{variant}: empty key map"


def test_a_checkpoint_that_does_not_fit_is_refused_with_the_keys_named():
    name = sorted(authors.AUTHORS)[0]
    fixture = load_fixture(name)
    state = dict(fixture["state_dict"])
    dropped = sorted(state)[0]
    del state[dropped]
    with pytest.raises(authors.AuthorsCheckpointError, match="missing"):
        authors.from_authors(name, state, **fixture["config"])
    state = {**fixture["state_dict"], "not.a.key.of.theirs": torch.zeros(1)}
    with pytest.raises(authors.AuthorsCheckpointError, match="unexpected"):
        authors.from_authors(name, state, **fixture["config"])


def test_unwrap_finds_the_state_dict_inside_a_released_file():
    state = {"a.weight": torch.zeros(2)}
    assert authors.unwrap({"net": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}).keys() == state.keys()
    with pytest.raises(authors.AuthorsCheckpointError, match="top-level keys"):
        authors.unwrap({"epoch": 3, "args": "x"})
