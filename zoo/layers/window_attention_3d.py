"""Helpers for 3D (shifted) window attention, as in Video Swin and its medical descendants.

Feature maps are channels-last ``(B, D, H, W, C)`` throughout. The helpers cover the
bookkeeping around the attention itself: clamping the window to small feature maps,
right-padding to window multiples, the cyclic shift with its Swin mask, partitioning
into windows and back, and the relative-position index of a 3D window. Nothing here
depends on one model family; each window operation is a reshape/permute, never a
Python loop over windows.

The fast path (:class:`WindowPlan`, :func:`window_attention`) computes the same thing with
fewer memory passes: one cached gather takes a map straight to shifted, padded windows
(no pad, roll or permute copies) and one gather takes them back; windows are ordered so
that those sharing a shift mask are contiguous, which lets each group go through
``scaled_dot_product_attention`` with a single small ``(1, heads, N, N)`` float mask
(relative-position bias + Swin mask) instead of a ``(nW, heads, N, N)`` one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from zoo.layers.tracing import is_tracing

__all__ = [
    "get_window_size",
    "pad_to_window_multiple",
    "window_partition",
    "window_reverse",
    "shifted_window_mask",
    "relative_position_index_3d",
    "to_windows",
    "from_windows",
    "WindowPlan",
    "window_plan",
    "gather_windows",
    "scatter_windows",
    "window_attention",
    "window_attention_tokens",
    "project_parts",
    "exporting",
    "cached_window_masks",
]

# The additive mask value Swin uses between tokens of different shifted regions.
SWIN_MASK_VALUE = -100.0
# Attention probabilities per exported Attention node (window_attention_tokens).
_ATTENTION_CHUNK_BYTES = 6 << 20


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


# --------------------------------------------------------------------------- fast path


def exporting() -> bool:
    """True while ``torch.export`` captures a graph (the dynamo ONNX exporter).

    Window tensors then use the export layout: batch-major tokens ``(B, nW·N, C)``, heads
    merged, so that each group of windows is one ONNX ``Attention`` node on 3D inputs
    (``q_num_heads``) with no head-split transposes around it; eager PyTorch, TorchScript
    tracing and ``torch.compile`` keep the window-major layout.
    """
    return bool(getattr(torch.compiler, "is_exporting", lambda: False)())


@dataclass(frozen=True, eq=False)
class WindowPlan:
    """Where each token of a ``(B, D, H, W, C)`` map goes in its (shifted, padded) windows.

    Windows are the ones of :func:`to_windows` (same tokens, same token order inside a
    window) but listed group by group: the windows of a group share one Swin shift mask
    (interior windows have none; only the last window along a shifted axis mixes regions,
    so there are at most 8 groups).

    Attributes:
        size / window / shift: the unpadded map, the (clamped) window and shift.
        tokens: ``N``, tokens per window.
        num_windows: ``nW``.
        gather: ``(nW·N,)`` int64, the flat ``D·H·W`` index of the token in each window slot
            (padding slots point at token 0 and are zeroed through ``pad_slots``).
        pad_slots: int64 slots that hold padding, or None.
        scatter: ``(D·H·W,)`` int64, the slot of each token (the inverse of ``gather``).
        groups: ``[start, end)`` window ranges, one per shift-mask group.
        group_masks: ``(G, N, N)`` additive 0 / −100 masks of the groups, None without shift.
    """

    size: tuple[int, int, int]
    window: tuple[int, int, int]
    shift: tuple[int, int, int]
    tokens: int
    num_windows: int
    gather: torch.Tensor
    pad_slots: torch.Tensor | None
    scatter: torch.Tensor
    groups: tuple[tuple[int, int], ...]
    group_masks: torch.Tensor | None


def _build_plan(
    size: tuple[int, int, int], window: tuple[int, int, int], shift: tuple[int, int, int]
) -> WindowPlan:
    # Index arithmetic in NumPy: it stays out of any graph that torch.export/compile trace.
    padded = [-(-s // w) * w for s, w in zip(size, window, strict=True)]
    counts = [p // w for p, w in zip(padded, window, strict=True)]
    # Per axis: the padded (unrolled) coordinate of each (window, offset) of the rolled map,
    # the Swin region label of each rolled position, and whether a window is the last one
    # along a shifted axis (its bit of the mask-group id).
    coords, regions, last = [], [], []
    for p, w, s, n in zip(padded, window, shift, counts, strict=True):
        rolled = np.arange(p)
        coords.append(((rolled + s) % p).reshape(n, w))  # rolled[i] = padded[(i + s) mod p]
        regions.append((rolled >= p - w).astype(np.int64) + (rolled >= p - s) if s > 0 else 0 * rolled)
        last.append((np.arange(n) == n - 1) if s > 0 else np.zeros(n, dtype=bool))
    cd, ch, cw = coords
    shape = (*counts, *window)  # (nd, nh, nw, wd, wh, ww), windows raster-ordered
    d = np.broadcast_to(cd[:, None, None, :, None, None], shape)
    h = np.broadcast_to(ch[None, :, None, None, :, None], shape)
    w = np.broadcast_to(cw[None, None, :, None, None, :], shape)
    n_tok = math.prod(window)
    is_pad = ((d >= size[0]) | (h >= size[1]) | (w >= size[2])).reshape(-1, n_tok)
    flat = np.where(is_pad, 0, ((d * size[1] + h) * size[2] + w).reshape(-1, n_tok))  # (nW, N)
    group_id = (4 * last[0][:, None, None] + 2 * last[1][None, :, None] + last[2][None, None, :]).reshape(-1)
    order = np.argsort(group_id, kind="stable")
    flat, is_pad, group_id = flat[order], is_pad[order], group_id[order]
    starts = [0, *(np.flatnonzero(np.diff(group_id)) + 1).tolist()]
    groups = tuple(zip(starts, [*starts[1:], len(group_id)], strict=True))

    gather = flat.reshape(-1)
    real = ~is_pad.reshape(-1)
    slots = np.arange(gather.size)
    scatter = np.empty(math.prod(size), dtype=np.int64)
    scatter[gather[real]] = slots[real]

    group_masks = None
    if any(s > 0 for s in shift):
        masks = []
        for start, _ in groups:  # one representative window per group
            i_d, rest = divmod(int(order[start]), counts[1] * counts[2])
            i_h, i_w = divmod(rest, counts[2])
            rd = regions[0][i_d * window[0] : (i_d + 1) * window[0]]
            rh = regions[1][i_h * window[1] : (i_h + 1) * window[1]]
            rw = regions[2][i_w * window[2] : (i_w + 1) * window[2]]
            label = (rd[:, None, None] * 9 + rh[None, :, None] * 3 + rw[None, None, :]).reshape(-1)
            masks.append(np.where(label[None, :] != label[:, None], SWIN_MASK_VALUE, 0.0))
        group_masks = torch.tensor(np.stack(masks), dtype=torch.float32)
    return WindowPlan(
        size=size,
        window=window,
        shift=shift,
        tokens=n_tok,
        num_windows=flat.shape[0],
        gather=torch.tensor(gather, dtype=torch.long),
        pad_slots=torch.tensor(slots[~real], dtype=torch.long) if is_pad.any() else None,
        scatter=torch.tensor(scatter, dtype=torch.long),
        groups=groups,
        group_masks=group_masks,
    )


# Plans by (size, window, shift, device). A plain dict rather than lru_cache: torch.compile
# traces through lru_cache wrappers (rebuilding the plan, with graph breaks), but reads a
# plan already in this dict as constants. Plans are small and there is one per map size.
_PLANS: dict[tuple, WindowPlan] = {}


def window_plan(
    size: Sequence[int],
    window_size: Sequence[int],
    shift_size: Sequence[int],
    device: torch.device | str | None = None,
) -> WindowPlan:
    """The (cached) :class:`WindowPlan` of a map size, window and shift, on ``device``.

    The window and shift must already be clamped (:func:`get_window_size`).
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    key = (*(tuple(int(v) for v in t) for t in (size, window_size, shift_size)), dev)
    plan = _PLANS.get(key)
    if plan is None:
        with torch.inference_mode(False):  # ordinary tensors: plans also serve autograd
            plan = _build_or_move(key, dev)
        if not is_tracing():  # under export/compile its tensors may be fake
            _PLANS[key] = plan
    return plan


