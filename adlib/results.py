"""Result tables and figures with provenance, the papers' printed numbers, paper-vs-reproduced tables.

Every table is in one long format (values in percent, as the papers print them):
`dataset, method, setting, level, metric, value`; reproduced tables add `profile, backbone, data`.

Files (relative to the output root, which is the repository root unless `root=` or `$ADLIB_OUTPUT_ROOT`
says otherwise):
    results/<profile>/<paper>/<name>.csv        + <name>.meta.json (provenance and parameters)
    figures/<profile>/<paper>/<name>.png        + <name>.meta.json
    results/paper/<paper>/<name>.csv            the paper's printed numbers (always in the repository)

Everything is written atomically (temp file in the same folder, then `os.replace`), so an interrupted
run never leaves a half-written file. When `$ADLIB_RUN_LOG` names a file (`adlib reproduce` sets it for
each notebook), every written path is appended to it as one JSON line, which the run record lists, and so
is this process's `runtime()` (CPU, threads, scan backends, weights hashes, data fingerprints) after each
table or figure and at exit, which the run record merges.
"""
from __future__ import annotations

import atexit
import json
import os
import platform
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from adlib.io import (OutputPathError, atomic_path, atomic_write_json, atomic_write_text, check_writable,  # noqa: F401
                      check_writable_dir, remove_stale)

KEY_COLUMNS = ["dataset", "method", "setting", "level", "metric"]
TABLE_COLUMNS = KEY_COLUMNS + ["value"]
PROVENANCE_COLUMNS = ["profile", "backbone", "data"]
# What tells apart rows of the same key in a reproduced table: seeds, protocols, class settings, sizes, scopes.
RUN_COLUMNS = ["seed", "protocol", "class_setting", "image_size", "scope"]
IN_MEMORY_COLUMNS = ["boot"]  # per-row arrays (test-image resamples, adlib.study.grid): never written to a CSV
LEVELS = ("image", "pixel", "summary", "model", "data")  # summary: mAD (mean of the 7 image and pixel metrics)
# The metrics the papers print; others are allowed if they are lower-case identifiers (e.g. "epochs").
METRICS = (
    "auroc", "f1max", "ap", "aupro", "mad", "params_m", "fps", "flops_g", "train_s", "epochs",
    "n_categories", "train_normal", "test_normal", "test_abnormal",
)
_METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
PACKAGES = (
    "torch", "torchvision", "timm", "numpy", "scipy", "scikit-learn", "pandas", "matplotlib",
    "pillow", "papermill", "mamba-ssm", "mambapy",
)
RUN_LOG_ENV = "ADLIB_RUN_LOG"
OUTPUT_ROOT_ENV = "ADLIB_OUTPUT_ROOT"
FOOTER_GID = "adlib-footer"


class TableFormatError(ValueError):
    """A table does not follow the long format."""


# ----------------------------------------------------------------------------------------- locations
def repo_root() -> Path:
    """The repository (or source tree) that holds the `adlib` package."""
    return Path(__file__).resolve().parent.parent


def output_root(root: str | os.PathLike | None = None) -> Path:
    """Where results/ and figures/ live: `root`, else `$ADLIB_OUTPUT_ROOT`, else the repository root."""
    if root is not None:
        return Path(root)
    env = os.environ.get(OUTPUT_ROOT_ENV)
    return Path(env) if env else repo_root()


def table_path(paper: str, name: str, *, profile: str, root: str | os.PathLike | None = None) -> Path:
    return output_root(root) / "results" / profile / paper / f"{name}.csv"


def figure_path(paper: str, name: str, *, profile: str, root: str | os.PathLike | None = None) -> Path:
    return output_root(root) / "figures" / profile / paper / f"{name}.png"


def paper_table_path(paper: str, name: str, root: str | os.PathLike | None = None) -> Path:
    """The paper's numbers are inputs shipped with the repository: `root` defaults to the repository root
    (not the output root), so runs that write elsewhere still find them."""
    return (Path(root) if root is not None else repo_root()) / "results" / "paper" / paper / f"{name}.csv"


def meta_path(path: Path) -> Path:
    """The sidecar of a table or figure: `<name>.meta.json` beside it."""
    return path.with_name(path.stem + ".meta.json")


# ----------------------------------------------------------------------------------------- atomic IO
# atomic_path, atomic_write_text/json, check_writable live in adlib.io (stdlib only) and are re-exported here.


def _log_written(path: Path, kind: str) -> None:
    log = os.environ.get(RUN_LOG_ENV)
    if not log:
        return
    line = json.dumps({"path": str(Path(path).resolve()), "kind": kind, "time": time.time()})
    with open(log, "a", encoding="utf-8") as handle:  # one short line per write: appends do not interleave
        handle.write(line + "\n")


