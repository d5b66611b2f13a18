"""The embedded logical-anomaly set (synthetic_loco): logical anomalies are global, structural ones local.

A logical anomaly must consist of normal parts only (each part's shape, size and colour occurs in normal
images); what is wrong is the count, the place (compartment) or the combination. A structural anomaly keeps
a normal arrangement and damages something locally.
"""
from __future__ import annotations

import numpy as np
import pytest

from adlib.data import synth

SIZE = 96


def _part(item: synth.Item) -> tuple:
    return item.shape, round(item.size, 6), item.colour


def _normal_parts(category: str, count: int = 40) -> set:
    spec = synth.LOCO_CATEGORIES[category]
    parts = set()
    for i in range(count):
        parts |= {_part(item) for item in spec.items(synth._rng(0, "normal", category, i), SIZE)}
    return parts


def _tray_rules(items) -> dict:
    left = [i for i in items if i.cx < 0.5 * SIZE]
    right = [i for i in items if i.cx >= 0.5 * SIZE]
    return {"three discs on the left": len(left) == 3 and all(i.shape == "disc" for i in left),
            "two squares on the right": len(right) == 2 and all(i.shape == "square" for i in right),
            "one square colour": len({i.colour for i in items if i.shape == "square"}) == 1}


def _pins_rules(items) -> dict:
    cells = synth._pin_cells()
    per_cell = [sum(y0 * SIZE <= i.cy < y1 * SIZE and x0 * SIZE <= i.cx < x1 * SIZE for i in items)
                for y0, x0, y1, x1 in cells]
    return {"one pin per compartment": per_cell == [1] * 6, "one colour": len({i.colour for i in items}) == 1}


RULES = {"tray": _tray_rules, "pins": _pins_rules}


@pytest.mark.parametrize("category", sorted(synth.LOCO_CATEGORIES))
def test_normal_scenes_follow_the_rules_and_vary(category):
    spec = synth.LOCO_CATEGORIES[category]
    colours, centres = set(), []
    for i in range(30):
        items = spec.items(synth._rng(0, "normal", category, i), SIZE)
        assert all(RULES[category](items).values()), (category, i, RULES[category](items))
        colours |= {i.colour for i in items}
        centres.append(items[0].cy)
    assert len(colours) >= 2, "the colour of a part group varies between normal images"
    assert np.std(centres) > 0.05 * SIZE, "parts lie anywhere in their compartment, not in fixed slots"


@pytest.mark.parametrize("category", sorted(synth.LOCO_CATEGORIES))
def test_logical_anomalies_are_normal_parts_wrongly_combined(category):
    spec = synth.LOCO_CATEGORIES[category]
    normal = _normal_parts(category)
    for kind in spec.logical_kinds:
        for i in range(6):
            items, masks = spec.logical(synth._rng(1, "logical", category, kind, i), SIZE, kind)
            assert {_part(item) for item in items} <= normal, (kind, "every part is a normal part")
            assert not all(RULES[category](items).values()), (kind, "the arrangement breaks a rule")
            assert masks and all(m.any() for m in masks), kind


@pytest.mark.parametrize("category", sorted(synth.LOCO_CATEGORIES))
def test_structural_anomalies_keep_the_arrangement_and_change_only_the_mask(category):
    spec = synth.LOCO_CATEGORIES[category]
    for k, defect in enumerate(synth.LOCO_STRUCTURAL):
        rng = synth._rng(2, "structural", category, k)
        state = synth._rng(2, "structural", category, k)
        items = spec.items(state, SIZE)
        clean = spec.scene(state, SIZE, items)
        assert all(RULES[category](items).values())
        img, mask = synth._structural(spec, rng, SIZE, defect)
        changed = np.abs(img - clean).max(axis=2) > 0
        assert mask.any() and not (changed & ~mask).any(), defect
        assert changed.sum() >= 0.3 * mask.sum(), defect


def test_unknown_logical_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown logical anomaly"):
        synth.LOCO_CATEGORIES["tray"].logical(synth._rng(0), SIZE, "nope")
