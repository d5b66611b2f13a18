"""Fitted models (and their evaluations) on disk, shared by every notebook and command on the machine.

``study.run_one`` asks this cache before it trains. A fit is keyed on what determines the fitted model and
nothing else:

- the model's name and resolved config (a field that names a file, such as a tokenizer checkpoint, by the
  file's content), and the identity of its frozen tokenizer (backbone, weights hash);
- the engine's ``FitConfig`` (all fields but ``progress``, ``checkpoint`` and ``num_workers``, which do not
  change the weights), which holds the seed;
- the content of the training images, in the order the engine sees them (``dataset_fingerprint``: every
  file's bytes and the size it is read at), and of the calibration images when the model uses them;
- a hash of adlib's source files that a fit runs (``source_hash``: everything but the app and paper layers, the
  study layer apart from the run path itself (``grid``, ``setting``, ``runcache``), ``plots`` and ``results``,
  whose effect enters the key through the resolved config and the data);
- where it runs: torch's version and thread count, the device, and the selective-scan settings
  (``ADLIB_SCAN_IMPL``, ``ADLIB_SCAN_NATIVE``), so that a cached fit is the fit this process would make,
  bit for bit.

The metric protocol is not part of it. An evaluation is cached under its fit, keyed on the test images
(content, paths, masks, labels), the protocols, ``keep_maps`` and the batch size.

Layout (``$ADLIB_CACHE``, default ``~/.cache/adlib``; ``ADLIB_RUN_CACHE_DIR`` names another folder)::

    $ADLIB_CACHE/runs-v1/<key[:2]>/<key>/key.json        what the key was made of, in words
    $ADLIB_CACHE/runs-v1/<key[:2]>/<key>/fit.pt          the model's checkpoint state and the FitResult
    $ADLIB_CACHE/runs-v1/<key[:2]>/<key>/eval-<k>.pkl    {protocol: EvalResult}
    $ADLIB_CACHE/runs-v1/<key[:2]>/<key>/used            touched on every read (least recently used order)
    $ADLIB_CACHE/runs-v1/locks/<key>.lock                one process fits a key while others wait

Files are written atomically (``adlib.io.atomic_path``). Two processes asking for the same fit at once
(``adlib reproduce --jobs 2``) take the key's file lock in turn: the first fits and writes, the second waits
and then reads. A file that cannot be read counts as missing and is written again.

Size: after each write, whole entries are removed, least recently used first, until the cache holds at most
``ADLIB_RUN_CACHE_MB`` megabytes (default 2048); an entry another process holds is skipped.
``ADLIB_RUN_CACHE=0`` turns the cache off; ``ADLIB_RUN_CACHE=fit`` keeps fits but not evaluations.
``counts()`` says how many fits this process trained and read (``adlib.results.runtime`` reports it).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pickle
import shutil
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

ENV = "ADLIB_RUN_CACHE"
DIR_ENV = "ADLIB_RUN_CACHE_DIR"
SIZE_ENV = "ADLIB_RUN_CACHE_MB"
DEFAULT_MB = 2048.0
FOLDER = "runs-v1"  # a new format gets a new folder name
# FitConfig fields that do not change the fitted weights
NOT_IN_KEY = ("progress", "checkpoint", "num_workers")
# what a fit does not run: the layers above the engine (their effect enters the key as config and data), but for
# the run path itself (which seeds, builds and hands data to the engine)
SOURCE_EXCLUDED = ("app", "papers", "study", "plots.py", "results.py")
SOURCE_INCLUDED = ("study/grid.py", "study/setting.py", "study/runcache.py")
SOURCE_SUFFIXES = (".py", ".c", ".cc", ".cpp", ".h", ".cu")
SCAN_ENV = ("ADLIB_SCAN_IMPL", "ADLIB_SCAN_NATIVE")

_COUNTS = {"trained": 0, "cache": 0, "evaluated": 0, "evaluation_cache": 0}


def counts() -> dict[str, int]:
    """Fits trained and read from the cache, and evaluations computed and read, in this process."""
    return dict(_COUNTS)


def mode(cache: bool | None = None) -> str:
    """"off", "fit" (fits only) or "all" (fits and evaluations): ``cache`` when given, else ``$ADLIB_RUN_CACHE``."""
    if cache is not None:
        return "all" if cache else "off"
    value = os.environ.get(ENV, "1").strip().lower()
    if value in ("0", "false", "no", "off"):
        return "off"
    return "fit" if value == "fit" else "all"


def root() -> Path:
    folder = os.environ.get(DIR_ENV)
    if folder:
        return Path(folder).expanduser()
    base = os.environ.get("ADLIB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "adlib")
    return Path(base) / FOLDER


def limit_bytes() -> float:
    raw = os.environ.get(SIZE_ENV)
    try:
        return float(raw) * 2**20 if raw else DEFAULT_MB * 2**20
    except ValueError:
        raise ValueError(f"{SIZE_ENV}={raw!r}: expected a number of megabytes") from None


# ------------------------------------------------------------------------------------------- fingerprints
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}
_SOURCE_HASH: str | None = None


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (kept per path, size and modification time for this process)."""
    stat = os.stat(path)
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _FILE_DIGESTS[key] = digest.hexdigest()
    return _FILE_DIGESTS[key]


TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
_CONTENT_DIGESTS: dict[tuple[str, int, int], str] = {}


def _feed(digest, obj: Any) -> None:
    """Hash a loaded object: tensors by dtype, shape and values; mappings by sorted key; the rest by repr."""
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, Mapping):
        for key in sorted(obj, key=str):
            digest.update(f"K{key!s}".encode())
            _feed(digest, obj[key])
    elif isinstance(obj, (list, tuple)):
        digest.update(f"L{len(obj)}".encode())
        for item in obj:
            _feed(digest, item)
    else:
        digest.update(f"V{obj!r}".encode())


def content_digest(path: str | os.PathLike) -> str:
    """sha256 of what a file a config names holds (a checkpoint the model loads, a weights file): a torch file's
    loaded tensors and values (``torch.save`` writes other bytes for the same tensors each time), else its
    bytes. Kept per path, size and modification time for this process."""
    stat = os.stat(path)
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _CONTENT_DIGESTS:
        if Path(path).suffix in TORCH_SUFFIXES:
            import torch

            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # a file of plain containers and config values only, written by adlib itself
                obj = torch.load(path, map_location="cpu", weights_only=False)
            digest = hashlib.sha256()
            _feed(digest, obj)
            _CONTENT_DIGESTS[key] = digest.hexdigest()
        else:
            _CONTENT_DIGESTS[key] = file_digest(path)
    return _CONTENT_DIGESTS[key]


def _config(config) -> dict:
    """The model config as plain values; a field naming a file (``hvq_checkpoint``, ``weights``) enters by the
    file's content, not its path (the same tokenizer saved under another output folder is the same fit)."""
    out = {}
    for name, value in asdict(config).items():
        if isinstance(value, str) and value and os.path.isfile(value):
            value = f"file with sha256 {content_digest(value)}"
        out[name] = value
    return out


def _items(dataset) -> list[tuple[Any, Any]] | None:
    """(sample, how it is read) per item in the order the dataset gives them; None for a dataset that is not
    made of ``AnomalyDataset`` files (its content cannot be told without reading every item)."""
    from torch.utils.data import ConcatDataset, Subset

    from adlib.data import AnomalyDataset

    if isinstance(dataset, Subset):
        inner = _items(dataset.dataset)
        return None if inner is None else [inner[int(i)] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        parts = [_items(d) for d in dataset.datasets]
        return None if any(p is None for p in parts) else [item for part in parts for item in part]
    if isinstance(dataset, AnomalyDataset) and dataset.transform is None:
        how = (dataset.image_size, dataset.layout.name, dataset.layout.mask_encoding,
               getattr(dataset.layout, "mask_threshold", None), getattr(dataset.resize_mask, "mode", None),
               dataset.category)
        return [(sample, how) for sample in dataset.samples]
    return None


def dataset_fingerprint(dataset, with_paths: bool = False) -> str | None:
    """A hash of what a dataset gives, item by item: each image file's bytes and the size it is read at (and,
    ``with_paths``, for a test set, its path, masks' bytes, label and group, which results carry). None for a
    dataset of another kind; a mapping category -> dataset hashes each under its name."""
    if isinstance(dataset, Mapping):
        parts = {name: dataset_fingerprint(d, with_paths) for name, d in dataset.items()}
        if any(v is None for v in parts.values()):
            return None
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    items = _items(dataset)
    if items is None:
        return None
    digest = hashlib.sha256()
    for sample, how in items:
        digest.update(f"{file_digest(sample.image_path)}|{how}".encode())
        if with_paths:
            masks = [file_digest(p) for p in sample.mask_paths]
            digest.update(f"|{sample.image_path}|{masks}|{sample.label}|{sample.group}|{sample.defect}".encode())
        digest.update(b"\n")
    return digest.hexdigest()


def source_hash() -> str:
    """sha256 over the adlib source files a fit runs (see the module docstring), computed once per process."""
    global _SOURCE_HASH
    if _SOURCE_HASH is None:
        package = Path(__file__).resolve().parents[1]
        digest = hashlib.sha256()
        for path in sorted(package.rglob("*")):
            rel = path.relative_to(package)
            if path.suffix not in SOURCE_SUFFIXES or not path.is_file():
                continue
            if rel.parts[0] in SOURCE_EXCLUDED and rel.as_posix() not in SOURCE_INCLUDED:
                continue
            if "__pycache__" in rel.parts:
                continue
            digest.update(f"{rel.as_posix()}\0".encode())
            digest.update(path.read_bytes())
        _SOURCE_HASH = digest.hexdigest()
    return _SOURCE_HASH


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(_plain(obj), sort_keys=True).encode()).hexdigest()