# ----------------------------------------------------------------------------------------- provenance
def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=repo_root(), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_revision() -> dict:
    """`{"commit": sha or None, "dirty": bool or None}` for the source tree of this package."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, macOS sysctl), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ADLIB_SCAN_IMPL", "ADLIB_SCAN_NATIVE")


def runtime() -> dict:
    """What this process ran on and with, as far as it is known now: CPU model and counts, thread settings
    (torch's when torch is imported, and the environment), the selective-scan backends that ran
    (``adlib.ssm.backends_used``), the weights files loaded (``adlib.backbones.LOADED_WEIGHTS``, path ->
    sha256), a content fingerprint per data source read (``adlib.data.data_sources_read``) and the fits
    trained and read from the run cache (``adlib.study.runcache.counts``). Modules
    not imported yet are not imported: what they would report did not happen."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads: dict[str, Any] = {"env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ}}
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_num_threads"):
        threads["torch"] = torch.get_num_threads()
        threads["torch_interop"] = torch.get_num_interop_threads()
    ssm, backbones, folder, runs = (sys.modules.get(f"adlib.{m}") for m in ("ssm", "backbones", "data.folder",
                                                                              "study.runcache"))
    return {
        "cpu": {"model": cpu_model(), "logical_cpus": os.cpu_count(), "usable_cpus": usable},
        "threads": threads,
        "scan_backends": ssm.backends_used() if ssm is not None and hasattr(ssm, "backends_used") else {},
        "weights": dict(getattr(backbones, "LOADED_WEIGHTS", {})) if backbones is not None else {},
        "data_sources": folder.data_sources_read() if folder is not None and hasattr(folder, "data_sources_read") else {},
        "fits": runs.counts() if runs is not None else {},  # fits trained / read from the run cache
    }


def log_runtime() -> None:
    """Append this process's ``runtime()`` to ``$ADLIB_RUN_LOG`` (when set) as one ``{"kind": "runtime"}`` line.

    A notebook's kernel is another process than ``adlib reproduce``: it reports this way each time it
    writes a table or figure and when it exits, and the run record merges the lines."""
    log = os.environ.get(RUN_LOG_ENV)
    if not log:
        return
    try:
        line = json.dumps({"kind": "runtime", "pid": os.getpid(), "time": time.time(), "runtime": runtime()},
                          default=str)
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
    except (OSError, ValueError):  # a vanished log folder must not fail the notebook
        pass


if os.environ.get(RUN_LOG_ENV):
    atexit.register(log_runtime)


def provenance(**extra: Any) -> dict:
    """Git revision, adlib and package versions, Python, platform, host, time, ``runtime()`` (CPU, threads,
    scan backends, weights hashes, data fingerprints), plus `extra` (e.g. device)."""
    from adlib import __version__

    record = {
        "git": git_revision(),
        "adlib": __version__,
        "packages": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": platform.node(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": list(sys.argv),
        "runtime": runtime(),
    }
    record.update(extra)
    return record


# ----------------------------------------------------------------------------------------- tables
def check_table(df: pd.DataFrame, what: str = "table") -> pd.DataFrame:
    """Check the long format; returns a copy with `value` as float. Raises TableFormatError."""
    if not isinstance(df, pd.DataFrame):
        raise TableFormatError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in TABLE_COLUMNS if c not in df.columns]
    if missing:
        raise TableFormatError(
            f"{what}: missing columns {missing}; expected long format with columns {TABLE_COLUMNS}"
        )
    out = df.copy()
    for column in KEY_COLUMNS:  # empty cells (e.g. no method for a dataset-statistics row) become ""
        out[column] = out[column].where(out[column].notna(), "").astype(str)
    bad_levels = sorted(set(out["level"]) - set(LEVELS))
    if bad_levels:
        raise TableFormatError(f"{what}: column 'level' has {bad_levels}; expected one of {list(LEVELS)}")
    bad_metrics = sorted(m for m in set(out["metric"]) if not _METRIC_NAME.match(m))
    if bad_metrics:
        raise TableFormatError(
            f"{what}: column 'metric' has {bad_metrics}; expected lower-case names such as {list(METRICS)}"
        )
    try:
        out["value"] = pd.to_numeric(out["value"], errors="raise").astype(float)
    except (ValueError, TypeError) as exc:
        raise TableFormatError(f"{what}: column 'value' must be numeric (percent): {exc}") from None
    identity = KEY_COLUMNS + [c for c in PROVENANCE_COLUMNS + RUN_COLUMNS if c in out.columns]
    duplicated = out.duplicated(identity)
    if duplicated.any():
        rows = out.loc[duplicated, KEY_COLUMNS].head(3).to_dict("records")
        raise TableFormatError(f"{what}: duplicated rows for the same {identity}, e.g. {rows}")
    return out


def _stamp_columns(df: pd.DataFrame, profile: str, backbone: str, data: str) -> pd.DataFrame:
    """Add profile/backbone/data columns; values already in the table (per row) take precedence."""
    out = df.copy()
    for column, value in zip(PROVENANCE_COLUMNS, (profile, backbone, data)):
        if column in out.columns:
            out[column] = out[column].where(out[column].notna(), value)
        else:
            out[column] = value
    extra = [c for c in out.columns if c not in TABLE_COLUMNS + PROVENANCE_COLUMNS]
    return out[TABLE_COLUMNS + PROVENANCE_COLUMNS + extra]


