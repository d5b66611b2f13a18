"""benchmarks/gpu_check.py's path_check step: it runs `adlib reproduce --profile paper --check` on the device in a
subprocess with a time limit and reports each notebook's status and seconds; a dry run checks it on the CPU."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_check  # noqa: E402

SUMMARY = """PATH CHECK: NOT RESULTS: the paper profile's code path at a cut scale
2 notebooks in 0:01:10: 1 ran ok, 0 unchanged (skipped), 1 failed
time per notebook (path check):
      52.1 s  ok       varad/01_table1_datasets  (kernel CPU 40 s)
      18.0 s  failed   vitad/00_method
  FAILED vitad/00_method: ValueError: boom
"""


def test_path_check_runs_the_check_on_the_device_and_parses_the_times(monkeypatch):
    seen = {}

    def fake_run(command, **kwargs):
        seen["command"], seen["timeout"] = command, kwargs["timeout"]
        return subprocess.CompletedProcess(command, 1, stdout=SUMMARY, stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    out = gpu_check.path_check(torch.device("cuda"), dry_run=False, limit_s=300)
    command = seen["command"]
    assert command[1:6] == ["-m", "adlib", "reproduce", "--profile", "paper"] and "--check" in command
    assert command[command.index("--device") + 1] == "cuda" and seen["timeout"] == 300
    assert "--only" not in command  # every notebook on the device
    assert out["notebooks"] == {"varad/01_table1_datasets": {"status": "ok", "seconds": 52.1},
                                "vitad/00_method": {"status": "failed", "seconds": 18.0}}
    assert out["returncode"] == 1 and "boom" in out["tail"] and "not results" in out["note"]
    gpu_check.path_check(torch.device("cpu"), dry_run=True)
    assert seen["command"][-2:] == ["--only", gpu_check.PATH_CHECK_DRY_ONLY]


def test_path_check_says_what_is_missing_without_the_notebook_runner(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "papermill" else real(name))
    out = gpu_check.path_check(torch.device("cuda"), dry_run=False)
    assert "papermill" in out["skipped"] and "wheels" in out["skipped"]


@pytest.mark.slow
def test_dry_run_of_the_path_check_on_the_cpu():
    out = gpu_check.path_check(torch.device("cpu"), dry_run=True)
    assert out["returncode"] == 0, out.get("tail")
    assert out["notebooks"]["varad/01_table1_datasets"]["status"] == "ok"
