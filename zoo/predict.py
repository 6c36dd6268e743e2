"""Segmentation of NIfTI volumes: read → preprocess → sliding window → back to the input grid.

The output is written on the input's own voxel grid, with the input's affine and header,
so it overlays the scan in any viewer.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zoo.inference import sliding_window_predict

__all__ = ["read_volume", "predict_nifti", "Prediction", "sample_volume_path"]


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


def sample_volume_path() -> Path:
    """A real volume shipped by an installed package: nilearn's MNI152 T1 template (1 mm)."""
    try:
        import nilearn
    except ImportError as e:
        raise RuntimeError("the sample volume comes with nilearn: pip install nilearn") from e
    path = Path(nilearn.__file__).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    if not path.exists():
        raise RuntimeError(f"nilearn is installed but its MNI152 template is missing ({path.name})")
    return path


def read_volume(path: str | Path, in_chans: int | None = None) -> tuple[Any, np.ndarray]:
    """Read a NIfTI file as ``(image, C × X × Y × Z float32 array)``.

    A 4D file is taken as channels last (one volume per channel).

    Raises:
        ValueError: not a NIfTI file, not 3D/4D, or another channel count than ``in_chans``.
    """
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises ImageFileError, FileNotFoundError …
        raise ValueError(f"{path}: not a readable NIfTI file ({e})") from e
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ValueError(f"{path}: expected a NIfTI image, found {type(img).__name__}")
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 3:
        data = data[None]
    elif data.ndim == 4:
        data = np.moveaxis(data, -1, 0)
    else:
        raise ValueError(
            f"{path}: a 3D model needs a 3D volume (or 4D, channels last); found {data.ndim}D shape {data.shape}"
        )
    if in_chans is not None and data.shape[0] != in_chans:
        raise ValueError(f"{path}: the model expects {in_chans} channel(s), the file has {data.shape[0]}")
    return img, np.ascontiguousarray(data)


def _zscore_nonzero(x: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    for c in range(x.shape[0]):
        mask = x[c] != 0
        if mask.any():
            v = x[c][mask]
            out[c][mask] = (v - v.mean()) / v.std().clamp_min(1e-8)
    return out


def predict_nifti(
    model: nn.Module,
    image_path: str | Path,
    out_path: str | Path,
    spacing_mm: tuple[float, ...] | None = None,
    overlap: float | None = None,
    sw_batch_size: int = 1,
    progress: bool = True,
) -> Prediction:
    """Segment one NIfTI volume with a zoo model and write the label map.

    The volume is reoriented to RAS and, when ``spacing_mm`` is given (default: the
    weights' registered spacing), resampled; intensities are z-scored over nonzero
    voxels per channel; the logits are mapped back to the input grid before argmax.

    Args:
        model: a model from :func:`zoo.create`.
        image_path: input NIfTI (3D, or 4D with channels last).
        out_path: where to write the label map (uint8 NIfTI, the input's affine/header).
        spacing_mm: target spacing; None uses the weights' preprocessing, or keeps the grid.
        overlap: sliding-window overlap (default: the model's registered value).
        sw_batch_size: windows per forward.
        progress: progress bar.

    Returns:
        A :class:`Prediction` summary.
    """
    import nibabel as nib
    from monai.data import MetaTensor
    from monai.transforms import Compose, Orientation, Spacing

    cfg = getattr(model, "pretrained_cfg", {})
    in_chans = cfg.get("model_args", {}).get("in_chans")
    img, data = read_volume(image_path, in_chans)
    prep = cfg.get("preprocessing", {})
    if spacing_mm is None and isinstance(prep.get("spacing_mm"), list | tuple):
        spacing_mm = tuple(float(s) for s in prep["spacing_mm"])

    steps: list[Any] = [Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))]
    if spacing_mm is not None:
        steps.append(Spacing(pixdim=spacing_mm, mode="bilinear"))
    xform = Compose(steps)
    start = time.perf_counter()
    x = MetaTensor(torch.from_numpy(data), affine=torch.as_tensor(img.affine, dtype=torch.float64))
    x = xform(x)
    grid = tuple(x.shape[1:])
    xin = _zscore_nonzero(x.as_tensor())[None]

    roi = cfg.get("sliding_window", {}).get("roi_size")
    model.eval()
    logits = sliding_window_predict(
        model, xin, overlap=overlap, sw_batch_size=sw_batch_size, progress=progress
    )
    if isinstance(logits, list | tuple):
        logits = logits[0]
    pred = MetaTensor(logits[0].float(), meta=x.meta, applied_operations=list(x.applied_operations))
    back = xform.inverse(pred).as_tensor()
    labels = back.argmax(0).to(torch.uint8).numpy()
    seconds = time.perf_counter() - start
    if labels.shape != data.shape[1:]:
        raise RuntimeError(f"internal: label map {labels.shape} does not match the input grid {data.shape[1:]}")

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    header = img.header.copy()
    header.set_data_dtype(np.uint8)
    out_img = nib.Nifti1Image(labels, img.affine, header)
    suffix = ".nii.gz" if out_path.name.endswith(".gz") else ".nii"
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, suffix=suffix)
    os.close(fd)
    try:
        nib.save(out_img, tmp)
        os.replace(tmp, out_path)
    finally:
        Path(tmp).unlink(missing_ok=True)

    steps_per_axis = []
    ov = overlap if overlap is not None else cfg.get("sliding_window", {}).get("overlap", 0.5)
    for size, r in zip(grid, roi or grid, strict=False):
        stride = max(int(r * (1 - ov)), 1)
        steps_per_axis.append(1 if size <= r else int(np.ceil((size - r) / stride)) + 1)
    values, counts = np.unique(labels, return_counts=True)
    return Prediction(
        output=out_path,
        input_shape=tuple(data.shape),
        spacing_mm=tuple(float(z) for z in img.header.get_zooms()[:3]),
        model_grid_shape=grid,
        num_windows=int(np.prod(steps_per_axis)),
        seconds=seconds,
        label_voxels={int(v): int(c) for v, c in zip(values, counts, strict=True)},
    )
