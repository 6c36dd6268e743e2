"""Joint 2D/3D self-supervised ResNet-50 + inter-slice deformable attention (Nguyen et al., AAAI 2023).

A volume of ``N = 64`` slices goes slice by slice through a torchvision-layout ResNet-50
(``f_intra``); the globally pooled, L2-normalised features of its four stages plus the final
pool are concatenated (5888-d) and projected to 640-d. Four post-LN Transformer layers built on
lucidrains' ``DeformableAttention1D`` (``f_inter``) mix the slices, and the mean over slices,
L2-normalised, is the 640-d volume embedding. The SwAV / DeepCluster-v2 variants keep the
prototype head used for the 3D clustering stage.

Reference: ``duyhominhnguyen/Self-supervised-Image-Volume-Intra-Inter-Contrastive`` at
2cc652e, ``utils/models.py::ResNet_Trans`` with ``deformable-attention==0.0.18``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from zoo._registry import ModelMeta, PaperInfo, SpecFields, Variant, register_family

if TYPE_CHECKING:
    from zoo.models._deformattn_net import ResNet50DeformAttn

# The classes live in zoo.models._deformattn_net: building one imports torchvision, listing does not.
_NET_MODULE = "zoo.models._deformattn_net"
_NET_NAMES = [
    "ContinuousPositionBias",
    "DeformableAttention1D",
    "DeformableEncoderLayer",
    "InterSliceTransformer",
    "MultiScaleResNet50",
    "ResNet50DeformAttn",
]

# Widths of GAP(layer1..4) and the final pool of a ResNet-50 (layer4 again).
_MULTI_SCALE_DIMS = (256, 512, 1024, 2048, 2048)


def __getattr__(name: str) -> Any:
    # ``from zoo.models.deformattn import ResNet50DeformAttn`` keeps working, importing the classes then.
    if name in _NET_NAMES or name in ("sample_along_sequence", "normalize_positions"):
        return getattr(importlib.import_module(_NET_MODULE), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------
# registrations


_PAPER = PaperInfo(
    title=(
        "Joint Self-Supervised Image-Volume Representation Learning with Intra-Inter Contrastive Clustering"
    ),
    authors=(
        "Duy M. H. Nguyen, Hoang Nguyen, Truong T. N. Mai, Tri Cao, Binh T. Nguyen, Nhat Ho, "
        "Paul Swoboda, Shadi Albarqouni, Pengtao Xie, Daniel Sonntag"
    ),
    venue="AAAI Conference on Artificial Intelligence (AAAI 2023), 37(12):14426-14435",
    year=2023,
    url="https://arxiv.org/abs/2212.01893",
    code_url="https://github.com/duyhominhnguyen/Self-supervised-Image-Volume-Intra-Inter-Contrastive",
    bibtex="""@inproceedings{nguyen2023joint,
  title     = {Joint Self-Supervised Image-Volume Representation Learning
               with Intra-Inter Contrastive Clustering},
  author    = {Nguyen, Duy M. H. and Nguyen, Hoang and Mai, Truong T. N. and Cao, Tri and Nguyen, Binh T.
               and Ho, Nhat and Swoboda, Paul and Albarqouni, Shadi and Xie, Pengtao and Sonntag, Daniel},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  volume    = {37},
  number    = {12},
  pages     = {14426--14435},
  year      = {2023}
}""",
)

_RESNET_PREFIXES = tuple(f"intra.{m}." for m in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4"))

_NO_WEIGHTS = (
    "The authors never published the 3D checkpoints (swav3D.pth / deepcluster3D.pth), and the 2D "
    "ResNet-50 weights their README says are included in weights/ are missing from the repository. Pass "
    "checkpoint_path= to load a checkpoint in the authors' formats (3D {epoch, state_dict, optimizer} "
    "with 'module.' keys, mask-stage checkpoints, or a 2D torchvision ResNet-50 state_dict for the ResNet"
    " alone)."
)

_DESCRIPTION = (
    "Joint 2D/3D self-supervised encoder of Nguyen et al. (AAAI 2023). Each of the 64 slices of a [B, 64,"
    " 3, H, W] volume (grey slice repeated to 3 channels, 128x128 in training) goes through a "
    "torchvision-layout ResNet-50 (f_intra, pretrained with 2D SwAV or DeepCluster-v2 on slices); the "
    "L2-normalised global pools of layers 1-4 and the final pool form a 5888-d slice feature projected to"
    " 640-d. Four post-LN Transformer layers of 1D deformable attention (f_inter, pretrained by masked "
    "embedding prediction) mix the slices; the mean over slices, L2-normalised, is a 640-d volume "
    "embedding trained with a 3D SwAV or DeepCluster-v2 clustering loss. Downstream, the authors transfer"
    " the ResNet-50 alone as a 2D encoder (encoder_2d()). Expected input: a volume "
    "centre-cropped/zero-padded to 64x128x128 (resample beforehand: the authors' pipeline only crops or "
    "pads), repeated to 3 channels; the 3D code applies no intensity normalisation, the 2D stage saw [0, "
    "1] images with ImageNet mean/std."
)

_RESULTS_MD = """\
**Table 3**, Universal pretraining, seen domains. BraTS2018 = 3D IoU, MRI segmentation; LUNA2016-v2 = AUC, CT classification.

