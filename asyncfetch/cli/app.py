"""The composition root: every command registered on one Typer app, and :func:`run`, which maps errors to exits.

``asyncfetch [OPTIONS] [INPUT]...`` is ``asyncfetch fetch ...``: the one-liner stays as it is,
and the queue commands (``enqueue``, ``work``, ``collect``, ``status``) are named first.
"""

from __future__ import annotations

import difflib
import textwrap
from collections.abc import Iterator, MutableMapping
from importlib import import_module
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from asyncfetch.cli import params as p
from asyncfetch.cli.status import PROG, CommandError, ExitStatus, UsageError, report

# Every command: the module and function that implement it. A command's module is imported, and
# its typer signature turned into click's, only when that command is run, completed or helped:
# a one-URL fetch neither imports the queue commands nor builds their options (~5 ms).
COMMANDS = {
    "fetch": ("asyncfetch.cli.fetch", "fetch_command"),
    "enqueue": ("asyncfetch.cli.dist", "enqueue_command"),
    "work": ("asyncfetch.cli.dist", "work_command"),
    "collect": ("asyncfetch.cli.dist", "collect_command"),
    "status": ("asyncfetch.cli.dist", "status_command"),
}

_COMPLETION_OPTIONS = frozenset({"--install-completion", "--show-completion"})

_DESCRIPTION = (
    "Fetch every request of the INPUTs concurrently; one JSON record per request on stdout. "
    "An INPUT is a file of URLs or JSON request lines, a URL, or - for standard input (also when none is given)."
)
_EXAMPLES = (
    ("asyncfetch urls.txt > records.jsonl", ""),
    ("asyncfetch https://example.com | jq .status", ""),
    ("jq -r '.[].url' list.json | asyncfetch -c 200 --per-host 4 -o out.jsonl", ""),
    ("asyncfetch -o out.jsonl --resume urls.txt", "# finish an interrupted run"),
)
_EXIT_STATUSES = (
    "Exit status: 0 every request answered; 1 a request failed (with --fail: or a status >= 400); "
    "2 usage error; 130 interrupted; 141 stdout closed."
)
_FOOTER = (
    "Every option can also be set as ASYNCFETCH_<OPTION> (ASYNCFETCH_CONCURRENCY=200, ASYNCFETCH_FAIL=1); "
    "the command line wins. Record fields, recipes and details: the README (Records, Recipes)."
)
_METAVARS: dict[Any, str] = {int: "N", float: "NUM", str: "TEXT", Path: "PATH"}
_COLUMN = 28  # where option help starts
# One line each in the tool's help (each command's own help says more).
_SUMMARIES = {
    "enqueue": "Put requests on a Redis queue.",
    "work": "Fetch from the queue (one per machine).",
    "collect": "Write the queue's records, each once.",
    "status": "The queue's state as JSON.",
}


