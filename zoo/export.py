"""ONNX export with an onnxruntime parity check at every declared input shape.

The batch axis is always dynamic. Spatial axes stay fixed to the traced size unless
several spatial shapes are declared: the export is then made shape-polymorphic and the
parity check runs at each of them, because a graph traced at one size can drift at
another (3D Swin window padding, shifts and masks are the usual culprits). An export
whose outputs differ from PyTorch's by more than ``rtol`` of the output's scale fails.

The model exported is a copy with export forms swapped in (:mod:`zoo.export_forms`); the file
describes itself in its metadata, which :mod:`zoo.onnx_runtime` reads back to run it.

Example::

    from zoo.export import ExportSettings, to_onnx
    result = to_onnx("qtunet-t", "qtunet-t.onnx")        # prints max abs / rel diff per shape
    result.exporter, result.max_rel                       # e.g. ("dynamo", 1.2e-06)
    to_onnx("fmunet", "fmunet.onnx", ExportSettings(input_shapes=[(1, 64, 128, 128), (1, 96, 160, 160)]))
"""

from __future__ import annotations

import copy
import json
import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from zoo._registry import ModelSpec
from zoo.export_forms import for_export
from zoo.onnx_runtime import METADATA_KEYS, onnx_providers, onnx_session
from zoo.runconfig import OPTIONAL_METADATA_KEYS

log = logging.getLogger("zoo")

__all__ = [
    "to_onnx",
    "ExportSettings",
    "ExportResult",
    "Parity",
    "OnnxParityError",
    "default_input_shape",
    "reduced_config",
    "second_shape",
    "min_onnxruntime",
    "GRAPH_PASSES",
]

# Above this much parameter data the weights go to an external-data file (protobuf caps at 2 GiB).
_EXTERNAL_DATA_BYTES = 1_500_000_000
EXPORTERS = ("dynamo", "torchscript")
# Opset 23 is the first with the Attention operator: the dynamo exporter maps
# scaled_dot_product_attention to it and onnxruntime (≥ 1.23) runs it as one fused CPU kernel,
# where opset 20 spells it as MatMul/Add/Softmax/MatMul (1.5× slower for the window attention).
DYNAMO_OPSET = 23
# The first onnxruntime release implementing each opset (onnxruntime's compatibility table);
# a graph with the fused Attention operator needs 1.23 whatever its opset says.
_ORT_FOR_OPSET = {17: "1.12", 18: "1.14", 19: "1.15", 20: "1.17", 21: "1.18", 22: "1.20", 23: "1.23"}
_ATTENTION_ORT = "1.23"
# What happens to the dynamo exporter's graph: "fold" skips its rewrite rules and only folds
# constants and drops unused nodes (fast); "exporter" runs its full optimiser (rewrite rules too).
GRAPH_PASSES = ("fold", "exporter")


class OnnxParityError(RuntimeError):
    """onnxruntime's outputs differ from PyTorch's by more than the tolerance."""


@dataclass(frozen=True)
class Parity:
    """onnxruntime vs PyTorch at one input shape.

    Attributes:
        input_shape: the full input shape, batch included.
        max_abs: largest absolute difference over all outputs.
        rel: ``max_abs`` over the output's scale (its largest magnitude), worst output.
        scale: the scale of the worst output.
        num_outputs: tensors compared (nested outputs flattened in order).
    """

    input_shape: tuple[int, ...]
    max_abs: float
    rel: float
    scale: float
    num_outputs: int

    def __str__(self) -> str:
        return (
            f"{tuple(self.input_shape)}: max abs diff {self.max_abs:.3e}, "
            f"max rel diff {self.rel:.3e} (of output scale {self.scale:.3g}, {self.num_outputs} output(s))"
        )