| Method | BraTS2018 | LUNA2016-v2 |
|---|---|---|
| Scratch (3D) | 58.51 ± 2.61 | 94.15 ± 3.97 |
| V-Net | 59.01 ± 2.59 | 95.85 ± 1.09 |
| 3D-Transformer | 66.54 ± 0.40 | 85.15 ± 2.62 |
| I3D | 67.83 ± 0.75 | 92.43 ± 2.63 |
| NiftyNet | 60.78 ± 1.60 | 94.16 ± 1.52 |
| Med3D | 66.09 ± 1.35 | 91.32 ± 1.47 |
| 3D-Rotation | 56.48 ± 1.78 | 95.91 ± 1.26 |
| 3D-JigSaw | 59.65 ± 0.81 | 89.12 ± 1.71 |
| Models Genesis | 67.96 ± 1.29 | 92.46 ± 5.54 |
| Universal Model | 72.10 ± 0.67 | N/A |
| 3D-DeepCluster | 59.20 ± 1.69 | 89.03 ± 2.56 |
| 3D-SwAV | 62.81 ± 1.03 | 88.79 ± 5.48 |
| TransVW | 68.82 ± 0.38 | 93.84 ± 6.73 |
| SwinViT3D | 70.58 ± 1.27 | 88.68 ± 2.63 |
| Scratch (2D) | 66.82 ± 1.32 | N/A |
| Pre-trained ImageNet | 71.24 ± 2.30 | N/A |
| SimCLR | 70.37 ± 1.11 | N/A |
| Moco-v2 | 70.82 ± 0.22 | N/A |
| Barlow-Twins | 67.35 ± 0.55 | N/A |
| Deep-Cluster-v2 | 69.21 ± 2.10 | N/A |
| SwAV | 69.83 ± 2.44 | N/A |
| Our (DeepCluster-v2) | 72.81 ± 0.15 | 93.91 ± 0.67 |
| Our (SwAV) | **73.03** ± 0.42 | 94.22 ± 1.11 |

**Table 4**, Universal pretraining, unseen domains, MMWHS segmentation (3D IoU).

| Method | MMWHS (CT) | MMWHS (MRI) |
|---|---|---|
| Scratch (3D) | 68.29 ± 1.68 | 67.04 ± 2.18 |
| V-Net | 69.66 ± 3.65 | 67.50 ± 3.76 |
| 3D-Transformer | 67.30 ± 2.29 | 67.64 ± 2.21 |
| I3D | 76.63 ± 2.32 | 66.71 ± 1.27 |
| Nifty Net | 74.91 ± 2.78 | 64.60 ± 1.96 |
| Med3D | 75.01 ± 0.74 | 63.43 ± 0.61 |
| 3D Rotation | 67.54 ± 2.80 | 71.36 ± 1.70 |
| 3D Jigsaw | 68.40 ± 2.92 | 72.99 ± 2.54 |
| Model Geneis | 76.48 ± 2.89 | 74.53 ± 1.69 |
| Universal Model | 78.14 ± 0.77 | 77.52 ± 0.50 |
| 3D-DeepCluster | 69.47 ± 1.44 | 75.83 ± 2.29 |
| 3D-SwAV | 69.90 ± 1.31 | 69.41 ± 1.93 |
| TransVW | 79.74 ± 2.78 | 75.08 ± 2.04 |
| SwinViT3D | 70.19 ± 1.23 | 78.25 ± 1.66 |
| Scratch (2D) | 74.25 ± 2.05 | 52.34 ± 4.31 |
| Pre-trained ImageNet | 73.49 ± 3.15 | 72.66 ± 2.46 |
| SimCLR | 78.56 ± 2.12 | 72.72 ± 1.29 |
| Moco-v2 | 80.25 ± 0.93 | 71.85 ± 1.25 |
| Barlow-Twins | 80.95 ± 2.47 | 70.90 ± 1.89 |
| Deep-Cluster-v2 | 81.03 ± 1.17 | 74.51 ± 1.92 |
| SwAV | 82.15 ± 1.19 | 74.50 ± 1.20 |
| Our (DeepCluster-v2) | 83.58 ± 1.54 | 78.14 ± 1.32 |
| Our (SwAV) | **84.89** ± 0.68 | **78.73** ± 1.21 |

