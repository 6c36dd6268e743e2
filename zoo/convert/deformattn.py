"""Checkpoints of the joint 2D/3D SSL model (Nguyen et al., AAAI 2023) → our ``deformattn`` keys.

Our key names are the reference's (``intra.*``, ``inter.encoder.layers.*``,
``prototypes.prototypes{i}.weight``), so conversion only unwraps containers and prefixes.
Three upstream layouts are known (none published; formats from the authors' training scripts):

- **3D** (``ssl_{swav,deepcluster}_3D.py``): ``{epoch, state_dict, optimizer[, amp]}``, saved from
  DistributedDataParallel, keys ``module.intra.*``, ``module.inter.*``, ``module.prototypes.*``.
  Covers the whole model (and its prototype head).
- **Mask stage** (``mask_{swav,deepcluster}_3D.py``): ``{epoch, state_dict, optimizer}``, keys
  ``module.mask_token``, ``module.encoder.encoder.layers.*``, ``module.decoder.*``. Covers
  ``f_inter`` only; the mask token and the linear decoder are training-only and dropped.
- **2D** (VISSL → torchvision): a plain torchvision ResNet-50 state_dict. Covers the ResNet
  trunk only (``spec.encoder_prefixes``); ``deconv`` and ``f_inter`` stay newly initialised.

A flat dict already in our naming (e.g. a safetensors file) passes through unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from zoo.convert import CheckpointFormatError, layout_keys, strip_prefix, tensor_dict, unwrap_container

log = logging.getLogger(__name__)

__all__ = ["convert", "detect_format"]

_OUR_PREFIXES = ("intra.", "inter.", "prototypes.", "head.")
_TORCHVISION_TRUNK = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
_MASK_STAGE_ONLY = ("mask_token", "decoder.")


def detect_format(sd: Mapping[str, torch.Tensor]) -> str:
    """Name the layout of a flat, ``module.``-free state_dict: ``"3d"``, ``"mask"`` or ``"2d"``.

    Raises:
        CheckpointFormatError: for keys that fit none of them.
    """
    keys = layout_keys(sd, "deformattn")
    if any(k.startswith("encoder.encoder.layers.") for k in keys):
        return "mask"
    if all(k.startswith(_OUR_PREFIXES) for k in keys):
        return "3d"
    if all(k.startswith((*_TORCHVISION_TRUNK, "fc.")) for k in keys):
        return "2d"
    unknown = [k for k in keys if not k.startswith((*_OUR_PREFIXES, *_TORCHVISION_TRUNK, "fc."))]
    raise CheckpointFormatError(
        "deformattn: not a known checkpoint layout (expected 'intra.'/'inter.'/'prototypes.' keys of "
        "ResNet_Trans, 'encoder.encoder.layers.' keys of the mask stage, or a torchvision ResNet-50); "
        f"unrecognised keys: {unknown[:5]}"
    )


def _has_prototypes(spec: Any) -> bool:
    return bool(dict(getattr(spec, "model_args", {}) or {}).get("nmb_prototypes"))


def convert(checkpoint: Any, spec: Any) -> dict[str, torch.Tensor]:
    """Convert any known checkpoint of this family to our state_dict naming.

    Args:
        checkpoint: what ``torch.load(path, weights_only=True)`` returned, or a flat dict.
        spec: the target :class:`~zoo._registry.ModelSpec`.

    Returns:
        A flat state_dict in our naming. For mask-stage and 2D checkpoints it holds only the
        part they cover (``inter.*``, resp. the ResNet trunk ``intra.{conv1,bn1,layer1-4}.*``).

    Raises:
        CheckpointFormatError: for containers or keys this family does not know.
    """
    inner, container = unwrap_container(checkpoint, ("state_dict",))
    if container is None and isinstance(checkpoint, Mapping) and "optimizer" in checkpoint:
        raise CheckpointFormatError(
            "deformattn: training checkpoint without a 'state_dict' entry (keys: "
            f"{sorted(map(str, checkpoint))[:8]})"
        )
    sd = tensor_dict(inner, "deformattn checkpoint" + (f"['{container}']" if container else ""))
    sd, _ = strip_prefix(sd, ("module.",))
    fmt = detect_format(sd)

    if fmt == "mask":
        dropped = [k for k in sd if k.startswith(_MASK_STAGE_ONLY)]
        stray = [k for k in sd if not k.startswith(("encoder.", *_MASK_STAGE_ONLY))]
        if stray:
            raise CheckpointFormatError(f"deformattn mask-stage checkpoint: unexpected keys {stray[:5]}")
        log.info("deformattn: mask-stage checkpoint; dropping training-only %s; covers f_inter only", dropped)
        return {"inter." + k[len("encoder.") :]: v for k, v in sd.items() if k.startswith("encoder.")}

    if fmt == "2d":
        fc = [k for k in sd if k.startswith("fc.")]
        if fc:
            log.info("deformattn: 2D torchvision checkpoint; dropping its classifier %s", fc)
        log.info("deformattn: 2D checkpoint covers the ResNet-50 trunk only; deconv and f_inter stay new")
        return {"intra." + k: v for k, v in sd.items() if not k.startswith("fc.")}

    if not _has_prototypes(spec):
        heads = [k for k in sd if k.startswith("prototypes.")]
        if heads:
            log.info("deformattn: dropping the SSL prototype head %s (the target model has none)", heads)
            sd = {k: v for k, v in sd.items() if not k.startswith("prototypes.")}
    return sd
