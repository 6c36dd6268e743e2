"""``create`` and ``load_weights``: from a name to a model with strictly loaded weights."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo._registry import ModelSpec, WeightSpec, resolve
from zoo.adapt import adapt_input_conv
from zoo.convert import convert_checkpoint, read_checkpoint

log = logging.getLogger("zoo")

__all__ = ["create", "load_weights", "LoadReport", "CheckpointMismatchError", "NoPretrainedWeightsError"]


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not fit the model."""


class NoPretrainedWeightsError(ValueError):
    """``pretrained=True`` for a model that has no published weights."""


@dataclass
class LoadReport:
    """What ``load_weights`` did, for logs and tests."""

    loaded: list[str] = field(default_factory=list)
    reinitialised_head: list[str] = field(default_factory=list)
    newly_initialised: list[str] = field(default_factory=list)
    adapted_input: list[str] = field(default_factory=list)
    covers: str = "full"


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def _kind(t: torch.Tensor) -> str:
    """``float``, ``int`` (bool included) or ``complex``: precision may differ on load, the kind may not."""
    if t.is_floating_point():
        return "float"
    return "complex" if t.is_complex() else "int"


def _starts(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key.startswith(p) for p in prefixes)


def load_weights(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    spec: ModelSpec | None = None,
    covers: str | None = None,
    new_head: bool = False,
) -> LoadReport:
    """Load ``state_dict`` (already in our key naming) into ``model``, strictly.

    Rules, every one logged:
      * an unexpected key is an error;
      * the input convolution(s) named by ``spec.first_conv`` are adapted when the
        checkpoint has another number of input channels (:func:`zoo.adapt.adapt_input_conv`);
      * a shape mismatch in the output head (``spec.head_keys``) re-initialises exactly
        that head (a new ``num_classes``); any other shape mismatch is an error;
      * ``covers`` names the part the checkpoint holds: ``"full"`` (every key must be
        present), ``"encoder"`` or another of ``spec.partial_components`` (every key of
        that part must be present; the rest is reported as newly initialised).
        ``covers=None`` accepts a partial checkpoint when *all* its keys lie in one
        declared part, and says so at INFO level;
      * ``new_head=True`` (the caller asked for its own ``num_classes``) lets a
        checkpoint without output-head keys load, the head staying newly initialised.

    Raises:
        CheckpointMismatchError: naming the missing, unexpected or mismatched keys.
    """
    head = tuple(spec.head_keys) if spec else ()
    parts = spec.partial_components if spec else {}
    first = spec.first_convs if spec else ()
    own = model.state_dict()
    sd = dict(state_dict)
    report = LoadReport()

    unexpected = sorted(k for k in sd if k not in own)
    if unexpected:
        raise CheckpointMismatchError(
            f"checkpoint has {len(unexpected)} key(s) the model does not: {_listing(unexpected)}"
        )

    for conv in first:
        key = f"{conv}.weight"
        if key in sd and sd[key].shape != own[key].shape:
            got, want = tuple(sd[key].shape), tuple(own[key].shape)
            if got[0] == want[0] and got[2:] == want[2:]:
                sd[key] = adapt_input_conv(sd[key], want[1])
                report.adapted_input.append(key)
                log.info("adapted %s from %d to %d input channels", key, got[1], want[1])

    mismatched = []
    for k, v in list(sd.items()):
        if _kind(v) != _kind(own[k]):
            # load_state_dict would cast silently: int64 "weights" or float step counters are a
            # corrupt or wrongly converted file, not something to round into the model.
            mismatched.append(f"{k}: checkpoint dtype {v.dtype} vs model {own[k].dtype}")
            continue
        if v.shape == own[k].shape:
            continue
        if head and _starts(k, head):
            del sd[k]
            report.reinitialised_head.append(k)
        else:
            mismatched.append(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}")
    if mismatched:
        raise CheckpointMismatchError(
            f"checkpoint shapes or dtypes do not fit the model for {len(mismatched)} key(s): "
            f"{_listing(mismatched, 6)}"
        )
    if report.reinitialised_head:
        # The whole head is re-initialised, not just the tensors whose shape changed.
        for k in own:
            if _starts(k, head) and k in sd:
                del sd[k]
                report.reinitialised_head.append(k)
    if new_head:
        report.reinitialised_head += [k for k in own if _starts(k, head) and k not in sd]
    report.reinitialised_head = sorted(set(report.reinitialised_head))
    if report.reinitialised_head:
        log.info("output head newly initialised (new num_classes): %s", _listing(report.reinitialised_head))

    missing = sorted(k for k in own if k not in sd and k not in report.reinitialised_head)
    if covers is None:
        covers = "full"
        if missing and sd:
            for part, prefixes in parts.items():
                if all(_starts(k, prefixes) for k in sd):
                    covers = part
                    log.info("checkpoint holds the %s only (%d entries)", part, len(sd))
                    break
    report.covers = covers
    if covers != "full":
        if covers not in parts:
            raise CheckpointMismatchError(
                f"checkpoint said to cover {covers!r}; the model declares {sorted(parts) or 'no parts'}"
            )
        missing_part = [k for k in missing if _starts(k, parts[covers])]
        if missing_part:
            raise CheckpointMismatchError(
                f"{covers} checkpoint lacks {len(missing_part)} {covers} key(s): {_listing(missing_part)}"
            )
        report.newly_initialised = missing
        if missing:
            log.info("newly initialised (not in the %s checkpoint): %s", covers, _listing(missing, 40))
    elif missing:
        raise CheckpointMismatchError(f"checkpoint lacks {len(missing)} key(s): {_listing(missing)}")

    result = model.load_state_dict(sd, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # checked above
    report.loaded = sorted(sd)
    return report


def _load_into(
    model: nn.Module, spec: ModelSpec, ws: WeightSpec | None, path: Path, converted: bool, new_head: bool
) -> LoadReport:
    raw = read_checkpoint(path)
    sd = raw if converted else convert_checkpoint(raw, spec)
    report = load_weights(model, sd, spec, covers=ws.covers if ws else None, new_head=new_head)
    random = report.newly_initialised + report.reinitialised_head
    if random:
        from zoo.provenance import random_parts

        # One warning per load: predictions from these parts mean nothing until fine-tuned.
        log.warning(
            "%s: %s loaded from %s; %d tensor(s) are randomly initialised (%s): fine-tune before predicting",
            spec.name,
            report.covers,
            path.name,
            len(random),
            ", ".join(random_parts(random)),
        )
    return report


def _window_for(spec: ModelSpec, args: Mapping[str, Any]) -> dict[str, Any]:
    """Sliding-window defaults; a model built for another ``img_size`` gets windows of that size."""
    window = dict(spec.sliding_window)
    size = args.get("img_size")
    if size is not None and "roi_size" in window:
        dims = len(window["roi_size"])
        window["roi_size"] = tuple(size) if isinstance(size, tuple | list) else (int(size),) * dims
    return window


def _read_run_folder(run: Path, spec: ModelSpec) -> tuple[Path, dict[str, Any]]:
    """``(checkpoint file, config)`` of a ``zoo finetune`` / ``zoo pretrain`` run folder."""
    import json

    ckpt, cfg_path = run / "model.safetensors", run / "config.json"
    if not (ckpt.is_file() and cfg_path.is_file()):
        found = sorted(p.name for p in run.iterdir())[:10]
        raise FileNotFoundError(
            f"{run} is a folder, so it must be a zoo run folder with model.safetensors and config.json; "
            f"found {found or 'nothing'}"
        )
    cfg = json.loads(cfg_path.read_text())
    run_model = cfg.get("model_name")
    if run_model and resolve(run_model)[0].name != spec.name:
        raise ValueError(f"{run} holds a {run_model!r} run, not {spec.name!r}: create({run_model!r}, ...)")
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in (cfg.get("model_args") or {}).items()}
    return ckpt, {**cfg, "model_args": args}


