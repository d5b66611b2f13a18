"""`python -m adlib reproduce`: execute the notebook collection with papermill and build the report.

Notebooks are `notebooks/<paper>/NN_<topic>.ipynb`. Each declares the files it writes in its metadata:

    metadata["adlib"] = {"title": "...", "outputs": ["results/{profile}/varad/table2.csv", ...]}

(paths relative to the output root, `{profile}` substituted). A notebook fails when a cell raises or when a
declared output was not written during the run. A failure does not stop the others; the summary names the
notebook, the failing cell and its error, and the command exits non-zero.

Layout under `results/<profile>/executed/`: `<paper>/<notebook>.ipynb` (executed), `<paper>/<notebook>.run.json`
(run record), `resume.json` (input key of every successful run, for `--resume`).

`--check` runs a profile's path check: the notebooks get the profile "<profile>-check" (outputs under
`results/<profile>-check/` and `figures/<profile>-check/`, never `results/paper/`, which holds the papers'
printed numbers), whose settings are the profile's with only the scale cut (`adlib.study.spec.PathCheck`).
Every executed notebook, run record and the report say "path check: not results"; the time of each notebook
is printed at the end. `--plan` prints, before anything runs, what each selected notebook needs (datasets,
weights, estimated GPU hours from the paper's own training times) and what is missing here.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from adlib import results
from adlib.app.notebooks import NOTEBOOK_NAME, discover, notebook_metadata  # noqa: F401 (re-exported)

EXECUTED_DIR = "executed"
# What every notebook's parameters cell declares (adlib reproduce passes them all).
STANDARD_PARAMETERS = ("profile", "data_root", "device", "seed", "output_root")
RESUME_INDEX = "resume.json"
PARTIAL_DIR = ".partial"
# Set in every kernel unless the caller's environment sets it. OpenMP workers that spin between operations
# take the cores from everything else the kernel runs (the selective scan's threads, data loading) and from
# other processes; passive waiting costs a wake-up per parallel region instead.
KERNEL_ENV_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


# ----------------------------------------------------------------------------------------- profiles
@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    device: str  # "auto": cuda when torch sees a GPU, else cpu


PROFILES = {
    "smoke": Profile("smoke", "2-core CPU in minutes: embedded synthetic data (+ real bottle), offline backbone",
                     "cpu"),
    "paper": Profile("paper", "the papers' settings on a GPU: 1024 px, DINOv2 ViT-S/14, full datasets", "auto"),
}


# Profiles with a path check (``--check``): the smoke profile is already sized for a CPU.
CHECKED_PROFILES = ("paper",)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ----------------------------------------------------------------------------------------- config
@dataclass
class ReproduceConfig:
    profile: str = "smoke"
    papers: list[str] | None = None
    only: str | None = None
    resume: bool = False
    jobs: int = 1
    executor: str = "local"
    scheduler: str | None = None
    notebook_root: Path = field(default_factory=lambda: results.repo_root() / "notebooks")
    output_root: Path = field(default_factory=results.repo_root)
    paper_root: Path = field(default_factory=results.repo_root)  # holds results/paper/<paper>/*.csv
    data_root: str | None = None
    device: str | None = None  # None: the profile's device
    seed: int = 0
    cell_timeout: float | None = None
    time_budget: float | None = None  # seconds; notebooks not started by then are deferred (the run does not pass)
    report: bool = True
    # More notebook parameters (``-p NAME VALUE``), passed to every selected notebook; each must be declared
    # in the notebook's parameters cell, like the standard ones.
    parameters: dict[str, Any] = field(default_factory=dict)
    check: bool = False  # run the profile's path check ("<profile>-check"), see the module docstring

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"profile {self.profile!r}: expected one of {sorted(PROFILES)}")
        if self.check and self.profile not in CHECKED_PROFILES:
            raise ValueError(f"--check: profile {self.profile!r} has no path check; expected one of "
                             f"{sorted(CHECKED_PROFILES)}")
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs}")
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor {self.executor!r}: expected one of {sorted(EXECUTORS)}")
        if self.executor == "dask" and not self.scheduler:
            raise ValueError("--executor dask needs --scheduler ADDRESS (e.g. tcp://127.0.0.1:8786)")
        self.notebook_root = Path(self.notebook_root)
        self.output_root = Path(self.output_root)
        clash = sorted(set(self.parameters) & set(STANDARD_PARAMETERS))
        if clash:
            raise ValueError(f"-p {clash[0]}: set it with its own option (--{clash[0].replace('_', '-')}), not -p")

    @property
    def run_profile(self) -> str:
        """The profile the notebooks get and the output folders are named after: "paper-check" for a check."""
        from adlib.study.spec import CHECK_SUFFIX

        return self.profile + CHECK_SUFFIX if self.check else self.profile

    @property
    def executed_dir(self) -> Path:
        return self.output_root / "results" / self.run_profile / EXECUTED_DIR


# ----------------------------------------------------------------------------------------- jobs
@dataclass
class Job:
    """One notebook to execute; everything a (possibly remote) worker needs, all picklable."""
    paper: str
    name: str
    notebook: str
    executed: str
    record: str
    title: str
    outputs: list[str]
    parameters: dict
    key: str
    output_root: str
    data_fingerprint: str
    code_fingerprint: str = ""
    cell_timeout: float | None = None
    # Threads each kernel's torch/OpenMP may use (OMP_NUM_THREADS); None: the library default (all cores).
    threads: int | None = None

    @property
    def label(self) -> str:
        return f"{self.paper}/{self.name}"


@dataclass
class Outcome:
    label: str
    status: str  # "ok", "failed", "skipped" (unchanged, --resume) or "deferred" (time budget spent)
    seconds: float = 0.0
    error: str | None = None
    cell: str | None = None  # the failing cell as Jupyter shows it: 'In [3] (cell 4): first line of source'
    missing: list[str] = field(default_factory=list)
    record: str | None = None
    key: str | None = None
    cpu_seconds: float | None = None  # the kernel's CPU time (user + system), when notebooks ran one at a time


# ----------------------------------------------------------------------------------------- fingerprints
def data_roots(data_root: str | None) -> list[Path]:
    """The folders a run reads: `data_root`, or the embedded synthetic data; plus `$ADLIB_DATA` when set."""
    roots = []
    if data_root is not None:
        roots.append(Path(data_root))
    else:
        try:
            from adlib.data import synthetic_root
        except ImportError:
            synthetic_root = None
        if synthetic_root is not None:
            try:
                roots.append(Path(synthetic_root()))  # generated once here, before notebooks run in parallel
            except Exception as exc:  # the notebooks will meet the same problem and report it themselves
                print(f"adlib reproduce: could not prepare the synthetic data: {exc}", file=sys.stderr)
    if os.environ.get("ADLIB_DATA"):
        roots.append(Path(os.environ["ADLIB_DATA"]))
    return roots


def data_fingerprint(roots: Iterable[Path]) -> str:
    """Hash of the file listing (relative path, size, mtime) of each root: cheap even for large datasets."""
    digest = hashlib.sha256()
    for root in roots:
        digest.update(f"root:{Path(root).resolve()}\n".encode())
        if not Path(root).exists():
            digest.update(b"missing\n")
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath, name)
                try:
                    stat = path.stat()
                except OSError:
                    continue
                digest.update(f"{path.relative_to(root)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


# Modules that run the collection but cannot change what a notebook computes.
RUNNER_MODULES = {"app/reproduce.py", "app/report.py", "app/cli.py", "app/notebooks.py", "__main__.py"}


def code_fingerprint(package: Path | None = None) -> str:
    """adlib's version plus a hash of its source files (runner modules aside): a change to the library
    re-runs the notebooks on --resume, even when the version number did not move."""
    from adlib import __version__

    package = Path(package) if package is not None else Path(results.__file__).parent
    digest = hashlib.sha256(__version__.encode())
    for path in sorted(package.rglob("*.py")):
        if path.relative_to(package).as_posix() in RUNNER_MODULES:
            continue
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def input_key(notebook: Path, parameters: dict, code: str, data: str) -> str:
    digest = hashlib.sha256(Path(notebook).read_bytes())
    digest.update(json.dumps({"parameters": parameters, "code": code, "data": data}, sort_keys=True).encode())
    return digest.hexdigest()


def plan(config: ReproduceConfig, notebooks: list[Path]) -> list[Job]:
    device = resolve_device(config.device or PROFILES[config.profile].device)
    fingerprint = data_fingerprint(data_roots(config.data_root))
    code = code_fingerprint()
    parameters = {
        "profile": config.run_profile, "data_root": config.data_root, "device": device, "seed": config.seed,
        "output_root": str(config.output_root.resolve()), **config.parameters,
    }
    jobs = []
    for path in notebooks:
        title, outputs = notebook_metadata(path, config.run_profile)
        paper, name = path.parent.name, path.stem
        folder = config.executed_dir / paper
        jobs.append(Job(
            paper=paper, name=name, notebook=str(path.resolve()), executed=str(folder / f"{name}.ipynb"),
            record=str(folder / f"{name}.run.json"), title=title, outputs=outputs, parameters=dict(parameters),
            key=input_key(path, parameters, code, fingerprint), output_root=str(config.output_root.resolve()),
            data_fingerprint=fingerprint, code_fingerprint=code, cell_timeout=config.cell_timeout,
            threads=kernel_threads(config.jobs),
        ))
    return jobs


def kernel_threads(jobs: int, cores: int | None = None) -> int | None:
    """Threads per kernel when ``jobs`` notebooks share this machine's cores: cores // jobs (at least 1); None
    for one job at a time (the kernel uses every core). The smoke models are small: on 2 cores two
    single-threaded notebooks at once finish sooner than one notebook on 2 threads."""
    if jobs <= 1:
        return None
    return max(1, (cores or os.cpu_count() or 1) // jobs)


# ----------------------------------------------------------------------------------------- resume index
class ResumeIndex:
    """`resume.json`: label -> input key of the last successful run; saved atomically after every notebook."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.entries: dict[str, dict] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def is_current(self, job: Job) -> bool:
        entry = self.entries.get(job.label)
        if not entry or entry.get("key") != job.key:
            return False
        root = Path(job.output_root)
        return Path(job.executed).exists() and all((root / rel).exists() for rel in job.outputs)

    def invalidate(self, job: Job) -> None:
        """Forget a notebook's last success as it starts: from now on its outputs may be half rewritten,
        so a run killed before it ends must not let --resume trust the older record."""
        with self._lock:
            if self.entries.pop(job.label, None) is not None:
                results.atomic_write_json(self.path, self.entries)

    def update(self, job: Job, outcome: Outcome) -> None:
        with self._lock:
            if outcome.status == "ok":
                self.entries[job.label] = {"key": job.key, "record": outcome.record, "time": time.time()}
            elif outcome.status == "failed":
                self.entries.pop(job.label, None)
            else:
                return
            results.atomic_write_json(self.path, self.entries)


