"""PCT-Net and FMUNet: the segmentation networks of MIS-FM (Volume Fusion pretraining).

PCT-Net (Wang et al., arXiv 2306.16925) is a hybrid U-shaped network: a CNN embedding at two
resolution levels (2D then 3D), a three-level pyramid of *parallel convolution and transformer*
(PCT) blocks, and a prediction head symmetric to the embedding with four-scale deep
supervision. FMUNet is the "modified 3D UNet" released with the same weights (InstanceNorm,
LeakyReLU, residual convolutions).

Module attribute names follow the reference state_dict (``openmedlab/MIS-FM``
``net/pct_net.py``, ``net/transformer.py``, ``net/fmunet.py``), so the released PyMIC
checkpoints load after the converter unwraps their container.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo._registry import ModelMeta, PaperInfo, SpecFields, Variant, WeightSpec, register_family
from zoo.layers import DropPath, Mlp, check_input, int_tuple, trunc_normal_
from zoo.layers.model_api import ModelApiMixin, checkpointed
from zoo.layers.tracing import channels_last_3d, is_tracing
from zoo.layers.window_attention_3d import (
    WindowPlan,
    cached_window_masks,
    exporting,
    gather_windows,
    project_parts,
    scatter_windows,
    window_attention,
    window_attention_tokens,
    window_plan,
)

__all__ = ["PCTNet", "FMUNet", "nnformer_relative_position_index"]

Size3 = tuple[int, int, int]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _conv_kernel(dim: int) -> tuple[Size3, Size3]:
    """Kernel and padding of a 3×3 convolution that is in-plane (dim 2) or volumetric (dim 3)."""
    if dim == 2:
        return (1, 3, 3), (0, 1, 1)
    if dim == 3:
        return (3, 3, 3), (1, 1, 1)
    raise ValueError(f"conv dim must be 2 or 3, got {dim}")


def _conv3x3(cin: int, cout: int, dim: int, stride: int | Size3 = 1) -> nn.Conv3d:
    kernel, padding = _conv_kernel(dim)
    return nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding)


def _scale(dim: int) -> Size3:
    """Down/up-sampling factor: in-plane only (dim 2) or isotropic (dim 3)."""
    return (1, 2, 2) if dim == 2 else (2, 2, 2)


def nnformer_relative_position_index(window: int) -> torch.Tensor:
    """Relative-position index of a cubic window, with nnFormer's multipliers.

    Standard 3D Swin flattens the offset (dd, dh, dw), each shifted to ``[0, 2w-2]``, as
    ``dd·(2w-1)² + dh·(2w-1) + dw``. nnFormer, and PCT-Net after it, multiply ``dd`` by
    ``3w-1`` instead of ``(2w-1)²``, so distinct offsets share bias-table rows (for w = 6 only
    291 of the 1331 rows are addressed). The released weights were trained with this index.

    Args:
        window: window edge length ``w``.

    Returns:
        int64 tensor (w³, w³) indexing the (2w-1)³-row bias table.
    """
    axis = torch.arange(window)
    coords = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij")).flatten(1)  # (3, w³)
    offsets = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (3, w³, w³)
    multipliers = torch.tensor([3 * window - 1, 2 * window - 1, 1]).view(3, 1, 1)
    return (offsets * multipliers).sum(0)


def _bn_prelu_(x: torch.Tensor, bn: nn.BatchNorm3d, act: nn.PReLU) -> torch.Tensor:
    # Inference BatchNorm is x·α + β per channel (α = γ/√(σ²+ε), β = b − μ·α, as PyTorch's
    # kernel computes it) and a one-parameter PReLU is a leaky ReLU: both in place on x.
    alpha = torch.rsqrt(bn.running_var + bn.eps)
    beta = -bn.running_mean * alpha
    if bn.affine:
        alpha = alpha * bn.weight
        beta = bn.bias - bn.running_mean * alpha
    shape = (1, -1, 1, 1, 1)
    torch.addcmul(beta.view(shape), x, alpha.view(shape), out=x)
    return F.leaky_relu_(x, float(act.weight))


def _preactivated(layers: nn.Sequential, x: torch.Tensor, owned: bool) -> torch.Tensor:
    """Run ``layers`` (BN → PReLU → conv …) on ``x``.

    At inference (eval BN, gradients off, not tracing) each BN → PReLU pair runs in place on a
    tensor no one else holds (``owned``, or any layer's output): on the full-resolution maps
    that saves two activation-sized temporaries per pair (≈ 200–400 MB for PCT-Net's head).
    """
    fast = (
        not torch.is_grad_enabled()
        and x.device.type != "meta"  # FLOP counting runs on meta: keep the modules there
        and not is_tracing()
    )
    mods = list(layers)
    i = 0
    while i < len(mods):
        m = mods[i]
        pair = i + 1 < len(mods) and isinstance(m, nn.BatchNorm3d) and isinstance(mods[i + 1], nn.PReLU)
        if (
            fast
            and owned
            and pair
            and not m.training
            and m.running_var is not None
            and mods[i + 1].num_parameters == 1
            and x.dtype == m.running_var.dtype
        ):
            x = _bn_prelu_(x, m, mods[i + 1])
            i += 2
            continue
        x = m(x)
        owned = owned or not isinstance(m, (nn.Dropout, nn.Identity))
        i += 1
    return x


# --------------------------------------------------------------------------------------------
# PCT-Net blocks
# --------------------------------------------------------------------------------------------


class ConvBlock(nn.Module):
    """Two pre-activated convolutions, BN → PReLU → conv, dropout before the second conv.

    Args:
        cin: input channels.
        cout: output channels.
        dim: 2 for (1,3,3) in-plane kernels, 3 for 3×3×3.
        dropout: dropout probability before the second convolution.
    """

    def __init__(self, cin: int, cout: int, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv_conv = nn.Sequential(
            nn.BatchNorm3d(cin),
            nn.PReLU(),
            _conv3x3(cin, cout, dim),
            nn.BatchNorm3d(cout),
            nn.PReLU(),
            nn.Dropout(dropout),
            _conv3x3(cout, cout, dim),
        )

    def forward(self, x: torch.Tensor, owned: bool = False) -> torch.Tensor:
        """``owned``: the caller holds no other reference to ``x`` (it may be overwritten)."""
        return _preactivated(self.conv_conv, x, owned)


class DownSample(nn.Module):
    """Max-pool by 2 (in-plane or isotropic), then BN → PReLU → conv changing the channels."""

    def __init__(self, cin: int, cout: int, down_dim: int, conv_dim: int) -> None:
        super().__init__()
        self.pool = nn.MaxPool3d(_scale(down_dim))
        self.conv = nn.Sequential(nn.BatchNorm3d(cin), nn.PReLU(), _conv3x3(cin, cout, conv_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _preactivated(self.conv, self.pool(x), owned=True)


class UpCatBlock(nn.Module):
    """Transposed-conv upsampling of the coarse map, concatenation after the skip, one conv.

    Args:
        chns_l: channels of the skip (finer level); also the output channels.
        chns_h: channels of the coarse input.
        up_dim: 2 for (1,2,2) upsampling, 3 for 2×2×2.
        conv_dim: kernel of the fusing convolution (2 or 3).
    """

    def __init__(self, chns_l: int, chns_h: int, up_dim: int, conv_dim: int) -> None:
        super().__init__()
        factor = _scale(up_dim)
        self.up = nn.Sequential(
            nn.BatchNorm3d(chns_h), nn.PReLU(), nn.ConvTranspose3d(chns_h, chns_l, factor, stride=factor)
        )
        self.conv = nn.Sequential(
            nn.BatchNorm3d(2 * chns_l), nn.PReLU(), _conv3x3(2 * chns_l, chns_l, conv_dim)
        )

    def forward(self, x_coarse: torch.Tensor, x_skip: torch.Tensor) -> torch.Tensor:
        return _preactivated(self.conv, torch.cat([x_skip, self.up(x_coarse)], dim=1), owned=True)


class ConvLayer(nn.Module):
    """Pre-activated pointwise output head: BN → PReLU → 1×1×1 conv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.BatchNorm3d(cin), nn.PReLU(), nn.Conv3d(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class WindowAttention3D(nn.Module):
    """Multi-head self-attention inside cubic windows with nnFormer's relative-position bias.

    Runs ``scaled_dot_product_attention`` with the bias (plus the shift mask, −100 between
    tokens that wrapped around, the reference's value) as one float mask per group of
    windows, cached while gradients are off (see
    :func:`~zoo.layers.window_attention_3d.cached_window_masks`).

    Args:
        dim: token channels.
        window: window edge length ``w`` (w³ tokens per window).
        num_heads: attention heads.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
    """

    derived_buffers = ("relative_position_index",)  # rebuilt from the window size at construction

    def __init__(self, dim: int, window: int, num_heads: int, attn_drop: float, proj_drop: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 3, num_heads))
        # persistent: the reference saves it, so checkpoints carry it
        self.register_buffer("relative_position_index", nnformer_relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self, n: int) -> torch.Tensor:
        """``(heads, n, n)`` relative-position bias of a window of ``n = w³`` tokens."""
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, plan: WindowPlan) -> torch.Tensor:
        """x: windows (nW·N, B, C) laid out by ``plan``. Returns (nW·N, B, C)."""
        if exporting():  # (B, nW·N, C) tokens, one ONNX Attention per group (window_attention_tokens)
            q, k, v = project_parts(x, self.qkv, 3)
            masks = cached_window_masks(self, self.relative_position_bias_table, plan, 1, self.position_bias)
            x = window_attention_tokens(q, k, v, masks, plan, self.scale, self.num_heads)
            return self.proj_drop(self.proj(x))
        _, b, c = x.shape
        nw, n = plan.num_windows, plan.tokens
        # (nW·N, B, 3C) → 3 × (nW, B·heads, N, head_dim): a view for B = 1, one copy otherwise.
        qkv = self.qkv(x).view(nw, n, b, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(3, 0, 2, 4, 1, 5).reshape(3, nw, -1, n, c // self.num_heads).unbind(0)
        masks = cached_window_masks(self, self.relative_position_bias_table, plan, b, self.position_bias)
        drop = self.attn_drop.p if self.training else 0.0
        x = window_attention(q, k, v, masks, plan, self.scale, b, drop)
        return self.proj_drop(self.proj(x))


class SwinBlock3D(nn.Module):
    """Pre-norm 3D Swin block on a fixed resolution; operates on (B, D, H, W, C).

    The feature map is zero-padded at the end of each axis to a multiple of the window after
    ``norm1`` and cropped after attention; padded tokens are not masked in unshifted windows
    (Swin-v1 behaviour, reproduced for parity). Padding, cyclic shift and window partition
    are one cached gather (:func:`~zoo.layers.window_attention_3d.gather_windows`).

    Args:
        dim: channels.
        resolution: (D, H, W) the block is built for.
        num_heads: attention heads.
        window: window edge; shrinks to ``min(resolution)`` (and the shift to 0) when the map
            is not larger than the window, as in the reference.
        shift: cyclic shift (0 or window // 2).
        mlp_ratio: hidden width of the MLP relative to ``dim``.
        drop: dropout of attention weights, projection and MLP.
        drop_path: stochastic-depth rate.
    """

    def __init__(
        self,
        dim: int,
        resolution: Size3,
        num_heads: int,
        window: int,
        shift: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if min(resolution) <= window:
            window, shift = min(resolution), 0
        self.resolution = resolution
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, window, num_heads, attn_drop=drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)  # the shared Mlp: same keys and maths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = window_plan(self.resolution, (self.window,) * 3, (self.shift,) * 3, x.device)
        a = self.attn(gather_windows(self.norm1(x), plan), plan)
        x = x + self.drop_path(scatter_windows(a, plan))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinStage3D(nn.Module):
    """Blocks alternating unshifted and half-window-shifted attention (the reference's BasicLayer)."""

    def __init__(
        self,
        dim: int,
        resolution: Size3,
        depth: int,
        num_heads: int,
        window: int,
        drop: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock3D(
                dim,
                resolution,
                num_heads,
                window,
                shift=0 if i % 2 == 0 else window // 2,
                drop=drop,
                drop_path=drop_path,
            )
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class ConvTransBlock(nn.Module):
    """PCT block: a 3D conv branch and a Swin branch in parallel, outputs summed.

    Every voxel is a token; the Swin branch has no patch or positional embedding and its
    internal residuals make the block hold an implicit identity.

    Args:
        dim: channels.
        resolution: (D, H, W) of the feature map (fixed at build time).
        depth: Swin blocks in the attention branch.
        num_heads: attention heads.
        window: attention window edge.
        dropout: dropout of the conv branch and inside the Swin blocks.
        drop_path: stochastic depth of the Swin blocks (the reference leaves it at 0.2 everywhere).
    """

    def __init__(
        self,
        dim: int,
        resolution: Size3,
        depth: int,
        num_heads: int,
        window: int,
        dropout: float,
        drop_path: float = 0.2,
    ) -> None:
        super().__init__()
        self.conv = ConvBlock(dim, dim, 3, dropout)
        self.pos_drop = nn.Dropout(dropout)
        self.trans = SwinStage3D(dim, resolution, depth, num_heads, window, dropout, drop_path)
        # Unused LayerNorm kept so the reference state_dict (which stores it) loads strictly.
        self.norm_layer = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.pos_drop(x.permute(0, 2, 3, 4, 1))  # (B, D, H, W, C)
        return self.conv(x) + self.trans(tokens).permute(0, 4, 1, 2, 3)


class PCTEmbedding(nn.Module):
    """Two-level CNN embedding; returns the level-0 and level-1 skips and the level-2 map.

    Args:
        in_chans: input channels.
        chns: channels of levels 0, 1, 2.
        conv_dims: kernel dims (2 or 3) of levels 0 and 1.
        down_dims: pooling dims (2 or 3) of the two downsamplings.
        dropout: dropout of the level-0 and level-1 conv blocks.
    """

    def __init__(
        self,
        in_chans: int,
        chns: Sequence[int],
        conv_dims: Sequence[int],
        down_dims: Sequence[int],
        dropout: Sequence[float],
    ) -> None:
        super().__init__()
        kernel, padding = _conv_kernel(conv_dims[0])
        self.proj = nn.Conv3d(in_chans, chns[0], kernel, padding=padding)
        self.conv0 = ConvBlock(chns[0], chns[0], conv_dims[0], dropout[0])
        self.conv1 = ConvBlock(chns[1], chns[1], conv_dims[1], dropout[1])
        self.down1 = DownSample(chns[0], chns[1], down_dims[0], conv_dims[1])
        self.down2 = DownSample(chns[1], chns[2], down_dims[1], 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # A one-channel input is as much NCDHW as NDHWC, so proj returns NCDHW: switch here.
        x0 = checkpointed(self.conv0, channels_last_3d(self.proj(x)), owned=True)
        x1 = checkpointed(self.conv1, checkpointed(self.down1, x0), owned=True)
        return x0, x1, checkpointed(self.down2, x1)


class PCTPyramid(nn.Module):
    """Three-level encoder–decoder of PCT blocks with pointwise heads on its two finer levels.

    Args:
        chns: channels of levels 2, 3, 4.
        resolution: (D, H, W) of level 2; levels 3 and 4 halve it.
        depths / num_heads / windows: per level (2, 3, 4); decoder blocks reuse their level's.
        dropout: dropout per level (2, 3, 4).
        num_classes: output channels of the heads.
    """

    def __init__(
        self,
        chns: Sequence[int],
        resolution: Size3,
        depths: Sequence[int],
        num_heads: Sequence[int],
        windows: Sequence[int],
        dropout: Sequence[float],
        num_classes: int,
    ) -> None:
        super().__init__()
        res = [tuple(r // 2**i for r in resolution) for i in range(3)]

        def pct(i: int) -> ConvTransBlock:
            return ConvTransBlock(chns[i], res[i], depths[i], num_heads[i], windows[i], dropout[i])

        self.down3 = DownSample(chns[0], chns[1], 3, 3)
        self.down4 = DownSample(chns[1], chns[2], 3, 3)
        self.up3 = UpCatBlock(chns[0], chns[1], 3, 3)
        self.up4 = UpCatBlock(chns[1], chns[2], 3, 3)
        self.convtrans_e2 = pct(0)
        self.convtrans_d2 = pct(0)
        self.convtrans_e3 = pct(1)
        self.convtrans_d3 = pct(1)
        self.convtrans_e4 = pct(2)
        self.out_conv2 = ConvLayer(chns[0], num_classes)
        self.out_conv3 = ConvLayer(chns[1], num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the decoded level-2 and level-3 maps (d2, d3)."""
        e2 = checkpointed(self.convtrans_e2, x)
        e3 = checkpointed(self.convtrans_e3, checkpointed(self.down3, e2))
        e4 = checkpointed(self.convtrans_e4, checkpointed(self.down4, e3))
        d3 = self.convtrans_d3(self.up4(e4, e3))
        d2 = self.convtrans_d2(self.up3(d3, e2))
        return d2, d3


class PCTPredHead(nn.Module):
    """Decoder mirroring :class:`PCTEmbedding`, with pointwise heads at levels 0 and 1."""

    def __init__(
        self,
        chns: Sequence[int],
        conv_dims: Sequence[int],
        down_dims: Sequence[int],
        dropout: Sequence[float],
        num_classes: int,
    ) -> None:
        super().__init__()
        self.up1 = UpCatBlock(chns[0], chns[1], down_dims[0], conv_dims[0])
        self.up2 = UpCatBlock(chns[1], chns[2], down_dims[1], conv_dims[1])
        self.conv0 = ConvBlock(chns[0], chns[0], conv_dims[0], dropout[0])
        self.conv1 = ConvBlock(chns[1], chns[1], conv_dims[1], dropout[1])
        self.out_conv0 = ConvLayer(chns[0], num_classes)
        self.out_conv1 = ConvLayer(chns[1], num_classes)

    def forward(
        self, d2: torch.Tensor, x1: torch.Tensor, x0: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the decoded level-0 and level-1 maps (y0, y1), before the heads."""
        y1 = self.conv1(self.up2(d2, x1), owned=True)
        y0 = self.conv0(self.up1(y1, x0), owned=True)
        return y0, y1


# (conv_dims, down_dims) of the embedding/head per resolution_mode; total downsampling to
# level 2 is (4,4,4), (2,4,4) and (1,4,4).
_RESOLUTION_MODES = {0: ((3, 3), (3, 3)), 1: ((2, 3), (2, 3)), 2: ((2, 2), (2, 2))}


class PCTNet(ModelApiMixin, nn.Module):
    """PCT-Net (MIS-FM): CNN embedding → pyramid of parallel conv/transformer blocks → CNN head.

    The Swin blocks are built for a fixed feature-map size, so the network takes inputs of
    exactly ``img_size`` (any batch size); segment larger volumes with sliding-window
    inference over ``img_size`` patches.

    Args:
        in_chans: input channels.
        num_classes: output channels of every head (5 for the Volume Fusion pretext task).
        img_size: (D, H, W) input size, axial axis first; must be divisible by the total
            downsampling of ``resolution_mode`` × 4 (mode 1: (8, 16, 16)).
        feature_chns: channels of the 5 levels (paper: 24, 48, 128, 256, 512).
        dropout: dropout per level.
        resolution_mode: 0, 1 or 2 — level-0/1 convolutions and poolings are 3D/3D, 2D/3D
            (paper) or 2D/2D. All three embedding and head variants are built, as in the
            reference, so its state_dict loads strictly; only index ``resolution_mode`` runs.
        depths: Swin blocks per PCT level (2, 3, 4).
        num_heads: attention heads per PCT level.
        window_sizes: attention window edge per PCT level.
        deep_supervision: if True, ``forward`` returns four predictions (see Returns).

    Returns (forward):
        ``deep_supervision=False``: a tensor (N, num_classes, D, H, W) of logits.
        ``deep_supervision=True``: a list, finest first — [full resolution (N, K, D, H, W),
        level 1 (N, K, D/s1, H/2, W/2), pyramid level 2 (N, K, D/s2, H/4, W/4), pyramid level 3
        (N, K, D/2s2, H/8, W/8)], where s1, s2 are the depth strides of the mode (mode 1:
        s1 = 1, s2 = 2); for 1×64×128×128: 64×128×128, 64×64×64, 32³, 16³.

    Example:
        >>> model = PCTNet(in_chans=1, num_classes=5, img_size=(64, 128, 128))
        >>> model(torch.randn(2, 1, 64, 128, 128)).shape
        torch.Size([2, 5, 64, 128, 128])
    """

    def __init__(
        self,
        in_chans: int = 1,
        num_classes: int = 5,
        img_size: Sequence[int] = (64, 128, 128),
        feature_chns: Sequence[int] = (24, 48, 128, 256, 512),
        dropout: Sequence[float] = (0.0, 0.0, 0.2, 0.2, 0.2),
        resolution_mode: int = 1,
        depths: Sequence[int] = (2, 2, 2),
        num_heads: Sequence[int] = (4, 8, 16),
        window_sizes: Sequence[int] = (6, 6, 6),
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        if resolution_mode not in _RESOLUTION_MODES:
            raise ValueError(f"resolution_mode must be 0, 1 or 2, got {resolution_mode}")
        for name, seq, n in (
            ("feature_chns", feature_chns, 5),
            ("dropout", dropout, 5),
            ("depths", depths, 3),
            ("num_heads", num_heads, 3),
            ("window_sizes", window_sizes, 3),
        ):
            if len(seq) != n:
                raise ValueError(f"{name} must have {n} entries, got {len(seq)}")
        img_size = int_tuple(img_size, 3, "img_size")
        conv_dims, down_dims = _RESOLUTION_MODES[resolution_mode]
        stride2 = tuple(a * b for a, b in zip(_scale(down_dims[0]), _scale(down_dims[1]), strict=True))
        divisor = tuple(s * 4 for s in stride2)
        if any(s % q for s, q in zip(img_size, divisor, strict=True)):
            raise ValueError(
                f"img_size {img_size} must be divisible by {divisor} for resolution_mode {resolution_mode}"
            )
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.img_size = img_size
        self.resolution_mode = resolution_mode
        self.deep_supervision = deep_supervision

        chns = list(feature_chns)
        self.embeddings = nn.ModuleList(
            PCTEmbedding(in_chans, chns[:3], cd, dd, dropout[:2]) for cd, dd in _RESOLUTION_MODES.values()
        )
        level2 = tuple(s // q for s, q in zip(img_size, stride2, strict=True))
        self.pyramid_ct = PCTPyramid(
            chns[2:], level2, depths, num_heads, window_sizes, dropout[2:], num_classes
        )
        self.pred_heads = nn.ModuleList(
            PCTPredHead(chns[:3], cd, dd, dropout[:2], num_classes) for cd, dd in _RESOLUTION_MODES.values()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self._check(x)
        return self.forward_head(self._decode(x))

    def _check(self, x: torch.Tensor) -> None:
        check_input(x, self.in_chans, "PCTNet")
        if tuple(x.shape[2:]) != self.img_size:
            raise ValueError(
                f"PCTNet was built for inputs of exactly {self.img_size} (D, H, W), got "
                f"{tuple(x.shape[2:])}: its Swin blocks have a fixed size. Use sliding-window "
                f"inference with roi_size={self.img_size} (e.g. monai.inferers.sliding_window_inference), "
                "or build the model with img_size=<your size>."
            )

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features: the decoded maps the four heads read, finest first ``[y0, y1, d2, d3]``."""
        self._check(x)
        return self._decode(x)

    def _decode(self, x: torch.Tensor) -> list[torch.Tensor]:
        embed = self.embeddings[self.resolution_mode]
        head = self.pred_heads[self.resolution_mode]
        # Channels-last inside: oneDNN convolves NDHWC without reordering every activation,
        # and the Swin branches' (B, D, H, W, C) token view of a map is then free.
        x = channels_last_3d(x)
        x0, x1, x2 = embed(x)
        d2, d3 = self.pyramid_ct(x2)
        y0, y1 = head(d2, x1, x0)
        return [y0, y1, d2, d3]

    def forward_head(
        self, feats: Sequence[torch.Tensor], pre_logits: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        """The pre-activated pointwise heads (all four with deep supervision); ``pre_logits``: ``feats``."""
        if pre_logits:
            return list(feats)
        head = self.pred_heads[self.resolution_mode]
        y0, y1, d2, d3 = feats
        out = head.out_conv0(y0).contiguous()
        if not self.deep_supervision:
            return out
        outs = [head.out_conv1(y1), self.pyramid_ct.out_conv2(d2), self.pyramid_ct.out_conv3(d3)]
        return [out, *(o.contiguous() for o in outs)]

    # ---- timm's API (zoo.layers.model_api)

    def _api_parts(self) -> dict:
        return dict(_PCT_GROUPS)

    def _api_features(self) -> list[dict]:
        conv_dims, down_dims = _RESOLUTION_MODES[self.resolution_mode]
        s1 = _scale(down_dims[0])
        s2 = tuple(a * b for a, b in zip(s1, _scale(down_dims[1]), strict=True))
        red = [(1, 1, 1), s1, s2, tuple(2 * r for r in s2), tuple(4 * r for r in s2)]
        m = self.resolution_mode
        embed, pyr = self.embeddings[m], self.pyramid_ct
        mods = [f"embeddings.{m}.conv0", f"embeddings.{m}.conv1"]
        mods += [f"pyramid_ct.convtrans_e{i}" for i in (2, 3, 4)]
        chs = [embed.proj.out_channels, embed.down1.conv[-1].out_channels]
        chs += [
            pyr.down3.conv[-1].in_channels,
            pyr.down3.conv[-1].out_channels,
            pyr.down4.conv[-1].out_channels,
        ]
        return [dict(module=n, num_chs=c, reduction=r) for n, c, r in zip(mods, chs, red, strict=True)]

    def _api_head_keys(self) -> tuple[str, ...]:
        return _PCT_HEADS

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The full-resolution head's pointwise conv of the running resolution mode."""
        return self.pred_heads[self.resolution_mode].out_conv0.conv[2]

    def _api_checkpoint_units(self) -> list[nn.Module]:
        units = [getattr(e, k) for e in self.embeddings for k in ("conv0", "down1", "conv1", "down2")]
        pyr = self.pyramid_ct
        return units + [pyr.convtrans_e2, pyr.down3, pyr.convtrans_e3, pyr.down4, pyr.convtrans_e4]


# --------------------------------------------------------------------------------------------
# FMUNet blocks
# --------------------------------------------------------------------------------------------


def _in_act(c: int) -> list[nn.Module]:
    return [nn.InstanceNorm3d(c, affine=True), nn.LeakyReLU()]


class ResConv(nn.Module):
    """``depth`` pre-activated convolutions (IN → LeakyReLU → dropout → conv), each residual."""

    def __init__(self, c: int, dim: int, dropout: float, depth: int = 2) -> None:
        super().__init__()
        self.conv_list = nn.ModuleList(
            nn.Sequential(*_in_act(c), nn.Dropout(dropout), _conv3x3(c, c, dim)) for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.conv_list:
            x = conv(x) + x
        return x


class FMUDownSample(nn.Module):
    """IN → LeakyReLU → strided 3×3 conv (stride 2, or (1,2,2) in-plane)."""

    def __init__(self, cin: int, cout: int, dim: int) -> None:
        super().__init__()
        self.down = nn.Sequential(*_in_act(cin), _conv3x3(cin, cout, dim, stride=_scale(dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(x)


class UpCatConv(nn.Module):
    """IN → LeakyReLU → 1×1 conv → trilinear upsampling, concatenation after the skip, one conv.

    Args:
        c_low: channels of the coarse input.
        c_high: channels of the skip (finer level).
        c_out: output channels.
        dim: 2 for in-plane upsampling and (1,3,3) kernels, 3 for isotropic.
    """

    def __init__(self, c_low: int, c_high: int, c_out: int, dim: int) -> None:
        super().__init__()
        self.up = nn.Sequential(
            *_in_act(c_low),
            nn.Conv3d(c_low, c_high, 1),
            nn.Upsample(scale_factor=_scale(dim), mode="trilinear", align_corners=True),
        )
        self.conv = nn.Sequential(*_in_act(2 * c_high), _conv3x3(2 * c_high, c_out, dim))

    def forward(self, x_coarse: torch.Tensor, x_skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([x_skip, self.up(x_coarse)], dim=1))


class FMUEncoder(nn.Module):
    """Five residual levels joined by four strided-conv downsamplings."""

    def __init__(
        self, chns: Sequence[int], dims: Sequence[int], dropout: Sequence[float], depth: int
    ) -> None:
        super().__init__()
        for i in range(5):
            self.add_module(f"en_conv{i}", ResConv(chns[i], dims[i], dropout[i], depth))
        for i in range(4):
            self.add_module(f"down{i}", FMUDownSample(chns[i], chns[i + 1], dims[i]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [checkpointed(self.en_conv0, x)]
        for i in range(1, 5):
            down = checkpointed(getattr(self, f"down{i - 1}"), feats[-1])
            feats.append(checkpointed(getattr(self, f"en_conv{i}"), down))
        return feats


class FMUDecoder(nn.Module):
    """A residual block on the bottleneck, then four upsample-concatenate-conv levels."""

    def __init__(
        self, chns: Sequence[int], dims: Sequence[int], dropout: Sequence[float], depth: int
    ) -> None:
        super().__init__()
        for i in range(4):
            self.add_module(f"upcat{i}", UpCatConv(chns[i + 1], chns[i], chns[i], dims[i]))
        for i in range(5):
            self.add_module(f"de_conv{i}", ResConv(chns[i], dims[i], dropout[i], depth))

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Returns the decoded maps of levels 0–3, finest first."""
        d = self.de_conv4(feats[4])
        out = []
        for i in range(3, -1, -1):
            d = getattr(self, f"de_conv{i}")(getattr(self, f"upcat{i}")(d, feats[i]))
            out.append(d)
        return out[::-1]


_FMU_DIMS = {0: (3, 3), 1: (2, 3), 2: (2, 2)}


class FMUNet(ModelApiMixin, nn.Module):
    """FMUNet: the MIS-FM release's 3D U-Net (InstanceNorm + LeakyReLU, residual convolutions).

    Takes any spatial size divisible by the total downsampling (res_mode 0: 16 on each axis).

    Args:
        in_chans: input channels.
        num_classes: output channels of every head (5 for the Volume Fusion pretext task).
        feature_chns: channels of the 5 levels.
        dropout: dropout of levels 2–4 (levels 0 and 1 use none).
        depth: residual convolutions per level.
        res_mode: 0, 1 or 2 — kernels/strides of levels 0 and 1 are 3D/3D, 2D/3D or 2D/2D.
        deep_supervision: if True, ``forward`` returns four predictions (see Returns).

    Returns (forward):
        ``deep_supervision=False``: a tensor (N, num_classes, D, H, W) of logits.
        ``deep_supervision=True``: a list, finest first, from ``out_layers.0`` … ``.3``: full
        resolution, then 1/2, 1/4, 1/8 (res_mode 0; for 64×128×128: 32×64×64, 16×32×32, 8×16×16).

    Example:
        >>> model = FMUNet(in_chans=1, num_classes=5)
        >>> model(torch.randn(1, 1, 32, 64, 64)).shape
        torch.Size([1, 5, 32, 64, 64])
    """

    def __init__(
        self,
        in_chans: int = 1,
        num_classes: int = 5,
        feature_chns: Sequence[int] = (32, 64, 128, 256, 512),
        dropout: float = 0.2,
        depth: int = 2,
        res_mode: int = 0,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        if res_mode not in _FMU_DIMS:
            raise ValueError(f"res_mode must be 0, 1 or 2, got {res_mode}")
        if len(feature_chns) != 5:
            raise ValueError(f"feature_chns must have 5 entries, got {len(feature_chns)}")
        dims = (*_FMU_DIMS[res_mode], 3, 3, 3)
        drops = (0.0, 0.0, dropout, dropout, dropout)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.res_mode = res_mode
        self.deep_supervision = deep_supervision
        divisor = [1, 1, 1]
        for dim in dims[:4]:
            divisor = [a * b for a, b in zip(divisor, _scale(dim), strict=True)]
        self.size_divisor: Size3 = tuple(divisor)  # type: ignore[assignment]

        kernel, padding = _conv_kernel(dims[0])
        self.project = nn.Conv3d(in_chans, feature_chns[0], kernel, padding=padding)
        self.encoder = FMUEncoder(feature_chns, dims, drops, depth)
        self.decoder = FMUDecoder(feature_chns, dims, drops, depth)
        self.out_layers = nn.ModuleList(
            nn.Sequential(*_in_act(feature_chns[i]), _conv3x3(feature_chns[i], num_classes, dims[i]))
            for i in range(4)
        )
        self.apply(_init_he)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.forward_head(self.forward_features(x))

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features: the decoder's maps of levels 0–3 that the four heads read, finest first."""
        check_input(x, self.in_chans, "FMUNet")
        size = tuple(x.shape[2:])
        if any(s % q for s, q in zip(size, self.size_divisor, strict=True)):
            raise ValueError(
                f"FMUNet (res_mode {self.res_mode}) needs D, H, W divisible by {self.size_divisor}, "
                f"got {size}; pad or crop the input (or use sliding-window inference)."
            )
        return self.decoder(self.encoder(self.project(x)))

    def forward_head(
        self, feats: Sequence[torch.Tensor], pre_logits: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        """The ``out_layers`` heads (all four with deep supervision); ``pre_logits``: ``feats``."""
        if pre_logits:
            return list(feats)
        if not self.deep_supervision:
            return self.out_layers[0](feats[0])
        return [head(d) for head, d in zip(self.out_layers, feats, strict=True)]

    # ---- timm's API (zoo.layers.model_api)

    def _api_parts(self) -> dict:
        return dict(_FMU_GROUPS)

    def _api_features(self) -> list[dict]:
        dims = (*_FMU_DIMS[self.res_mode], 3, 3, 3)
        out, red = [], (1, 1, 1)
        for i in range(5):
            if i:
                red = tuple(a * b for a, b in zip(red, _scale(dims[i - 1]), strict=True))
            c = getattr(self.encoder, f"en_conv{i}").conv_list[0][-1].out_channels
            r = red[0] if len(set(red)) == 1 else red  # isotropic: one number, as the registry
            out.append(dict(module=f"encoder.en_conv{i}", num_chs=c, reduction=r))
        return out

    def _api_head_keys(self) -> tuple[str, ...]:
        return tuple(f"out_layers.{i}.2." for i in range(len(self.out_layers)))

    def _api_init_head(self, module: nn.Module) -> None:
        _init_he(module)  # as built

    def _api_checkpoint_units(self) -> list[nn.Module]:
        enc = self.encoder
        return [getattr(enc, f"en_conv{i}") for i in range(5)] + [getattr(enc, f"down{i}") for i in range(4)]


def _init_he(module: nn.Module) -> None:
    # PyMIC's Initialization_He(1e-2), FMUNet's default initialiser.
    if isinstance(module, nn.Conv3d):
        nn.init.kaiming_normal_(module.weight, a=1e-2)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------------------------
# registrations
# --------------------------------------------------------------------------------------------


def _create_pctnet(**kwargs) -> PCTNet:
    """Builder: ``input_size`` is accepted as an alias of ``img_size``; None overrides are ignored."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if "input_size" in kwargs:
        alias = int_tuple(kwargs.pop("input_size"), 3, "input_size")
        if "img_size" in kwargs and int_tuple(kwargs["img_size"], 3, "img_size") != alias:
            raise ValueError(f"img_size {kwargs['img_size']} and input_size {alias} disagree")
        kwargs["img_size"] = alias
    return PCTNet(**kwargs)


def _create_fmunet(**kwargs) -> FMUNet:
    """Builder: FMUNet is size-agnostic, so an ``img_size`` override is only checked, not stored."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    img_size = kwargs.pop("img_size", None) or kwargs.pop("input_size", None)
    model = FMUNet(**kwargs)
    if img_size is not None:
        size = int_tuple(img_size, 3, "img_size")
        if any(s % q for s, q in zip(size, model.size_divisor, strict=True)):
            raise ValueError(f"FMUNet img_size {size} must be divisible by {model.size_divisor}")
    return model


_PAPER = PaperInfo(
    title=(
        "MIS-FM: 3D Medical Image Segmentation using Foundation Models Pretrained on a Large-Scale "
        "Unannotated Dataset"
    ),
    authors="Guotai Wang, Jianghao Wu, Xiangde Luo, Xinglong Liu, Kang Li, Shaoting Zhang",
    venue="arXiv:2306.16925",
    year=2023,
    url="https://arxiv.org/abs/2306.16925",
    code_url="https://github.com/openmedlab/MIS-FM",
    bibtex="""@article{wang2023misfm,
  title   = {{MIS-FM}: {3D} Medical Image Segmentation using Foundation Models Pretrained on a Large-Scale Unannotated Dataset},
  author  = {Wang, Guotai and Wu, Jianghao and Luo, Xiangde and Liu, Xinglong and Li, Kang and Zhang, Shaoting},
  journal = {arXiv preprint arXiv:2306.16925},
  year    = {2023}
}""",  # noqa: E501
)

_DRIVE_FOLDER_2024 = "https://drive.google.com/drive/folders/13OQh2eM0QFnwBRwBcKCqhKa46CnDojrD"

_PYMIC_FORMAT = (
    "PyMIC torch.save dict {'iteration', 'valid_pred', 'model_state_dict', 'optimizer_state_dict'}; the "
    "network under 'model_state_dict' with the reference key names, no 'module.' prefix"
)

_CT_PREPROCESSING = {
    "axis_order": "zyx",
    "layout": "(N, 1, D, H, W) with D the slice (axial) axis: the first stages convolve in-plane",
    "orientation": None,
    "orientation_note": "native (not stated); keep the slice axis first",
    "spacing_mm": None,
    "spacing_note": "native, no resampling (none stated in the paper, demo or configs)",
    "intensity_transform": {
        "kind": "clip_scale",
        "a_min": -1000.0,
        "a_max": 1000.0,
        "b_min": -1.0,
        "b_max": 1.0,
    },
    "intensity": "clip HU [-1000, 1000] → [-1, 1] (PyMIC CT convention; not documented for these weights); "
    "alternative: per-volume z-score (the repo's MRI demo)",
    "patch_size": [64, 128, 128],
}

_UNSPECIFIED_PREPROCESSING_NOTE = (
    "The paper states no HU window, spacing or orientation for pretraining; we recommend the PyMIC CT "
    "convention (clip HU [-1000, 1000] → [-1, 1]) at native spacing with the axial axis first, and expose "
    "per-volume z-score as the alternative (the repo's MRI demo uses it)."
)

_NAMING_NOTE = (
    "Naming: the paper and the 2023 release describe one model pretrained on 110k CT volumes (PData-110k = "
    "10,137 public + ~103k private chest CT) — that file, pctnet_pretrain.pt, is `vf110k`. The 2024/25 "
    "release replaced it with pctnet_ct10k_volf.pt, pretrained on 'CT10k' (PData-10k, public scans only, "
    "not 110k) — that file is `vf10k`. Both have the same architecture and keys."
)

_RESULTS_MD = """\
PCT-Net+VF rows use PCT-Net pretrained with Volume Fusion on PData-110k; the paper reports mean±std over the test cases.

**Table 3 — MICCAI 2015 Head-Neck, Dice (%)**

| Method | Brain stem | Optic chiasm | Mandible | Optic nerves | Parotids | SM glands | Avg |
|---|---|---|---|---|---|---|---|
| nnU-Net | 89.27±2.42 | 57.47±24.24 | 90.12±5.84 | 72.50±7.85 | 87.53±3.43 | 75.06±12.58 | 78.66±5.42 |
| TransUNet | 75.52±5.58 | 41.92±15.99 | 92.28±1.45 | 58.36±6.91 | 76.70±6.85 | 69.80±8.27 | 69.10±3.08 |
| nnFormer | 80.02±3.53 | 52.72±14.70 | 87.96±2.27 | 57.34±7.72 | 75.31±7.24 | 68.25±5.53 | 70.27±4.19 |
| UNETR++ | 87.26±2.13 | 60.44±22.49 | 93.99±1.30 | 75.19±5.85 | 84.61±3.89 | 80.74±4.53 | 80.37±3.94 |
| PCT-Net | 89.25±1.86 | 58.09±18.59 | 94.17±1.66 | 77.04±4.84 | 87.44±3.37 | 82.49±4.55 | 81.41±3.67 |
| PCT-Net+VF | 90.24±1.78 | 62.93±20.73 | 94.85±1.36 | 78.11±4.04 | 87.07±3.69 | 83.25±3.90 | 82.74±3.95 |

**Table 3 — MICCAI 2015 Head-Neck, ASSD (mm)**

| Method | Brain stem | Optic chiasm | Mandible | Optic nerves | Parotids | SM glands | Avg |
|---|---|---|---|---|---|---|---|
| nnU-Net | 1.08±0.30 | 1.04±0.84 | 0.63±0.42 | 0.52±0.26 | 1.15±0.43 | 3.51±5.71 | 1.32±1.04 |
| TransUNet | 2.00±0.40 | 4.11±2.66 | 1.46±1.13 | 2.58±0.76 | 2.65±1.06 | 4.10±1.81 | 2.82±0.76 |
| nnFormer | 2.01±0.46 | 1.28±0.55 | 1.24±1.37 | 1.16±0.45 | 2.52±1.03 | 2.26±0.82 | 1.75±0.43 |
| UNETR++ | 1.22±0.31 | 0.97±0.89 | 0.38±0.10 | 0.44±0.16 | 1.34±0.38 | 1.17±0.26 | 0.92±0.19 |
| PCT-Net | 1.14±0.29 | 1.00±0.70 | 0.41±0.17 | 0.40±0.14 | 1.14±0.50 | 1.67±2.03 | 0.96±0.33 |
| PCT-Net+VF | 0.92±0.26 | 0.87±0.72 | 0.32±0.08 | 0.38±0.12 | 1.09±0.29 | 1.03±0.26 | 0.77±0.16 |

**Table 4 — SegTHOR, Dice (%)**

| Method | Esophagus | Heart | Trachea | Aorta | Avg |
|---|---|---|---|---|---|
| nnU-Net | 80.15±7.85 | 93.05±2.59 | 87.33±5.84 | 93.78±1.67 | 88.57±3.84 |
| TransUNet | 75.66±9.36 | 85.27±16.18 | 89.37±4.26 | 91.52±2.97 | 85.46±7.20 |
| nnFormer | 78.00±6.86 | 92.47±2.06 | 84.87±10.10 | 90.07±4.89 | 86.35±3.78 |
| UNETR++ | 76.24±10.43 | 92.00±4.79 | 88.61±4.49 | 92.48±2.32 | 87.33±3.67 |
| PCT-Net | 82.08±6.19 | 88.47±11.18 | 88.11±4.43 | 91.65±3.67 | 87.58±4.39 |
| PCT-Net+VF | 83.45±4.78 | 91.66±7.14 | 89.26±4.47 | 93.88±1.79 | 89.56±2.81 |

**Table 4 — SegTHOR, ASSD (mm)**

| Method | Esophagus | Heart | Trachea | Aorta | Avg |
|---|---|---|---|---|---|
| nnU-Net | 3.17±5.45 | 5.79±9.38 | 7.41±10.66 | 1.530±2.16 | 4.47±5.38 |
| TransUNet | 2.06±1.28 | 5.15±4.60 | 1.48±0.87 | 2.93±2.26 | 2.91±1.92 |
| nnFormer | 2.76±2.76 | 5.51±4.48 | 6.56±16.39 | 3.07±2.59 | 4.47±4.63 |
| UNETR++ | 1.90±0.99 | 3.84±3.93 | 2.65±3.58 | 1.19±0.56 | 2.39±1.44 |
| PCT-Net | 1.59±1.01 | 3.40±2.75 | 1.70±0.95 | 1.26±0.66 | 1.99±1.01 |
| PCT-Net+VF | 1.24±0.33 | 2.93±2.52 | 1.49±1.03 | 0.98±0.51 | 1.66±0.86 |

**Tables 5/6 — Synapse, Dice (%)**

| Method | Spleen | R Kid | L Kid | Gallbladder | Pancreas | Liver | Stomach | Aorta | Avg |
|---|---|---|---|---|---|---|---|---|---|
| nnU-Net | 94.00±4.26 | 91.89±7.72 | 93.30±4.17 | 78.17±18.48 | 83.27±3.98 | 94.33±3.89 | 79.30±19.89 | 89.26±3.38 | 87.94±5.26 |
| TransUNet | 92.00±7.15 | 92.48±4.11 | 92.30±4.77 | 74.21±12.31 | 72.18±16.12 | 94.73±4.11 | 75.72±15.54 | 90.67±4.16 | 85.54±5.40 |
| nnFormer | 92.25±5.83 | 92.86±2.11 | 93.84±1.45 | 73.56±14.48 | 72.02±6.22 | 95.31±1.28 | 80.77±10.29 | 90.47±3.54 | 86.39±2.81 |
| UNETR++ | 89.26±15.54 | 93.40±1.61 | 93.19±2.31 | 70.96±28.24 | 74.70±12.14 | 95.76±0.68 | 82.79±15.22 | 88.79±4.82 | 86.11±6.55 |
| PCT-Net | 91.36±13.77 | 95.21±5.46 | 90.78±9.79 | 80.94±9.91 | 79.13±9.86 | 96.63±7.04 | 79.25±23.33 | 90.48±5.11 | 87.97±5.22 |
| PCT-Net+VF | 91.38±12.97 | 95.31±0.55 | 92.17±8.00 | 80.79±13.58 | 83.24±3.97 | 96.70±6.30 | 82.46±15.99 | 90.86±4.10 | 89.11±4.43 |

**Tables 5/6 — Synapse, ASSD (mm)**

| Method | Spleen | R Kid | L Kid | Gallbladder | Pancreas | Liver | Stomach | Aorta | Avg |
|---|---|---|---|---|---|---|---|---|---|
| nnU-Net | 4.82±7.90 | 3.56±8.00 | 4.96±9.78 | 2.32±2.57 | 1.92±1.24 | 3.11±4.39 | 6.43±11.02 | 3.42±3.36 | 3.82±5.33 |
| TransUNet | 6.34±11.64 | 2.69±3.77 | 4.20±7.37 | 4.73±6.31 | 3.55±1.69 | 2.17±2.16 | 6.65±8.28 | 2.91±3.19 | 4.15±5.16 |
| nnFormer | 6.07±9.21 | 1.70±2.24 | 1.25±1.61 | 6.63±9.88 | 4.35±3.00 | 2.27±2.29 | 7.84±13.15 | 1.88±1.89 | 4.00±5.04 |
| UNETR++ | 4.87±10.34 | 1.63±1.90 | 1.87±3.24 | 3.22±4.76 | 3.69±3.92 | 1.46±0.67 | 4.65±6.20 | 1.74±0.84 | 2.89±3.31 |
| PCT-Net | 4.07±9.63 | 0.50±0.07 | 3.10±6.77 | 3.20±3.78 | 3.06±3.98 | 1.04±0.34 | 5.35±8.45 | 1.55±1.02 | 2.73±3.00 |
| PCT-Net+VF | 4.04±9.20 | 0.47±0.06 | 2.05±4.22 | 1.77±1.98 | 1.52±0.65 | 1.01±0.29 | 3.64±3.81 | 1.85±2.06 | 2.04±2.09 |

**Pretraining-data scale (Fig. 5, SegTHOR average Dice %, K = 4)**

| Model | Scratch | PData-1k | PData-10k | PData-110k |
|---|---|---|---|---|
| 3D U-Net | 84.92 | 88.30 | 88.78 | 89.09 |
| PCT-Net | 87.57 | 88.56 | 89.39 | 89.56 |
"""  # noqa: E501

_FMUNET_RESULTS_MD = """\
FMUNet is not evaluated in the MIS-FM paper (it is the "modified 3D UNet" of the authors' later journal
paper, whose tables we do not reproduce). The closest numbers in the MIS-FM paper are for a plain 3D U-Net
pretrained with each SSL method on PData-1k:

**Table 2 — SegTHOR, 3D U-Net pretrained on PData-1k, Dice (%)**

| Method | Esophagus | Heart | Trachea | Aorta | Avg |
|---|---|---|---|---|---|
| Scratch | 71.87±11.27 | 90.82±4.72 | 87.63±5.77 | 89.34±6.19 | 84.92±6.47 |
| Patch Swapping | 75.91±9.04 | 91.88±5.27 | 87.31±6.45 | 89.64±7.60 | 86.18±4.05 |
| Model Genesis | 76.98±8.29 | 92.78±3.13 | 87.87±6.28 | 89.64±7.74 | 86.81±4.00 |
| MIM | 76.29±8.91 | 91.85±2.82 | 87.52±5.43 | 92.19±2.98 | 86.97±3.50 |
| Volume Fusion | 77.61±7.82 | 93.72±2.28 | 88.21±4.18 | 93.67±1.68 | 88.30±2.93 |

**Table 2 — SegTHOR, 3D U-Net pretrained on PData-1k, ASSD (mm)**

| Method | Esophagus | Heart | Trachea | Aorta | Avg |
|---|---|---|---|---|---|
| Scratch | 3.37±2.48 | 5.52±3.98 | 1.51±0.69 | 2.30±1.80 | 3.17±2.24 |
| Patch Swapping | 2.05±0.92 | 2.96±1.64 | 3.09±5.75 | 3.02±3.41 | 2.78±1.54 |
| Model Genesis | 2.15±1.00 | 2.81±1.43 | 2.86±6.00 | 3.02±3.26 | 2.71±1.58 |
| MIM | 2.05±0.77 | 4.65±2.25 | 3.20±4.61 | 2.22±1.66 | 3.03±1.55 |
| Volume Fusion | 1.84±0.76 | 2.90±2.55 | 1.30±0.57 | 1.08±0.48 | 1.78±0.71 |
"""  # noqa: E501

_PCT_HEADS = tuple(f"pred_heads.{m}.out_conv{i}.conv.2." for m in range(3) for i in range(2)) + (
    "pyramid_ct.out_conv2.conv.2.",
    "pyramid_ct.out_conv3.conv.2.",
)

# Parts, input to output. All three resolution-mode embeddings/heads exist (only one runs): each
# level of every mode belongs to that level's part.
_EMB = tuple(f"embeddings.{m}." for m in range(3))
_PCT_GROUPS = {
    "stem": tuple(f"{e}{k}." for e in _EMB for k in ("proj", "conv0")),
    "encoder.0": tuple(f"{e}{k}." for e in _EMB for k in ("down1", "conv1")),
    "encoder.1": tuple(f"{e}down2." for e in _EMB) + ("pyramid_ct.convtrans_e2.",),
    "encoder.2": ("pyramid_ct.down3.", "pyramid_ct.convtrans_e3."),
    "encoder.3": ("pyramid_ct.down4.", "pyramid_ct.convtrans_e4."),
    "decoder": tuple(f"pyramid_ct.{k}." for k in ("up3", "up4", "convtrans_d2", "convtrans_d3"))
    + tuple(f"pred_heads.{m}.{k}." for m in range(3) for k in ("up1", "up2", "conv0", "conv1")),
    "head": tuple(f"pred_heads.{m}.out_conv{i}." for m in range(3) for i in range(2))
    + ("pyramid_ct.out_conv2.", "pyramid_ct.out_conv3."),
}
# The registered resolution_mode 1: level 1 pools in-plane only, reductions are (D, H, W).
_PCT_FEATURES = (
    dict(module="embeddings.1.conv0", num_chs=24, reduction=(1, 1, 1)),
    dict(module="embeddings.1.conv1", num_chs=48, reduction=(1, 2, 2)),
    dict(module="pyramid_ct.convtrans_e2", num_chs=128, reduction=(2, 4, 4)),
    dict(module="pyramid_ct.convtrans_e3", num_chs=256, reduction=(4, 8, 8)),
    dict(module="pyramid_ct.convtrans_e4", num_chs=512, reduction=(8, 16, 16)),
)
_FMU_GROUPS = {
    "stem": ("project.", "encoder.en_conv0."),
    **{f"encoder.{i}": (f"encoder.down{i}.", f"encoder.en_conv{i + 1}.") for i in range(4)},
    "decoder": ("decoder.",),
    "head": ("out_layers.",),
}
_FMU_FEATURES = tuple(
    dict(module=f"encoder.en_conv{i}", num_chs=c, reduction=2**i)
    for i, c in enumerate((32, 64, 128, 256, 512))
)


def _vf_weights(
    hub_name: str,
    pretraining: str,
    *,
    url: str,
    file: str,
    notes: str,
    img_size: tuple[int, ...] | None = None,
) -> WeightSpec:
    """A released Volume Fusion checkpoint: the Apache-2.0 PyMIC files on Google Drive share the rest."""
    return WeightSpec(
        tag=hub_name.rsplit("-", 1)[1],
        license="Apache-2.0",
        pretraining=pretraining,
        covers="full",
        hf_hub_id=f"medzoo/{hub_name}",
        url=url,
        upstream_digest=None,
        upstream_format=f"{file}: {_PYMIC_FORMAT}",
        redistributable=True,
        in_chans=1,
        num_classes=5,
        img_size=img_size,
        preprocessing=_CT_PREPROCESSING,
        notes=notes,
    )


_SHARED = SpecFields(
    paper=_PAPER, input_size=(1, 64, 128, 128), sliding_window=dict(roi_size=(64, 128, 128), overlap=0.5)
)

register_family(
    "pctnet",
    _SHARED,
    [
        Variant(
            "pctnet",
            model_args=dict(
                in_chans=1,
                num_classes=5,
                img_size=(64, 128, 128),
                feature_chns=(24, 48, 128, 256, 512),
                dropout=(0.0, 0.0, 0.2, 0.2, 0.2),
                resolution_mode=1,
                depths=(2, 2, 2),
                num_heads=(4, 8, 16),
                window_sizes=(6, 6, 6),
            ),
            meta=ModelMeta(
                num_params=45_289_554,
                gmacs=355.52,
                flops_convention=(
                    "none: the paper has no parameter or FLOP table. For reference, the spec measured the "
                    "authors' code (demo config, class_num=2) at 45,287,730 parameters and 356.3 GMACs "
                    "(fvcore, 1×64×128×128, deep-supervision heads on)"
                ),
                reference_params_demo=45_287_730,
                reference_gmacs_fvcore=356.3,
                reference_note=(
                    "The paper reports no parameter count or FLOPs. reference_* are the spec's measurements "
                    "of the authors' code (demo config, class_num=2, fvcore MACs at 1×64×128×128)."
                ),
            ),
            aliases={"pctnet-vf110k": "vf110k", "pctnet-vf10k": "vf10k"},
            spec=SpecFields(
                builder=_create_pctnet,
                weights=(
                    _vf_weights(
                        "pctnet-vf110k",
                        "Volume Fusion (K=4, 5-class pseudo-segmentation) on PData-110k: 10,137 public CT + "
                        "~103k private chest CT; 64×128×128 crops, batch 4, Adam 1e-3, 400k iterations (2023 "
                        "release)",
                        url="https://drive.google.com/uc?export=download&id=1jQc-2hhsp3EyZj54_KEJte85diUtW8Fg",
                        file="pctnet_pretrain.pt",
                        notes="2023 release (README fe4deec), Google Drive file pctnet_pretrain.pt. No "
                        "digest is published upstream.",
                        img_size=(64, 128, 128),
                    ),
                    _vf_weights(
                        "pctnet-vf10k",
                        "Volume Fusion (K=4, 5-class pseudo-segmentation) on 'CT10k' = PData-10k (10,137 "
                        "public CT scans of head-neck, chest, abdomen/whole body) (2024/25 release)",
                        # A file of the shared folder, picked by name (zoo.hub fetches folders via gdown).
                        url=f"{_DRIVE_FOLDER_2024}#pctnet_ct10k_volf.pt",
                        file="pctnet_ct10k_volf.pt",
                        notes="2024/25 release: file pctnet_ct10k_volf.pt in the shared Google Drive "
                        "folder of the MIS-FM README. No digest is published upstream.",
                        img_size=(64, 128, 128),
                    ),
                ),
                default_tag="vf110k",
                head_keys=_PCT_HEADS,
                first_conv=("embeddings.0.proj", "embeddings.1.proj", "embeddings.2.proj"),
                param_groups=_PCT_GROUPS,
                feature_info=_PCT_FEATURES,
                encoder_prefixes=(
                    "embeddings.",
                    "pyramid_ct.down3.",
                    "pyramid_ct.down4.",
                    "pyramid_ct.convtrans_e2.",
                    "pyramid_ct.convtrans_e3.",
                    "pyramid_ct.convtrans_e4.",
                ),
                description=(
                    "PCT-Net (MIS-FM, Wang et al. 2023): a hybrid 3D segmentation network — a CNN embedding "
                    "with a 2D (in-plane) level and a 3D level, a three-level encoder–decoder of parallel "
                    "convolution and Swin-transformer (PCT) blocks, and a CNN prediction head with "
                    "four-scale deep supervision — pretrained on CT with Volume Fusion, a "
                    "pseudo-segmentation pretext task that predicts the fusion coefficient (5 classes) of "
                    "each voxel of two blended sub-volumes. The default head has 5 classes, as in the "
                    "released pretrained weights."
                ),
                results_md=_RESULTS_MD,
                notes=(
                    _NAMING_NOTE,
                    "Default config = the released checkpoints: channels 24/48/128/256/512, resolution_mode "
                    "1, window 6, heads 4/8/16, depths 2/2/2, num_classes 5 (Volume Fusion head, K+1); the "
                    "code's default channels 32/64/… are not used.",
                    "All three embedding/prediction-head variants (embeddings.0-2, pred_heads.0-2) are "
                    "built, as in the reference, so the released state_dict loads strictly with nothing "
                    "dropped; only index resolution_mode runs (1.09 M unused parameters, counted in "
                    "num_params).",
                    "Unused per-block LayerNorm (ConvTransBlock.norm_layer) is kept for strict key "
                    "compatibility.",
                    "Relative-position bias uses nnFormer's index (multipliers 17/11/1 for window 6, 291 of "
                    "1331 table rows used); the index is a persistent buffer in the checkpoint and the "
                    "converter checks it.",
                    "Swin blocks pad the map at the end to a multiple of the window and do not mask padded "
                    "tokens in unshifted windows; the shifted-window mask uses -100 (reproduced for parity).",
                    "DropPath is 0.2 in every Swin block (the reference never overrides the default); the "
                    "decoder PCT blocks reuse their encoder level's dropout (assumed; irrelevant in eval "
                    "mode).",
                    "head_keys name only the class-dependent pointwise convs (out_conv*.conv.2) of all 8 "
                    "heads, so a new num_classes keeps the heads' pretrained BN/PReLU — what PyMIC's "
                    "shape-filtered loading does.",
                    "The paper calls the heads 'pointwise convolutions'; in the code they are pre-activated "
                    "BN → PReLU → 1×1×1 conv.",
                    "Deep supervision: forward returns [full res, level 1, pyramid level 2, pyramid level "
                    "3] when deep_supervision=True (the reference's multiscale_pred); the 2025 repo's "
                    "net_run.py turns it off for training too, the 2023 train.py kept it on.",
                    _UNSPECIFIED_PREPROCESSING_NOTE,
                ),
                limitations=(
                    "Takes inputs of exactly img_size (64×128×128 by default): the Swin blocks are built "
                    "for a fixed feature-map size. Use sliding-window inference; building another img_size "
                    "keeps the weights compatible only while every pyramid level stays larger than the 6³ "
                    "window.",
                    "Input must have the slice axis first (N, C, D, H, W): the first level convolves and "
                    "pools in-plane only.",
                    "The released checkpoints were not inspected (Google Drive, no digest); their format is "
                    "inferred from PyMIC's save code. embeddings.0/2 and pred_heads.0/2 in them are probably "
                    "untrained.",
                    "Intensity normalisation of the pretraining is undocumented; a mismatch degrades "
                    "transfer.",
                ),
            ),
        ),
        Variant(
            "fmunet",
            model_args=dict(
                in_chans=1,
                num_classes=5,
                feature_chns=(32, 64, 128, 256, 512),
                dropout=0.2,
                depth=2,
                res_mode=0,
            ),
            meta=ModelMeta(
                num_params=47_371_572,
                gmacs=352.93,
                flops_convention=(
                    "none: no paper reports FMUNet's size. For reference, the spec measured the authors' "
                    "code (demo config, class_num=2) at 47,332,680 parameters and 352.0 GMACs (fvcore, "
                    "1×64×128×128)"
                ),
                reference_params_demo=47_332_680,
                reference_gmacs_fvcore=352.0,
                reference_note=(
                    "No paper reports FMUNet's size. reference_* are the spec's measurements of the authors' "
                    "code (demo config, class_num=2, fvcore MACs at 1×64×128×128)."
                ),
            ),
            aliases={"fmunet-vf1k": "vf1k"},
            spec=SpecFields(
                builder=_create_fmunet,
                weights=(
                    _vf_weights(
                        "fmunet-vf1k",
                        "Volume Fusion (5-class pseudo-segmentation) on AbdomenCT-1K (2024/25 MIS-FM "
                        "release)",
                        # The cfg loads fmunet_abd1k_volf.pt, the README table says abk1k: first found wins.
                        url=f"{_DRIVE_FOLDER_2024}#fmunet_abd1k_volf.pt,fmunet_abk1k_volf.pt",
                        file="fmunet_abd1k_volf.pt",
                        notes="2024/25 release: file fmunet_abd1k_volf.pt (the README table spells it "
                        "fmunet_abk1k_volf.pt) in the shared Google Drive folder of the MIS-FM README. No "
                        "digest is published upstream.",
                    ),
                ),
                default_tag="vf1k",
                head_keys=tuple(f"out_layers.{i}.2." for i in range(4)),
                first_conv="project",
                param_groups=_FMU_GROUPS,
                feature_info=_FMU_FEATURES,
                encoder_prefixes=("project.", "encoder."),
                description=(
                    "FMUNet: the 'modified 3D U-Net' released with MIS-FM — five levels (32–512 channels) of "
                    "residual pre-activated convolutions (InstanceNorm → LeakyReLU → conv), strided-conv "
                    "downsampling, 1×1-conv + trilinear upsampling, and 3×3×3 output heads at four scales; "
                    "pretrained with Volume Fusion on AbdomenCT-1K. The default head has 5 classes, as in "
                    "the released weights."
                ),
                results_md=_FMUNET_RESULTS_MD,
                notes=(
                    "FMUNet is not in the MIS-FM paper; it is the 'modified 3D UNet' of the authors' 2025 "
                    "journal paper, released in the MIS-FM repo (net/fmunet.py, identical to PyMIC's).",
                    "Its heads are 3×3×3 convs (not pointwise as PCT-Net's); out_layers.1-3 are built and "
                    "loaded even when deep_supervision=False.",
                    "num_classes=5 for the released weights is inferred from the Volume Fusion pretext task "
                    "(K=4); the checkpoint was not inspected.",
                    "weights_load_mode='encoder' in the reference keeps project.*/encoder.* keys: "
                    "encoder_prefixes.",
                    "head_keys name only the class-dependent convs (out_layers.i.2), so a new num_classes "
                    "keeps the heads' pretrained InstanceNorm affine — what PyMIC's shape-filtered loading "
                    "does.",
                    _UNSPECIFIED_PREPROCESSING_NOTE,
                ),
                limitations=(
                    "Spatial size must be divisible by 16 on each axis (res_mode 0); pad or use sliding "
                    "windows.",
                    "The released checkpoint was not inspected (Google Drive folder, no digest, file name "
                    "differs between README and config).",
                    "Intensity normalisation of the pretraining is undocumented; a mismatch degrades "
                    "transfer.",
                ),
            ),
        ),
    ],
)