**Table 5**, VinDr-CXR 2D abnormality detection (AP@0.5). All 3D CNN-based methods: N/A.

| Method | VinDr-CXR |
|---|---|
| Scratch (2D) | 24.35 ± 0.04 |
| Pre-trained ImageNet | 27.82 ± 0.29 |
| SimCLR | 26.87 ± 0.32 |
| Moco-v2 | 27.20 ± 0.66 |
| Barlow-Twins | 26.83 ± 0.13 |
| Deep-Cluster-v2 | 28.03 ± 0.41 |
| SwAV | 27.70 ± 0.22 |
| Our (DeepCluster-v2) | 28.47 ± 0.40 |
| Our (SwAV) | 27.47 ± 0.18 |

**Table 6**, JSRT 2D X-ray segmentation (Dice), Unified pretraining, by fraction of labelled data.

| Method | Backbone | 20% | 40% | 100% |
|---|---|---|---|---|
| Scratch CNN | RN50 | 84.05 | 87.63 | 90.96 |
| Scratch PTU | Trans. | 85.55 | 88.83 | 91.22 |
| Pre-trained ImageNet | RN50 | 87.90 | 90.01 | 91.73 |
| Moco-v2 | RN50 | 88.65 | 91.03 | 92.32 |
| PGL | RN50 | 89.01 | 91.39 | 92.76 |
| PCRL | RN50 | 89.55 | 91.53 | 93.07 |
| Moco-v3 | Trans. | 90.07 | 91.75 | 92.68 |
| DINO | Trans. | 90.40 | 92.16 | 93.03 |
| USST | Trans. | 91.88 | 93.15 | 94.08 |
| Our (DeepC-v2) | RN50 | 90.60 | 92.87 | 94.31 |
| Our (SwAV) | RN50 | 89.98 | 93.03 | 94.45 |

**Table 7**, ablation of the SwAV variant on MMWHS.

| Setting | CT | MRI |
|---|---|---|
| W/o mask prediction | 82.53 | 77.35 |
| W/o 3D clustering | 81.97 | 76.18 |
| Full model | 84.89 | 78.73 |
| Full model w/o multi-feature | 83.56 | 78.12 |