# ----------------------------------------------------------------------------------------- execution
def _kernel_manager_class(extra_env: dict[str, str], stderr_path: Path):
    """An AsyncKernelManager that starts the kernel on this process's Python, with `extra_env`, and sends
    the kernel's own stderr (start-up warnings, crashes) to `stderr_path` instead of the terminal."""
    from jupyter_client.manager import AsyncKernelManager

    class AdlibKernelManager(AsyncKernelManager):
        async def _async_start_kernel(self, **kw: Any) -> None:
            kw["env"] = {**(kw.get("env") or os.environ), **extra_env}
            with open(stderr_path, "ab") as stderr:  # the child keeps its own copy of the descriptor
                kw["stderr"] = stderr
                await super()._async_start_kernel(**kw)

        start_kernel = _async_start_kernel

        def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
            cmd = super().format_kernel_cmd(extra_arguments)
            if "ipykernel_launcher" in cmd:  # an IPython kernel: run it on the interpreter running adlib
                cmd[0] = sys.executable
            return cmd

    return AdlibKernelManager


class _NotStarted(Exception):
    """The notebook was refused before its kernel started (the error says why)."""


def check_parameters(notebook: str | Path, parameters: dict, paper: str | None = None) -> str | None:
    """None when ``notebook_parameters`` accepts the parameters, else its one-line error."""
    from adlib.study.parameters import ParameterError

    try:
        notebook_parameters(notebook, parameters, paper)
    except ParameterError as error:
        return str(error)
    return None


