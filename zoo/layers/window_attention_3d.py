"""Helpers for 3D (shifted) window attention, as in Video Swin and its medical descendants.

Feature maps are channels-last ``(B, D, H, W, C)`` throughout. The helpers cover the
bookkeeping around the attention itself: clamping the window to small feature maps,
right-padding to window multiples, the cyclic shift with its Swin mask, partitioning
into windows and back, and the relative-position index of a 3D window. Nothing here
depends on one model family; each window operation is a reshape/permute, never a
Python loop over windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = [
    "get_window_size",
    "pad_to_window_multiple",
    "window_partition",
    "window_reverse",
    "shifted_window_mask",
    "relative_position_index_3d",
    "to_windows",
    "from_windows",
]

# The additive mask value Swin uses between tokens of different shifted regions.
SWIN_MASK_VALUE = -100.0


def get_window_size(
    x_size: Sequence[int], window_size: Sequence[int], shift_size: Sequence[int] | None = None
) -> tuple[int, ...] | tuple[tuple[int, ...], tuple[int, ...]]:
    """Clamp the window (and shift) to a feature map that is no larger than the window.

    On every axis whose feature size is ≤ the window, the window becomes the feature
    size and the shift on that axis becomes 0 (Video Swin's rule).

    Args:
        x_size: spatial feature size ``(D, H, W)``.
        window_size: nominal window ``(Wd, Wh, Ww)``.
        shift_size: nominal shift, or None.

    Returns:
        The window size, or ``(window_size, shift_size)`` when a shift was given.
    """
    win = list(window_size)
    shift = list(shift_size) if shift_size is not None else None
    for i, size in enumerate(x_size):
        if size <= window_size[i]:
            win[i] = size
            if shift is not None:
                shift[i] = 0
    if shift is None:
        return tuple(win)
    return tuple(win), tuple(shift)


def pad_to_window_multiple(x: torch.Tensor, window_size: Sequence[int]) -> torch.Tensor:
    """Right-pad ``(B, D, H, W, C)`` with zeros so each spatial axis is a window multiple.

    The padded voxels are ordinary zero tokens: they take part in attention as keys
    (no padding mask), which is what Video Swin does.
    """
    _, d, h, w, _ = x.shape
    pd = (window_size[0] - d % window_size[0]) % window_size[0]
    ph = (window_size[1] - h % window_size[1]) % window_size[1]
    pw = (window_size[2] - w % window_size[2]) % window_size[2]
    if pd or ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph, 0, pd))
    return x


def window_partition(x: torch.Tensor, window_size: Sequence[int]) -> torch.Tensor:
    """Split ``(B, D, H, W, C)`` into windows.

    Returns:
        ``(B * nW, Wd * Wh * Ww, C)``, windows ordered D-major, then H, then W.
    """
    b, d, h, w, c = x.shape
    wd, wh, ww = window_size
    x = x.view(b, d // wd, wd, h // wh, wh, w // ww, ww, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, wd * wh * ww, c)


def window_reverse(
    windows: torch.Tensor, window_size: Sequence[int], b: int, d: int, h: int, w: int
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, N, C)`` → ``(B, D, H, W, C)``."""
    wd, wh, ww = window_size
    x = windows.view(b, d // wd, h // wh, w // ww, wd, wh, ww, -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, -1)


def _region_ids(size: int, window: int, shift: int) -> torch.Tensor:
    # Swin's three regions along one axis of the padded, rolled map: [0, size-window),
    # [size-window, size-shift), [size-shift, size). Without a shift the axis is one region.
    idx = torch.arange(size)
    if shift == 0:
        return torch.zeros(size, dtype=torch.long)
    return (idx >= size - window).long() + (idx >= size - shift).long()


@lru_cache(maxsize=64)
def _shifted_window_mask(
    padded_size: tuple[int, int, int],
    window_size: tuple[int, int, int],
    shift_size: tuple[int, int, int],
    device: torch.device,
) -> torch.Tensor:
    ids = [_region_ids(s, w, sh) for s, w, sh in zip(padded_size, window_size, shift_size, strict=True)]
    region = ids[0].view(-1, 1, 1) * 9 + ids[1].view(1, -1, 1) * 3 + ids[2].view(1, 1, -1)
    region = region.view(1, *padded_size, 1).float()
    windows = window_partition(region, window_size).squeeze(-1)  # (nW, N)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    mask = torch.zeros_like(diff).masked_fill(diff != 0, SWIN_MASK_VALUE)
    return mask.to(device)


def shifted_window_mask(
    padded_size: Sequence[int],
    window_size: Sequence[int],
    shift_size: Sequence[int],
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The additive attention mask of shifted-window attention (Swin's −100 rule).

    After the cyclic shift, a window may hold tokens from up to eight regions that are
    not neighbours in the unshifted map; pairs from different regions get −100.

    Args:
        padded_size: the padded feature size ``(Dp, Hp, Wp)`` (window multiples).
        window_size: the (clamped) window.
        shift_size: the (clamped) shift.
        device: where to put the mask.

    Returns:
        ``(nW, N, N)`` float mask with values 0 and −100 (cached per shape and device).
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    return _shifted_window_mask(tuple(padded_size), tuple(window_size), tuple(shift_size), dev)


def relative_position_index_3d(window_size: Sequence[int]) -> torch.Tensor:
    """Pairwise relative-position index of the tokens of one 3D window.

    Token ``i`` and ``j`` map to the row of a ``(2Wd−1)(2Wh−1)(2Ww−1)``-entry bias table
    that holds their offset ``(dd, dh, dw)``, D-major.

    Returns:
        ``(N, N)`` int64 with ``N = Wd * Wh * Ww``.
    """
    wd, wh, ww = window_size
    coords = torch.stack(
        torch.meshgrid(torch.arange(wd), torch.arange(wh), torch.arange(ww), indexing="ij")
    ).flatten(1)  # (3, N)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, 3)
    rel = rel + torch.tensor([wd - 1, wh - 1, ww - 1])
    strides = torch.tensor([(2 * wh - 1) * (2 * ww - 1), 2 * ww - 1, 1])
    return (rel * strides).sum(-1).to(torch.int64)


def to_windows(x: torch.Tensor, window_size: Sequence[int], shift_size: Sequence[int]) -> torch.Tensor:
    """Pad, cyclically shift (by −shift) and partition ``(B, D, H, W, C)`` into windows.

    Returns:
        ``(B * nW, N, C)``.
    """
    x = pad_to_window_multiple(x, window_size)
    if any(s > 0 for s in shift_size):
        x = torch.roll(x, shifts=tuple(-s for s in shift_size), dims=(1, 2, 3))
    return window_partition(x, window_size)


def from_windows(
    windows: torch.Tensor,
    window_size: Sequence[int],
    shift_size: Sequence[int],
    batch: int,
    size: Sequence[int],
) -> torch.Tensor:
    """Inverse of :func:`to_windows`: merge, undo the shift and crop the padding.

    Args:
        windows: ``(B * nW, N, C)``.
        window_size / shift_size: as given to :func:`to_windows`.
        batch: ``B``.
        size: the unpadded spatial size ``(D, H, W)``.

    Returns:
        ``(B, D, H, W, C)``.
    """
    padded = [-(-s // w) * w for s, w in zip(size, window_size, strict=True)]
    x = window_reverse(windows, window_size, batch, *padded)
    if any(s > 0 for s in shift_size):
        x = torch.roll(x, shifts=tuple(shift_size), dims=(1, 2, 3))
    if list(padded) != list(size):
        x = x[:, : size[0], : size[1], : size[2]].contiguous()
    return x
