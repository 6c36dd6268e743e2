"""``create`` and ``load_weights``: from a name to a model with strictly loaded weights."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo._registry import ModelSpec, WeightSpec
from zoo.adapt import adapt_input_conv
from zoo.convert import convert_checkpoint, read_checkpoint
from zoo.layers.derived import derived_buffer_keys
from zoo.plan import ModelPlan, NoPretrainedWeightsError

log = logging.getLogger("zoo")

__all__ = ["create", "load_weights", "LoadReport", "CheckpointMismatchError", "NoPretrainedWeightsError"]


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not fit the model."""


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

    # Buffers the model computes from its configuration may be absent (published files omit them).
    derived = derived_buffer_keys(model)
    skip = derived | set(report.reinitialised_head)
    missing = sorted(k for k in own if k not in sd and k not in skip)
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
    model: nn.Module,
    spec: ModelSpec,
    ws: WeightSpec | None,
    path: Path,
    converted: bool,
    new_head: bool,
    covers: str | None = None,
) -> LoadReport:
    raw = read_checkpoint(path)
    sd = raw if converted else convert_checkpoint(raw, spec)
    # Registered weights are what the registry says; a file's own record of "full" is checked by detection.
    covers = ws.covers if ws else (covers if covers != "full" else None)
    report = load_weights(model, sd, spec, covers=covers, new_head=new_head)
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


def build(p: ModelPlan) -> nn.Module:
    """The architecture of a plan, with random weights, in train mode (nothing loaded)."""
    spec = p.spec
    try:
        return spec.builder(**p.model_args)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        raise ValueError(f"{spec.name}: {e} (its configuration: {', '.join(spec.model_args)})") from e


def weights_file(p: ModelPlan) -> Path | None:
    """The local file holding a plan's weights: downloaded (registry, Hub) or as given.

    A Hub repository's weights are fetched at the commit its config was read at, bounded by
    the size of the model the config describes; then the model that the config's arguments
    build is checked against the size of the weights before anything is allocated.
    """
    from zoo.runconfig import check_model_args, estimate_param_bytes

    if p.source == "registry":
        from zoo.hub import fetch_weights

        return fetch_weights(p.spec, p.weights)
    if p.source == "hf-hub":
        from zoo.hub_repo import fetch_weights as fetch_hub_weights

        need = estimate_param_bytes(p.spec, p.model_args, p.spec.model_args)
        path = fetch_hub_weights(p.hub.repo_id, p.hub.commit, int(4 * need) + (64 << 20))
        check_model_args(p.spec, p.config.model_args, f"{p.hub.id}: config.json", path.stat().st_size)
        return path
    return p.path


def load(p: ModelPlan, model: nn.Module, path: Path | None = None) -> dict[str, Any] | None:
    """Load a plan's weights into ``model`` (strictly) and return the load record (None: nothing).

    The record (:func:`zoo.provenance.load_record`) carries the lineage: the chain the source
    descends from, then the loaded file itself, identified by content.
    """
    from zoo.provenance import chain_licence, file_link, identify_file, load_record
    from zoo.runconfig import Link

    if not p.loads_weights:
        return None
    path = path or weights_file(p)
    assert path is not None
    converted = p.source == "registry"
    report = _load_into(
        model, p.spec, p.weights, path, converted=converted, new_head=p.new_head, covers=p.covers
    )
    ident = p.id  # names only (a tag, a run folder's or a file's name, a Hub id): records are published
    sha, origin = identify_file(path)  # one read of the file for the record and its link
    record = load_record(
        source=p.source,
        ident=ident,
        tag=p.tag if p.source in ("registry", "hf-hub") else None,
        path=path,
        covers=report.covers,
        newly_initialised=report.newly_initialised + report.reinitialised_head,
        sha256=sha,
        origin=origin,
    )
    if p.source == "registry":
        ws = p.weights
        link = Link(p.id, sha, ws.license, ws.redistributable, report.covers, "registry")
    else:
        link = file_link(
            path, ident=ident, source=p.source, covers=report.covers, spec=p.spec, identified=(sha, origin)
        )
        if link.license is None and p.lineage:  # a run or repository: its chain's licence is its own
            lic, redis, _ = chain_licence(p.lineage)
            link = replace(link, license=lic, redistributable=redis)
        if link.license is None and p.config is not None and p.config.license is not None:
            link = replace(link, license=p.config.license, redistributable=p.config.redistributable)
    chain = (*p.lineage, link)
    lic, redis, _ = chain_licence(chain)
    record["lineage"] = [x.as_dict() for x in chain]
    if record.get("license") is None:
        record["license"], record["redistributable"] = lic, redis
    elif redis is False:
        record["redistributable"] = False
    if p.source == "hf-hub":  # what the published weights themselves started from, as recorded
        record["base"] = p.config.init or p.config.derived_from
    log.info("loaded %s from %s", p.spec.name, p.id)
    return record


def pretrained_cfg(p: ModelPlan, record: dict[str, Any] | None) -> dict[str, Any]:
    """``model.pretrained_cfg``: the plan's view (:meth:`ModelPlan.planned_cfg`) with what was loaded.

    ``preprocessing`` is the weights' own (empty for random weights, as before a plan existed);
    ``weights`` the load record (zoo.provenance: tag, sha256, covered part, lineage; None if random).
    """
    cfg = p.planned_cfg()
    cfg.update(tag=p.tag if p.loads_weights else None, preprocessing=dict(p.preprocessing), weights=record)
    if p.run is not None:
        cfg["run"] = str(p.run)
    if p.hub is not None:
        cfg["hub"] = {"repo_id": p.hub.repo_id, "revision": p.hub.revision, "commit": p.hub.commit}
    return cfg


def create_from_plan(p: ModelPlan, features_only: bool = False, out_indices: tuple[int, ...] | None = None):
    """plan → build → load: the model of a plan in ``eval()`` mode, ``pretrained_cfg`` set."""
    if p.source == "onnx":
        raise ValueError(f"{p.request} is an exported ONNX file; load it with zoo.export.load_onnx")
    path = weights_file(p) if p.loads_weights else None  # downloads and size checks before the build
    model = build(p)
    record = load(p, model, path)
    model.pretrained_cfg = pretrained_cfg(p, record)
    if features_only:
        from zoo.adapt import features_only as _features_only

        return _features_only(model.eval(), out_indices).eval()
    return model.eval()


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
    from zoo.plan import plan

    overrides = dict(in_chans=in_chans, num_classes=num_classes, img_size=img_size, **kwargs)
    p = plan(name, weights=weights, checkpoint=checkpoint_path, pretrained=pretrained, **overrides)
    return create_from_plan(p, features_only, out_indices)
