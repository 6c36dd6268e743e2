"""QT-UNet and its ablations: all-Swin 3D U-Nets with encoder–decoder cross-attention.

Håversen, Bavirisetti, Kiss, Lindseth, "QT-UNet: A Self-Supervised Self-Querying
All-Transformer U-Net for 3D Segmentation", IEEE Access 12, 2024.

One architecture, four configurations, each in three sizes (embed dim 48 / 72 / 96):

* ``qtunet``   QT decoder (cross-attention with K,V made in the decoder from the skip),
  patch merging/expansion in D, H and W.
* ``qtunet-a`` QT decoder, merging/expansion in H and W only (D is kept).
* ``vtunet``   VT-UNet decoder (reuses the encoder blocks' own K,V), H and W only.
* ``vtunet-a`` VT-UNet decoder, merging/expansion in D, H and W.

The layers reproduce the authors' code (``Models/*/components.py`` at commit 727f8a9),
including its quirks, so their checkpoints load unchanged and give the same outputs.
Key names follow their state_dicts: QT models nest the encoder under ``encoder.``;
VT models keep it flat (``patch_embed.``, ``layers.``, ``norm.``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from zoo._registry import ModelMeta, PaperInfo, SpecFields, Variant, WeightSpec, register_family
from zoo.layers import DropPath, InvalidArgumentError, Mlp
from zoo.layers.model_api import ModelApiMixin, checkpointed
from zoo.layers.tracing import is_tracing
from zoo.layers.window_attention_3d import (
    WindowPlan,
    cached_window_masks,
    exporting,
    gather_windows,
    get_window_size,
    project_parts,
    relative_position_index_3d,
    scatter_windows,
    window_attention,
    window_attention_tokens,
    window_plan,
)

__all__ = ["QTUNet", "QTUNetEncoder"]

_PATCH = 4  # the final ×4 expansion is hard-wired to a patch size of 4
_HEAD_SLAB_BYTES = 8 << 20  # working set of one slab of the final expansion (see _expand_and_classify)


# --------------------------------------------------------------------------- helpers


def _window_plan(
    size: Sequence[int], window: Sequence[int], shift: Sequence[int], device: torch.device
) -> WindowPlan:
    win, sh = get_window_size(size, window, shift)
    return window_plan(size, win, sh, device)


def sinusoidal_position_encoding_3d(
    size: Sequence[int], channels: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """VT-UNet's fixed 3D sine/cosine position code ("FPE").

    Each axis gets ``k = 2·ceil(channels / 6)`` channels (sines then cosines of
    ``pos / 10000^(2i/k)``); the D, H and W codes are concatenated and cut to ``channels``.

    Returns:
        ``(1, D, H, W, channels)``.
    """
    k = int(math.ceil(channels / 6) * 2)
    k += k % 2
    inv_freq = 1.0 / (10000 ** (torch.arange(0, k, 2, device=device).float() / k))
    codes = []
    for n in size:
        angles = torch.arange(n, device=device).float()[:, None] * inv_freq[None, :]
        codes.append(torch.cat([angles.sin(), angles.cos()], dim=-1))  # (n, k)
    d, h, w = size
    emb = torch.cat(
        [
            codes[0][:, None, None, :].expand(d, h, w, k),
            codes[1][None, :, None, :].expand(d, h, w, k),
            codes[2][None, None, :, :].expand(d, h, w, k),
        ],
        dim=-1,
    )
    return emb[None, ..., :channels].to(dtype)


# --------------------------------------------------------------------------- blocks


class WindowAttention3D(nn.Module):
    """Multi-head attention inside 3D windows with a relative-position bias.

    Args:
        dim: channels.
        num_heads: attention heads.
        window_size: nominal window (its ``(2W−1)³`` bias table and ``W³×W³`` index).
        qkv_bias: bias on the query/key/value projections.
        qk_scale: overrides ``head_dim ** -0.5``.
        attn_drop / proj_drop: dropout on the attention weights / the output.
        cross: if True, queries come from ``x`` (``q``) and keys/values from a second
            stream (``kv``), QT-UNet's ``cross_attn``; else one ``qkv`` projection.

    Shapes: windows ``(nW·N, B, C)`` in and out, laid out by a
    :class:`~zoo.layers.window_attention_3d.WindowPlan` (``gather_windows``).
    """

    derived_buffers = ("relative_position_index",)  # rebuilt from the window size at construction

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: Sequence[int],
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        cross: bool = False,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.cross = cross
        n_rel = math.prod(2 * w - 1 for w in window_size)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(n_rel, num_heads))
        self.register_buffer("relative_position_index", relative_position_index_3d(window_size))
        if cross:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if not cross:
            # Quirk: only self-attention tables get trunc_normal; cross-attention tables stay zero.
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _project(self, x: torch.Tensor, layer: nn.Linear, plan: WindowPlan) -> tuple[torch.Tensor, ...]:
        # (nW·N, B, parts·C) → parts × (nW, B·heads, N, head_dim): a view for B = 1, one copy otherwise.
        if exporting():  # (B, nW·N, C) → parts × (B, nW·N, C), heads merged (window_attention_tokens)
            return project_parts(x, layer, layer.out_features // x.shape[-1])
        t = layer(x)
        parts = t.shape[-1] // x.shape[-1]
        t = t.view(plan.num_windows, plan.tokens, x.shape[1], parts, self.num_heads, -1)
        t = t.permute(3, 0, 2, 4, 1, 5).reshape(parts, plan.num_windows, -1, plan.tokens, t.shape[-1])
        return t.unbind(0)

    def position_bias(self, n: int) -> torch.Tensor:
        """``(heads, n, n)`` bias for windows of ``n`` tokens."""
        # Quirk (Video Swin): a window clamped to a small map uses the top-left n×n block
        # of the full window's index, not the index of its own smaller shape.
        idx = self.relative_position_index[:n, :n].reshape(-1)
        return self.relative_position_bias_table[idx].view(n, n, -1).permute(2, 0, 1)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: WindowPlan, scale: float
    ) -> torch.Tensor:
        """softmax(scale·q·kᵀ + bias + mask)·v, heads merged, then ``proj``.

        ``q, k, v``: ``(nW, B·heads, N, head_dim)``; returns ``(nW·N, B, C)``. While exporting,
        ``(B, nW·N, C)`` in and out (:func:`~zoo.layers.window_attention_3d.exporting`).
        """
        if exporting():
            masks = cached_window_masks(self, self.relative_position_bias_table, plan, 1, self.position_bias)
            out = window_attention_tokens(q, k, v, masks, plan, scale, self.num_heads)
            return self.proj_drop(self.proj(out))
        batch = q.shape[1] // self.num_heads
        masks = cached_window_masks(self, self.relative_position_bias_table, plan, batch, self.position_bias)
        drop = self.attn_drop.p if self.training else 0.0
        out = window_attention(q, k, v, masks, plan, scale, batch, drop)
        return self.proj_drop(self.proj(out))

    def qkv_heads(self, x: torch.Tensor, plan: WindowPlan) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unscaled ``q, k, v`` of windows ``(nW·N, B, C)`` as ``(nW, B·heads, N, head_dim)``."""
        q, k, v = self._project(x, self.qkv, plan)
        return q, k, v

    def forward(self, x: torch.Tensor, plan: WindowPlan, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.cross:
            if context is None:
                raise ValueError("cross-attention needs the context (skip) windows")
            (q,) = self._project(x, self.q, plan)
            k, v = self._project(context, self.kv, plan)
        else:
            q, k, v = self.qkv_heads(x, plan)
        return self.attend(q, k, v, plan, self.scale)


class QTBlock3D(nn.Module):
    """QT-UNet's Swin block: post-norm, with optional window cross-attention to a skip.

    ``x = norm1(x + W-MSA(x))``; in the decoder ``x = norm2(x + W-MCA(x, skip))``;
    then ``x = norm3(x + MLP(x))``.

    Args:
        dim / num_heads / window_size: as for :class:`WindowAttention3D`.
        shift_size: cyclic shift (0 for even blocks).
        mlp_ratio: hidden width of the MLP relative to ``dim``.
        qkv_bias / qk_scale / drop / attn_drop / drop_path: the usual Swin knobs.
        cross: decoder block with cross-attention (``cross_attn``, ``norm2``).

    Shapes: ``(B, D, H, W, C)`` in and out; ``skip`` has the same shape.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: Sequence[int],
        shift_size: Sequence[int],
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        cross: bool = False,
    ) -> None:
        super().__init__()
        self.window_size = tuple(window_size)
        self.shift_size = tuple(shift_size)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, num_heads, window_size, qkv_bias, qk_scale, attn_drop, drop)
        if cross:
            self.cross_attn = WindowAttention3D(
                dim, num_heads, window_size, qkv_bias, qk_scale, attn_drop, drop, cross=True
            )
            self.norm2 = nn.LayerNorm(dim)
        self.cross = cross
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        # Named norm3 (not norm2) in the authors' code, also in encoder blocks.
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        plan = _window_plan(x.shape[1:4], self.window_size, self.shift_size, x.device)
        a = self.attn(gather_windows(x, plan), plan)
        # Quirk: post-norm (LayerNorm after each residual add), unlike Video Swin's pre-norm.
        x = self.norm1(x + self.drop_path(scatter_windows(a, plan)))
        if self.cross:
            c = self.cross_attn(gather_windows(x, plan), plan, gather_windows(skip, plan))
            x = self.norm2(x + self.drop_path(scatter_windows(c, plan)))
        return self.norm3(x + self.drop_path(self.mlp(x)))


class VTBlock3D(nn.Module):
    """VT-UNet's (pre-norm, Video-Swin) block; in the decoder it also reuses encoder K,V.

    Encoder: ``x + W-MSA(norm1 x)``, then ``+ MLP(norm2 x)``; returns its own K,V.
    Decoder, given the mirrored encoder block's ``(k, v)``: the self-attention branch as
    above, a cross-attention branch ``shortcut + softmax(q·k_encᵀ + B)·v_enc`` through the
    same ``proj`` and MLP, fused as ``0.5·sa + 0.5·ca + MLP(norm2(FPE))``.

    Args: as for :class:`QTBlock3D` (no ``cross``: any block can take encoder K,V).

    Shapes: ``(B, D, H, W, C)`` in and out; K,V ``(nW, B·heads, N, head_dim)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: Sequence[int],
        shift_size: Sequence[int],
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.window_size = tuple(window_size)
        self.shift_size = tuple(shift_size)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, num_heads, window_size, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(
        self, x: torch.Tensor, enc_kv: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, *size, c = x.shape
        plan = _window_plan(size, self.window_size, self.shift_size, x.device)
        q, k, v = self.attn.qkv_heads(gather_windows(self.norm1(x), plan), plan)
        scale = self.attn.scale
        shortcut = x
        x = shortcut + self.drop_path(scatter_windows(self.attn.attend(q, k, v, plan, scale), plan))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        if enc_kv is not None:
            # Quirk: the query is scaled a second time before the cross-attention.
            ca = self.attn.attend(q, enc_kv[0], enc_kv[1], plan, scale * scale)
            x2 = shortcut + self.drop_path(scatter_windows(ca, plan))
            x2 = x2 + self.drop_path(self.mlp(self.norm2(x2)))
            # Quirk: "FPE" is the position code alone through norm2+MLP (not added to x), no drop path.
            pe = sinusoidal_position_encoding_3d(size, c, x.device, x.dtype)
            x = 0.5 * x + 0.5 * x2 + self.mlp(self.norm2(pe))
        return x, (k, v)


class PatchEmbed3D(nn.Module):
    """Non-overlapping 4³ patches → ``embed_dim`` tokens, then LayerNorm.

    Shapes: ``(B, C_in, D, H, W)`` → ``(B, D/4, H/4, W/4, embed_dim)``.
    """

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=_PATCH, stride=_PATCH)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 4, 1))


