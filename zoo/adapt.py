"""Adapting a pretrained model to a user's task, the same way for every family.

* ``adapt_input_conv``: the N-dimensional counterpart of timm's ``adapt_input_conv`` (which
  handles 2D RGB only): a convolution trained on ``c_old`` input channels mapped to
  ``c_new`` channels, keeping the response to a constant input unchanged.
* Parts: every registered model declares its parts in its ``ModelSpec.param_groups``
  (``stem``, ``encoder.0`` … ``encoder.N``, ``decoder``, ``head``, in input-to-output
  order). :func:`freeze`, :func:`param_groups` (layer-wise learning-rate decay) and LoRA
  address those names, so user scripts carry no per-model code.
* :func:`features_only` (the encoder's map per stage, with ``feature_info``) and
  :func:`linear_probe` (pooled deepest map → linear classifier).
* LoRA through ``peft`` on attention and MLP layers: :func:`add_lora`, :func:`merge_lora`.

The model must know which registered model it is: :func:`zoo.create` records that in
``model.pretrained_cfg["name"]``; otherwise pass ``spec=zoo.get_spec(name)``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from zoo._registry import ModelSpec, get_spec
from zoo.layers.model_api import FeatureInfo, no_weight_decay_rule

log = logging.getLogger("zoo")

__all__ = [
    "adapt_input_conv",
    "group_of",
    "named_groups",
    "freeze",
    "unfreeze",
    "param_groups",
    "FeatureExtractor",
    "features_only",
    "LinearProbe",
    "linear_probe",
    "lora_targets",
    "add_lora",
    "has_lora",
    "merge_lora",
    "plain_state_dict",
    "set_grad_checkpointing",
]


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt a convolution weight ``[out, c_old, *kernel]`` to ``in_chans`` input channels.

    Every new input channel gets the mean of the old channels' kernels, scaled by
    ``c_old / in_chans``. For an input that is the same constant ``c`` on all channels
    the response is then ``Σ_old W_i * c`` as before, whatever ``in_chans`` is; for
    ``in_chans=1`` this is the sum of the old kernels (the usual RGB → grey rule).

    Args:
        weight: convolution weight with input channels on dim 1 (2D or 3D kernels).
        in_chans: number of input channels wanted.

    Returns:
        A new tensor ``[out, in_chans, *kernel]`` of the same dtype.
    """
    if weight.ndim < 3:
        raise ValueError(
            f"expected a convolution weight [out, in, *kernel], found shape {tuple(weight.shape)}"
        )
    if in_chans < 1:
        raise ValueError(f"in_chans must be ≥ 1, got {in_chans}")
    c_old = weight.shape[1]
    if c_old == in_chans:
        return weight.clone()
    w = weight.double().mean(dim=1, keepdim=True) * (c_old / in_chans)
    reps = [1, in_chans] + [1] * (weight.ndim - 2)
    return w.repeat(*reps).to(weight.dtype)


# ---------------------------------------------------------------------------------------
# parts of a model: the spec's param_groups


def _spec_of(model: nn.Module, spec: ModelSpec | None = None) -> ModelSpec:
    if spec is not None:
        return spec
    name = (getattr(model, "pretrained_cfg", None) or {}).get("name")
    if not name:
        raise ValueError(
            f"{type(model).__name__} does not say which registered model it is (no pretrained_cfg['name']): "
            "build it with zoo.create or pass spec=zoo.get_spec(name)"
        )
    spec = get_spec(name)
    if not spec.param_groups:
        raise ValueError(f"{spec.name} declares no param_groups, so its parts cannot be addressed by name")
    return spec


def group_of(spec: ModelSpec, key: str) -> str:
    """The name of the part (``stem``, ``encoder.2``, ``decoder``, ``head``) a parameter key belongs to.

    Keys of LoRA-wrapped layers (``….base_layer.weight``, ``….lora_A.default.weight``) belong
    to the part of the layer they wrap.

    Raises:
        ValueError: when the key lies in no part, or in more than one.
    """
    hits = [g for g, prefixes in spec.param_groups.items() if any(key.startswith(p) for p in prefixes)]
    if len(hits) != 1:
        where = f"in the parts {hits}" if hits else "in no part"
        raise ValueError(
            f"{spec.name}: parameter {key!r} lies {where}; param_groups must cover each key once"
        )
    return hits[0]