@dataclass
class ExportResult:
    """What :func:`to_onnx` wrote and how well it matches PyTorch."""

    path: Path
    exporter: str
    opset: int
    input_shapes: list[tuple[int, ...]]
    dynamic_spatial: bool
    parity: list[Parity] = field(default_factory=list)
    export_seconds: float = 0.0
    fallback_reason: str | None = None
    rtol: float = 1e-4

    @property
    def max_rel(self) -> float:
        return max((p.rel for p in self.parity), default=0.0)

    @property
    def max_abs(self) -> float:
        return max((p.max_abs for p in self.parity), default=0.0)


# -- shapes -------------------------------------------------------------------------------------


def _spatial_override(spec_or_cfg_args: Mapping[str, Any]) -> tuple[int, ...] | None:
    img = spec_or_cfg_args.get("img_size")
    if img is None:
        return None
    return (int(img),) if isinstance(img, int) else tuple(int(s) for s in img)


def default_input_shape(model: nn.Module, spec: ModelSpec | None = None) -> tuple[int, ...]:
    """The input shape (without batch) a zoo model is built for.

    The registered ``input_size`` with its trailing spatial axes replaced by the model's own
    ``img_size`` (so a model built at another size reports that size; for a model loaded from a
    run folder without one, the run's sliding-window ``roi_size``) and, for ``(C, *spatial)``
    layouts, its channel count by ``in_chans``.

    Raises:
        ValueError: when neither the model nor the registry states an input size.
    """
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    base = cfg.get("input_size") or (spec.input_size if spec else None)
    if base is None:
        raise ValueError("this model states no input size; pass input_shape=(C, *spatial)")
    shape = list(base)
    args = cfg.get("model_args", {})
    img = _spatial_override(args) or getattr(model, "img_size", None)
    roi = (cfg.get("sliding_window") or {}).get("roi_size")
    if img is None and cfg.get("run") and roi and len(roi) == len(shape) - 1:
        # A fine-tuning run's model is used on the run's window: export at that size.
        img = tuple(int(s) for s in roi)
    if isinstance(img, int):
        img = (img,)
    if img is not None:
        img = tuple(int(s) for s in img)
        if len(img) == 1:  # an int img_size means a cube (square) over the (C, *spatial) layout
            img = img * (len(shape) - 1)
        shape[len(shape) - len(img) :] = img
        if len(shape) == len(img) + 1 and args.get("in_chans"):
            shape[0] = int(args["in_chans"])
    return tuple(shape)


_REDUCTION_SCALES = (1 / 6, 1 / 4, 1 / 3, 3 / 8, 1 / 2, 2 / 3, 3 / 4, 1)


def _accepts(spec: ModelSpec, overrides: Mapping[str, Any], shape: tuple[int, ...]) -> bool:
    """Whether the model built with ``overrides`` takes a batch of ``shape``.

    The check runs on the meta device (no compute); a model that cannot run there is
    built and run for real on the CPU at that (small) size.
    """
    args = {**spec.model_args, **overrides}
    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                model = spec.builder(**args).eval()
                x = torch.zeros((1, *shape))
            with torch.no_grad():
                model(x)
            return True
        except ValueError:
            return False
        except (RuntimeError, NotImplementedError, TypeError):
            if device == "cpu":
                return False
    return False


def reduced_config(spec: ModelSpec, min_side: int = 32) -> tuple[dict[str, Any], tuple[int, ...]]:
    """The smallest valid configuration of ``spec`` for quick checks (CI export tests).

    The spatial axes of ``spec.input_size`` (those ``img_size`` names, else all but the
    first) are scaled down uniformly by the largest factor that keeps every side at least
    ``min_side`` and that the model accepts: a model built for one size is rebuilt with
    ``img_size`` at that size; a shape-polymorphic one keeps its configuration.

    Returns:
        ``(model_args overrides, input shape without batch)``; the full size when nothing
        smaller is valid.
    """
    if spec.input_size is None:
        raise ValueError(f"{spec.name} registers no input_size")
    full = tuple(spec.input_size)
    img = _spatial_override(spec.model_args)
    n_sp = len(img) if img else len(full) - 1
    lead, spatial = full[: len(full) - n_sp], full[len(full) - n_sp :]
    tried = set()
    for r in _REDUCTION_SCALES:
        sides = tuple(s * r for s in spatial)
        if any(abs(v - round(v)) > 1e-9 for v in sides):
            continue
        sides = tuple(int(round(v)) for v in sides)
        if sides in tried or (r < 1 and min(sides) < min(min_side, min(spatial))):
            continue
        tried.add(sides)
        overrides = {"img_size": sides} if img else {}
        shape = (*lead, *sides)
        if r == 1 or _accepts(spec, overrides, shape):
            return overrides, shape
    return {}, full


