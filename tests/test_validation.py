"""validation.coerce_input (JSON -> a task's declared input type) and dump_output (return value -> JSON)."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any, Optional

import orjson
import pytest
from pydantic import BaseModel

from moose_daemon.validation import InputError, OutputError, coerce_input, dump_output


@dataclasses.dataclass
class Person:
    name: str
    email: str | None = None
    tags: list[str] = dataclasses.field(default_factory=list)


class Order(BaseModel):
    order_id: str
    quantity: int


class Stamped(BaseModel):
    at: datetime
    id: uuid.UUID


class DuckModel:
    """Not pydantic: anything with a `model_validate` classmethod is used the same way."""

    def __init__(self, value: Any) -> None:
        self.value = value

    @classmethod
    def model_validate(cls, value: Any) -> DuckModel:
        if not isinstance(value, dict) or "value" not in value:
            raise ValueError("field 'value' is required")
        return cls(value["value"])


# ---- coerce_input -------------------------------------------------------------------------------


@pytest.mark.parametrize("tp", [Any, object])
def test_any_passes_the_value_through(tp: Any) -> None:
    value = [1, {"a": None}]
    assert coerce_input("t", tp, value) is value
    assert coerce_input("t", tp, None) is None


@pytest.mark.parametrize("tp", [None, type(None)])
def test_none_type_ignores_the_input(tp: Any) -> None:
    assert coerce_input("t", tp, {"name": "sent anyway"}) is None
    assert coerce_input("t", tp, None) is None


def test_dataclass_is_built_from_an_object() -> None:
    person = coerce_input("greet", Person, {"name": "ada"})
    assert person == Person(name="ada", email=None, tags=[])
    assert isinstance(person, Person)
    assert coerce_input("greet", Person, {"name": "b", "email": "b@x", "tags": ["t"]}) == Person(
        "b", "b@x", ["t"]
    )


@pytest.mark.parametrize(
    ("value", "fragments"),
    [
        ({}, ["'greet'", "Person", "missing field 'name'"]),
        ({"name": "x", "age": 3}, ["'greet'", "unknown field 'age'"]),
        ([1, 2], ["'greet'", "Person", "list"]),
        ("ada", ["'greet'", "Person", "str"]),
        (None, ["'greet'", "Person", "None"]),
    ],
    ids=["missing", "unknown", "array", "string", "none"],
)
def test_dataclass_errors_name_task_and_field(value: Any, fragments: list[str]) -> None:
    with pytest.raises(InputError) as info:
        coerce_input("greet", Person, value)
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize("tp", [Optional[Person], Person | None])  # noqa: UP045
def test_optional_accepts_none_and_validates_the_rest(tp: Any) -> None:
    assert coerce_input("greet", tp, None) is None
    assert coerce_input("greet", tp, {"name": "x"}) == Person("x")
    with pytest.raises(InputError, match="missing field 'name'"):
        coerce_input("greet", tp, {})


def test_optional_scalar() -> None:
    assert coerce_input("n", int | None, 3) == 3
    assert coerce_input("n", int | None, None) is None
    with pytest.raises(InputError, match=r"'n'.*int.*str"):
        coerce_input("n", int | None, "three")


@pytest.mark.parametrize("tp", [dict, dict[str, Any], dict[str, int]])
def test_dict_accepts_objects_only(tp: Any) -> None:
    value = {"a": 1}
    assert coerce_input("t", tp, value) == value
    with pytest.raises(InputError, match="'t'"):
        coerce_input("t", tp, [1])
    with pytest.raises(InputError, match="None"):
        coerce_input("t", tp, None)


def test_scalar_types_are_checked() -> None:
    assert coerce_input("t", str, "x") == "x"
    assert coerce_input("t", list[int], [1]) == [1]
    with pytest.raises(InputError, match="requires input of type str but received int"):
        coerce_input("t", str, 5)
    with pytest.raises(InputError):
        coerce_input("t", list, {"a": 1})


def test_pydantic_model_validates_and_coerces() -> None:
    order = coerce_input("price", Order, {"order_id": "A1", "quantity": "3"})
    assert isinstance(order, Order)
    assert order.quantity == 3


@pytest.mark.parametrize(
    ("value", "field"),
    [({"quantity": 1}, "order_id"), ({"order_id": "A1", "quantity": "many"}, "quantity")],
)
def test_pydantic_error_names_task_and_field(value: Any, field: str) -> None:
    with pytest.raises(InputError) as info:
        coerce_input("price", Order, value)
    message = str(info.value)
    assert "'price'" in message
    assert "Order" in message
    assert field in message


def test_pydantic_model_with_no_input_names_the_task() -> None:
    with pytest.raises(InputError, match="Task 'price' requires input of type Order but received None"):
        coerce_input("price", Order, None)


def test_duck_typed_model_validate() -> None:
    assert coerce_input("t", DuckModel, {"value": 7}).value == 7
    with pytest.raises(InputError, match="field 'value' is required"):
        coerce_input("t", DuckModel, {})


# ---- dump_output --------------------------------------------------------------------------------


def test_dump_output_plain_json() -> None:
    assert dump_output(None) == "null"
    assert orjson.loads(dump_output({"a": [1, 2.5, "x", True]})) == {"a": [1, 2.5, "x", True]}


def test_dump_output_pydantic_model() -> None:
    assert orjson.loads(dump_output(Order(order_id="A1", quantity=2))) == {"order_id": "A1", "quantity": 2}
    # nested inside ordinary containers too, and with JSON-mode fields
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    uid = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert orjson.loads(dump_output({"items": [Stamped(at=at, id=uid)]})) == {
        "items": [{"at": "2026-01-02T03:04:05Z", "id": str(uid)}]
    }


def test_dump_output_dataclass_datetime_uuid_and_collections() -> None:
    assert orjson.loads(dump_output(Person("ada", tags=["x"]))) == {
        "name": "ada",
        "email": None,
        "tags": ["x"],
    }
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert orjson.loads(dump_output(at)) == "2026-01-02T03:04:05+00:00"
    uid = uuid.uuid4()
    assert orjson.loads(dump_output(uid)) == str(uid)
    assert sorted(orjson.loads(dump_output({1, 2, 3}))) == [1, 2, 3]
    assert orjson.loads(dump_output((1, "a"))) == [1, "a"]
    assert orjson.loads(dump_output(frozenset({"z"}))) == ["z"]


def test_dump_output_keeps_integers_beyond_64_bits() -> None:
    assert dump_output({"n": 2**70}) == '{"n":1180591620717411303424}'


@pytest.mark.parametrize("value", [object(), {"a": object()}, [1, Person], {"big": 2**70, "x": object()}])
def test_dump_output_refuses_what_json_cannot_hold(value: Any) -> None:
    with pytest.raises(OutputError, match="JSON cannot hold"):
        dump_output(value)


def test_output_error_names_the_type() -> None:
    with pytest.raises(OutputError, match="object"):
        dump_output(object())


# ---- dataclass field types (what JSON can carry) ----------------------------------------------------


@dataclasses.dataclass
class _Addr:
    city: str


@dataclasses.dataclass
class _Customer:
    name: str
    age: int = 0
    score: float = 0.0
    vip: bool = False
    tags: list[str] | None = None
    meta: dict[str, int] = dataclasses.field(default_factory=dict)
    addr: _Addr | None = None


def test_dataclass_fields_are_type_checked_and_nested_ones_built() -> None:
    got = coerce_input(
        "t",
        _Customer,
        {
            "name": "a",
            "age": 3,
            "score": 2,
            "vip": True,
            "tags": ["x"],
            "meta": {"k": 1},
            "addr": {"city": "c"},
        },
    )
    assert got == _Customer("a", 3, 2.0, True, ["x"], {"k": 1}, _Addr("c"))
    assert isinstance(got.score, float) and isinstance(got.addr, _Addr)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"name": 5}, "field 'name' expected str, got number"),
        ({"name": "a", "age": True}, "field 'age' expected int, got boolean"),
        ({"name": "a", "age": 1.5}, "field 'age' expected int, got number"),
        ({"name": "a", "tags": [1]}, "field 'tags[0]' expected str, got number"),
        ({"name": "a", "tags": "x"}, "field 'tags' expected a list, got string"),
        ({"name": "a", "meta": {"k": "v"}}, "field 'meta.k' expected int, got string"),
        ({"name": "a", "addr": {"city": 1}}, "field 'addr.city' expected str, got number"),
        ({"name": "a", "addr": {}}, "missing field 'addr.city'"),
        ({"name": "a", "addr": {"city": "c", "zip": 1}}, "unknown field 'addr.zip'"),
    ],
)
def test_dataclass_field_type_errors_name_the_field(value: dict[str, object], message: str) -> None:
    with pytest.raises(InputError) as e:
        coerce_input("t", _Customer, value)
    assert message in str(e.value) and "task 't'" in str(e.value)