def named_groups(
    model: nn.Module, spec: ModelSpec | None = None, trainable_only: bool = False
) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """The model's parameters by part, in the spec's input-to-output order.

    Args:
        model: a model from :func:`zoo.create` (or pass ``spec``).
        spec: the model's :class:`ModelSpec`; default: from ``model.pretrained_cfg["name"]``.
        trainable_only: leave out parameters with ``requires_grad=False``.

    Returns:
        ``{part: [(name, parameter), …]}`` for every declared part, empty parts included.
    """
    spec = _spec_of(model, spec)
    out: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for g in spec.param_groups}
    for name, p in model.named_parameters():
        if trainable_only and not p.requires_grad:
            continue
        out[group_of(spec, name)].append((name, p))
    return out


def _expand_parts(spec: ModelSpec, parts: str | Iterable[str]) -> list[str]:
    """Part names → group names: ``encoder`` is the stem and every encoder stage, ``all`` is everything."""
    names = list(spec.param_groups)
    wanted = [parts] if isinstance(parts, str) else list(parts)
    out: list[str] = []
    for part in wanted:
        if part == "all":
            hit = names
        elif part == "encoder":
            hit = [g for g in names if g == "stem" or g.startswith("encoder.")]
        else:
            hit = [g for g in names if g == part]
        if not hit:
            raise ValueError(f"{spec.name} has no part {part!r}; its parts: {', '.join(names)}, encoder, all")
        out += [g for g in hit if g not in out]
    return out


def _parts_up_to(spec: ModelSpec, last: str) -> list[str]:
    names = list(spec.param_groups)
    if last not in names:
        raise ValueError(f"{spec.name} has no part {last!r}; its parts in order: {', '.join(names)}")
    return names[: names.index(last) + 1]


def _keep_norm_stats(module: nn.Module, _args: Any) -> None:
    # A frozen part keeps its BatchNorm running statistics as loaded, whatever model.train() says.
    module.training = False


def freeze(
    model: nn.Module,
    parts: str | Iterable[str] = "encoder",
    *,
    up_to: str | None = None,
    bn_eval: bool = True,
    spec: ModelSpec | None = None,
) -> list[str]:
    """Stop training some parts of a model: their parameters get ``requires_grad=False``.

    Args:
        model: a model from :func:`zoo.create`.
        parts: part names: ``"encoder"`` (the stem and every encoder stage), ``"stem"``,
            ``"encoder.K"``, ``"decoder"``, ``"head"``, ``"all"``, or a list of them.
            Ignored when ``up_to`` is given.
        up_to: freeze every part from the input up to and including this one
            (``up_to="encoder.1"`` freezes the stem and the first two stages).
        bn_eval: keep the batch-norm layers that lie wholly in frozen parts in eval mode
            (running statistics used and left unchanged) even during ``model.train()``.
        spec: the model's spec, when ``model`` was not built by :func:`zoo.create`.

    Returns:
        The names of the frozen parts.

    Example:
        >>> model = zoo.create("qtunet-t.ct-ssl", pretrained=True, num_classes=3)
        >>> zoo.adapt.freeze(model, "encoder")
        ['stem', 'encoder.0', 'encoder.1', 'encoder.2', 'encoder.3']
    """
    spec = _spec_of(model, spec)
    names = _parts_up_to(spec, up_to) if up_to is not None else _expand_parts(spec, parts)
    frozen = set(names)
    for key, p in model.named_parameters():
        if group_of(spec, key) in frozen:
            p.requires_grad_(False)
    if bn_eval:
        for mod_name, mod in model.named_modules():
            if not isinstance(mod, nn.modules.batchnorm._BatchNorm) or hasattr(mod, "_zoo_frozen_stats"):
                continue
            keys = [f"{mod_name}.{k}" for k, _ in mod.named_parameters()]
            if keys and all(group_of(spec, k) in frozen for k in keys):
                mod._zoo_frozen_stats = mod.register_forward_pre_hook(_keep_norm_stats)
    log.info("%s: frozen %s", spec.name, ", ".join(names))
    return names


