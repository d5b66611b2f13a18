"""benchmarks/gpu_vitad.py in its CPU dry run: the script the lent GPU will run works and reports what it says."""
import inspect
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_vitad  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_dry_run_trains_predicts_and_counts():
    out = gpu_vitad.main(dry_run=True)
    step = out["train_step"]
    assert step["batch_size"] == 2 and step["image_size"] == 64 and step["backbone"] == "efficientnet_lite0"
    assert step["train_step_s"] > 0 and math.isfinite(step["last_loss"])
    assert step["last_loss"] < step["first_loss"]  # the optimiser steps really train the decoder
    assert math.isnan(step["train_peak_mb"])  # no CUDA memory on the CPU: said as NaN, not 0
    assert step["paper"]["train_memory_mb"] == 2300.0
    assert out["inference"]["fps_batch1"] > 0 and out["inference"]["fps_batch8"] > 0
    assert 0 < out["counts"]["trainable_m"] < out["counts"]["params_m"]  # the frozen encoder is counted too


def test_gpu_check_can_call_it():
    import gpu_check

    assert "gpu_vitad" in gpu_check.PAPER_MODULES  # gpu_check calls main(dry_run=..., device=...)
    assert {"dry_run", "device"} <= set(inspect.signature(gpu_vitad.main).parameters)


def test_paper_step_uses_the_paper_recipe():
    from adlib import papers

    recipe = papers.get("vitad").recipe("vitad", "paper")
    assert recipe.model["backbone"] == "dino_vits16" and recipe.model["image_size"] == 256
    assert recipe.fit.batch_size == 8 and recipe.fit.grad_clip == 5.0
