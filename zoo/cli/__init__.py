"""The ``zoo`` command line.

Each command's arguments are declared beside its handler (``@command`` in :mod:`zoo.cli._base`),
grouped by theme: :mod:`zoo.cli.models` (list, info, download, convert, card),
:mod:`zoo.cli.apply` (predict, demo, export, bench), :mod:`zoo.cli.train` (finetune, pretrain)
and :mod:`zoo.cli.publish`.

Exit status, as Unix tools, decided in one place (:func:`exit_status`, used by :func:`main`):
0 success; 2 usage error: the request cannot work as given (a bad option, an unknown model name,
an argument, input or checkpoint the model cannot take: a ``ValueError``; a licence refusal that
needs ``--permission-obtained``: a ``PermissionError``); 1 runtime failure: the environment
failed (network, disk, a missing file, a missing extra, a download whose bytes are not the pinned
ones: ``OSError``, ``RuntimeError``, ``ImportError``, ``zoo.hub.DigestMismatchError``);
130 interrupted; a reader that closes the pipe early (``zoo list | head -1``) ends it quietly
with 141.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from zoo.cli import apply, bundle, models, publish, train  # noqa: F401  (each registers its commands)
from zoo.cli._base import (
    COMMANDS,
    EXIT_BROKEN_PIPE,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    JSON,
    UsageError,
    add_common_options,
    arg,
    command,
)
from zoo.cli.apply import _parse_intensity
from zoo.cli.completion import SHELLS, completion_script

__all__ = [
    "main",
    "build_parser",
    "exit_status",
    "command",
    "arg",
    "UsageError",
    "COMMANDS",
    "JSON",
    "EXIT_OK",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "EXIT_INTERRUPTED",
    "EXIT_BROKEN_PIPE",
    "_parse_intensity",
]

log = logging.getLogger("zoo")

# The order of `zoo --help`: the registry first, then using a model, training, publishing.
_ORDER = (
    "list", "info", "download", "convert", "publish", "predict", "demo", "export", "bench",
    "finetune", "pretrain", "bundle", "card", "completion",
)  # fmt: skip


@command(
    "completion",
    help="print the shell completion script (bash, zsh), generated from this parser",
    args=[arg("shell", choices=SHELLS, help='eval "$(zoo completion bash)" in ~/.bashrc (zsh: ~/.zshrc)')],
)
def cmd_completion(a: argparse.Namespace) -> int:
    """Completion of commands, options and choices; install with ``eval "$(zoo completion bash)"``."""
    print(completion_script(build_parser(), a.shell), end="")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The ``zoo`` parser: global options, then each registered command with its own arguments."""
    from zoo import __version__

    p = argparse.ArgumentParser(
        prog="zoo",
        description="medzoo: self-supervised 3D medical-imaging models",
        epilog="exit status: 0 success, 1 runtime failure, 2 a request that cannot work as given. "
        "`zoo COMMAND --help` for each.",
    )
    add_common_options(p)
    p.add_argument("--version", action="version", version=f"medzoo {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    names = [n for n in _ORDER if n in COMMANDS] + sorted(set(COMMANDS) - set(_ORDER))
    for name in names:
        COMMANDS[name].add_to(sub)
    return p


def exit_status(error: BaseException) -> int | None:
    """The exit status of a command that raised ``error``; None: not a known failure (a bug).

    The one mapping from exception classes to exit codes; the order of the checks matters where
    the classes nest.
    """
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    hub = sys.modules.get("zoo.hub")  # not imported: none of its errors can have been raised
    if hub is not None and isinstance(error, hub.DigestMismatchError):
        # A ValueError by class, but the bytes a server or cache delivered were wrong: the request
        # was fine and a retry may work, so it is the environment's failure (1), checked before ValueError.
        return EXIT_FAILURE
    if isinstance(error, ValueError | PermissionError):  # UsageError, unknown names, bad input; licences
        return EXIT_USAGE
    if isinstance(error, ImportError | OSError | RuntimeError):  # missing extra, disk, network
        return EXIT_FAILURE
    return None


def _quiet_stdout() -> None:
    # The reader is gone: point stdout at /dev/null so the interpreter's final flush stays silent.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (captured in-process)
        pass


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``zoo`` with ``argv`` (default: ``sys.argv[1:]``) and return its exit status."""
    args = build_parser().parse_args(argv)  # usage errors exit 2 here, as argparse does
    level = logging.INFO if args.verbose else logging.ERROR if args.quiet else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(message)s")
    cmd = COMMANDS[args.command]
    try:
        rc = cmd.handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return rc
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt as e:
        said = cmd.interrupted(args, e) if cmd.interrupted else "error: interrupted"
        print(f"zoo {args.command}: {said}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        status = exit_status(e)
        if isinstance(e, ModuleNotFoundError):  # an import inside a feature, without require()
            from zoo._optional import extra_for, hint

            extra = extra_for(e.name)
            if extra is None:
                raise  # a module of no extra is missing: a broken install, shown in full
            message = hint(e.name.split(".")[0], extra, feature=f"zoo {args.command}")
        elif status is None:
            raise  # not a failure the mapping knows: a bug, with its traceback
        else:
            message = _one_line(e)
        log.debug("zoo %s failed", args.command, exc_info=True)
        print(f"zoo {args.command}: error: {message}", file=sys.stderr)
        return status