def where_it_runs(device: Any) -> dict:
    import torch

    device = torch.device(device)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
           "scan": {k: os.environ.get(k, "") for k in SCAN_ENV}}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def fit_key(model, fit_config, train, calibration=None, device: Any = "cpu") -> tuple[str, dict] | None:
    """(key, what it was made of) of a fit, or None when the data's content cannot be told (see
    ``dataset_fingerprint``)."""
    train_print = dataset_fingerprint(train)
    calibration_print = dataset_fingerprint(calibration) if calibration is not None else ""
    if train_print is None or calibration_print is None:
        return None
    tokenizer = getattr(model, "tokenizer", None)
    parts = {
        "format": FOLDER,
        "model": model.name,
        "config": _config(model.config),
        "tokenizer": getattr(tokenizer, "identity", None) if tokenizer is not None else None,
        "fit": {f.name: getattr(fit_config, f.name) for f in fields(fit_config) if f.name not in NOT_IN_KEY},
        "train": train_print,
        "calibration": calibration_print,
        "source": source_hash(),
        "runtime": where_it_runs(device),
    }
    return _hash(parts), _plain(parts)


def eval_key(fit: str, test, protocols: Sequence[str], keep_maps: int, batch_size: int) -> str | None:
    test_print = dataset_fingerprint(test, with_paths=True)
    if test_print is None:
        return None
    return _hash({"fit": fit, "test": test_print, "protocols": list(protocols), "keep_maps": keep_maps,
                  "batch_size": batch_size})[:32]


# ------------------------------------------------------------------------------------------------ entries
class Entry:
    """One fit's place in the cache, held under its lock (``RunCache.open``); the null entry (no cache)
    finds nothing and stores nothing."""

    def __init__(self, folder: Path | None = None, key: str = "", evaluations: bool = True,
                 parts: dict | None = None) -> None:
        self.folder, self.key, self.cache_evaluations = folder, key, evaluations
        self.parts = parts or {}  # what the key was made of

    @property
    def active(self) -> bool:
        return self.folder is not None

    def read_fit(self, model) -> dict | None:
        """The cached ``FitResult``'s fields, its state loaded into ``model``; None when there is none (or it is
        unreadable)."""
        if self.folder is None or not (self.folder / "fit.pt").is_file():
            return None
        import torch

        try:
            payload = torch.load(self.folder / "fit.pt", map_location="cpu", weights_only=True)
            if payload["model"] != model.name:
                return None
            model.load_checkpoint_state(payload["state"])
            result = dict(payload["fit"])
        except Exception:  # a truncated or foreign file: fit again and rewrite it
            return None
        self._touch()
        _COUNTS["cache"] += 1
        return result

    def write_fit(self, model, result) -> None:
        _COUNTS["trained"] += 1
        if self.folder is None:
            return
        import torch

        from adlib.io import atomic_path, atomic_write_json

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.folder / "key.json", self.parts)
            with atomic_path(self.folder / "fit.pt") as tmp:
                torch.save({"model": model.name, "state": model.checkpoint_state(), "fit": asdict(result)}, tmp)
            self._touch()
        except OSError:  # a full or read-only cache disk costs time, never the run
            pass

    def read_evaluations(self, key: str | None) -> dict | None:
        path = self._eval_path(key)
        if path is None or not path.is_file():
            return None
        try:
            with open(path, "rb") as handle:
                evaluations = pickle.load(handle)
        except Exception:
            return None
        self._touch()
        _COUNTS["evaluation_cache"] += 1
        return evaluations

    def write_evaluations(self, key: str | None, evaluations: dict) -> None:
        _COUNTS["evaluated"] += 1
        path = self._eval_path(key)
        if path is None:
            return
        from adlib.io import atomic_path

        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as handle:
                pickle.dump(evaluations, handle, protocol=pickle.HIGHEST_PROTOCOL)
        except OSError:
            pass

    def _eval_path(self, key: str | None) -> Path | None:
        if self.folder is None or key is None or not self.cache_evaluations:
            return None
        return self.folder / f"eval-{key}.pkl"

    def _touch(self) -> None:
        try:
            (self.folder / "used").touch()
        except OSError:
            pass


