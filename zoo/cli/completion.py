"""Shell completion for ``zoo``, generated from its argparse parser (so it never drifts from it).

``eval "$(zoo completion bash)"`` in ``~/.bashrc`` (or ``zsh`` in ``~/.zshrc``, through zsh's
``bashcompinit``) completes command names, each command's options (after ``-``), the values of options and
arguments with choices, and file names elsewhere.
"""

from __future__ import annotations

import argparse
import shlex

__all__ = ["SHELLS", "completion_script"]

SHELLS = ("bash", "zsh")


def _options(parser: argparse.ArgumentParser) -> tuple[list[str], dict[str, list[str]]]:
    """A parser's option strings, and the choices of those that take one of a few values."""
    flags: list[str] = []
    choices: dict[str, list[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        flags += action.option_strings
        if action.option_strings and action.choices:
            for flag in action.option_strings:
                choices[flag] = [str(c) for c in action.choices]
    return flags, choices


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of ``parser`` for ``shell`` (``bash`` or ``zsh``)."""
    if shell not in SHELLS:
        raise ValueError(f"shell {shell!r}: expected one of {', '.join(SHELLS)}")
    prog = parser.prog
    fn = "_" + "".join(c if c.isalnum() else "_" for c in prog) + "_complete"
    top_flags, _ = _options(parser)
    commands = _subcommands(parser)
    words = " ".join(shlex.quote(w) for w in [*commands, *top_flags])
    cases, value_cases = [], []
    for name, sub in commands.items():
        flags, choices = _options(sub)
        positional = [a for a in sub._actions if not a.option_strings and a.choices]
        args = shlex.quote(" ".join(str(c) for a in positional for c in a.choices))
        cases.append(f"        {shlex.quote(name)}) words={shlex.quote(' '.join(flags))} values={args} ;;")
        for flag, values in choices.items():
            pattern, listed_values = shlex.quote(f"{name} {flag}"), shlex.quote(" ".join(values))
            value_cases.append(f"        {pattern}) words={listed_values} ;;")
    lines = [
        f"# {prog} completion ({shell}), generated from its parser by `{prog} completion {shell}`",
        *(["autoload -U +X bashcompinit && bashcompinit"] if shell == "zsh" else []),
        f"{fn}() {{",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
        '    local cmd="" words="" values="" w',
        '    for w in "${COMP_WORDS[@]:1:COMP_CWORD-1}"; do',
        '        case "$w" in -*) ;; *) cmd="$w"; break ;; esac',
        "    done",
        '    case "$cmd $prev" in',
        *value_cases,
        "    esac",
        '    if [[ -n "$words" ]]; then',
        '        COMPREPLY=($(compgen -W "$words" -- "$cur")); return',
        "    fi",
        f'    if [[ -z "$cmd" ]]; then COMPREPLY=($(compgen -W {shlex.quote(words)} -- "$cur")); return; fi',
        '    case "$cmd" in',
        *cases,
        "    esac",
        '    if [[ "$cur" == -* ]]; then COMPREPLY=($(compgen -W "$words" -- "$cur"))',
        '    elif [[ -n "$values" ]]; then COMPREPLY=($(compgen -W "$values" -- "$cur"))',
        '    else COMPREPLY=($(compgen -f -- "$cur")); fi',
        "}",
        f"complete -o filenames -F {fn} {prog}",
    ]
    return "\n".join(lines) + "\n"
