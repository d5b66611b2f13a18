"""pyproject.toml and environment.yml describe the same environment."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}  # PyPI name -> conda-forge name, where they differ


def split_requirement(text: str) -> tuple[str, str]:
    name, spec = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", text).groups()
    return name.lower().replace("_", "-"), spec.replace(" ", "")


def pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return dict(split_requirement(r) for r in project["dependencies"])


def environment_requirements() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = {}, {}
    for item in env["dependencies"]:
        if isinstance(item, dict):
            pip.update(split_requirement(r) for r in item["pip"] if not r.startswith("-e"))
        else:
            name, spec = split_requirement(item)
            if name not in {"python", "pip"}:
                conda[name] = spec
    pypi_names = {conda_name: pypi for pypi, conda_name in CONDA_NAMES.items()}
    merged = {pypi_names.get(name, name): spec for name, spec in conda.items()}
    overlap = merged.keys() & pip.keys()
    assert not overlap, f"listed under both conda and pip in environment.yml: {sorted(overlap)}"
    return merged | pip


def test_same_packages_and_versions():
    assert environment_requirements() == pyproject_requirements()


def test_python_floor_matches():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    (python,) = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert python.removeprefix("python") == project["requires-python"]


def test_environment_installs_the_package_itself():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip
