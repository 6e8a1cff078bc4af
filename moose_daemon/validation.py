"""Turning JSON into a task's declared input type, and a task's return value into JSON."""

from __future__ import annotations

import dataclasses
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
    if isinstance(check, type) and not isinstance(value, check):
        raise InputError(
            f"Task '{task}' requires input of type {_type_name(tp)} but received {type(value).__name__}"
        )
    return value


def _coerce_dataclass(task: str, tp: type, value: Any) -> Any:
    name = tp.__name__
    if not isinstance(value, dict):
        raise InputError(f"Task '{task}' requires an object for {name} but received {type(value).__name__}")
    fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise InputError(
            f"Input data does not match task '{task}' input type {name}: unknown field '{unknown[0]}'"
        )
    for f in fields.values():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in value:
            raise InputError(
                f"Input data does not match task '{task}' input type {name}: missing field '{f.name}'"
            )
    return tp(**value)


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
        raise OutputError(f"returned a value JSON cannot hold: {e}") from None