def _flat_outputs(out: Any) -> list[torch.Tensor]:
    leaves, _ = tree_flatten(out)
    tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
    if not tensors:
        raise ValueError(f"the model returned no tensors ({type(out).__name__})")
    return tensors


def _compare(ref: list[torch.Tensor], got: list[Any], shape: tuple[int, ...]) -> Parity:
    if len(ref) != len(got):
        raise OnnxParityError(f"at {shape}: PyTorch gives {len(ref)} output(s), onnxruntime {len(got)}")
    worst = (0.0, 0.0, 0.0)  # rel, abs, scale
    max_abs = 0.0
    for i, (r, g) in enumerate(zip(ref, got, strict=True)):
        g = torch.as_tensor(g)
        if tuple(g.shape) != tuple(r.shape):
            raise OnnxParityError(
                f"at {shape}: output {i} has shape {tuple(g.shape)} in onnxruntime, "
                f"{tuple(r.shape)} in PyTorch"
            )
        r64, g64 = r.detach().double(), g.double()
        if not torch.isfinite(r64).all():
            # NaN compares as nothing: a parity "pass" on it would prove nothing.
            raise OnnxParityError(
                f"at {shape}: PyTorch's output {i} has non-finite values (NaN/inf), so parity cannot "
                "be checked; the model itself overflows at these weights"
            )
        diff = float((r64 - g64).abs().max()) if r64.numel() else 0.0
        if not torch.isfinite(g64).all():
            diff = float("inf")
        scale = float(r64.abs().max()) if r64.numel() else 0.0
        rel = diff / max(scale, 1e-12)
        max_abs = max(max_abs, diff)
        if rel >= worst[0]:
            worst = (rel, diff, scale)
    return Parity(tuple(shape), max_abs, worst[0], worst[2], len(ref))


def _example(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g)


# -- export ---------------------------------------------------------------------------------------


def _export_dynamo(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    n_out: int,
    dyn_axes: list[int],
    opset: int | None,
    external: bool,
    passes: str = "fold",
) -> None:
    from torch.export import Dim

    dims = {i: (Dim("batch", min=1, max=4096) if i == 0 else Dim.DYNAMIC) for i in dyn_axes}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            None,
            dynamo=True,
            input_names=["input"],
            output_names=[f"output{i}" if n_out > 1 else "output" for i in range(n_out)],
            dynamic_shapes=(dims,),
            opset_version=opset or DYNAMO_OPSET,
            optimize=passes == "exporter",
            verbose=False,
        )
        if passes == "fold":
            from zoo.export_forms import fold_and_prune

            fold_and_prune(program.model)
        program.save(str(path), external_data=external)


def _export_torchscript(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    n_out: int,
    dyn_axes: list[int],
    opset: int | None,
    external: bool,
    passes: str = "fold",
) -> None:
    names = [f"output{i}" if n_out > 1 else "output" for i in range(n_out)]
    axes = {i: ("batch" if i == 0 else f"dim{i}") for i in dyn_axes}
    # Outputs: only the batch axis is declared; the exporter infers the rest.
    dynamic = {"input": axes, **{n: {0: "batch"} for n in names}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=names,
            dynamic_axes=dynamic,
            opset_version=opset or 17,
            do_constant_folding=True,
        )