def unfreeze(
    model: nn.Module, parts: str | Iterable[str] = "all", *, spec: ModelSpec | None = None
) -> list[str]:
    """Undo :func:`freeze` for ``parts`` (default: everything). Returns the unfrozen part names."""
    spec = _spec_of(model, spec)
    names = set(_expand_parts(spec, parts))
    for key, p in model.named_parameters():
        if group_of(spec, key) in names and not _is_lora_base(key):
            p.requires_grad_(True)
    for mod_name, mod in model.named_modules():
        handle = getattr(mod, "_zoo_frozen_stats", None)
        keys = [f"{mod_name}.{k}" for k, _ in mod.named_parameters()]
        if handle is not None and keys and all(group_of(spec, k) in names for k in keys):
            handle.remove()
            del mod._zoo_frozen_stats
            mod.training = model.training
    return [g for g in spec.param_groups if g in names]


# Biases, norm scales and position-bias tables are not decayed (BEiT / timm convention); the
# models' no_weight_decay() names the same parameters.
_no_weight_decay = no_weight_decay_rule


def param_groups(
    model: nn.Module,
    lr: float,
    layer_decay: float | None = 0.75,
    weight_decay: float = 0.05,
    *,
    spec: ModelSpec | None = None,
) -> list[dict[str, Any]]:
    """Optimiser parameter groups with layer-wise learning-rate decay over the model's parts.

    The parts are ranked from the input: ``stem`` 0, ``encoder.i`` i + 1; the decoder and
    the head (usually newly initialised) take the full rate. A part of rank ``r`` gets
    ``lr · layer_decay ** (R − r)``, with ``R`` the rank of the decoder (number of encoder
    stages + 1), so the deepest encoder stage gets ``lr · layer_decay`` and the stem the
    smallest rate, as in BEiT / MAE fine-tuning. Biases, norm weights and relative-position
    tables get no weight decay. Frozen parameters are left out.

    timm's ``create_optimizer_v2(model, layer_decay=…)`` builds the same layers and scales from
    the model's ``group_matcher()`` (one layer per part, decoder and head last), and leaves the
    same parameters undecayed (``no_weight_decay()``), for every model with a decoder or head;
    for an encoder alone (no decoder or head parameters) timm's deepest layer is its last, so its
    scales are these divided by ``layer_decay``.

    Args:
        model: a model from :func:`zoo.create` (or pass ``spec``).
        lr: the full learning rate.
        layer_decay: decay factor per part, in (0, 1]; None or 1 gives every part ``lr``.
        weight_decay: weight decay of the decayed parameters.
        spec: the model's spec, when ``model`` was not built by :func:`zoo.create`.

    Returns:
        A list of ``{"params", "lr", "weight_decay", "name", "lr_scale"}`` dicts for
        ``torch.optim.AdamW(groups)``; empty groups are dropped.

    Example:
        >>> opt = torch.optim.AdamW(zoo.adapt.param_groups(model, lr=1e-4, layer_decay=0.75))
    """
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must lie in (0, 1], got {layer_decay}")
    spec = _spec_of(model, spec)
    groups = named_groups(model, spec, trainable_only=True)
    n_enc = sum(1 for g in spec.param_groups if g.startswith("encoder."))
    top = n_enc + 1

    def rank(g: str) -> int:
        if g == "stem":
            return 0
        if g.startswith("encoder."):
            return int(g.split(".", 1)[1]) + 1
        return top

    out = []
    for g, named in groups.items():
        scale = (layer_decay or 1.0) ** (top - rank(g))
        for suffix, wd, pick in (("", weight_decay, False), (".no_decay", 0.0, True)):
            params = [p for n, p in named if _no_weight_decay(n, p) == pick]
            if params:
                out.append(
                    {
                        "params": params,
                        "lr": lr * scale,
                        "weight_decay": wd,
                        "name": g + suffix,
                        "lr_scale": scale,
                    }
                )
    return out


# ---------------------------------------------------------------------------------------
# encoder feature maps (features_only) and a linear probe


class _StopForward(Exception):
    """Raised by the last feature hook: the rest of the network (decoder, head) is not run."""


