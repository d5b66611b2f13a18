"""Test images and the maps every method gives them, for figures (the papers' qualitative comparisons)."""
from __future__ import annotations

from typing import Mapping, Sequence

from adlib.study.setting import dataset_labels, spread


def pick_examples(test, k: int = 3, anomalous: bool = True) -> list[int]:
    """k indices of the test set, spread over its anomalous (or good) images."""
    pool = [i for i, y in enumerate(dataset_labels(test)) if (y != 0) == anomalous]
    return [pool[i] for i in spread(len(pool), k)]


def example_maps(runs: Mapping[str, object], k: int = 3, indices: Sequence[int] | None = None,
                 category: str | None = None):
    """(images, masks, {name: maps}) for the same k test images under each run.

    The images and masks come from the first run's test set (``category`` for a multi-class run); runs at
    other resolutions are matched by image path and their maps are shown at their own resolution.
    """
    import torch

    runs = dict(runs)
    if not runs:
        raise ValueError("example_maps: no runs given")
    first_test = next(iter(runs.values())).test_set(category)
    indices = list(indices) if indices is not None else pick_examples(first_test, k)
    items = [first_test[i] for i in indices]
    images = [item["image"] for item in items]
    masks = [item["mask"][0] for item in items]
    maps = {}
    for name, run in runs.items():
        test = run.test_set(category)
        by_path = {str(test[i]["path"]): i for i in range(len(test))} if test is not first_test else None
        own = [test[by_path[str(item["path"])]]["image"] if by_path else item["image"] for item in items]
        device = next(run.model.parameters()).device
        with torch.no_grad():
            pred = run.model.predict(torch.stack(own).to(device))
        maps[name] = [m.cpu() for m in pred.maps]
    return images, masks, maps


def examples_by_source(runs: Mapping[tuple, object], k: int = 2, seed: int | None = None):
    """For each data source, k anomalous test images with every method's map on them.

    ``runs`` is the ``keep`` dict of ``run_grid`` (keys (model, label, source name, seed)); ``seed`` picks one
    seed's runs (default: the smallest). Returns images, masks, {method: maps} and row labels."""
    images, masks, labels, maps = [], [], [], {}
    seeds = sorted({key[3] for key in runs})
    seed = seeds[0] if seed is None and seeds else seed
    by_source: dict[str, dict[str, object]] = {}
    for key, run in runs.items():
        if key[3] == seed:
            by_source.setdefault(run.source.name, {})[run.method] = run
    for name, group in by_source.items():
        imgs, msks, mps = example_maps(group, k)
        images += imgs
        masks += msks
        labels += [name] * len(imgs)
        for method, stack in mps.items():
            maps.setdefault(method, []).extend(stack)
    return images, masks, maps, labels
