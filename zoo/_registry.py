"""The model registry: names → architecture builders, configs and weight tags.

A *model name* (``qtunet-t``) is an architecture configuration; a *weights tag*
(``ct-ssl``) names one checkpoint of it; ``name.tag`` is the full id, as in timm.
Names that carry their pretraining (``pctnet-vf110k``) are aliases of ``name.tag``.

Model files register themselves at import time, each with one call of :func:`register_family`:
the fields its names share, then one :class:`Variant` per name (timm's table of default
configurations); nothing about a model lives outside its file and its converter.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    import torch

__all__ = [
    "PaperInfo",
    "WeightSpec",
    "ModelSpec",
    "register_model",
    "register_alias",
    "register_family",
    "Variant",
    "SpecFields",
    "resolve",
    "get_spec",
    "list_models",
    "list_pretrained",
    "override_weights",
    "ModelMeta",
    "UnknownNameError",
    "UnknownModelError",
]


class UnknownNameError(ValueError):
    """A name that is not registered: a model, a weights tag, a recipe (the CLI's usage error, exit 2)."""


class UnknownModelError(UnknownNameError):
    """A model name, alias or weights tag that is not registered (the message suggests the nearest)."""


@dataclass(frozen=True)
class PaperInfo:
    """Bibliographic facts for a model family."""

    title: str
    authors: str
    venue: str
    year: int
    url: str
    bibtex: str
    code_url: str | None = None


@dataclass(frozen=True)
class WeightSpec:
    """One pretrained checkpoint of a model: where it lives and how far it is trusted.

    Attributes:
        tag: short name of the checkpoint (``ct-ssl``).
        hf_hub_id: Hugging Face Hub repository holding ``hf_filename`` (safetensors),
            or None when the weights may not be redistributed.
        hf_revision: pinned revision (commit or tag) on the Hub.
        sha256: digest of the Hub safetensors file, when published.
        size: byte size of the Hub safetensors file, when published.
        url: the upstream (authors') file.
        upstream_digest: ``"<algo>:<hex>"`` of the upstream file, algo one of
            ``sha256`` or ``gitsha1`` (git blob SHA-1); None when upstream publishes none.
        upstream_size: byte size of the upstream file, when recorded (else a bound from the
            parameter count).
        upstream_format: free text describing the container, shown in cards.
        license: SPDX id or ``"none"`` when the upstream has no licence file.
        redistributable: whether the licence lets us republish converted weights.
        pretraining: what the checkpoint was trained on, and how.
        covers: ``"full"`` or ``"encoder"`` (encoder-only checkpoints leave the decoder
            and head newly initialised).
        in_chans / num_classes / img_size: the model arguments the checkpoint was
            trained with; ``create`` uses them unless the caller overrides them.
        preprocessing: the input pipeline the checkpoint expects (orientation,
            spacing in mm, intensity transform), as data.
    """

    tag: str
    license: str
    pretraining: str
    covers: str = "full"
    hf_hub_id: str | None = None
    hf_filename: str = "model.safetensors"
    hf_revision: str | None = None
    sha256: str | None = None
    size: int | None = None
    url: str | None = None
    upstream_digest: str | None = None
    upstream_size: int | None = None
    upstream_format: str | None = None
    redistributable: bool = False
    in_chans: int | None = None
    num_classes: int | None = None
    img_size: tuple[int, ...] | None = None
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    notes: str = ""

    def __post_init__(self) -> None:
        if self.covers not in ("full", "encoder"):
            raise ValueError(f"WeightSpec.covers must be 'full' or 'encoder', got {self.covers!r}")
        if self.upstream_digest is not None:
            algo = self.upstream_digest.split(":", 1)[0]
            if algo not in ("sha256", "gitsha1"):
                raise ValueError(
                    f"upstream_digest must start with 'sha256:' or 'gitsha1:', got {self.upstream_digest!r}"
                )

    @property
    def available(self) -> bool:
        """Whether there is anywhere to fetch this checkpoint from."""
        return bool(self.hf_hub_id or self.url)


class ModelMeta(TypedDict, total=False):
    """``ModelSpec.meta``: measured numbers (asserted by ``tests/test_meta.py``) and the paper's.

    Every key is optional; a model file writes ``meta=dict(num_params=..., gmacs=...)``.
    """

    num_params: int  # trainable parameters of the registered configuration (measured)
    gmacs: float  # multiply-accumulates of one batch-1 forward at ``input_size``, in G (measured)
    gmacs_convention: str  # how gmacs was counted when not FlopCounterMode's default
    flops_convention: str  # how the paper counted its FLOPs
    paper_params: int  # the paper's reported parameter count
    paper_gmacs: float  # the paper's reported GMACs
    paper_inference_s: float  # the paper's reported inference time (s)
    paper_setting: dict[str, Any]  # model_args / input the paper's cost table was measured at
    paper_setting_params: int  # parameters at paper_setting (measured)
    paper_setting_gmacs: float  # GMACs at paper_setting (measured)
    calibrated_to_paper: str  # what was adjusted to match the paper, and why
    params_brats: int  # a second configuration's numbers (QT-UNet's BraTS input)
    gmacs_brats: float
    reference_params_demo: int  # numbers of the authors' demo configuration
    reference_gmacs_fvcore: float
    reference_note: str
    preprocessing: dict[str, Any]  # the input pipeline of models without weights tags
    pretraining_recipe: dict[str, Any]  # how the paper pretrained (models without weights)


@dataclass(frozen=True)
class ModelSpec:
    """An architecture configuration and everything the zoo knows about it.

    Attributes:
        name: registry name (``qtunet-t``).
        family: model family; also the name of its converter module in ``zoo.convert``.
        builder: callable returning the ``nn.Module`` from ``model_args`` (+ overrides).
        model_args: constructor arguments of this configuration.
        paper: bibliographic facts.
        weights: weight tags, in order of preference.
        default_tag: the tag ``pretrained=True`` picks when none is named.
        input_size: default input (C, *spatial) the model is built for.
        head_keys: state_dict key prefixes of the output head(s): re-initialised when
            ``num_classes`` differs from the checkpoint's.
        first_conv: state_dict key (without ``.weight``) of the input convolution, or a
            tuple of keys for models with several (LoGoNet's nine encoders); adapted when
            ``in_chans`` differs from the checkpoint's.
        encoder_prefixes: key prefixes that make up the encoder (for encoder-only weights).
        components: further parts a checkpoint may cover on its own, by name → key
            prefixes (e.g. the Transformer of a mask-stage checkpoint).
        param_groups: the model's parts in input-to-output order, name → key prefixes,
            with the same names in every family: ``stem``, ``encoder.0`` …
            ``encoder.N``, ``decoder``, ``head`` (freezing, layer-wise LR decay).
        feature_info: encoder feature maps per stage, each
            ``{"module": name, "num_chs": C, "reduction": stride}`` (``features_only``).
        no_weights_reason: shown when ``pretrained=True`` and no tag exists.
        meta: measured and published numbers (``num_params``, ``gmacs`` …, and the
            paper's ``paper_params`` / ``paper_gmacs``), asserted by tests.
        description: one paragraph for cards and ``zoo info``.
        results_md: the paper's results tables (Markdown), shown in the card.
        notes: paper/code discrepancies and reproduced quirks, one line each.
        limitations: what a user must know before relying on the model.
        sliding_window: defaults for whole-volume inference (``roi_size``, ``overlap``).
    """

    name: str
    family: str
    builder: Callable[..., torch.nn.Module]
    model_args: Mapping[str, Any]
    paper: PaperInfo
    weights: tuple[WeightSpec, ...] = ()
    default_tag: str | None = None
    input_size: tuple[int, ...] | None = None
    head_keys: tuple[str, ...] = ()
    first_conv: str | tuple[str, ...] | None = None
    encoder_prefixes: tuple[str, ...] = ()
    components: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    param_groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    feature_info: tuple[Mapping[str, Any], ...] = ()
    no_weights_reason: str | None = None
    meta: ModelMeta = field(default_factory=lambda: ModelMeta())
    description: str = ""
    results_md: str = ""
    notes: tuple[str, ...] = ()
    limitations: tuple[str, ...] = ()
    sliding_window: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tags = [w.tag for w in self.weights]
        if len(set(tags)) != len(tags):
            raise ValueError(f"{self.name}: duplicate weight tags {tags}")
        if self.default_tag is not None and self.default_tag not in tags:
            raise ValueError(f"{self.name}: default_tag {self.default_tag!r} not among {tags}")

    @property
    def hub_entrypoint(self) -> str:
        """Name of the ``torch.hub`` entrypoint in ``hubconf.py``."""
        return self.name.replace("-", "_")

    @property
    def partial_components(self) -> dict[str, tuple[str, ...]]:
        """Parts a checkpoint may cover alone: the encoder, then ``components``."""
        parts = {"encoder": tuple(self.encoder_prefixes)} if self.encoder_prefixes else {}
        parts.update({k: tuple(v) for k, v in self.components.items()})
        return parts

    @property
    def first_convs(self) -> tuple[str, ...]:
        if self.first_conv is None:
            return ()
        return (self.first_conv,) if isinstance(self.first_conv, str) else tuple(self.first_conv)

    @property
    def tags(self) -> list[str]:
        return [w.tag for w in self.weights]

    def weight(self, tag: str) -> WeightSpec:
        for w in self.weights:
            if w.tag == tag:
                return w
        near = difflib.get_close_matches(tag, self.tags, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        have = ", ".join(self.tags) or "none"
        raise UnknownModelError(f"unknown weights tag {tag!r} for {self.name} (tags: {have}).{hint}")


class SpecFields(TypedDict, total=False):
    """The :class:`ModelSpec` fields a family shares, or one of its names changes (see there).

    Everything but ``name``, ``family``, ``model_args`` and ``meta``, which :class:`Variant` and
    :func:`register_family` give their own place; ``builder`` and ``paper`` must end up set.
    """

    builder: Callable[..., torch.nn.Module]
    paper: PaperInfo
    weights: tuple[WeightSpec, ...]
    default_tag: str | None
    input_size: tuple[int, ...] | None
    head_keys: tuple[str, ...]
    first_conv: str | tuple[str, ...] | None
    encoder_prefixes: tuple[str, ...]
    components: Mapping[str, tuple[str, ...]]
    param_groups: Mapping[str, tuple[str, ...]]
    feature_info: tuple[Mapping[str, Any], ...]
    no_weights_reason: str | None
    description: str
    results_md: str
    notes: tuple[str, ...]
    limitations: tuple[str, ...]
    sliding_window: Mapping[str, Any]


@dataclass(frozen=True)
class Variant:
    """One registered name of a model family: what sets it apart from the family's shared fields.

    Attributes:
        name: registry name (``qtunet-t``).
        model_args: the constructor arguments of this configuration (all of them).
        meta: its measured and published numbers (:class:`ModelMeta`).
        aliases: further names for it, alias → the weights tag the alias selects, or None for
            the name itself (``{"pctnet-vf110k": "vf110k", "ulkanet-b": None}``).
        spec: the :class:`ModelSpec` fields of this name that replace the family's shared ones.
    """

    name: str
    model_args: Mapping[str, Any]
    meta: ModelMeta = field(default_factory=lambda: ModelMeta())
    aliases: Mapping[str, str | None] = field(default_factory=dict)
    spec: SpecFields = field(default_factory=lambda: SpecFields())


_OWN_PLACE = ("name", "family", "model_args", "meta")


_MODELS: dict[str, ModelSpec] = {}
_ALIASES: dict[str, tuple[str, str | None]] = {}


def _checked(builder: Callable[..., Any], name: str, defaults: Mapping[str, Any]) -> Callable[..., Any]:
    """``builder`` that first checks its arguments' types and ranges against ``defaults``."""
    if getattr(builder, "__wrapped_by_zoo__", False):
        return builder

    @functools.wraps(builder)
    def build(**kwargs: Any) -> Any:
        from zoo.layers.checks import check_args

        check_args(kwargs, defaults, name)
        return builder(**kwargs)

    build.__wrapped_by_zoo__ = True  # type: ignore[attr-defined]
    return build


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a model configuration to the registry (at import time of its model file).

    The registered ``spec.builder`` checks the type and range of every argument that the
    configuration has (``zoo.layers.checks.check_args``) before building, so a direct
    ``spec.builder(embed_dim=0)`` fails as clearly as ``zoo.create``.
    """
    if spec.name in _MODELS or spec.name in _ALIASES:
        raise ValueError(f"model name {spec.name!r} is already registered")
    spec = dataclasses.replace(spec, builder=_checked(spec.builder, spec.name, dict(spec.model_args)))
    _MODELS[spec.name] = spec
    return spec


def register_alias(alias: str, target: str) -> None:
    """Register ``alias`` for ``name`` or ``name.tag`` (e.g. ``pctnet-vf110k`` → ``pctnet.vf110k``)."""
    if alias in _MODELS or alias in _ALIASES:
        raise ValueError(f"name {alias!r} is already registered")
    name, _, tag = target.partition(".")
    spec = _MODELS.get(name)
    if spec is None:
        raise ValueError(f"alias {alias!r} points at unknown model {name!r}")
    if tag:
        spec.weight(tag)
    _ALIASES[alias] = (name, tag or None)


def register_family(family: str, shared: SpecFields, variants: Sequence[Variant]) -> tuple[ModelSpec, ...]:
    """Register every name of a model family, then their aliases: the one idiom of model files.

    Each name's :class:`ModelSpec` is ``shared`` with the variant's ``spec`` fields on top, and
    the variant's name, ``model_args`` and ``meta``. All specs and aliases are checked before
    the first is registered, so a family with a bad entry adds no name at all.

    Args:
        family: the family, also the name of its converter module in ``zoo.convert``.
        shared: fields every name of the family has (builder, paper, …).
        variants: one entry per registered name, in registration order.

    Returns:
        The registered specs, in the order of ``variants``.

    Raises:
        ValueError: a field that is not a ``ModelSpec`` field or has its own place, a name or
            alias registered twice, an alias to an unknown weights tag.
    """
    allowed = set(SpecFields.__annotations__)
    specs = []
    for v in variants:
        for where, fields_ in (("shared", shared), (v.name, v.spec)):
            wrong = sorted(set(fields_) - allowed)
            if wrong:
                place = [k for k in wrong if k in _OWN_PLACE]
                why = f" ({', '.join(place)}: give them to Variant / register_family)" if place else ""
                raise ValueError(f"{family}/{where}: not a SpecFields field: {', '.join(wrong)}{why}")
        merged: dict[str, Any] = {**shared, **v.spec}
        missing = [k for k in ("builder", "paper") if k not in merged]
        if missing:
            raise ValueError(f"{family}/{v.name}: no {' or '.join(missing)} in shared or in the variant")
        specs.append(ModelSpec(name=v.name, family=family, model_args=v.model_args, meta=v.meta, **merged))
    names = [v.name for v in variants] + [a for v in variants for a in v.aliases]
    taken = sorted({n for n in names if names.count(n) > 1 or n in _MODELS or n in _ALIASES})
    if taken:
        raise ValueError(f"{family}: {', '.join(taken)} already registered, or named twice in the family")
    for spec, v in zip(specs, variants, strict=True):
        for tag in v.aliases.values():
            if tag is not None:
                spec.weight(tag)  # an alias to a tag the name lacks fails here, before anything is added
    registered = tuple(register_model(spec) for spec in specs)
    for v in variants:
        for alias, tag in v.aliases.items():
            register_alias(alias, f"{v.name}.{tag}" if tag else v.name)
    return registered


def _ensure_loaded() -> None:
    # Importing the model package runs every model file's registrations.
    import zoo.models  # noqa: F401


def _all_names() -> list[str]:
    return sorted([*_MODELS, *_ALIASES])


def resolve(name: str) -> tuple[ModelSpec, str | None]:
    """Resolve ``name``, ``name.tag`` or an alias to its spec and weights tag (or None).

    Raises:
        ValueError: for an unknown name or tag, with the nearest registered names.
    """
    _ensure_loaded()
    if not isinstance(name, str) or not name:
        raise UnknownModelError(f"model name must be a non-empty string, got {name!r}")
    key = name.strip().lower().replace("_", "-")
    if key in _ALIASES:
        base, tag = _ALIASES[key]
        return _MODELS[base], tag
    if key in _MODELS:
        return _MODELS[key], None
    base, dot, tag = key.partition(".")
    if dot and base in _ALIASES and _ALIASES[base][1] is None:
        base = _ALIASES[base][0]
    if dot and base in _MODELS:
        spec = _MODELS[base]
        spec.weight(tag)  # raises with suggestions
        return spec, tag
    candidates = _all_names() + [f"{s.name}.{t}" for s in _MODELS.values() for t in s.tags]
    near = difflib.get_close_matches(key, candidates, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(near)}?" if near else " See zoo.list_models()."
    raise UnknownModelError(f"unknown model {name!r}.{hint}")


def registered(name: str) -> ModelSpec:
    """The :class:`ModelSpec` registered under exactly ``name`` (as files record it: no alias, no tag).

    Raises:
        UnknownModelError: with the nearest registered names.
    """
    _ensure_loaded()
    spec = _MODELS.get(name) if isinstance(name, str) else None
    if spec is None:
        near = difflib.get_close_matches(str(name), list(_MODELS), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        raise UnknownModelError(f"{name!r} is not a registered model name.{hint}")
    return spec


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` behind ``name`` (tags and aliases resolve to their model)."""
    return resolve(name)[0]


def list_models(
    pattern: str | None = None, pretrained: bool = False, include_aliases: bool = False
) -> list[str]:
    """Registered model names matching a glob ``pattern``.

    Args:
        pattern: shell-style pattern (``"qtunet*"``); None lists all.
        pretrained: only names with at least one downloadable weights tag.
        include_aliases: also list aliases such as ``pctnet-vf110k``.
    """
    _ensure_loaded()
    names = list(_MODELS)
    if include_aliases:
        names += list(_ALIASES)
    out = []
    for n in sorted(names):
        if pattern and not fnmatch.fnmatch(n, pattern):
            continue
        if pretrained:
            spec, tag = resolve(n)
            tags = [tag] if tag else spec.tags
            if not any(spec.weight(t).available for t in tags):
                continue
        out.append(n)
    return out


def list_pretrained(pattern: str | None = None) -> list[str]:
    """Every ``name.tag`` id with downloadable weights, optionally filtered by a glob."""
    _ensure_loaded()
    out = []
    for spec in _MODELS.values():
        for w in spec.weights:
            full = f"{spec.name}.{w.tag}"
            if w.available and (pattern is None or fnmatch.fnmatch(full, pattern)):
                out.append(full)
    return sorted(out)


def aliases_of(name: str) -> list[str]:
    """Aliases that point at ``name`` or one of its tags."""
    return sorted(a for a, (n, _) in _ALIASES.items() if n == name)


def iter_specs() -> Iterator[ModelSpec]:
    _ensure_loaded()
    yield from (_MODELS[n] for n in sorted(_MODELS))


@contextmanager
def override_weights(name: str, tag: str, **changes: Any) -> Iterator[WeightSpec]:
    """Temporarily replace fields of one weight tag (mirrors, pinned digests, tests).

    Example:
        >>> with override_weights("qtunet-t", "ct-ssl", upstream_digest="sha256:..."):
        ...     model = zoo.create("qtunet-t.ct-ssl", pretrained=True)
    """
    spec = get_spec(name)
    old = spec.weight(tag)
    new = dataclasses.replace(old, **changes)
    weights = tuple(new if w.tag == tag else w for w in spec.weights)
    _MODELS[spec.name] = dataclasses.replace(spec, weights=weights)
    try:
        yield new
    finally:
        _MODELS[spec.name] = spec
