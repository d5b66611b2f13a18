"""Frozen features on disk, shared by every run on the machine (notebooks, papers, seeds).

A model whose ``extract`` is frozen names what it computes with ``feature_key()`` (backbone, weights file
hash, taps, image size). Features are stored per image, under a folder named by a hash of that key, in a
file named by a hash of the image tensor's content:

    $ADLIB_CACHE/features/<sha256(feature key)[:20]>/key.txt          the key in words
    $ADLIB_CACHE/features/<sha256(feature key)[:20]>/<ab>/<image hash>.pt

So the same images through the same frozen backbone are extracted once per machine, whatever notebook,
paper, seed or subset asks for them. Files are written atomically; a file that cannot be read is
treated as missing and rewritten. ``ADLIB_FEATURE_CACHE=0`` turns the disk cache off.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

ENV = "ADLIB_FEATURE_CACHE"


def cache_root() -> Path:
    base = os.environ.get("ADLIB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "adlib")
    return Path(base) / "features"


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


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


class FeatureStore:
    """Per-image features for one feature key."""

    def __init__(self, key: str, root: str | os.PathLike | None = None) -> None:
        self.key = key
        self.folder = Path(root) if root is not None else cache_root()
        self.folder = self.folder / hashlib.sha256(key.encode()).hexdigest()[:20]
        self.hits = 0
        self.misses = 0

    def _path(self, digest: str) -> Path:
        return self.folder / digest[:2] / f"{digest}.pt"

    def get(self, digest: str) -> Any | None:
        path = self._path(digest)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            value = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a truncated or foreign file: recompute it
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, digest: str, features: Any) -> None:
        from adlib.io import atomic_path

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            key_file = self.folder / "key.txt"
            if not key_file.exists():
                key_file.write_text(self.key + "\n", encoding="utf-8")
            with atomic_path(self._path(digest)) as tmp:
                torch.save(_clone(features), tmp)
        except OSError:  # a full or read-only cache disk costs speed, never the run
            pass