def _validate_args(spec: ModelSpec, args: Mapping[str, Any]) -> None:
    """Refuse model arguments of the wrong type or range before anything is built.

    Ints given as strings or floats (``in_chans="1"``, ``num_classes=2.0``), zero or negative
    widths, depths, heads and sizes, dropouts outside [0, 1]: one ``ValueError`` naming the
    argument, what was expected and what was found (``zoo.layers.checks.check_args``).
    """
    from zoo.layers.checks import check_args

    check_args(args, spec.model_args, spec.name)


def weights_tag(spec: ModelSpec, tag: str | None, pretrained: bool, has_checkpoint: bool) -> str | None:
    """The weights tag a load reads: the named one, else the default when ``pretrained`` asks for it.

    Shared by :func:`create` and ``zoo.predict.planned_cfg``, so that the plan checked before a
    download names the weights the load then fetches.

    Raises:
        NoPretrainedWeightsError: ``pretrained`` for a model without registered weights.
    """
    if not pretrained or tag is not None or has_checkpoint:
        return tag
    if spec.default_tag is None:
        reason = spec.no_weights_reason or "No pretrained weights are registered for it."
        raise NoPretrainedWeightsError(
            f"{spec.name} has no pretrained weights. {reason} Available: the architecture "
            f"(pretrained=False) and checkpoint_path= for a checkpoint of your own."
        )
    return spec.default_tag