def _sidecar(path: Path, kind: str, paper: str, name: str, profile: str, backbone: str, data: str,
             params: dict | None, extra: dict | None = None) -> None:
    record = {
        "kind": kind, "paper": paper, "name": name, "file": path.name,
        "profile": profile, "backbone": backbone, "data": data,
        "params": dict(params or {}),
        "provenance": provenance(),
    }
    record.update(extra or {})
    atomic_write_json(meta_path(path), record)
    _log_written(meta_path(path), "meta")
    log_runtime()


def write_table(df: pd.DataFrame, paper: str, name: str, *, profile: str, backbone: str, data: str,
                params: dict | None = None, root: str | os.PathLike | None = None) -> Path:
    """Write `results/<profile>/<paper>/<name>.csv` (+ `.meta.json`) atomically; returns the CSV path."""
    df = df.drop(columns=[c for c in IN_MEMORY_COLUMNS if c in df.columns])
    table = _stamp_columns(check_table(df, f"table {paper}/{name}"), profile, backbone, data)
    path = table_path(paper, name, profile=profile, root=root)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    _sidecar(path, "table", paper, name, profile, backbone, data, params, {"rows": len(table)})
    _log_written(path, "table")
    return path


def read_table(paper: str, name: str, *, profile: str, root: str | os.PathLike | None = None) -> pd.DataFrame:
    """A reproduced table written by `write_table`."""
    path = table_path(paper, name, profile=profile, root=root)
    if not path.exists():
        raise FileNotFoundError(f"no reproduced table {path} (run the notebook that writes {paper}/{name})")
    return check_table(_read_csv(path), str(path))


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={c: str for c in KEY_COLUMNS}, keep_default_na=False, na_values={"value": [""]})


def paper_table(paper: str, name: str, root: str | os.PathLike | None = None) -> pd.DataFrame:
    """The paper's printed numbers from `results/paper/<paper>/<name>.csv` (long format)."""
    path = paper_table_path(paper, name, root=root)
    if not path.exists():
        raise FileNotFoundError(f"no paper table {path}; expected the paper's numbers in long format")
    return check_table(_read_csv(path), str(path))


def compare(paper_df: pd.DataFrame, ours_df: pd.DataFrame) -> pd.DataFrame:
    """Outer join on the key columns: `paper`, `ours`, `diff` (ours − paper) per metric row.

    Rows present on one side only are kept with NaN on the other side. Provenance columns of the
    reproduced table (profile, backbone, data) are carried over.
    """
    paper = check_table(paper_df, "paper table")[KEY_COLUMNS + ["value"]].rename(columns={"value": "paper"})
    ours = check_table(ours_df, "reproduced table")
    keep = KEY_COLUMNS + ["value"] + [c for c in PROVENANCE_COLUMNS if c in ours.columns]
    ours = ours[keep].rename(columns={"value": "ours"})
    for side, frame in (("paper", paper), ("reproduced", ours)):
        if frame.duplicated(KEY_COLUMNS).any():
            raise TableFormatError(f"compare: the {side} table has several rows for the same {KEY_COLUMNS}")
    table = paper.merge(ours, on=KEY_COLUMNS, how="outer", sort=False)
    table["diff"] = table["ours"] - table["paper"]
    columns = KEY_COLUMNS + ["paper", "ours", "diff"] + [c for c in PROVENANCE_COLUMNS if c in table.columns]
    return table[columns].reset_index(drop=True)


# ----------------------------------------------------------------------------------------- figures
def _stamp_footer(fig, text: str) -> None:
    for artist in list(fig.texts):
        if artist.get_gid() == FOOTER_GID:
            artist.remove()
    fig.text(0.995, 0.005, text, ha="right", va="bottom", fontsize=6, color="0.45", gid=FOOTER_GID)


def save_figure(fig, paper: str, name: str, *, profile: str, backbone: str, data: str,
                params: dict | None = None, root: str | os.PathLike | None = None, dpi: int = 120) -> Path:
    """Write `figures/<profile>/<paper>/<name>.png` (+ `.meta.json`) atomically; returns the PNG path.

    The figure gets a small footer "profile · backbone · data" and the same in the PNG text metadata.
    """
    if not hasattr(fig, "savefig"):
        raise TypeError(f"figure {paper}/{name}: expected a matplotlib Figure, got {type(fig).__name__}")
    footer = f"{profile} · {backbone} · {data}"
    _stamp_footer(fig, footer)
    path = figure_path(paper, name, profile=profile, root=root)
    png_meta = {"Title": f"{paper}/{name}", "Software": "adlib", "Comment": footer,
                "adlib:profile": profile, "adlib:backbone": backbone, "adlib:data": data}
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata=png_meta, bbox_inches="tight")
    _sidecar(path, "figure", paper, name, profile, backbone, data, params)
    _log_written(path, "figure")
    return path
