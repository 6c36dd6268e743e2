"""2D Swin-UNETR encoder pretrained with SimSiam on IoU-based positive pairs, and its segmenter.

Konieczkowicz, "Self-supervised learning for medical diagnosis and imaging", MSc thesis, AGH
Kraków (reference code: github.com/dittohed/exploring-ssl-for-ct @ 3d345a6). Every reported
experiment is 2D: axial CT slices, 96×96 crops.

* ``swinvit2d-c48``: the encoder alone, MONAI's Swin-UNETR ``SwinTransformer`` (C=48), returning
  the pooled 768-d SSL feature.
* ``swinvit2d-c48-simsiam-iou30-60``: encoder + SimSiam projector and predictor, the module the
  thesis pretrains with crops whose IoU lies in [0.3, 0.6]; a full SimSiam ``state_dict`` loads
  strictly.
* ``swinunetr2d-c48``: MONAI ``SwinUNETR`` (spatial_dims=2, 14 classes), the fine-tuned model.

MONAI's own classes are used because the reference builds exactly those; our wrappers only mirror
the reference's module names (``Backbone.model``, ``projection_head.layers`` …) so checkpoints load
without renaming, and validate inputs before compute.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from monai.networks.nets import SwinUNETR
from monai.networks.nets.swin_unetr import SwinTransformer
from torch import nn

from zoo._registry import ModelSpec, PaperInfo, register_alias, register_model

__all__ = ["SimSiamHead", "SwinViT2d", "SwinViT2dSimSiam", "SwinUNETR2d"]


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    out = (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(out) != 2 or min(out) < 1:
        raise ValueError(f"{name} must be a positive int or a pair of them for a 2D model, got {value!r}")
    return out  # type: ignore[return-value]


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


def _check_input(x: torch.Tensor, in_chans: int, model: str, divisor: int = 1) -> None:
    """Raise ``ValueError`` unless ``x`` is (B, in_chans, H, W) with H, W multiples of ``divisor``."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{model}: expected a torch.Tensor, found {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(
            f"{model}: expected a 4D input (B, {in_chans}, H, W) of 2D slices, found shape {tuple(x.shape)}"
        )
    if x.shape[1] != in_chans:
        raise ValueError(
            f"{model}: expected {in_chans} input channel(s), found {x.shape[1]} (shape {tuple(x.shape)})"
        )
    spatial = tuple(x.shape[2:])
    if min(spatial) < 1 or any(s % divisor for s in spatial):
        raise ValueError(
            f"{model}: expected H and W divisible by {divisor} (the patch embedding and 4 patch "
            f"mergings each halve them), found spatial size {spatial}"
        )


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


