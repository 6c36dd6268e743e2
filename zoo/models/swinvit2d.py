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

import importlib
from typing import TYPE_CHECKING, Any

from zoo._registry import ModelMeta, PaperInfo, SpecFields, Variant, register_family

if TYPE_CHECKING:
    from zoo.models._swinvit2d_net import SwinUNETR2d, SwinViT2d, SwinViT2dSimSiam

# The classes live in zoo.models._swinvit2d_net: building one imports MONAI's networks, listing does not.
_NET_MODULE = "zoo.models._swinvit2d_net"
_NET_NAMES = ["SimSiamHead", "SwinViT2d", "SwinViT2dSimSiam", "SwinUNETR2d"]


def __getattr__(name: str) -> Any:
    # ``from zoo.models.swinvit2d import SwinViT2d`` keeps working, importing MONAI's networks then.
    if name in _NET_NAMES:
        return getattr(importlib.import_module(_NET_MODULE), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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

# The Swin layout every thesis run uses, for the encoder alone and inside Swin-UNETR.
_SWIN = dict(depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), window_size=7, patch_size=2, img_size=(96, 96))
_BACKBONE_ARGS = dict(in_chans=1, embed_dim=48, **_SWIN)


def _no_head(name: str, kwargs: dict) -> dict:
    if kwargs.pop("num_classes", None) is not None:
        raise ValueError(f"{name} has no classification head, so num_classes cannot be set")
    return kwargs


def _swin_parts(
    prefix: str,
    encoder: str,
    decoder: tuple[str, ...] = (),
    head: tuple[str, ...] = (),
    first_conv: tuple[str, ...] | None = None,
    embed_dim: int = 48,
) -> SpecFields:
    """The parts of a model around a MONAI SwinTransformer under ``prefix`` (patch size 2).

    Args:
        prefix: the SwinTransformer's key prefix; encoder: the encoder's (it may hold more).
        decoder / head: key prefixes of those parts; first_conv: when more than the patch
            embedding reads the input.
        embed_dim: the Swin width, for feature_info.

    Returns:
        ``first_conv``, ``param_groups``, ``feature_info`` and ``encoder_prefixes``.
    """
    groups = {"stem": (f"{prefix}patch_embed.",)}
    groups.update({f"encoder.{i}": (f"{prefix}layers{i + 1}.",) for i in range(4)})
    groups.update(decoder=decoder, head=head)
    features = (dict(module=f"{prefix}patch_embed", num_chs=embed_dim, reduction=2),) + tuple(
        dict(module=f"{prefix}layers{i + 1}.0", num_chs=embed_dim * 2 ** (i + 1), reduction=4 * 2**i)
        for i in range(4)
    )
    return SpecFields(
        first_conv=first_conv or f"{prefix}patch_embed.proj",
        param_groups=groups,
        feature_info=features,
        encoder_prefixes=(encoder,),
    )


# Swin-UNETR's residual blocks on the skips (encoder1..4, encoder10) start random with an SSL
# encoder, so they belong with the decoder.
_UNETR_DECODER = tuple(f"encoder{i}." for i in (1, 2, 3, 4, 10)) + tuple(f"decoder{i}." for i in range(1, 6))
_SIMSIAM_HEADS = ("projection_head.", "prediction_head.")


def _create_backbone(**kwargs: Any) -> SwinViT2d:
    from zoo.models._swinvit2d_net import SwinViT2d

    return SwinViT2d(**_no_head("swinvit2d-c48", kwargs))


def _create_simsiam(**kwargs: Any) -> SwinViT2dSimSiam:
    from zoo.models._swinvit2d_net import SwinViT2dSimSiam

    return SwinViT2dSimSiam(**_no_head("swinvit2d-c48-simsiam", kwargs))


def _create_segmenter(**kwargs: Any) -> SwinUNETR2d:
    from zoo.models._swinvit2d_net import SwinUNETR2d

    return SwinUNETR2d(**kwargs)


_SHARED = SpecFields(
    paper=_PAPER,
    input_size=(1, 96, 96),
    no_weights_reason=_NO_WEIGHTS,
    results_md=_RESULTS_MD,
)

