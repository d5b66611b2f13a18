"""benchmarks/gpu_mambaad.py in its CPU dry run: the script the lent GPU will run works and checks what it says."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_mambaad  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_dry_run_checks_the_grouped_scan_and_a_training_step():
    out = gpu_mambaad.main(dry_run=True)
    scan = out["scan"]
    assert scan["torch"]["pass"] and set(scan["torch"]["grad_rel"]) == {"u", "delta", "A", "B", "C", "D", "delta_bias"}
    assert 0 < max(scan["torch"]["grad_rel"].values()) < 1e-4  # compared, not the same accumulated tensors
    assert "mamba_ssm" in scan  # not importable on a CPU: said so
    step = out["train_step"]
    assert step["batch_size"] == 2 and step["scan_impl"] in ("fast", "torch", "native")
    assert step["train_step_s"] > 0 and torch.isfinite(torch.tensor(step["loss"]))


def test_gpu_check_can_call_it():
    import inspect

    import gpu_check

    assert "gpu_mambaad" in gpu_check.PAPER_MODULES  # gpu_check calls main(dry_run=..., device=...)
    assert {"dry_run", "device"} <= set(inspect.signature(gpu_mambaad.main).parameters)


def test_hss_block_comparison_runs_with_two_cpu_scans():
    out = gpu_mambaad.hss_block_check(torch.device("cpu"), dry_run=True, impls=("torch", "reference"))
    assert out["pass"] and out["forward_rel"] < 1e-4
