"""Building blocks shared by several model families.

timm's layers are re-exported as factories that import timm when a model is *built*:
importing timm pulls in torchvision (about a second), which the registry, ``zoo list``
and ``zoo info`` must not pay for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zoo.layers.checks import as_float, as_int, check_input, int_tuple

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["DropPath", "Mlp", "trunc_normal_", "as_int", "as_float", "int_tuple", "check_input"]


def DropPath(drop_prob: float = 0.0) -> nn.Module:  # noqa: N802 - stands in for the timm class
    """timm's ``DropPath`` (stochastic depth), imported on first use."""
    from timm.layers import DropPath as _DropPath

    return _DropPath(drop_prob)


def Mlp(*args: Any, **kwargs: Any) -> nn.Module:  # noqa: N802 - stands in for the timm class
    """timm's ``Mlp`` (fc1 → act → drop → fc2 → drop; keys ``fc1``/``fc2``), imported on first use."""
    from timm.layers import Mlp as _Mlp

    return _Mlp(*args, **kwargs)


def trunc_normal_(tensor: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """timm's ``trunc_normal_`` initialiser, imported on first use."""
    from timm.layers import trunc_normal_ as _trunc_normal_

    return _trunc_normal_(tensor, **kwargs)
