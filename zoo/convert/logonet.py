"""LoGoNet / ULKANet checkpoints → our state_dict.

No checkpoint was published with the paper, so the only layouts are those a user's own
training of *this* implementation produces: a flat state_dict, a Lightning checkpoint
(``{"state_dict": …}``, keys usually prefixed ``model.``), or a DDP-wrapped module
(``module.``). Each is recognised explicitly; anything else is refused.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from zoo.convert import CheckpointFormatError, strip_prefix, tensor_dict, unwrap_container

log = logging.getLogger(__name__)

__all__ = ["convert"]

# Lightning saves the module's state under "state_dict"; plain training loops often use "model".
_CONTAINERS = ("state_dict", "model")
_LIGHTNING_PREFIX = "model."
_DDP_PREFIX = "module."


def _take_lightning_model(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the ``model.`` sub-module of a LightningModule's state, naming what else it held."""
    inside = {k[len(_LIGHTNING_PREFIX) :]: v for k, v in sd.items() if k.startswith(_LIGHTNING_PREFIX)}
    if len(inside) < len(sd):
        others = sorted(k for k in sd if not k.startswith(_LIGHTNING_PREFIX))
        log.warning(
            "checkpoint: keeping the %d 'model.' entries; dropping %d other LightningModule entries: %s",
            len(inside),
            len(others),
            ", ".join(others[:8]) + (" …" if len(others) > 8 else ""),
        )
    return inside


def convert(checkpoint: Any, spec: Any) -> dict[str, torch.Tensor]:
    """Return ``checkpoint`` as a flat state_dict in our LoGoNet/ULKANet key naming.

    Args:
        checkpoint: what ``torch.load(path, weights_only=True)`` or safetensors returned:
            a flat ``{name: tensor}``, ``{"state_dict": …}`` (Lightning) or ``{"model": …}``,
            with keys optionally prefixed ``model.`` (Lightning) and/or ``module.`` (DDP).
        spec: the :class:`~zoo._registry.ModelSpec` the weights are for.

    Returns:
        ``{key: tensor}`` with our keys; strictness is left to the loader.

    Raises:
        CheckpointFormatError: not a mapping of tensors, or no input convolution of ``spec``
            found after unwrapping (a checkpoint of another model or layout).
    """
    sd, container = unwrap_container(checkpoint, _CONTAINERS)
    what = f"{spec.name} checkpoint" + (f" ['{container}']" if container else "")
    if not isinstance(sd, dict) and hasattr(sd, "items"):
        sd = dict(sd.items())
    if isinstance(sd, dict) and any(isinstance(k, str) and k.startswith(_LIGHTNING_PREFIX) for k in sd):
        sd = _take_lightning_model(sd)
    sd = tensor_dict(sd, what)
    sd, _ = strip_prefix(sd, (_DDP_PREFIX,))

    expected = [f"{key}.weight" for key in spec.first_convs]
    if expected and not any(k in sd for k in expected):
        raise CheckpointFormatError(
            f"{what}: not a {spec.name} state_dict of this implementation — expected keys like "
            f"{expected[0]!r}, found {sorted(sd)[:5]} (of {len(sd)}). Known layouts: flat, "
            "{'state_dict': …} with optional 'model.' prefix (Lightning), {'model': …}, "
            "'module.' prefix (DDP)."
        )
    return sd
