"""The embedded logical-anomaly set (synthetic_loco): logical anomalies are global, structural ones local.

A logical anomaly must consist of normal parts only (each part's shape, size and colour occurs in normal
images); what is wrong is how they relate across the image: counts that must agree between compartments,
a colour or a direction that all parts share, a colour pair across the tray. A structural anomaly keeps a
normal arrangement and damages something locally.
"""
from __future__ import annotations

import json

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


def _angle_spread(items) -> float:
    """The largest angle (degrees) between two items' directions, on the circle."""
    angles = [i.angle for i in items]
    return max((abs((a - b + np.pi) % (2 * np.pi) - np.pi) for a in angles for b in angles), default=0.0) * 180 / np.pi


def _tray_sides(items) -> tuple[list, list]:
    return [i for i in items if i.cx < 0.5 * SIZE], [i for i in items if i.cx >= 0.5 * SIZE]


def _tray_side_rules(side, shape) -> dict:
    """What one compartment on its own must show: 2 or 3 parts of its shape, of one colour of its shape's."""
    colours = {synth.TRAY_PAIRS[k][shape == "square"] for k in range(2)}
    return {f"2 or 3 {shape}s": len(side) in synth.TRAY_COUNTS and all(i.shape == shape for i in side),
            f"one {shape} colour": len({i.colour for i in side}) == 1 and {i.colour for i in side} <= colours}


def _tray_rules(items) -> dict:
    left, right = _tray_sides(items)
    pairs = {tuple(sorted({i.colour for i in left})) + tuple(sorted({i.colour for i in right}))}
    return {**_tray_side_rules(left, "disc"), **_tray_side_rules(right, "square"),
            "as many discs as squares": len(left) == len(right),
            "a normal colour pair": pairs <= {tuple(p) for p in synth.TRAY_PAIRS}}


def _pins_per_cell(items) -> list[list]:
    return [[i for i in items if y0 * SIZE <= i.cy < y1 * SIZE and x0 * SIZE <= i.cx < x1 * SIZE]
            for y0, x0, y1, x1 in synth._pin_cells()]


def _pin_cell_rules(cell) -> dict:
    """What one compartment on its own must show: 1 or 2 pins of one colour pointing one way."""
    return {"1 or 2 pins": len(cell) in synth.PIN_COUNTS, "one colour in the compartment": len({i.colour for i in cell}) == 1,
            "one direction in the compartment": _angle_spread(cell) <= 2 * synth.PIN_JITTER + 1e-6}


def _pins_rules(items) -> dict:
    cells = _pins_per_cell(items)
    return {"as many pins in every compartment": len({len(c) for c in cells}) == 1,
            "all compartments normal": all(all(_pin_cell_rules(c).values()) for c in cells),
            "one colour": len({i.colour for i in items}) == 1,
            "one direction": _angle_spread(items) <= 2 * synth.PIN_JITTER + 1e-6}


def _compartments_normal(category, items) -> bool:
    if category == "tray":
        left, right = _tray_sides(items)
        return all(_tray_side_rules(left, "disc").values()) and all(_tray_side_rules(right, "square").values())
    return all(all(_pin_cell_rules(c).values()) for c in _pins_per_cell(items))


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
    assert len({len(items) for items in (spec.items(synth._rng(0, "normal", category, i), SIZE) for i in range(30))}) == 2, \
        "the number of parts varies between normal images (so no count is wrong on its own)"
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


# Kinds whose every compartment, seen alone, is a normal compartment: only another compartment shows what is
# wrong. ("mixed" and "turned" put the odd part in a compartment that may hold a second, normal part.)
GLOBAL_KINDS = {"tray": ("missing", "extra", "unpaired"), "pins": ("missing", "extra")}


@pytest.mark.parametrize("category", sorted(synth.LOCO_CATEGORIES))
def test_global_kinds_show_nothing_wrong_in_any_one_compartment(category):
    spec = synth.LOCO_CATEGORIES[category]
    for kind in GLOBAL_KINDS[category]:
        assert kind in spec.logical_kinds
        for i in range(6):
            items, _ = spec.logical(synth._rng(1, "logical", category, kind, i), SIZE, kind)
            assert _compartments_normal(category, items), (kind, i)
            assert not all(RULES[category](items).values()), (kind, i)


def test_kinds_file_names_every_anomalous_test_image(tmp_path):
    synth.write_loco_category(tmp_path, "pins", synth.LOCO_CATEGORIES["pins"], seed=0, size=64)
    kinds = json.loads((tmp_path / "pins" / synth.KINDS_FILE).read_text())
    images = sorted(str(p.relative_to(tmp_path / "pins" / "test")) for p in (tmp_path / "pins" / "test").rglob("*.png")
                    if p.parent.name != "good")
    assert sorted(kinds) == images
    for group, names, per in (("logical_anomalies", synth.LOCO_CATEGORIES["pins"].logical_kinds, "per_logical"),
                              ("structural_anomalies", synth.LOCO_STRUCTURAL, "per_structural")):
        values = [v for k, v in kinds.items() if k.startswith(group + "/")]
        assert {n: values.count(n) for n in names} == {n: synth.LOCO_COUNTS[per] for n in names}, group


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
