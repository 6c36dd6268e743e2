"""MIS-FM checkpoints (PCT-Net, FMUNet) → our state_dict.

Known layouts, each handled explicitly:

* PyMIC training checkpoint (how the released ``pctnet_pretrain.pt``,
  ``pctnet_ct10k_volf.pt`` and ``fmunet_abd1k_volf.pt`` are saved): a dict
  ``{'iteration', 'valid_pred', 'model_state_dict', 'optimizer_state_dict'}`` whose
  ``model_state_dict`` holds the network with no prefix (PyMIC saves ``net.module``'s
  state under DataParallel).
* a flat state_dict in the reference naming — which is also ours, including our own
  safetensors files;
* a flat state_dict saved from an ``nn.DataParallel`` wrapper (every key ``module.``-prefixed).

Our module names equal the reference's, so no key is renamed. The nnFormer
relative-position index stored in PCT-Net checkpoints is checked against the formula our
model uses: a different index would make the pretrained bias table mean something else.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from zoo.convert import CheckpointFormatError, strip_prefix, tensor_dict, unwrap_container

log = logging.getLogger(__name__)

__all__ = ["convert"]

# Top-level module names of each architecture's state_dict.
_TOP_LEVEL = {
    "pctnet": frozenset({"embeddings", "pyramid_ct", "pred_heads"}),
    "fmunet": frozenset({"project", "encoder", "decoder", "out_layers"}),
}

_PYMIC_CONTAINER = "model_state_dict"


def _architecture(spec: Any) -> str:
    name = getattr(spec, "name", "")
    for arch in _TOP_LEVEL:
        if name == arch or name.startswith(arch + "-"):
            return arch
    raise CheckpointFormatError(f"the pctnet converter knows pctnet and fmunet, not {name!r}")


def _check_relative_position_index(sd: Mapping[str, torch.Tensor]) -> None:
    from zoo.models.pctnet import nnformer_relative_position_index

    for key, value in sd.items():
        if not key.endswith("relative_position_index"):
            continue
        n = value.shape[0]
        window = round(n ** (1 / 3))
        if value.ndim != 2 or value.shape[1] != n or window**3 != n:
            raise CheckpointFormatError(f"{key}: expected a (w³, w³) index, found shape {tuple(value.shape)}")
        if not torch.equal(value.to(torch.int64), nnformer_relative_position_index(window)):
            raise CheckpointFormatError(
                f"{key}: the stored relative-position index is not nnFormer's (window {window}); "
                "this checkpoint's bias tables would be misread"
            )


def convert(checkpoint: Any, spec: Any) -> dict[str, torch.Tensor]:
    """Convert a PCT-Net / FMUNet checkpoint to our state_dict.

    Args:
        checkpoint: what ``torch.load(path, weights_only=True)`` returned, or a flat
            safetensors dict.
        spec: the :class:`~zoo._registry.ModelSpec` of ``pctnet`` or ``fmunet``.

    Returns:
        A flat ``{key: tensor}`` in our (= the reference's) key naming. Strictness is left
        to the loader.

    Raises:
        CheckpointFormatError: for a container, prefix or key set this family does not know.
    """
    arch = _architecture(spec)
    obj, container = unwrap_container(checkpoint, (_PYMIC_CONTAINER,))
    if container is not None:
        log.info(
            "%s: PyMIC checkpoint (iteration %s); using %r, ignoring %s",
            arch,
            checkpoint.get("iteration", "?"),
            container,
            sorted(k for k in checkpoint if k != container),
        )
    sd = tensor_dict(obj, what=f"{arch} checkpoint")
    if not sd:
        raise CheckpointFormatError(f"{arch} checkpoint: no tensors found")

    sd, prefix = strip_prefix(sd, ("module.",))
    if prefix is not None:
        log.info("%s: stripped the DataParallel prefix %r from every key", arch, prefix)

    expected = _TOP_LEVEL[arch]
    found = {k.split(".", 1)[0] for k in sd}
    if not found & expected:
        other = [a for a, names in _TOP_LEVEL.items() if found & names and a != arch]
        hint = f" (they look like a {other[0]} checkpoint)" if other else ""
        raise CheckpointFormatError(
            f"{arch} checkpoint: top-level keys {sorted(found)[:8]} are none of {sorted(expected)}{hint}"
        )
    unknown = found - expected
    if unknown:
        raise CheckpointFormatError(
            f"{arch} checkpoint: unknown top-level keys {sorted(unknown)[:8]} next to "
            f"{sorted(found & expected)}; a prefix or wrapper this converter does not know"
        )
    if arch == "pctnet":
        _check_relative_position_index(sd)
    return sd
