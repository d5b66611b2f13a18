"""Faithfulness records: how far adlib's models are from the authors' code, stage by stage (issue 22).

    PYTHONPATH=. python benchmarks/parity/faithfulness.py [--models vitad mambaad ...] [--out results/faithfulness]

For every parity fixture present (``tests/fixtures/parity/<model>.pt``, written from the authors' code by
``benchmarks/parity/make_fixtures.py``) the authors' weights are loaded through ``adlib.models.authors`` and
every stage is compared with the authors' output (largest |ours - theirs| / max |theirs|, float64):

- with the fixture's config (the authors' behaviour, switches included): one row per stage, "matches" when the
  difference is within 1e-5 (the parity test's tolerance);
- with each documented switch back at adlib's default (``SWITCHES``): one "deviates" row per switch with the
  difference it makes and why adlib's default differs;
- ``BUG_FIXES``: each bug found by the parity work, undone in-process, gives the "before" difference printed
  beside the "after" one (the fix stays recorded even though the code no longer has the bug).

Writes ``<out>/<model>.csv`` (columns component, reference_file, commit, largest_difference, status, reason)
and prints, per model, the largest difference before and after the fixes.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import sys
from pathlib import Path
from typing import Callable, Iterator
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "parity"
RTOL = 1e-5
COLUMNS = ("component", "reference_file", "commit", "largest_difference", "status", "reason")

# Which of the authors' files computes each stage (by the stage name's prefix); the fixture names them all.
STAGE_FILES: dict[str, dict[str, str]] = {
    "vitad": {"encoder": "model/vitad.py", "fuser": "model/vitad.py", "decoder": "model/vitad.py",
              "stage_map": "util/metric.py", "map": "util/metric.py", "score": "util/metric.py"},
    "mambaad": {"encoder": "model/mambaad.py", "bottleneck": "model/mambaad.py", "decoder": "model/mambaad.py",
                "map": "trainer/mambaad_trainer.py", "score": "trainer/mambaad_trainer.py"},
    "rd4ad": {"encoder": "resnet.py", "bottleneck": "resnet.py", "decoder": "de_resnet.py", "map": "test.py",
              "score": "test.py"},
    "uniad": {"encoder": "models/backbones/resnet.py", "neck": "models/necks/mfcn.py",
              "reconstruction": "models/reconstructions/uniad.py", "map": "models/reconstructions/uniad.py",
              "score": "utils/eval_helper.py"},
}

# Documented choices: config field -> why adlib's default differs from the authors' code (the fixture's config
# holds the authors' value; the row measures the default's difference).
SWITCHES: dict[str, dict[str, str]] = {
    "vitad": {"map_divisor": "ADer's cal_anomaly_map(amap_mode='add') divides the stage sum by n_stages**2 "
                             "(len(maps) * sum(weights)); adlib sums as the paper's map does: a constant factor, "
                             "no metric changes; map_divisor='ader' gives the code's scale"},
    "mambaad": {"map_divisor": "ADer's cal_anomaly_map, called by the release's trainer, divides the scale sum "
                               "by n_scales**2; adlib sums as the paper ('sum of cosine similarities'): a "
                               "constant factor, no metric changes; map_divisor='ader' gives the code's scale"},
}


@contextlib.contextmanager
def _torch_reflect_blur(module_name: str) -> Iterator[None]:
    """The maps' Gaussian as it was before the fix: PyTorch's reflect border (edge sample not repeated)."""
    from adlib.models import common

    module = importlib.import_module(module_name)
    def before(maps, sigma, padding="reflect"):
        return common.gaussian_blur(maps, sigma)

    with mock.patch.object(module, "gaussian_blur", before):
        yield


_BLUR_FIX = ("gaussian border", "the map's Gaussian padded with PyTorch's reflect (d c b | a b c d) where the "
             "reference calls scipy.ndimage.gaussian_filter, whose 'reflect' repeats the edge sample "
             "(c b a | a b c); fixed: gaussian_blur(padding='symmetric')")

# Bugs found by the parity work: (name, what was wrong and the fix, a context that undoes the fix in-process).
BUG_FIXES: dict[str, list[tuple[str, str, Callable[[], contextlib.AbstractContextManager]]]] = {
    "vitad": [(*_BLUR_FIX, lambda: _torch_reflect_blur("adlib.models.vitad"))],
    "mambaad": [(*_BLUR_FIX, lambda: _torch_reflect_blur("adlib.models.mambaad"))],
    "rd4ad": [(*_BLUR_FIX, lambda: _torch_reflect_blur("adlib.models.rd4ad"))],
}

# What the fixture cannot show, recorded with the comparison that stands for it (not measured: no number).
NOTES: dict[str, list[tuple[str, str, str, str]]] = {
    "mambaad": [("released checkpoint layout", "model/mambaad.py (zhangzjn/ADer)", "matches",
                 "MambaAD #30/#31: the released weights name the 7x7 branch's 1x1 convs conv1b3/conv1a3 and hold "
                 "an unused conv33, ADer's copy of the model; its forward is the release's 7x7 branch, so they load "
                 "renamed (authors_canonical) with conv33 ignored; key listing variant 'ader_layout' checks it")],
    "uniad": [("bug fixed: encoder EfficientNet-B4 padding", "models/backbones/efficientnet/model.py", "matches",
               "their EfficientNet (lukemelas' port) computes static 'same' padding for B4's 380 px default and "
               "keeps it at the config's 224 px: one stride-2 5x5 depthwise conv (56 -> 28 px) pads (2, 2) where "
               "timm's TF SAME at 224 px padded (1, 2); fixed: UniADConfig.static_padding_size='auto' (380 for "
               "efficientnet_b4); the padding table of their code is compared in tests/test_parity_uniad.py, the "
               "features are not (the fixture's encoder is their ResNet: B4 does not shrink to a fixture)")],
}


def relative_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    ours, theirs = ours.detach().double(), theirs.detach().double()
    if ours.shape != theirs.shape:
        return float("inf")
    scale = theirs.abs().max().item()
    diff = (ours - theirs).abs().max().item()
    return diff / scale if scale > 0 else diff


def _images(fixture: dict) -> torch.Tensor:
    images = fixture["input"]
    return images.float() / 255 if images.dtype == torch.uint8 else images


def stage_differences(name: str, fixture: dict, **overrides) -> dict[str, float]:
    from adlib.models import authors

    model = authors.from_authors(name, fixture["state_dict"], **{**fixture["config"], **overrides})
    module = importlib.import_module(model.__module__)
    with torch.no_grad():
        ours = module.authors_stages(model, _images(fixture))
    return {stage: relative_difference(ours[stage], theirs) for stage, theirs in fixture["stages"].items()}


def _file_of(name: str, stage: str, fixture: dict) -> str:
    files = STAGE_FILES.get(name, {})
    match = max((p for p in files if stage.startswith(p)), key=len, default=None)
    return files[match] if match else " ".join(fixture["reference"]["files"])


def record(name: str, fixture: dict) -> tuple[list[dict], float, float]:
    """(CSV rows, largest difference before the fixes, after)."""
    from adlib.models import model_config

    commit = fixture["reference"]["commit"]
    repository = fixture["reference"]["repository"]
    after = stage_differences(name, fixture)
    rows = [{"component": stage, "reference_file": f"{repository}:{_file_of(name, stage, fixture)}", "commit": commit,
             "largest_difference": f"{diff:.3g}", "status": "matches" if diff <= RTOL else "deviates",
             "reason": "" if diff <= RTOL else "over the 1e-5 tolerance: see tests/test_parity.py"}
            for stage, diff in after.items()]
    defaults = model_config(name)
    for field, reason in SWITCHES.get(name, {}).items():
        diffs = stage_differences(name, fixture, **{field: getattr(defaults, field)})
        worst = max(diffs, key=diffs.get)
        rows.append({"component": f"switch {field}={fixture['config'][field]!r} (default {getattr(defaults, field)!r})",
                     "reference_file": f"{repository}:{_file_of(name, worst, fixture)}", "commit": commit,
                     "largest_difference": f"{diffs[worst]:.3g}", "status": "deviates", "reason": reason})
    with contextlib.ExitStack() as stack:
        for fix_name, description, undo in BUG_FIXES.get(name, []):
            stack.enter_context(undo())
        before = stage_differences(name, fixture)
    for fix_name, description, undo in BUG_FIXES.get(name, []):
        with undo():
            diffs = stage_differences(name, fixture)
        worst = max(diffs, key=diffs.get)
        rows.append({"component": f"bug fixed: {fix_name}",
                     "reference_file": f"{repository}:{_file_of(name, worst, fixture)}", "commit": commit, "largest_difference": f"{diffs[worst]:.3g} before, {after[worst]:.3g} after",
                     "status": "matches", "reason": description})
    for component, reference_file, status, reason in NOTES.get(name, []):
        rows.append({"component": component, "reference_file": reference_file, "commit": commit,
                     "largest_difference": "not measured", "status": status, "reason": reason})
    return rows, max(before.values()), max(after.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="models to record (default: every fixture present)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "faithfulness")
    args = parser.parse_args(argv)
    from adlib.io import atomic_path

    names = args.models or sorted(p.stem for p in FIXTURES.glob("*.pt"))
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = FIXTURES / f"{name}.pt"
        if not path.is_file():
            raise SystemExit(f"--models {name}: no fixture {path}; write it with benchmarks/parity/make_fixtures.py")
        fixture = torch.load(path, map_location="cpu", weights_only=False)
        rows, before, after = record(name, fixture)
        with atomic_path(args.out / f"{name}.csv") as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        print(f"{name}: largest relative difference before the fixes {before:.3g}, after {after:.3g} "
              f"({fixture['reference']['repository']}@{fixture['reference']['commit'][:7]}; "
              f"{sum(r['status'] == 'deviates' for r in rows)} documented deviation(s)) -> {args.out / f'{name}.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
