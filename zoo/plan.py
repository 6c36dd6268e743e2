"""One place that understands a request: ``plan(request, ...) -> ModelPlan``.

A request names a model and, with it, where its weights come from:

==============================  =============================================================
request                          source
==============================  =============================================================
``qtunet-t``                     the architecture (random), or the default tag if ``pretrained``
``qtunet-t.ct-ssl``, an alias    registered weights (``registry``)
``hf-hub:ORG/NAME[@REV]``        a medzoo repository on the Hub (``hf-hub``)
a run folder (``runs/ft``)       a ``zoo finetune`` / ``zoo pretrain`` run (``run``)
``model.onnx``                   an exported file (``onnx``)
``checkpoint=`` a file / run /   a checkpoint of the named model (``file`` / ``run`` / ``hf-hub``)
``hf-hub:`` id
==============================  =============================================================

:func:`plan` parses the request once (``zoo._registry.resolve`` runs once), reads the bounded
``config.json`` of a run folder or a Hub repository through :mod:`zoo.runconfig` (every key
checked, the model's cost estimated before anything exists), and returns a frozen
:class:`ModelPlan`: the spec, the tag, the one source, the model arguments, the input
contract, the window, the labels, the covered part and the lineage. It builds nothing and
downloads no weights. ``zoo.create`` is plan → build → load (``zoo._factory``); every
command takes a plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from zoo._registry import ModelSpec, WeightSpec, resolve
from zoo.runconfig import ConfigError, Link, RunConfig, read_config

__all__ = ["ModelPlan", "HubRef", "plan", "NoPretrainedWeightsError", "RUN_WEIGHTS", "window_for"]

RUN_WEIGHTS = ("model.safetensors", "best.safetensors")  # the weights files a run folder holds
_MODEL_ARGS = ("in_chans", "num_classes", "img_size")  # what a weights tag fixes


class NoPretrainedWeightsError(ValueError):
    """``pretrained=True`` for a model that has no published weights."""


@dataclass(frozen=True)
class HubRef:
    """A Hub repository, as asked for and as read."""

    repo_id: str
    revision: str | None
    commit: str

    @property
    def id(self) -> str:
        return f"hf-hub:{self.repo_id}@{self.commit}"


@dataclass(frozen=True)
class ModelPlan:
    """What a request means, resolved once; nothing built, no weights downloaded.

    Attributes:
        request: the text asked for (for messages).
        spec: the registered architecture.
        tag: the registered weights loaded (``registry``) or that a published folder is.
        source: ``none`` (random), ``registry``, ``file``, ``run``, ``hf-hub`` or ``onnx``.
        path: the weights file to load (``file``/``run``), or the ``.onnx`` file.
        run: the run folder (``run``).
        hub: the repository and the commit its config was read at (``hf-hub``).
        config: the checked ``config.json`` of the run or repository.
        model_args: the constructor arguments (registry ← weights ← config ← caller).
        preprocessing: the input pipeline the weights expect (``InputContract``'s mapping).
        window: sliding-window defaults.
        labels: class index → name, when the weights know them.
        covers: the part the weights hold (None: detected on load).
        lineage: what the source's weights descend from, oldest first (before this load).
        new_head: the caller chose ``num_classes``: a checkpoint without a head may load.
        onnx: the checked metadata of an exported file (``onnx``).
    """

    request: str
    spec: ModelSpec
    tag: str | None = None
    source: str = "none"
    path: Path | None = None
    run: Path | None = None
    hub: HubRef | None = None
    config: RunConfig | None = None
    model_args: Mapping[str, Any] = field(default_factory=dict)
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    window: Mapping[str, Any] = field(default_factory=dict)
    labels: Mapping[str, str] | None = None
    covers: str | None = None
    lineage: tuple[Link, ...] = ()
    new_head: bool = False
    onnx: Mapping[str, Any] | None = None

    @property
    def weights(self) -> WeightSpec | None:
        """The registered weights this plan loads (``registry``)."""
        return self.spec.weight(self.tag) if self.source == "registry" and self.tag else None

    @property
    def loads_weights(self) -> bool:
        return self.source != "none"

    @property
    def id(self) -> str:
        """What the weights are called in messages and records."""
        if self.source == "registry":
            return f"{self.spec.name}.{self.tag}"
        if self.hub is not None:
            return self.hub.id
        if self.run is not None:
            return (
                self.run.name
                if self.path is None or self.path.name == "model.safetensors"
                else (f"{self.run.name}/{self.path.name}")
            )
        return self.path.name if self.path is not None else self.spec.name

    @property
    def contract(self) -> Any:
        """The :class:`zoo.transforms.InputContract` of :attr:`preprocessing`."""
        from zoo.transforms import InputContract

        return InputContract.from_preprocessing(self.predict_preprocessing, where=f"{self.request}: ")

    @property
    def predict_preprocessing(self) -> Mapping[str, Any]:
        """The pipeline to predict with: the weights', else the architecture's documented one."""
        if self.preprocessing or self.weights is not None or self.config is not None:
            return self.preprocessing
        return dict(self.spec.meta.get("preprocessing") or {})

    def with_args(self, **overrides: Any) -> ModelPlan:
        """This plan with model arguments replaced (None: unchanged); checked, nothing resolved again."""
        from zoo.layers.checks import check_args

        given = {k: v for k, v in overrides.items() if v is not None}
        args = {**self.model_args, **given}
        check_args(args, self.spec.model_args, self.spec.name)
        window = window_for(self.spec, args) if "img_size" in given else dict(self.window)
        return replace(self, model_args=args, window=window or dict(self.window),
                       new_head=self.new_head or "num_classes" in given)  # fmt: skip

    def without_weights(self) -> ModelPlan:
        """The same architecture and arguments, randomly initialised (nothing to load)."""
        return replace(
            self, tag=None, source="none", path=None, run=None, hub=None, config=None, covers=None,
            preprocessing={}, labels=None, lineage=(),
        )  # fmt: skip

    def planned_cfg(self) -> dict[str, Any]:
        """The ``pretrained_cfg`` the built model will carry, known before building (for checks)."""
        record = None
        if self.source == "onnx":  # what the exported file says it holds (None: random weights)
            record = dict(self.onnx.get("weights") or {}) or None if self.onnx else None
        elif self.loads_weights:
            record = {"id": self.id, "covers": self.covers, "newly_initialised": [], "source": self.source}
        cfg = {
            "name": self.spec.name,
            "tag": self.tag,
            "family": self.spec.family,
            "model_args": dict(self.model_args),
            "input_size": self.spec.input_size,
            "preprocessing": dict(self.predict_preprocessing),
            "sliding_window": dict(self.window),
            "weights": record,
        }
        if self.labels:
            cfg["labels"] = dict(self.labels)
        return cfg


def window_for(spec: ModelSpec, args: Mapping[str, Any]) -> dict[str, Any]:
    """Sliding-window defaults; a model built for another ``img_size`` gets windows of that size."""
    window = dict(spec.sliding_window)
    size = args.get("img_size")
    if size is not None and "roi_size" in window:
        dims = len(window["roi_size"])
        window["roi_size"] = tuple(size) if isinstance(size, tuple | list) else (int(size),) * dims
    return window


def _tag_of(spec: ModelSpec, tag: str | None, weights: str | None, request: str) -> str | None:
    if weights is None:
        return tag
    wname = str(weights)
    wtag = wname.split(".", 1)[1] if wname.startswith(f"{spec.name}.") else wname
    if tag is not None and wtag != tag:
        raise ValueError(f"{request!r} already names weights {tag!r}; got weights={weights!r} as well")
    spec.weight(wtag)  # an unknown tag: named, with the nearest ones
    return wtag


def default_tag(spec: ModelSpec) -> str:
    """The tag ``pretrained=True`` loads.

    Raises:
        NoPretrainedWeightsError: for a model without registered weights, with the registry's reason.
    """
    if spec.default_tag is None:
        reason = spec.no_weights_reason or "No pretrained weights are registered for it."
        raise NoPretrainedWeightsError(
            f"{spec.name} has no pretrained weights. {reason} Available: the architecture "
            f"(pretrained=False) and checkpoint_path= for a checkpoint of your own."
        )
    return spec.default_tag


def _is_hub_id(value: object) -> bool:
    from zoo.hub_repo import is_hub_id

    return is_hub_id(value)


def _run_config(folder: Path, weights: Path) -> RunConfig:
    """The checked config of a run folder (bounded: the model may be at most ~8x its weights)."""
    cfg_path = folder / "config.json"
    if not (weights.is_file() and cfg_path.is_file()):
        found = sorted(p.name for p in folder.iterdir())[:10] if folder.is_dir() else []
        raise FileNotFoundError(
            f"{folder} is a folder, so it must be a zoo run folder with model.safetensors and config.json; "
            f"found {found or 'nothing'}"
        )
    return read_config(cfg_path, weights_bytes=weights.stat().st_size)


def _check_same_model(spec: ModelSpec | None, cfg: RunConfig, where: str) -> ModelSpec:
    if spec is not None and cfg.model_name != spec.name:
        raise ValueError(
            f"{where} holds a {cfg.model_name!r} model, not {spec.name!r}: create({where!r}, ...) or "
            f"create({cfg.model_name!r}, checkpoint_path={where!r})"
        )
    return cfg.spec


def _plan_onnx(request: str) -> ModelPlan:
    from zoo.runconfig import check_onnx_metadata, read_onnx_metadata

    meta = check_onnx_metadata(read_onnx_metadata(request), request)
    try:
        spec = resolve(str(meta["model"]))[0]
    except ValueError as e:
        raise ConfigError(f"{request}: metadata medzoo.model: {e}") from None
    weights = meta.get("weights") or {}
    return ModelPlan(
        request=request,
        spec=spec,
        tag=meta.get("weights_tag") or None,
        source="onnx",
        path=Path(request),
        model_args={k: tuple(v) if isinstance(v, list) else v for k, v in meta["model_args"].items()},
        preprocessing=dict(meta["preprocessing"]),
        window=dict(meta.get("sliding_window") or {}),
        labels=meta.get("labels"),
        covers=weights.get("covers"),
        onnx=meta,
    )


def plan(
    request: str | Path,
    *,
    weights: str | None = None,
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    **overrides: Any,
) -> ModelPlan:
    """Resolve a request once into a :class:`ModelPlan` (see the module docstring).

    Args:
        request: a name, ``name.tag``, an alias, ``hf-hub:ORG/NAME[@REV]``, a run folder or a
            ``.onnx`` file.
        weights: a weights tag (``brats-ssl``) or ``name.tag``; implies ``pretrained``.
        checkpoint: a checkpoint file, a run folder, or a ``hf-hub:`` id, of the named model.
        pretrained: load the named tag, else the model's default tag.
        **overrides: model arguments that replace the weights' and the config's (``None``: not given).

    Raises:
        ValueError: an unknown name or tag, a checkpoint of another model, two sources, a
            config that fails its checks (``zoo.runconfig.ConfigError``), ``pretrained`` for a
            model without weights (:class:`NoPretrainedWeightsError`).
        FileNotFoundError: a checkpoint path that does not exist.
    """
    from zoo.layers.checks import check_args

    if isinstance(pretrained, str) or not isinstance(pretrained, bool | int):
        raise ValueError(f"pretrained: expected True or False, found {pretrained!r}")
    text = str(request).strip() if isinstance(request, str | Path) else request
    if not isinstance(text, str) or not text:
        raise ValueError(f"expected a model name, hf-hub: id, run folder or .onnx file, found {request!r}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if text.endswith(".onnx") and not _is_hub_id(text):
        if checkpoint is not None or weights is not None:
            raise ValueError(
                f"{text} holds its weights already; checkpoint/weights cannot be combined with it"
            )
        return _plan_onnx(text)

    spec: ModelSpec | None = None
    tag: str | None = None
    source_ref = None  # (kind, value) of the one source
    if _is_hub_id(text):
        if checkpoint is not None:
            raise ValueError(
                f"{text!r} names its weights already; checkpoint_path= cannot be combined with it"
            )
        if weights is not None:
            raise ValueError(f"{text} names its weights already; weights= cannot be combined with it")
        source_ref = ("hf-hub", text)
    elif Path(text).is_dir() and not _looks_like_name(text):
        if checkpoint is not None:
            raise ValueError(
                f"{text} is a run folder with its weights; checkpoint= cannot be combined with it"
            )
        source_ref = ("run", Path(text))
    else:
        spec, tag = resolve(text)
        tag = _tag_of(spec, tag, weights, text)
        if checkpoint is not None:
            if tag is not None and weights is not None:
                raise ValueError(
                    f"weights={weights!r} and checkpoint_path= name two starting points; give one"
                )
            source_ref = ("hf-hub", str(checkpoint)) if _is_hub_id(checkpoint) else ("path", Path(checkpoint))

    config: RunConfig | None = None
    hub: HubRef | None = None
    run: Path | None = None
    path: Path | None = None
    source = "none"
    if source_ref is not None and source_ref[0] == "hf-hub":
        from zoo.hub_repo import fetch_config

        repo_id, revision, commit, cfg_file = fetch_config(source_ref[1])
        config = read_config(cfg_file, where=f"hf-hub:{repo_id} config.json")
        spec = _check_same_model(spec, config, source_ref[1])
        hub, source, tag = HubRef(repo_id, revision, commit), "hf-hub", config.tag
    elif source_ref is not None:
        p = source_ref[1]
        if p.is_dir():
            run, path = p, p / "model.safetensors"
        elif p.is_file() and p.name in RUN_WEIGHTS and (p.parent / "config.json").is_file():
            run, path = p.parent, p  # best.safetensors of a run: the run's config still describes it
        elif p.is_file():
            path, source = p, "file"
        else:
            raise FileNotFoundError(
                f"checkpoint {p}: expected a checkpoint file or a run folder, found no such path"
            )
        if run is not None:
            config = _run_config(run, path)
            spec = _check_same_model(spec, config, str(run))
            source = "run"
        tag = None if source_ref[0] == "path" else tag
    assert spec is not None
    if source == "none" and (pretrained or tag is not None):
        tag = tag or default_tag(spec)
        source = "registry"
    ws = spec.weight(tag) if source == "registry" and tag else None

    args = dict(spec.model_args)
    if ws is not None:
        args.update({k: getattr(ws, k) for k in _MODEL_ARGS if getattr(ws, k) is not None and k in args})
    if config is not None:
        args.update(config.model_args)
    args.update(overrides)
    check_args(args, spec.model_args, spec.name)

    if config is not None:
        prep = dict(config.preprocessing)
        window = dict(config.sliding_window) or window_for(spec, args)
        if "img_size" in overrides:
            window = window_for(spec, args) or window
        labels, covers = config.labels, config.covers
    else:
        prep = dict(ws.preprocessing) if ws else {}
        window, labels, covers = window_for(spec, args), None, (ws.covers if ws else None)
    from zoo.provenance import lineage_of_config

    return ModelPlan(
        request=text,
        spec=spec,
        tag=tag,
        source=source,
        path=path,
        run=run,
        hub=hub,
        config=config,
        model_args=args,
        preprocessing=prep,
        window=window,
        labels=labels,
        covers=covers,
        lineage=lineage_of_config(config, run) if config is not None else (),
        new_head="num_classes" in overrides,
    )


def _looks_like_name(text: str) -> bool:
    """A folder that happens to be called like a model (``qtunet-t`` in the working directory) is
    still a name when it is not a run folder."""
    return not (Path(text) / "config.json").is_file()
