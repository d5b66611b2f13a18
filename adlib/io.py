"""Atomic writes, early writability checks and the removal of what killed runs leave behind (stdlib only).

A file is written to a temporary sibling ``.<name>.<pid>.<random>.tmp`` and moved into place with
``os.replace``, so a reader never sees half a file. A process killed mid-write leaves that temporary file;
``remove_stale`` deletes such leftovers (and staging folders ``.<name>.extract-<pid>-<random>``) whose
writing process no longer runs, and the commands call it on their output folders when they start.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

# .<name>.<pid>.<random>.tmp (atomic writes) and .<name>.extract-<pid>-<random> (archive staging)
_TEMP = re.compile(r"^\..+\.(?P<pid>\d+)\.[a-z0-9_]+\.tmp$")
_STAGING = re.compile(r"^\..+\.extract-(?:(?P<pid>\d+)-)?[a-z0-9_]+$")
_LEGACY_TEMP = re.compile(r"^\..+\.(?P<pid>)[a-z0-9_]{8}\.tmp$")  # before the pid was part of the name
LEGACY_AGE_S = 600.0  # a leftover without a pid counts as stale once it is this old


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except OSError:
        return False
    return True


def temp_sibling(path: Path, suffix: str = ".tmp") -> Path:
    """A new empty file ``.<name>.<pid>.<random><suffix>`` in ``path``'s folder."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def staging_folder(dest: Path) -> Path:
    """A new empty folder ``.<name>.extract-<pid>-<random>`` beside ``dest``."""
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-{os.getpid()}-", dir=dest.parent))


def _stale(path: Path, pattern: re.Pattern, now: float) -> bool:
    match = pattern.match(path.name)
    if match is None:
        return False
    pid = match.group("pid")
    if pid:
        return int(pid) != os.getpid() and not pid_alive(int(pid))
    try:
        return now - path.lstat().st_mtime > LEGACY_AGE_S
    except OSError:
        return False


def remove_stale(folders: Iterable[str | os.PathLike], recursive: bool = True) -> list[Path]:
    """Delete temporary files and staging folders of killed processes under ``folders``; returns them.

    Only names this module makes are touched (``.<name>.<pid>.<random>.tmp``, ``.<name>.extract-<pid>-...``),
    and only when process ``<pid>`` no longer runs (names without a pid, from older versions: when older
    than ``LEGACY_AGE_S``). Missing folders are skipped.
    """
    removed, now = [], time.time()
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        walker = os.walk(folder) if recursive else [(str(folder), *next(os.walk(folder))[1:])]
        for dirpath, dirnames, filenames in walker:
            base = Path(dirpath)
            for name in list(dirnames):
                path = base / name
                if _stale(path, _STAGING, now):
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
                    dirnames.remove(name)
            for name in filenames:
                path = base / name
                pattern = _TEMP if _TEMP.match(name) else _LEGACY_TEMP
                if name.endswith(".tmp") and _stale(path, pattern, now):
                    try:
                        path.unlink()
                        removed.append(path)
                    except OSError:
                        pass
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = temp_sibling(path)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


class OutputPathError(PermissionError):
    """An output path cannot be written; the message names the path and the reason."""


def check_writable(path: str | os.PathLike, what: str = "") -> Path:
    """Raise ``OutputPathError`` (a PermissionError) naming ``path`` unless a file can be created there.

    Checked by creating, writing one block to and removing a temporary file in its folder (made if
    missing), so that long work fails before it starts rather than when its result is written: a
    read-only folder, a missing parent that cannot be made, a path that is a folder, and (as far as one
    block shows) a full disk.
    """
    path = Path(path)
    label = f"{what} {path}".strip()
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "it is a folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_sibling(path, ".check")
        try:
            with open(tmp, "wb") as handle:
                handle.write(b"\0" * 4096)
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            tmp.unlink()
    except OSError as error:
        raise OutputPathError(f"cannot write {label}: {error.strerror or error}") from None
    return path


def check_writable_dir(folder: str | os.PathLike, what: str = "") -> Path:
    """``check_writable`` for an output folder (made if missing)."""
    folder = Path(folder)
    label = f"{what} {folder}".strip()
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"cannot write {label}: it is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        check_writable(folder / ".adlib-write-check")
    except OSError as error:
        reason = str(error).rsplit(": ", 1)[-1] if isinstance(error, OutputPathError) else error.strerror or error
        raise OutputPathError(f"cannot write {label}: {reason}") from None
    return folder


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
