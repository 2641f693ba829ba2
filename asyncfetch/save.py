"""Body storage for ``--save DIR``: every complete body in its own file, always inside DIR."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class BodyFile:
    """A body being written: a temporary file until :meth:`commit` gives it its name."""

    def __init__(self, directory: Path, name: str) -> None:
        self._final = directory / name
        self._temp = directory / f".{name}.part"
        self._file = open(self._temp, "wb")  # noqa: SIM115  (closed by commit or discard)

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def commit(self) -> str:
        self._file.close()
        os.replace(self._temp, self._final)
        return str(self._final)

    def discard(self) -> None:
        self._file.close()
        self._temp.unlink(missing_ok=True)


class BodySaver:
    """Names and creates the files of ``--save DIR``."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def start(self, url: httpx.URL, index: int) -> BodyFile:
        base = _UNSAFE.sub("_", url.path.rsplit("/", 1)[-1])[:100].strip("._") or "index"
        return BodyFile(self._directory, f"{index}-{base}")
