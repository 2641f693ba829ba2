"""The command line: ``asyncfetch [OPTIONS] [INPUT ...]``. The only package that imports typer and rich."""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the command and exit with its status."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:
        # Answered before typer, rich and httpx are imported: a version check costs ~20 ms.
        from asyncfetch._version import __version__

        sys.stdout.write(f"asyncfetch {__version__}\n")
        sys.exit(0)
    import contextlib
    import gc

    # Start-up creates ~300 modules' objects (classes, functions, the click command), none of
    # them garbage: collecting while importing walks them again and again for nothing (81 times,
    # ~21 M instructions of a one-URL run). run_loop turns the collector back on, tuned for the
    # run (cli/runner.py); a command that never gets there exits soon after.
    collecting = gc.isenabled()
    gc.disable()
    try:
        from asyncfetch.cli.app import run

        status = run(args)
    finally:
        if collecting:
            gc.enable()
    if argv is not None:  # called as a function (tests): leave the interpreter alone
        sys.exit(status)
    # Records went out through os.write and every file is closed: what is left is tearing down
    # ~300 modules, a sixth of a short run's time. Flush what Python still buffers and go.
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
    os._exit(status)
