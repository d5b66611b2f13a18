"""Frozen features on disk, shared by every run on the machine (notebooks, papers, seeds).

A model whose ``extract`` is frozen names what it computes with ``feature_key()`` (backbone, weights file
hash, taps, image size). The engine extracts frozen features one image at a time (``engine.extract_frozen``),
so an image's features have the same bits whatever batch it came in; what else changes those bits (the torch
version, the device, the CPU thread count) joins the feature key in ``bits_key``. Features are stored per
image, under a folder named by a hash of that key, in a file named by a hash of the image tensor's content:

    $ADLIB_CACHE/features-v2/<sha256(key)[:20]>/key.txt          the key in words
    $ADLIB_CACHE/features-v2/<sha256(key)[:20]>/<ab>/<image hash>.pt

Each file holds one entry: the key, the image hash, the shapes and dtypes of the features, a hash of their
bytes, and the features. An entry that cannot be read, or whose key, image, shapes or bytes do not match, or
whose shapes differ from this key's (``FeatureStore.verify``), is not used: it is recomputed and rewritten,
with a warning. So the same images through the same frozen backbone are extracted once per machine, whatever
notebook, paper, seed or subset asks for them, and a cached run gives the bits of an uncached one. Files are
written atomically. ``ADLIB_FEATURE_CACHE=0`` turns the disk cache off. (The folder ``features/`` of earlier
versions, per-batch bits without entry checks, is not read.)
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import torch

ENV = "ADLIB_FEATURE_CACHE"
FOLDER = "features-v2"
FORMAT = 2
WARN_AT_MOST = 5  # warnings per store about rejected entries; the count is in ``FeatureStore.rejected``


def cache_root() -> Path:
    base = os.environ.get("ADLIB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "adlib")
    return Path(base) / FOLDER


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def bits_key(feature_key: str, device: torch.device | str) -> str:
    """The feature key plus what else changes the bits of the same computation: torch's version, the device
    (a GPU's name), and on the CPU the intra-op thread count (different thread counts may split reductions
    differently)."""
    device = torch.device(device)
    where = device.type
    if device.type == "cuda":
        where += f" {torch.cuda.get_device_name(device)}"
    elif device.type == "cpu":
        where += f" threads={torch.get_num_threads()}"
    return f"{feature_key}|torch {torch.__version__}|{where}"


def image_hash(image: torch.Tensor) -> str:
    """A hash of one image tensor's values, shape and dtype (what the extractor actually sees)."""
    t = image.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{tuple(t.shape)}|{t.dtype}|".encode())
    digest.update(t.numpy().tobytes())
    return digest.hexdigest()[:32]


def _clone(features: Any) -> Any:
    """Own storage for one image's slice (saving a view would save the whole batch's storage)."""
    if isinstance(features, torch.Tensor):
        return features.detach().to("cpu").clone()
    if isinstance(features, (list, tuple)):
        return type(features)(_clone(f) for f in features)
    if isinstance(features, dict):
        return {k: _clone(v) for k, v in features.items()}
    raise TypeError(f"cannot cache features of type {type(features).__name__}")


def signature(features: Any) -> Any:
    """The structure, shapes and dtypes of a feature structure (tensors, lists, tuples, dicts), comparable
    with ``==``."""
    if isinstance(features, torch.Tensor):
        return ("tensor", tuple(features.shape), str(features.dtype))
    if isinstance(features, (list, tuple)):
        return (type(features).__name__, tuple(signature(f) for f in features))
    if isinstance(features, dict):
        return ("dict", tuple((k, signature(v)) for k, v in sorted(features.items())))
    raise TypeError(f"cannot cache features of type {type(features).__name__}")


def content_hash(features: Any) -> str:
    """sha256 of the features' bytes, in structure order."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            digest.update(value.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            for key in sorted(value):
                feed(value[key])
        else:
            for item in value:
                feed(item)

    feed(features)
    return digest.hexdigest()


def _as_nested(value: Any) -> Any:
    """A loaded signature (tuples may come back as lists) in the form ``signature`` gives."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_nested(v) for v in value)
    return value


