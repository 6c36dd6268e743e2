"""Segmentation of NIfTI volumes: read → preprocess → sliding window → back to the input grid.

The output is written on the input's own voxel grid, with the input's affine and header,
so it overlays the scan in any viewer. Everything that can be checked is checked before
any compute, and the output file appears only once the prediction succeeded.

Preprocessing comes from the weights' registry entry (``WeightSpec.preprocessing``); the
predictor understands these structured keys:

* ``"orientation"``: an axis code such as ``"RAS"``; any other text (``"native …"``) keeps
  the file's orientation. Absent: RAS.
* ``"spacing_mm"``: ``[x, y, z]`` in mm to resample to; text (``"native …"``) keeps the grid.
* ``"axis_order"``: ``"xyz"`` (nibabel's, the default) or ``"zyx"`` for models trained on
  SimpleITK arrays (axial axis first).
* ``"intensity_transform"``: one of

  - ``{"kind": "zscore", "nonzero": bool, "channel_wise": bool}``: MONAI
    ``NormalizeIntensity`` (defaults: all voxels, per channel);
  - ``{"kind": "zscore_nonzero"}``: shorthand for per channel over nonzero voxels;
  - ``{"kind": "clip_scale", "a_min": …, "a_max": …, "b_min": …, "b_max": …}``: clip to
    ``[a_min, a_max]`` and map linearly to ``[b_min, b_max]`` (MONAI ``ScaleIntensityRange``);
  - ``{"kind": "none"}``.

  Absent: ``zscore_nonzero``, with a log line saying that the registry gave none.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zoo.inference import sliding_window_predict

log = logging.getLogger("zoo")

__all__ = [
    "read_volume",
    "predict_nifti",
    "Prediction",
    "sample_volume_path",
    "intensity_transform",
    "canonical_intensity",
    "INTENSITY_KINDS",
]

INTENSITY_KINDS = ("zscore_nonzero", "zscore", "clip_scale", "none")
_DEFAULT_INTENSITY = {"kind": "zscore_nonzero"}
_AXCODE_LETTERS = (set("LR"), set("AP"), set("SI"))


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


def sample_volume_path() -> Path:
    """A real volume shipped by an installed package: nilearn's MNI152 T1 template (1 mm)."""
    try:
        import nilearn
    except ImportError as e:
        raise RuntimeError("the sample volume comes with nilearn: pip install nilearn") from e
    path = (
        Path(nilearn.__file__).parent
        / "datasets"
        / "data"
        / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    )
    if not path.exists():
        raise RuntimeError(f"nilearn is installed but its MNI152 template is missing ({path.name})")
    return path


def _load_nifti(path: Path) -> Any:
    import nibabel as nib

    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises ImageFileError, EOFError, gzip errors …
        raise ValueError(f"{path}: not a readable NIfTI file ({e})") from e
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ValueError(f"{path}: expected a NIfTI image, found {type(img).__name__}")
    return img


def _layout(path: Path, shape: tuple[int, ...], in_chans: int | None) -> tuple[int, ...]:
    """Check a NIfTI data shape and return it as ``(C, X, Y, Z)``, before reading any voxel."""
    if len(shape) == 5 and shape[3] == 1:  # NIfTI puts vector components in dim 5, time in dim 4
        shape = (*shape[:3], shape[4])
    if len(shape) == 2 or (len(shape) in (3, 4) and 1 in shape[:3]):
        raise ValueError(
            f"{path}: a 3D model needs a 3D volume, found a 2D image of shape {shape} "
            "(an axis of length 1 or fewer than 3 axes)"
        )
    if len(shape) not in (3, 4):
        raise ValueError(
            f"{path}: a 3D model needs a 3D volume (or 4D, channels last); found {len(shape)}D shape {shape}"
        )
    chans = shape[3] if len(shape) == 4 else 1
    if in_chans is not None and chans != in_chans:
        raise ValueError(f"{path}: the model expects {in_chans} channel(s), the file has {chans}")
    return (chans, *shape[:3])


