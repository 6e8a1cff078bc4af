"""Turning JSON into a task's declared input type, and a task's return value into JSON."""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from typing import Any

import orjson


class InputError(ValueError):
    """The input does not fit the task's declared type; the run fails (retrying would not help)."""


class OutputError(TypeError):
    """The task returned something JSON cannot hold."""


def coerce_input(task: str, tp: Any, value: Any) -> Any:
    """Validate `value` (decoded JSON) against `tp`, the `T` of `Task[T, U]`."""
    if tp is Any or tp is object:
        return value
    if tp is None or tp is type(None):
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(members) < len(typing.get_args(tp)):
            return None
        if len(members) == 1:
            return coerce_input(task, members[0], value)
        return value
    if value is None:
        raise InputError(f"Task '{task}' requires input of type {_type_name(tp)} but received None")
    if hasattr(tp, "model_validate"):
        try:
            return tp.model_validate(value)
        except Exception as e:  # pydantic's ValidationError names each failing field
            raise InputError(
                f"Input data does not match task '{task}' input type {_type_name(tp)}: {e}"
            ) from None
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _coerce_dataclass(task, tp, value)
    check = origin or tp
    if check is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # JSON has one number type: 2 is a fine float
    wrong_bool = isinstance(value, bool) and check in (int, float)  # bool is an int in Python, not in JSON
    if wrong_bool or (isinstance(check, type) and not isinstance(value, check)):
        raise InputError(
            f"Task '{task}' requires input of type {_type_name(tp)} but received {type(value).__name__}"
        )
    return value


def _coerce_dataclass(task: str, tp: type, value: Any) -> Any:
    if not isinstance(value, dict):
        name = tp.__name__
        raise InputError(f"Task '{task}' requires an object for {name} but received {type(value).__name__}")
    try:
        return _build_dataclass(tp, value, "")
    except _Mismatch as e:
        raise InputError(f"Input data does not match task '{task}' input type {tp.__name__}: {e}") from None


class _Mismatch(ValueError):
    pass


def _build_dataclass(tp: type, value: Any, path: str) -> Any:
    """Check field names and the types JSON can carry (str, int, float, bool, lists, dicts, nested
    dataclasses, unions); build the dataclass, nested ones included."""
    if not isinstance(value, dict):
        raise _Mismatch(f"{_at(path)}expected an object for {tp.__name__}, got {_json_type(value)}")
    fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise _Mismatch(f"unknown field '{path}{unknown[0]}'")
    try:
        hints = typing.get_type_hints(tp)
    except Exception:  # unresolvable annotations: check names only
        hints = {}
    values = {}
    for f in fields.values():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name not in value:
            if required:
                raise _Mismatch(f"missing field '{path}{f.name}'")
            continue
        values[f.name] = _check(hints.get(f.name, Any), value[f.name], f"{path}{f.name}")
    return tp(**values)


def _check(tp: Any, value: Any, path: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or isinstance(tp, typing.TypeVar):
        return value
    if tp is None or tp is type(None):
        if value is None:
            return None
        raise _Mismatch(f"field '{path}' expected null, got {_json_type(value)}")
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if value is None and len(members) < len(args):
            return None
        if len(members) == 1:  # Optional[X]: X's own message says what is wrong
            return _check(members[0], value, path)
        for member in members:
            try:
                return _check(member, value, path)
            except _Mismatch:
                continue
        raise _Mismatch(f"field '{path}' expected {_type_name(tp)}, got {_json_type(value)}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _build_dataclass(tp, value, f"{path}.")
    simple: dict[Any, type | tuple[type, ...]] = {str: str, bool: bool, int: int, float: (int, float)}
    if tp in simple:
        if isinstance(value, simple[tp]) and not (tp is not bool and isinstance(value, bool)):
            return float(typing.cast(float, value)) if tp is float else value
        raise _Mismatch(f"field '{path}' expected {tp.__name__}, got {_json_type(value)}")
    container = origin or tp
    if container in (list, tuple, set, frozenset) or container is dict:
        expected = dict if container is dict else list
        if not isinstance(value, expected):
            raise _Mismatch(
                f"field '{path}' expected {'an object' if expected is dict else 'a list'}, got {_json_type(value)}"
            )
        if isinstance(value, dict):
            item = args[1] if len(args) == 2 else Any
            return {k: _check(item, v, f"{path}.{k}") for k, v in value.items()}
        item = args[0] if args and container is not tuple else Any
        return container([_check(item, v, f"{path}[{i}]") for i, v in enumerate(value)])
    return value


def _at(path: str) -> str:
    return f"field '{path.rstrip('.')}' " if path else ""


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)


def _default(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")


def dump_output(value: Any) -> str:
    """JSON text of a task's return value: pydantic models, dataclasses, datetimes and UUIDs included."""
    try:
        return orjson.dumps(value, default=_default).decode()
    except (TypeError, orjson.JSONEncodeError) as e:
        if "64-bit" not in str(e):
            raise OutputError(f"returned a value JSON cannot hold: {e}") from None
    try:  # an integer beyond 64 bits: orjson cannot, the standard library can
        return json.dumps(value, default=_default, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise OutputError(f"returned a value JSON cannot hold: {e}") from None


_LONG_DIGITS = re.compile(r"[0-9]{20}")


def load_json(text: str) -> Any:
    """Decode stored JSON with orjson, except where an integer may exceed 64 bits: orjson would quietly
    make it a float, the standard library keeps every digit (as MooseStack does)."""
    if _LONG_DIGITS.search(text):
        return json.loads(text)
    return orjson.loads(text)