class FeatureExtractor(nn.Module):
    """A zoo model returning its encoder's feature map per stage (``features_only=True``).

    Forward hooks on the modules listed in the spec's ``feature_info`` (timm's
    ``FeatureHooks`` idea) record each stage's output; the forward stops once the last
    requested map is recorded, so the decoder and head are not computed. The wrapped
    model still validates the input.

    Args:
        model: a model from :func:`zoo.create`.
        out_indices: which stages to return (default: all of ``feature_info``).
        spec: the model's spec, when ``model`` was not built by :func:`zoo.create`.

    Attributes:
        feature_info: :class:`~zoo.layers.model_api.FeatureInfo` of the returned maps (timm's
            ``channels()``, ``reduction()``, ``module_name()``; a sequence of
            ``{"module", "num_chs", "reduction"}`` dicts).

    Shapes:
        input as the model takes it → list of ``(B, C_i, *spatial / reduction_i)`` maps;
        per-slice models (``feature_info`` entries with ``"per_slice": True``) give
        ``(B, N, C_i, H_i, W_i)`` for ``N`` slices.

    Example:
        >>> feats = zoo.create("qtunet-t", features_only=True)
        >>> [f.shape[1] for f in feats(torch.randn(1, 1, 96, 96, 96))]
        [48, 96, 192, 384]
    """

    def __init__(
        self, model: nn.Module, out_indices: Sequence[int] | None = None, spec: ModelSpec | None = None
    ) -> None:
        super().__init__()
        spec = _spec_of(model, spec)
        info = [dict(f) for f in spec.feature_info]
        if not info:
            raise ValueError(f"{spec.name} declares no feature_info, so it has no features_only form")
        idx = list(range(len(info))) if out_indices is None else [range(len(info))[i] for i in out_indices]
        self.model = model
        self.feature_info = FeatureInfo([info[i] for i in idx])
        self.pretrained_cfg = dict(getattr(model, "pretrained_cfg", {}), features_only=True)
        self._spec_name = spec.name
        self._maps: dict[int, torch.Tensor] = {}
        self._batch = 0
        self._active = False  # hooks record only during this wrapper's forward
        modules = dict(model.named_modules())
        missing = [f["module"] for f in self.feature_info if f["module"] not in modules]
        if missing:
            raise ValueError(f"{spec.name}: feature_info names modules the model lacks: {missing}")
        for i, f in enumerate(self.feature_info):
            modules[f["module"]].register_forward_hook(self._hook(i, f))

    def _hook(self, i: int, f: Mapping[str, Any]):
        def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if not self._active:
                return
            x = output[f.get("index", 0)] if isinstance(output, list | tuple) else output
            if f.get("channels_last"):
                x = x.movedim(-1, 1)
            if f.get("per_slice"):
                x = x.reshape(self._batch, -1, *x.shape[1:])
            self._maps[i] = x
            if len(self._maps) == len(self.feature_info):
                raise _StopForward

        return record

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._maps = {}
        self._batch = x.shape[0]
        self._active = True
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            self._active = False
        if len(self._maps) != len(self.feature_info):
            raise RuntimeError(f"{self._spec_name}: the forward did not reach every feature module")
        maps, self._maps = [self._maps[i] for i in range(len(self.feature_info))], {}
        for f, m in zip(self.feature_info, maps, strict=True):
            # feature_info is the registered configuration's; a model built with other widths reports its own.
            f["num_chs"] = int(m.shape[2 if f.get("per_slice") else 1])
        return maps


def features_only(
    model: nn.Module, out_indices: Sequence[int] | None = None, spec: ModelSpec | None = None
) -> FeatureExtractor:
    """Wrap ``model`` so that it returns its encoder feature maps; see :class:`FeatureExtractor`."""
    return FeatureExtractor(model, out_indices, spec)