class SwinViT2d(nn.Module):
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
        self.img_size = _pair(img_size, "img_size")
        self.normalize = normalize
        self.num_features = embed_dim * 2 ** len(depths)
        with _off_meta_device() as on_meta:
            self.model = SwinTransformer(
                in_chans=in_chans,
                embed_dim=embed_dim,
                window_size=_pair(window_size, "window_size"),
                patch_size=_pair(patch_size, "patch_size"),
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
        _check_input(x, self.in_chans, type(self).__name__)
        return self.model(x, self.normalize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) → (B, 16·embed_dim): the deepest map averaged over space."""
        return self.forward_features(x)[-1].flatten(2).mean(dim=2)


class SwinViT2dSimSiam(nn.Module):
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

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, in_chans, H, W) → (z, p); z is detached, the SimSiam stop-gradient."""
        z = self.projection_head(self.backbone(x))
        p = self.prediction_head(z)
        # Reference quirk kept: forward returns z already detached (lightly's SimSiam recipe).
        return z.detach(), p


class SwinUNETR2d(SwinUNETR):
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
        roi = _pair(img_size, "img_size")
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
        _check_input(x, self.in_chans, type(self).__name__, divisor=self.divisor)
        return super().forward(x)


# --------------------------------------------------------------------------------------------
# Registrations

_PAPER = PaperInfo(
    title="Self-supervised learning for medical diagnosis and imaging",
    authors="Wojciech Konieczkowicz (supervisor: Bogdan Kwolek)",
    venue="MSc thesis, AGH University of Science and Technology, Kraków",
    year=2024,
    url="https://github.com/dittohed/exploring-ssl-for-ct/blob/3d345a62d737dbb10bff33b5a0a3e0b8c749cc3a/thesis.pdf",
    bibtex="""@mastersthesis{konieczkowicz2024ioupositives,
  title  = {Self-supervised learning for medical diagnosis and imaging},
  author = {Konieczkowicz, Wojciech},
  school = {AGH University of Science and Technology},
  address = {Krak{\\'o}w, Poland},
  year   = {2024},
  note   = {Supervisor: Bogdan Kwolek. Code: https://github.com/dittohed/exploring-ssl-for-ct}
}""",
    code_url="https://github.com/dittohed/exploring-ssl-for-ct",
)

_NO_WEIGHTS = (
    "The author published no checkpoints (the repository README links only W&B runs and their "
    "config.yaml); the zoo ships the architecture and the key mapping, and weights only if retrained."
)

# The reference's 2D preprocessing (get_preprocess_transforms_2d, default args).
_PREPROCESSING = {
    "orientation": "RAS",
    "spacing_mm": [1.0, 1.0, 2.5],
    "interpolation": "bilinear (image), nearest (label)",
    "intensity": "clip HU [-500, 500] → [0, 1]",
    "intensity_transform": {"kind": "clip_scale", "a_min": -500.0, "a_max": 500.0, "b_min": 0, "b_max": 1},
    "slice_axis": 2,
    "crop": "CropForeground on the image (> 0), then symmetric SpatialPad of x and y to ≥ 96",
    "slicing": "axial z-slices saved as uint8 PNG (×255) and rescaled 0..255 → 0..1 when loaded",
    "input": "2D slice, 1 channel, 96×96 crops",
}

_RESULTS_MD = """\
Table 4.2: mean DSC over the 35 validation CTs (FLARE 2022, 15/35 split), mean ± std of 4 runs
(2 pretrainings × 2 fine-tunings per IoU interval).

| IoU interval | Mean DSC | DSC 1 | DSC 2 | DSC 3 | DSC 4 |
|---|---|---|---|---|---|
| - (no pretraining) | 0.843 ± 0.004 | 0.842 | 0.848 | 0.846 | 0.836 |
| [0, 0] | 0.838 ± 0.007 | 0.836 | 0.831 | 0.834 | 0.850 |
| [0.0001, 0.3] | 0.839 ± 0.012 | 0.847 | 0.831 | 0.855 | 0.824 |
| [0.3, 0.6] | **0.853 ± 0.002** | 0.854 | 0.851 | 0.851 | 0.857 |
| [0.6, 1] | 0.843 ± 0.013 | 0.850 | 0.855 | 0.848 | 0.822 |
| Random crop. ([0,1]) | 0.824 ± 0.011 | 0.815 | 0.841 | 0.828 | 0.812 |

DSC is MONAI `DiceMetric(include_background=True)` per 2D slice, averaged over the classes present
in the ground truth (background included) and then over slices; it is not the FLARE organ-only
volumetric DSC. No per-organ Dice and no label-efficiency curves are reported.
"""

_NOTES_COMMON = (
    "Every reported experiment is 2D (axial slices, 96×96 crops); the reference's 3D path is untested "
    "by its author and not registered here.",
    "Positives are chosen only by box IoU between two equal 96×96 crops of the same slice "
    "(zoo.transforms.IoUPairCropd); there is no organ- or label-aware selection during pretraining.",
    "SimSiam is the only SSL method with results; main_dino.py was never evaluated (its C=24 default "
    "differs from the C=48 of every thesis run).",
    "C=48 in every thesis run (README commands pass --embedding_size 48); the scripts' defaults differ "
    "(main_finetune and visualize_inference default to 24).",
    "Legacy PatchMerging (downsample='merging', use_v2=False) as in the reference; in 2D it computes "
    "the same as PatchMergingV2.",
    "Preprocessing: RAS, spacing 1.0×1.0×2.5 mm, clip HU [-500, 500] → [0, 1], CropForeground, pad x/y "
    "to ≥96; slices are stored as uint8 PNGs, so inputs are quantised to 8 bits.",
)

_SIMSIAM_RECIPE = {
    "method": "SimSiam (negative cosine, symmetric, stop-gradient on z)",
    "positives": "two 96×96 crops of one slice with box IoU in [0.3, 0.6] (r1=30, r2=4 retries)",
    "iou_range": (0.3, 0.6),
    "data": "FLARE 2022 unlabelled training CTs: 2,000 cases → 237,449 2D slices",
    "schedule": "100 epochs, batch 128, SGD momentum 0.9, lr 0.025 cosine to 1e-6, wd 1e-5, "
    "drop_path 0.1, AMP; the predictor keeps a fixed lr",
    "augmentations": "RandZoom [0.8,1.2] p.75, flips axis0/axis1 p.5, Rot90 p.5, ScaleIntensity ±0.1 p.75, "
    "ShiftIntensity ±0.1 p.75, GaussianSmooth σ∈[0.25,1.5] p.25, GaussianNoise σ=0.01 p.25",
}

_BACKBONE_ARGS = dict(
    in_chans=1,
    embed_dim=48,
    depths=(2, 2, 2, 2),
    num_heads=(3, 6, 12, 24),
    window_size=7,
    patch_size=2,
    img_size=(96, 96),
)


def _no_head(name: str, kwargs: dict) -> dict:
    if kwargs.pop("num_classes", None) is not None:
        raise ValueError(f"{name} has no classification head, so num_classes cannot be set")
    return kwargs


def _swin_parts(prefix: str, embed_dim: int = 48) -> tuple[dict, tuple]:
    """param_groups and feature_info of a MONAI SwinTransformer under ``prefix`` (patch size 2)."""
    groups = {"stem": (f"{prefix}patch_embed.",)}
    groups.update({f"encoder.{i}": (f"{prefix}layers{i + 1}.",) for i in range(4)})
    features = (dict(module=f"{prefix}patch_embed", num_chs=embed_dim, reduction=2),) + tuple(
        dict(module=f"{prefix}layers{i + 1}.0", num_chs=embed_dim * 2 ** (i + 1), reduction=4 * 2**i)
        for i in range(4)
    )
    return groups, features


_BACKBONE_GROUPS, _BACKBONE_FEATURES = _swin_parts("model.")
_SIMSIAM_GROUPS, _SIMSIAM_FEATURES = _swin_parts("backbone.model.")
_UNETR_GROUPS, _UNETR_FEATURES = _swin_parts("swinViT.")
# Swin-UNETR's residual blocks on the skips (encoder1..4, encoder10) start random with an SSL
# encoder, so they belong with the decoder.
_UNETR_GROUPS["decoder"] = tuple(f"encoder{i}." for i in (1, 2, 3, 4, 10)) + tuple(
    f"decoder{i}." for i in range(1, 6)
)
_UNETR_GROUPS["head"] = ("out.",)
_BACKBONE_GROUPS.update(decoder=(), head=())
_SIMSIAM_GROUPS.update(decoder=(), head=("projection_head.", "prediction_head."))


def _create_backbone(**kwargs) -> SwinViT2d:
    return SwinViT2d(**_no_head("swinvit2d-c48", kwargs))


def _create_simsiam(**kwargs) -> SwinViT2dSimSiam:
    return SwinViT2dSimSiam(**_no_head("swinvit2d-c48-simsiam", kwargs))


def _create_segmenter(**kwargs) -> SwinUNETR2d:
    return SwinUNETR2d(**kwargs)


register_model(
    ModelSpec(
        name="swinvit2d-c48",
        family="swinvit2d",
        builder=_create_backbone,
        model_args=dict(_BACKBONE_ARGS),
        paper=_PAPER,
        input_size=(1, 96, 96),
        first_conv="model.patch_embed.proj",
        param_groups=_BACKBONE_GROUPS,
        feature_info=_BACKBONE_FEATURES,
        encoder_prefixes=("model.",),
        no_weights_reason=_NO_WEIGHTS,
        meta=dict(num_params=6_306_810, gmacs=0.63168, preprocessing=_PREPROCESSING),
        description=(
            "The 2D Swin-UNETR encoder (MONAI SwinTransformer, C=48, depths 2-2-2-2, heads 3-6-12-24, "
            "window 7, patch 2) that the thesis pretrains with SimSiam on IoU-based positive pairs of "
            "FLARE 2022 CT slices. It returns the 768-d SSL feature: the deepest 3×3 map of a 96×96 "
            "crop after MONAI's parameter-free channel LayerNorm, averaged over space; "
            "forward_features gives the 5 multi-scale maps. Loads SimSiam, DINO (bare keys) and "
            "fine-tuned SwinUNETR checkpoints through the swinvit2d converter. Input: 1-channel axial "
            "slices, RAS, 1×1 mm in-plane (2.5 mm slices), HU clipped to [-500, 500] and scaled to [0, 1]."
        ),
        results_md=_RESULTS_MD,
        notes=_NOTES_COMMON
        + ("Built with drop_path_rate=0 (a feature extractor); the thesis pretrains with 0.1.",),
        limitations=(
            "No pretrained weights exist; the model starts from random initialisation.",
            "2D only; any H×W is accepted (MONAI pads), but the thesis used 96×96 crops.",
        ),
    )
)

register_model(
    ModelSpec(
        name="swinvit2d-c48-simsiam-iou30-60",
        family="swinvit2d",
        builder=_create_simsiam,
        model_args=dict(
            _BACKBONE_ARGS, drop_path_rate=0.1, proj_hidden_dim=2048, out_dim=2048, pred_hidden_dim=512
        ),
        paper=_PAPER,
        input_size=(1, 96, 96),
        first_conv="backbone.model.patch_embed.proj",
        param_groups=_SIMSIAM_GROUPS,
        feature_info=_SIMSIAM_FEATURES,
        encoder_prefixes=("backbone.",),
        no_weights_reason=_NO_WEIGHTS,
        meta=dict(
            num_params=18_376_698,
            gmacs=0.64374,
            preprocessing=_PREPROCESSING,
            pretraining_recipe=_SIMSIAM_RECIPE,
        ),
        description=(
            "The thesis's pretraining module: the 2D Swin-UNETR encoder (C=48) with lightly-style SimSiam "
            "heads (projector 768→2048→2048→2048 with BN, last BN non-affine; predictor 2048→512→2048), "
            "configured as the best run pretrained on crop pairs whose box IoU lies in [0.3, 0.6] "
            "(100 epochs, batch 128, SGD lr 0.025, FLARE 2022's 2,000 unlabelled CTs as 237,449 slices). "
            "forward returns (z.detach(), p); backbone(x) gives the 768-d feature. A full SimSiam "
            "state_dict (backbone.model.*, projection_head.layers.*, prediction_head.layers.*) loads "
            "strictly. Input: 1-channel axial slices, RAS, 1×1 mm in-plane (2.5 mm slices), HU clipped "
            "to [-500, 500] and scaled to [0, 1], 96×96 crops."
        ),
        results_md=_RESULTS_MD,
        notes=_NOTES_COMMON
        + (
            "Registered as its own name with the SimSiam heads rather than as an alias: an alias needs a "
            "weights tag to carry the pretraining, and no weights exist; the recipe is in meta.",
            "The IoU interval is a data-pipeline choice: the architecture is the same for every interval.",
            "The projector and predictor are SSL heads, not a classifier: head_keys is empty and "
            "num_classes cannot be set.",
            "forward returns z detached (SimSiam's stop-gradient), as the reference does.",
        ),
        limitations=(
            "No pretrained weights exist; the model starts from random initialisation.",
            "Training-mode forwards need a batch > 1 (BatchNorm1d in the heads).",
        ),
    )
)

register_model(
    ModelSpec(
        name="swinunetr2d-c48",
        family="swinvit2d",
        builder=_create_segmenter,
        model_args=dict(
            in_chans=1,
            num_classes=14,
            feature_size=48,
            depths=(2, 2, 2, 2),
            num_heads=(3, 6, 12, 24),
            window_size=7,
            patch_size=2,
            img_size=(96, 96),
        ),
        paper=_PAPER,
        input_size=(1, 96, 96),
        head_keys=("out.",),
        # Both the Swin patch embedding and Swin-UNETR's encoder1 skip convs read the raw input.
        first_conv=("swinViT.patch_embed.proj", "encoder1.layer.conv1.conv", "encoder1.layer.conv3.conv"),
        param_groups=_UNETR_GROUPS,
        feature_info=_UNETR_FEATURES,
        encoder_prefixes=("swinViT.",),
        no_weights_reason=_NO_WEIGHTS,
        meta=dict(num_params=25_138_568, gmacs=2.51086, preprocessing=_PREPROCESSING),
        description=(
            "MONAI SwinUNETR in 2D (feature_size 48, 14 outputs: background + 13 FLARE 2022 abdominal "
            "organs), the model the thesis fine-tunes from the IoU-based SimSiam encoder: the encoder "
            "(swinViT.*) comes from the SimSiam checkpoint (backbone.model.X → swinViT.X), the decoder "
            "starts random. Fine-tuning: 15 labelled CTs, 225 epochs max, batch 32 slices × 2 crops, "
            "DiceCE, AdamW 1e-3 with 10-epoch warmup, cosine to 5e-5; inference by sliding window "
            "96×96, overlap 0.25. Input: 1-channel axial slices, RAS, 1×1 mm in-plane (2.5 mm slices), "
            "HU clipped to [-500, 500] and scaled to [0, 1]; H and W divisible by 32."
        ),
        results_md=_RESULTS_MD,
        notes=_NOTES_COMMON
        + (
            "MONAI 1.5 removed SwinUNETR's img_size argument that the reference passes; it had no effect "
            "on weights or outputs and is dropped (kept only as our ROI metadata).",
            "Label ids follow the FLARE order: 1 liver, 2 RK, 3 spleen, 4 pancreas, 5 aorta, 6 IVC, 7 RAG, "
            "8 LAG, 9 gallbladder, 10 esophagus, 11 stomach, 12 duodenum, 13 LK.",
            "The reported DSC is per 2D slice with background included, not FLARE's volumetric organ DSC.",
        ),
        limitations=(
            "No pretrained or fine-tuned weights exist; the model starts from random initialisation.",
            "2D only; H and W must be divisible by 32.",
        ),
        sliding_window=dict(roi_size=(96, 96), overlap=0.25),
    )
)

register_alias("swinvit2d-c48-simsiam-iou30-60-flare22", "swinvit2d-c48-simsiam-iou30-60")
