"""``--set key=value`` on a dataclass: typed, checked, with errors that list the valid keys."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

__all__ = ["OverrideError", "apply_overrides", "parse_value"]

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


class OverrideError(ValueError):
    """A --set that names no field or whose value has the wrong type."""


def parse_value(key: str, text: str, annotation: Any) -> Any:
    """Parse ``text`` as ``annotation``: bool, int, float, str, or a tuple of them (comma-separated)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(annotation):
            if arg is type(None):
                if text.lower() in ("none", "null", ""):
                    return None
                continue
            try:
                return parse_value(key, text, arg)
            except OverrideError as e:
                errors.append(str(e))
        raise OverrideError(errors[0] if errors else f"{key}: cannot parse {text!r}")
    if origin is tuple:
        item = typing.get_args(annotation)[0]
        return tuple(parse_value(key, part.strip(), item) for part in text.split(",") if part.strip())
    if annotation is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise OverrideError(f"{key} expects true or false; got {text!r}")
    if annotation in (int, float):
        try:
            return annotation(text)
        except ValueError:
            raise OverrideError(f"{key} expects {annotation.__name__}; got {text!r}") from None
    if annotation is str:
        return text
    raise OverrideError(f"{key}: unsupported type {annotation}")


def apply_overrides(obj: Any, assignments: list[str]) -> Any:
    """A copy of dataclass ``obj`` with each ``key=value`` applied, parsed by the field's type."""
    hints = typing.get_type_hints(type(obj))
    fields = {f.name for f in dataclasses.fields(obj) if f.init}
    changes: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise OverrideError(f"--set expects key=value; got {assignment!r}")
        if key not in fields:
            raise OverrideError(f"unknown setting {key!r}; valid settings: {', '.join(sorted(fields))}")
        changes[key] = parse_value(key, text.strip(), hints[key])
    return dataclasses.replace(obj, **changes)