_SETTING_LOCK = threading.Lock()  # one setting check at a time (it may generate the synthetic data)


def notebook_parameters(notebook: str | Path, parameters: dict, paper: str | None = None) -> dict:
    """The parameters a notebook is run with, checked before its kernel starts (``adlib.study.parameters``):
    each declared in its parameters cell (a name papermill would inject without the notebook knowing it, a typo
    on either side, must fail the notebook, not be silently ignored), each of its type and converted to it
    (``-p seeds 0,1`` -> ``[0, 1]``), a backbone or model that exists; and for a notebook of a registered
    ``paper`` (its folder), the setting they make (``adlib.study.resolve_setting``: a category the profile's
    data has, a data folder that exists). Raises ``ParameterError`` with one line."""
    import papermill

    from adlib.study.parameters import ParameterError, check_values

    try:
        declared = papermill.inspect_notebook(str(notebook))
    except Exception as exc:  # unreadable notebook, unknown kernel language
        raise ParameterError(f"cannot read the parameters of {notebook}: {type(exc).__name__}: {exc}") from None
    if not declared:
        raise ParameterError(f"{Path(notebook).name} has no cell tagged 'parameters' (or it declares nothing); "
                             f"expected one declaring {', '.join(sorted(parameters))}")
    defaults = {name: _literal(info["default"]) for name, info in declared.items()}
    values = check_values(parameters, defaults, Path(notebook).name)
    if paper is not None:
        _check_setting(paper, values)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}  # papermill writes lists, not tuples


