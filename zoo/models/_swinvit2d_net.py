"""The 2D Swin-UNETR encoder, its SimSiam module and the 2D Swin-UNETR segmenter: the classes.

Registered, described and documented in :mod:`zoo.models.swinvit2d`; this module imports MONAI's
networks (and through them transformers) only when a model is built.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from monai.networks.nets import SwinUNETR
from monai.networks.nets.swin_unetr import SwinTransformer, WindowAttention
from torch import nn

from zoo.layers import check_input, int_tuple
from zoo.layers.derived import declare_derived
from zoo.layers.model_api import ModelApiMixin

# The registration module lists these names for its lazy __getattr__; one list serves both.
from zoo.models.swinvit2d import _NET_NAMES, _SIMSIAM_HEADS, _UNETR_DECODER, _swin_parts

__all__ = list(_NET_NAMES)

# MONAI computes the index from the window size alone when it builds the attention.
declare_derived(WindowAttention, "relative_position_index")


# Why a Swin-UNETR input side must divide by 32, for the error message.
_WHY_DIVISOR = "the patch embedding and 4 patch mergings each halve it"


def _swin_blocks(swin: SwinTransformer) -> list[nn.Module]:
    # MONAI's Swin blocks checkpoint themselves (use_checkpoint); the mixin switches that flag.
    layers = (swin.layers1, swin.layers2, swin.layers3, swin.layers4)
    return [blk for layer in layers for basic in layer for blk in basic.blocks]


def _swin_width(swin: SwinTransformer) -> int:
    return swin.patch_embed.proj.out_channels


@contextmanager
def _off_meta_device() -> Iterator[bool]:
    """Yield whether the default device is ``meta``, building on the CPU meanwhile if so.

    MONAI's SwinTransformer calls ``Tensor.item()`` while building (its drop-path schedule),
    which meta tensors refuse; the caller moves the finished module to ``meta``.
    """
    if torch.get_default_device().type != "meta":
        yield False
        return
    with torch.device("cpu"):
        yield True


class SimSiamHead(nn.Module):
    """The MLP heads of SimSiam with lightly 1.4.13's layer layout (``layers.<i>`` keys).

    Each hidden step is Linear (no bias, a BN follows) → BatchNorm1d → ReLU. The last step is
    Linear → BatchNorm1d(affine=False) for the projector (``last_bn=True``) and a biased Linear
    for the predictor.

    Args:
        dims: feature sizes, input first: ``(768, 2048, 2048, 2048)`` for the projector,
            ``(2048, 512, 2048)`` for the predictor.
        last_bn: end with a non-affine BatchNorm1d instead of a bias.

    Example:
        >>> SimSiamHead((768, 2048, 2048, 2048), last_bn=True)(torch.randn(4, 768)).shape
        torch.Size([4, 2048])
    """

    def __init__(self, dims: Sequence[int], last_bn: bool) -> None:
        super().__init__()
        if len(dims) < 2:
            raise ValueError(f"SimSiamHead needs at least an input and an output size, got dims={dims!r}")
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-2], dims[1:-1], strict=True):
            layers += [nn.Linear(d_in, d_out, bias=False), nn.BatchNorm1d(d_out), nn.ReLU()]
        layers.append(nn.Linear(dims[-2], dims[-1], bias=not last_bn))
        if last_bn:
            layers.append(nn.BatchNorm1d(dims[-1], affine=False))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dims[0]) → (B, dims[-1])."""
        return self.layers(x)


