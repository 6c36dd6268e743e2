"""Argument and input checks shared by every model family.

Each helper raises one ``ValueError`` naming the argument, what was expected and what was
found, instead of the ``TypeError`` / ``ZeroDivisionError`` a bad value would cause deep
inside a constructor.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["InvalidArgumentError", "as_int", "as_float", "int_tuple", "check_input", "check_args"]


class InvalidArgumentError(ValueError):
    """An argument or input a model cannot take (the CLI's usage error, exit status 2)."""


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but in_chans=True is a mistake, not 1.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _in_range(value: Any, must: str, minimum: Any, maximum: Any) -> Any:
    """``value`` if within the bounds that are not None, else an error that starts with ``must``."""
    if minimum is not None and value < minimum:
        raise InvalidArgumentError(f"{must} ≥ {minimum}, found {value}")
    if maximum is not None and value > maximum:
        raise InvalidArgumentError(f"{must} ≤ {maximum}, found {value}")
    return value


def as_int(value: Any, name: str, minimum: int | None = 1, maximum: int | None = None) -> int:
    """``value`` as an ``int`` within ``[minimum, maximum]``, or a ``ValueError`` naming ``name``.

    Strings (``"96"``), floats (``2.0``) and bools are refused: a config typo should not
    become a silently different model.

    Args:
        value: the argument's value.
        name: the argument's name, for the message.
        minimum: smallest allowed value (None: no bound).
        maximum: largest allowed value (None: no bound).

    Returns:
        The value as a Python ``int``.
    """
    if not _is_int(value):
        raise InvalidArgumentError(f"{name} must be an int, found {type(value).__name__} {value!r}")
    return _in_range(int(value), f"{name} must be an int", minimum, maximum)


def as_float(value: Any, name: str, minimum: float | None = None, maximum: float | None = None) -> float:
    """``value`` as a ``float`` within ``[minimum, maximum]`` (ints accepted), or a ``ValueError``.

    Args:
        value, name, minimum, maximum: as for :func:`as_int`; NaN is refused.

    Returns:
        The value as a Python ``float``.
    """
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be a number, found {type(value).__name__} {value!r}")
    value = float(value)
    if value != value:  # NaN compares unequal to itself and would pass both range checks
        raise InvalidArgumentError(f"{name} must be a number, found nan")
    return _in_range(value, f"{name} must be", minimum, maximum)


def int_tuple(value: Any, n: int, name: str, minimum: int | None = 1) -> tuple[int, ...]:
    """An int repeated ``n`` times, or a sequence of ``n`` ints, checked (like MONAI's ``ensure_tuple_rep``).

    Args:
        value: one int, or a sequence (list, tuple) of ``n`` ints.
        n: the number of entries wanted (2 for in-plane sizes, 3 for volumes).
        name: the argument's name, for the message.
        minimum: smallest allowed entry (None: no bound).

    Returns:
        A tuple of ``n`` Python ints.
    """
    if _is_int(value):
        return (as_int(value, name, minimum),) * n
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | torch.Size):
        raise InvalidArgumentError(
            f"{name} must be an int or {n} ints, found {type(value).__name__} {value!r}"
        )
    if len(value) != n:
        raise InvalidArgumentError(f"{name} must be an int or {n} ints, found {len(value)}: {tuple(value)!r}")
    return tuple(as_int(v, f"{name}[{i}]", minimum) for i, v in enumerate(value))


