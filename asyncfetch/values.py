"""``==``, ``hash()`` and ``repr()`` for dataclasses, written once here instead of generated per class.

Python 3.11's ``@dataclass`` writes the source of each method it adds (``__init__``,
``__eq__``, ``__hash__``, ``__repr__``, a frozen class's ``__setattr__``...) and compiles it
with ``exec`` when the class is created, on every start. For the 17 classes a one-URL run
imports that was ~86 M instructions, a seventh of the run; ``__eq__``, ``__hash__`` and
``__repr__`` were ~26 M of it. A class declared with ``eq=False, repr=False`` that derives
from :class:`Value` (frozen) or :class:`MutableValue` gets the same three behaviours as
dataclass would generate them, from the fields, with nothing compiled:

    @dataclass(frozen=True, slots=True, eq=False, repr=False)
    class Point(Value):
        x: int
        y: int

``Point(1, 2) == Point(1, 2)``, equal points hash alike, ``repr`` is ``Point(x=1, y=2)``;
a field's ``compare=``, ``hash=`` and ``repr=`` are honoured, and objects of other classes
(subclasses included) are never equal, as with dataclass's own methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from operator import attrgetter
from reprlib import recursive_repr
from typing import Any

_Getter = Callable[[Any], tuple[Any, ...]]
# Per class: the fields == compares, the fields hash() reads (built on first use, not at import).
_COMPARED: dict[type, _Getter] = {}
_HASHED: dict[type, _Getter] = {}


def _getter(names: list[str]) -> _Getter:
    """A function returning the named attributes as a tuple (attrgetter of one name returns it bare)."""
    if len(names) == 1:
        name = names[0]
        return lambda obj: (getattr(obj, name),)
    if not names:
        return lambda obj: ()
    return attrgetter(*names)


def _compared(cls: type) -> _Getter:
    getter = _COMPARED.get(cls)
    if getter is None:
        getter = _COMPARED[cls] = _getter([f.name for f in fields(cls) if f.compare])
    return getter


def _hashed(cls: type) -> _Getter:
    getter = _HASHED.get(cls)
    if getter is None:
        # dataclass's rule: a field's hash= when given, else its compare=.
        names = [f.name for f in fields(cls) if (f.compare if f.hash is None else f.hash)]
        getter = _HASHED[cls] = _getter(names)
    return getter


class _ByFields:  # noqa: PLW1641  (each subclass says whether it hashes)
    """``==`` and ``repr`` read from the fields, as dataclass generates them."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        key = _compared(self.__class__)
        return bool(key(self) == key(other))

    @recursive_repr()
    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr)  # type: ignore[arg-type]
        return f"{self.__class__.__qualname__}({shown})"


class MutableValue(_ByFields):
    """``==`` by fields and a fields ``repr``, for a mutable dataclass (``eq=False, repr=False``); unhashable."""

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment]  # as dataclass leaves a mutable class that has ==


class Value(_ByFields):
    """``==``, ``hash()`` and ``repr`` by fields, for a frozen dataclass (``eq=False, repr=False``)."""

    __slots__ = ()

    def __hash__(self) -> int:
        return hash(_hashed(self.__class__)(self))