def _build_or_move(key: tuple, dev: torch.device) -> WindowPlan:
    if dev.type == "cpu":
        return _build_plan(*key[:3])
    cpu = window_plan(*key[:3], "cpu")
    moved = {
        k: getattr(cpu, k).to(dev)
        for k in ("gather", "pad_slots", "scatter", "group_masks")
        if getattr(cpu, k) is not None
    }
    return WindowPlan(**{**cpu.__dict__, **moved})


def gather_windows(x: torch.Tensor, plan: WindowPlan) -> torch.Tensor:
    """``(B, D, H, W, C)`` → windows ``(nW·N, B, C)``, padded with zero tokens and shifted.

    The same tokens as :func:`to_windows`, window-major with the batch inside, so that the
    ``(nW, B·heads, N, d)`` head split of a projection is a view for ``B = 1``. While
    exporting, ``(B, nW·N, C)`` instead (:func:`exporting`).
    """
    b, *_, c = x.shape
    if exporting():  # (B, nW·N, C): see exporting()
        w = x.reshape(b, -1, c).index_select(1, plan.gather)
        if plan.pad_slots is None:
            return w
        # A constant 0/1 factor per slot: index_fill on axis 1 exports as a ScatterND between two
        # full transposes, and a Where on a broadcast bool mask runs 2× slower than this Mul.
        keep = torch.ones(plan.num_windows * plan.tokens, 1, dtype=x.dtype, device=x.device)
        return w * keep.index_fill(0, plan.pad_slots, 0.0)
    w = x.reshape(b, -1, c).index_select(1, plan.gather).transpose(0, 1).contiguous()
    if plan.pad_slots is not None:
        w.index_fill_(0, plan.pad_slots, 0.0)
    return w