class LinearProbe(nn.Module):
    """Frozen encoder → global average pool of the deepest feature map → linear classifier.

    Only ``head`` trains; the encoder stays in eval mode (frozen batch-norm statistics)
    whatever ``train()`` is called with.

    Args:
        model: a model from :func:`zoo.create` (its weights are what is probed).
        num_classes: classifier outputs.
        spec: the model's spec, when ``model`` was not built by :func:`zoo.create`.

    Shapes:
        input as the model takes it → ``(B, num_classes)`` logits.
    """

    def __init__(self, model: nn.Module, num_classes: int, spec: ModelSpec | None = None) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.backbone = FeatureExtractor(model, out_indices=[-1], spec=spec)
        self.backbone.requires_grad_(False)
        info = self.backbone.feature_info[0]
        self._channel_dim = 2 if info.get("per_slice") else 1
        self.head = nn.Linear(int(info["num_chs"]), num_classes)
        self.pretrained_cfg = dict(self.backbone.pretrained_cfg, linear_probe=num_classes)
        self.train(False)

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.backbone.train(False)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            f = self.backbone(x)[0]
        got, want = f.shape[self._channel_dim], self.head.in_features
        if got != want:
            raise ValueError(
                f"the deepest encoder map has {got} channels, the registered configuration {want}: this "
                "model was built with other widths; put your own nn.Linear on features_only(model)"
            )
        f = f.movedim(self._channel_dim, -1)
        return self.head(f.reshape(f.shape[0], -1, f.shape[-1]).mean(1))


def linear_probe(model: nn.Module, num_classes: int, spec: ModelSpec | None = None) -> LinearProbe:
    """A linear classifier on the pooled deepest encoder map of frozen ``model``: :class:`LinearProbe`."""
    return LinearProbe(model, num_classes, spec)


# ---------------------------------------------------------------------------------------
# LoRA (peft)

_ATTN_MLP = re.compile(r"(^|\.)(attn|attention|cross_attn|mlp|ffn)(\.|$)")


def _is_lora_base(key: str) -> bool:
    return ".base_layer." in key


