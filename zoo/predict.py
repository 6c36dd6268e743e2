"""Segmentation of one NIfTI volume: read → preprocess → sliding window → back to the input grid.

The output is written on the input's own voxel grid, with the input's affine and header, so it
overlays the scan in any viewer. Everything that can be checked is checked before any compute
(:mod:`zoo.predict_checks`; from the CLI, before weights are downloaded or a model is built): the
input is readable and of a shape the model takes, the output is not the input and can be written,
the window settings are in range, and the memory and window count the run needs fit a budget. The
output file appears only once the prediction succeeded (written to a temporary name, then renamed).

Preprocessing is the weights' contract (:class:`zoo.transforms.InputContract`): the same MONAI
transforms :func:`zoo.transforms.for_model` returns.

What the caller asks for travels as one :class:`PredictSettings`. A folder, a datalist or a glob
of scans is :func:`zoo.study.predict_study`'s, which runs the same steps per case.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zoo._files import write_atomically
from zoo.inference import resolve_device, resolve_precision, sliding_window_predict
from zoo.predict_checks import (
    Settings,
    _load_nifti,
    check_budget,
    check_output,
    check_weights_trained,
    estimate,
    estimate_windows,
    inspect_input,
    resolve_settings,
)
from zoo.transforms import INTENSITY_KINDS, InputContract, canonical_intensity

log = logging.getLogger("zoo")

__all__ = [
    "argmax_labels",
    "read_volume",
    "predict_nifti",
    "Prediction",
    "PredictSettings",
    "Placement",
    "place",
    "preprocess",
    "sample_volume_path",
    "intensity_transform",
    "canonical_intensity",
    "INTENSITY_KINDS",
]

_SLICE_CHUNK = 32  # 2D models: slices per sliding-window call


@dataclass
class Prediction:
    """What ``predict_nifti`` produced."""

    output: Path
    input_shape: tuple[int, ...]
    spacing_mm: tuple[float, ...]
    model_grid_shape: tuple[int, ...]
    num_windows: int
    seconds: float
    label_voxels: dict[int, int] = field(default_factory=dict)
    roi_size: tuple[int, ...] = ()
    intensity: dict[str, Any] = field(default_factory=dict)
    orientation: str | None = None
    nonfinite_voxels: int = 0
    foreground_share: float | None = None
    preview: Path | None = None


@dataclass(frozen=True)
class PredictSettings:
    """What the caller asks of a prediction; None takes the model's own value.

    :func:`zoo.predict_checks.resolve_settings` checks the window fields against the model's
    config into a :class:`zoo.predict_checks.Settings`; the others are checked as the case runs.

    Attributes:
        spacing_mm: target spacing; None uses the contract's.
        overlap: sliding-window overlap in [0, 1) (default: the model's registered value).
        sw_batch_size: windows per forward (>= 1; default
            :data:`zoo.predict_checks.AUTO_SW_BATCH`).
        intensity: overrides the contract's intensity transform (any form ``parse_intensity`` reads).
        roi_size: window size (default: the model's ``img_size``, else its registered ROI).
        volume: the volume of a 4D series to segment.
        slice_axis: 2D models: axis (0, 1, 2) of the model grid to cut slices along.
        allow_untrained_head: predict even with encoder-only weights or a new head.
        max_memory_gb / max_windows: the resource budget (see
            :func:`zoo.predict_checks.check_budget`).
        preview: also write a PNG of three mid-slices with the labels (``zoo.plots``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (:func:`zoo.inference.resolve_device`;
            refused before the input is read when not there); None: where the model is.
        precision: ``fp32`` (None), ``bf16`` or ``fp16``: the windows under autocast.
        stitch_on: where the stitched logits live (``cpu`` or the device); None: the device when
            they fit in its free memory (:func:`zoo.inference.stitch_device`), else the CPU.
    """

    spacing_mm: tuple[float, ...] | None = None
    overlap: float | None = None
    sw_batch_size: int | None = None
    intensity: Mapping[str, Any] | str | None = None
    roi_size: Sequence[int] | None = None
    volume: int | None = None
    slice_axis: int | None = None
    allow_untrained_head: bool = False
    max_memory_gb: float | None = None
    max_windows: int | None = None
    preview: bool = False
    device: str | None = None
    precision: str | None = None
    stitch_on: str | None = None

    def window(self) -> dict[str, Any]:
        """The arguments of :func:`zoo.predict_checks.resolve_settings` among these."""
        return {
            "roi_size": self.roi_size,
            "overlap": self.overlap,
            "sw_batch_size": self.sw_batch_size,
            "spacing_mm": self.spacing_mm,
            "intensity": self.intensity,
            "slice_axis": self.slice_axis,
        }


def sample_volume_path() -> Path:
    """A real volume shipped by an installed package: nilearn's MNI152 T1 template (1 mm)."""
    from zoo._optional import require

    nilearn = require("nilearn", extra="demo", feature="the demo volume")
    path = (
        Path(nilearn.__file__).parent
        / "datasets"
        / "data"
        / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    )
    if not path.exists():
        raise RuntimeError(f"nilearn is installed but its MNI152 template is missing ({path.name})")
    return path


def intensity_transform(spec: Mapping[str, Any] | str | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The intensity normalisation of a contract's ``intensity_transform``, as a tensor function.

    Args:
        spec: any form :func:`zoo.transforms.parse_intensity` reads, or None (z-score over
            nonzero voxels).

    Returns:
        A function mapping a ``C × *spatial`` tensor to its normalised copy.

    Raises:
        ValueError: unknown kind or missing/invalid ``clip_scale`` bounds.
    """
    contract = InputContract(orientation=None, intensity=spec if spec is not None else "zscore_nonzero")
    xform = contract.compose(("image",), load=False)

    def apply(x: torch.Tensor) -> torch.Tensor:
        out = xform({"image": torch.as_tensor(x).clone()})["image"]
        return torch.as_tensor(out.as_tensor() if hasattr(out, "as_tensor") else out, dtype=torch.float32)

    return apply


# ------------------------------------------------------------------------------------------------
# reading and preprocessing


def read_volume(
    path: str | Path, in_chans: int | None = None, volume: int | None = None
) -> tuple[Any, np.ndarray]:
    """Read a NIfTI file as ``(image, C × X × Y × Z float32 array)``.

    A 4D file is taken as channels last (one volume per channel), or as a series whose volume
    ``volume`` is taken. Non-finite voxels are set to 0 (and logged).

    Raises:
        ValueError: see :func:`inspect_input`; also a volume whose voxels are all non-finite or
            all equal (nothing to segment).
    """
    img, data, _ = _read(path, in_chans, volume)
    return img, data


def _read(path: Any, in_chans: int | None, volume: int | None) -> tuple[Any, np.ndarray, int]:
    """:func:`read_volume`, also returning the count of non-finite voxels it replaced.

    A 4D file is taken as channels last (one volume per channel), or as a series whose volume
    ``volume`` is taken. Non-finite voxels are set to 0 and counted (and logged).

    Raises:
        ValueError: see :func:`inspect_input`; also a volume whose voxels are all non-finite or
            all equal (nothing to segment).
    """
    path = [Path(p) for p in path] if isinstance(path, list | tuple) else Path(path)
    info = inspect_input(path, in_chans, volume)
    img = _load_nifti(path)
    c, *spatial = info.shape
    try:
        if img.ndim == 3:
            data = np.asarray(img.dataobj, dtype=np.float32)[None]
        else:
            raw = np.asarray(img.dataobj if volume is None else img.dataobj[..., volume], dtype=np.float32)
            data = np.moveaxis(raw.reshape(*spatial, c), -1, 0)
    except (OSError, EOFError, ValueError, TypeError) as e:  # truncated or damaged voxel data
        raise ValueError(
            f"{path}: the voxel data cannot be read ({type(e).__name__}: {e})".replace("\n", " ")
        ) from e
    data = np.ascontiguousarray(data)
    bad = ~np.isfinite(data)
    nonfinite = int(bad.sum())
    if nonfinite == data.size:
        raise ValueError(f"{path}: expected finite voxels, found all {data.size} voxels NaN or infinite")
    if nonfinite:
        log.warning("%s: %d non-finite voxel(s) (NaN/inf) set to 0", path, nonfinite)
        data[bad] = 0.0
    if float(data.max()) == float(data.min()):
        raise ValueError(
            f"{path}: expected an image, found a constant volume (every voxel {float(data.min()):g})"
        )
    return img, data, nonfinite


def preprocess(
    path: str | Path, s: Settings, volume: int | None = None, keep_original: bool = True
) -> dict[str, Any]:
    """Read one case and apply the weights' contract, as ``predict`` does.

    Returns:
        ``{"image": MetaTensor (C, *model grid), "affine", "header", "nifti2", "input_shape",
        "zooms", "nonfinite", "foreground_share", "original" (C × X × Y × Z array)}``.
    """
    import nibabel as nib
    from monai.data import MetaTensor

    from zoo.transforms import ZScored

    img, data, nonfinite = _read(path, s.in_chans, volume)
    xform = s.contract.compose(("image",), load=False)
    # No copy: every contract transform returns a new tensor (ZScored clones before MONAI's in-place
    # normalisation), so ``data`` stays the scan as read.
    x = MetaTensor(torch.from_numpy(data), affine=torch.as_tensor(img.affine, dtype=torch.float64))
    out = xform({"image": x})["image"]
    share = next((t.last_foreground_share for t in xform.transforms if isinstance(t, ZScored)), None)
    return {
        "image": out,
        "affine": np.asarray(img.affine),
        "header": img.header.copy(),
        "nifti2": isinstance(img, nib.Nifti2Image),
        "input_shape": tuple(data.shape),
        "zooms": tuple(float(z) for z in img.header.get_zooms()[:3]),
        "nonfinite": nonfinite,
        "foreground_share": share,
        "original": data if keep_original else None,
    }


# ------------------------------------------------------------------------------------------------
# the model, the inverse, the output


@dataclass(frozen=True)
class Placement:
    """Where a prediction computes: the windows' device, the autocast precision, the stitching."""

    device: torch.device = torch.device("cpu")
    precision: str | None = None
    stitch_on: str | None = None


def place(model: nn.Module, asked: PredictSettings) -> Placement:
    """Check ``asked``'s device and precision (one line each) and move ``model`` there.

    An exported file (:class:`zoo.onnx_runtime.OnnxModel`) picks its onnxruntime provider instead.
    """
    if asked.device is None:
        param = next(model.parameters(), None)
        dev = param.device if param is not None else torch.device("cpu")
    else:
        dev = resolve_device(asked.device)
    resolve_precision(asked.precision, dev)
    if asked.stitch_on is not None and str(asked.stitch_on) not in ("cpu", "device"):
        raise ValueError(f"stitch_on must be 'cpu' or 'device', got {asked.stitch_on!r}")
    if hasattr(model, "use_device"):
        model.use_device(dev)
    elif asked.device is not None:
        model.to(dev)
    stitch = None if asked.stitch_on is None else ("cpu" if asked.stitch_on == "cpu" else str(dev))
    return Placement(dev, asked.precision, stitch)


def _infer(
    model: nn.Module, x: torch.Tensor, s: Settings, progress: bool, where: Placement | None = None
) -> torch.Tensor:
    """``(C, *grid)`` → ``(K, *grid)`` logits, by 3D windows or by 2D slices."""
    where = where or place(model, PredictSettings())
    # On a GPU the volume stays pinned on the host and MONAI copies each window over asynchronously.
    x = x.pin_memory() if where.device.type == "cuda" else x.to(where.device)
    run = dict(precision=where.precision, stitch_on=where.stitch_on)
    if s.slice_axis is None:
        out = sliding_window_predict(
            model,
            x[None],
            roi_size=s.roi,
            overlap=s.overlap,
            sw_batch_size=s.sw_batch_size,
            progress=progress,
            **run,
        )
        out = out[0] if isinstance(out, list | tuple) else out
        return out[0].float().cpu()
    slices = x.movedim(s.slice_axis + 1, 0)  # (S, C, H, W): slices as the batch
    parts = []
    for i in range(0, slices.shape[0], _SLICE_CHUNK):
        o = sliding_window_predict(
            model,
            slices[i : i + _SLICE_CHUNK].contiguous(),
            roi_size=s.roi,
            overlap=s.overlap,
            sw_batch_size=s.sw_batch_size,
            **run,
        )
        parts.append((o[0] if isinstance(o, list | tuple) else o).float().cpu())
    return torch.cat(parts).movedim(0, s.slice_axis + 1)


def _to_input_grid(logits: torch.Tensor, case: Mapping[str, Any], s: Settings) -> np.ndarray:
    from monai.data import MetaTensor

    x = case["image"]
    xform = s.contract.compose(("image",), load=False)
    from monai.utils import TraceKeys

    # The transforms were applied by another Compose (often in a DataLoader worker): MONAI matches
    # an inverse to the object that applied it by id(), which TraceKeys.NONE waives.
    ops = [_unbind(op, TraceKeys) for op in x.applied_operations]
    pred = MetaTensor(logits, meta=dict(x.meta), applied_operations=ops)
    back = xform.inverse({"image": pred})["image"]
    back = back.as_tensor() if hasattr(back, "as_tensor") else back
    labels = argmax_labels(back)
    if labels.shape != tuple(case["input_shape"][1:]):
        raise RuntimeError(
            f"internal: label map {labels.shape} does not match the input grid {case['input_shape'][1:]}"
        )
    return labels


def argmax_labels(logits: torch.Tensor) -> np.ndarray:
    """``(K, *grid)`` logits → the label map (uint8, uint16 past 255 classes), as ``argmax(0)``.

    Equal to ``logits.argmax(0)`` voxel for voxel, ties to the lowest class included, in about a
    seventh of its time (4 classes over 197×233×189, 2 threads): ``argmax`` over the outer axis
    strides across the whole volume per voxel, where a running maximum reads each class plane
    once, in memory order.
    """
    k = logits.shape[0]
    np_dtype = np.uint8 if k <= 255 else np.uint16
    best = logits[0].clone()
    labels = torch.zeros(logits.shape[1:], dtype=torch.uint8 if k <= 255 else torch.int32)
    for c in range(1, k):
        above = logits[c] > best  # strictly: a tie keeps the lower class, as argmax does
        labels.masked_fill_(above, c)
        torch.maximum(best, logits[c], out=best)
    # torch.maximum carries a NaN into ``best``: then argmax's own rule for NaN decides.
    if k == 1 or bool(torch.isnan(best.sum())):
        return logits.argmax(0).numpy().astype(np_dtype)
    return labels.numpy().astype(np_dtype, copy=False)


def _unbind(op: Any, keys: Any) -> Any:
    if isinstance(op, dict):
        return {k: (keys.NONE if k == keys.ID else _unbind(v, keys)) for k, v in op.items()}
    if isinstance(op, list):
        return [_unbind(v, keys) for v in op]
    return op


def _write_labels(labels: np.ndarray, case: Mapping[str, Any], out: Path) -> None:
    import nibabel as nib

    if out.name.lower().endswith((".nrrd", ".mha")):  # the scan's own format, its geometry
        from zoo.imageio import write_labels_itk

        suffix = ".nrrd" if out.name.lower().endswith(".nrrd") else ".mha"
        write_atomically(out, lambda p: write_labels_itk(labels, case["affine"], str(p)), suffix)
        return
    header = case["header"].copy()
    header.set_data_dtype(labels.dtype)
    cls = nib.Nifti2Image if case["nifti2"] else nib.Nifti1Image
    img = cls(labels, case["affine"], header)
    write_atomically(out, lambda p: nib.save(img, str(p)), ".nii.gz" if out.name.endswith(".gz") else ".nii")


def _preview_path(out: Path) -> Path:
    stem = out.name
    for suffix in (".gz", ".nii", ".nrrd", ".mha"):
        stem = stem.removesuffix(suffix)
    return out.with_name(stem + ".png")


def _run_case(
    model: nn.Module,
    case: Mapping[str, Any],
    s: Settings,
    out: Path,
    progress: bool,
    preview: bool,
    where: Placement | None = None,
) -> Prediction:
    start = time.perf_counter()
    x = case["image"]
    logits = _infer(model, x.as_tensor() if hasattr(x, "as_tensor") else x, s, progress, where)
    bad = int((~torch.isfinite(logits)).sum())
    if bad:  # argmax would turn NaN into a label without a word: refused, nothing written
        raise ValueError(
            f"{case.get('path', 'the input')}: the model returned {bad} NaN/infinite logit(s) of "
            f"{logits.numel()} for finite input; no label map written (weights diverged, or a "
            "precision that overflows?)"
        )
    labels = _to_input_grid(logits, case, s)
    seconds = time.perf_counter() - start
    _write_labels(labels, case, out)
    png = None
    if preview:
        from zoo.plots import preview_png

        png = _preview_path(out)
        names = dict(s.labels) or {
            k: ("background" if k == 0 else f"class {k}") for k in range(s.num_classes)
        }
        preview_png(case["original"][0], labels, case["affine"], names, png, title=out.name)
    counts = np.bincount(labels.ravel())  # O(n), where np.unique sorts ten million voxels
    values = np.flatnonzero(counts)
    counts = counts[values]
    return Prediction(
        output=out,
        input_shape=tuple(case["input_shape"]),
        spacing_mm=tuple(case["zooms"]),
        model_grid_shape=tuple(x.shape[1:]),
        num_windows=estimate_windows(tuple(x.shape[1:]), s),
        seconds=seconds,
        label_voxels={int(v): int(c) for v, c in zip(values, counts, strict=True)},
        roi_size=s.roi,
        intensity=dict(s.contract.intensity),
        orientation=s.contract.orientation,
        nonfinite_voxels=int(case["nonfinite"]),
        foreground_share=case["foreground_share"],
        preview=png,
    )


def _model_settings(model: nn.Module, **kw: Any) -> Settings:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return resolve_settings(cfg, **kw)


def _checked_settings(model: Any, asked: PredictSettings) -> Settings:
    """The run's settings from the model and the caller, after the weights and preview checks."""
    s = _model_settings(model, **asked.window())
    record = (getattr(model, "pretrained_cfg", {}) or {}).get("weights")
    check_weights_trained(record, (record or {}).get("id") or s.name, asked.allow_untrained_head)
    if asked.preview:
        from zoo.plots import require_matplotlib

        require_matplotlib()
    return s


def predict_nifti(
    model: nn.Module,
    image_path: str | Path,
    out_path: str | Path,
    settings: PredictSettings | None = None,
    *,
    progress: bool = True,
) -> Prediction:
    """Segment one NIfTI volume with a zoo model and write the label map.

    The volume goes through the weights' preprocessing contract (:func:`zoo.transforms.for_model`:
    orientation, spacing, intensity, axis order), the model runs as a sliding window (2D
    models: slice by slice along ``slice_axis``), the logits are mapped back to the input grid
    before the argmax.

    Args:
        model: a model from :func:`zoo.create` (its ``pretrained_cfg`` carries the contract and
            what its weights cover).
        image_path: input NIfTI (3D, or 4D with channels last, or a series with ``volume``).
        out_path: where to write the label map (``.nii`` or ``.nii.gz``; uint8 unless more than
            255 classes; the input's affine and header). Never the input itself.
        settings: spacing, window, intensity, volume, budget, preview (:class:`PredictSettings`);
            None takes the model's own values.
        progress: progress bar.

    Returns:
        A :class:`Prediction` summary.

    Raises:
        ValueError: any refused input, output or setting (one line, expected and found).
            Nothing is written then.
    """
    if settings is not None and not isinstance(settings, PredictSettings):
        raise TypeError(f"settings must be a PredictSettings, got {type(settings).__name__}")
    asked = settings if settings is not None else PredictSettings()
    if asked.device is not None:  # a device that is not there: refused before the input is read
        resolve_precision(asked.precision, resolve_device(asked.device))
    s = _checked_settings(model, asked)
    out = check_output(image_path, out_path)
    info = inspect_input(image_path, s.in_chans, asked.volume)
    check_budget(estimate(info, s), info, s, asked.max_memory_gb, asked.max_windows)
    where = place(model, asked)
    case = preprocess(image_path, s, asked.volume, keep_original=asked.preview)
    model.eval()
    return _run_case(model, case, s, out, progress, asked.preview, where)
