"""Same seed, same inputs, same thread count: bit-identical CPU results (issue 15, item 4).

The native selective scan's threads take blocks of rows from a shared counter, so which thread runs which
rows depends on timing. Its dB/dC gradients sum over rows; they must not depend on that assignment.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from adlib import ssm

pytestmark = pytest.mark.skipif(not ssm.native_available(), reason="the native scan kernel does not build here")


class _Jittery:
    """The kernel library with a random delay before every backward block: thread timing differs per call."""

    def __init__(self, lib, seed: int):
        self.lib, self.rng = lib, random.Random(seed)

    def __getattr__(self, name):
        real = getattr(self.lib, name)
        if not name.startswith("scan_bwd"):
            return real

        def delayed(*args):
            time.sleep(self.rng.uniform(0, 0.002))
            return real(*args)

        return delayed


def _grads(B_per_batch: bool) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    batch, dim, length, nstate = 3, 96, 40, 16
    u = torch.randn(batch, dim, length, generator=gen, requires_grad=True)
    delta = torch.randn(batch, dim, length, generator=gen, requires_grad=True)
    A = (-torch.rand(dim, nstate, generator=gen)).requires_grad_()
    shape = (batch, nstate, length) if B_per_batch else (dim, nstate)
    B = torch.randn(*shape, generator=gen, requires_grad=True)
    C = torch.randn(*shape, generator=gen, requires_grad=True)
    y = ssm.selective_scan(u, delta, A, B, C, delta_softplus=True, impl="native")
    (y * torch.linspace(-1, 1, length)).sum().backward()
    return [t.grad.clone() for t in (u, delta, A, B, C)]


@pytest.mark.parametrize("B_per_batch", [True, False])
def test_scan_gradients_do_not_depend_on_thread_timing(monkeypatch, B_per_batch):
    threads = torch.get_num_threads()
    monkeypatch.setattr(ssm, "PARALLEL_MIN_WORK", 0)  # share even these small scans among threads
    torch.set_num_threads(4)  # more workers than cores: the block assignment varies most
    try:
        reference = _grads(B_per_batch)
        lib = ssm._native_library()
        for seed in range(6):
            monkeypatch.setattr(ssm, "_native_library", lambda seed=seed: _Jittery(lib, seed))
            for name, got, want in zip("u delta A B C".split(), _grads(B_per_batch), reference):
                assert torch.equal(got, want), f"d{name} differs between runs (max {float((got - want).abs().max())})"
    finally:
        torch.set_num_threads(threads)


def _fit_varad(root: Path, out: Path) -> dict:
    from adlib import engine
    from adlib.data import AnomalyDataset
    from adlib.models import create_model

    engine.seed_everything(0)
    model = create_model("varad", image_size=64, pretrained=False, d_state=8, m=1)
    train = AnomalyDataset(root, "widget", "train", image_size=64)
    engine.fit(model, train, engine.FitConfig(epochs=1, batch_size=3, seed=0, progress=False, disk_cache=False))
    torch.save(dict(model.state_dict()), out)
    return {"threads": torch.get_num_threads(), "scan": ssm.backends_used()}


CHILD = r'''
import json, random, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from adlib import ssm
import test_determinism
lib, rng = ssm._native_library(), random.Random(1)
class Jittery:  # perturb the scan threads' timing, as a busy machine does
    def __getattr__(self, name):
        real = getattr(lib, name)
        def delayed(*a):
            time.sleep(rng.uniform(0, 0.002))
            return real(*a)
        return delayed if name.startswith("scan_bwd") else real
ssm._native_library = lambda: Jittery()
print(json.dumps(test_determinism._fit_varad(Path(sys.argv[1]), Path(sys.argv[2]))))
'''


def test_two_varad_fits_are_bit_identical_at_the_default_thread_count(tmp_path, monkeypatch):
    """Two VarAD fits of the same seed, in two processes running at the same time at the default thread
    count (a fresh one with perturbed scan-thread timing, and this one), give the same state dict, bit for bit."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    good = tmp_path / "data" / "widget" / "train" / "good"
    good.mkdir(parents=True)
    (tmp_path / "data" / "widget" / "test" / "good").mkdir(parents=True)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good / f"{i}.png")
    monkeypatch.setattr(ssm, "PARALLEL_MIN_WORK", 0)  # both fits share their (small) scans among threads
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "data"), str(tmp_path / "child.pt"),
                              str(Path(__file__).parent)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "ADLIB_SCAN_PARALLEL_MIN": "0"})
    try:
        here = _fit_varad(tmp_path / "data", tmp_path / "here.pt")
    finally:
        out, err = child.communicate(timeout=600)
    assert child.returncode == 0, err[-2000:]
    there = json.loads(out.strip().splitlines()[-1])
    assert here["threads"] == there["threads"] == torch.get_num_threads()
    assert "native" in here["scan"] and "native" in there["scan"]
    first, second = torch.load(tmp_path / "here.pt"), torch.load(tmp_path / "child.pt")
    assert first.keys() == second.keys()
    differ = [k for k in first if not torch.equal(first[k], second[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[0]}"