def _check_setting(paper: str, values: dict) -> None:
    import inspect

    from adlib import papers, study
    from adlib.study.parameters import ParameterError

    if paper not in papers.available():
        return
    accepted = inspect.signature(study.resolve_setting).parameters
    with _SETTING_LOCK:
        try:
            study.resolve_setting(papers.get(paper), **{k: v for k, v in values.items() if k in accepted})
        except (ValueError, TypeError, OSError) as error:
            raise ParameterError(f"parameters refused by the {paper} setting: {error}") from None


def merge_runtime(lines: Iterable[dict]) -> dict:
    """The kernel's ``results.runtime()`` reports (one per table/figure written and one at exit) as one:
    the latest CPU and thread settings; the union of scan backends (largest count), weights and data; the
    fits trained and read from the run cache (counts so far: the largest)."""
    merged: dict[str, Any] = {"scan_backends": {}, "weights": {}, "data_sources": {}, "fits": {}}
    for line in sorted(lines, key=lambda entry: entry.get("time", 0)):
        runtime = line.get("runtime") or {}
        for key in ("cpu", "threads"):
            if key in runtime:
                merged[key] = runtime[key]
        for name, count in (runtime.get("scan_backends") or {}).items():
            merged["scan_backends"][name] = max(count, merged["scan_backends"].get(name, 0))
        merged["weights"].update(runtime.get("weights") or {})
        merged["data_sources"].update(runtime.get("data_sources") or {})
        for name, count in (runtime.get("fits") or {}).items():
            merged["fits"][name] = max(count, merged["fits"].get(name, 0))
    return merged


