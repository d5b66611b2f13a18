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
    """For each data source, and each category of a multi-class run, k anomalous test images with every
    method's map on them (so a grid shows every category the runs evaluated, k rows each).

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
        first = next(iter(group.values()))
        categories = [s.category for s in first.sources] if isinstance(first.test, dict) else [None]
        for category in categories:
            imgs, msks, mps = example_maps(group, k, category=category)
            images += imgs
            masks += msks
            labels += [f"{first.dataset_name}/{category}" if category else name] * len(imgs)
            for method, stack in mps.items():
                maps.setdefault(method, []).extend(stack)
    return images, masks, maps, labels


def peak_hits(run, category: str | None = None, dilate: int = 8, batch_size: int = 8):
    """Does each defective test image's map peak inside its defect? One row per defective image of ``run``:
    ``index`` (in the test set), ``defect`` type, ``score`` (the image score), ``peak_in_defect`` (the map's
    maximum lies within ``dilate`` px of the ground-truth mask) and ``contrast`` (mean map inside the mask over
    mean map outside it). The honest way to pick "an example where the error marks the defect": take a row
    with ``peak_in_defect`` true, and say how many rows there are."""
    import pandas as pd
    import torch
    import torch.nn.functional as F

    test = run.test_set(category)
    pool = [i for i, y in enumerate(dataset_labels(test)) if y != 0]
    device = next(run.model.parameters()).device
    rows = []
    for start in range(0, len(pool), batch_size):
        items = [test[i] for i in pool[start:start + batch_size]]
        with torch.no_grad():
            pred = run.model.predict(torch.stack([it["image"] for it in items]).to(device))
        for i, item, amap, score in zip(pool[start:start + batch_size], items, pred.maps.cpu(), pred.scores.cpu()):
            mask = item["mask"][0] > 0.5
            near = F.max_pool2d(mask[None, None].float(), 2 * dilate + 1, stride=1, padding=dilate)[0, 0] > 0
            peak = int(amap.flatten().argmax())
            inside = float(amap[mask].mean()) if mask.any() else float("nan")
            outside = float(amap[~mask].mean()) if (~mask).any() else float("nan")
            rows.append({"index": i, "defect": item.get("defect", ""), "score": float(score),
                         "peak_in_defect": bool(near.flatten()[peak]), "contrast": inside / max(outside, 1e-12)})
    return pd.DataFrame(rows, columns=["index", "defect", "score", "peak_in_defect", "contrast"])