_EXPORT_FNS: dict[str, Callable[..., None]] = {"dynamo": _export_dynamo, "torchscript": _export_torchscript}


def _resolve_model(
    model: Any,
    tag: str | None,
    checkpoint_path: str | Path | None,
    model_kwargs: Mapping[str, Any],
) -> tuple[nn.Module, ModelSpec | None]:
    """The module to export and its spec: a built model, a :class:`zoo.plan.ModelPlan`, or a request
    (a name, ``name.tag``, a run folder or a ``hf-hub:`` id) planned here, once."""
    from zoo._factory import create_from_plan
    from zoo._registry import registered
    from zoo.plan import ModelPlan, plan

    if isinstance(model, nn.Module):
        spec = None
        name = getattr(model, "pretrained_cfg", {}).get("name")
        if name:
            try:
                spec = registered(name)
            except ValueError:  # a model of the user's own, not registered: described by its cfg
                spec = None
        return model.eval(), spec
    if not isinstance(model, ModelPlan):
        model = plan(model, weights=tag, checkpoint=checkpoint_path)
    p = model.with_args(**dict(model_kwargs)) if model_kwargs else model
    return create_from_plan(p).eval(), p.spec


@dataclass(frozen=True)
class ExportSettings:
    """How :func:`to_onnx` exports and checks; the defaults export at the model's declared size.

    Attributes:
        input_shape: one input shape without the batch axis, ``(C, *spatial)`` (default:
            the model's declared size, see :func:`default_input_shape`).
        input_shapes: several shapes without batch, same rank; when their spatial sizes
            differ the spatial axes are exported dynamic and parity is checked at each —
            the model counts as shape-polymorphic only if every one passes.
        tag: weights tag when the model is given by name.
        checkpoint_path: local checkpoint when the model is given by name.
        model_kwargs: further :func:`zoo.create` arguments (``img_size=``, ``num_classes=`` …).
        opset: ONNX opset (default: the exporter's own, :data:`DYNAMO_OPSET` for dynamo, 17 for
            TorchScript).
        exporter: ``"dynamo"`` (``torch.export``), ``"torchscript"``, or ``"auto"``: dynamo,
            falling back to TorchScript when dynamo fails to export or to match.
        batch_sizes: batch sizes the parity check runs (the batch axis is always dynamic).
        rtol: tolerance on max |onnx − torch| / max |torch| per output.
        check: run the onnxruntime parity check (otherwise only export).
        dynamic_spatial: export the spatial axes dynamic: parity is checked at the declared
            shape and at a second size the model takes (:func:`second_shape`); a model built for
            one size is refused, naming why.
        device: where onnxruntime runs the parity check (``cpu``, ``cuda``, ``cuda:N``, ``auto``;
            :func:`zoo.inference.resolve_device`); the PyTorch references are computed on the CPU.
        graph_passes: ``"fold"`` (constant folding and unused-node removal only, fast) or
            ``"exporter"`` (the dynamo exporter's full optimiser, rewrite rules included).
    """

    input_shape: Sequence[int] | None = None
    input_shapes: Sequence[Sequence[int]] | None = None
    tag: str | None = None
    checkpoint_path: str | Path | None = None
    model_kwargs: Mapping[str, Any] | None = None
    opset: int | None = None
    exporter: str = "auto"
    batch_sizes: Sequence[int] = (1, 2)
    rtol: float = 1e-4
    check: bool = True
    dynamic_spatial: bool = False
    device: str = "cpu"
    graph_passes: str = "fold"


_SECOND_SCALES = (3 / 4, 2 / 3, 1 / 2, 5 / 4, 3 / 2)