class SwinViT2d(ModelApiMixin, nn.Module):
    """The Swin-UNETR encoder on 2D slices, pooled to one vector (the thesis's SSL backbone).

    ``model`` is MONAI's ``SwinTransformer`` (the module ``SwinUNETR.swinViT``) with the legacy
    ``PatchMerging`` and no v2 residual blocks; the attribute name mirrors the reference's
    ``src.models.Backbone.model``. The feature is the deepest map (16·C channels, after MONAI's
    parameter-free channel LayerNorm) averaged over space; there is no CLS token.

    Args:
        in_chans: input channels (1 for CT).
        embed_dim: C, the width of the first stage; the pooled feature has 16·C channels.
        depths: Swin blocks per stage.
        num_heads: attention heads per stage.
        window_size: attention window (shrunk by MONAI where a map is smaller).
        patch_size: patch embedding stride.
        mlp_ratio: MLP hidden width over block width.
        qkv_bias: bias on the qkv projection.
        drop_rate / attn_drop_rate / drop_path_rate: dropout, attention dropout and stochastic
            depth (the thesis pretrains with drop_path_rate=0.1).
        normalize: apply the channel LayerNorm to the stage outputs (the reference does).
        img_size: the crop size the model is meant for (96×96); the encoder pads other sizes.

    Shapes:
        input (B, in_chans, H, W) → output (B, 16·embed_dim); 96×96 gives stage maps
        (B,48,48,48) … (B,768,3,3).

    Example:
        >>> SwinViT2d()(torch.randn(2, 1, 96, 96)).shape
        torch.Size([2, 768])
    """

    def __init__(
        self,
        in_chans: int = 1,
        embed_dim: int = 48,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int | Sequence[int] = 7,
        patch_size: int | Sequence[int] = 2,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        normalize: bool = True,
        img_size: int | Sequence[int] = (96, 96),
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"expected 4 stages, got depths={depths!r}, num_heads={num_heads!r}")
        self.in_chans = in_chans
        self.img_size = int_tuple(img_size, 2, "img_size")
        self.normalize = normalize
        self.num_features = embed_dim * 2 ** len(depths)
        with _off_meta_device() as on_meta:
            self.model = SwinTransformer(
                in_chans=in_chans,
                embed_dim=embed_dim,
                window_size=int_tuple(window_size, 2, "window_size"),
                patch_size=int_tuple(patch_size, 2, "patch_size"),
                depths=tuple(depths),
                num_heads=tuple(num_heads),
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_rate=drop_rate,
                attn_drop_rate=attn_drop_rate,
                drop_path_rate=drop_path_rate,
                norm_layer=nn.LayerNorm,
                patch_norm=False,
                spatial_dims=2,
                downsample="merging",
                use_v2=False,
            )
        if on_meta:
            self.model.to("meta")

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The patch embedding and the 4 stage outputs, (B, C·2^i, H/2^(i+1), W/2^(i+1)), i = 0..4."""
        check_input(x, self.in_chans, type(self).__name__, spatial_dims=2)
        return self.model(x, self.normalize)

    def forward_head(self, feats: Sequence[torch.Tensor], pre_logits: bool = False) -> torch.Tensor:
        """The deepest map averaged over space (no classifier, so ``pre_logits`` changes nothing)."""
        return feats[-1].flatten(2).mean(dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) → (B, 16·embed_dim): the deepest map averaged over space."""
        return self.forward_head(self.forward_features(x))

    # ---- timm's API (zoo.layers.model_api); no classifier: reset_classifier refuses

    def _api_parts(self) -> dict:
        return dict(_swin_parts("model.", "model.")["param_groups"])

    def _api_features(self) -> list[dict]:
        return [
            dict(f)
            for f in _swin_parts("model.", "model.", embed_dim=_swin_width(self.model))["feature_info"]
        ]

    def _api_checkpoint_units(self) -> list[nn.Module]:
        return _swin_blocks(self.model)


