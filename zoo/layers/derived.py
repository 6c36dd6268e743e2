"""Buffers that are functions of a module's configuration, such as relative position indices.

A module lists them in its class attribute ``derived_buffers`` (a class of another library is
declared with :func:`declare_derived`); they are rebuilt whenever the module is built, so a
published file or a run's file need not store them (int64 indices can outnumber the
parameters), and a file that stores them (the authors', older caches and runs) still loads.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["declare_derived", "derived_buffer_keys", "without_derived"]

# Classes of other libraries (MONAI's window attention) whose derived buffers zoo declares here,
# leaving the classes themselves untouched.
_DECLARED: dict[type, tuple[str, ...]] = {}


def declare_derived(cls: type, *names: str) -> None:
    """Declare buffers ``names`` of a class that zoo does not define as derived."""
    _DECLARED[cls] = names


def derived_buffer_keys(model: nn.Module) -> set[str]:
    """The ``state_dict`` keys of ``model`` that hold derived buffers."""
    keys = set()
    for name, module in model.named_modules():
        kind = type(module)
        for buffer in (*getattr(kind, "derived_buffers", ()), *_DECLARED.get(kind, ())):
            if buffer in module._buffers and buffer not in module._non_persistent_buffers_set:
                keys.add(f"{name}.{buffer}" if name else buffer)
    return keys


def without_derived(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` less the derived buffers of ``model`` (a meta-device copy will do)."""
    derived = derived_buffer_keys(model)
    return {k: v for k, v in state_dict.items() if k not in derived}
