"""Value and MutableValue give a dataclass the ==, hash() and repr() dataclass itself would generate."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass, field, make_dataclass
from typing import Any

import pytest

import asyncfetch
from asyncfetch.values import MutableValue, Value


def _fields() -> list[tuple[str, type, Any]]:
    """One of each kind of field: plain, defaulted, repr=False, compare=False, hash=False."""
    return [
        ("name", str, field()),
        ("size", int, field(default=0)),
        ("secret", str, field(default="", repr=False)),
        ("cache", Any, field(default=None, compare=False)),
        ("seen", int, field(default=0, hash=False)),
    ]


# The same fields twice: dataclass's generated methods, and Value's.
_Generated: Any = make_dataclass("_Generated", _fields(), frozen=True, slots=True)
_Written: Any = make_dataclass("_Written", _fields(), bases=(Value,), frozen=True, slots=True, eq=False, repr=False)


_WrittenChild: Any = make_dataclass(
    "_WrittenChild", [], bases=(_Written,), frozen=True, slots=True, eq=False, repr=False
)


@dataclass(slots=True)
class _MutableGenerated:
    items: list[int]


@dataclass(slots=True, eq=False, repr=False)
class _MutableWritten(MutableValue):
    items: list[int]


_CASES = [
    {"name": "a"},
    {"name": "a", "size": 2},
    {"name": "a", "secret": "s"},
    {"name": "a", "cache": object()},
    {"name": "a", "seen": 3},
    {"name": "b", "size": 2, "secret": "t", "cache": [1], "seen": 1},
]


@pytest.mark.parametrize("left", _CASES)
@pytest.mark.parametrize("right", _CASES)
def test_equality_and_hash_are_dataclasss(left: dict[str, Any], right: dict[str, Any]) -> None:
    """== reads the compared fields, hash() the hashed ones, exactly as dataclass's generated methods."""
    generated = _Generated(**left) == _Generated(**right)
    assert (_Written(**left) == _Written(**right)) is generated
    assert (_Written(**left) != _Written(**right)) is not generated
    if generated:
        assert hash(_Written(**left)) == hash(_Written(**right))
    # The same tuple is hashed: equal to the generated method's hash, field for field.
    assert hash(_Written(**left)) == hash(_Generated(**left))


@pytest.mark.parametrize("values", _CASES)
def test_repr_is_dataclasss(values: dict[str, Any]) -> None:
    """repr lists the fields shown (repr=False hides one) under the class's qualified name."""
    expected = repr(_Generated(**values)).replace("_Generated(", "_Written(", 1)
    assert repr(_Written(**values)) == expected


def test_another_class_is_never_equal() -> None:
    """A subclass, a stock dataclass with the same fields, or a tuple: not equal, as with dataclass."""
    value = _Written("a")
    assert value != _WrittenChild("a")
    assert value != _Generated("a")
    assert value != ("a", 0, "", None, 0)
    assert value.__eq__(("a",)) is NotImplemented


def test_one_field_and_no_field_classes_compare_and_hash() -> None:
    """A single field is compared and hashed as a one-tuple (attrgetter alone would return it bare)."""

    @dataclass(frozen=True, slots=True, eq=False, repr=False)
    class One(Value):
        x: float

    @dataclass(frozen=True, slots=True, eq=False, repr=False)
    class Empty(Value):
        pass

    nan = float("nan")
    assert One(nan) == One(nan)  # tuple comparison: the same object is equal to itself
    assert hash(One(2.0)) == hash((2.0,))
    assert Empty() == Empty()
    assert hash(Empty()) == hash(())
    assert repr(Empty()).endswith("Empty()")


def test_a_mutable_value_compares_and_is_unhashable() -> None:
    """MutableValue: == by fields and dataclass's repr, and no hash, as a mutable dataclass with eq."""
    assert _MutableWritten([1]) == _MutableWritten([1])
    assert _MutableWritten([1]) != _MutableWritten([2])
    with pytest.raises(TypeError, match="unhashable"):
        hash(_MutableWritten([1]))
    with pytest.raises(TypeError, match="unhashable"):
        hash(_MutableGenerated([1]))
    assert repr(_MutableWritten([1])).endswith("_MutableWritten(items=[1])")


def test_a_recursive_repr_stops() -> None:
    """A value that contains itself shows as ..., as dataclass's repr does."""
    loop = _MutableWritten([])
    loop.items.append(loop)  # type: ignore[arg-type]
    assert repr(loop).endswith("_MutableWritten(items=[...])")


# Dataclasses that still have methods generated (not converted: files owned elsewhere).
_GENERATED_STILL = {
    "asyncfetch.distributed.keys.QueueKeys",
    "asyncfetch.distributed.worker.WorkerTotals",
    "asyncfetch.distributed.worker._Outbox",
    "asyncfetch.distributed.worker._Chunk",
}


def _dataclasses_of_asyncfetch() -> list[type]:
    found: list[type] = []
    for info in pkgutil.walk_packages(asyncfetch.__path__, "asyncfetch."):
        module = importlib.import_module(info.name)
        found.extend(
            obj
            for obj in vars(module).values()
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == info.name
        )
    return found


def test_no_dataclass_of_ours_compiles_eq_or_repr() -> None:
    """Every dataclass of asyncfetch gets == and repr from Value/MutableValue: Python 3.11 compiles
    each generated method with exec at every start (~26 M instructions of a one-URL run for these)."""
    classes = _dataclasses_of_asyncfetch()
    assert len(classes) > 15  # the walk found them
    generating = sorted(
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in classes
        if ("__eq__" in vars(cls) or "__repr__" in vars(cls))
        and f"{cls.__module__}.{cls.__qualname__}" not in _GENERATED_STILL
    )
    assert generating == []
