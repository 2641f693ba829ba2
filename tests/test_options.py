"""Library options: a bad value is a ValueError naming the option, an unknown keyword a TypeError with the near miss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import asyncfetch
from asyncfetch.options import FetchOptions


def test_a_size_option_takes_the_command_lines_text() -> None:
    """max_size="5K" means 5 KiB, as --max-size 5K does."""
    assert FetchOptions(max_size="5K").max_size == 5 * 1024  # type: ignore[arg-type]
    assert FetchOptions(max_size=7).max_size == 7


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"max_size": "5Q"}, "max-size"),
        ({"max_size": [5]}, "max-size"),
        ({"timeout": "fast"}, "timeout"),
        ({"timeout": "5"}, "timeout"),
        ({"concurrency": "10"}, "concurrency"),
        ({"concurrency": 2.5}, "concurrency"),
        ({"concurrency": True}, "concurrency"),
        ({"retries": None}, "retries"),
        ({"follow": "yes"}, "follow"),
        ({"rate": "fast"}, "rate"),
        ({"max_retry_wait": float("nan")}, "max-retry-wait"),
        ({"method": 3}, "method"),
        ({"user_agent": b"ua"}, "user-agent"),
        ({"headers": "X-A: b"}, "headers"),
        ({"headers": [("X-A", 1)]}, "headers"),
        ({"save_dir": 3}, "save-dir"),
    ],
)
def test_every_invalid_option_value_is_a_value_error_naming_it(values: dict[str, Any], named: str) -> None:
    """A value of the wrong type or out of range raises ValueError at once, and the message names the option."""
    with pytest.raises(ValueError, match=named):
        asyncfetch.fetch([], **values)


def test_values_with_one_obvious_meaning_are_normalised() -> None:
    """A str path, a mapping of headers, "Name: value" strings, str data and an int rate are taken as meant."""
    options = FetchOptions(
        save_dir="out",  # type: ignore[arg-type]
        headers={"X-A": "1"},  # type: ignore[arg-type]
        data="body",  # type: ignore[arg-type]
        rate=2,
    )
    assert options.save_dir == Path("out")
    assert options.headers == (("X-A", "1"),)
    assert options.data == b"body"
    assert options.rate == 2.0
    assert FetchOptions(headers=["X-B: 2"]).headers == (("X-B", "2"),)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("keyword", "suggested"),
    [("concurency", "concurrency"), ("max_sise", "max_size"), ("timout", "timeout"), ("retires", "retries")],
)
def test_a_misspelt_keyword_is_a_type_error_naming_the_right_one(keyword: str, suggested: str) -> None:
    """fetch(concurency=5) says which option was meant."""
    with pytest.raises(TypeError, match=f"unknown option '{keyword}' \\(did you mean '{suggested}'\\?\\)"):
        asyncfetch.fetch([], **{keyword: 5})  # type: ignore[arg-type]


def test_an_unknown_keyword_with_no_near_miss_is_still_named() -> None:
    """A keyword like nothing known is a TypeError that names it."""
    with pytest.raises(TypeError, match="unknown option 'zzzz'"):
        asyncfetch.fetch([], zzzz=1)
