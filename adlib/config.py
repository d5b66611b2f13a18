"""Typed values for the config dataclasses: a command-line text or a Python value checked against a field's type.

One place for ``adlib run --set KEY=VALUE``, ``adlib compare``, ``study.configs`` and ``adlib reproduce -p``. The
type is the field's annotation (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``tuple[X, ...]``,
``tuple[X, Y]``, ``list[X]`` / ``Sequence[X]``, ``dict[K, V]``, ``X | None``, ``Any``), read with
``typing.get_type_hints``: there is no per-field table. Ranges and choices stay with each config's own checks
(``FitConfig.__post_init__``, a model's ``_validate``), which the caller runs on the built config.

Text (``from_text``) is read as a Python literal where it is one (``2``, ``0.5``, ``(0.9, 0.999)``, ``None``,
``True``), else as the text itself (``linear``). For a tuple or list field a comma-separated text is split
(``row_tl,col_tr``), and a single value is a one-element tuple. Only lossless conversions are made: an int
where a float is expected, a list where a tuple is, a path where a string is; ``2.5`` is not an integer and
``1`` is not a pair.
"""
from __future__ import annotations

import ast
import collections.abc
import dataclasses
import functools
import numbers
import os
import types
import typing
from typing import Any, Callable, Iterable, Mapping


class ConfigValueError(ValueError):
    """A value that is not of its field's type: ``name=value: expected <what>`` (one line)."""

    def __init__(self, name: str, value: Any, expected: str, text: str | None = None) -> None:
        self.name, self.value, self.expected, self.text = name, value, expected, text
        shown = text if text is not None else repr(value)
        super().__init__(f"{name}={shown}: expected {expected}")


class _Mismatch(Exception):
    pass


def parse_text(text: str) -> Any:
    """A command-line value: the Python literal it spells, else the text itself (stripped)."""
    text = text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


@functools.lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved type hint of a dataclass (do not modify the returned dict: it is cached)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def coerce(name: str, value: Any, hint: Any, *, from_text: bool = False, example: Any = None) -> Any:
    """``value`` as the type ``hint`` asks (a str from a command line when ``from_text``); ConfigValueError
    naming ``name``, the value and what was expected otherwise (with ``example``'s value, when given)."""
    raw = value if from_text and isinstance(value, str) else None
    parsed = parse_text(raw) if raw is not None else value
    try:
        return _coerce(parsed, hint, raw, strict=True)
    except _Mismatch:
        pass
    try:
        return _coerce(parsed, hint, raw, strict=False)
    except _Mismatch:
        expected = describe(hint)
        if example is not None:
            expected += f", e.g. {name}={_spell(example)}"
        raise ConfigValueError(name, value, expected, text=raw) from None