def read_volume(path: str | Path, in_chans: int | None = None) -> tuple[Any, np.ndarray]:
    """Read a NIfTI file as ``(image, C × X × Y × Z float32 array)``.

    A 4D file is taken as channels last (one volume per channel). Non-finite voxels are set
    to 0 (and logged).

    Raises:
        ValueError: not a NIfTI file, not 3D/4D (a 2D slice included), or another channel
            count than ``in_chans``.
    """
    path = Path(path)
    img = _load_nifti(path)
    c, *spatial = _layout(path, tuple(img.shape), in_chans)
    data = (
        np.asarray(img.dataobj, dtype=np.float32).reshape(*spatial, c)
        if img.ndim != 3
        else (np.asarray(img.dataobj, dtype=np.float32)[..., None])
    )
    data = np.moveaxis(data, -1, 0)
    bad = ~np.isfinite(data)
    if bad.any():
        log.warning("%s: %d non-finite voxel(s) set to 0", path, int(bad.sum()))
        data[bad] = 0.0
    return img, np.ascontiguousarray(data)


def canonical_intensity(spec: Mapping[str, Any] | str) -> dict[str, Any]:
    """An ``intensity_transform`` entry in its one explicit form, checked.

    ``"zscore_nonzero"`` is shorthand for ``{"kind": "zscore", "nonzero": True, "channel_wise":
    True}``; a ``zscore`` without flags is over all voxels, channel-wise (MONAI's
    ``NormalizeIntensity``). The fine-tuning pipeline and the predictor both read this form.

    Returns:
        ``{"kind": "zscore", "nonzero", "channel_wise"}``, ``{"kind": "clip_scale", "a_min",
        "a_max", "b_min", "b_max", "clip"}`` or ``{"kind": "none"}``.

    Raises:
        ValueError: unknown kind, or missing/invalid ``clip_scale`` bounds.
    """
    cfg = {"kind": spec} if isinstance(spec, str) else dict(spec)
    kind = cfg.get("kind")
    if kind == "zscore_nonzero":
        return {"kind": "zscore", "nonzero": True, "channel_wise": bool(cfg.get("channel_wise", True))}
    if kind == "zscore":
        nonzero, channel_wise = bool(cfg.get("nonzero", False)), bool(cfg.get("channel_wise", True))
        return {"kind": "zscore", "nonzero": nonzero, "channel_wise": channel_wise}
    if kind == "clip_scale":
        missing = [k for k in ("a_min", "a_max", "b_min", "b_max") if k not in cfg]
        if missing:
            raise ValueError(f"intensity_transform clip_scale needs {', '.join(missing)}; got {cfg}")
        out = {k: float(cfg[k]) for k in ("a_min", "a_max", "b_min", "b_max")}
        if not out["a_max"] > out["a_min"]:
            raise ValueError(f"intensity_transform clip_scale needs a_max > a_min, got {cfg}")
        return {"kind": "clip_scale", **out, "clip": bool(cfg.get("clip", True))}
    if kind == "none":
        return {"kind": "none"}
    raise ValueError(f"unknown intensity_transform kind {kind!r}; known: {', '.join(INTENSITY_KINDS)}")