**Table 8**, parameter counts: SwinViT3D 62.19 M; TransVW 19.7 M; Universal Model 19.7 M; USST 47.8 M; Ours 31.16 M.
"""  # noqa: E501 (tables verbatim)

_NOTES = (
    "Reproduced quirk: the pinned deformable-attention 0.0.18 samples every key/value at the centre of "
    "the 640-long axis (mean of positions 319/320) scaled by 1 - |offset position|/2, so the offsets only"
    " rescale; this is the default because the authors' weights were trained with it. "
    "corrected_sampling=True gives the fixed sampling of release 0.0.20 (same parameters and keys, "
    "different numerics).",
    "Slices are the attention's convolution channels and the 640-d embedding axis its sequence (dim = "
    "n_frames), so exactly 64 slices are required and slice order is encoded only through the per-channel"
    " weights; the paper's 'positional encoding' is only the continuous relative-position bias.",
    "The paper's 'four pyramid structure blocks' are four identical post-LN layers in the code (FFN "
    "640-720-640, GELU).",
    "Multi-level feature: GAP(layer4) and the final pool are the same vector, so layer4 counts twice in "
    "the 5888-d concat.",
    "The 5888->640 projection is a ConvTranspose1d(k=1) in the reference (weight (5888, 640, 1)), kept as"
    " such for key compatibility.",
    "The reference's ConstantPad2d(1) + conv1 padding 2 equals torchvision's padding 3; torchvision's "
    "stem is used.",
    "Preprocessing (3D): npy volume permuted to (D, H, W), torchio CropOrPad to (64, 128, 128) with no "
    "resampling and no intensity normalisation in code; the 2D stage saw [0, 1] images with ImageNet "
    "mean/std (scaling to [0, 1] then ImageNet mean/std is our inference, not the authors' statement).",
    "Preprocessing (2D downstream, MMWHS): per volume clip to [0.5, 99.5] percentiles, z-score, /10, clip"
    " [0, 1], x255 to uint8 PNG; slices resized to 224x224 (nearest), 1 channel in 0-255, no mean/std.",
    "encoder_2d(in_chans=1) sums conv1's RGB weights, the adaptation the authors' segmentation code applies.",
    "checkpoint_path= accepts 3D checkpoints ({epoch, state_dict, optimizer[, amp]}, 'module.' keys; a "
    "prototype head absent from the chosen model is dropped), mask-stage checkpoints (only f_inter: "
    "'module.encoder.' -> 'inter.', mask_token and decoder dropped) and 2D torchvision ResNet-50 "
    "state_dicts (only the ResNet trunk: deconv and f_inter stay newly initialised).",
    "The prototypes are plain bias-free Linear layers; SwAV L2-normalises their rows before each training"
    " step, outside the forward, so the logits are z @ W.T.",
    "num_classes > 0 adds a linear classifier on the volume embedding (our addition; the paper's LUNA "
    "classifier of two FC layers was not released).",
    "Spec slip: spec §2.5 counts 409 state_dict keys; the reference manifest has 408 (320 intra + 88 inter).",
)

_LIMITATIONS = (
    "No pretrained weights are available: the 3D checkpoints were never published and the 2D ones are "
    "missing.",
    "Exactly 64 slices per volume; other depths must be cropped, padded or resampled to 64.",
    "The volume is not resampled by the authors' pipeline (crop/pad only): the spacing seen in "
    "pretraining is undefined.",
)


def _create(**kwargs: Any) -> ResNet50DeformAttn:
    from zoo.models._deformattn_net import ResNet50DeformAttn

    return ResNet50DeformAttn(**kwargs)


# Parts: the ResNet stem and stages, then the slice projection + inter-slice Transformer as the
# last encoder stage; no decoder. Feature maps are per slice (slices folded into the batch).
_PARAM_GROUPS = {
    "stem": ("intra.conv1.", "intra.bn1."),
    **{f"encoder.{i}": (f"intra.layer{i + 1}.",) for i in range(4)},
    "encoder.4": ("intra.deconv.", "inter."),
    "decoder": (),
    "head": ("head.", "prototypes."),
}
_FEATURE_INFO = tuple(
    dict(module=f"intra.layer{i + 1}", num_chs=c, reduction=4 * 2**i, per_slice=True)
    for i, c in enumerate(_MULTI_SCALE_DIMS[:4])
)

_SHARED = SpecFields(
    builder=_create,
    paper=_PAPER,
    weights=(),
    default_tag=None,
    input_size=(64, 3, 128, 128),  # (slices, channels, H, W): the reference takes slices before channels
    first_conv="intra.conv1",
    encoder_prefixes=_RESNET_PREFIXES,
    components={"inter": ("inter.",)},  # mask-stage checkpoints hold the Transformer alone
    no_weights_reason=_NO_WEIGHTS,
    param_groups=_PARAM_GROUPS,
    feature_info=_FEATURE_INFO,
    description=_DESCRIPTION,
    results_md=_RESULTS_MD,
    notes=_NOTES,
    limitations=_LIMITATIONS,
)
_ARGS = dict(in_chans=3, n_frames=64, embed_dim=640, ffn_hidden=720, depth=4, img_size=(128, 128))
# gmacs: FlopCounterMode at 1x64x3x128x128, batch 1 (grid_sample is not counted).
_PAPER_META = ModelMeta(
    paper_params=31_160_000,
    flops_convention="paper reports parameters only (Table 8: 31.16 M, prototype head excluded); no FLOPs",
    # Table 8 counts the network without the SwAV/DeepCluster prototype heads.
    paper_setting=dict(model_args=dict(nmb_prototypes=())),
)
_CLUSTER_HEADS = SpecFields(head_keys=("head.", "prototypes."))

register_family(
    "deformattn",
    _SHARED,
    [
        Variant(
            "resnet50-deformattn",
            model_args=_ARGS,
            meta=ModelMeta(**_PAPER_META, num_params=31_162_884, gmacs=87.355),
            spec=SpecFields(head_keys=("head.",)),
        ),
        Variant(
            "resnet50-deformattn-swav",
            model_args=dict(_ARGS, nmb_prototypes=(3000,)),
            meta=ModelMeta(**_PAPER_META, num_params=33_082_884, gmacs=87.357),
            spec=_CLUSTER_HEADS,
        ),
        Variant(
            "resnet50-deformattn-deepcluster",
            model_args=dict(_ARGS, nmb_prototypes=(4, 4, 4)),
            meta=ModelMeta(**_PAPER_META, num_params=31_170_564, gmacs=87.355),
            aliases={"resnet50-deformattn-deepclusterv2": None},
            spec=_CLUSTER_HEADS,
        ),
    ],
)