def _run_log(log: Path) -> list[dict]:
    if not log.exists():
        return []
    entries = []
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def execute_job(job: Job) -> Outcome:
    """Execute one notebook with papermill; write the executed notebook and the run record. Never raises.

    Before the kernel starts, the run record says "running" (a killed run leaves that, not the last
    success) and the parameters are checked against the notebook's parameters cell."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    executed, record_path, root = Path(job.executed), Path(job.record), Path(job.output_root)
    results.atomic_write_json(record_path, {"notebook": job.label, "status": "running", "start": _iso(time.time()),
                                            "parameters": job.parameters, "input_key": job.key})
    partial_dir = executed.parent.parent / PARTIAL_DIR
    partial_dir.mkdir(parents=True, exist_ok=True)
    # the pid in the name lets a later run tell a killed run's folder from a concurrent run's
    work = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-{job.paper}-{job.name}-", dir=partial_dir))
    run_log, kernel_log = work / "written.jsonl", work / "kernel-stderr.txt"
    env = {results.RUN_LOG_ENV: str(run_log.resolve()), results.OUTPUT_ROOT_ENV: job.output_root, **KERNEL_ENV_DEFAULTS}
    if job.threads is not None and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(job.threads)
    env.update({k: os.environ[k] for k in KERNEL_ENV_DEFAULTS if k in os.environ})  # the user's setting wins
    start = time.time()
    cpu_before = _children_cpu()
    error = cell = None
    try:
        try:
            parameters = notebook_parameters(job.notebook, job.parameters, job.paper)
        except ValueError as exc:  # ParameterError: one line, the kernel is not started
            error = str(exc)
            raise _NotStarted() from None
        papermill.execute_notebook(
            job.notebook, str(work / executed.name), parameters=parameters, kernel_name="python3",
            cwd=str(Path(job.notebook).parent), progress_bar=False, execution_timeout=job.cell_timeout,
            kernel_manager_class=_kernel_manager_class(env, kernel_log),
        )
    except _NotStarted:
        pass
    except PapermillExecutionError as exc:
        first_line = next((line for line in exc.source.splitlines() if line.strip()), "").strip()
        cell = f"In [{exc.exec_count}] (cell {exc.cell_index}): {first_line[:80]}"
        error = f"{exc.ename}: {exc.evalue}"
    except Exception as exc:  # a kernel that dies or cannot start is a notebook failure too
        error = f"{type(exc).__name__}: {exc}"
    end = time.time()
    # the kernel is a child of this process: its CPU time is that of the children reaped meanwhile (exact when
    # notebooks run one at a time; with several at once the others' would mix in, so it is left out)
    cpu = round(_children_cpu() - cpu_before, 1) if job.threads is None else None

    log = _run_log(run_log)
    written = sorted({entry["path"] for entry in log if "path" in entry})
    missing = []
    for rel in job.outputs:
        path = root / rel
        fresh = path.exists() and (str(path.resolve()) in written or path.stat().st_mtime >= start - 1)
        if not fresh:
            missing.append(rel)
    if missing and error is None:
        error = f"declared outputs not written: {', '.join(missing)}"
    status = "ok" if error is None else "failed"

    check = path_check_label(job.parameters.get("profile"))
    if (work / executed.name).exists():
        if check:
            _stamp_notebook(work / executed.name, check)
        executed.parent.mkdir(parents=True, exist_ok=True)
        os.replace(work / executed.name, executed)
    record = {
        "notebook": job.label, "title": job.title, "source": job.notebook, "executed": str(executed),
        **({"path_check": check} if check else {}),
        "status": status, "error": error, "failed_cell": cell, "missing_outputs": missing,
        "parameters": job.parameters, "seed": job.parameters.get("seed"), "device": job.parameters.get("device"),
        "profile": job.parameters.get("profile"), "data_fingerprint": job.data_fingerprint,
        "code_fingerprint": job.code_fingerprint, "input_key": job.key,
        "start": _iso(start), "end": _iso(end), "seconds": round(end - start, 3), "kernel_cpu_seconds": cpu,
        "declared_outputs": job.outputs,
        "written_files": [_relative(p, root) for p in written],
        "kernel_python": sys.executable,
        "kernel_stderr": kernel_log.read_text(errors="replace")[-4000:] if kernel_log.exists() else "",
        # what the kernel reported: CPU, threads, scan backends, weights sha256, data content fingerprints
        "kernel": merge_runtime(entry for entry in log if entry.get("kind") == "runtime"),
        "provenance": results.provenance(),
    }
    results.atomic_write_json(record_path, record)
    shutil.rmtree(work, ignore_errors=True)
    return Outcome(job.label, status, end - start, error, cell, missing, str(record_path), job.key, cpu)


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def path_check_label(profile: str | None) -> str | None:
    """The path check's description for a check profile ("paper-check"), else None."""
    from adlib.study.spec import PATH_CHECK_CUTS, is_check

    return PATH_CHECK_CUTS.describe() if profile and is_check(profile) else None


def _stamp_notebook(path: Path, text: str) -> None:
    """Put a markdown cell saying "path check: not results" first in an executed notebook."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    notebook.cells.insert(0, nbformat.v4.new_markdown_cell(f"<div style='background:#c62828;color:white;padding:8px'>"
                                                           f"<b>{text}</b></div>"))
    nbformat.write(notebook, path)


def _safe_execute(job: Job) -> Outcome:
    try:
        return execute_job(job)
    except Exception:  # the runner itself broke (disk full, ...): report it as this notebook's failure
        return Outcome(job.label, "failed", 0.0, traceback.format_exc(limit=3).strip().splitlines()[-1])


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return path


# ----------------------------------------------------------------------------------------- executors
class LocalExecutor:
    """Notebooks in this process: papermill's kernels are separate processes, so threads run them in parallel."""

    def __init__(self, config: ReproduceConfig):
        self.jobs = config.jobs
        self.deadline = time.time() + config.time_budget if config.time_budget is not None else None

    def run(self, jobs: list[Job], on_start: Callable[[Job], None], on_done: Callable[[Job, Outcome], None]) -> None:
        def task(job: Job) -> None:
            if self.deadline is not None and time.time() > self.deadline:
                on_done(job, Outcome(job.label, "deferred", error="time budget spent before it started"))
                return
            on_start(job)
            on_done(job, _safe_execute(job))

        with concurrent.futures.ThreadPoolExecutor(max_workers=self.jobs) as pool:
            for future in [pool.submit(task, job) for job in jobs]:
                future.result()