class RunCache:
    """The run cache under ``folder`` (default ``root()``)."""

    def __init__(self, folder: str | os.PathLike | None = None, evaluations: bool = True) -> None:
        self.folder = Path(folder) if folder is not None else root()
        self.evaluations = evaluations

    def entry_folder(self, key: str) -> Path:
        return self.folder / key[:2] / key

    def lock_path(self, key: str) -> Path:
        return self.folder / "locks" / f"{key}.lock"

    @contextmanager
    def open(self, key: str, parts: dict | None = None) -> Iterator[Entry]:
        """The entry of ``key``, under its exclusive lock (waits while another process holds it)."""
        lock = self.lock_path(key)
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            handle = open(lock, "a+")
        except OSError:  # no cache folder can be had: run without the cache
            yield Entry()
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield Entry(self.entry_folder(key), key, self.evaluations, parts)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
        self.evict(keep=key)

    def entries(self) -> list[tuple[float, int, str, Path]]:
        """(last used, bytes, key, folder) of every entry."""
        out = []
        if not self.folder.is_dir():
            return out
        for shard in self.folder.iterdir():
            if not shard.is_dir() or len(shard.name) != 2:
                continue
            for folder in shard.iterdir():
                try:
                    files = [p for p in folder.iterdir() if p.is_file()]
                    size = sum(p.stat().st_size for p in files)
                    used = max((p.stat().st_mtime for p in files), default=0.0)
                except OSError:
                    continue
                out.append((used, size, folder.name, folder))
        return out

    def size(self) -> int:
        return sum(size for _, size, _, _ in self.entries())

    def evict(self, keep: str = "", limit: float | None = None) -> list[str]:
        """Remove whole entries, least recently used first, until the cache holds at most ``limit`` bytes
        (default ``ADLIB_RUN_CACHE_MB``); entries locked by another process and ``keep`` stay. Returns the
        removed keys."""
        limit = limit_bytes() if limit is None else limit
        entries = sorted(self.entries())
        total = sum(size for _, size, _, _ in entries)
        removed = []
        for _, size, key, folder in entries:
            if total <= limit:
                break
            if key == keep:
                continue
            lock = self.lock_path(key)
            try:
                with open(lock, "a+") as handle:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    try:
                        doomed = folder.with_name(f".{key}.evict-{os.getpid()}")
                        os.replace(folder, doomed)
                        shutil.rmtree(doomed, ignore_errors=True)
                    finally:  # the lock file stays: a process may be waiting on it
                        fcntl.flock(handle, fcntl.LOCK_UN)
            except OSError:  # held by another process (BlockingIOError) or already gone
                continue
            total -= size
            removed.append(key)
        return removed


@contextmanager
def entry(model, fit_config, train, calibration=None, device: Any = "cpu", cache: bool | None = None,
          reason: str = "") -> Iterator[Entry]:
    """The cache entry of this fit under its lock, or the null entry when the cache is off (``cache``, else
    ``$ADLIB_RUN_CACHE``), ``reason`` says why not (a per-epoch callback), or the data cannot be fingerprinted."""
    how = mode(cache)
    made = None if how == "off" or reason else fit_key(model, fit_config, train, calibration, device)
    if made is None:
        yield Entry()
        return
    key, parts = made
    with RunCache(evaluations=how == "all").open(key, parts) as found:
        yield found


__all__ = ["Entry", "RunCache", "counts", "dataset_fingerprint", "entry", "eval_key", "fit_key", "mode", "root",
           "source_hash"]
