"""The Joint 2D/3D SSL network (ResNet-50 + deformable inter-slice attention): the architecture.

Registered, described and documented in :mod:`zoo.models.deformattn`; this module holds the
classes, and imports torchvision, only when a model is built.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from zoo.layers.model_api import ModelApiMixin, checkpointed
from zoo.layers.tracing import is_tracing

# The registration module lists these names for its lazy __getattr__; one list serves both.
# _MULTI_SCALE_DIMS, _FEATURE_INFO and _PARAM_GROUPS: the registry's data, read by the model API too.
from zoo.models.deformattn import _FEATURE_INFO, _MULTI_SCALE_DIMS, _NET_NAMES, _PARAM_GROUPS

__all__ = list(_NET_NAMES)

_MIN_SLICE_SIZE = 32  # below this, layer4 of the ResNet sees less than one stride-32 cell
_CPB_ROWS = 1 << 15  # rows per block of the position-bias MLP (2 MiB hidden activations)


# ---------------------------------------------------------------------------------------------
# helpers


def normalize_positions(pos: torch.Tensor) -> torch.Tensor:
    """Map positions ``0 … n-1`` along the last axis of length ``n`` to ``[-1, 1]``."""
    n = pos.shape[-1]
    return 2.0 * pos / max(n - 1, 1) - 1.0


def sample_along_sequence(feats: torch.Tensor, positions: torch.Tensor, corrected: bool) -> torch.Tensor:
    """Bilinear samples of ``feats`` at normalised sequence positions (zeros outside).

    Args:
        feats: ``(BG, C, L)`` grouped features.
        positions: ``(BG, M)`` positions in ``[-1, 1]`` (``align_corners=False`` convention).
        corrected: sample along ``L`` (deformable-attention ≥ 0.0.20). When False, reproduce
            0.0.18, which puts the position in grid_sample's x slot.

    Returns:
        ``(BG, C, M)`` sampled features.
    """
    zeros = torch.zeros_like(positions)
    # Quirk of deformable-attention 0.0.18 (corrected=False): the position goes to x, which indexes
    # the size-1 axis, and y = 0 reads the centre of L: every sample is that centre times 1 - |x| / 2.
    xy = (zeros, positions) if corrected else (positions, zeros)
    grid = torch.stack(xy, dim=-1)
    out = F.grid_sample(
        feats.unsqueeze(-1), grid.unsqueeze(-2), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out.squeeze(-1)


def _can_fold_bn(net: ResNet, x: torch.Tensor) -> bool:
    """Inference with a plain torchvision ResNet-50 layout: BatchNorm may be folded into the convs."""
    if torch.is_grad_enabled() or net.training or torch.jit.is_tracing():
        return False
    stages = (net.layer1, net.layer2, net.layer3, net.layer4)
    if any(s._forward_hooks or s._forward_pre_hooks for s in stages):
        return False  # the folded path never calls the stages: hooks (zoo.adapt.features_only) must see them
    blocks = [b for stage in stages for b in stage]
    return all(
        type(b) is Bottleneck
        and (b.downsample is None or (len(b.downsample) == 2 and isinstance(b.downsample[1], nn.BatchNorm2d)))
        for b in blocks
    ) and all(bn.running_var is not None for bn in net.modules() if isinstance(bn, nn.BatchNorm2d))


def _conv_bn(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d, relu: bool) -> torch.Tensor:
    """``bn(conv(x))`` (then ReLU) with the inference BN folded into the convolution."""
    alpha = torch.rsqrt(bn.running_var + bn.eps)
    if bn.affine:
        alpha = alpha * bn.weight
    shift = -bn.running_mean * alpha + (bn.bias if bn.affine else 0.0)
    if conv.bias is not None:
        shift = shift + conv.bias * alpha
    weight = conv.weight * alpha.view(-1, 1, 1, 1)
    y = F.conv2d(x, weight, shift, conv.stride, conv.padding, conv.dilation, conv.groups)
    return y.relu_() if relu else y


# ---------------------------------------------------------------------------------------------
# blocks


class ContinuousPositionBias(nn.Module):
    """SwinV2-style continuous relative-position bias: an MLP over log-spaced 1D distances.

    Args:
        dim: hidden width of the MLP.
        heads: attention heads.
        offset_groups: offset groups (``heads`` must be a multiple).
        depth: number of hidden layers.
        log_distance: use ``sign(d) · log(|d| + 1)`` instead of ``d``.
    """

    def __init__(self, dim: int, heads: int, offset_groups: int, depth: int = 2, log_distance: bool = True):
        super().__init__()
        self.offset_groups = offset_groups
        self.log_distance = log_distance
        layers: list[nn.Module] = [nn.Sequential(nn.Linear(1, dim), nn.ReLU())]
        layers += [nn.Sequential(nn.Linear(dim, dim), nn.ReLU()) for _ in range(depth - 1)]
        layers.append(nn.Linear(dim, heads // offset_groups))
        self.mlp = nn.ModuleList(layers)

    def forward(self, query_pos: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:
        """
        Args:
            query_pos: ``(L,)`` normalised query positions.
            key_pos: ``(B·G, M)`` normalised sampled key positions.

        Returns:
            ``(B, heads, L, M)`` additive attention bias.
        """
        rel = query_pos[None, :, None, None] - key_pos[:, None, :, None]
        if self.log_distance:
            rel = torch.sign(rel) * torch.log(rel.abs() + 1)
        bg, length, m, _ = rel.shape
        if is_tracing():  # row blocks would tie an exported graph to the traced batch size
            bias = rel
            for layer in self.mlp:
                bias = layer(bias)
        else:
            # The MLP sees one scalar per (query, key) pair (~10⁶ rows, 16 wide): run it on
            # cache-sized row blocks so its hidden activations never become 50 MB tensors.
            rel = rel.reshape(-1, 1)
            last = self.mlp[-1]
            bias = rel.new_empty(rel.shape[0], last.out_features)
            for i in range(0, rel.shape[0], _CPB_ROWS):
                h = rel[i : i + _CPB_ROWS]
                for layer in self.mlp[:-1]:
                    h = layer(h)
                bias[i : i + _CPB_ROWS] = last(h)
        bias = bias.view(bg // self.offset_groups, self.offset_groups, length, m, -1)
        return bias.permute(0, 1, 4, 2, 3).reshape(bg // self.offset_groups, -1, length, m)


class DeformableAttention1D(nn.Module):
    """1D deformable attention (DAT) in the layout of lucidrains' ``deformable-attention``.

    The input is ``(B, dim, L)``: ``dim`` channels, ``L`` positions. Queries come from every
    position; keys/values from ``L / downsample_factor`` reference points shifted by learned
    offsets (one offset network shared by all groups, one group per head).

    Args:
        dim: input channels (here: the number of slices).
        dim_head: width of one head.
        heads: attention heads (= offset groups).
        downsample_factor: stride between reference points.
        offset_scale: bound of the offsets (``tanh · offset_scale``), in positions.
        offset_kernel_size: kernel of the depthwise offset convolution.
        corrected_sampling: sample keys/values along the sequence (fixed release) instead of
            the 0.0.18 behaviour the published weights were trained with.

    Example:
        >>> attn = DeformableAttention1D(dim=64, downsample_factor=4, offset_scale=2)
        >>> attn(torch.randn(2, 64, 640)).shape
        torch.Size([2, 64, 640])
    """

    def __init__(
        self,
        dim: int,
        dim_head: int = 64,
        heads: int = 8,
        downsample_factor: int = 4,
        offset_scale: float = 4.0,
        offset_kernel_size: int = 6,
        corrected_sampling: bool = False,
    ):
        super().__init__()
        if offset_kernel_size < downsample_factor or (offset_kernel_size - downsample_factor) % 2:
            raise ValueError(
                f"offset_kernel_size must be >= downsample_factor with an even difference, "
                f"got {offset_kernel_size} and {downsample_factor}"
            )
        inner_dim = dim_head * heads
        group_dim = inner_dim // heads
        self.heads = heads
        self.scale = dim_head**-0.5
        self.offset_scale = offset_scale
        self.corrected_sampling = corrected_sampling

        self.to_offsets = nn.Sequential(
            nn.Conv1d(
                group_dim,
                group_dim,
                offset_kernel_size,
                stride=downsample_factor,
                padding=(offset_kernel_size - downsample_factor) // 2,
                groups=group_dim,
            ),
            nn.GELU(),
            nn.Conv1d(group_dim, 1, 1, bias=False),
        )
        self.rel_pos_bias = ContinuousPositionBias(dim // 4, heads=heads, offset_groups=heads, depth=2)
        self.to_q = nn.Conv1d(dim, inner_dim, 1, groups=heads, bias=False)
        self.to_k = nn.Conv1d(dim, inner_dim, 1, groups=heads, bias=False)
        self.to_v = nn.Conv1d(dim, inner_dim, 1, groups=heads, bias=False)
        self.to_out = nn.Conv1d(inner_dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, dim, L)``.

        Returns:
            ``(B, dim, L)``.
        """
        b, _, length = x.shape
        g = self.heads
        q = self.to_q(x)

        offsets = self.to_offsets(q.reshape(b * g, -1, length)).squeeze(1)
        offsets = torch.tanh(offsets) * self.offset_scale
        ref = torch.arange(offsets.shape[-1], device=x.device, dtype=offsets.dtype)
        key_pos = normalize_positions(ref + offsets)  # (B·G, M)

        kv = sample_along_sequence(x.reshape(b * g, -1, length), key_pos, self.corrected_sampling)
        kv = kv.reshape(b, -1, kv.shape[-1])
        k, v = self.to_k(kv), self.to_v(kv)

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, g, -1, t.shape[-1]).transpose(-1, -2)  # (B, H, n, d)

        q, k, v = split_heads(q * self.scale), split_heads(k), split_heads(v)
        sim = q @ k.transpose(-1, -2)
        query_pos = normalize_positions(torch.arange(length, device=x.device, dtype=x.dtype))
        sim = sim + self.rel_pos_bias(query_pos, key_pos)
        attn = sim.softmax(dim=-1)
        out = (attn @ v).transpose(-1, -2).reshape(b, -1, length)
        return self.to_out(out)


