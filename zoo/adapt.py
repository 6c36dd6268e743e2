"""Adapting pretrained weights to a user's task: input channels, output classes.

``adapt_input_conv`` is the N-dimensional counterpart of timm's ``adapt_input_conv``
(which handles 2D RGB only): it maps a convolution trained on ``c_old`` input channels
to ``c_new`` channels while keeping the response to a constant input unchanged.
"""

from __future__ import annotations

import torch

__all__ = ["adapt_input_conv"]


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt a convolution weight ``[out, c_old, *kernel]`` to ``in_chans`` input channels.

    Every new input channel gets the mean of the old channels' kernels, scaled by
    ``c_old / in_chans``. For an input that is the same constant ``c`` on all channels
    the response is then ``Σ_old W_i * c`` as before, whatever ``in_chans`` is; for
    ``in_chans=1`` this is the sum of the old kernels (the usual RGB → grey rule).

    Args:
        weight: convolution weight with input channels on dim 1 (2D or 3D kernels).
        in_chans: number of input channels wanted.

    Returns:
        A new tensor ``[out, in_chans, *kernel]`` of the same dtype.
    """
    if weight.ndim < 3:
        raise ValueError(f"expected a convolution weight [out, in, *kernel], found shape {tuple(weight.shape)}")
    if in_chans < 1:
        raise ValueError(f"in_chans must be ≥ 1, got {in_chans}")
    c_old = weight.shape[1]
    if c_old == in_chans:
        return weight.clone()
    w = weight.double().mean(dim=1, keepdim=True) * (c_old / in_chans)
    reps = [1, in_chans] + [1] * (weight.ndim - 2)
    return w.repeat(*reps).to(weight.dtype)