class PatchMerging3D(nn.Module):
    """2×2×2 (or 1×2×2 with ``merge_depth=False``) neighbours → LayerNorm → Linear to 2C.

    Neighbours are concatenated H-fastest, then W, then D (the authors' order).

    Shapes: ``(B, D, H, W, C)`` → ``(B, D/2 or D, H/2, W/2, 2C)``.
    """

    def __init__(self, dim: int, merge_depth: bool = True) -> None:
        super().__init__()
        self.sd = 2 if merge_depth else 1
        n = 4 * self.sd
        self.reduction = nn.Linear(n * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(n * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w, c = x.shape
        x = x.view(b, d // self.sd, self.sd, h // 2, 2, w // 2, 2, c)
        x = x.permute(0, 1, 3, 5, 2, 6, 4, 7).reshape(b, d // self.sd, h // 2, w // 2, -1)
        return self.reduction(self.norm(x))


class PatchExpand3D(nn.Module):
    """Linear expansion of each token into an ``s_d × s × s`` block of voxels, then LayerNorm.

    Args:
        dim: input channels.
        out_dim: channels per output voxel.
        scale: upsampling factor in H and W (and in D when ``expand_depth``).
        expand_depth: also upsample D.

    Shapes: ``(B, D, H, W, dim)`` → ``(B, D·s_d, H·s, W·s, out_dim)``; the expanded
    channels are read as ``(p_d, p_h, p_w, c)``.
    """

    def __init__(self, dim: int, out_dim: int, scale: int = 2, expand_depth: bool = True) -> None:
        super().__init__()
        self.s = scale
        self.sd = scale if expand_depth else 1
        self.expand = nn.Linear(dim, self.sd * scale * scale * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w, _ = x.shape
        s, sd = self.s, self.sd
        x = self.expand(x).view(b, d, h, w, sd, s, s, -1)
        x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d * sd, h * s, w * s, -1)
        return self.norm(x)


class EncoderStage(nn.Module):
    """Swin blocks at one resolution, then patch merging (``downsample``) if any.

    Shapes: ``(B, D, H, W, C)`` → merged output; VT stages also return each block's K,V.
    """

    def __init__(self, blocks: list[nn.Module], downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list]:
        kvs = []
        for blk in self.blocks:
            if isinstance(blk, VTBlock3D):
                x, kv = checkpointed(blk, x)
                kvs.append(kv)
            else:
                x = checkpointed(blk, x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x, kvs


class DecoderStage(nn.Module):
    """Decoder blocks at one resolution, then patch expansion (``upsample``) if any.

    ``context`` is the skip tensor (QT blocks) or the encoder K,V pairs, one for even and
    one for odd blocks (VT blocks).
    """

    def __init__(self, blocks: list[nn.Module], upsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.upsample = upsample

    def forward(self, x: torch.Tensor, context: torch.Tensor | Sequence) -> torch.Tensor:
        for j, blk in enumerate(self.blocks):
            x = blk(x, context[j % 2])[0] if isinstance(blk, VTBlock3D) else blk(x, context)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


def _last_even_and_odd(items: list) -> tuple:
    # VT decoder block j takes the K,V of the mirrored stage's last block with j's parity.
    if not items:
        return ()
    even = items[(len(items) - 1) // 2 * 2]
    odd = items[(len(items) - 2) // 2 * 2 + 1] if len(items) > 1 else None
    return even, odd


def _encode(parts: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list]:
    """Run an encoder held by ``parts`` (``patch_embed``, ``pos_drop``, ``layers``, ``norm``).

    Returns the normed bottleneck, the skips and, per stage, the K,V of its last even
    and last odd block (VT only). All channels-last.
    """
    x = parts.pos_drop(parts.patch_embed(x))
    skips, kv_pairs = [], []
    for layer in parts.layers:
        # Quirk: skips are each stage's *input*, i.e. the patch embedding and the
        # post-merging tensors, not the stages' block outputs.
        skips.append(x)
        x, kvs = layer(x)
        kv_pairs.append(_last_even_and_odd(kvs))
    return parts.norm(x), skips, kv_pairs


def _build_encoder(
    parts: nn.Module,
    *,
    in_chans: int,
    embed_dim: int,
    depths: Sequence[int],
    num_heads: Sequence[int],
    window_size: tuple[int, int, int],
    block: type[nn.Module],
    block_kw: dict,
    dpr: list[float],
    merge_depth: bool,
) -> None:
    parts.patch_embed = PatchEmbed3D(in_chans, embed_dim)
    parts.pos_drop = nn.Dropout(block_kw["drop"])
    shift = tuple(w // 2 for w in window_size)
    layers = []
    for i, depth in enumerate(depths):
        dim = embed_dim * 2**i
        start = sum(depths[:i])
        blocks = [
            block(
                dim,
                num_heads[i],
                window_size,
                (0, 0, 0) if j % 2 == 0 else shift,
                drop_path=dpr[start + j],
                **block_kw,
            )
            for j in range(depth)
        ]
        down = PatchMerging3D(dim, merge_depth) if i < len(depths) - 1 else None
        layers.append(EncoderStage(blocks, down))
    parts.layers = nn.ModuleList(layers)


class QTUNetEncoder(nn.Module):
    """The QT-UNet encoder as a module of its own (``encoder.*`` keys; SSL checkpoints).

    Holds ``patch_embed``, ``layers`` and ``norm``. ``forward`` returns
    ``(bottleneck (B, 8C, S/32…), skips)`` channels-first, as the authors' ``Encoder``.
    """

    def __init__(self, **kw) -> None:
        super().__init__()
        _build_encoder(self, **kw)
        self.norm = nn.LayerNorm(kw["embed_dim"] * 2 ** (len(kw["depths"]) - 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        y, skips, _ = _encode(self, x)
        return y.permute(0, 4, 1, 2, 3), [s.permute(0, 4, 1, 2, 3) for s in skips]


# --------------------------------------------------------------------------- model


class QTUNet(ModelApiMixin, nn.Module):
    """QT-UNet / VT-UNet family: a Swin-Transformer 3D U-Net with decoder cross-attention.

    Encoder: 4³ patch embedding, four Swin stages (dims C, 2C, 4C, 8C; depths 2, 2, 2, 1;
    7³ windows, shifted by 3 on odd blocks), patch merging after stages 0–2, LayerNorm.
    Decoder: patch expansion of the bottleneck, then three stages that concatenate the
    skip (``concat_back_dim``), run two cross-attention blocks and expand; a final ×4
    expansion and a 1×1×1 convolution give logits at full resolution.

    Args:
        embed_dim: C (48 Tiny, 72 Small, 96 Base).
        in_chans: input channels.
        num_classes: output channels (raw logits).
        img_size: the one spatial size the network takes, ``(D, H, W)``; each a multiple
            of 32, with H == W (the reference's patch grid uses H for W).
        decoder: ``"qt"`` (QT-UNet: post-norm blocks, own K,V from the skip) or ``"vt"``
            (VT-UNet: pre-norm blocks reusing the encoder's K,V).
        merge_depth: merge/expand patches in D as well (2×2×2), else in H, W only.
        depths / num_heads: per encoder stage; the decoder mirrors them.
        window_size: attention window.
        mlp_ratio / qkv_bias / qk_scale: block settings.
        drop_rate / attn_drop_rate / drop_path_rate: regularisation (the authors'
            training wrapper fixes drop_path_rate at 0.1).

    Shapes: ``(B, in_chans, *img_size)`` → ``(B, num_classes, *img_size)``.

    Example:
        >>> model = QTUNet(embed_dim=48, in_chans=1, num_classes=14, img_size=(96, 96, 96))
        >>> model(torch.randn(1, 1, 96, 96, 96)).shape
        torch.Size([1, 14, 96, 96, 96])
    """

    def __init__(
        self,
        embed_dim: int = 48,
        in_chans: int = 1,
        num_classes: int = 14,
        img_size: int | Sequence[int] = (96, 96, 96),
        decoder: Literal["qt", "vt"] = "qt",
        merge_depth: bool = True,
        depths: Sequence[int] = (2, 2, 2, 1),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int | Sequence[int] = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__()
        img_size = (img_size,) * 3 if isinstance(img_size, int) else tuple(int(s) for s in img_size)
        window = (window_size,) * 3 if isinstance(window_size, int) else tuple(window_size)
        n_stages = len(depths)
        factor = _PATCH * 2 ** (n_stages - 1)
        if len(img_size) != 3 or any(s <= 0 or s % factor for s in img_size):
            raise ValueError(f"img_size must be 3 positive multiples of {factor}, got {img_size}")
        if img_size[1] != img_size[2]:
            raise ValueError(
                f"img_size needs H == W (the reference sizes its patch grid's W from H), got {img_size}"
            )
        if decoder not in ("qt", "vt"):
            raise ValueError(f"decoder must be 'qt' or 'vt', got {decoder!r}")
        if in_chans < 1 or num_classes < 1:
            raise ValueError(f"in_chans and num_classes must be ≥ 1, got {in_chans} and {num_classes}")
        if len(num_heads) != n_stages or len(window) != 3:
            raise ValueError("num_heads needs one entry per stage and window_size three")
        for i, h in enumerate(num_heads):
            if (embed_dim * 2**i) % h:
                raise ValueError(f"stage {i}: dim {embed_dim * 2**i} not divisible by {h} heads")

        self.in_chans, self.num_classes, self.img_size = in_chans, num_classes, img_size
        self.embed_dim, self.decoder, self.merge_depth = embed_dim, decoder, merge_depth
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        block_kw = dict(
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            drop=drop_rate,
            attn_drop=attn_drop_rate,
        )
        block = QTBlock3D if decoder == "qt" else VTBlock3D
        enc_kw = dict(
            in_chans=in_chans,
            embed_dim=embed_dim,
            depths=depths,
            num_heads=num_heads,
            window_size=window,
            block=block,
            block_kw=block_kw,
            dpr=dpr,
            merge_depth=merge_depth,
        )
        if decoder == "qt":
            self.encoder = QTUNetEncoder(**enc_kw)
        else:
            # VT-UNet keeps its encoder modules at the top level (flat key names).
            _build_encoder(self, **enc_kw)

        shift = tuple(w // 2 for w in window)
        top = embed_dim * 2 ** (n_stages - 1)
        self.layers_up = nn.ModuleList()
        self.concat_back_dim = nn.ModuleList()
        for i in range(n_stages):
            dim = top // 2**i
            stage = n_stages - 1 - i  # the mirrored encoder stage
            if i == 0:
                self.layers_up.append(PatchExpand3D(dim, dim // 2, 2, merge_depth))
                self.concat_back_dim.append(nn.Identity())
                continue
            start = sum(depths[:stage])
            extra = {"cross": True} if decoder == "qt" else {}
            blocks = [
                block(
                    dim,
                    num_heads[stage],
                    window,
                    (0, 0, 0) if j % 2 == 0 else shift,
                    drop_path=dpr[start + j],
                    **block_kw,
                    **extra,
                )
                for j in range(depths[stage])
            ]
            up = PatchExpand3D(dim, dim // 2, 2, merge_depth) if i < n_stages - 1 else None
            self.layers_up.append(DecoderStage(blocks, up))
            self.concat_back_dim.append(nn.Linear(2 * dim, dim, bias=False))
        if decoder == "vt":
            self.norm = nn.LayerNorm(top)
        self.norm_up = nn.LayerNorm(embed_dim)
        self.up = PatchExpand3D(embed_dim, embed_dim, _PATCH, expand_depth=True)
        self.output = nn.Conv3d(embed_dim, num_classes, kernel_size=1, bias=False)

    def _check_input(self, x: torch.Tensor) -> None:
        want = (self.in_chans, *self.img_size)
        if x.ndim != 5 or x.shape[1] != self.in_chans or tuple(x.shape[2:]) != self.img_size:
            raise InvalidArgumentError(
                f"{type(self).__name__} expects input (B, {', '.join(map(str, want))}), "
                f"got {tuple(x.shape)}. "
                f"It takes exactly img_size={self.img_size}; run whole volumes through sliding-window "
                f"inference with roi_size={self.img_size}, or build the model with another img_size."
            )

    def forward_encoder(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The normed bottleneck ``(B, 8C, …)`` and the four skips, channels-first."""
        self._check_input(x)
        y, skips, _ = _encode(self.encoder if self.decoder == "qt" else self, x)
        return y.permute(0, 4, 1, 2, 3), [s.permute(0, 4, 1, 2, 3) for s in skips]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features: the decoder's last map before the ×4 expansion, ``(B, C, D/4, H/4, W/4)``."""
        return self._decode(x).permute(0, 4, 1, 2, 3)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The ×4 expansion ``up``, then ``output``; ``pre_logits``: the expanded map ``(B, C, D, H, W)``."""
        x = x.permute(0, 2, 3, 4, 1)  # back to the decoder's channels-last layout (a view)
        if pre_logits:
            y = self.up(x)
            return y.permute(0, 4, 1, 2, 3)
        return self._expand_and_classify(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes, *img_size)`` for ``x`` of shape ``(B, in_chans, *img_size)``."""
        return self._expand_and_classify(self._decode(x))

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        # Encoder and decoder up to norm_up, channels-last (B, D/4, H/4, W/4, C).
        self._check_input(x)
        x, skips, kv_pairs = _encode(self.encoder if self.decoder == "qt" else self, x)
        n = len(self.layers_up)
        for i, layer in enumerate(self.layers_up):
            if i == 0:
                x = layer(x)
                continue
            skip = skips[n - 1 - i]
            x = self.concat_back_dim[i](torch.cat([x, skip], dim=-1))
            x = layer(x, skip if self.decoder == "qt" else kv_pairs[n - 1 - i])
        return self.norm_up(x)

    # ---- timm's API (zoo.layers.model_api): the registry's parts of this instance

    def _api_parts(self) -> dict:
        return _parts(self.embed_dim, self.decoder == "qt")[0]

    def _api_features(self) -> list[dict]:
        return [dict(f) for f in _parts(self.embed_dim, self.decoder == "qt", self.merge_depth)[1]]

    def _api_head_keys(self) -> tuple[str, ...]:
        return ("output.",)

    def _api_checkpoint_units(self) -> list[nn.Module]:
        enc = self.encoder if self.decoder == "qt" else self
        return [blk for stage in enc.layers for blk in stage.blocks]

    def _expand_and_classify(self, x: torch.Tensor) -> torch.Tensor:
        # self.up then self.output. The ×4 expansion's LayerNorm and the 1×1×1 output conv act
        # voxel by voxel, so they run on slabs of depth slices before the voxels are moved into
        # place: the embed_dim-wide full-resolution map (64× the tokens) is never materialised,
        # only num_classes channels are permuted, and the slab temporaries stay cache-sized.
        b, d, h, w, c = x.shape
        s, sd = self.up.s, self.up.sd
        weight = self.output.weight.flatten(1)
        step = max(1, _HEAD_SLAB_BYTES // (h * w * sd * s * s * c * x.element_size()))  # per sample
        if is_tracing():
            return self._expand_and_classify_traced(x, weight, step)
        out = x.new_empty((b, weight.shape[0], d, sd, h, s, w, s))
        for i in range(0, d, step):
            y = self.up.expand(x[:, i : i + step])
            y = self.up.norm(y.view(*y.shape[:4], sd, s, s, c))
            out[:, :, i : i + step] = F.linear(y, weight, self.output.bias).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(b, -1, d * sd, h * s, w * s)

    def _expand_and_classify_traced(self, x: torch.Tensor, weight: torch.Tensor, step: int) -> torch.Tensor:
        # The same values, in steps an exported graph runs fast. onnxruntime moved the voxels with
        # one rank-8 Transpose (17 % of QT-UNet-T's time at 96³); a class-major Transpose of
        # (voxels, classes) and then a rank-7 one over whole class planes take half of that. The
        # expansion, its LayerNorm and the 1×1×1 conv still run on cache-sized slabs (a
        # whole-volume LayerNorm was 4× slower there).
        b, d, h, w, c = x.shape
        s, sd = self.up.s, self.up.sd
        parts = []
        for i in range(0, d, step):
            y = self.up.expand(x[:, i : i + step])
            y = self.up.norm(y.view(*y.shape[:4], sd, s, s, c))
            parts.append(F.linear(y, weight, self.output.bias).reshape(b, -1, weight.shape[0]))
        y = (parts[0] if len(parts) == 1 else torch.cat(parts, 1)).transpose(1, 2)
        y = y.reshape(-1, d, h, w, sd, s, s).permute(0, 1, 4, 2, 5, 3, 6)
        return y.reshape(b, -1, d * sd, h * s, w * s)


# --------------------------------------------------------------------------- registry

_PAPER = PaperInfo(
    title="QT-UNet: A Self-Supervised Self-Querying All-Transformer U-Net for 3D Segmentation",
    authors="Andreas Hammer Håversen, Durga Prasad Bavirisetti, Gabriel Hanssen Kiss, Frank Lindseth",
    venue="IEEE Access, vol. 12, pp. 62664–62676",
    year=2024,
    url="https://doi.org/10.1109/ACCESS.2024.3395058",
    bibtex="""@article{haversen2024qtunet,
  title   = {{QT-UNet}: A Self-Supervised Self-Querying All-Transformer {U-Net} for {3D} Segmentation},
  author  = {H{\\aa}versen, Andreas Hammer and Bavirisetti, Durga Prasad and
             Kiss, Gabriel Hanssen and Lindseth, Frank},
  journal = {IEEE Access},
  volume  = {12},
  pages   = {62664--62676},
  year    = {2024},
  doi     = {10.1109/ACCESS.2024.3395058}
}""",
    code_url="https://github.com/AndreasHaaversen/QT-UNet",
)

_REPO_COMMIT = "727f8a967619cc59a99eda9bacf4d3b62e4edc7d"
_RAW_URL = "https://github.com/AndreasHaaversen/QT-UNet/raw/{commit}/{path}"

# Git blob SHA-1 of each released encoder checkpoint, by size directory and dataset.
_BLOBS = {
    ("Base", "BraTS-SSL"): "dc2723654bf9676083f8d89631fbf0da201c8212",
    ("Base", "CT-SSL"): "4c3aad914b513d5de2b866fa737dceba52181c5a",
    ("Base", "MSD-SSL-Task02"): "4d8d1476e60bb23910361ffa3fed3253b4ff7800",
    ("Base", "MSD-SSL-Task04"): "add64012fa9c3f47fe66da2f0bd7145017001ca4",
    ("Base", "MSD-SSL-Task05"): "cd4449ab147ccebd62f2953847fbcb5a11874f9d",
    ("Small", "BraTS-SSL"): "6b0269e8745d69b66ff6ffc1236c6a390c352ea2",
    ("Small", "CT-SSL"): "4b8c1c1041f34f83ed7d4bbf615fdf21b199d71c",
    ("Small", "MSD-SSL-Task02"): "4c92e5a88d3d69de7f97fbb00beea86b611cdcf5",
    ("Small", "MSD-SSL-Task04"): "e996dbe5951492e5c655ad1fa83b13ff372b0d14",
    ("Small", "MSD-SSL-Task05"): "615ec58336ecb8e4f8bcb872ea71a5baa6e52671",
    ("Tiny", "BraTS-SSL"): "db0b1b4c3b8afb1f9f35b51dbe5f599d2c7c50f3",
    ("Tiny", "CT-SSL"): "59f4a6dd0f54ceeb517685b100c7dfae39013879",
    ("Tiny", "MSD-SSL-Task02"): "bd5bdd3fd49b49bd5749289d9d6a1e2314dff43c",
    ("Tiny", "MSD-SSL-Task04"): "a6be36080aa5f5f99c1829d84717e57e4e5fa137",
    ("Tiny", "MSD-SSL-Task05"): "a6f7c6907cb695cac2de2149fc010868f9efec60",
}

_SSL_METHOD = (
    "Method: BYOL + rotation prediction + reconstruction (Swin-UNETR-style multi-task SSL on "
    "the encoder; Adam 4e-4, wd 1.5e-6, 10 warm-up epochs then cosine); the file is the online "
    "network's encoder."
)


def _zscore_prep(
    spacing: float, roi: int, *, channel_wise: bool = False, channels: list[str] | None = None, **text: str
) -> dict:
    """The released encoders' preprocessing: RAS, isotropic spacing, foreground crop, nonzero z-score."""
    prep: dict = {"orientation": "RAS", "spacing_mm": [spacing] * 3}
    if channels:
        prep["channels"] = channels
    prep["crop_foreground"] = text.get("crop_foreground", "image > 0")
    prep["intensity"] = text.get(
        "intensity", "z-score over nonzero voxels" + (", channel-wise" if channel_wise else "")
    )
    prep["intensity_transform"] = {"kind": "zscore", "nonzero": True, "channel_wise": channel_wise}
    prep["roi_size"] = [roi] * 3
    return prep


# tag → (upstream dataset dir, in_chans, img_size, pretraining sentence, preprocessing)
_SSL_DATA = {
    "ct-ssl": (
        "CT-SSL",
        1,
        (96, 96, 96),
        "CT-SSL: 3,597 public TCIA CT scans (CT Lymph Nodes, CT Colonography, COVID-19-AR, "
        "MIDRC-RICORD-1A/1B, Pelvic Reference Data, Stage II Colorectal CT, LIDC; 100 held out), "
        "96³ crops, 150 epochs.",
        _zscore_prep(
            1.0,
            96,
            crop_foreground="image > 0, margin 1",
            intensity="z-score of raw HU over nonzero voxels (no HU clipping)",
        ),
    ),
    "brats-ssl": (
        "BraTS-SSL",
        4,
        (128, 128, 128),
        "BraTS 2021 training split (in-task), 4 MRI modalities, 128³ crops, 350 epochs.",
        _zscore_prep(
            1.0, 128, channel_wise=True, channels=["T1 (t1n)", "T1ce (t1c)", "T2 (t2w)", "FLAIR (t2f)"]
        ),
    ),
    "msd-task02-ssl": (
        "MSD-SSL-Task02",
        1,
        (96, 96, 96),
        "MSD Task02 Heart MRI (in-task), 96³ crops, 350 epochs.",
        _zscore_prep(1.0, 96),
    ),
    "msd-task04-ssl": (
        "MSD-SSL-Task04",
        1,
        (96, 96, 96),
        "MSD Task04 Hippocampus MRI (in-task, upsampled to 0.2 mm), 96³ crops, 350 epochs.",
        _zscore_prep(0.2, 96),
    ),
    "msd-task05-ssl": (
        "MSD-SSL-Task05",
        2,
        (96, 96, 96),
        "MSD Task05 Prostate MRI (in-task, T2 + ADC), 96³ crops, 350 epochs.",
        _zscore_prep(0.5, 96, channel_wise=True, channels=["T2", "ADC"]),
    ),
}


def _ssl_weights(size_dir: str) -> tuple[WeightSpec, ...]:
    out = []
    for tag, (ds, in_chans, img_size, data, prep) in _SSL_DATA.items():
        path = f"Pretrained_weights/{size_dir}/{ds}_pretrained.pt"
        out.append(
            WeightSpec(
                tag=tag,
                license="none",
                pretraining=f"{data} {_SSL_METHOD}",
                covers="encoder",
                url=_RAW_URL.format(commit=_REPO_COMMIT, path=path),
                upstream_digest=f"gitsha1:{_BLOBS[(size_dir, ds)]}",
                upstream_format=(
                    "torch.save of a flat dict of tensors: the encoder.* entries of the online "
                    "BYOL network (incl. relative_position_index buffers), no wrapper, no decoder"
                ),
                redistributable=False,
                in_chans=in_chans,
                img_size=img_size,
                preprocessing=prep,
                notes="The upstream repository has no licence file: fetched from it, never mirrored.",
            )
        )
    return tuple(out)


_TABLE19 = """\
Paper Table 19 — BraTS 2021 local test split, trained from scratch (FLOPs: fvcore MACs, one 4×128³ crop):

| Model | Params | FLOPs | Dice ET | TC | WT | Avg | HD95 ET | TC | WT | Avg |
|---|---|---|---|---|---|---|---|---|---|---|
| VT-UNet-T | 5.4 M | 52 G | 85.71 | 88.40 | 91.94 | 88.68 | 4.12 | 4.73 | 5.12 | 4.69 |
| VT-UNet-S | 11.8 M | 100.8 G | 86.58 | 88.01 | 91.85 | 88.82 | 4.16 | 4.68 | 5.35 | 5.10 |
| VT-UNet-B | 20.8 M | 165 G | 86.11 | 87.88 | 91.89 | 88.63 | 4.22 | 5.13 | 4.53 | 4.71 |
| VT-UNet-A-T | 6.2 M | 35.0 G | 85.16 | 88.00 | 91.64 | 88.27 | 4.04 | 4.98 | 4.93 | 4.74 |
| VT-UNet-A-S | 13.5 M | 67 G | 85.62 | 87.62 | 91.62 | 88.29 | 4.25 | 5.08 | 5.24 | 4.92 |
| VT-UNet-A-B | 23.9 M | 108.7 G | 86.07 | 87.62 | 91.60 | 88.43 | 4.23 | 4.93 | 4.82 | 4.74 |
| QT-UNet-A-T /scratch | 5.9 M | 47.7 G | 86.15 | 87.95 | 92.01 | 88.70 | 4.77 | 5.98 | 6.18 | 5.69 |
| QT-UNet-A-S /scratch | 12.8 M | 91.2 G | 85.66 | 87.96 | 92.17 | 88.60 | 4.68 | 4.93 | 5.91 | 4.96 |
| QT-UNet-A-B /scratch | 22.4 M | 147.8 G | 86.36 | 87.86 | 92.24 | 88.82 | 4.45 | 5.88 | 7.01 | 5.97 |
| QT-UNet-T /scratch | 6.4 M | 32.5 G | 85.38 | 87.00 | 92.06 | 88.15 | 4.32 | 6.24 | 6.48 | 5.79 |
| QT-UNet-S /scratch | 14.5 M | 61.3 G | 85.90 | 87.60 | 92.20 | 88.56 | 4.18 | 5.17 | 5.95 | 5.39 |
| QT-UNet-B /scratch | 25.5 M | 98.5 G | 86.27 | 87.61 | 92.19 | 88.69 | 4.23 | 5.14 | 5.21 | 4.92 |
"""

_TABLE8 = """\
Paper Table 8 — BraTS 2021 validation set (online evaluation server), QT-UNet rows:

| Model | Dice avg | HD avg | Dice ET | TC | WT | HD95 ET | TC | WT |
|---|---|---|---|---|---|---|---|---|
| QT-UNet-T /scratch | 84.24 | 11.64 | 79.30 | 82.62 | 90.81 | 19.07 | 10.68 | 5.19 |
| QT-UNet-S /scratch | 83.61 | 15.27 | 77.82 | 82.00 | 91.01 | 25.79 | 14.59 | 5.42 |
| QT-UNet-B /scratch | 84.51 | 12.26 | 79.59 | 82.63 | 91.32 | 19.84 | 12.36 | 4.59 |
| QT-UNet-T (BraTS-SSL) | 84.19 | 12.64 | 78.43 | 83.27 | 90.86 | 22.29 | 11.11 | 4.52 |
| QT-UNet-S (BraTS-SSL) | 84.25 | 12.77 | 79.25 | 82.23 | 91.26 | 18.21 | 15.58 | 4.51 |
| QT-UNet-B (BraTS-SSL) | 84.81 | 11.53 | 79.99 | 83.20 | 91.24 | 17.19 | 12.95 | 4.44 |
"""

_FLOPS_CONVENTION = "fvcore MACs (called FLOPs), train-mode forward, one 4×128³ BraTS crop → 3 classes"

_COMMON_NOTES = (
    "Blocks shift odd windows by 3 voxels (⌊7/2⌋) as in the code; the paper says two.",
    "Windows clamp to small feature maps; a clamped window indexes the top-left block of the 7³ "
    "relative-position index (Video Swin behaviour), reproduced.",
    "Padded voxels are zero tokens that take part in attention as keys (no padding mask), reproduced.",
    "Skip connections are each encoder stage's input (post-merging tensors), not the stage's "
    "block outputs as the paper describes.",
    "Decoder depths are the encoder depths reversed ([2, 2, 2]); the configs' decoder_depths "
    "[1, 2, 2, 2] is unused by the code.",
    "drop_path_rate is 0.1 (hard-coded in the training wrapper); configs and paper say 0.2.",
    "The reference sizes the patch grid's W from H; we require H == W in img_size.",
)

_QT_NOTES = (
    "QT blocks are post-norm (LayerNorm after each residual add, named norm1/norm2/norm3), "
    "not 'LN before and after' as the paper states.",
    "Besides cross-attention the decoder also concatenates the skip and projects it "
    "(concat_back_dim), which the paper does not describe.",
    "Cross-attention relative-position tables are zero-initialised (no trunc_normal), as in the code.",
)

_VT_NOTES = (
    "VT decoder blocks reuse the encoder's K,V (block j uses mirrored encoder block j mod 2); "
    "the cross-attention query is scaled by head_dim^-0.5 twice, as in the code.",
    "VT fusion is 0.5·SA + 0.5·CA + MLP(norm2(FPE)), where FPE is the fixed sinusoidal 3D "
    "position code alone (not added to the features), as in the code.",
)


def _create(**kwargs) -> QTUNet:
    return QTUNet(**kwargs)


_SIZE_DIR = {48: "Tiny", 72: "Small", 96: "Base"}

_KIND = {
    ("qt", True): "QT-UNet, the proposed model: patch merging and expansion in D, H and W",
    ("qt", False): "QT-UNet-A, an ablation of QT-UNet with patch merging and expansion in H and W only",
    ("vt", False): "VT-UNet (Peiris et al.) as re-implemented by the QT-UNet authors: "
    "patch merging and expansion in H and W only",
    ("vt", True): "VT-UNet-A, an ablation of VT-UNet with patch merging and expansion in D, H and W",
}

_LIMITATIONS = (
    "Fixed input size: the network accepts only img_size (a multiple of 32 with H == W); "
    "use sliding-window inference (overlap 0.5 as the authors) for whole volumes.",
    "The authors report poor results on BTCV and MSD (all QT-UNet variants scored 0 on "
    "MSD Task07 pancreas after training collapsed).",
)
_LIMITATIONS_WEIGHTS = (
    "Published weights cover the encoder only (self-supervised); the decoder and "
    "head are newly initialised and must be fine-tuned.",
    "The authors report that Base pretraining on CT-SSL probably collapsed.",
    "The upstream repository has no licence file; weights are fetched from it, not redistributed.",
)


def _parts(dim: int, is_qt: bool, merge_depth: bool = True) -> tuple[dict, tuple]:
    """param_groups and feature_info; VT-UNet keeps its encoder at the top level (no ``encoder.``).

    Without depth merging the maps keep D/4: their reductions are (D, H, W) tuples.
    """
    enc = "encoder." if is_qt else ""
    groups = {"stem": (f"{enc}patch_embed.",)}
    groups.update({f"encoder.{i}": (f"{enc}layers.{i}.",) for i in range(3)})
    groups["encoder.3"] = (f"{enc}layers.3.", f"{enc}norm.")
    groups["decoder"] = ("layers_up.", "concat_back_dim.", "norm_up.", "up.")
    groups["head"] = ("output.",)

    # One map per resolution: the patch embedding, the merged outputs of stages 0–1 (the skips)
    # and the normed bottleneck; all channels-last inside the encoder.
    def red(r: int) -> int | tuple[int, int, int]:
        return r if merge_depth else (4, r, r)

    features = (
        dict(module=f"{enc}patch_embed", num_chs=dim, reduction=red(4), channels_last=True),
        dict(module=f"{enc}layers.0", num_chs=2 * dim, reduction=red(8), channels_last=True),
        dict(module=f"{enc}layers.1", num_chs=4 * dim, reduction=red(16), channels_last=True),
        dict(module=f"{enc}norm", num_chs=8 * dim, reduction=red(32), channels_last=True),
    )
    return groups, features


def _variant(
    name: str,
    label: str,
    dim: int,
    decoder: str,
    merge_depth: bool,
    paper: tuple[float, float],
    measured: tuple[int, float, float],
    weights: bool = False,
) -> Variant:
    """One row of the table below.

    Args:
        name: registry name; label: the paper's name for it.
        dim / decoder / merge_depth: embed dim, "qt" or "vt", patch merging in D too.
        paper: Table 19's parameters (M) and GFLOPs (= fvcore MACs), BraTS config.
        measured: exact trainable parameters of the default config (1×96³ → 14), and
            FlopCounterMode MACs (G) at 1×96³ → 14 and at the paper's BraTS config 4×128³ → 3
            (~1–2 % below the paper's fvcore counts, which also count LayerNorms).
        weights: whether the authors released its SSL encoders (QT-UNet T/S/B only).
    """
    is_qt = decoder == "qt"
    num, gmacs, gmacs_brats = measured
    ssl = _ssl_weights(_SIZE_DIR[dim]) if weights else ()
    param_groups, feature_info = _parts(dim, is_qt, merge_depth)
    decoder_text = (
        "Its decoder blocks make their own keys and values from the same-stage encoder skip "
        '("self-querying" window cross-attention, post-norm blocks).'
        if is_qt
        else "Its decoder blocks reuse the keys and values computed inside the mirrored encoder "
        "blocks and fuse self- and cross-attention branches 0.5/0.5 with a fixed position code."
    )
    return Variant(
        name,
        model_args=dict(
            embed_dim=dim,
            decoder=decoder,
            merge_depth=merge_depth,
            in_chans=1,
            num_classes=14,
            img_size=(96, 96, 96),
        ),
        meta=ModelMeta(
            num_params=num,
            gmacs=gmacs,
            gmacs_brats=gmacs_brats,
            # The paper's params and FLOPs are for the BraTS config (4 channels in, 3 out):
            # compare them with params_brats / gmacs_brats. Only the patch embedding
            # (C·64 per input channel) and the head (C per class) depend on the config.
            params_brats=num + dim * (64 * 3 - 11),
            paper_setting_params=num + dim * (64 * 3 - 11),
            paper_setting_gmacs=gmacs_brats,
            # What `zoo bench` builds to compare with the paper's table (see flops_convention).
            paper_setting=dict(
                input_size=(4, 128, 128, 128),
                model_args=dict(in_chans=4, num_classes=3, img_size=(128, 128, 128)),
                train_mode=True,
            ),
            paper_params=int(round(paper[0] * 1e6)),
            paper_gmacs=paper[1],
            flops_convention=_FLOPS_CONVENTION,
            gmacs_convention="torch.utils.flop_counter.FlopCounterMode flops / 2, eval, batch 1",
        ),
        spec=SpecFields(
            weights=ssl,
            default_tag="ct-ssl" if ssl else None,
            first_conv="encoder.patch_embed.proj" if is_qt else "patch_embed.proj",
            encoder_prefixes=("encoder.",) if is_qt else ("patch_embed.", "layers.", "norm."),
            param_groups=param_groups,
            feature_info=feature_info,
            no_weights_reason=None
            if ssl
            else "The authors released self-supervised encoder checkpoints for QT-UNet (T/S/B) only; "
            "no weights of the ablation and VT-UNet baselines were published.",
            description=(
                f"{label}: {_KIND[(decoder, merge_depth)]}. An all-Swin-Transformer 3D U-Net (embed dim "
                f"{dim}; 4³ patches; stages of depth 2, 2, 2, 1 with 3, 6, 12, 24 heads; 7³ shifted "
                "windows). "
                f"{decoder_text} Outputs raw logits at input resolution; it takes exactly its "
                "img_size (96³ by default, the BTCV/CT crop), so whole volumes go through "
                "sliding-window inference."
            ),
            results_md=_TABLE19 + ("\n" + _TABLE8 if is_qt and merge_depth else ""),
            notes=_COMMON_NOTES
            + (_QT_NOTES if is_qt else _VT_NOTES)
            + (
                (
                    "Paper Table 19 gives 6.4 M parameters for QT-UNet-T; the code has 6.65 M at the "
                    "BraTS config (the paper's figure looks wrong; 11 of 12 others match).",
                )
                if name == "qtunet-t"
                else ()
            ),
            limitations=_LIMITATIONS
            + (_LIMITATIONS_WEIGHTS if ssl else ("No pretrained weights exist: train from scratch.",)),
        ),
    )


register_family(
    "qtunet",
    SpecFields(
        builder=_create,
        paper=_PAPER,
        input_size=(1, 96, 96, 96),
        head_keys=("output.",),
        sliding_window=dict(roi_size=(96, 96, 96), overlap=0.5),
    ),
    [
        _variant(
            "qtunet-t", "QT-UNet-T", 48, "qt", True, (6.4, 32.5), (6_638_430, 12.382, 31.819), weights=True
        ),
        _variant(
            "qtunet-s", "QT-UNet-S", 72, "qt", True, (14.5, 61.3), (14_496_486, 23.236, 60.338), weights=True
        ),
        _variant(
            "qtunet-b", "QT-UNet-B", 96, "qt", True, (25.5, 98.5), (25_490_286, 37.197, 97.263), weights=True
        ),
        _variant("qtunet-a-t", "QT-UNet-A-T", 48, "qt", False, (5.9, 47.7), (5_861_598, 17.132, 46.971)),
        _variant("qtunet-a-s", "QT-UNet-A-S", 72, "qt", False, (12.8, 91.2), (12_750_630, 32.743, 90.126)),
        _variant("qtunet-a-b", "QT-UNet-A-B", 96, "qt", False, (22.4, 147.8), (22_388_334, 53.049, 146.395)),
        _variant("vtunet-t", "VT-UNet-T", 48, "vt", False, (5.4, 52.0), (5_378_220, 19.360, 51.255)),
        _variant("vtunet-s", "VT-UNet-S", 72, "vt", False, (11.8, 100.8), (11_781_396, 37.755, 99.766)),
        _variant("vtunet-b", "VT-UNet-B", 96, "vt", False, (20.8, 165.0), (20_739_708, 61.960, 163.532)),
        _variant("vtunet-a-t", "VT-UNet-A-T", 48, "vt", True, (6.2, 35.0), (6_155_052, 13.663, 34.335)),
        _variant("vtunet-a-s", "VT-UNet-A-S", 72, "vt", True, (13.5, 67.0), (13_527_252, 26.117, 65.999)),
        _variant("vtunet-a-b", "VT-UNet-A-B", 96, "vt", True, (23.9, 108.7), (23_841_660, 42.320, 107.328)),
    ],
)
