"""`adlib reproduce` on tiny fixture notebooks (tests/fixtures/notebooks): each execution starts a real kernel."""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from adlib import results
from adlib.app import reproduce
from adlib.app.reproduce import ReproduceConfig

FIXTURES = Path(__file__).parent / "fixtures" / "notebooks"


@pytest.fixture(autouse=True)
def _no_real_data(monkeypatch):
    monkeypatch.delenv("ADLIB_DATA", raising=False)  # the data fingerprint covers only the test's data folder


def _config(tmp: Path, **kwargs) -> ReproduceConfig:
    notebooks = tmp / "notebooks"
    if not notebooks.exists():
        shutil.copytree(FIXTURES, notebooks, ignore=shutil.ignore_patterns("*.py"))
    (tmp / "data").mkdir(exist_ok=True)
    (tmp / "data" / "x.txt").write_text("data")
    defaults = dict(notebook_root=notebooks, output_root=tmp / "out", data_root=str(tmp / "data"), report=False)
    defaults.update(kwargs)
    return ReproduceConfig(**defaults)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    paper = tmp / "out" / "results" / "paper" / "demo"
    paper.mkdir(parents=True)
    pd.DataFrame({"dataset": ["MVTec AD"], "method": ["Demo"], "setting": ["default"], "level": ["image"],
                  "metric": ["auroc"], "value": [91.0]}).to_csv(paper / "table1.csv", index=False)
    config = _config(tmp, papers=["demo"], jobs=2, report=True, paper_root=tmp / "out")
    stream = io.StringIO()
    summary = reproduce.reproduce(config, stream=stream)
    return config, summary, stream.getvalue()


def test_discover_sorts_and_filters():
    labels = [f"{p.parent.name}/{p.stem}" for p in reproduce.discover(FIXTURES)]
    assert labels == ["broken/01_raises", "broken/02_missing_output", "broken/03_parameter_typo",
                      "demo/01_table_and_figure", "demo/02_second", "records/01_reads_data", "slow/01_sleeps"]
    assert [p.stem for p in reproduce.discover(FIXTURES, papers=["demo"])] == ["01_table_and_figure", "02_second"]
    assert [p.stem for p in reproduce.discover(FIXTURES, only="demo/02*")] == ["02_second"]
    assert [p.stem for p in reproduce.discover(FIXTURES, only="missing")] == ["02_missing_output"]
    assert reproduce.discover(FIXTURES / "nowhere") == []


def test_metadata_outputs_are_substituted_and_checked(tmp_path):
    title, outputs = reproduce.notebook_metadata(FIXTURES / "demo" / "01_table_and_figure.ipynb", "paper")
    assert title == "Demo: a table and a figure"
    assert outputs == ["results/paper/demo/table1.csv", "figures/paper/demo/fig1.png"]
    bad = json.loads((FIXTURES / "demo" / "02_second.ipynb").read_text())
    bad["metadata"]["adlib"]["outputs"] = ["../outside.csv"]
    (tmp_path / "01_bad.ipynb").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="relative to the output root"):
        reproduce.notebook_metadata(tmp_path / "01_bad.ipynb", "smoke")


