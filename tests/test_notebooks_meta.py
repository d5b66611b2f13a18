"""Every notebook is papermill-ready, declares its outputs, opens with prose and is committed clean."""
import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
# The contract's parameters for every notebook, and the fuller set the VarAD notebooks promise.
REQUIRED = {"profile", "data_root", "device", "seed", "output_root"}
REQUIRED_VARAD = REQUIRED | {"category", "image_size", "backbone", "epochs"}
DEFAULTS = {"profile": "smoke", "data_root": None, "device": "cpu", "seed": 0, "output_root": None}


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def source(cell: dict) -> str:
    text = cell.get("source", "")
    return "".join(text) if isinstance(text, list) else text


def parameters_cell(nb: dict) -> dict:
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"expected exactly one cell tagged 'parameters', found {len(tagged)}"
    assert tagged[0]["cell_type"] == "code"
    return tagged[0]


def assigned_literals(code: str) -> dict:
    values = {}
    for node in ast.parse(code).body:
        assert isinstance(node, ast.Assign), f"parameters cell may only assign names, found {ast.dump(node)[:60]}"
        for target in node.targets:
            values[target.id] = ast.literal_eval(node.value)
    return values


def test_there_are_notebooks():
    assert any(p.parent.name == "varad" for p in NOTEBOOKS), "no notebooks under notebooks/varad"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_parameters_cell(path):
    nb = load(path)
    values = assigned_literals(source(parameters_cell(nb)))
    required = REQUIRED_VARAD if path.parent.name == "varad" else REQUIRED
    missing = sorted(required - set(values))
    assert not missing, f"parameters cell lacks {missing}"
    for name, default in DEFAULTS.items():
        assert values[name] == default, f"default of {name} should be {default!r}, is {values[name]!r}"
    code_cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code_cells[0] is parameters_cell(nb), "the parameters cell must be the first code cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_starts_with_markdown_heading(path):
    first = load(path)["cells"][0]
    assert first["cell_type"] == "markdown"
    assert source(first).lstrip().startswith("# "), "the first cell should open with a level-1 title"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_declares_outputs_it_writes(path):
    nb = load(path)
    meta = nb["metadata"].get("adlib")
    assert isinstance(meta, dict) and meta.get("title"), "metadata['adlib']['title'] missing"
    outputs = meta.get("outputs")
    assert isinstance(outputs, list) and outputs, "metadata['adlib']['outputs'] must list the files written"
    code = "\n".join(source(c) for c in nb["cells"] if c["cell_type"] == "code")
    for template in outputs:
        rel = Path(template.format(profile="smoke"))
        assert not rel.is_absolute() and ".." not in rel.parts, template
        assert "{profile}" in template, f"{template}: outputs must go under the profile's folder"
        assert rel.parts[0] in ("results", "figures"), f"{template}: outputs belong under results/ or figures/"
        assert rel.suffix in (".csv", ".png"), template
        if rel.name == "claims.csv":  # written by the claims machinery, never by name
            assert "claims.check(" in code or "claims.record(" in code, \
                f"{template} is declared but no code cell calls claims.check or claims.record"
            continue
        # the notebook must mention the table/figure name it declares (write_table / save_figure call)
        assert f'"{rel.stem}"' in code, f"{template} is declared but no code cell writes {rel.stem!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_without_outputs(path):
    for i, cell in enumerate(load(path)["cells"]):
        if cell["cell_type"] != "code":
            continue
        assert cell.get("outputs") == [], f"cell {i} has outputs: clear them before committing"
        assert cell.get("execution_count") is None, f"cell {i} has an execution count"