def second_shape(module: nn.Module, shape: Sequence[int]) -> tuple[int, ...]:
    """Another input size (without batch) that ``module`` takes, for a dynamic-spatial export.

    The spatial sides (after the channel axis, 16 or more) are scaled by 3/4, 2/3, 1/2, 5/4, 3/2
    (in that order, kept integral) and the first size the model runs at without an error is
    returned.

    Raises:
        ValueError: the model takes no other size (it is built for one input size).
    """
    for r in _SECOND_SCALES:
        # the first axis is the channels'; of the others, sides below 16 are not spatial (colour)
        sides = [s * r if i and s >= 16 else s for i, s in enumerate(shape)]
        if any(abs(v - round(v)) > 1e-9 for v in sides):
            continue
        cand = tuple(int(round(v)) for v in sides)
        try:
            with torch.no_grad():
                module(torch.zeros((1, *cand)))
            return cand
        except (ValueError, RuntimeError, AssertionError, IndexError):
            continue
    name = (getattr(module, "pretrained_cfg", {}) or {}).get("name") or type(module).__name__
    raise ValueError(
        f"{name} cannot export dynamic spatial axes: it takes only inputs of {tuple(shape)} (built for one "
        "input size); export each size separately (--img-size)"
    )


def min_onnxruntime(opset: int, ops: Sequence[str]) -> str:
    """The oldest onnxruntime that runs a graph of ``opset`` holding the operators ``ops``."""
    need = _ORT_FOR_OPSET.get(opset, _ORT_FOR_OPSET[max(_ORT_FOR_OPSET)] if opset > 23 else "1.12")
    if "Attention" in ops:
        need = max(need, _ATTENTION_ORT, key=lambda v: tuple(int(p) for p in v.split(".")))
    return need


def _check_output_path(path: Path) -> None:
    """Refuse an output the export could not write: a folder, under a file, in a read-only folder.

    Raises:
        ValueError: one line naming the path and what was found.
    """
    from zoo.predict_checks import check_writable_parent

    if path.is_dir():
        raise ValueError(f"{path}: expected an .onnx file name, found a folder")
    check_writable_parent(path)


