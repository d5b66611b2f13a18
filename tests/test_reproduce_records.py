"""`adlib reproduce`: parameters checked against each notebook, --resume invalidated when a notebook starts,
leftovers of killed runs removed, output root checked first, and run records with what the kernel ran on
(CPU, threads, scan backend, weights sha256, data content fingerprints). Issue 15 items 3, 5; issue 9 item 7."""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adlib import results
from adlib.app import reproduce
from adlib.app.reproduce import ReproduceConfig

FIXTURES = Path(__file__).parent / "fixtures" / "notebooks"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
    monkeypatch.delenv("ADLIB_DATA", raising=False)
    monkeypatch.setattr(reproduce, "code_fingerprint", lambda: "fixed")  # others edit adlib meanwhile


def _config(tmp: Path, **kwargs) -> ReproduceConfig:
    notebooks = tmp / "notebooks"
    if not notebooks.exists():
        shutil.copytree(FIXTURES, notebooks, ignore=shutil.ignore_patterns("*.py"))
    data = tmp / "data"
    if not data.exists():
        rng = np.random.default_rng(0)
        for split in ("train/good", "test/good"):
            (data / "widget" / split).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(data / "widget" / split / f"{i}.png")
    defaults = dict(notebook_root=notebooks, output_root=tmp / "out", data_root=str(data), report=False)
    defaults.update(kwargs)
    return ReproduceConfig(**defaults)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------------------------------ parameters
def test_a_parameter_the_notebook_does_not_declare_fails_it_before_a_kernel_starts(tmp_path):
    config = _config(tmp_path, papers=["broken"], only="*typo*")
    start = time.time()
    (outcome,) = reproduce.reproduce(config, stream=io.StringIO()).outcomes
    assert outcome.status == "failed" and "seed passed but not declared" in outcome.error
    assert "sed" in outcome.error and time.time() - start < 20
    assert not (config.executed_dir / "broken" / "03_parameter_typo.ipynb").exists()
    assert json.loads(Path(outcome.record).read_text())["status"] == "failed"


def test_p_passes_declared_parameters_and_refuses_undeclared_ones(tmp_path):
    config = _config(tmp_path, papers=["demo", "records"], only="*0[12]_[rs]*", parameters={"category": "nosuch"})
    status = {o.label: o for o in reproduce.reproduce(config, stream=io.StringIO()).outcomes}
    assert "category passed but not declared" in status["demo/02_second"].error  # demo has no category
    # records declares it and gets it: an unknown category fails the notebook instead of running another one
    assert status["records/01_reads_data"].status == "failed"
    assert "unknown category 'nosuch'" in status["records/01_reads_data"].error


def test_cli_p_option(tmp_path):
    parser = argparse.ArgumentParser()
    reproduce.add_arguments(parser)
    args = parser.parse_args(["-p", "category", "bottle", "-p", "epochs", "2"])
    assert reproduce.config_from_args(args).parameters == {"category": "bottle", "epochs": 2}
    with pytest.raises(ValueError, match="--seed"):
        reproduce.config_from_args(parser.parse_args(["-p", "seed", "3"]))


# ------------------------------------------------------------------------------------------ resume, leftovers
def test_resume_forgets_a_success_when_the_notebook_starts_again(tmp_path, monkeypatch):
    """A rerun killed half-way (after rewriting outputs) must not be skipped by --resume: the record of the
    earlier success is dropped when the notebook starts, and the run record says "running" meanwhile."""
    import papermill

    config = _config(tmp_path, papers=["demo"], only="*02_*")
    assert [o.status for o in reproduce.reproduce(config, stream=io.StringIO()).outcomes] == ["ok"]
    index_path = config.executed_dir / reproduce.RESUME_INDEX
    assert "demo/02_second" in json.loads(index_path.read_text())
    seen = {}
    real = papermill.execute_notebook

    def spy(*args, **kwargs):  # what a kill at this moment would leave behind
        seen["index"] = json.loads(index_path.read_text())
        seen["record"] = json.loads((config.executed_dir / "demo" / "02_second.run.json").read_text())
        return real(*args, **kwargs)

    monkeypatch.setattr(papermill, "execute_notebook", spy)
    assert [o.status for o in reproduce.reproduce(config, stream=io.StringIO()).outcomes] == ["ok"]
    assert "demo/02_second" not in seen["index"]
    assert seen["record"]["status"] == "running"
    config.resume = True
    assert [o.status for o in reproduce.reproduce(config, stream=io.StringIO()).outcomes] == ["skipped"]


