"""The collection's notebooks: ``notebooks/<paper>/NN_<topic>.ipynb``, found and read without running them.

Each declares the files it writes in its metadata::

    metadata["adlib"] = {"title": "...", "outputs": ["results/{profile}/varad/table2.csv", ...]}

(paths relative to the output root, ``{profile}`` substituted). ``reproduce`` runs them; ``report`` reads what
they declared.
"""
from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path
from typing import Iterable

NOTEBOOK_NAME = re.compile(r"^\d\d_[\w-]+\.ipynb$")


def discover(notebook_root: Path, papers: Iterable[str] | None = None, only: str | None = None) -> list[Path]:
    """Notebooks `<root>/<paper>/NN_<topic>.ipynb`, sorted; `only` is a glob (or substring) on `paper/name`."""
    notebook_root = Path(notebook_root)
    if not notebook_root.is_dir():
        return []
    wanted = set(papers) if papers else None
    found = []
    for paper_dir in sorted(p for p in notebook_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if wanted is not None and paper_dir.name not in wanted:
            continue
        for path in sorted(paper_dir.glob("*.ipynb")):
            if not NOTEBOOK_NAME.match(path.name):
                continue
            label = f"{paper_dir.name}/{path.stem}"
            if only and not _matches(label, only):
                continue
            found.append(path)
    return found


def _matches(label: str, pattern: str) -> bool:
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatch(label, pattern) or fnmatch.fnmatch(label + ".ipynb", pattern)
    return pattern in label


def notebook_metadata(path: Path, profile: str) -> tuple[str, list[str]]:
    """(title, declared outputs with `{profile}` substituted) from the notebook's `metadata["adlib"]`."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    meta = nb.get("metadata", {}).get("adlib", {})
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: metadata['adlib'] must be a dict with 'outputs' and 'title'")
    outputs = meta.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
        raise ValueError(f"{path}: metadata['adlib']['outputs'] must be a list of relative paths")
    declared = []
    for template in outputs:
        rel = template.format(profile=profile)
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ValueError(f"{path}: declared output {template!r} must be relative to the output root")
        declared.append(rel)
    return meta.get("title") or _first_heading(nb) or Path(path).stem, declared


def _first_heading(nb: dict) -> str | None:
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", "")).splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return None