def coerce_fields(classes: Iterable[type], values: Mapping[str, Any], *, from_text: bool = False,
                  defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Each of ``values`` checked against the field of that name in the first of ``classes`` that has it
    (dataclasses). Unknown names raise ValueError listing the valid ones; a value of the wrong type raises
    ConfigValueError. ``defaults`` (name -> value) give the example shown in the error."""
    hints: dict[str, Any] = {}
    examples: dict[str, Any] = {}
    for cls in classes:
        for name, hint in field_types(cls).items():
            hints.setdefault(name, hint)
        for f in dataclasses.fields(cls):
            if f.name not in examples and f.default is not dataclasses.MISSING:
                examples[f.name] = f.default
    examples.update(defaults or {})
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; valid: {sorted(hints)}")
    return {k: coerce(k, v, hints[k], from_text=from_text, example=examples.get(k)) for k, v in values.items()}


# ------------------------------------------------------------------------------------------- the rules
def _origin(hint: Any) -> Any:
    return typing.get_origin(hint)


def _is_union(hint: Any) -> bool:
    return _origin(hint) in (typing.Union, types.UnionType)


def _coerce(value: Any, hint: Any, raw: str | None, strict: bool) -> Any:
    """One attempt; ``strict`` first takes values as they are, the second pass may read ``raw`` text another
    way (``1`` as the string "1" for a str field, ``a,b`` split for a tuple)."""
    if hint is Any or hint is object:
        return value
    if hint is None or hint is type(None):
        if value is None:
            return None
        raise _Mismatch
    if _is_union(hint):
        for member in typing.get_args(hint):  # None and exact types first, then the looser readings
            try:
                return _coerce(value, member, raw, strict=True)
            except _Mismatch:
                pass
        if not strict:
            for member in typing.get_args(hint):
                try:
                    return _coerce(value, member, raw, strict=False)
                except _Mismatch:
                    pass
        raise _Mismatch
    origin = _origin(hint)
    if origin is typing.Literal:
        if value in typing.get_args(hint):
            return value
        if not strict and raw is not None and raw.strip() in typing.get_args(hint):
            return raw.strip()
        raise _Mismatch
    if hint is bool:
        if isinstance(value, bool) or type(value).__name__ == "bool_":
            return bool(value)
        if not strict and raw is not None and raw.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[raw.strip().lower()]
        raise _Mismatch
    if hint is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and type(value).__name__ != "bool_":
            return int(value)
        raise _Mismatch
    if hint is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value).__name__ != "bool_":
            return float(value)
        raise _Mismatch
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if not strict and raw is not None and raw.strip():
            return raw.strip()  # text that reads as another literal (e.g. 1) where a name is expected
        raise _Mismatch
    if hint is tuple or origin is tuple:
        return tuple(_sequence(value, hint, raw, strict))
    if origin in (list, collections.abc.Sequence) or hint in (list, collections.abc.Sequence):
        return list(_sequence(value, hint, raw, strict))
    if hint is dict or origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise _Mismatch
        args = typing.get_args(hint)
        if not args:
            return dict(value)
        return {_coerce(k, args[0], None, True): _coerce(v, args[1], None, True) for k, v in value.items()}
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise _Mismatch
    return value  # an annotation these rules do not know (a TypeVar, a Callable): left to the config's checks


_BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _sequence(value: Any, hint: Any, raw: str | None, strict: bool) -> list:
    args = typing.get_args(hint)
    fixed = bool(args) and not (len(args) == 2 and args[1] is Ellipsis) and _origin(hint) is tuple
    element = None if fixed else (args[0] if args else Any)
    if isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, str) and raw is not None and "," in raw:  # text such as row_tl,col_tr
        items = [parse_text(part) for part in raw.split(",") if part.strip()]
    elif fixed or isinstance(value, (dict, set)) or value is None:
        raise _Mismatch
    else:
        items = [value]  # one value where several may be given
    if fixed:
        if len(items) != len(args):
            raise _Mismatch
        return [_coerce(item, h, _text(item), strict) for item, h in zip(items, args)]
    return [_coerce(item, element, _text(item), strict) for item in items]


def _text(item: Any) -> str | None:
    return item if isinstance(item, str) else None


# ------------------------------------------------------------------------------------------- words
_PLURALS = {int: "integers", float: "numbers", str: "strings", bool: "booleans (True or False)"}


def describe(hint: Any) -> str:
    """What a type hint accepts, in words: "an integer", "a tuple of 2 numbers", "one of 'a', 'b'"."""
    if hint is Any or hint is object:
        return "any value"
    if hint is None or hint is type(None):
        return "None"
    if _is_union(hint):
        members = typing.get_args(hint)
        words = [describe(m) for m in members if m is not type(None)]
        if type(None) in members:
            words.append("None")
        return " or ".join(dict.fromkeys(words))
    origin, args = _origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    simple = {int: "an integer", float: "a number", bool: "True or False", str: "a string"}
    if hint in simple:
        return simple[hint]
    if hint is tuple or origin is tuple:
        if not args:
            return "a tuple (e.g. 1,2)"
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a tuple of {_plural(args[0])} (e.g. a,b)"
        if len(set(args)) == 1:
            return f"a tuple of {len(args)} {_plural(args[0])}"
        return f"a tuple ({', '.join(describe(a) for a in args)})"
    if origin in (list, collections.abc.Sequence) or hint in (list, collections.abc.Sequence):
        return f"a sequence of {_plural(args[0])} (e.g. 0,1,2)" if args else "a sequence (e.g. 0,1,2)"
    if hint is dict or origin in (dict, collections.abc.Mapping):
        return "a dict (e.g. {'name': value})"
    if hint is os.PathLike:
        return "a path"
    return f"a {getattr(hint, '__name__', str(hint))}"


def _plural(hint: Any) -> str:
    return _PLURALS.get(hint, describe(hint))


def _spell(value: Any) -> str:
    """A value as one would type it after ``--set name=``: tuples comma-separated, the rest as literals."""
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, (int, float, str)) for v in value):
        return ",".join(str(v) for v in value)
    return repr(value) if not isinstance(value, str) else value


def signature_of(func: Callable) -> dict[str, Any]:
    """Parameter name -> resolved type hint of a function (for parameters checked like config fields)."""
    hints = typing.get_type_hints(func)
    import inspect

    return {name: hints.get(name, Any) for name in inspect.signature(func).parameters}
