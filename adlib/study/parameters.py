"""Notebook parameters: each checked against what the notebook declares, before any work.

A notebook's cell tagged ``parameters`` declares names with defaults; papermill (``papermill -p NAME VALUE``,
``adlib reproduce -p``) injects a cell after it that sets some of them. ``check_values`` is the one check:

- a name the notebook does not declare is refused (a typo must not run the defaults silently);
- a value must be of the parameter's type: the type of the parameter of the same name in
  ``adlib.study.resolve_setting`` (every notebook hands its parameters to it), else its default's type (a
  ``None`` default without such a parameter takes any value); it is converted where that loses nothing
  (``seeds`` given as ``0,1,2`` or ``[0, 1, 2]`` becomes the list ``[0, 1, 2]``), see ``adlib.config``;
- a ``backbone`` or ``model`` must be one that exists (``adlib.backbones``, ``adlib.models`` registries).

``adlib reproduce`` runs it before a notebook's kernel starts. Inside a notebook, ``check_parameters(globals())``
(the first line after the parameters cell's imports) runs it on what papermill injected, so a notebook run by
plain papermill fails there, in one line, too.
"""
from __future__ import annotations

import ast
import importlib
from typing import Any, Mapping

# A parameter of one of these names names an entry of a registry: (module, function listing the names).
REGISTRIES = {"backbone": ("adlib.backbones", "available"), "model": ("adlib.models", "available_models")}
INJECTED_HEADER = "# Parameters"  # the first line of the cell papermill injects


class ParameterError(ValueError):
    """A parameter given to a notebook that it does not declare, or whose value does not fit (one line)."""


def declared_type(name: str, default: Any) -> Any:
    """The type a notebook parameter takes: ``resolve_setting``'s for that name, else its default's, else Any."""
    from adlib.config import signature_of
    from adlib.study.setting import resolve_setting

    hints = signature_of(resolve_setting)
    if name in hints and hints[name] is not Any:
        return hints[name]
    return Any if default is None else type(default)


def check_values(values: Mapping[str, Any], declared: Mapping[str, Any], where: str = "the notebook") -> dict[str, Any]:
    """``values`` (parameter name -> value given) checked against ``declared`` (name -> default) as the module
    docstring says; returns the values converted to their types, or raises ParameterError naming the first
    problem. A ``str`` value is read as text (``"0,1"`` -> ``[0, 1]`` for a sequence of integers)."""
    from adlib.config import ConfigValueError, coerce

    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise ParameterError(f"parameter(s) {', '.join(unknown)} passed but not declared in the parameters cell of "
                             f"{where} (it declares {', '.join(declared)}): a typo?")
    out = {}
    for name, value in values.items():
        try:
            out[name] = coerce(name, value, declared_type(name, declared[name]), from_text=isinstance(value, str),
                               example=declared[name])
        except ConfigValueError as error:
            raise ParameterError(f"parameter {name}={value!r}: expected {error.expected}") from None
        if name in REGISTRIES and out[name] is not None:
            module, function = REGISTRIES[name]
            known = getattr(importlib.import_module(module), function)()
            if out[name] not in known:
                raise ParameterError(f"parameter {name}={out[name]!r}: no such {name}; known: {', '.join(known)}")
    return out


def assigned(source: str) -> dict[str, Any]:
    """Names a cell assigns at top level -> the literal value assigned (None where it is not a literal)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    out: dict[str, Any] = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        for target in targets:
            if isinstance(target, ast.Name):
                try:
                    out[target.id] = ast.literal_eval(node.value) if node.value is not None else None
                except (ValueError, SyntaxError, TypeError):
                    out[target.id] = None
    return out


def check_parameters(namespace: dict) -> None:
    """Call as ``study.check_parameters(globals())`` in the cell right after a notebook's parameters cell.

    Under papermill, the cell it injected (``# Parameters``, the latest cell run before this one) is checked
    with ``check_values`` against the names the cells before it assign (the parameters cell's declarations);
    converted values are written back (``seeds="0,1"`` becomes ``[0, 1]``). A problem raises ParameterError in
    one line, before any work. Without injected parameters (an interactive session) nothing is checked."""
    history = list(namespace.get("In") or namespace.get("_ih") or [])[:-1]  # the current cell is the last
    runs = [i for i, source in enumerate(history) if source.lstrip().startswith(INJECTED_HEADER)]
    if not runs:
        return
    injected = assigned(history[runs[-1]])
    declared: dict[str, Any] = {}
    for source in history[: runs[-1]]:
        declared.update(assigned(source))
    given = {name: namespace[name] for name in injected if name in namespace}
    namespace.update(check_values(given, declared))