def check_input(
    x: Any,
    in_chans: int,
    model: str,
    spatial_dims: int = 3,
    multiple: int | Sequence[int] = 1,
    why: str = "",
) -> None:
    """Raise a ``ValueError`` unless ``x`` is a ``(B, in_chans, *spatial)`` tensor a model accepts.

    Args:
        x: the model's input.
        in_chans: the channels the model was built for.
        model: the model's name, for the message.
        spatial_dims: 3 for volumes (B, C, D, H, W), 2 for slices (B, C, H, W).
        multiple: every spatial side (or each side, given per axis) must divide by this.
        why: the reason for ``multiple``, appended to the message.
    """
    if not isinstance(x, torch.Tensor):
        raise InvalidArgumentError(f"{model} expects a torch.Tensor, found {type(x).__name__}")
    axes = "(B, C, D, H, W)" if spatial_dims == 3 else "(B, C, H, W)"
    if x.ndim != spatial_dims + 2:
        raise InvalidArgumentError(
            f"{model} expects a {spatial_dims + 2}D input {axes}, found shape {tuple(x.shape)}"
        )
    if x.shape[1] != in_chans:
        raise InvalidArgumentError(
            f"{model} expects {in_chans} input channel(s), found {x.shape[1]} (shape {tuple(x.shape)})"
        )
    spatial = tuple(x.shape[2:])
    mult = (multiple,) * spatial_dims if isinstance(multiple, int) else tuple(multiple)
    if min(spatial) < 1 or any(s % m for s, m in zip(spatial, mult, strict=True)):
        need = mult[0] if len(set(mult)) == 1 else mult
        raise InvalidArgumentError(
            f"{model} needs every spatial side divisible by {need}{f' ({why})' if why else ''}, "
            f"found {spatial}"
        )


def _int_minimum(name: str, default: int) -> int:
    # Mode switches (res_mode=0) may be 0; widths, depths, heads, sizes and counts may not.
    return 0 if name.endswith("_mode") or default == 0 else 1


def _check_number(value: Any, name: str) -> None:
    lo, hi = (0.0, 1.0) if "drop" in name else (None, None)  # dropout and drop-path are probabilities
    v = as_float(value, name, lo, hi)
    if math.isinf(v):
        raise InvalidArgumentError(f"{name} must be finite, found {v}")


def check_args(args: Mapping[str, Any], defaults: Mapping[str, Any], model: str) -> None:
    """Check each argument in ``args`` against the type of its value in ``defaults``.

    The rule follows the default: a bool stays a bool; an int must be an int ≥ 1 (≥ 0 for a
    ``*_mode`` switch or a default of 0), never a string or a float; a float is a number
    (a probability for ``*drop*`` names); a tuple keeps its element types (a single int is
    accepted for ``*size*`` tuples, as for ``img_size=96``); a string stays a string.
    Arguments without a default, and ``None`` values (the builder's own default), pass
    unchecked: the builder owns them.

    Args:
        args: the arguments about to be passed to a model builder.
        defaults: a registered configuration (``ModelSpec.model_args``).
        model: the model's name, for the message.

    Raises:
        ValueError: ``"qtunet-t: embed_dim must be an int ≥ 1, found 0"``.
    """
    for name, value in args.items():
        if name not in defaults or value is None:
            continue
        default = defaults[name]
        try:
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise InvalidArgumentError(
                        f"{name} must be True or False, found {type(value).__name__} {value!r}"
                    )
            elif isinstance(default, numbers.Integral):
                as_int(value, name, _int_minimum(name, int(default)))
            elif isinstance(default, numbers.Real):
                _check_number(value, name)
            elif isinstance(default, str):
                if not isinstance(value, str):
                    raise InvalidArgumentError(
                        f"{name} must be a string such as {default!r}, found {value!r}"
                    )
            elif isinstance(default, tuple | list) and default:
                _check_sequence(value, default, name)
        except ValueError as e:
            raise InvalidArgumentError(f"{model}: {e}") from None


def _check_sequence(value: Any, default: Sequence[Any], name: str) -> None:
    if all(_is_int(d) for d in default):
        if "size" in name:  # img_size=96 means (96, 96, 96): the length is the model's dimensionality
            int_tuple(value, len(default), name)
            return
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise InvalidArgumentError(
                f"{name} must be a sequence of ints like {tuple(default)}, found {value!r}"
            )
        for i, v in enumerate(value):
            as_int(v, f"{name}[{i}]", 1)
    elif all(isinstance(d, numbers.Real) and not isinstance(d, bool) for d in default):
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise InvalidArgumentError(
                f"{name} must be a sequence of numbers like {tuple(default)}, found {value!r}"
            )
        for i, v in enumerate(value):
            _check_number(v, f"{name}[{i}]")