def test_run_writes_outputs_records_and_report(demo_run):
    config, summary, progress = demo_run
    assert summary.ok, summary.text()
    out = config.output_root
    for rel in ["results/smoke/demo/table1.csv", "figures/smoke/demo/fig1.png", "figures/smoke/demo/fig2.png"]:
        assert (out / rel).exists(), rel
    executed = config.executed_dir / "demo"
    record = json.loads((executed / "01_table_and_figure.run.json").read_text())
    assert record["status"] == "ok" and record["seed"] == 0 and record["device"] == "cpu"
    assert record["parameters"]["output_root"] == str(out.resolve())
    assert set(record["written_files"]) >= {"results/smoke/demo/table1.csv", "figures/smoke/demo/fig1.png"}
    assert record["provenance"]["packages"]["pandas"] == pd.__version__
    assert record["kernel_python"] == sys.executable and record["data_fingerprint"]
    assert record["start"] <= record["end"]
    # the kernel got the parameters: the executed notebook has papermill's injected cell
    nb = json.loads((executed / "01_table_and_figure.ipynb").read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and str(out.resolve()) in "".join(injected[0]["source"])
    assert not list(config.executed_dir.glob(".partial/*")), "temporary execution folders are cleaned up"
    assert "[2/2]" in progress and "demo/02_second" in progress and "elapsed" in progress
    assert (out / "results/smoke/REPORT.md").exists() and (out / "results/smoke/site/index.html").exists()
    assert summary.report == out / "results/smoke/REPORT.md"
    text = summary.report.read_text()  # "demo" has no paper spec: the cell stands beside the paper's, no difference
    assert "| MVTec AD · AUROC (%) |" in text and "| 90.0 (91.0)" in text and "**Δ" not in text


def test_failures_are_reported_and_do_not_stop_the_others(tmp_path):
    config = _config(tmp_path, papers=["broken", "demo"], only="*/0[12]_[rs]*")  # 01_raises and 02_second
    summary = reproduce.reproduce(config, stream=io.StringIO())
    status = {o.label: o for o in summary.outcomes}
    assert status["demo/02_second"].status == "ok"
    failed = status["broken/01_raises"]
    assert failed.status == "failed" and failed.error == "ValueError: on purpose"
    assert 'raise ValueError("on purpose")' in failed.cell
    text = summary.text()
    assert "FAILED broken/01_raises" in text and "on purpose" in text and "In [" in text
    assert not summary.ok
    record = json.loads(Path(failed.record).read_text())
    assert record["status"] == "failed" and "ValueError" in record["error"]
    assert (config.executed_dir / "broken" / "01_raises.ipynb").exists(), "the failed notebook is kept to inspect"
    index = json.loads((config.executed_dir / reproduce.RESUME_INDEX).read_text())
    assert "broken/01_raises" not in index and "demo/02_second" in index


def test_missing_declared_output_fails(tmp_path):
    config = _config(tmp_path, papers=["broken"], only="*missing*")
    (outcome,) = reproduce.reproduce(config, stream=io.StringIO()).outcomes
    assert outcome.status == "failed" and outcome.missing == ["results/smoke/broken/never.csv"]
    assert "declared outputs not written" in outcome.error


def test_code_fingerprint_follows_the_library_source(tmp_path):
    package = tmp_path / "adlib"
    package.mkdir()
    (package / "app").mkdir()
    (package / "models.py").write_text("x = 1")
    (package / "app" / "report.py").write_text("r = 1")
    before = reproduce.code_fingerprint(package)
    (package / "app" / "report.py").write_text("r = 2")  # the runner itself does not change results
    assert reproduce.code_fingerprint(package) == before
    (package / "models.py").write_text("x = 2")
    assert reproduce.code_fingerprint(package) != before


def test_resume_skips_unchanged_and_reruns_what_changed(tmp_path, monkeypatch):
    # other people editing adlib while this test runs must not look like a code change
    monkeypatch.setattr(reproduce, "code_fingerprint", lambda: "fixed")
    config = _config(tmp_path, papers=["demo"], resume=True)
    first = reproduce.reproduce(config, stream=io.StringIO())
    assert [o.status for o in first.outcomes] == ["ok", "ok"]

    start = time.time()
    second = reproduce.reproduce(config, stream=io.StringIO())
    assert [o.status for o in second.outcomes] == ["skipped", "skipped"] and second.ok
    assert time.time() - start < 5

    notebook = config.notebook_root / "demo" / "02_second.ipynb"
    nb = json.loads(notebook.read_text())
    nb["cells"].append({"cell_type": "code", "execution_count": None, "id": "extra", "metadata": {},
                        "outputs": [], "source": "z = 3"})
    notebook.write_text(json.dumps(nb))
    third = reproduce.reproduce(config, stream=io.StringIO())
    assert [o.status for o in third.outcomes] == ["skipped", "ok"]

    index = reproduce.ResumeIndex(config.executed_dir / reproduce.RESUME_INDEX)
    job = reproduce.plan(config, reproduce.discover(config.notebook_root, ["demo"]))[0]
    assert index.is_current(job)
    (config.output_root / "figures/smoke/demo/fig1.png").unlink()  # a deleted output is made again
    assert not index.is_current(job)

    (tmp_path / "data" / "new.txt").write_text("more data")  # a data change re-runs
    config.only = "*02_*"
    assert [o.status for o in reproduce.reproduce(config, stream=io.StringIO()).outcomes] == ["ok"]

    config.seed, config.only = 1, "*01_*"  # a parameter change re-runs
    assert [o.status for o in reproduce.reproduce(config, stream=io.StringIO()).outcomes] == ["ok"]
    table = results.read_table("demo", "table1", profile="smoke", root=config.output_root)
    assert table["value"].iloc[0] == 91.0  # the notebook saw seed=1


@pytest.mark.slow  # waits for a kernel to start and write, then kills it: ~10-25 s on a busy 2-core machine
def test_killed_run_leaves_no_partial_files(tmp_path):
    config = _config(tmp_path, papers=["slow"])
    code = ("import sys; from pathlib import Path; from adlib.app.reproduce import ReproduceConfig, reproduce; "
            f"reproduce(ReproduceConfig(notebook_root=Path({str(config.notebook_root)!r}), "
            f"output_root=Path({str(config.output_root)!r}), data_root={config.data_root!r}, report=False))")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    early = config.output_root / "results/smoke/slow/early.csv"
    try:
        deadline = time.time() + 60
        while not early.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert early.exists(), "the slow notebook never wrote its first table"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the runner and its kernel, like a Ctrl-C gone wrong
        proc.wait()
    written = [p for p in config.output_root.rglob("*") if p.is_file() and ".partial" not in p.parts]
    assert not [p for p in written if p.name.endswith(".tmp")]
    assert not (config.executed_dir / "slow" / "01_sleeps.ipynb").exists()
    assert pd.read_csv(early)["value"].notna().all()  # what was written is complete
    index = reproduce.ResumeIndex(config.executed_dir / reproduce.RESUME_INDEX)
    (job,) = reproduce.plan(config, reproduce.discover(config.notebook_root, ["slow"]))
    assert not index.is_current(job), "a killed notebook is not skipped by --resume"


def test_time_budget_defers_notebooks_and_the_run_does_not_pass(tmp_path):
    config = _config(tmp_path, papers=["demo"], time_budget=0)
    summary = reproduce.reproduce(config, stream=io.StringIO())
    assert [o.status for o in summary.outcomes] == ["deferred", "deferred"] and not summary.failed
    assert not summary.ok  # not started is a defect, never a pass (the command exits 1)
    assert "2 not started (time budget spent" in summary.text() and "Not a pass" in summary.text()
    assert not (config.executed_dir / "demo").exists()


def test_dask_executor_on_a_local_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp://",
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        config = _config(tmp_path, papers=["demo"], only="*02_*", executor="dask",
                         scheduler=cluster.scheduler_address)
        summary = reproduce.reproduce(config, stream=io.StringIO())
    assert summary.ok and [o.status for o in summary.outcomes] == ["ok"]
    assert (config.output_root / "figures/smoke/demo/fig2.png").exists()
    assert json.loads((config.executed_dir / "demo" / "02_second.run.json").read_text())["status"] == "ok"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    reproduce.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_with_no_notebooks_exits_non_zero(tmp_path, capsys):
    (tmp_path / "notebooks").mkdir()
    code = reproduce.main(_parse(["--notebooks", str(tmp_path / "notebooks"), "--output-root", str(tmp_path)]))
    assert code == 1 and "no notebooks found" in capsys.readouterr().err


def test_cli_rejects_bad_options(tmp_path, capsys):
    assert reproduce.main(_parse(["--jobs", "0", "--notebooks", str(tmp_path)])) == 2
    assert "jobs" in capsys.readouterr().err
    args = _parse(["--executor", "dask", "--notebooks", str(FIXTURES), "--papers", "demo",
                   "--output-root", str(tmp_path), "--data-root", str(tmp_path)])
    assert reproduce.main(args) == 2 and "--scheduler" in capsys.readouterr().err


def test_cli_report_only_uses_the_repository_paper_tables(tmp_path, capsys):
    code = reproduce.main(_parse(["--report-only", "--output-root", str(tmp_path), "--notebooks", str(FIXTURES)]))
    assert code == 0 and (tmp_path / "results/smoke/site/index.html").exists()
    if list((results.repo_root() / "results" / "paper").glob("*/*.csv")):
        assert "Paper only: printed tables not reproduced here" in (tmp_path / "results/smoke/REPORT.md").read_text()


def test_sweep_partial_keeps_a_concurrent_runs_folders(tmp_path):
    import os
    import subprocess

    from adlib.app.reproduce import sweep_partial

    dead = subprocess.Popen(["true"])
    dead.wait()
    partial = tmp_path / ".partial"
    mine = partial / f"{os.getpid()}-varad-00-abc"
    gone = partial / f"{dead.pid}-varad-01-def"
    legacy = partial / "varad-02-ghi"  # an older version's name, without a pid
    for folder in (mine, gone, legacy):
        folder.mkdir(parents=True)
        (folder / "written.jsonl").write_text("{}\n")
    removed = sweep_partial(partial)
    assert sorted(removed) == sorted([gone, legacy])
    assert mine.is_dir() and (mine / "written.jsonl").exists()


def test_parallel_notebooks_share_the_cores():
    from adlib.app.reproduce import kernel_threads

    assert kernel_threads(1, cores=2) is None  # one at a time: the kernel keeps every core
    assert kernel_threads(2, cores=2) == 1
    assert kernel_threads(3, cores=8) == 2
    assert kernel_threads(4, cores=2) == 1  # never 0