class _Command(TyperCommand):
    """A command whose help fits a screen: one line per option, grouped, defaults inline, no env lines."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        width = max(60, min(formatter.width or 80, 100))
        out: list[str] = []
        name = ctx.info_name if ctx.parent is not None and ctx.info_name != "fetch" else None
        if name is None:
            out += [f"Usage: {PROG} [OPTIONS] [INPUT]...", f"       {PROG} COMMAND [OPTIONS] ...", ""]
            out += textwrap.wrap(_DESCRIPTION, width)
            out += ["", "Examples:"]
            out += [f"  {line}  {note}".rstrip() for line, note in _EXAMPLES]
        else:
            out += [f"Usage: {PROG} {name} [OPTIONS]" + (" [INPUT]..." if name == "enqueue" else ""), ""]
            out += textwrap.wrap(self.help or "", width)
        panels: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            if not getattr(param, "opts", None) or getattr(param, "param_type_name", "") != "option":
                continue
            panel = getattr(param, "rich_help_panel", None) or "Other"
            panels.setdefault(panel, []).append(_option_row(param))
        general = panels.pop("Other", [])
        for panel, rows in [*panels.items(), ("General", general)]:
            out += ["", f"{panel}:"]
            for flags, text in rows:
                out += _row(flags, text, _COLUMN, width)
        if name is None:
            out += ["", "Commands (one fetch spread over many machines through Redis):"]
            group = ctx.parent.command if ctx.parent is not None else None
            for command_name, text in _commands(group):
                out += _row(command_name, text, _COLUMN, width)
            out += [""]
            out += textwrap.wrap(_EXIT_STATUSES, width)
            out += textwrap.wrap(_FOOTER, width)
        formatter.write("\n".join(out) + "\n")


def _option_row(param: Any) -> tuple[str, str]:
    names = sorted(param.opts, key=len)
    flags = ", ".join(names)
    if param.secondary_opts:
        flags += " / " + ", ".join(param.secondary_opts)
    if not param.is_flag:
        declared = p.PARAMS.get(param.name)
        metavar = declared.metavar if declared is not None and declared.metavar else None
        kind = declared.kind if declared is not None else None
        flags += " " + (metavar or _METAVARS.get(kind, param.name.upper()))
    text = param.help or ""
    declared = p.PARAMS.get(param.name)
    default = declared.default_text() if declared is not None else None
    if default is not None:
        text += f" [{default}]"
    return flags, text


def _row(left: str, text: str, column: int, width: int) -> list[str]:
    lines = textwrap.wrap(text, max(20, width - column)) or [""]
    if len(left) + 2 > column - 2:
        return [f"  {left}", *(" " * column + line for line in lines)]
    first = f"  {left}".ljust(column) + lines[0]
    return [first, *(" " * column + line for line in lines[1:])]


def _commands(group: Any) -> list[tuple[str, str]]:
    if group is None:
        return []
    rows = []
    for command_name in group.list_commands(None):
        if command_name == "fetch":
            continue
        summary = _SUMMARIES.get(command_name)
        if summary is None:  # built only when it has no summary here
            summary = (group.get_command(None, command_name).help or "").split("\n")[0]
        rows.append((command_name, summary))
    return rows


def _build_command(name: str) -> Any:
    """The click command of one of :data:`COMMANDS`, through a one-command Typer app."""
    module, function = COMMANDS[name]
    callback = getattr(import_module(module), function)
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
    app.command(name, cls=_Command, help=callback.__doc__)(callback)
    return typer.main.get_command(app)


class _Commands(MutableMapping[str, Any]):
    """The group's commands by name: every one listed, each built on first use (click reads ``commands``)."""

    def __init__(self) -> None:
        self._names = list(COMMANDS)
        self._built: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            if name not in COMMANDS:
                raise KeyError(name)
            self._built[name] = _build_command(name)
        return self._built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        if name not in self._names:
            self._names.append(name)
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        self._names.remove(name)
        self._built.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class _FetchUnlessNamed(TyperGroup):
    """Arguments that do not start with a command name are the fetch command's."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = _Commands()

    def list_commands(self, ctx: Any) -> list[str]:
        # By name only: typer's walks the items, which would build every command.
        return list(self.commands)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        completing = ctx.resilient_parsing and not args  # `asyncfetch <TAB>`: offer the commands
        if not completing and (not args or (args[0] not in self.commands and args[0] not in _COMPLETION_OPTIONS)):
            args = ["fetch", *args]
        return super().parse_args(ctx, args)


def _root() -> None:
    """The group's own callback: nothing to do before a command (it makes typer build a group)."""


def build_app() -> typer.Typer:
    """The Typer app of ``asyncfetch``: a group listing every command of :data:`COMMANDS` (built on use)."""
    app = typer.Typer(
        cls=_FetchUnlessNamed,
        add_completion=True,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
        help=_DESCRIPTION,
    )
    app.callback()(_root)
    return app


def run(args: list[str]) -> int:
    """Run the command on ``args``; returns the exit status (every error is reported here, once)."""
    cli = typer.main.get_command(build_app())
    p.ARGV.set(tuple(args))
    command = args[0] if args and args[0] in ("enqueue", "work", "collect", "status") else None
    try:
        status = cli.main(args=args, prog_name=PROG, standalone_mode=False)
    except (UsageError, CommandError) as exc:
        return report(exc, command=command)
    except Exception as exc:
        # typer's (vendored click) usage errors: unknown option, bad value, missing argument.
        formatter = getattr(exc, "format_message", None)
        if callable(formatter) and hasattr(exc, "exit_code"):
            return report(UsageError(_click_message(exc)), command=command)
        raise
    return int(status) if isinstance(status, int) else ExitStatus.OK


def _click_message(exc: Any) -> str:
    """click's message, saying where a bad value came from when it was the environment."""
    possibilities = getattr(exc, "possibilities", None)
    option = getattr(exc, "option_name", None)
    if option is not None and possibilities is not None:  # an unknown option: the one nearest it
        nearest = difflib.get_close_matches(option, possibilities, n=1)
        return f"no such option: {option}" + (f" (did you mean {nearest[0]}?)" if nearest else "")
    message = str(exc.format_message())
    param, ctx = getattr(exc, "param", None), getattr(exc, "ctx", None)
    if param is not None and ctx is not None and getattr(param, "envvar", None):
        source = ctx.get_parameter_source(param.name)
        if source is not None and source.name == "ENVIRONMENT":
            message += f" (from {param.envvar})"
    return message