def scatter_windows(windows: torch.Tensor, plan: WindowPlan) -> torch.Tensor:
    """Inverse of :func:`gather_windows`: ``(nW·N, B, C)`` → ``(B, D, H, W, C)`` (padding dropped).

    The result is a view that is contiguous for ``B = 1`` (channels innermost otherwise too).
    While exporting, windows are ``(B, nW·N, C)`` (:func:`exporting`).
    """
    if exporting():
        return windows.index_select(1, plan.scatter).unflatten(1, plan.size)
    return windows.index_select(0, plan.scatter).transpose(0, 1).unflatten(1, plan.size)


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    masks: Sequence[torch.Tensor],
    plan: WindowPlan,
    scale: float,
    batch: int,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """softmax(scale·q·kᵀ + mask)·v per mask group, heads merged.

    Args:
        q, k, v: ``(nW, B·heads, N, d)``: window-major, then batch, then heads (the layout
            of a ``(nW·N, B, heads·d)`` projection of :func:`gather_windows` windows).
        masks: one ``(1, B·heads, N, N)`` float mask per group of ``plan``
            (:func:`cached_window_masks`); ``(1, heads, N, N)`` while tracing for export.
        plan: the window plan.
        scale: multiplier of q·kᵀ.
        batch: B.
        dropout_p: attention dropout (training only).

    Returns:
        ``(nW·N, B, heads·d)``.
    """
    nw, heads_b, n, dh = q.shape
    if is_tracing():
        # Exported graphs get (1, heads, N, N) masks (cached_window_masks): attend over
        # (windows·B, heads) so that they broadcast, instead of tiling them to B·heads on every
        # run (a dynamic batch keeps that Tile in the graph: 5 % of onnxruntime's time).
        outs = []
        for (s, e), m in zip(plan.groups, masks, strict=True):
            h = m.shape[1]
            qkv = [t[s:e].reshape(-1, h, n, dh) for t in (q, k, v)]
            o = F.scaled_dot_product_attention(
                *qkv, attn_mask=m.to(q.dtype), dropout_p=dropout_p, scale=scale
            )
            outs.append(o.reshape(e - s, heads_b, n, dh).transpose(1, 2))
    else:
        outs = [
            F.scaled_dot_product_attention(
                q[s:e], k[s:e], v[s:e], attn_mask=m.to(q.dtype), dropout_p=dropout_p, scale=scale
            ).transpose(1, 2)
            for (s, e), m in zip(plan.groups, masks, strict=True)
        ]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, 0)  # (nW, N, B·heads, d)
    if is_tracing():
        # Eager SDPA returns (·, N, heads, d)-major memory, so the view below is free; an
        # exported graph may decompose SDPA into matmuls laid out the other way: copy there.
        out = out.clone(memory_format=torch.contiguous_format)
    return out.reshape(nw * n, batch, heads_b * dh // batch)


def project_parts(x: torch.Tensor, layer: torch.nn.Linear, parts: int) -> tuple[torch.Tensor, ...]:
    """A fused projection (``qkv``, ``kv``) as ``parts`` separate linear maps, for export.

    Row block ``i`` of the weight is part ``i`` (the eager code splits the output the same way).
    One MatMul per part writes each of q, k, v contiguous, where one fused MatMul would be
    followed by a Split that copies all three again (4 % of onnxruntime's time for QT-UNet-T).
    """
    c = layer.weight.shape[0] // parts
    bias = layer.bias
    return tuple(
        F.linear(x, layer.weight[i * c : (i + 1) * c], None if bias is None else bias[i * c : (i + 1) * c])
        for i in range(parts)
    )


def window_attention_tokens(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    masks: Sequence[torch.Tensor],
    plan: WindowPlan,
    scale: float,
    heads: int,
) -> torch.Tensor:
    """The export form of :func:`window_attention`: one ONNX ``Attention`` per mask group.

    ``torch.onnx.ops.attention`` on 3D ``(windows, N, heads·d)`` inputs with ``q_num_heads``
    becomes the operator as is, so the graph holds no head-split transposes (onnxruntime splits
    the heads inside its fused kernel).

    Args:
        q, k, v: ``(B, nW·N, heads·d)`` tokens of :func:`gather_windows` while exporting.
        masks: one ``(1, heads, N, N)`` mask per group (:func:`cached_window_masks` while tracing).
        plan: the window plan.
        scale: multiplier of q·kᵀ.
        heads: attention heads.

    Returns:
        ``(B, nW·N, heads·d)``.
    """
    b, n = q.shape[0], plan.tokens
    # onnxruntime's kernel materialises the (windows, heads, N, N) probabilities: a few windows per
    # node keep them in cache (QT-UNet-T's 64 windows of 343 tokens: 28 ms in chunks of 4 windows
    # vs 39 ms in one node, slicing and concatenation included).
    step = max(1, _ATTENTION_CHUNK_BYTES // (heads * n * n * q.element_size()))
    spans = [(i, min(i + step, e)) for s, e in plan.groups for i in range(s, e, step)]
    group_of = [g for g, (s, e) in enumerate(plan.groups) for _ in range(s, e, step)]
    outs = []
    for (s, e), g in zip(spans, group_of, strict=True):
        if len(spans) == 1:
            part = [t.reshape(-1, n, t.shape[-1]) for t in (q, k, v)]
        else:
            part = [t[:, s * n : e * n].reshape(-1, n, t.shape[-1]) for t in (q, k, v)]
        o = torch.onnx.ops.attention(
            *part, masks[g].to(q.dtype), q_num_heads=heads, kv_num_heads=heads, scale=scale
        )[0]
        outs.append(o.reshape(b, (e - s) * n, o.shape[-1]))
    return outs[0] if len(outs) == 1 else torch.cat(outs, 1)


def _group_masks(bias: torch.Tensor, plan: WindowPlan, batch: int, repeat: bool = True) -> list[torch.Tensor]:
    bias = bias.contiguous()  # SDPA copies a non-contiguous mask on every call
    if plan.group_masks is None:
        masks = [bias.unsqueeze(0)]
    else:
        gm = plan.group_masks.to(bias.dtype)
        masks = [(bias + gm[i]).unsqueeze(0) for i in range(len(plan.groups))]
    if not repeat:
        return masks
    # heads vary fastest inside the flattened (B, heads) axis; no test of batch == 1, which
    # would specialise an exported graph to one batch size
    return [m.repeat(1, batch, 1, 1) for m in masks]


def cached_window_masks(
    module: torch.nn.Module,
    table: torch.Tensor,
    plan: WindowPlan,
    batch: int,
    bias_fn: Callable[[int], torch.Tensor],
) -> list[torch.Tensor]:
    """The float masks (relative-position bias + shift mask) of each group of ``plan``.

    Built once per plan and batch size and kept on ``module`` while gradients are off
    (``torch.inference_mode`` / ``torch.no_grad``); the cache is dropped as soon as the
    bias ``table`` changes (its version counter, storage, device or dtype), e.g. after an
    optimiser step or ``load_state_dict``. With gradients on, or while tracing/compiling,
    the masks are built fresh so that gradients reach the table.

    Args:
        module: the attention module that owns the cache.
        table: the relative-position bias table (the cache's validity stamp).
        plan: window plan of the current input.
        batch: B.
        bias_fn: ``n ↦ (heads, n, n)`` relative-position bias of windows of ``n`` tokens.

    Returns:
        One ``(1, B·heads, N, N)`` mask per group (``(1, heads, N, N)`` while tracing).
    """
    if is_tracing():
        # (1, heads, N, N), which the exporter folds to constants; window_attention broadcasts them.
        return _group_masks(bias_fn(plan.tokens), plan, batch, repeat=False)
    if torch.is_grad_enabled():
        return _group_masks(bias_fn(plan.tokens), plan, batch)
    stamp = (table._version, table.data_ptr(), table.device, table.dtype, id(table))
    cache = module.__dict__.get("_window_mask_cache")
    if cache is None or cache[0] != stamp:
        cache = (stamp, {})
        module.__dict__["_window_mask_cache"] = cache
    key = (plan.size, plan.window, plan.shift, batch)
    masks = cache[1].get(key)
    if masks is None:
        masks = cache[1][key] = _group_masks(bias_fn(plan.tokens), plan, batch)
    return masks
