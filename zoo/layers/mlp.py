"""The transformer MLP and stochastic depth shared by the 3D Swin families.

Same module names, state_dict keys and computation as timm's ``Mlp`` and ``DropPath`` (a test
loads one into the other and compares outputs), written here because importing timm imports
torchvision, about a second that ``zoo.create("qtunet-t")`` would otherwise pay at start-up.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Mlp", "DropPath", "drop_path"]


class Mlp(nn.Module):
    """fc1 → act → dropout → fc2 → dropout on the last axis (keys ``fc1.*``, ``fc2.*``).

    Args:
        in_features: input (and default output) width.
        hidden_features: hidden width (default: ``in_features``).
        out_features: output width (default: ``in_features``).
        act_layer: activation class.
        drop: dropout after the activation and after ``fc2``.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.norm = nn.Identity()  # timm's slot for an optional norm: kept so module paths match
        self.fc2 = nn.Linear(hidden, out_features or in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability ``drop_prob``.

    Kept samples are scaled by ``1 / (1 - drop_prob)`` so the expectation is unchanged.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    if keep > 0.0:
        mask.div_(keep)
    return x * mask


class DropPath(nn.Module):
    """:func:`drop_path` as a module (active in training mode only)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={round(self.drop_prob, 3):0.3f}"