register_family(
    "swinvit2d",
    _SHARED,
    [
        Variant(
            "swinvit2d-c48",
            model_args=dict(_BACKBONE_ARGS),
            meta=ModelMeta(num_params=6_306_810, gmacs=0.63168, preprocessing=_PREPROCESSING),
            spec=SpecFields(
                builder=_create_backbone,
                **_swin_parts("model.", "model."),
                description=(
                    "The 2D Swin-UNETR encoder (MONAI SwinTransformer, C=48, depths 2-2-2-2, heads "
                    "3-6-12-24, window 7, patch 2) that the thesis pretrains with SimSiam on IoU-based "
                    "positive pairs of FLARE 2022 CT slices. It returns the 768-d SSL feature: the deepest "
                    "3×3 map of a 96×96 crop after MONAI's parameter-free channel LayerNorm, averaged over "
                    "space; forward_features gives the 5 multi-scale maps. Loads SimSiam, DINO (bare keys) "
                    "and fine-tuned SwinUNETR checkpoints through the swinvit2d converter. Input: 1-channel "
                    "axial slices, RAS, 1×1 mm in-plane (2.5 mm slices), HU clipped to [-500, 500] and "
                    "scaled to [0, 1]."
                ),
                notes=_NOTES_COMMON
                + ("Built with drop_path_rate=0 (a feature extractor); the thesis pretrains with 0.1.",),
                limitations=(
                    "No pretrained weights exist; the model starts from random initialisation.",
                    "2D only; any H×W is accepted (MONAI pads), but the thesis used 96×96 crops.",
                ),
            ),
        ),
        Variant(
            "swinvit2d-c48-simsiam-iou30-60",
            model_args=dict(
                _BACKBONE_ARGS, drop_path_rate=0.1, proj_hidden_dim=2048, out_dim=2048, pred_hidden_dim=512
            ),
            meta=ModelMeta(
                num_params=18_376_698,
                gmacs=0.64374,
                preprocessing=_PREPROCESSING,
                pretraining_recipe=_SIMSIAM_RECIPE,
            ),
            aliases={"swinvit2d-c48-simsiam-iou30-60-flare22": None},
            spec=SpecFields(
                builder=_create_simsiam,
                **_swin_parts("backbone.model.", "backbone.", head=_SIMSIAM_HEADS),
                description=(
                    "The thesis's pretraining module: the 2D Swin-UNETR encoder (C=48) with lightly-style "
                    "SimSiam heads (projector 768→2048→2048→2048 with BN, last BN non-affine; predictor "
                    "2048→512→2048), configured as the best run pretrained on crop pairs whose box IoU lies "
                    "in [0.3, 0.6] (100 epochs, batch 128, SGD lr 0.025, FLARE 2022's 2,000 unlabelled CTs "
                    "as 237,449 slices). forward returns (z.detach(), p); backbone(x) gives the 768-d "
                    "feature. A full SimSiam state_dict (backbone.model.*, projection_head.layers.*, "
                    "prediction_head.layers.*) loads strictly. Input: 1-channel axial slices, RAS, 1×1 mm "
                    "in-plane (2.5 mm slices), HU clipped to [-500, 500] and scaled to [0, 1], 96×96 crops."
                ),
                notes=_NOTES_COMMON
                + (
                    "Registered as its own name with the SimSiam heads rather than as an alias: an alias "
                    "needs a weights tag to carry the pretraining, and no weights exist; the recipe is in "
                    "meta.",
                    "The IoU interval is a data-pipeline choice: the architecture is the same for every "
                    "interval.",
                    "The projector and predictor are SSL heads, not a classifier: head_keys is empty and "
                    "num_classes cannot be set.",
                    "forward returns z detached (SimSiam's stop-gradient), as the reference does.",
                ),
                limitations=(
                    "No pretrained weights exist; the model starts from random initialisation.",
                    "Training-mode forwards need a batch > 1 (BatchNorm1d in the heads).",
                ),
            ),
        ),
        Variant(
            "swinunetr2d-c48",
            model_args=dict(in_chans=1, num_classes=14, feature_size=48, **_SWIN),
            meta=ModelMeta(num_params=25_138_568, gmacs=2.51086, preprocessing=_PREPROCESSING),
            spec=SpecFields(
                builder=_create_segmenter,
                head_keys=("out.",),
                **_swin_parts(
                    "swinViT.",
                    "swinViT.",
                    decoder=_UNETR_DECODER,
                    head=("out.",),
                    # Both the Swin patch embedding and Swin-UNETR's encoder1 skip convs read the input.
                    first_conv=(
                        "swinViT.patch_embed.proj",
                        "encoder1.layer.conv1.conv",
                        "encoder1.layer.conv3.conv",
                    ),
                ),
                description=(
                    "MONAI SwinUNETR in 2D (feature_size 48, 14 outputs: background + 13 FLARE 2022 "
                    "abdominal organs), the model the thesis fine-tunes from the IoU-based SimSiam encoder: "
                    "the encoder (swinViT.*) comes from the SimSiam checkpoint (backbone.model.X → "
                    "swinViT.X), the decoder starts random. Fine-tuning: 15 labelled CTs, 225 epochs max, "
                    "batch 32 slices × 2 crops, DiceCE, AdamW 1e-3 with 10-epoch warmup, cosine to 5e-5; "
                    "inference by sliding window 96×96, overlap 0.25. Input: 1-channel axial slices, RAS, "
                    "1×1 mm in-plane (2.5 mm slices), HU clipped to [-500, 500] and scaled to [0, 1]; H and "
                    "W divisible by 32."
                ),
                notes=_NOTES_COMMON
                + (
                    "MONAI 1.5 removed SwinUNETR's img_size argument that the reference passes; it had no "
                    "effect on weights or outputs and is dropped (kept only as our ROI metadata).",
                    "Label ids follow the FLARE order: 1 liver, 2 RK, 3 spleen, 4 pancreas, 5 aorta, 6 IVC, "
                    "7 RAG, 8 LAG, 9 gallbladder, 10 esophagus, 11 stomach, 12 duodenum, 13 LK.",
                    "The reported DSC is per 2D slice with background included, not FLARE's volumetric organ "
                    "DSC.",
                ),
                limitations=(
                    "No pretrained or fine-tuned weights exist; the model starts from random initialisation.",
                    "2D only; H and W must be divisible by 32.",
                ),
                sliding_window=dict(roi_size=(96, 96), overlap=0.25),
            ),
        ),
    ],
)
