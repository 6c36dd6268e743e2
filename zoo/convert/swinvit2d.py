"""Checkpoints of the IoU-positives thesis (dittohed/exploring-ssl-for-ct) → the swinvit2d models.

The reference saves plain ``torch.save(module.state_dict())`` dicts in three layouts, none of
them published:

* SimSiam pretraining (``main_simsiam.py``): ``backbone.model.*`` (MONAI SwinTransformer, 126
  entries) + ``projection_head.layers.*`` + ``prediction_head.layers.*``.
* DINO pretraining (``main_dino.py``): the bare SwinTransformer keys (``patch_embed.*``,
  ``layers1..4.*``); heads and teacher are not saved.
* Fine-tuning (``main_finetune.py``, ``<run>_best.pt``): a full MONAI SwinUNETR (``swinViT.*``,
  ``encoder*``, ``decoder*``, ``out.*``).

Our own ``swinvit2d-c48`` state_dict (``model.*``) is accepted too, and a ``module.`` prefix
(DataParallel) on any of them. The encoder is renamed to the target model's encoder prefix
(``model.``, ``backbone.model.`` or ``swinViT.``); parts the target lacks (SSL heads, the
segmentation decoder) are dropped with a log line. Coverage and strictness are decided by the
caller (``zoo.load_weights``), not here.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from zoo.convert import CheckpointFormatError, layout_keys, strip_prefix, tensor_dict

log = logging.getLogger(__name__)

__all__ = ["convert", "detect_layout"]

_SSL_HEADS = ("projection_head.", "prediction_head.")
_SEG_PARTS = ("encoder", "decoder", "out.")
_ENCODER_ROOTS = ("patch_embed.", "layers1.", "layers2.", "layers3.", "layers4.")
# Source layout → the prefix in front of the bare SwinTransformer keys.
_ENCODER_PREFIX = {"simsiam": "backbone.model.", "swinunetr": "swinViT.", "backbone": "model.", "bare": ""}


def detect_layout(sd: dict[str, torch.Tensor]) -> str:
    """Name the reference layout of a flat state_dict: simsiam, swinunetr, backbone or bare.

    Raises:
        CheckpointFormatError: when the keys fit none of them.
    """
    keys = layout_keys(sd, "swinvit2d")
    if any(k.startswith("backbone.model.") for k in keys):
        bad = [k for k in keys if not k.startswith(("backbone.model.", *_SSL_HEADS))]
        if bad:
            raise CheckpointFormatError(f"SimSiam-style checkpoint with unknown entries {bad[:5]}")
        return "simsiam"
    if any(k.startswith("swinViT.") for k in keys):
        bad = [k for k in keys if not k.startswith(("swinViT.", *_SEG_PARTS))]
        if bad:
            raise CheckpointFormatError(f"SwinUNETR-style checkpoint with unknown entries {bad[:5]}")
        return "swinunetr"
    if all(k.startswith("model.") for k in keys):
        return "backbone"
    if all(k.startswith(_ENCODER_ROOTS) for k in keys):
        return "bare"
    raise CheckpointFormatError(
        "not a checkpoint of the swinvit2d family: expected a SimSiam state_dict (backbone.model.*, "
        "projection_head.*, prediction_head.*), a SwinUNETR one (swinViT.*, encoder*, decoder*, out.*), "
        f"bare SwinTransformer keys (patch_embed.*, layers1..4.*) or ours (model.*); first keys: {keys[:5]}"
    )


def _target_layout(spec: Any) -> str:
    """The layout of ``spec``'s own state_dict, read off its first conv key."""
    first = spec.first_convs[0] if spec.first_convs else ""
    prefix = first[: -len("patch_embed.proj")] if first.endswith("patch_embed.proj") else None
    for layout, p in _ENCODER_PREFIX.items():
        if p == prefix and layout != "bare":
            return layout
    raise CheckpointFormatError(f"{spec.name}: not a swinvit2d model (first conv {first!r})")


def convert(checkpoint: Any, spec: Any) -> dict[str, torch.Tensor]:
    """Convert a reference checkpoint to the state_dict of ``spec``'s model.

    Args:
        checkpoint: what ``torch.load(path, weights_only=True)`` returned, or a safetensors dict.
        spec: the target :class:`~zoo._registry.ModelSpec` (``swinvit2d-c48``,
            ``swinvit2d-c48-simsiam-iou30-60`` or ``swinunetr2d-c48``).

    Returns:
        A flat state_dict in the target's key naming. SimSiam and DINO checkpoints give the
        encoder only (``swinViT.*`` for the segmenter, as the reference fine-tuning does).

    Raises:
        CheckpointFormatError: for an unknown layout or a 3D checkpoint.
    """
    sd = tensor_dict(checkpoint)
    sd, stripped = strip_prefix(sd, ("module.",))
    if stripped:
        log.info("%s: stripped the DataParallel prefix 'module.'", spec.name)
    layout = detect_layout(sd)
    target = _target_layout(spec)
    src, dst = _ENCODER_PREFIX[layout], _ENCODER_PREFIX[target]

    odd = [k for k in sd if k.startswith(src) and not k[len(src) :].startswith(_ENCODER_ROOTS)]
    if src and odd:
        raise CheckpointFormatError(
            f"{spec.name}: encoder entries {odd[:5]} are not part of the legacy Swin-UNETR encoder "
            "(patch_embed, layers1..4); SwinUNETR-v2 (use_v2=True) checkpoints are not this family"
        )

    embed = sd.get(f"{src}patch_embed.proj.weight")
    if embed is not None and embed.ndim != 4:
        raise CheckpointFormatError(
            f"{spec.name}: patch embedding weight has shape {tuple(embed.shape)}; this family is 2D "
            "(expected (C, in_chans, 2, 2)), the checkpoint looks like the reference's 3D path"
        )

    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in sd.items():
        if key.startswith(src) and key[len(src) :].startswith(_ENCODER_ROOTS):
            out[dst + key[len(src) :]] = value
        elif layout == target:
            out[key] = value  # SSL heads or segmentation decoder of the same model type
        else:
            dropped.append(key)
    if dropped:
        parts = sorted({k.split(".", 1)[0] for k in dropped})
        log.info(
            "%s: %s checkpoint; dropping %d entries the model lacks (%s)",
            spec.name,
            layout,
            len(dropped),
            parts,
        )
    log.debug("%s: %s layout, encoder %r → %r, %d entries", spec.name, layout, src, dst, len(out))
    return out
