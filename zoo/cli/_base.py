"""What every ``zoo`` command shares: the ``@command`` registry, ``UsageError``, the table printer,
the options every command takes (``-v``/``-q``, before or after its name) and ``--json`` reports."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 130, 141

Handler = Callable[[argparse.Namespace], int]


class UsageError(ValueError):
    """A command line that cannot work as given (exit status 2)."""


@dataclass(frozen=True)
class Arg:
    """One ``add_argument`` call, kept as data beside the command that reads it."""

    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


def arg(*flags: str, **options: Any) -> Arg:
    """``arg("--steps", type=int, help=...)``: the arguments of ``parser.add_argument``."""
    return Arg(flags, options)


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, one-line help, arguments and handler.

    ``interrupted`` words the line printed on Ctrl-C (after ``zoo NAME: ``) for commands that can
    be resumed; the exit status is 130 either way.
    """

    name: str
    help: str
    args: tuple[Arg, ...]
    handler: Handler
    interrupted: Callable[[argparse.Namespace, KeyboardInterrupt], str] | None = None

    def add_to(self, sub: Any) -> None:
        parser = sub.add_parser(self.name, help=self.help)
        for a in self.args:
            parser.add_argument(*a.flags, **a.options)
        add_common_options(parser, after_command=True)

    @property
    def reports(self) -> bool:
        """Whether the command takes ``--json`` (each command that reports a result does)."""
        return any("--json" in a.flags for a in self.args)


def add_common_options(parser: argparse.ArgumentParser, after_command: bool = False) -> None:
    """``-v`` / ``-q``, taken before the command's name and after it alike.

    After it they default to "not given" (``SUPPRESS``), so that ``zoo -q list`` keeps the ``-q``.
    """
    default: dict[str, Any] = {"default": argparse.SUPPRESS} if after_command else {"default": False}
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level", **default)
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars; log errors only", **default
    )


JSON = Arg(("--json",), {"action": "store_true", "help": "the report as JSON (null: unknown)"})


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def human_output(a: argparse.Namespace) -> contextlib.AbstractContextManager:
    """With ``--json``, what a task prints for people goes to stderr: stdout holds only the report."""
    return contextlib.redirect_stdout(sys.stderr) if getattr(a, "json", False) else contextlib.nullcontext()


def report(a: argparse.Namespace, text: str, data: Mapping[str, Any]) -> None:
    """A command's result: ``text`` for people, or ``data`` as one line of JSON with ``--json``."""
    print(json.dumps(_plain(data)) if getattr(a, "json", False) else text, flush=True)


COMMANDS: dict[str, Command] = {}


def command(
    name: str,
    *,
    help: str,
    args: Sequence[Arg] = (),
    interrupted: Callable[[argparse.Namespace, KeyboardInterrupt], str] | None = None,
) -> Callable[[Handler], Handler]:
    """Register ``cmd_x`` as the subcommand ``name`` with the arguments declared here."""

    def register(fn: Handler) -> Handler:
        if name in COMMANDS:
            raise ValueError(f"two commands named {name!r}")
        COMMANDS[name] = Command(name, help, tuple(args), fn, interrupted)
        return fn

    return register


def table(rows: list[list[str]], header: list[str]) -> str:
    """Left-aligned columns under a header and a rule."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