def to_onnx(
    model: nn.Module | str,
    path: str | Path,
    settings: ExportSettings | None = None,
    *,
    verbose: bool = True,
) -> ExportResult:
    """Export a zoo model to ONNX and check it against PyTorch with onnxruntime.

    Args:
        model: an ``nn.Module`` (a zoo model) or a registered name / ``name.tag``; a name
            is built with :func:`zoo.create` (weights when a tag is named).
        path: the ``.onnx`` file to write (large models add ``<path>.data``).
        settings: shapes, weights, exporter, opset and parity check (:class:`ExportSettings`);
            None exports at the model's declared size with the defaults.
        verbose: print each stage with its elapsed time, and the parity lines.

    Returns:
        An :class:`ExportResult` (exporter used, opset, parity per shape).

    Raises:
        ValueError: bad shapes (the model's own input validation runs first).
        OnnxParityError: onnxruntime differs beyond ``rtol`` (the file is removed).
        RuntimeError: no exporter could export the model.
    """
    from zoo._optional import require

    require("onnx", "onnxruntime", extra="onnx", feature="ONNX export")
    import onnx

    if settings is not None and not isinstance(settings, ExportSettings):
        raise TypeError(f"settings must be an ExportSettings, got {type(settings).__name__}")
    opts = settings if settings is not None else ExportSettings()
    _check_output_path(Path(path))  # before the model is built, weights fetched or a shape traced
    input_shape, input_shapes = opts.input_shape, opts.input_shapes
    exporter, batch_sizes, rtol = opts.exporter, opts.batch_sizes, opts.rtol
    if exporter not in ("auto", *EXPORTERS):
        raise ValueError(f"exporter must be 'auto', 'dynamo' or 'torchscript', got {exporter!r}")
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be positive, got {batch_sizes}")
    if opts.graph_passes not in GRAPH_PASSES:
        raise ValueError(f"graph_passes must be one of {GRAPH_PASSES}, got {opts.graph_passes!r}")
    from zoo.inference import resolve_device

    device = resolve_device(opts.device)  # a device that is not there: refused before any build
    t0 = time.perf_counter()
    say = (
        (lambda msg: print(f"export: {msg} ({time.perf_counter() - t0:.1f} s)", flush=True))
        if verbose
        else (lambda msg: None)
    )
    module, spec = _resolve_model(model, opts.tag, opts.checkpoint_path, opts.model_kwargs or {})
    if input_shapes is not None and input_shape is not None:
        raise ValueError("give input_shape or input_shapes, not both")
    shapes = [
        tuple(int(s) for s in sh)
        for sh in (input_shapes or [input_shape or default_input_shape(module, spec)])
    ]
    if opts.dynamic_spatial and len({s[1:] for s in shapes}) == 1:
        with torch.no_grad():
            shapes.append(second_shape(module, shapes[0]))
    say(f"model ready, shapes {', '.join('×'.join(map(str, s)) for s in shapes)}")
    if len({len(s) for s in shapes}) != 1:
        raise ValueError(f"input_shapes must share one rank, got {shapes}")
    ndim = len(shapes[0]) + 1
    dyn_axes = [0] + [i + 1 for i in range(ndim - 1) if len({s[i] for s in shapes}) > 1]
    dynamic_spatial = len(dyn_axes) > 1

    # PyTorch references first: the model's own input validation speaks before any export.
    refs: dict[tuple[int, ...], tuple[torch.Tensor, list[torch.Tensor]]] = {}
    # no_grad, not inference_mode: a model that caches tensors (window masks) must stay exportable.
    with torch.no_grad():
        for k, sh in enumerate(shapes):
            for b in batch_sizes:
                x = _example((int(b), *sh), seed=k * 97 + int(b))
                refs[(int(b), *sh)] = (x, [t.float().clone() for t in _flat_outputs(module(x))])
    n_out = len(next(iter(refs.values()))[1])
    say(f"PyTorch reference outputs at {len(refs)} input shape(s)")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    external = sum(p.numel() * p.element_size() for p in module.parameters()) > _EXTERNAL_DATA_BYTES
    # Trace at batch 2 so the batch axis is not specialised to 1.
    trace_shape = (2, *shapes[0])
    order = list(EXPORTERS) if exporter == "auto" else [exporter]
    failures: list[str] = []
    parity_failed = False
    for name in order:
        for stale in (path, Path(f"{path}.data")):
            stale.unlink(missing_ok=True)
        start = time.perf_counter()
        try:
            # A fresh copy per exporter: tracing can leave state (caches) on modules that would leak
            # into the next attempt and into the caller's model.
            say(f"tracing with the {name} exporter")
            _EXPORT_FNS[name](
                for_export(copy.deepcopy(module)),
                _example(trace_shape, 0),
                path,
                n_out,
                dyn_axes,
                opts.opset,
                external,
                opts.graph_passes,
            )
        except Exception as e:  # exporters raise many types; the next one gets its chance
            failures.append(f"{name} export failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
            log.info(failures[-1])
            continue
        seconds = time.perf_counter() - start
        say(f"{name} graph written")
        try:
            _describe(onnx, path, module, spec, shapes, dyn_axes, external)
        except Exception as e:  # a file onnx cannot load back or check is no export
            failures.append(f"{name} export is not a valid ONNX file: {type(e).__name__}: {str(e)[:300]}")
            log.info(failures[-1])
            continue
        result = ExportResult(
            path=path,
            exporter=name,
            opset=_opset_of(onnx, path),
            input_shapes=shapes,
            dynamic_spatial=dynamic_spatial,
            export_seconds=seconds,
            rtol=rtol,
            fallback_reason="; ".join(failures) or None,
        )
        if not opts.check:
            return result
        try:
            providers, note = onnx_providers(device)
            say(f"parity check: {note}")
            session = onnx_session(path, providers=providers)
        except Exception as e:
            failures.append(f"onnxruntime cannot load the {name} export: {str(e).strip()[:300]}")
            log.info(failures[-1])
            continue
        try:
            in_name = session.get_inputs()[0].name
            for full, (x, ref) in refs.items():
                try:
                    got = session.run(None, {in_name: x.numpy()})
                except Exception as e:  # onnxruntime raises its own Fail/InvalidArgument types
                    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
                    raise OnnxParityError(
                        f"onnxruntime cannot run the {name} export at input {full}: {first}"
                        + (
                            " (the graph traced at one spatial size does not generalise; export each "
                            "size separately)"
                            if dynamic_spatial
                            else ""
                        )
                    ) from e
                p = _compare(ref, got, full)
                result.parity.append(p)
                if verbose:
                    print(f"onnx parity ({name}) {p}")
                if not p.rel <= rtol:
                    raise OnnxParityError(
                        f"onnxruntime differs from PyTorch at input {full}: max abs {p.max_abs:.3e}, "
                        f"relative to the output scale {p.rel:.3e} > {rtol:g} ({name} exporter)"
                    )
        except OnnxParityError as e:
            failures.append(str(e))
            log.info(failures[-1])
            parity_failed = True
            continue
        say("done")
        return result
    for stale in (path, Path(f"{path}.data")):
        stale.unlink(missing_ok=True)
    detail = "\n  ".join(failures)
    if parity_failed:
        raise OnnxParityError(f"ONNX export does not match PyTorch:\n  {detail}")
    raise RuntimeError(f"ONNX export failed:\n  {detail}")


def _opset_of(onnx: Any, path: Path) -> int:
    m = onnx.load(str(path), load_external_data=False)
    for imp in m.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return -1


# -- self-describing files -------------------------------------------------------------------------

_SPATIAL_NAMES = ("depth", "height", "width")


def _jsonable(value: Any) -> Any:
    """Model arguments as JSON: tuples become lists, anything else JSON lacks its ``repr``."""
    return json.loads(json.dumps(value, default=repr))


def _axis_names(ndim: int, dyn_axes: Sequence[int]) -> dict[int, str]:
    """Names of the dynamic input axes: ``batch`` first, the trailing ones depth/height/width."""
    names = {0: "batch"}
    for i in dyn_axes:
        if i == 0:
            continue
        back = ndim - i  # 1 = last axis
        names[i] = _SPATIAL_NAMES[-back] if back <= len(_SPATIAL_NAMES) else f"dim{i}"
    return names


def _input_axes(ndim: int, axis_order: str) -> list[str]:
    """What each input axis holds, outermost first, e.g. ``[batch, channel, x, y, z]``."""
    n_sp = ndim - 2
    if n_sp == 3:
        spatial = list(axis_order) if axis_order in ("xyz", "zyx") else list("xyz")
    else:
        spatial = ["height", "width"][-n_sp:] if n_sp <= 2 else [f"dim{i}" for i in range(n_sp)]
    return ["batch", "channel", *spatial] if n_sp >= 1 else ["batch"]


def _model_metadata(
    module: nn.Module, spec: ModelSpec | None, shapes: Sequence[tuple[int, ...]], dynamic_spatial: bool
) -> dict[str, str]:
    from zoo._version import __version__

    cfg = dict(getattr(module, "pretrained_cfg", {}) or {})
    weights = cfg.get("weights") or None
    prep = dict(cfg.get("preprocessing") or {})
    axis_order = str(prep.get("axis_order", "xyz")).lower()
    args = _jsonable(dict(cfg.get("model_args") or (spec.model_args if spec else {})))
    window = dict(cfg.get("sliding_window") or (spec.sliding_window if spec else None) or {})
    if not dynamic_spatial and len(shapes[0]) == 4:
        # A graph with fixed spatial axes takes exactly the traced window.
        window["roi_size"] = list(shapes[0][1:])
        window.setdefault("overlap", 0.5)
        if "img_size" in args:
            args["img_size"] = list(shapes[0][1:])
    num_classes = args.get("num_classes", getattr(module, "num_classes", None))
    meta = {
        "medzoo.version": __version__,
        "medzoo.model": str(cfg.get("name") or (spec.name if spec else type(module).__name__)),
        "medzoo.family": str(cfg.get("family") or (spec.family if spec else "")),
        "medzoo.weights_tag": str((weights or {}).get("tag") or cfg.get("tag") or ""),
        "medzoo.weights_sha256": str((weights or {}).get("sha256") or ""),
        "medzoo.weights": json.dumps(_jsonable(weights)),
        "medzoo.model_args": json.dumps(args),
        "medzoo.input_size": json.dumps(list(shapes[0]) if not dynamic_spatial else [shapes[0][0]]),
        "medzoo.input_axes": json.dumps(_input_axes(len(shapes[0]) + 1, axis_order)),
        "medzoo.axis_order": axis_order,
        "medzoo.preprocessing": json.dumps(_jsonable(prep)),
        "medzoo.labels": json.dumps(_jsonable(cfg.get("labels"))),
        "medzoo.num_classes": "" if num_classes is None else str(int(num_classes)),
        "medzoo.sliding_window": json.dumps(_jsonable(window) if window else None),
    }
    return meta


def _doc_string(meta: Mapping[str, str], spec: ModelSpec | None) -> str:
    what = (spec.description.strip().split("\n\n")[0] if spec and spec.description else "").strip()
    name, tag, digest = (meta[f"medzoo.{k}"] for k in ("model", "weights_tag", "weights_sha256"))
    weights = f"weights {name}.{tag} (sha256 {digest})" if tag else "random (untrained) weights"
    axes = ", ".join(json.loads(meta["medzoo.input_axes"]))
    return (
        f"medzoo {meta['medzoo.version']} export of {meta['medzoo.model']} ({meta['medzoo.family']}), "
        f"{weights}. Input float32 ({axes}) after the preprocessing in "
        "metadata_props['medzoo.preprocessing']; "
        f"output: logits per class (argmax = label). {what}"
    ).strip()


def _describe(
    onnx: Any,
    path: Path,
    module: nn.Module,
    spec: ModelSpec | None,
    shapes: Sequence[tuple[int, ...]],
    dyn_axes: Sequence[int],
    external: bool,
) -> None:
    """Write metadata_props, doc_string and the dynamic axis names into the exported file, then check it."""
    m = onnx.load(str(path), load_external_data=False)
    meta = _model_metadata(module, spec, shapes, len(dyn_axes) > 1)
    ops = {n.op_type for n in m.graph.node}
    opset = next((int(i.version) for i in m.opset_import if i.domain in ("", "ai.onnx")), 17)
    meta["medzoo.min_onnxruntime"] = min_onnxruntime(opset, sorted(ops))
    del m.metadata_props[:]
    for k in (*METADATA_KEYS, *OPTIONAL_METADATA_KEYS):
        entry = m.metadata_props.add()
        entry.key, entry.value = k, meta[k]
    m.doc_string = _doc_string(meta, spec)
    # The exporters name dynamic axes s0, s1 … (dynamo) or batch/dim2 … (TorchScript): rename
    # each input axis's symbol everywhere it appears, so outputs share the names.
    names = _axis_names(len(shapes[0]) + 1, dyn_axes)
    rename: dict[str, str] = {}
    for inp in m.graph.input[:1]:
        for i, d in enumerate(inp.type.tensor_type.shape.dim):
            if d.dim_param and i in names:
                rename[d.dim_param] = names[i]
    for vi in [*m.graph.input, *m.graph.output, *m.graph.value_info]:
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in rename:
                d.dim_param = rename[d.dim_param]
    onnx.save(m, str(path))  # external tensors keep their locations: only the graph file is rewritten
    onnx.checker.check_model(str(path))
