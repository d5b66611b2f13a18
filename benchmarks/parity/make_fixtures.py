"""Write a parity fixture from the authors' own code: their model at a reduced size, their init, a fixed input,
and the output of every stage the paper names.

    python benchmarks/parity/make_fixtures.py --reference /work/.mirror/zhangzjn+ADer/... --model vitad

``--reference`` is a git directory (a bare snapshot, e.g. what the search tool's ``fetch`` brings) or a checked
out folder of the authors' repository. The snapshot's files are exported to a temporary folder that goes first on
``sys.path``; ``benchmarks/parity/<model>.py`` (one per model, see CONTRACT) imports the authors' classes from
it, with the smallest shims a CPU needs written in that file, never copied from the authors. Nothing of the
authors' code is written into this project: only their weights at a reduced size (drawn by their own init),
their outputs and their key names.

Run it with a Python that has the authors' dependencies (often a venv of its own, not adlib's); adlib itself is
not imported by this script or by the model files, so the fixture is the authors' alone.

Writes ``tests/fixtures/parity/<model>.pt`` (at most 2 MB) and ``tests/fixtures/parity/<model>_keys.json`` (the
paper-size state dict's names and shapes, and those of any released-checkpoint variant).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parents[1] / "tests" / "fixtures" / "parity"
MAX_BYTES = 2 * 2**20

CONTRACT = """benchmarks/parity/<model>.py defines:
  REPOSITORY = "owner/name"             the authors' repository
  FILES = ("path/in/repo.py", ...)      the files compared
  def make(root: Path) -> dict          the authors' model at a reduced size, built by their classes imported from
                                        `root` (already on sys.path), seeded, in eval mode; returns
                                        {"config": {adlib config fields for from_authors},
                                         "authors_config": {what their constructor got},
                                         "state_dict": {their key: tensor}, "input": tensor,
                                         "stages": {stage name: tensor}, "notes": "...",
                                         optional "files": {file name: object}: other files (a checkpoint
                                         in the authors' format) torch.save'd next to the fixture}
  def full_keys(root: Path) -> dict     {"paper": {key: shape}, "variants": {name: {key: shape}}, "config": {...}}
                                        (shapes of the paper-size model, built on the meta device or from a
                                        released checkpoint's listing; a variant is a released checkpoint whose
                                        keys differ from the code's)
  ALSO = {"folder": "owner/name"}       (optional) other repositories the code needs (a submodule the snapshot
                                        lacks): given as --also folder=GIT_DIR, exported into root/folder and
                                        recorded with their commits"""


def export(reference: Path, commit: str) -> tuple[Path, str]:
    """The reference's files at ``commit`` in a temporary folder, and the full commit id."""
    if (reference / "HEAD").exists() and not (reference / ".git").exists():  # a bare git directory
        git = ["git", f"--git-dir={reference}"]
    else:
        git = ["git", "-C", str(reference)]
    full = subprocess.run(git + ["rev-parse", commit], check=True, capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(git + ["archive", full], check=True, capture_output=True).stdout
    target = Path(tempfile.mkdtemp(prefix="parity-"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target, full


def model_module(name: str):
    path = HERE / f"{name}.py"
    if not path.is_file():
        raise SystemExit(f"--model {name}: no {path.relative_to(HERE.parents[1])}\n{CONTRACT}")
    spec = importlib.util.spec_from_file_location(f"parity_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="the authors' repository (git dir or folder)")
    parser.add_argument("--model", required=True, help="adlib model name (a file benchmarks/parity/<model>.py)")
    parser.add_argument("--commit", default="HEAD", help="the reference commit (default: HEAD)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--also", action="append", default=[], metavar="FOLDER=GIT_DIR",
                        help="a repository the model file's ALSO names, exported (HEAD) into that folder")
    args = parser.parse_args(argv)
    import torch

    module = model_module(args.model)
    root, commit = export(args.reference, args.commit)
    given = dict(item.split("=", 1) for item in args.also)
    also = []
    for folder, repository in getattr(module, "ALSO", {}).items():
        if folder not in given:
            raise SystemExit(f"--model {args.model} needs {repository}: pass --also {folder}=GIT_DIR")
        extra, extra_commit = export(Path(given[folder]), "HEAD")
        if (root / folder).is_dir():  # a submodule's empty folder
            (root / folder).rmdir()
        os.replace(extra, root / folder)
        also.append({"folder": folder, "repository": repository, "commit": extra_commit})
    sys.path.insert(0, str(root))
    cwd = os.getcwd()
    os.chdir(root)  # some reference code reads files relative to its own root
    try:
        fixture = module.make(root)
        keys = module.full_keys(root)
    finally:
        os.chdir(cwd)
    reference = {"repository": module.REPOSITORY, "commit": commit, "files": list(module.FILES),
                 **({"also": also} if also else {})}
    extra_files = fixture.pop("files", {})
    versions = {"torch": torch.__version__}
    for package in ("timm", "numpy"):
        try:
            versions[package] = importlib.import_module(package).__version__
        except ImportError:
            pass
    fixture = {"model": args.model, "reference": reference, **versions, **fixture}
    args.out.mkdir(parents=True, exist_ok=True)
    for file_name, content in extra_files.items():
        extra = io.BytesIO()
        torch.save(content, extra)
        if extra.tell() > MAX_BYTES:
            raise SystemExit(f"{args.model}: {file_name} is {extra.tell() / 2**20:.1f} MB > 2 MB")
        (args.out / f"{file_name}.tmp").write_bytes(extra.getvalue())
        os.replace(args.out / f"{file_name}.tmp", args.out / file_name)
    buffer = io.BytesIO()
    torch.save(fixture, buffer)
    if buffer.tell() > MAX_BYTES:
        raise SystemExit(f"{args.model}: fixture is {buffer.tell() / 2**20:.1f} MB > 2 MB; reduce the model's width/depth")
    target = args.out / f"{args.model}.pt"
    tmp = target.with_suffix(".pt.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, target)
    keys_path = args.out / f"{args.model}_keys.json"
    keys_path.write_text(json.dumps({"model": args.model, "reference": reference,
                                     **{k: v for k, v in keys.items()}}, indent=1, default=list) + "\n")
    print(f"wrote {target} ({buffer.tell() / 2**10:.0f} KiB; stages: {', '.join(fixture['stages'])}) and {keys_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