class DaskExecutor:
    """One task per notebook on an existing Dask cluster; workers need adlib installed and the same paths."""

    def __init__(self, config: ReproduceConfig):
        self.scheduler = config.scheduler

    def run(self, jobs: list[Job], on_start: Callable[[Job], None], on_done: Callable[[Job, Outcome], None]) -> None:
        try:
            from distributed import Client, as_completed
        except ImportError as exc:
            raise RuntimeError("--executor dask needs the 'distributed' package: pip install 'adlib[dask]'") from exc
        with Client(self.scheduler) as client:
            futures = {}
            for job in jobs:
                on_start(job)
                key = f"adlib-{job.paper}-{job.name}-{job.key[:8]}"
                futures[client.submit(_safe_execute, job, pure=False, key=key)] = job
            for future in as_completed(list(futures)):
                job = futures[future]
                try:
                    outcome = future.result()
                except Exception as exc:  # the worker died
                    outcome = Outcome(job.label, "failed", 0.0, f"dask: {type(exc).__name__}: {exc}")
                on_done(job, outcome)


EXECUTORS: dict[str, type] = {"local": LocalExecutor, "dask": DaskExecutor}


# ----------------------------------------------------------------------------------------- progress
class Progress:
    """One line per start and finish: which notebook, how many are left, elapsed time."""

    def __init__(self, total: int, stream=None):
        self.total, self.done, self.running = total, 0, 0
        self.start = time.time()
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()

    def _elapsed(self) -> str:
        return _duration(time.time() - self.start)

    def started(self, job: Job) -> None:
        with self._lock:
            self.running += 1
            self._print(f"[{self.done}/{self.total}] run   {job.label}  "
                        f"({self.running} running, {self.total - self.done} left, elapsed {self._elapsed()})")

    def finished(self, outcome: Outcome) -> None:
        with self._lock:
            self.done += 1
            if outcome.status in ("ok", "failed"):
                self.running = max(0, self.running - 1)
            word = {"ok": "ok   ", "failed": "FAIL ", "skipped": "skip ", "deferred": "later"}[outcome.status]
            extra = f"  {outcome.error}" if outcome.error else ""
            self._print(f"[{self.done}/{self.total}] {word} {outcome.label}  {outcome.seconds:.1f} s  "
                        f"({self.total - self.done} left, elapsed {self._elapsed()}){extra}")

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


# ----------------------------------------------------------------------------------------- driver
@dataclass
class Summary:
    outcomes: list[Outcome]
    seconds: float
    report: Path | None = None
    check: str | None = None  # a path check's description: the summary says it and lists every notebook's time

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def deferred(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "deferred"]

    @property
    def ok(self) -> bool:
        """Every notebook ran (or was unchanged): a notebook the time budget left not started is a defect of the
        run (the collection is incomplete), never a pass."""
        return bool(self.outcomes) and not self.failed and not self.deferred

    def text(self) -> str:
        counts = {s: sum(o.status == s for o in self.outcomes) for s in ("ok", "skipped", "failed", "deferred")}
        lines = [f"{len(self.outcomes)} notebooks in {_duration(self.seconds)}: "
                 f"{counts['ok']} ran ok, {counts['skipped']} unchanged (skipped), {counts['failed']} failed"]
        if counts["deferred"]:
            lines[0] += (f", {counts['deferred']} not started (time budget spent; run again with --resume). "
                         "Not a pass: the collection is incomplete")
        if self.check:
            lines.insert(0, self.check)
            lines.append("time per notebook (path check):")
            lines += [f"  {o.seconds:8.1f} s  {o.status:8s} {o.label}"
                      + (f"  (kernel CPU {o.cpu_seconds:.0f} s)" if o.cpu_seconds is not None else "")
                      for o in self.outcomes]
        for outcome in self.failed:
            lines.append(f"  FAILED {outcome.label}: {outcome.error}")
            if outcome.cell:
                lines.append(f"         at {outcome.cell}")
            if outcome.record:
                lines.append(f"         run record: {outcome.record}")
        if self.report:
            lines.append(f"report: {self.report}")
        return "\n".join(lines)


