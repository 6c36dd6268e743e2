"""Building blocks shared by several model families.

* :mod:`zoo.layers.checks`: argument and input checks (``as_int``, ``int_tuple``, ``check_input``,
  ``check_args``), one place for the messages "<argument> must be …, found …".
* :mod:`zoo.layers.mlp`: the transformer ``Mlp`` and ``DropPath`` (timm's keys and maths).
* :mod:`zoo.layers.window_attention_3d`: 3D (shifted) window attention.
* :mod:`zoo.layers.tracing`: tracing / channels-last helpers for export.
* :mod:`zoo.layers.model_api`: timm's training API as a mixin (``ModelApiMixin``), ``FeatureInfo``,
  and ``checkpointed`` (gradient checkpointing per block).

Nothing here imports timm, torchvision or MONAI's networks at import time: the registry,
``zoo list`` and ``zoo info`` load this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zoo.layers.checks import InvalidArgumentError, as_float, as_int, check_args, check_input, int_tuple
from zoo.layers.mlp import DropPath, Mlp, drop_path

if TYPE_CHECKING:
    import torch

__all__ = [
    "InvalidArgumentError",
    "DropPath",
    "Mlp",
    "drop_path",
    "trunc_normal_",
    "as_int",
    "as_float",
    "int_tuple",
    "check_input",
    "check_args",
]


def trunc_normal_(tensor: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """timm's ``trunc_normal_`` initialiser, imported on first use (timm imports torchvision)."""
    from timm.layers import trunc_normal_ as _trunc_normal_

    return _trunc_normal_(tensor, **kwargs)