class FeedForward(nn.Module):
    """Linear → GELU → dropout → Linear."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(drop)
        self.linear2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(self.act(self.linear1(x))))


class DeformableEncoderLayer(nn.Module):
    """Post-LN Transformer layer: ``x = LN(x + Attn(x)); x = LN(x + FFN(x))``.

    Args:
        n_frames: slices, the channel axis of the attention.
        d_model: slice embedding width, the sequence axis of the attention and the LN axis.
        ffn_hidden: hidden width of the feed-forward network.
        drop: dropout after attention, inside and after the FFN.
        attn_kwargs: arguments of :class:`DeformableAttention1D`.
    """

    def __init__(self, n_frames: int, d_model: int, ffn_hidden: int, drop: float = 0.1, **attn_kwargs):
        super().__init__()
        self.attention = DeformableAttention1D(dim=n_frames, **attn_kwargs)
        self.norm1 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(drop)
        self.ffn = FeedForward(d_model, ffn_hidden, drop)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, n_frames, d_model)`` → same shape."""
        x = self.norm1(x + self.dropout1(self.attention(x)))
        return self.norm2(x + self.dropout2(self.ffn(x)))


class DeformableEncoder(nn.Module):
    """A stack of :class:`DeformableEncoderLayer` (the reference's ``DeTrans``)."""

    def __init__(self, depth: int, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList([DeformableEncoderLayer(**layer_kwargs) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = checkpointed(layer, x)
        return x


class InterSliceTransformer(nn.Module):
    """``f_inter``: deformable attention across slices, ``(B, N, D)`` → ``(B, N, D)``.

    Slices are the attention's channels and the embedding axis its sequence, as in the reference,
    so the number of slices is fixed by the weights.
    """

    def __init__(self, depth: int = 4, **layer_kwargs):
        super().__init__()
        # Extra nesting (EncoderModel → DeTrans) kept so keys read ``inter.encoder.layers.*``.
        self.encoder = DeformableEncoder(depth, **layer_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class MultiScaleResNet50(ResNet):
    """``f_intra``: torchvision ResNet-50 per slice → multi-scale 5888-d feature → ``embed_dim``.

    Keys are torchvision's (no ``fc``) plus ``deconv``, the 5888 → ``embed_dim`` per-slice
    projection, kept as the reference's ``ConvTranspose1d(k=1)`` so its weight has the
    checkpoint's ``(5888, embed_dim, 1)`` shape.

    Args:
        in_chans: channels of one slice (3: the grey slice repeated).
        embed_dim: slice embedding width.
    """

    def __init__(self, in_chans: int = 3, embed_dim: int = 640):
        super().__init__(Bottleneck, [3, 4, 6, 3])
        del self.fc
        if in_chans != 3:
            self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.deconv = nn.ConvTranspose1d(sum(_MULTI_SCALE_DIMS), embed_dim, kernel_size=1)

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(S, C, H, W)`` slices → outputs of ``layer1 … layer4``."""
        if _can_fold_bn(self, x):
            return self._stage_features_folded(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = checkpointed(stage, x)
            feats.append(x)
        return feats

    def _stage_features_folded(self, x: torch.Tensor) -> list[torch.Tensor]:
        # The same network with every inference BatchNorm folded into the convolution before
        # it (weights scaled per output channel, BN shift as the conv bias), recomputed on
        # each call (a few ms), so BN never takes a pass over the activations.
        x = self.maxpool(_conv_bn(x, self.conv1, self.bn1, relu=True))
        feats = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for blk in stage:
                out = _conv_bn(x, blk.conv1, blk.bn1, relu=True)
                out = _conv_bn(out, blk.conv2, blk.bn2, relu=True)
                out = _conv_bn(out, blk.conv3, blk.bn3, relu=False)
                identity = x if blk.downsample is None else _conv_bn(x, *blk.downsample, relu=False)
                x = out.add_(identity).relu_()
            feats.append(x)
        return feats

    def multi_scale_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(S, C, H, W)`` → ``(S, 5888)``: L2-normalised GAPs of layer1–4 and the final pool."""
        # Channels-last: oneDNN runs the convolutions on NHWC without reordering each activation.
        if not torch.jit.is_tracing():  # the TorchScript ONNX exporter cannot express memory formats
            x = x.contiguous(memory_format=torch.channels_last)
        pooled = [F.normalize(self.avgpool(f).flatten(1), dim=1) for f in self.stage_features(x)]
        # Quirk: the final pool equals GAP(layer4), so the layer4 vector is counted twice.
        return torch.cat([*pooled, pooled[-1]], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, N, C, H, W)`` volume of ``N`` slices.

        Returns:
            ``(B, N, embed_dim)`` slice embeddings (not normalised).
        """
        b, n = x.shape[:2]
        feats = self.multi_scale_features(x.flatten(0, 1)).view(b, n, -1)
        return self.deconv(feats.transpose(1, 2)).transpose(1, 2)


# ---------------------------------------------------------------------------------------------
# model


class ResNet50DeformAttn(ModelApiMixin, nn.Module):
    """Joint image-volume SSL encoder: ResNet-50 per slice + deformable inter-slice Transformer.

    Args:
        in_chans: channels of one slice (3 in the reference: the grey slice repeated).
        n_frames: slices per volume; the attention convolutions take them as channels, so the
            published configuration requires exactly 64.
        embed_dim: slice and volume embedding width (640).
        ffn_hidden: Transformer FFN width (720).
        depth: Transformer layers (4).
        heads: attention heads (8).
        dim_head: attention head width (64).
        downsample_factor: stride of the deformable reference points (4).
        offset_scale: offset bound in positions (2).
        offset_kernel_size: offset-network kernel (6).
        drop_rate: dropout of the Transformer layers (0.1, training only).
        nmb_prototypes: sizes of the SSL prototype heads (``(3000,)`` SwAV, ``(4, 4, 4)``
            DeepCluster-v2, ``()`` none); each is a bias-free ``Linear(embed_dim, k)``.
        num_classes: when > 0, a linear classifier on the volume embedding (our addition).
        corrected_sampling: use the fixed key/value sampling of deformable-attention ≥ 0.0.20
            instead of the 0.0.18 behaviour the published weights were trained with.
        features_only: ``forward`` returns the ResNet-50 stage maps of every slice.
        img_size: nominal in-plane slice size (128, 128) the weights were trained at; any
            size ≥ 32 runs thanks to global pooling.

    Input:
        ``(B, n_frames, in_chans, H, W)``: slices along axis 1, their channels along axis 2.

    Returns:
        - default: ``(B, embed_dim)`` L2-normalised volume embedding;
        - with prototypes: ``(embedding, [(B, k) logits per head])`` as the reference returns;
        - with ``num_classes``: ``(B, num_classes)`` logits;
        - ``features_only``: list of 4 tensors ``(B, N, C_i, H_i, W_i)``, C_i = 256 … 2048.

    Example:
        >>> model = ResNet50DeformAttn().eval()
        >>> model(torch.randn(1, 64, 3, 128, 128)).shape
        torch.Size([1, 640])
    """

    def __init__(
        self,
        in_chans: int = 3,
        n_frames: int = 64,
        embed_dim: int = 640,
        ffn_hidden: int = 720,
        depth: int = 4,
        heads: int = 8,
        dim_head: int = 64,
        downsample_factor: int = 4,
        offset_scale: float = 2.0,
        offset_kernel_size: int = 6,
        drop_rate: float = 0.1,
        nmb_prototypes: Sequence[int] = (),
        num_classes: int = 0,
        corrected_sampling: bool = False,
        features_only: bool = False,
        img_size: Sequence[int] = (128, 128),
    ):
        super().__init__()
        if num_classes and nmb_prototypes:
            raise ValueError("num_classes > 0 and SSL prototypes are exclusive; pick one head")
        from zoo.layers.checks import int_tuple

        img_size = int_tuple(img_size, 2, "img_size (the in-plane slice size H, W)")
        self.in_chans = in_chans
        self.n_frames = n_frames
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.features_only = features_only
        self.img_size = tuple(img_size)

        self.intra = MultiScaleResNet50(in_chans=in_chans, embed_dim=embed_dim)
        self.inter = InterSliceTransformer(
            depth=depth,
            n_frames=n_frames,
            d_model=embed_dim,
            ffn_hidden=ffn_hidden,
            drop=drop_rate,
            heads=heads,
            dim_head=dim_head,
            downsample_factor=downsample_factor,
            offset_scale=offset_scale,
            offset_kernel_size=offset_kernel_size,
            corrected_sampling=corrected_sampling,
        )
        if nmb_prototypes:
            # Same naming as SwAV's MultiPrototypes: prototypes.prototypes{i}.weight.
            self.prototypes = nn.Module()
            for i, k in enumerate(nmb_prototypes):
                self.prototypes.add_module(f"prototypes{i}", nn.Linear(embed_dim, k, bias=False))
        else:
            self.prototypes = None
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else None

    def _check_input(self, x: torch.Tensor) -> None:
        expected = f"[B, {self.n_frames}, {self.in_chans}, H, W]"
        if x.ndim != 5:
            raise ValueError(
                f"expected a 5-D volume {expected} (slices, then channels), got shape {list(x.shape)}"
            )
        if x.shape[2] != self.in_chans:
            raise ValueError(
                f"expected {self.in_chans} channels per slice on axis 2 {expected}, got {x.shape[2]} "
                f"(shape {list(x.shape)})"
            )
        if not self.features_only and x.shape[1] != self.n_frames:
            raise ValueError(
                f"{self.n_frames} slices are required by these weights (the inter-slice attention takes "
                f"slices as convolution channels), got {x.shape[1]} (shape {list(x.shape)}); crop, pad "
                f"or resample the volume to {self.n_frames} slices"
            )
        h, w = x.shape[-2:]
        if h < _MIN_SLICE_SIZE or w < _MIN_SLICE_SIZE:
            raise ValueError(
                f"slices must be at least {_MIN_SLICE_SIZE}x{_MIN_SLICE_SIZE} (ResNet-50 stride 32; "
                f"trained at {self.img_size[0]}x{self.img_size[1]}), got {h}x{w}"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, C, H, W)`` → ``(B, embed_dim)`` L2-normalised volume embedding."""
        self._check_input(x)
        z = self.inter(self.intra(x)).mean(dim=1)
        return F.normalize(z, dim=1)

    def forward(self, x: torch.Tensor):
        """See the class docstring for the return value of each configuration."""
        if self.features_only:
            self._check_input(x)
            b, n = x.shape[:2]
            maps = self.intra.stage_features(x.flatten(0, 1))
            return [m.view(b, n, *m.shape[1:]) for m in maps]
        return self.forward_head(self.forward_features(x))

    def forward_head(self, z: torch.Tensor, pre_logits: bool = False):
        """The classifier or the SwAV prototypes on the embedding; ``pre_logits`` (or neither): ``z``."""
        if pre_logits:
            return z
        if self.head is not None:
            return self.head(z)
        if self.prototypes is not None:
            return z, [p(z) for p in self.prototypes.children()]
        return z

    # ---- timm's API (zoo.layers.model_api): the ResNet stages, then the inter-slice Transformer

    def _api_parts(self) -> dict:
        return dict(_PARAM_GROUPS)

    def _api_features(self) -> list[dict]:
        return [dict(f) for f in _FEATURE_INFO]

    def _api_head_keys(self) -> tuple[str, ...]:
        return (("head.",) if self.head is not None else ()) + (
            ("prototypes.",) if self.prototypes is not None else ()
        )

    def _api_checkpoint_units(self) -> list[nn.Module]:
        stages = [self.intra.layer1, self.intra.layer2, self.intra.layer3, self.intra.layer4]
        return stages + list(self.inter.encoder.layers)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The linear classifier, else the SwAV prototypes, else Identity."""
        return self.head or self.prototypes or nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        """A new linear classifier on the embedding (0: none); SSL prototypes are dropped."""
        if int(num_classes) < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        w = self.intra.deconv.weight
        self.prototypes = None
        self.head = (
            nn.Linear(self.embed_dim, num_classes, device=w.device, dtype=w.dtype) if num_classes else None
        )
        self._api_record_classes(int(num_classes))

    def encoder_2d(self, in_chans: int | None = None) -> ResNet:
        """A standalone torchvision ResNet-50 (``fc`` = Identity) holding ``f_intra``'s trunk.

        This is what the authors transfer to 2D downstream tasks (a U-Net or Faster R-CNN
        backbone); the projection, Transformer and prototypes are left out.

        Args:
            in_chans: input channels of the copy; ``1`` sums conv1's RGB weights, as the
                authors' segmentation code does (``patch_first_conv``). Default: this model's.

        Returns:
            ``torchvision.models.ResNet`` mapping ``(S, in_chans, H, W)`` → ``(S, 2048)``.
        """
        in_chans = self.in_chans if in_chans is None else in_chans
        if in_chans not in (1, self.in_chans):
            raise ValueError(f"encoder_2d supports in_chans 1 or {self.in_chans}, got {in_chans}")
        net = torchvision.models.resnet50(weights=None)
        net.fc = nn.Identity()
        trunk = {k: v for k, v in self.intra.state_dict().items() if not k.startswith("deconv.")}
        if in_chans != self.in_chans:
            net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
            trunk["conv1.weight"] = trunk["conv1.weight"].sum(dim=1, keepdim=True)
        net.load_state_dict(trunk, strict=True)
        return net