def sweep_partial(partial: Path) -> list[Path]:
    """Remove the work folders of notebook runs whose process no longer runs; returns them. A concurrent
    ``adlib reproduce`` on the same output root keeps its folders (their names start with its pid)."""
    from adlib.io import pid_alive

    removed = []
    if not partial.is_dir():
        return removed
    for entry in partial.iterdir():
        pid = entry.name.split("-", 1)[0]
        if not (pid.isdigit() and pid_alive(int(pid))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def reproduce(config: ReproduceConfig, stream=None) -> Summary:
    """Execute the selected notebooks (skipping unchanged ones with `resume`), then build the report."""
    stream = stream or sys.stderr
    start = time.time()
    notebooks = discover(config.notebook_root, config.papers, config.only)
    if not notebooks:
        return Summary([], time.time() - start)
    results.check_writable_dir(config.output_root, "--output-root")  # before any notebook runs
    results.check_writable_dir(config.executed_dir, "--output-root")
    sweep_partial(config.executed_dir / PARTIAL_DIR)  # left by a killed run
    results.remove_stale([config.output_root / top / config.run_profile for top in ("results", "figures")])
    if config.check:  # a new check run fits every data source once again (adlib.study.grid's covering)
        from adlib.study.grid import CHECK_FITTED_FILE

        (config.output_root / "results" / config.run_profile / CHECK_FITTED_FILE).unlink(missing_ok=True)
    jobs = plan(config, notebooks)
    index = ResumeIndex(config.executed_dir / RESUME_INDEX)
    progress = Progress(len(jobs), stream)
    outcomes: dict[str, Outcome] = {}

    todo = []
    for job in jobs:
        if config.resume and index.is_current(job):
            outcome = Outcome(job.label, "skipped", 0.0, record=job.record, key=job.key)
            outcomes[job.label] = outcome
            progress.finished(outcome)
        else:
            todo.append(job)

    def on_done(job: Job, outcome: Outcome) -> None:
        outcomes[job.label] = outcome
        index.update(job, outcome)
        progress.finished(outcome)

    def on_start(job: Job) -> None:
        index.invalidate(job)
        progress.started(job)

    if todo:
        EXECUTORS[config.executor](config).run(todo, on_start, on_done)
    summary = Summary([outcomes[j.label] for j in jobs], time.time() - start,
                      check=path_check_label(config.run_profile))
    if config.report:
        from adlib.app.report import build_report

        summary.report = build_report(config.output_root, config.run_profile, notebook_root=config.notebook_root,
                                      paper_root=config.paper_root)
    return summary


# ----------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", choices=sorted(PROFILES), default="smoke",
                        help="smoke: CPU minutes on embedded data; paper: the papers' settings on a GPU")
    parser.add_argument("--papers", type=lambda s: [p for p in s.split(",") if p], default=None,
                        help="comma-separated papers (folders under notebooks/), e.g. varad,vitad")
    parser.add_argument("--only", metavar="PATTERN",
                        help="glob (or substring) on paper/notebook, e.g. 'varad/0[12]*'")
    parser.add_argument("--resume", action="store_true",
                        help="skip notebooks whose content, parameters, adlib code and data are unchanged "
                             "since their last successful run")
    parser.add_argument("--jobs", type=int, default=None,
                        help="notebooks executed at the same time (default 1; a --check on a CPU: 2 where there are "
                             "2 cores or more, each kernel with half of them)")
    parser.add_argument("--executor", choices=sorted(EXECUTORS), default="local",
                        help="local: in this process; dask: on an existing Dask cluster (--scheduler)")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler address for --executor dask")
    parser.add_argument("--data-root", default=None,
                        help="data folder passed to the notebooks (default: embedded synthetic data)")
    parser.add_argument("--device", default=None, help="device passed to the notebooks (default: the profile's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        dest="parameters",
                        help="one more notebook parameter, as papermill's -p (VALUE parsed as a Python literal, "
                             "else a string); every notebook run must declare it in its parameters cell, and the "
                             "value must be of its type (e.g. -p seeds 0,1,2), checked before the kernel starts")
    parser.add_argument("--cell-timeout", type=float, default=None, help="seconds a cell may run (default: no limit)")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="start no notebook after this many seconds (CI); the rest are listed as not started, "
                             "and the run does not pass")
    parser.add_argument("--notebooks", type=Path, default=None,
                        help="notebook folder (default: notebooks/ of the repository)")
    parser.add_argument("--output-root", type=Path, default=None,
                        help="where results/ and figures/ go (default: the repository)")
    parser.add_argument("--report-only", action="store_true",
                        help="build the report from existing results, execute nothing")
    parser.add_argument("--check", action="store_true",
                        help="path check of the profile (paper): its code path with at most 2 training and 4 test "
                             "images per data source, one optimiser step per stage, one seed, random weights where "
                             "none can be had, synthetic stand-ins for missing datasets; outputs go to "
                             "results/<profile>-check/ and say 'path check: not results'")
    parser.add_argument("--plan", action="store_true",
                        help="print what each selected notebook needs (datasets, weights, estimated GPU hours) and "
                             "what is missing here; run nothing")
    parser.add_argument("--no-report", action="store_true", help="execute the notebooks but do not build the report")