def test_leftovers_of_killed_runs_are_removed_on_the_next_run(tmp_path):
    config = _config(tmp_path, papers=["demo"], only="*02_*")
    dead = _dead_pid()
    stale = [config.output_root / "results/smoke/demo" / f".table1.csv.{dead}.abcd1234.tmp",
             config.output_root / "figures/smoke/demo" / f".fig2.png.{dead}.k3j4h5g6.tmp",
             config.output_root / "results/smoke/demo" / ".table9.csv.q1w2e3r4.tmp"]  # older, pid-less name
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    os.utime(stale[-1], (1, 1))
    live = config.output_root / "results/smoke/demo" / f".other.csv.{os.getpid()}.zzzz9999.tmp"
    live.write_text("being written")
    assert reproduce.reproduce(config, stream=io.StringIO()).ok
    assert not [p for p in stale if p.exists()] and live.exists()


def test_an_unwritable_output_root_is_one_line_before_any_notebook(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    parser = argparse.ArgumentParser()
    reproduce.add_arguments(parser)
    args = parser.parse_args(["--notebooks", str(FIXTURES), "--papers", "demo", "--output-root",
                              str(tmp_path / "afile" / "out"), "--data-root", str(tmp_path), "--no-report"])
    assert reproduce.main(args) == 2
    err = capsys.readouterr().err
    assert f"cannot write --output-root {tmp_path / 'afile' / 'out'}" in err and "Traceback" not in err
    assert "[1/" not in err  # no notebook started


# ------------------------------------------------------------------------------------------ run records
def test_run_record_says_what_the_kernel_ran_on(tmp_path):
    from adlib import backbones
    from adlib.data import content_fingerprint

    config = _config(tmp_path, papers=["records"])
    (outcome,) = reproduce.reproduce(config, stream=io.StringIO()).outcomes
    assert outcome.status == "ok", outcome.error
    kernel = json.loads(Path(outcome.record).read_text())["kernel"]
    assert kernel["cpu"]["model"] == results.cpu_model() and kernel["cpu"]["logical_cpus"] == os.cpu_count()
    import torch

    assert kernel["threads"]["torch"] == torch.get_num_threads()
    assert kernel["scan_backends"].get("native", 0) + kernel["scan_backends"].get("torch", 0) >= 1
    weights = backbones._package_weights_file()
    assert kernel["weights"] == {str(weights.resolve()): backbones.file_sha256(weights)}
    source = kernel["data_sources"]["data/widget"]
    assert source["splits"] == ["test"] and source["files"] == 4
    assert source["sha256"] == content_fingerprint(tmp_path / "data" / "widget")["sha256"]
    meta = json.loads((config.output_root / "results/smoke/records/table1.meta.json").read_text())
    assert meta["provenance"]["runtime"]["data_sources"]["data/widget"]["sha256"] == source["sha256"]
    assert meta["provenance"]["runtime"]["weights"] == kernel["weights"]


def test_data_fingerprints_are_portable_and_follow_the_content(tmp_path):
    from adlib.data import content_fingerprint

    _config(tmp_path)
    here = tmp_path / "data" / "widget"
    there = tmp_path / "elsewhere" / "copy"
    shutil.copytree(here, there)
    for path in there.rglob("*.png"):
        os.utime(path, (1, 1))
    assert content_fingerprint(there) == content_fingerprint(here)  # another place, other times: same
    (there / ".DS_Store").write_text("finder")  # hidden files are not content
    assert content_fingerprint(there) == content_fingerprint(here)
    png = there / "test/good/0.png"
    data = bytearray(png.read_bytes())
    data[-20] ^= 1  # same size, one byte changed, in a sampled file
    png.write_bytes(bytes(data))
    assert content_fingerprint(there) != content_fingerprint(here)
    many = content_fingerprint(here, sample_files=1)
    assert many["sampled_files"] == 1 and many["files"] == 4


@pytest.mark.slow  # starts a real VarAD notebook's kernel (imports torch, timm, the study layer): ~30 s
def test_an_unknown_category_fails_a_varad_notebook(tmp_path):
    notebook = results.repo_root() / "notebooks" / "varad" / "01_table1_datasets.ipynb"
    if "resolve_setting" not in notebook.read_text():
        pytest.skip("the VarAD notebooks do not use adlib.study.resolve_setting yet")
    config = ReproduceConfig(notebook_root=results.repo_root() / "notebooks", only="varad/01*",
                             output_root=tmp_path / "out", parameters={"category": "nosuch"}, report=False)
    (outcome,) = reproduce.reproduce(config, stream=io.StringIO()).outcomes
    assert outcome.status == "failed" and "category='nosuch'" in outcome.error
    assert not list((tmp_path / "out" / "results" / "smoke" / "varad").glob("*.csv"))
