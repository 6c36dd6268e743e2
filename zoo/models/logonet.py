"""ULKANet and LoGoNet (Karimi Monsefi et al., "Masked LoGoNet", KDD 2024).

ULKANet is a 3D U-shaped network whose encoder stages are VAN-style blocks built on
large-kernel attention (LKA); LoGoNet runs one ULKANet on the whole cube and eight
smaller, separately weighted ULKANets on the eight sub-cubes of a 2×2×2 split, puts the
local outputs back in place, sums them with the global output and classifies each voxel.

The authors' code was not available to us: every layer the paper leaves open is a
decision of ours, marked ``[choice]`` below and listed in the model cards' notes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers import check_input
from zoo.layers.model_api import ModelApiMixin, checkpointed
from zoo.layers.tracing import channels_last_3d

__all__ = ["ULKANet", "LoGoNet", "split_subcubes", "merge_subcubes"]


# ---------------------------------------------------------------------------------------
# helpers


def _grid_side(n_cubes: int) -> int:
    side = round(n_cubes ** (1 / 3))
    if side**3 != n_cubes or side < 1:
        raise ValueError(f"n_cubes must be a perfect cube (8 = 2×2×2 in the paper), got {n_cubes}")
    return side


def split_subcubes(x: torch.Tensor, grid: int) -> list[torch.Tensor]:
    """Cut a volume into ``grid³`` non-overlapping blocks, in raster order over (D, H, W).

    Args:
        x: (B, C, D, H, W), each spatial side divisible by ``grid``.
        grid: blocks per axis (2 for the paper's N = 8).

    Returns:
        ``grid³`` tensors of shape (B, C, D/grid, H/grid, W/grid); index
        ``(i·grid + j)·grid + k`` is block (i, j, k) along (D, H, W).
    """
    d, h, w = (s // grid for s in x.shape[2:])
    return [
        x[:, :, i * d : (i + 1) * d, j * h : (j + 1) * h, k * w : (k + 1) * w]
        for i in range(grid)
        for j in range(grid)
        for k in range(grid)
    ]


def merge_subcubes(parts: Sequence[torch.Tensor], grid: int) -> torch.Tensor:
    """Put ``grid³`` blocks back in their places: the inverse of :func:`split_subcubes`.

    Args:
        parts: ``grid³`` tensors (B, C, d, h, w) in the raster order of :func:`split_subcubes`.
        grid: blocks per axis.

    Returns:
        (B, C, grid·d, grid·h, grid·w).
    """
    if len(parts) != grid**3:
        raise ValueError(f"expected {grid**3} sub-cubes, got {len(parts)}")
    rows = [
        torch.cat(
            [torch.cat(parts[(i * grid + j) * grid : (i * grid + j + 1) * grid], dim=4) for j in range(grid)],
            dim=3,
        )
        for i in range(grid)
    ]
    return torch.cat(rows, dim=2)


# ---------------------------------------------------------------------------------------
# encoder blocks


class PatchEmbed3d(nn.Module):
    """Strided convolution + BatchNorm (the paper's Alg. 1), kept as a 5D map.

    The paper flattens to tokens here and reshapes back inside each block; staying 5D
    computes the same thing without the round trips.
    """

    def __init__(self, in_chans: int, dim: int, patch_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, dim, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.BatchNorm3d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A one-channel input is as much NCDHW as NDHWC, so the first convolution returns NCDHW:
        # switch to channels-last here, where the map is small, not after every block.
        return self.norm(channels_last_3d(self.proj(x)))


class LargeKernelAttention3d(nn.Module):
    """LKA (Eq. 2–3): depth-wise conv → dilated depth-wise conv → 1×1×1 conv, gating the input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        # [choice] VAN's kernels lifted to 3D: DW 5³, then DW 7³ dilation 3 (receptive field 21³).
        self.conv0 = nn.Conv3d(dim, dim, 5, padding=2, groups=dim)
        self.conv_spatial = nn.Conv3d(dim, dim, 7, padding=9, dilation=3, groups=dim)
        self.conv1 = nn.Conv3d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv1(self.conv_spatial(self.conv0(x)))


class SpatialAttention3d(nn.Module):
    """VAN's attention wrapper: 1×1 → GELU → LKA → 1×1, plus its own shortcut."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj_1 = nn.Conv3d(dim, dim, 1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = LargeKernelAttention3d(dim)
        self.proj_2 = nn.Conv3d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj_2(self.spatial_gating_unit(self.activation(self.proj_1(x))))


class Mlp3d(nn.Module):
    """Alg. 3: 1×1 expand → GELU → DW 3³ → GELU → 1×1 project.

    Alg. 3 declares the depth-wise conv with the input width and never applies ``fc2``;
    we read both as typos (the block must return ``dim`` channels).
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv3d(dim, hidden, 1)
        self.dwconv = nn.Conv3d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Conv3d(hidden, dim, 1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.act(self.fc1(x)))))