def config_from_args(args: argparse.Namespace) -> ReproduceConfig:
    check = bool(getattr(args, "check", False))
    jobs = args.jobs
    if jobs is None:  # a path check's notebooks are small CPU runs: two at a time overlap their single-threaded parts
        on_cpu = not str(getattr(args, "device", None) or "cpu").startswith("cuda")
        jobs = min(2, os.cpu_count() or 1) if check and on_cpu else 1
    config = ReproduceConfig(
        profile=args.profile, papers=args.papers, only=args.only, resume=args.resume, jobs=jobs,
        executor=args.executor, scheduler=args.scheduler, data_root=args.data_root, device=args.device,
        seed=args.seed, cell_timeout=args.cell_timeout, time_budget=args.time_budget, report=not args.no_report,
        parameters={name.replace("-", "_"): _literal(value) for name, value in getattr(args, "parameters", [])},
        check=check,
    )
    if args.notebooks is not None:
        config.notebook_root = args.notebooks
    if args.output_root is not None:
        config.output_root = args.output_root
    return config


def _literal(text: str) -> Any:
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"adlib reproduce: {exc}", file=sys.stderr)
        return 2
    try:
        return _main(args, config)
    except OSError as exc:  # an unwritable --output-root, a disk filling up: one line naming the path
        message = str(exc) if isinstance(exc, results.OutputPathError) else \
            f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}"
        print(f"adlib reproduce: error: {message}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace, config: ReproduceConfig) -> int:
    if getattr(args, "plan", False):
        from adlib.app.plan import plan_text

        notebooks = discover(config.notebook_root, config.papers, config.only)
        if not notebooks:
            print(f"adlib reproduce: no notebooks found under {config.notebook_root} "
                  f"(papers={config.papers or 'all'}, only={config.only or '-'})", file=sys.stderr)
            return 1
        print(plan_text(notebooks, config.profile, config.data_root, check=config.check))
        return 0
    if args.report_only:
        from adlib.app.report import build_report

        path = build_report(config.output_root, config.run_profile, notebook_root=config.notebook_root,
                            paper_root=config.paper_root)
        print(f"report: {path}")
        return 0
    printed = results.paper_table_path("x", "x", root=config.paper_root).parent.parent
    if (config.output_root / "results" / config.run_profile).resolve() == printed.resolve():
        print(f"adlib reproduce: error: profile {config.run_profile} would write into {printed}, where the papers' "
              "printed numbers are kept; pass --output-root DIR (another folder)", file=sys.stderr)
        return 2
    print(f"adlib reproduce: profile {config.run_profile} ({PROFILES[config.profile].description})"
          + (f"; {path_check_label(config.run_profile)}" if config.check else ""), file=sys.stderr)
    summary = reproduce(config)
    if not summary.outcomes:
        print(f"adlib reproduce: no notebooks found under {config.notebook_root} "
              f"(papers={config.papers or 'all'}, only={config.only or '-'}); "
              "expected notebooks/<paper>/NN_<topic>.ipynb", file=sys.stderr)
        return 1
    print(summary.text())
    return 0 if summary.ok else 1
