"""timm's training API for zoo models, from a little data per family.

:class:`ModelApiMixin` gives a model ``feature_info``, ``group_matcher``, ``no_weight_decay``,
``get_classifier``, ``reset_classifier`` and ``set_grad_checkpointing`` in the form timm's
optimiser factory and training scripts call them. A family supplies four facts about an
instance: its parts (the registry's ``param_groups`` form: ``stem``, ``encoder.i``, ``decoder``,
``head`` → key prefixes), its encoder feature maps, its head keys (the registry's ``head_keys``)
and the modules that gradient checkpointing recomputes. ``forward_features`` / ``forward_head``
stay with each family, since what "features" are differs.

Checkpointing is opt-in per call site: a family runs each recomputable module through
:func:`checkpointed`, which is a plain call until ``set_grad_checkpointing`` marks the module.

Nothing here imports timm: :class:`FeatureInfo` has the accessors of timm's class of that name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from zoo.layers.tracing import is_tracing

__all__ = ["FeatureInfo", "ModelApiMixin", "checkpointed", "no_weight_decay_rule"]


class FeatureInfo(Sequence):
    """Encoder feature maps, one ``{"module", "num_chs", "reduction", …}`` dict per map.

    The accessors of timm's ``FeatureInfo`` (``channels()``, ``reduction()``, ``module_name()``,
    ``get()``, ``get_dicts()``, ``from_other()``), and a sequence of the selected dicts, which is
    how the zoo read the former list of dicts. Unlike timm's, a reduction may be a (D, H, W)
    tuple (anisotropic pooling), and the dicts gain no ``index`` key (the zoo's hooks use
    ``index`` for the position of a map in a module's tuple output).

    Args:
        info: one dict per feature map, shallow to deep.
        out_indices: the maps selected (negative counts from the end); default all.
    """

    def __init__(self, info: Iterable[Mapping[str, Any]], out_indices: Sequence[int] | None = None) -> None:
        self.info = [dict(f) for f in info]
        n = len(self.info)
        idx = range(n) if out_indices is None else out_indices
        self.out_indices = tuple(range(n)[i] for i in idx)
        for f in self.info:
            if "module" not in f or "num_chs" not in f or "reduction" not in f:
                raise ValueError(f"a feature map needs module, num_chs and reduction, got {f}")

    def from_other(self, out_indices: Sequence[int]) -> FeatureInfo:
        """The same maps with another selection."""
        return FeatureInfo(self.info, out_indices)

    def get(self, key: str, idx: int | Sequence[int] | None = None) -> Any:
        """``key`` of the selected maps (None), of map ``idx`` (int) or of maps ``idx`` (list)."""
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, int):
            return self.info[idx][key]
        return [self.info[i][key] for i in idx]

    def get_dicts(self, keys: Sequence[str] | None = None, idx: int | Sequence[int] | None = None) -> Any:
        """The dicts (or their ``keys`` only) of the selected maps, of map ``idx`` or of maps ``idx``."""

        def pick(i: int) -> dict:
            return self.info[i] if keys is None else {k: self.info[i][k] for k in keys}

        if isinstance(idx, int):
            return pick(idx)
        return [pick(i) for i in (self.out_indices if idx is None else idx)]

    def channels(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("module", idx)

    def __getitem__(self, i):  # type: ignore[override]
        picked = [self.info[j] for j in self.out_indices]
        return picked[i]

    def __len__(self) -> int:
        return len(self.out_indices)

    def __iter__(self) -> Iterator[dict]:
        return (self.info[j] for j in self.out_indices)

    def __repr__(self) -> str:
        return f"FeatureInfo({list(self)!r})"


def no_weight_decay_rule(name: str, p: torch.Tensor) -> bool:
    """Whether a parameter is left out of weight decay: biases, norm scales, position tables (BEiT, timm)."""
    return (
        p.ndim <= 1 or name.endswith(".bias") or "relative_position_bias_table" in name or "pos_embed" in name
    )


@contextmanager
def _running_stats_kept(module: nn.Module) -> Iterator[None]:
    # A recomputed forward must not update BatchNorm running statistics a second time: momentum 0
    # leaves them as they are (the batch statistics still normalise), and the counter is put back.
    norms = [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    saved = [
        (m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms
    ]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved, strict=True):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


def checkpointed(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """``module(*args, **kwargs)``, recomputed in the backward pass when checkpointing marked it.

    Non-reentrant ``torch.utils.checkpoint`` (random state kept, so dropout and drop-path draw
    the same masks); the recomputation leaves BatchNorm running statistics alone, so a training
    step changes them exactly as without checkpointing. Without gradients, or while tracing,
    it is a plain call.
    """
    if not getattr(module, "grad_checkpointing", False) or not torch.is_grad_enabled() or is_tracing():
        return module(*args, **kwargs)
    calls = []

    def run(*a: Any, **k: Any) -> Any:
        if calls:  # the recomputation in backward
            with _running_stats_kept(module):
                return module(*a, **k)
        calls.append(1)
        return module(*a, **k)

    return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False, **kwargs)


def _fresh_like(m: nn.Module, num_classes: int) -> nn.Module:
    """A newly initialised copy of a classifier layer with ``num_classes`` outputs."""
    dd = dict(device=m.weight.device, dtype=m.weight.dtype)
    if isinstance(m, nn.Linear):
        return nn.Linear(m.in_features, num_classes, bias=m.bias is not None, **dd)
    if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d) and not isinstance(
        m, nn.modules.conv._ConvTransposeNd
    ):
        return type(m)(
            m.in_channels,
            num_classes,
            m.kernel_size,
            stride=m.stride,
            padding=m.padding,
            dilation=m.dilation,
            groups=m.groups,
            bias=m.bias is not None,
            padding_mode=m.padding_mode,
            **dd,
        )
    raise TypeError(f"cannot re-create a classifier layer of type {type(m).__name__}")


def _prefix_regex(prefixes: Iterable[str]) -> str:
    return "^(?:" + "|".join(re.escape(p) for p in prefixes) + ")"


class ModelApiMixin:
    """timm's ``group_matcher``, ``no_weight_decay``, classifier and checkpointing methods for a module.

    A family overrides ``_api_parts``, ``_api_features``, ``_api_head_keys`` and
    ``_api_checkpoint_units`` (and may override any method where its model differs). The parts
    are the registry's ``param_groups`` of the instance, so ``group_matcher`` gives timm's
    ``param_groups_layer_decay`` the stages of ``zoo.adapt.param_groups``: ``stem`` is layer 0,
    ``encoder.i`` layer i + 1, and the decoder and head (matched by neither) the last layer.
    """

    grad_checkpointing: bool = False

    # ---- the family's facts ------------------------------------------------------------

    def _api_parts(self) -> Mapping[str, tuple[str, ...]]:
        raise NotImplementedError

    def _api_features(self) -> list[dict[str, Any]]:
        return []

    def _api_head_keys(self) -> tuple[str, ...]:
        return ()

    def _api_checkpoint_units(self) -> Iterable[nn.Module]:
        return ()

    def _api_init_head(self, module: nn.Module) -> None:
        """Initialise a re-created classifier layer; default: PyTorch's initialisation, as built."""

    # ---- timm's API --------------------------------------------------------------------

    @property
    def feature_info(self) -> FeatureInfo:
        """The encoder maps ``zoo.adapt.features_only`` returns, with this instance's widths."""
        return FeatureInfo(self._api_features())

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's parameter grouping: ``stem``, then one block per encoder stage.

        ``coarse`` gives the same grouping: the zoo's parts are whole stages.
        """
        parts = self._api_parts()
        stages = sorted((int(g.split(".", 1)[1]), p) for g, p in parts.items() if g.startswith("encoder."))
        return {
            "stem": _prefix_regex(parts["stem"]),
            "blocks": [(_prefix_regex(p), (i,)) for i, p in stages if p],
        }

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Names of the parameters left out of weight decay: biases, norm scales, position tables."""
        return {n for n, p in self.named_parameters() if no_weight_decay_rule(n, p)}  # type: ignore[attr-defined]

    def _head_layers(self) -> list[tuple[str, nn.Module]]:
        """(name, layer) of the Linear / convolution layers under the head keys."""
        out = []
        for prefix in self._api_head_keys():
            name = prefix.rstrip(".")
            head = self.get_submodule(name)  # type: ignore[attr-defined]
            for sub, m in head.named_modules():
                if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
                    out.append((f"{name}.{sub}" if sub else name, m))
        return out

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The layer giving ``forward``'s logits (the first head key's); Identity for a model without one."""
        layers = self._head_layers()
        return layers[0][1] if layers else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        """A newly initialised output head with ``num_classes`` outputs; every other tensor is kept.

        The layers re-created are those under the registry's ``head_keys`` (every deep-supervision
        head too); norms or activations that precede them in a head keep their values.
        """
        layers = self._head_layers()
        if not layers:
            raise ValueError(
                f"{type(self).__name__} has no classifier (head_keys is empty); "
                "put one on its features, e.g. zoo.adapt.linear_probe"
            )
        if int(num_classes) < 1:
            raise ValueError(f"a segmenter needs num_classes >= 1, got {num_classes}")
        for name, old in layers:
            new = _fresh_like(old, int(num_classes))
            self._api_init_head(new)
            parent, _, child = name.rpartition(".")
            setattr(self.get_submodule(parent) if parent else self, child, new)  # type: ignore[attr-defined]
        self._api_record_classes(int(num_classes))

    def _api_record_classes(self, num_classes: int) -> None:
        # The new class count, where the model and zoo.create's record of its arguments keep it.
        self.num_classes = num_classes
        cfg = getattr(self, "pretrained_cfg", None)
        if isinstance(cfg, dict) and isinstance(cfg.get("model_args"), dict):
            cfg["model_args"] = {**cfg["model_args"], "num_classes": num_classes}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the encoder's blocks in the backward pass instead of keeping their activations.

        Outputs and gradients are unchanged; memory falls, compute rises (one more encoder forward).
        """
        self.grad_checkpointing = bool(enable)
        for m in self._api_checkpoint_units():
            m.grad_checkpointing = bool(enable)
            if hasattr(m, "use_checkpoint"):  # MONAI's blocks checkpoint themselves behind this switch
                m.use_checkpoint = bool(enable)