def _is_linear_like(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return True
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    # Pointwise convolutions are linear layers over channels (LoGoNet's LKA gating and MLP).
    return isinstance(m, conv) and m.groups == 1 and all(k == 1 for k in m.kernel_size)


def lora_targets(
    model: nn.Module, parts: str | Iterable[str] = "encoder", *, spec: ModelSpec | None = None
) -> list[str]:
    """Names of the layers :func:`add_lora` adapts by default.

    Every ``nn.Linear`` and every non-grouped pointwise convolution that sits inside an
    attention or MLP block (a module path containing ``attn``, ``attention``, ``cross_attn``,
    ``mlp`` or ``ffn``) of the given parts. Grouped convolutions are left out: peft cannot
    merge them back.
    """
    spec = _spec_of(model, spec)
    wanted = set(_expand_parts(spec, parts))
    out = []
    for name, m in model.named_modules():
        if not _is_linear_like(m) or not _ATTN_MLP.search(name):
            continue
        if group_of(spec, f"{name}.weight") in wanted:
            out.append(name)
    return out


def add_lora(
    model: nn.Module,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    *,
    parts: str | Iterable[str] = "encoder",
    target_modules: Sequence[str] | None = None,
    train_parts: str | Iterable[str] = ("decoder", "head"),
    spec: ModelSpec | None = None,
) -> nn.Module:
    """Add LoRA adapters (peft) to the attention and MLP layers of ``parts``, in place.

    Afterwards only the LoRA matrices and the parameters of ``train_parts`` train; every
    other weight is frozen. The model keeps its class and forward; keys of adapted layers
    gain ``.base_layer`` / ``.lora_A`` / ``.lora_B``. :func:`merge_lora` folds the adapters
    back into plain layers (for export or a strict checkpoint).

    Args:
        model: a model from :func:`zoo.create`.
        r: LoRA rank.
        alpha: LoRA scaling numerator (the update is ``alpha / r · B A``).
        dropout: dropout on the LoRA branch input.
        parts: where to put adapters (default: the encoder); see :func:`freeze`.
        target_modules: explicit module names instead of :func:`lora_targets`.
        train_parts: parts trained in full next to the adapters (default: decoder and
            head, which encoder-only weights leave newly initialised). ``()`` for none.
        spec: the model's spec, when ``model`` was not built by :func:`zoo.create`.

    Returns:
        ``model`` itself, adapted.

    Example:
        >>> model = zoo.adapt.add_lora(zoo.create("qtunet-t.ct-ssl", pretrained=True, num_classes=3), r=8)
        >>> ...  # train
        >>> model = zoo.adapt.merge_lora(model)   # plain QTUNet again
    """
    from zoo._optional import require

    require("peft", extra="lora", feature="LoRA")
    from peft import LoraConfig, inject_adapter_in_model

    spec = _spec_of(model, spec)
    targets = list(target_modules) if target_modules is not None else lora_targets(model, parts, spec=spec)
    if not targets:
        raise ValueError(f"{spec.name}: no attention/MLP linear layers in {parts!r} to adapt")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    # Anchored names: peft matches target_modules as suffixes, which could catch other layers.
    config.target_modules = "|".join(f"^{re.escape(t)}$" for t in targets)
    model = inject_adapter_in_model(config, model)
    if train_parts:
        train = set(_expand_parts(spec, train_parts))
        for key, p in model.named_parameters():
            if not _is_lora_base(key) and "lora_" not in key and group_of(spec, key) in train:
                p.requires_grad_(True)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("%s: LoRA r=%d on %d layers; %d trainable parameters", spec.name, r, len(targets), n)
    return model


def _lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return []
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def has_lora(model: nn.Module) -> bool:
    """Whether ``model`` carries LoRA adapters."""
    return any(".lora_A." in k for k, _ in model.named_parameters())


def _delta_weight(layer: nn.Module) -> torch.Tensor:
    """The weight update ``scaling · B A`` of a peft LoRA layer (active adapters summed)."""
    base = layer.get_base_layer()
    delta = torch.zeros_like(base.weight)
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A:
            continue
        a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
        if isinstance(base, nn.Linear) or all(k == 1 for k in getattr(base, "kernel_size", ())):
            # Linear and pointwise convolutions: a plain product (peft 0.21 mis-shapes it for 1×1×1 convs).
            d = (b.flatten(1) @ a.flatten(1)).reshape(base.weight.shape)
            delta += d * layer.scaling[adapter]
        else:
            delta += layer.get_delta_weight(adapter)
    return delta


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold LoRA adapters into their layers and put the plain layers back, in place.

    The result has the original keys and classes (so it loads strictly, exports to ONNX
    and computes what the adapted model computed). Every parameter is trainable again.

    Returns:
        ``model`` itself.
    """
    for name, layer in _lora_layers(model):
        base = layer.get_base_layer()
        with torch.no_grad():
            base.weight += _delta_weight(layer).to(base.weight.dtype)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, base)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict of ``model`` in its own key naming, LoRA adapters merged (model unchanged).

    What a checkpoint of a LoRA-adapted model should hold: the keys of the plain model, so
    that ``zoo.create(..., checkpoint_path=)`` loads it strictly.
    """
    sd = model.state_dict()
    layers = _lora_layers(model)
    if not layers:
        return {k: v.detach() for k, v in sd.items()}
    out = {k: v.detach() for k, v in sd.items() if "lora_" not in k and ".base_layer." not in k}
    for name, layer in layers:
        base = layer.get_base_layer()
        for k, v in base.state_dict().items():
            out[f"{name}.{k}"] = v.detach().clone()
        weight = out[f"{name}.weight"]
        weight += _delta_weight(layer).to(weight.dtype).detach()
    return {k: out[k] for k in sorted(out)}


# ---------------------------------------------------------------------------------------
# gradient checkpointing


def set_grad_checkpointing(model: nn.Module, enable: bool = True) -> nn.Module:
    """Turn gradient checkpointing of the encoder's blocks on (or off) for any zoo model, in place.

    The block activations are recomputed in the backward pass instead of being kept: the same
    outputs and gradients for less memory and about one more encoder forward of compute. A
    :func:`features_only` or :func:`linear_probe` wrapper passes it to the model it wraps.

    Returns:
        ``model`` itself.

    Raises:
        TypeError: for a module without ``set_grad_checkpointing`` (not a zoo model).
    """
    target = model
    while not hasattr(target, "set_grad_checkpointing"):
        inner = getattr(target, "model", None) or getattr(target, "backbone", None)
        if not isinstance(inner, nn.Module):
            raise TypeError(f"{type(model).__name__} has no set_grad_checkpointing: not a zoo model")
        target = inner
    target.set_grad_checkpointing(enable)
    return model