class LKABlock3d(nn.Module):
    """One "transformer-like" LKA module (Alg. 2): BN → attention, BN → MLP, both residual."""

    def __init__(
        self, dim: int, mlp_ratio: float, attn_proj: bool = True, layer_scale_init: float | None = 1e-2
    ) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm3d(dim)
        # [choice] VAN's 1×1/GELU/1×1 wrapper around LKA by default; Eq. 2–3 show the bare LKA.
        self.attn = SpatialAttention3d(dim) if attn_proj else LargeKernelAttention3d(dim)
        self.norm2 = nn.BatchNorm3d(dim)
        self.mlp = Mlp3d(dim, int(dim * mlp_ratio))
        # [choice] VAN's per-channel layer scale (init 1e-2) on both residual branches. Without
        # it the wrapper's own shortcut doubles the signal every block once BN runs on its
        # initial statistics, and the 24-block stage of the Large size overflows to NaN.
        if layer_scale_init is None:
            self.layer_scale_1 = self.layer_scale_2 = None
        else:
            self.layer_scale_1 = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
            self.layer_scale_2 = nn.Parameter(torch.full((dim,), float(layer_scale_init)))

    @staticmethod
    def _scaled(branch: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        # In place: the branch output is a fresh tensor whose backward does not need it.
        return branch if scale is None else branch.mul_(scale.view(1, -1, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [choice] pre-norm residuals (VAN); Alg. 2 taken literally would add to BN(x) instead of x.
        x = x + self._scaled(self.attn(self.norm1(x)), self.layer_scale_1)
        return x + self._scaled(self.mlp(self.norm2(x)), self.layer_scale_2)


class ULKAStage(nn.Module):
    """Encoder block: patch embedding → ``depth`` LKA modules → LayerNorm over channels."""

    def __init__(
        self,
        in_chans: int,
        dim: int,
        depth: int,
        mlp_ratio: float,
        patch_size: int,
        stride: int,
        attn_proj: bool,
        layer_scale_init: float | None = 1e-2,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed3d(in_chans, dim, patch_size, stride)
        self.blocks = nn.Sequential(
            *[LKABlock3d(dim, mlp_ratio, attn_proj, layer_scale_init) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.blocks and getattr(self.blocks[0], "grad_checkpointing", False):
            for blk in self.blocks:  # what nn.Sequential runs, each block recomputed in backward
                x = checkpointed(blk, x)
        else:
            x = self.blocks(x)
        # Channels-last out: for a channels-last input (the models' own layout) this is free.
        x = self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
        return channels_last_3d(x)


# ---------------------------------------------------------------------------------------
# decoder blocks


class ConvBNLReLU3d(nn.Module):
    """The paper's "Conv" module: Conv3d → BatchNorm3d → LeakyReLU."""

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        # [choice] kernel 3³ (pad 1) and LeakyReLU slope 0.01: the paper gives neither.
        self.conv = nn.Conv3d(in_chans, out_chans, 3, padding=1)
        self.norm = nn.BatchNorm3d(out_chans)
        self.act = nn.LeakyReLU(0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class ULKADecoderBlock(nn.Module):
    """The paper's "Dec" block: three Conv modules on [previous, skip] (concatenated), then ×2 upsampling."""

    def __init__(self, in_chans: int, out_chans: int, upsample: str = "trilinear") -> None:
        super().__init__()
        self.convs = nn.Sequential(
            ConvBNLReLU3d(in_chans, out_chans),
            ConvBNLReLU3d(out_chans, out_chans),
            ConvBNLReLU3d(out_chans, out_chans),
        )
        # [choice] trilinear ×2 by default (the paper only says "×2"); skips are concatenated (Fig. 1b
        # draws both + and ×).
        if upsample == "trilinear":
            self.up = None
        elif upsample == "deconv":
            self.up = nn.ConvTranspose3d(out_chans, out_chans, 2, stride=2)
        else:
            raise ValueError(f"upsample must be 'trilinear' or 'deconv', got {upsample!r}")

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        # Small maps take PyTorch's native convolution, which returns NCDHW; come back to
        # channels-last so that the large maps further up are convolved by oneDNN in NDHWC.
        x = self.convs(channels_last_3d(x))
        if self.up is None:
            return F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
        return self.up(x)


class ConvBNGELU3d(nn.Module):
    """Conv3d 3³ → BatchNorm3d → GELU: each ULKANet's output block, and LoGoNet's fusion block."""

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        # [choice] kernel 3³: the paper names the layers, not their kernel.
        self.conv = nn.Conv3d(in_chans, out_chans, 3, padding=1)
        self.norm = nn.BatchNorm3d(out_chans)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


# ---------------------------------------------------------------------------------------
# models


def _check_img_size(img_size: int | Sequence[int], multiple: int, what: str) -> tuple[int, int, int]:
    img_size = (int(img_size),) * 3 if isinstance(img_size, int) else tuple(int(s) for s in img_size)
    if len(img_size) != 3 or any(s <= 0 or s % multiple for s in img_size):
        raise ValueError(f"{what}: img_size must be 3 positive sides divisible by {multiple}, got {img_size}")
    return img_size


class ULKANet(ModelApiMixin, nn.Module):
    """ULKANet: LKA encoder stages + convolutional decoder (one block more than stages).

    Encoder stage ``i`` halves the resolution (the first one quarters it), decoder block
    ``k`` takes the previous block's map concatenated with the matching stage's map, runs
    three Conv–BN–LeakyReLU modules and doubles the resolution; an output block
    (Conv3d–BN–GELU, ``proj``) and, unless ``num_classes`` is None, a 1×1×1 ``classifier``
    follow. With ``num_classes=None`` it is the feature extractor that LoGoNet runs nine times.

    Args:
        in_chans: input channels.
        num_classes: output classes (background included); None returns the features.
        img_size: the ROI the model is meant for (D, H, W). Any input whose sides are
            multiples of ``2 ** (len(dims) + 1)`` (32 for four stages) also runs.
        dims: encoder stage widths (Table 9 "dim").
        depths: LKA modules per stage (Table 9 "L").
        mlp_ratios: MLP expansion per stage (Table 9 "mlpRatio").
        decoder_dims: output width of each decoder block, bottleneck first
            (``len(dims) + 1`` entries; the last one is also the width of ``proj``).
        attn_proj: wrap LKA in VAN's 1×1 → GELU → LKA → 1×1 with its own shortcut.
        upsample: ``"trilinear"`` (parameter-free) or ``"deconv"`` (ConvTranspose3d 2³, stride 2).
        layer_scale_init: initial value of the per-channel scales on the LKA blocks' residual
            branches (VAN's 1e-2); None removes them.

    Shapes:
        (B, in_chans, D, H, W) → (B, num_classes, D, H, W), or (B, decoder_dims[-1], D, H, W)
        when ``num_classes`` is None.

    Note:
        BatchNorm is the only norm, as in the paper, which trained with 1–2 crops per GPU;
        for small-batch fine-tuning use ≥ 2 crops per step, SyncBN, or frozen BN statistics.

    Example:
        >>> net = ULKANet(in_chans=1, num_classes=14).eval()
        >>> net(torch.randn(1, 1, 64, 64, 64)).shape
        torch.Size([1, 14, 64, 64, 64])
    """

    def __init__(
        self,
        in_chans: int = 1,
        num_classes: int | None = 14,
        img_size: int | Sequence[int] = (96, 96, 96),
        dims: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (3, 4, 6, 3),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        decoder_dims: Sequence[int] = (240, 240, 224, 64, 48),
        attn_proj: bool = True,
        upsample: str = "trilinear",
        layer_scale_init: float | None = 1e-2,
    ) -> None:
        super().__init__()
        n = len(dims)
        if not (len(depths) == len(mlp_ratios) == n >= 1):
            raise ValueError(
                f"dims, depths, mlp_ratios must have equal length, got {dims}, {depths}, {mlp_ratios}"
            )
        if len(decoder_dims) != n + 1:
            raise ValueError(
                f"decoder_dims needs {n + 1} entries (one per stage + bottleneck), got {decoder_dims}"
            )
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.size_multiple = 2 ** (n + 1)
        self.img_size = _check_img_size(img_size, self.size_multiple, type(self).__name__)
        self.out_chans = decoder_dims[-1]

        # [choice] VAN's overlapping patch embeddings: 7³ stride 4, then 3³ stride 2 (total stride 2^(n+1)).
        self.encoder = nn.ModuleList(
            ULKAStage(
                in_chans if i == 0 else dims[i - 1],
                dims[i],
                depths[i],
                mlp_ratios[i],
                patch_size=7 if i == 0 else 3,
                stride=4 if i == 0 else 2,
                attn_proj=attn_proj,
                layer_scale_init=layer_scale_init,
            )
            for i in range(n)
        )
        # Block 0 sits on the bottleneck, block k (1..n-1) takes the skip of stage n-1-k, block n none.
        dec_in = (
            [dims[-1]] + [decoder_dims[k - 1] + dims[n - 1 - k] for k in range(1, n)] + [decoder_dims[n - 1]]
        )
        self.decoder = nn.ModuleList(
            ULKADecoderBlock(c_in, c_out, upsample) for c_in, c_out in zip(dec_in, decoder_dims, strict=True)
        )
        # [choice] an output block closing every ULKANet: the paper's FLOP counts need one at full resolution.
        self.proj = ConvBNGELU3d(self.out_chans, self.out_chans)
        self.classifier = nn.Conv3d(self.out_chans, num_classes, 1) if num_classes else None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of ``proj``: (B, decoder_dims[-1], D, H, W). The input is not validated."""
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        n = len(skips)
        x = self.decoder[0](skips[-1])
        for k in range(1, n):
            x = self.decoder[k](x, skips[n - 1 - k])
        return self.proj(self.decoder[n](x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``classifier`` on the features; ``pre_logits`` (or no classifier): the features."""
        return (x if pre_logits or self.classifier is None else self.classifier(x)).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_chans, type(self).__name__, multiple=self.size_multiple)
        # Channels-last inside: oneDNN convolves NDHWC without reordering every activation.
        return self.forward_head(self.forward_features(channels_last_3d(x)))

    # ---- timm's API (zoo.layers.model_api)

    def _dims(self) -> tuple[int, ...]:
        return tuple(stage.norm.normalized_shape[0] for stage in self.encoder)

    def _api_parts(self) -> dict:
        return _parts(self._dims(), 0, is_logonet=False)[0]

    def _api_features(self) -> list[dict]:
        return [dict(f) for f in _parts(self._dims(), 0, is_logonet=False)[1]]

    def _api_head_keys(self) -> tuple[str, ...]:
        return ("classifier.",) if self.classifier is not None else ()

    def _api_checkpoint_units(self) -> list[nn.Module]:
        return [blk for stage in self.encoder for blk in stage.blocks]


class LoGoNet(ModelApiMixin, nn.Module):
    """LoGoNet: one global ULKANet + ``n_cubes`` local ULKANets with separate weights, fused.

    The input is cut into a g×g×g grid of blocks (g³ = n_cubes; the paper's N = 8 gives
    B = side / 2). Local net ``i`` always sees block ``i`` in raster order over (D, H, W).
    The local feature maps are put back in place, added to the global map, and pass
    through Conv3d–BN–GELU (``proj``) and the 1×1×1 ``classifier``.

    Args:
        in_chans: input channels.
        num_classes: output classes (background included).
        img_size: the ROI the model is meant for (paper: 96³).
        dims, depths, mlp_ratios, decoder_dims: the global ULKANet (see :class:`ULKANet`).
        local_dims, local_depths, local_mlp_ratios, local_decoder_dims: each local ULKANet;
            ``local_decoder_dims[-1]`` must equal ``decoder_dims[-1]`` (the maps are summed).
        n_cubes: number of local sub-cubes, a perfect cube.
        attn_proj, upsample, layer_scale_init: as in :class:`ULKANet`, for all nine nets.

    Shapes:
        (B, in_chans, D, H, W) → (B, num_classes, D, H, W); every side must be a multiple of
        lcm(2^(len(dims)+1), g · 2^(len(local_dims)+1)), which is 32 for the paper's nets.

    Note:
        Each local net always sees the same block of the window, so the model is not
        translation-equivariant: run it on windows of the size it was trained with (96³).

    Example:
        >>> net = LoGoNet(in_chans=1, num_classes=14).eval()
        >>> net(torch.randn(1, 1, 64, 64, 64)).shape
        torch.Size([1, 14, 64, 64, 64])
    """

    def __init__(
        self,
        in_chans: int = 1,
        num_classes: int = 14,
        img_size: int | Sequence[int] = (96, 96, 96),
        dims: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (3, 4, 6, 3),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        decoder_dims: Sequence[int] = (240, 240, 224, 64, 48),
        local_dims: Sequence[int] = (64, 128),
        local_depths: Sequence[int] = (3, 4),
        local_mlp_ratios: Sequence[float] = (8, 8),
        local_decoder_dims: Sequence[int] = (80, 48, 48),
        n_cubes: int = 8,
        attn_proj: bool = True,
        upsample: str = "trilinear",
        layer_scale_init: float | None = 1e-2,
    ) -> None:
        super().__init__()
        if local_decoder_dims[-1] != decoder_dims[-1]:
            raise ValueError(
                "local and global maps are summed, so local_decoder_dims[-1] must equal decoder_dims[-1]; "
                f"got {local_decoder_dims[-1]} and {decoder_dims[-1]}"
            )
        if not num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.grid = _grid_side(n_cubes)
        self.size_multiple = math.lcm(2 ** (len(dims) + 1), self.grid * 2 ** (len(local_dims) + 1))
        self.img_size = _check_img_size(img_size, self.size_multiple, type(self).__name__)
        common = dict(
            in_chans=in_chans,
            num_classes=None,
            attn_proj=attn_proj,
            upsample=upsample,
            layer_scale_init=layer_scale_init,
        )
        self.global_net = ULKANet(
            img_size=self.img_size,
            dims=dims,
            depths=depths,
            mlp_ratios=mlp_ratios,
            decoder_dims=decoder_dims,
            **common,
        )
        local_size = tuple(s // self.grid for s in self.img_size)
        self.local_nets = nn.ModuleList(
            ULKANet(
                img_size=local_size,
                dims=local_dims,
                depths=local_depths,
                mlp_ratios=local_mlp_ratios,
                decoder_dims=local_decoder_dims,
                **common,
            )
            for _ in range(n_cubes)
        )
        self.proj = ConvBNGELU3d(decoder_dims[-1], decoder_dims[-1])
        self.classifier = nn.Conv3d(decoder_dims[-1], num_classes, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Global + re-assembled local maps, (B, decoder_dims[-1], D, H, W); input not validated."""
        # [choice] raster order over (D, H, W). A plain loop: the local nets have different weights.
        cubes = split_subcubes(x, self.grid)
        parts = [net.forward_features(cube) for net, cube in zip(self.local_nets, cubes, strict=True)]
        return self.global_net.forward_features(x) + merge_subcubes(parts, self.grid)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The fusion block ``proj``, then ``classifier``; ``pre_logits``: the output of ``proj``."""
        x = self.proj(x)
        return x if pre_logits else self.classifier(x).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_chans, type(self).__name__, multiple=self.size_multiple)
        return self.forward_head(self.forward_features(channels_last_3d(x)))  # see ULKANet

    # ---- timm's API (zoo.layers.model_api): stage i of all nine nets is one part

    def _api_parts(self) -> dict:
        n_local = len(self.local_nets[0].encoder) if len(self.local_nets) else 0
        return _parts(self.global_net._dims(), n_local, is_logonet=True, n_cubes=len(self.local_nets))[0]

    def _api_features(self) -> list[dict]:
        return [dict(f) for f in _parts(self.global_net._dims(), 0, is_logonet=True)[1]]

    def _api_head_keys(self) -> tuple[str, ...]:
        return ("classifier.",)

    def _api_checkpoint_units(self) -> list[nn.Module]:
        nets = [self.global_net, *self.local_nets]
        return [blk for net in nets for blk in net._api_checkpoint_units()]


# ---------------------------------------------------------------------------------------
# registrations

from zoo._registry import ModelMeta, PaperInfo, SpecFields, Variant, register_family  # noqa: E402

_PAPER = PaperInfo(
    title="Masked LoGoNet: Fast and Accurate 3D Image Analysis for Medical Domain",
    authors=(
        "Amin Karimi Monsefi, Payam Karisani, Mengxi Zhou, Stacey Choi, Nathan Doble, Heng Ji, "
        "Srinivasan Parthasarathy, Rajiv Ramnath"
    ),
    venue="KDD 2024 (30th ACM SIGKDD Conference on Knowledge Discovery and Data Mining)",
    year=2024,
    url="https://arxiv.org/abs/2402.06190",
    bibtex="""@inproceedings{karimimonsefi2024maskedlogonet,
  title     = {Masked {LoGoNet}: Fast and Accurate {3D} Image Analysis for Medical Domain},
  author    = {Karimi Monsefi, Amin and Karisani, Payam and Zhou, Mengxi and Choi, Stacey and
               Doble, Nathan and Ji, Heng and Parthasarathy, Srinivasan and Ramnath, Rajiv},
  booktitle = {Proceedings of the 30th ACM SIGKDD Conference on Knowledge Discovery and Data Mining},
  year      = {2024},
  eprint    = {2402.06190},
  archivePrefix = {arXiv}
}""",
    code_url="https://github.com/aminK8/Masked-LoGoNet",
)

_ARGS = dict(in_chans=1, num_classes=14, img_size=(96, 96, 96), mlp_ratios=(8, 8, 4, 4))
# Table 9 gives dims / depths / MLP ratios; the decoder widths are our fit to Table 10 (see notes).
_NORMAL = dict(dims=(64, 128, 256, 512), depths=(3, 4, 6, 3), decoder_dims=(240, 240, 224, 64, 48))
_LARGE = dict(dims=(96, 192, 384, 768), depths=(3, 3, 24, 3), decoder_dims=(360, 360, 336, 96, 64))
_NORMAL_LOCAL = dict(
    local_dims=(64, 128), local_depths=(3, 4), local_mlp_ratios=(8, 8), local_decoder_dims=(80, 48, 48)
)
_LARGE_LOCAL = dict(
    local_dims=(96, 192), local_depths=(3, 3), local_mlp_ratios=(8, 8), local_decoder_dims=(120, 72, 64)
)

_FLOPS_CONVENTION = (
    "MACs (one per multiply-add) of the conv/linear layers, batch 1, one-channel 96³ input: our "
    "FlopCounterMode total / 2. The paper's Table 1/10 'FLOPs' are MACs counted thop-style (its "
    "MONAI baselines reproduce that way: SegResNetVAE 15.51 vs 15.50 G; UNETR-32 265.0 vs 264.59 G "
    "and SwinUNETR-48 ≈328 vs 329.84 G once thop's 8× ConvTranspose3d count and uncounted attention "
    "matmuls are applied); for these trilinear-upsampling nets thop adds only BatchNorm (≈0.5%)."
)

_NO_WEIGHTS = (
    "The authors have not published LoGoNet or ULKANet checkpoints (the paper links only its code "
    "repository, and its decoder widths are not stated), so no pretrained weights exist for this entry. "
    "What exists: the architecture, reconstructed from the paper and sized to its parameter/FLOP table, "
    "and loading of your own checkpoint of this implementation with checkpoint_path= "
    "(flat state_dict, Lightning {'state_dict': …} with or without 'model.', or DDP 'module.')."
)

_DESCRIPTION = {
    "ulkanet": (
        "ULKANet is the feature extractor of LoGoNet used on its own: a 3D U-shaped segmentation network "
        "whose four encoder stages stack VAN-style large-kernel-attention (LKA) blocks (depth-wise 5³ → "
        "dilated depth-wise 7³ → 1×1×1 gating) with BatchNorm and a convolutional MLP, and whose five "
        "decoder blocks (three Conv–BN–LeakyReLU each, ×2 upsampling) take concatenated skips. The paper "
        "uses it as the single-extractor ablation baseline of LoGoNet."
    ),
    "logonet": (
        "LoGoNet (Local and Global Network) runs one ULKANet on the whole 96³ cube and eight further "
        "ULKANets, each with its own weights and only two encoder stages, on the eight 48³ sub-cubes; "
        "the local maps are put back in place, summed with the global map, and a Conv3d–BN–GELU block "
        "and a 1×1×1 classifier give per-voxel logits."
    ),
}
_SSL = (
    " The paper pretrains it with 'masked multi-clusterer' self-supervision: chains of consecutive "
    "slices are masked SimMIM-style with random patch sizes, and a temporary head learns to predict, "
    "for every masked slice, the cluster that each of 80 MiniBatchKMeans clusterers (K drawn from "
    "80–500, fit on unmasked slices) assigns to it, with a temperature-0.1 softmax cross-entropy; "
    "that head is dropped for fine-tuning."
)


def _md_table(title: str, header: str | tuple[str, ...], rows: tuple, footer: str) -> str:
    """A Markdown table; the header and a row's cells are a tuple or one space-separated string."""
    header = header.split() if isinstance(header, str) else header
    lines = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, cells in rows:
        cells = cells.split() if isinstance(cells, str) else cells
        lines.append("| " + " | ".join((name, *cells)) + " |")
    return "\n".join([*lines, "", footer])


_BTCV = _md_table(
    "**BTCV, Dice per organ (paper Tables 2/16)**",
    "Model Spl RKid LKid Gall Eso Liv Sto Aor IVC Veins Pan Rad Lad AVG",
    (
        ("UNETR", ".912 .940 .938 .693 .690 .954 .754 .891 .830 .703 .734 .660 .577 .790"),
        ("SegResNetVAE", ".941 .938 .933 .670 .718 .955 .745 .892 .848 .695 .783 .633 .528 .791"),
        ("nnUNet", ".859 .944 .924 .796 .755 .960 .781 .894 .849 .756 .776 .675 .663 .818"),
        ("Attention U-Net", ".955 .936 .930 .735 .739 .964 .770 .898 .852 .753 .763 .695 .688 .821"),
        ("DiNTS Instance", ".935 .942 .938 .770 .769 .962 .743 .909 .857 .759 .782 .641 .691 .823"),
        ("UNet++", ".934 .931 .925 .810 .715 .961 .786 .900 .846 .747 .829 .685 .679 .827"),
        ("SwinUNETR", ".952 .947 .945 .790 .770 .963 .755 .901 .850 .771 .760 .702 .659 .828"),
        ("DiNTS Search", ".937 .934 .930 .788 .770 .960 .774 .904 .866 .751 .813 .670 .711 .831"),
        ("ULKANet", ".954 .936 .938 .761 .782 .964 .814 .885 .831 .690 .786 .690 .684 .824"),
        ("LoGoNet", ".958 .949 .947 .818 .786 .969 .880 .912 .865 .769 .821 .726 .698 .854"),
        ("ULKANet + PRE", ".954 .940 .933 .836 .794 .966 .853 .899 .854 .760 .823 .703 .734 .850"),
        ("LoGoNet + PRE", ".961 .947 .944 .866 .845 .970 .898 .936 .885 .791 .838 .738 .757 .875"),
        ("ULKANet L", ".948 .938 .933 .832 .789 .967 .832 .888 .862 .744 .784 .720 .690 .841"),
        ("LoGoNet L", ".960 .944 .922 .847 .781 .971 .840 .917 .872 .768 .841 .742 .710 .855"),
        ("ULKANet L + PRE", ".960 .943 .935 .869 .863 .970 .914 .891 .861 .806 .850 .734 .761 .874"),
        ("LoGoNet L + PRE", ".986 .963 .954 .921 .859 .969 .911 .954 .871 .805 .846 .759 .784 .891"),
    ),
    '"+ PRE": initialised from the paper\'s masked multi-clusterer pretraining on 4,500 unlabeled CT '
    "volumes. Mean of 5 runs; sliding-window inference, ROI 96³, overlap 0.5.",
)

_MSD = _md_table(
    "**MSD, Dice (paper Table 3; Normal LoGoNet only)**",
    ("Model", "Colon", "Spleen", "Hepatic", "Pancreas", "Lung", "Cardiac", "AVG"),
    (
        ("UNETR", ".677 .969 .715 .699 .730 .953 .790"),
        ("SegResNetVAE", ".742 .968 .745 .740 .765 .951 .818"),
        ("nnUNet", ".736 .977 .742 .742 .816 .958 .829"),
        ("Attention U-Net", ("–", "–", "–", "–", "–", "–", "– (out of memory at 35 GB)")),
        ("DiNTS Instance", ".768 .979 .731 .742 .790 .963 .829"),
        ("UNet++", ".553 .975 .752 .760 .753 .961 .792"),
        ("SwinUNETR", ".695 .967 .737 .738 .763 .957 .810"),
        ("DiNTS Search", ".776 .980 .749 .749 .768 .960 .830"),
        ("LoGoNet", ".786 .980 .757 .798 .802 .951 .846"),
        ("LoGoNet + PRE", ".801 .980 .779 .833 .828 .958 .863"),
    ),
    "Mean of 2 runs.",
)

_COST = _md_table(
    '**Cost (paper Table 10; "FLOPs" are MACs at a 1×96³ crop, times from BTCV)**',
    ("Model", "# Param", "FLOPs (G)", "Inference Time (s)", "Training Time (s)"),
    (
        ("SegResNetVAE", ("3.9 M", "15.50", "1.73", "0.96")),
        ("SwinUNETR", ("62.2 M", "329.84", "6.16", "1.98")),
        ("UNETR", ("101.7 M", "264.59", "5.89", "1.83")),
        ("UNet++", ("84.6 M", "4229.20", "11.74", "2.82")),
        ("Attention U-Net", ("64.1 M", "7984.21", "19.74", "3.70")),
        ("nnUNet", ("30.7 M", "1250.65", "2.87", "1.01")),
        ("DiNTS Search", ("74.1 M", "743.88", "6.33", "1.89")),
        ("DiNTS Instance", ("74.1 M", "743.88", "6.28", "1.87")),
        ("ULKANet", ("40.2 M", "109.94", "3.45", "1.01")),
        ("LoGoNet", ("67.5 M", "246.96", "5.38", "1.63")),
        ("ULKANet L", ("121.20 M", "218.70", "5.06", "1.49")),
        ("LoGoNet L", ("172.54 M", "487.65", "14.49", "2.29")),
    ),
    "Inference time: per BTCV case on one GPU (mean of 5 runs); training time: per epoch on 16 GPUs "
    "with 96³ crops.",
)

_RESULTS = "\n\n".join((_BTCV, _MSD, _COST))

_NOTES_COMMON = (
    "Everything the paper leaves open is our choice; the authors' code was not available to us, so "
    "an official checkpoint is not expected to load (strict loading names the mismatching keys).",
    "LKA kernels (not in the paper): VAN's lifted to 3D, depth-wise 5³ → depth-wise 7³ dilation 3 → "
    "1×1×1 (receptive field 21³).",
    "Attention wrapper: VAN's 1×1 → GELU → LKA → 1×1 with its own shortcut (attn_proj=True), as in the "
    "VAN paper the authors cite for LKA; Eq. 2–3 show only the bare LKA.",
    "Patch embeddings (not in the paper): VAN's 7³ stride 4 for stage 1, 3³ stride 2 after, so the "
    "total stride is 32 and matches the five ×2 decoder blocks.",
    "LKA block residuals: x + Attn(BN(x)), then x + MLP(BN(x)) (pre-norm, as VAN); Alg. 2 literally "
    "overwrites x with BN(x) before adding, read as pseudo-code shorthand.",
    "MLP as Alg. 3 intends: fc1 → GELU → depth-wise 3³ → GELU → fc2; the listing's depth-wise width "
    "and its never-applied fc2 are read as typos. No drop path (the paper has none).",
    "Layer scale (not in the paper): VAN's per-channel scale, initialised to 1e-2, on both residual "
    "branches of every LKA block (2·C parameters per block, about 0.02 % of the model). Without it the "
    "Large size's 24-block stage overflows to NaN at initialisation; layer_scale_init=None removes it.",
    "Stage end: LayerNorm over channels (the paper's token LayerNorm), kept as a 5D map.",
    "Decoder Conv module (kernel and slope not given): Conv3d 3³ → BatchNorm3d → LeakyReLU(0.01); skips "
    "are concatenated (Fig. 1b draws both + and ×); upsampling is trilinear ×2, align_corners=False "
    "(upsample='deconv' gives ConvTranspose3d 2³/2).",
    "Output blocks: every ULKANet ends with Conv3d 3³ → BN → GELU at full resolution, and LoGoNet adds "
    "its fusion Conv3d 3³ → BN → GELU before the 1×1×1 classifier (kernels not given). Without a "
    "full-resolution block in each of the nine nets no decoder width we tried reaches Table 10's MACs.",
    "Decoder widths are not in the paper: they were fitted to Table 10. Search space: monotone "
    "non-increasing widths in multiples of 16, Large = 1.5 × Normal except the output width, output "
    "width 48 (Normal) / 64 (Large) shared by the global and local nets; criterion: least worst relative "
    "error over the eight published numbers (parameter errors weighted 5×). Result: global "
    "(240, 240, 224, 64, 48) / (360, 360, 336, 96, 64), local (80, 48, 48) / (120, 72, 64).",
    "Fit quality (ours vs paper): ULKANet 40.14 M / 108.72 G vs 40.2 M / 109.94 G; LoGoNet 67.47 M / "
    "253.30 G vs 67.5 M / 246.96 G; ULKANet-L 120.92 M / 212.83 G vs 121.20 M / 218.70 G; LoGoNet-L "
    "171.68 M / 474.44 G vs 172.54 M / 487.65 G.",
    "Training used BatchNorm everywhere with 1–2 crops per GPU on 16 GPUs (per-GPU BN, no SyncBN is "
    "mentioned); BatchNorm is kept as the only norm so the layout stays the paper's.",
    "The paper writes '0.5 mm overlapping' for sliding-window inference; it is an overlap fraction of 0.5.",
    "The abstract says the SSL 'combines masking and contrastive learning'; the method has no contrastive "
    "term, only cross-entropy on k-means pseudo-labels.",
)
_NOTES_LOGONET = (
    "Local nets: the first two stages of the same size (Normal (3, 64, 8), (4, 128, 8); Large (3, 96, 8), "
    "(3, 192, 8)) with 3 decoder blocks; eight separate weight sets (the paper's parameter arithmetic only "
    "works unshared); sub-cube i is block i in raster order over (D, H, W).",
    "The paper's sub-cube side B = ∛(S·H·W/N) assumes a cube; we halve each axis, which equals B for "
    "cubes and stays defined for other shapes.",
)
_LIMITATIONS_COMMON = (
    "No pretrained weights exist; the paper's masked multi-clusterer pretraining head (PREHEAD) and "
    "pipeline are not part of this entry.",
    "A reconstruction: layer-for-layer equality with the authors' network is not established (no code "
    "or checkpoint to compare with), only the paper's parameter and MAC totals.",
    "BatchNorm throughout, trained at batch 1–2 per GPU: for small single-GPU fine-tuning use ≥2 crops "
    "per step, SyncBN across GPUs, or frozen BN statistics.",
    "Every spatial side must be a multiple of 32; whole volumes go through sliding-window inference "
    "with the training ROI (96³, overlap 0.5).",
)
_LIMITATIONS_LOGONET = (
    "Not translation-equivariant within a window: each local net always sees the same octant of the "
    "ROI, so run it on windows of the ROI it was trained with rather than fully convolutionally.",
)


def _create_ulkanet(**kwargs) -> ULKANet:
    return ULKANet(**kwargs)


def _create_logonet(**kwargs) -> LoGoNet:
    return LoGoNet(**kwargs)


def _parts(
    dims: tuple[int, ...], n_local_stages: int, is_logonet: bool, n_cubes: int = 8
) -> tuple[dict, tuple]:
    """param_groups and feature_info: stage i of all nine nets is one part; stem: the first patch embeds."""
    nets = ("global_net.", *(f"local_nets.{k}." for k in range(n_cubes))) if is_logonet else ("",)
    groups = {"stem": tuple(f"{n}encoder.0.patch_embed." for n in nets)}
    groups["encoder.0"] = tuple(f"{n}encoder.0.{m}." for n in nets for m in ("blocks", "norm"))
    for i in range(1, len(dims)):
        groups[f"encoder.{i}"] = tuple(f"{n}encoder.{i}." for n in (nets if i < n_local_stages else nets[:1]))
    fusion = ("proj.",) if is_logonet else ()
    groups["decoder"] = tuple(f"{n}{m}." for n in nets for m in ("decoder", "proj")) + fusion
    groups["head"] = ("classifier.",)
    # The global net's stages are the encoder maps (each local net sees one octant only).
    features = tuple(
        dict(module=f"{nets[0]}encoder.{i}", num_chs=c, reduction=4 * 2**i) for i, c in enumerate(dims)
    )
    return groups, features


def _variant(
    name: str,
    size: str,
    is_logonet: bool,
    num_params: int,
    gmacs: float,
    paper: tuple[int, float, float],
    aliases: tuple[str, ...] = (),
) -> Variant:
    """One row of the table below.

    Args:
        name: registry name; size: "N" (Normal) or "L" (Large); is_logonet: LoGoNet or ULKANet.
        num_params / gmacs: measured once (FlopCounterMode on the meta device, batch 1, 1×96³);
            tests re-measure them.
        paper: Table 10's parameters, MACs in G at 1×96³, inference seconds per BTCV case on one GPU.
        aliases: further names of the same configuration.
    """
    args = {**_ARGS, **(_LARGE if size == "L" else _NORMAL)}
    if is_logonet:
        args.update(_LARGE_LOCAL if size == "L" else _NORMAL_LOCAL, n_cubes=8)
        first_conv: str | tuple[str, ...] = ("global_net.encoder.0.patch_embed.proj",) + tuple(
            f"local_nets.{i}.encoder.0.patch_embed.proj" for i in range(8)
        )
        encoder_prefixes = ("global_net.encoder.",) + tuple(f"local_nets.{i}.encoder." for i in range(8))
    else:
        first_conv = "encoder.0.patch_embed.proj"
        encoder_prefixes = ("encoder.",)
    param_groups, feature_info = _parts(args["dims"], len(args.get("local_dims", ())), is_logonet)
    size_word = "Large" if size == "L" else "Normal"
    family_word = "logonet" if is_logonet else "ulkanet"
    return Variant(
        name,
        model_args=args,
        meta=ModelMeta(
            num_params=num_params,
            gmacs=gmacs,
            paper_params=paper[0],
            paper_gmacs=paper[1],
            paper_inference_s=paper[2],
            # Table 10's setting is the registered one: one 1×96³ crop, BTCV's 14 classes, eval.
            paper_setting=dict(input_size=(1, 96, 96, 96)),
            flops_convention=_FLOPS_CONVENTION,
            calibrated_to_paper=(
                "decoder_dims / local_decoder_dims and the output width were fitted to paper_params "
                "and paper_gmacs of all four sizes together (see notes)"
            ),
        ),
        aliases=dict.fromkeys(aliases),
        spec=SpecFields(
            builder=_create_logonet if is_logonet else _create_ulkanet,
            first_conv=first_conv,
            encoder_prefixes=encoder_prefixes,
            description=f"{_DESCRIPTION[family_word]} This is the {size_word} size (Table 9).{_SSL}",
            notes=_NOTES_COMMON + (_NOTES_LOGONET if is_logonet else ()),
            limitations=_LIMITATIONS_COMMON + (_LIMITATIONS_LOGONET if is_logonet else ()),
            param_groups=param_groups,
            feature_info=feature_info,
        ),
    )


register_family(
    "logonet",
    SpecFields(
        paper=_PAPER,
        weights=(),
        default_tag=None,
        input_size=(1, 96, 96, 96),
        head_keys=("classifier.",),
        no_weights_reason=_NO_WEIGHTS,
        results_md=_RESULTS,
        sliding_window=dict(roi_size=(96, 96, 96), overlap=0.5),
    ),
    [
        _variant(
            "ulkanet", "N", False, 40_142_958, 108.725, (40_200_000, 109.94, 3.45), aliases=("ulkanet-b",)
        ),
        _variant(
            "logonet", "N", True, 67_466_750, 253.299, (67_500_000, 246.96, 5.38), aliases=("logonet-b",)
        ),
        _variant("ulkanet-l", "L", False, 120_915_982, 212.829, (121_200_000, 218.70, 5.06)),
        _variant("logonet-l", "L", True, 171_682_510, 474.445, (172_540_000, 487.65, 14.49)),
    ],
)