class FeatureStore:
    """Per-image features for one key (``bits_key`` of a model's ``feature_key()``)."""

    def __init__(self, key: str, root: str | os.PathLike | None = None) -> None:
        self.key = key
        self.folder = Path(root) if root is not None else cache_root()
        self.folder = self.folder / hashlib.sha256(key.encode()).hexdigest()[:20]
        self.hits = 0
        self.misses = 0
        self.rejected = 0  # entries found but not used (damaged, foreign, wrong-shaped): recomputed
        self.expected: Any = None  # the features' signature under this key, once known (``verify``)
        self.trusted = True  # False once an entry contradicted a fresh extraction (``verify``)

    def _path(self, digest: str) -> Path:
        return self.folder / digest[:2] / f"{digest}.pt"

    def verify(self, digest: str, features: Any) -> bool:
        """Features just computed for the image ``digest``: from now on entries of other shapes are refused. When
        this image has an entry with other bits, the cached features were computed otherwise under the same key
        (another version of the code): no entry of this store is used from then on (all are recomputed and
        rewritten), with a warning. Returns True when the image's entry exists and matches (counted as a hit)."""
        self.expected = signature(features)
        entry, problem = self._read(digest)
        if entry is None:
            self.misses += 1
            if problem is not None:
                self._reject(self._path(digest), problem)
            return False
        if entry["sha256"] != content_hash(features):
            self.trusted = False
            self.misses += 1
            warnings.warn(f"feature cache {self.folder}: the entry of an image differs from its features computed "
                          "now (the cache was filled by another version of the code under the same key); its "
                          "entries are recomputed and rewritten", stacklevel=2)
            return False
        self.hits += 1
        return True

    def get(self, digest: str) -> Any | None:
        """The features of the image with hash ``digest``, or None (missing, or refused with a warning)."""
        entry, problem = self._read(digest) if self.trusted else (None, None)
        if entry is None:
            self.misses += 1
            if problem is not None:
                self._reject(self._path(digest), problem)
            return None
        self.hits += 1
        return entry["features"]

    def _read(self, digest: str) -> tuple[dict | None, str | None]:
        """(the entry, None) when the image has a usable entry; (None, why) when it has a refused one; (None,
        None) when it has none."""
        path = self._path(digest)
        if not path.is_file():
            return None, None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # truncated, damaged, or not a torch file
            return None, f"is unreadable ({type(error).__name__})"
        problem = self._check(entry, digest)
        return (entry, None) if problem is None else (None, problem)

    def _reject(self, path: Path, problem: str) -> None:
        self.rejected += 1
        if self.rejected <= WARN_AT_MOST:
            more = " (further such warnings for this cache are not shown)" if self.rejected == WARN_AT_MOST else ""
            warnings.warn(f"feature cache entry {path} {problem}; recomputing it{more}", stacklevel=3)

    def _check(self, entry: Any, digest: str) -> str | None:
        """Why an entry cannot be used, or None."""
        if not isinstance(entry, dict) or entry.get("format") != FORMAT or "features" not in entry:
            return "is not a feature cache entry of this version"
        if entry.get("key") != self.key:
            return "belongs to another feature key"
        if entry.get("image") != digest:
            return f"holds the features of another image ({entry.get('image')})"
        try:
            found = signature(entry["features"])
        except TypeError:
            return "holds no feature tensors"
        if found != _as_nested(entry.get("signature")):
            return "has features whose shapes differ from those it records (damaged)"
        if self.expected is not None and found != self.expected:
            return f"has features of another shape than this key's ({found} != {self.expected})"
        if content_hash(entry["features"]) != entry.get("sha256"):
            return "has features whose bytes differ from those it records (damaged)"
        return None

    def put(self, digest: str, features: Any) -> None:
        from adlib.io import atomic_path

        features = _clone(features)
        entry = {"format": FORMAT, "key": self.key, "image": digest, "signature": signature(features),
                 "sha256": content_hash(features), "features": features}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            key_file = self.folder / "key.txt"
            if not key_file.exists():
                with atomic_path(key_file) as tmp:
                    Path(tmp).write_text(self.key + "\n", encoding="utf-8")
            with atomic_path(self._path(digest)) as tmp:
                torch.save(entry, tmp)
        except OSError:  # a full or read-only cache disk costs speed, never the run
            pass