def intensity_transform(spec: Mapping[str, Any] | str | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The intensity normalisation named by a registry ``intensity_transform`` entry.

    Args:
        spec: ``{"kind": …, …}`` (see the module docstring), a bare kind name, or None
            (``zscore_nonzero``).

    Returns:
        A function mapping a ``C × *spatial`` tensor to its normalised copy.

    Raises:
        ValueError: unknown kind or missing/invalid ``clip_scale`` bounds.
    """
    from monai.transforms import NormalizeIntensity, ScaleIntensityRange

    cfg = canonical_intensity(spec if spec is not None else _DEFAULT_INTENSITY)
    if cfg["kind"] == "zscore":
        t = NormalizeIntensity(nonzero=cfg["nonzero"], channel_wise=cfg["channel_wise"])
    elif cfg["kind"] == "clip_scale":
        t = ScaleIntensityRange(
            a_min=cfg["a_min"], a_max=cfg["a_max"], b_min=cfg["b_min"], b_max=cfg["b_max"], clip=cfg["clip"]
        )
    else:
        return lambda x: x

    def apply(x: torch.Tensor) -> torch.Tensor:
        out = t(x.clone())  # MONAI's channel-wise NormalizeIntensity writes into its input
        return torch.as_tensor(out.as_tensor() if hasattr(out, "as_tensor") else out, dtype=torch.float32)

    return apply


def _axcodes(value: Any) -> str | None:
    if value is None:
        return "RAS"
    code = str(value).strip().upper()
    if len(code) == 3 and all(sum(ch in group for ch in code) == 1 for group in _AXCODE_LETTERS):
        return code
    return None  # free text such as "native (not stated)": keep the file's orientation


def _roi_size(cfg: Mapping[str, Any]) -> tuple[int, ...]:
    """The window a model takes: its own ``img_size`` when built for one size, else the registered one."""
    img = cfg.get("model_args", {}).get("img_size")
    if img is not None:
        return (int(img),) * 3 if isinstance(img, int) else tuple(int(s) for s in img)
    roi = cfg.get("sliding_window", {}).get("roi_size")
    if roi:
        return tuple(int(s) for s in roi)
    size = cfg.get("input_size")
    return tuple(int(s) for s in size[1:]) if size else ()


def _check_model(
    cfg: Mapping[str, Any], roi_size: Sequence[int] | None
) -> tuple[int | None, tuple[int, ...]]:
    name = cfg.get("name", "this model")
    size = cfg.get("input_size")
    if size is not None and len(size) != 4:
        raise ValueError(
            f"{name} takes inputs of shape {tuple(size)} (without batch), not (C, X, Y, Z) volumes; "
            "predict segments 3D volumes with 3D segmentation models"
        )
    if not cfg.get("sliding_window") and cfg.get("name"):
        raise ValueError(
            f"{name} is not a segmentation model (it registers no sliding-window ROI and its output "
            "is not a label map); predict needs a 3D segmentation model"
        )
    roi = tuple(int(s) for s in roi_size) if roi_size is not None else _roi_size(cfg)
    if len(roi) != 3:
        raise ValueError(f"{name}: no 3D sliding-window ROI is known (got {roi}); it is not a 3D model")
    return cfg.get("model_args", {}).get("in_chans"), roi


def predict_nifti(
    model: nn.Module,
    image_path: str | Path,
    out_path: str | Path,
    spacing_mm: tuple[float, ...] | None = None,
    overlap: float | None = None,
    sw_batch_size: int = 1,
    progress: bool = True,
    intensity: Mapping[str, Any] | str | None = None,
    roi_size: Sequence[int] | None = None,
) -> Prediction:
    """Segment one NIfTI volume with a zoo model and write the label map.

    The volume is reoriented (the weights' ``orientation``, default RAS) and, when
    ``spacing_mm`` is given (default: the weights' registered spacing), resampled; the
    intensity transform of the weights (or ``intensity``) is applied; the model runs as a
    sliding window; the logits are mapped back to the input grid before the argmax.

    Args:
        model: a model from :func:`zoo.create` (its ``pretrained_cfg`` carries the
            preprocessing of its weights).
        image_path: input NIfTI (3D, or 4D with channels last).
        out_path: where to write the label map (``.nii`` or ``.nii.gz``; uint8 unless more
            than 255 classes; the input's affine and header).
        spacing_mm: target spacing; None uses the weights' preprocessing, or keeps the grid.
        overlap: sliding-window overlap (default: the model's registered value).
        sw_batch_size: windows per forward.
        progress: progress bar.
        intensity: overrides the registered ``intensity_transform`` (a dict or kind name).
        roi_size: window size (default: the model's ``img_size``, else its registered ROI).

    Returns:
        A :class:`Prediction` summary.

    Raises:
        ValueError: unreadable or non-NIfTI input, a 2D image, a channel count the model
            does not take, a model that is not a 3D segmentation model, a bad output name.
            Nothing is written then.
    """
    import nibabel as nib
    from monai.data import MetaTensor
    from monai.transforms import Compose, Orientation, Spacing

    out_path = Path(out_path)
    if not (out_path.name.endswith(".nii") or out_path.name.endswith(".nii.gz")):
        raise ValueError(f"{out_path}: the output must be a .nii or .nii.gz file")
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    in_chans, roi = _check_model(cfg, roi_size)
    prep = cfg.get("preprocessing", {}) or {}
    intensity_cfg = intensity if intensity is not None else prep.get("intensity_transform")
    if intensity_cfg is None:
        log.info(
            "no structured intensity_transform registered for these weights; using z-score over "
            "nonzero voxels"
        )
        intensity_cfg = _DEFAULT_INTENSITY
    normalise = intensity_transform(intensity_cfg)
    axis_order = str(prep.get("axis_order", "xyz")).lower()
    if axis_order not in ("xyz", "zyx"):
        raise ValueError(f"axis_order must be 'xyz' or 'zyx', got {axis_order!r}")
    axcodes = _axcodes(prep.get("orientation"))

    img, data = read_volume(image_path, in_chans)
    if spacing_mm is None and isinstance(prep.get("spacing_mm"), list | tuple):
        spacing_mm = tuple(float(s) for s in prep["spacing_mm"])

    steps: list[Any] = []
    if axcodes is not None:
        steps.append(Orientation(axcodes=axcodes, labels=(("L", "R"), ("P", "A"), ("I", "S"))))
    if spacing_mm is not None:
        if len(spacing_mm) != 3 or min(spacing_mm) <= 0:
            raise ValueError(f"spacing_mm must be 3 positive numbers, got {spacing_mm}")
        steps.append(Spacing(pixdim=spacing_mm, mode="bilinear"))
    xform = Compose(steps)
    start = time.perf_counter()
    x = MetaTensor(torch.from_numpy(data), affine=torch.as_tensor(img.affine, dtype=torch.float64))
    x = xform(x) if steps else x
    grid = tuple(x.shape[1:])
    xin = normalise(x.as_tensor())
    if axis_order == "zyx":
        xin = xin.permute(0, 3, 2, 1)
    xin = xin.contiguous()[None]

    model.eval()
    logits = sliding_window_predict(
        model, xin, roi_size=roi, overlap=overlap, sw_batch_size=sw_batch_size, progress=progress
    )
    if isinstance(logits, list | tuple):
        logits = logits[0]
    logits = logits[0].float()
    if axis_order == "zyx":
        logits = logits.permute(0, 3, 2, 1).contiguous()
    if steps:
        pred = MetaTensor(logits, meta=x.meta, applied_operations=list(x.applied_operations))
        logits = xform.inverse(pred).as_tensor()
    num_classes = logits.shape[0]
    labels = logits.argmax(0).numpy().astype(np.uint8 if num_classes <= 255 else np.uint16)
    seconds = time.perf_counter() - start
    if labels.shape != data.shape[1:]:
        raise RuntimeError(
            f"internal: label map {labels.shape} does not match the input grid {data.shape[1:]}"
        )

    out_path.parent.mkdir(parents=True, exist_ok=True)
    header = img.header.copy()
    header.set_data_dtype(labels.dtype)
    out_img = (
        nib.Nifti1Image(labels, img.affine, header)
        if isinstance(img, nib.Nifti1Image)
        else (nib.Nifti2Image(labels, img.affine, header))
    )
    suffix = ".nii.gz" if out_path.name.endswith(".gz") else ".nii"
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, suffix=suffix)
    os.close(fd)
    try:
        nib.save(out_img, tmp)
        os.replace(tmp, out_path)
    finally:
        Path(tmp).unlink(missing_ok=True)

    ov = overlap if overlap is not None else cfg.get("sliding_window", {}).get("overlap", 0.5)
    model_grid = grid[::-1] if axis_order == "zyx" else grid
    steps_per_axis = []
    for size, r in zip(model_grid, roi, strict=False):
        stride = max(int(r * (1 - ov)), 1)
        steps_per_axis.append(1 if size <= r else int(np.ceil((size - r) / stride)) + 1)
    values, counts = np.unique(labels, return_counts=True)
    return Prediction(
        output=out_path,
        input_shape=tuple(data.shape),
        spacing_mm=tuple(float(z) for z in img.header.get_zooms()[:3]),
        model_grid_shape=tuple(model_grid),
        num_windows=int(np.prod(steps_per_axis)),
        seconds=seconds,
        label_voxels={int(v): int(c) for v, c in zip(values, counts, strict=True)},
        roi_size=roi,
        intensity=dict(intensity_cfg) if isinstance(intensity_cfg, Mapping) else {"kind": intensity_cfg},
        orientation=axcodes,
    )
