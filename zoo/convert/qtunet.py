"""QT-UNet family checkpoints → our state_dict.

Our modules keep the authors' key names, so conversion only unwraps. Known layouts:

(a) ``Pretrained_weights/<Size>/<dataset>_pretrained.pt``: a flat dict of tensors holding
    the ``encoder.*`` entries of the online BYOL network (QT-UNet only).
(b) PyTorch Lightning ``.ckpt`` of a fine-tuned model: ``{"state_dict": {...}, "epoch": …,
    "optimizer_states": …}``; the network sits under ``model.`` (QT-UNet, QT-UNet-A,
    VT-UNet-A) or ``swin_unet.`` (VT-UNet). Only ``state_dict`` is read.
(c) Lightning ``.ckpt`` of the SSL harness: the encoder under ``online_network.encoder.``,
    mapped to ``encoder.*`` exactly as the authors' own export does.
(d) A flat dict already in our naming (e.g. our safetensors).

Entries of a Lightning checkpoint outside the network (SSL projector/predictor, the EMA
``target_network``, the rotation/reconstruction heads) are dropped with a log line naming
them: they are training state, not part of the model, and the strict loader still
reports any network key that is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from zoo.convert import CheckpointFormatError, tensor_dict, unwrap_container

log = logging.getLogger(__name__)

__all__ = ["convert"]

_SSL_ENCODER = "online_network.encoder."


def _is_qt_layout(spec: Any) -> bool:
    return spec.model_args.get("decoder", "qt") == "qt"


def _lightning_prefix(spec: Any) -> str:
    # The attribute of the authors' LightningModule that holds the network.
    qt = _is_qt_layout(spec)
    return "model." if qt or spec.model_args.get("merge_depth", True) else "swin_unet."


def _top_prefixes(keys: list[str]) -> str:
    heads = sorted({k.split(".", 1)[0] + "." for k in keys})
    return ", ".join(heads[:8]) + (" …" if len(heads) > 8 else "")


def _from_lightning(sd: Mapping[str, torch.Tensor], spec: Any) -> dict[str, torch.Tensor]:
    prefix = _lightning_prefix(spec)
    ours = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    if ours:
        dropped = [k for k in sd if not k.startswith(prefix)]
        what = f"network under {prefix!r}"
    elif any(k.startswith(_SSL_ENCODER) for k in sd):
        if not _is_qt_layout(spec):
            raise CheckpointFormatError(
                f"{spec.name}: this is a QT-UNet SSL checkpoint ({_SSL_ENCODER}*), "
                "but the model uses VT-UNet blocks; its encoder cannot take these weights"
            )
        ours = {"encoder." + k[len(_SSL_ENCODER) :]: v for k, v in sd.items() if k.startswith(_SSL_ENCODER)}
        dropped = [k for k in sd if not k.startswith(_SSL_ENCODER)]
        what = f"SSL online encoder under {_SSL_ENCODER!r}"
    else:
        other = "swin_unet." if prefix == "model." else "model."
        hint = (
            f" (keys under {other!r}: a checkpoint of the other decoder type?)"
            if any(k.startswith(other) for k in sd)
            else ""
        )
        raise CheckpointFormatError(
            f"{spec.name}: Lightning checkpoint has no keys under {prefix!r} or {_SSL_ENCODER!r}; "
            f"found prefixes {_top_prefixes(list(sd))}{hint}"
        )
    log.info("qtunet checkpoint: Lightning state_dict, using the %s (%d entries)", what, len(ours))
    if dropped:
        log.warning(
            "qtunet checkpoint: dropped %d non-network Lightning entries (%s)",
            len(dropped),
            _top_prefixes(dropped),
        )
    return ours


def convert(checkpoint: Any, spec: Any) -> dict[str, torch.Tensor]:
    """Convert a QT-UNet-family checkpoint to ``spec``'s model naming.

    Args:
        checkpoint: what ``torch.load(path, weights_only=True)`` returned, or a flat
            safetensors dict.
        spec: the :class:`~zoo._registry.ModelSpec` of the target model.

    Returns:
        A flat ``{key: tensor}`` dict in our naming (possibly encoder-only).

    Raises:
        CheckpointFormatError: for a layout this family does not know.
    """
    inner, container = unwrap_container(checkpoint, ("state_dict",))
    if container is not None:
        sd = _from_lightning(tensor_dict(inner, f"{spec.name}: checkpoint['state_dict']"), spec)
    else:
        sd = tensor_dict(checkpoint, f"{spec.name}: checkpoint")
        for p in ("model.", "swin_unet.", "online_network."):
            if sd and all(k.startswith(p) for k in sd):
                raise CheckpointFormatError(
                    f"{spec.name}: every key starts with {p!r} but there is no Lightning 'state_dict' "
                    "container; wrap it as {'state_dict': ...} or strip the prefix"
                )
    if not sd:
        raise CheckpointFormatError(f"{spec.name}: checkpoint holds no tensors")

    qt = _is_qt_layout(spec)
    if qt and not any(k.startswith("encoder.") for k in sd):
        raise CheckpointFormatError(
            f"{spec.name}: expected QT-UNet keys (encoder.*, layers_up.*); "
            f"found prefixes {_top_prefixes(list(sd))}"
        )
    if not qt and any(k.startswith("encoder.") for k in sd):
        raise CheckpointFormatError(
            f"{spec.name}: checkpoint has QT-UNet 'encoder.*' keys, but VT-UNet models use flat "
            "patch_embed./layers./norm. keys and pre-norm blocks; it does not fit this model"
        )
    return sd