class SwinViT2dSimSiam(ModelApiMixin, nn.Module):
    """SimSiam around :class:`SwinViT2d`: encoder → projector (z) → predictor (p).

    Module names follow the reference's ``src.models.SimSiam`` (``backbone.model.*``,
    ``projection_head.layers.*``, ``prediction_head.layers.*``), so a pretraining checkpoint
    (``torch.save(simsiam.state_dict())``) loads strictly as it is.

    Args:
        proj_hidden_dim: projector hidden width (d = 2048).
        out_dim: projector and predictor output width (d_o = 2048).
        pred_hidden_dim: predictor bottleneck width (d_b = 512).
        **backbone_args: arguments of :class:`SwinViT2d`.

    Shapes:
        input (B, in_chans, H, W) → ``(z, p)``, each (B, out_dim). Batch statistics make
        training-mode forwards need B > 1.

    Example:
        >>> z, p = SwinViT2dSimSiam().eval()(torch.randn(2, 1, 96, 96))
        >>> z.shape, p.shape
        (torch.Size([2, 2048]), torch.Size([2, 2048]))
    """

    def __init__(
        self, proj_hidden_dim: int = 2048, out_dim: int = 2048, pred_hidden_dim: int = 512, **backbone_args
    ) -> None:
        super().__init__()
        self.backbone = SwinViT2d(**backbone_args)
        width = self.backbone.num_features
        self.projection_head = SimSiamHead((width, proj_hidden_dim, proj_hidden_dim, out_dim), last_bn=True)
        self.prediction_head = SimSiamHead((out_dim, pred_hidden_dim, out_dim), last_bn=False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features: the backbone's pooled feature, (B, 16·embed_dim)."""
        return self.backbone(x)

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False):
        """Projector and predictor: ``(z.detach(), p)``; ``pre_logits``: ``f`` unchanged."""
        if pre_logits:
            return f
        z = self.projection_head(f)
        p = self.prediction_head(z)
        # Reference quirk kept: forward returns z already detached (lightly's SimSiam recipe).
        return z.detach(), p

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, in_chans, H, W) → (z, p); z is detached, the SimSiam stop-gradient."""
        return self.forward_head(self.forward_features(x))

    # ---- timm's API (zoo.layers.model_api); SSL heads, no classifier: reset_classifier refuses

    def _api_parts(self) -> dict:
        return dict(_swin_parts("backbone.model.", "backbone.", head=_SIMSIAM_HEADS)["param_groups"])

    def _api_features(self) -> list[dict]:
        width = _swin_width(self.backbone.model)
        parts = _swin_parts("backbone.model.", "backbone.", head=_SIMSIAM_HEADS, embed_dim=width)
        return [dict(f) for f in parts["feature_info"]]

    def _api_checkpoint_units(self) -> list[nn.Module]:
        return _swin_blocks(self.backbone.model)


class SwinUNETR2d(ModelApiMixin, SwinUNETR):
    """MONAI ``SwinUNETR`` on 2D slices, as the thesis fine-tunes it (keys ``swinViT.*``, ``out.*``).

    A subclass rather than a wrapper so the state_dict keys are MONAI's own (159 entries),
    with input validation before compute.

    Args:
        in_chans: input channels (1 for CT).
        num_classes: output channels (14: background + 13 FLARE 2022 organs).
        feature_size: C, the encoder width (48 in every thesis run); a multiple of 12.
        depths / num_heads / window_size / patch_size: encoder layout (Swin-UNETR defaults).
        drop_path_rate: encoder stochastic depth (0 when fine-tuning in the thesis).
        normalize: channel LayerNorm on the encoder outputs.
        img_size: the sliding-window ROI (96×96); each side must be divisible by 32.

    Shapes:
        input (B, in_chans, H, W), H and W divisible by 32 → logits (B, num_classes, H, W).

    Example:
        >>> SwinUNETR2d()(torch.randn(1, 1, 96, 96)).shape
        torch.Size([1, 14, 96, 96])
    """

    def __init__(
        self,
        in_chans: int = 1,
        num_classes: int = 14,
        feature_size: int = 48,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        patch_size: int = 2,
        drop_path_rate: float = 0.0,
        normalize: bool = True,
        img_size: int | Sequence[int] = (96, 96),
    ) -> None:
        roi = int_tuple(img_size, 2, "img_size")
        # MONAI's rule: the patch embedding and four mergings divide each side by patch_size**5.
        divisor = patch_size**5
        if any(s % divisor for s in roi):
            raise ValueError(f"img_size must be divisible by {divisor}, got {roi}")
        kwargs = dict(
            in_channels=in_chans,
            out_channels=num_classes,
            patch_size=patch_size,
            depths=tuple(depths),
            num_heads=tuple(num_heads),
            window_size=window_size,
            feature_size=feature_size,
            norm_name="instance",
            dropout_path_rate=drop_path_rate,
            normalize=normalize,
            spatial_dims=2,
            downsample="merging",
            use_v2=False,
        )
        # MONAI < 1.5 still requires img_size (it only validated it); 1.5 removed the argument.
        if "img_size" in inspect.signature(SwinUNETR.__init__).parameters:
            kwargs["img_size"] = roi
        with _off_meta_device() as on_meta:
            super().__init__(**kwargs)
        if on_meta:
            self.to("meta")
        self.img_size = roi
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.divisor = divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) → logits (B, num_classes, H, W)."""
        check_input(
            x, self.in_chans, type(self).__name__, spatial_dims=2, multiple=self.divisor, why=_WHY_DIVISOR
        )
        return super().forward(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features: ``decoder1``'s map (B, feature_size, H, W), MONAI's forward up to ``out``."""
        check_input(
            x, self.in_chans, type(self).__name__, spatial_dims=2, multiple=self.divisor, why=_WHY_DIVISOR
        )
        hidden = self.swinViT(x, self.normalize)
        enc0 = self.encoder1(x)
        enc1 = self.encoder2(hidden[0])
        enc2 = self.encoder3(hidden[1])
        enc3 = self.encoder4(hidden[2])
        dec3 = self.decoder5(self.encoder10(hidden[4]), hidden[3])
        dec0 = self.decoder2(self.decoder3(self.decoder4(dec3, enc3), enc2), enc1)
        return self.decoder1(dec0, enc0)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``out`` (a 1×1 convolution); ``pre_logits``: ``x`` unchanged."""
        return x if pre_logits else self.out(x)

    # ---- timm's API (zoo.layers.model_api)

    def _api_parts(self) -> dict:
        return dict(
            _swin_parts("swinViT.", "swinViT.", decoder=_UNETR_DECODER, head=("out.",))["param_groups"]
        )

    def _api_features(self) -> list[dict]:
        width = _swin_width(self.swinViT)
        parts = _swin_parts("swinViT.", "swinViT.", decoder=_UNETR_DECODER, head=("out.",), embed_dim=width)
        return [dict(f) for f in parts["feature_info"]]

    def _api_head_keys(self) -> tuple[str, ...]:
        return ("out.",)

    def _api_checkpoint_units(self) -> list[nn.Module]:
        return _swin_blocks(self.swinViT)
