"""The code checks are part of the test run: ruff (lint and format) and mypy (strict)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def test_ruff_finds_nothing_to_lint() -> None:
    """Every file passes ruff's lint rules as configured in pyproject.toml."""
    result = _run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_would_change_nothing() -> None:
    """Every file is formatted the way ruff formats it."""
    result = _run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)  # a cold mypy cache on a busy machine takes minutes, not the default 60 s
def test_mypy_strict_finds_no_type_errors() -> None:
    """The package and the tests type-check under mypy --strict."""
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr
