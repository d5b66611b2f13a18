"""Datasets: folder readers for the MVTec-style layouts, the synthetic benchmark, downloads, converters.

Names are imported lazily, so `import adlib.data` (and the CLI) does not import torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "AnomalyDataset": "folder", "category_datasets": "folder", "load_image": "folder", "load_mask": "folder",
    "check_split": "folder", "SplitCheck": "folder", "content_fingerprint": "folder",
    "data_sources_read": "folder",
    "DatasetError": "layout", "LayoutSpec": "layout", "LAYOUTS": "layout", "Sample": "layout",
    "register_layout": "layout", "detect_layout": "layout", "list_categories": "layout",
    "index_split": "layout", "dataset_stats": "layout", "stats_frame": "layout", "format_stats": "layout",
    "ResizeImage": "transforms", "ResizeMask": "transforms", "Normalize": "transforms",
    "IMAGENET_MEAN": "transforms", "IMAGENET_STD": "transforms",
    "synthetic_root": "synth", "generate_synthetic": ("synth", "generate"),
    "SOURCES": "download", "DatasetSource": "download", "download_dataset": "download",
    "download_file": "download", "extract_archive": "download", "DownloadError": "download",
    "UnsafeArchiveError": "download",
    "convert_visa": "visa",
    "DATASETS": "standins", "DatasetInfo": "standins", "missing_reason": "standins", "standin_root": "standins",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'adlib.data' has no attribute {name!r}")
    target = _EXPORTS[name]
    module_name, attribute = target if isinstance(target, tuple) else (target, name)
    value = getattr(importlib.import_module(f"{__name__}.{module_name}"), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