def base_model_args(
    spec: ModelSpec, ws: WeightSpec | None, run_cfg: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The registry's model arguments, then those the weights were trained with, then a run folder's."""
    args = dict(spec.model_args)
    if ws is not None:
        for key in ("in_chans", "num_classes", "img_size"):
            if getattr(ws, key) is not None and key in args:
                args[key] = getattr(ws, key)
    args.update((run_cfg or {}).get("model_args", {}))
    return args


def create(
    name: str,
    pretrained: bool = False,
    weights: str | None = None,
    checkpoint_path: str | Path | None = None,
    in_chans: int | None = None,
    num_classes: int | None = None,
    img_size: int | tuple[int, ...] | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model, optionally with pretrained weights.

    Args:
        name: model name, ``name.tag``, an alias (``pctnet-vf110k``), or the Hub id of a
            repository written by ``zoo publish``: ``hf-hub:ORG/NAME[@REVISION]``.
        pretrained: load the weights of the tag in ``name`` or ``weights``, else the
            model's default tag.
        weights: weights tag (``"brats-ssl"``) or full id; implies ``pretrained=True``.
        checkpoint_path: a local checkpoint (safetensors, or an upstream-format file that
            the family's converter recognises), or the folder of a ``zoo finetune`` /
            ``zoo pretrain`` run (its ``config.json`` gives the model arguments and the
            preprocessing), or ``hf-hub:ORG/NAME[@REVISION]``; takes precedence over the Hub.
        in_chans: input channels; the first convolution is adapted if the weights differ.
        num_classes: output classes; only the output head is re-initialised if it differs.
        img_size: spatial input size for models built for one size.
        features_only: return :func:`zoo.adapt.features_only` of the model: the encoder's
            feature map per stage (``out_indices`` selects stages), with ``feature_info``.
        **kwargs: further constructor arguments of the architecture.

    Returns:
        The model in ``eval()`` mode. ``model.pretrained_cfg`` records the name, tag,
        input size and the preprocessing the weights expect.

    Example:
        >>> model = zoo.create("qtunet-t", in_chans=1, num_classes=14)
        >>> model(torch.randn(1, 1, 96, 96, 96)).shape
        torch.Size([1, 14, 96, 96, 96])
    """
    from zoo.hub_repo import create_from_hub, is_hub_id

    if is_hub_id(name) or is_hub_id(checkpoint_path):  # a published repository: zoo.hub_repo
        if is_hub_id(name) and checkpoint_path is not None:
            raise ValueError(
                f"{name!r} names its weights already; checkpoint_path= cannot be combined with it"
            )
        return create_from_hub(
            name if is_hub_id(name) else str(checkpoint_path),
            name=None if is_hub_id(name) else name,
            weights=weights,
            in_chans=in_chans,
            num_classes=num_classes,
            img_size=img_size,
            features_only=features_only,
            out_indices=out_indices,
            **kwargs,
        )
    spec, tag = resolve(name)
    run_cfg: dict[str, Any] = {}
    if checkpoint_path is not None and Path(checkpoint_path).is_dir():
        checkpoint_path, run_cfg = _read_run_folder(Path(checkpoint_path), spec)
    if weights is not None:
        wname = str(weights)
        wtag = wname.split(".", 1)[1] if wname.startswith(f"{spec.name}.") else wname
        if tag is not None and wtag != tag:
            raise ValueError(f"{name!r} already names weights {tag!r}; got weights={weights!r} as well")
        spec.weight(wtag)
        tag, pretrained = wtag, True
    tag = weights_tag(spec, tag, pretrained, checkpoint_path is not None)
    ws = spec.weight(tag) if tag is not None else None

    args = base_model_args(spec, ws, run_cfg)
    for key, value in (("in_chans", in_chans), ("num_classes", num_classes), ("img_size", img_size)):
        if value is not None:
            args[key] = value
    args.update(kwargs)
    _validate_args(spec, args)
    try:
        model = spec.builder(**args)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        raise ValueError(f"{spec.name}: {e} (its configuration: {', '.join(spec.model_args)})") from e

    record = None
    if checkpoint_path is not None:
        from zoo.provenance import load_record

        path = Path(checkpoint_path)
        report = _load_into(model, spec, None, path, converted=False, new_head=num_classes is not None)
        record = load_record(
            source="run" if run_cfg else "file",
            ident=path.parent.name if run_cfg else path.name,  # names only: records are published
            tag=None,
            path=path,
            covers=report.covers,
            newly_initialised=report.newly_initialised + report.reinitialised_head,
        )
        log.info("loaded %s from %s", spec.name, path)
    elif pretrained:
        from zoo.hub import fetch_weights
        from zoo.provenance import load_record

        path = fetch_weights(spec, ws)
        report = _load_into(model, spec, ws, path, converted=True, new_head=num_classes is not None)
        record = load_record(
            source="registry",
            ident=f"{spec.name}.{tag}",
            tag=tag,
            path=path,
            covers=report.covers,
            newly_initialised=report.newly_initialised + report.reinitialised_head,
        )
        log.info("loaded %s.%s", spec.name, tag)

    model.pretrained_cfg = {
        "name": spec.name,
        "tag": tag if (pretrained or checkpoint_path) else None,
        "family": spec.family,
        "model_args": args,
        "input_size": spec.input_size,
        "preprocessing": dict(ws.preprocessing) if ws else {},
        "sliding_window": _window_for(spec, args),
        # What was actually loaded (zoo.provenance): tag, sha256 of the file, covered part; None if random.
        "weights": record,
    }
    if run_cfg:  # a zoo run folder: what the run recorded about its data wins over the registry's
        for key in ("preprocessing", "sliding_window", "labels"):
            if run_cfg.get(key):
                model.pretrained_cfg[key] = run_cfg[key]
        model.pretrained_cfg["run"] = str(Path(checkpoint_path).parent)
    if features_only:
        from zoo.adapt import features_only as _features_only

        return _features_only(model.eval(), out_indices).eval()
    return model.eval()
