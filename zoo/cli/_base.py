"""What every ``zoo`` command shares: the ``@command`` registry, ``UsageError``, the table printer."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
