"""Segmentation of NIfTI volumes: read → preprocess → sliding window → back to the input grid.

The output is written on the input's own voxel grid, with the input's affine and header, so it
overlays the scan in any viewer. Everything that can be checked is checked before any compute
(and, from the CLI, before weights are downloaded or a model is built): the input is readable and
of a shape the model takes, the output is not the input and can be written, the window settings
are in range, and the memory and window count the run needs fit a budget. The output file
appears only once the prediction succeeded (written to a temporary name, then renamed).

Preprocessing is the weights' contract (:class:`zoo.transforms.InputContract`): the same MONAI
transforms :func:`zoo.transforms.for_model` returns.

:func:`predict_study` runs a folder, a datalist or a glob of scans: a DataLoader reads and
preprocesses the next volumes while the model runs, finished outputs are skipped (a rerun
resumes), a bad file is reported and skipped, and under ``torchrun`` each process takes its
share of the cases (no collective: each writes its own files).
"""

from __future__ import annotations

import functools
import glob as _glob
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zoo.inference import sliding_window_predict
from zoo.transforms import INTENSITY_KINDS, InputContract, canonical_intensity, parse_intensity

log = logging.getLogger("zoo")

__all__ = [
    "AUTO_SW_BATCH",
    "auto_workers",
    "argmax_labels",
    "read_volume",
    "predict_nifti",
    "predict_study",
    "Prediction",
    "StudyResult",
    "Settings",
    "resolve_settings",
    "check_output",
    "inspect_input",
    "estimate",
    "check_budget",
    "check_weights_trained",
    "list_cases",
    "preprocess",
    "sample_volume_path",
    "intensity_transform",
    "canonical_intensity",
    "INTENSITY_KINDS",
]

# Defaults of the resource budget; the env vars and the CLI flags override them.
ENV_MAX_GB = "MEDZOO_PREDICT_MAX_GB"
ENV_MAX_WINDOWS = "MEDZOO_PREDICT_MAX_WINDOWS"
DEFAULT_MAX_WINDOWS = 5000  # ~an hour of a mid-size 3D model on a CPU; 0.999 overlap asks for 35,937
_SPACING_RANGE = (0.01, 100.0)  # mm: below a hundredth of a mm no scanner, above 10 cm no anatomy
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


@dataclass
class StudyResult:
    """What ``predict_study`` did: cases written, skipped (output already there), failed."""

    written: list[Prediction] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    cases: int = 0


# Windows per forward unless the caller says: CPU kernels that parallelise over the batch (PyTorch's
# direct 3D convolution on narrow layers) leave a thread idle at batch 1; two windows keep two busy
# (benchmarks/predict_study.md). Logits equal batch 1 up to float rounding, so a voxel whose two
# best classes tie to ~1e-5 can take the other class.
AUTO_SW_BATCH = 2


@dataclass(frozen=True)
class Settings:
    """The checked settings of a prediction, resolved from the model's config and the caller's."""

    name: str
    contract: InputContract
    roi: tuple[int, ...]
    overlap: float
    sw_batch_size: int
    in_chans: int | None
    num_classes: int
    slice_axis: int | None = None  # 2D models: the axis of the model grid the slices are cut along
    labels: Mapping[int, str] = field(default_factory=dict)


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
# checks that need no voxel and no model


def _roi_of(cfg: Mapping[str, Any]) -> tuple[int, ...]:
    img = cfg.get("model_args", {}).get("img_size")
    if img is not None:
        dims = len(cfg.get("input_size") or (0, 0, 0, 0)) - 1
        return (int(img),) * dims if isinstance(img, int) else tuple(int(s) for s in img)
    roi = cfg.get("sliding_window", {}).get("roi_size")
    if roi:
        return tuple(int(s) for s in roi)
    size = cfg.get("input_size")
    return tuple(int(s) for s in size[1:]) if size else ()


def resolve_settings(
    cfg: Mapping[str, Any],
    roi_size: Sequence[int] | None = None,
    overlap: float | None = None,
    sw_batch_size: int | None = None,
    spacing_mm: Sequence[float] | None = None,
    intensity: Mapping[str, Any] | str | None = None,
    slice_axis: int | None = None,
) -> Settings:
    """Check a model config (``model.pretrained_cfg`` or the registry's) and the caller's settings.

    ``sw_batch_size=None`` takes :data:`AUTO_SW_BATCH` windows per forward.

    Returns:
        The :class:`Settings` of the run.

    Raises:
        ValueError: not a segmentation model, a window that a fixed-size model cannot take, an
            overlap outside [0, 1), a batch below 1, a spacing outside 0.01–100 mm, a bad
            contract; one line each naming expected and found.
    """
    name = cfg.get("name", "this model")
    size = cfg.get("input_size")
    dims = len(size) - 1 if size is not None else 3
    if dims not in (2, 3):
        raise ValueError(
            f"{name} takes inputs of shape {tuple(size)} (without batch); predict needs a 2D or 3D model"
        )
    if not cfg.get("sliding_window") and cfg.get("name"):
        raise ValueError(
            f"{name} is not a segmentation model (it registers no sliding-window ROI and its output is not a "
            "label map); predict needs a 3D segmentation model (or a 2D one, slice by slice)"
        )
    own = _roi_of(cfg)
    roi = tuple(roi_size) if roi_size is not None else own
    if len(roi) != dims or not all(isinstance(r, int | np.integer) and 0 < r <= 4096 for r in roi):
        raise ValueError(f"{name}: roi size must be {dims} integers in 1..4096, found {tuple(roi)}")
    fixed = cfg.get("model_args", {}).get("img_size")
    if fixed is not None and roi_size is not None and tuple(roi) != own:
        raise ValueError(
            f"{name} is built for windows of {'×'.join(map(str, own))} (img_size); roi size "
            f"{'×'.join(map(str, roi))} needs the model built for it (zoo.create(..., img_size={list(roi)}))"
        )
    ov = cfg.get("sliding_window", {}).get("overlap", 0.5) if overlap is None else overlap
    if not (isinstance(ov, int | float) and 0 <= ov < 1):
        raise ValueError(f"overlap must lie in [0, 1), found {ov!r}")
    if sw_batch_size is None:
        sw_batch_size = AUTO_SW_BATCH
    if isinstance(sw_batch_size, bool) or not isinstance(sw_batch_size, int) or sw_batch_size < 1:
        raise ValueError(
            f"sw batch size must be an integer >= 1 (windows per forward), found {sw_batch_size!r}"
        )
    where = f"{name}{'.' + cfg['tag'] if cfg.get('tag') else ''}: "
    prep = cfg.get("preprocessing")
    if not prep and cfg.get("name"):  # no weights: the architecture's documented preprocessing
        from zoo._registry import get_spec

        try:
            prep = get_spec(cfg["name"]).meta.get("preprocessing")
        except (KeyError, ValueError):
            prep = None
    contract = InputContract.from_preprocessing(prep, where)
    if spacing_mm is not None:
        sp = tuple(spacing_mm)
        lo, hi = _SPACING_RANGE
        if len(sp) != 3 or not all(isinstance(v, int | float) and lo <= v <= hi for v in sp):
            raise ValueError(f"spacing must be 3 numbers in {lo:g}..{hi:g} mm, found {sp}")
    contract = contract.replace(
        spacing_mm=tuple(float(v) for v in spacing_mm) if spacing_mm is not None else None,
        intensity=parse_intensity(intensity) if intensity is not None else None,
    )
    axis = None
    if dims == 2:
        axis = (
            slice_axis
            if slice_axis is not None
            else (contract.slice_axis if contract.slice_axis is not None else 2)
        )
        if axis not in (0, 1, 2):
            raise ValueError(f"slice axis must be 0, 1 or 2 (x, y, z of the model grid), found {axis!r}")
    elif slice_axis is not None:
        raise ValueError(f"{name} is a 3D model; a slice axis applies to 2D models only (found {slice_axis})")
    args = cfg.get("model_args", {})
    labels = cfg.get("labels") or {}
    if isinstance(labels, list | tuple):  # label names in class order (ONNX metadata writes a list)
        labels = dict(enumerate(labels))
    labels = {int(k): str(v) for k, v in labels.items()}
    return Settings(
        name=name,
        contract=contract,
        roi=tuple(int(r) for r in roi),
        overlap=float(ov),
        sw_batch_size=int(sw_batch_size),
        in_chans=args.get("in_chans"),
        num_classes=int(args.get("num_classes") or 2),
        slice_axis=axis,
        labels=labels,
    )


def check_weights_trained(record: Mapping[str, Any] | None, name: str, allow: bool = False) -> None:
    """Refuse weights that cannot segment: encoder-only, or with a newly initialised head.

    Args:
        record: ``model.pretrained_cfg["weights"]`` (``covers``, ``newly_initialised``), or a
            registry ``WeightSpec``'s facts in the same form.
        name: ``name.tag`` for the message.
        allow: ``--allow-untrained-head``: warn instead of refusing.

    Raises:
        ValueError: with the command that fine-tunes the weights first.
    """
    if not record:
        return
    covers = record.get("covers", "full")
    new = [m for m in record.get("newly_initialised") or () if m]
    if covers == "full" and not new:
        return
    what = f"cover only the {covers}" if covers != "full" else f"leave {', '.join(new)} newly initialised"
    base = name.split(".", 1)[0]
    msg = (
        f"the weights {name} {what}: their label maps would be random; fine-tune them first "
        f"(zoo finetune {name} --data datalist.json --out runs/ft, "
        f"then zoo predict {base} --checkpoint runs/ft ...), "
        "or pass --allow-untrained-head to run anyway"
    )
    if not allow:
        raise ValueError(msg)
    log.warning(
        "%s (--allow-untrained-head given: running anyway)", msg.split(": their")[0] + ": labels are random"
    )


def check_output(input_path: str | Path, out_path: str | Path) -> Path:
    """Check that ``out_path`` can be written and is not ``input_path``, before any compute.

    The same file is recognised through symlinks and hard links (device and inode).

    Returns:
        ``out_path`` as a Path.

    Raises:
        ValueError: not a ``.nii``/``.nii.gz`` name, the input itself, a folder, a parent that is
            a file or not writable.
    """
    out = Path(out_path)
    if not (out.name.endswith(".nii") or out.name.endswith(".nii.gz")):
        raise ValueError(f"{out}: the output must be a .nii or .nii.gz file, found {out.name!r}")
    if out.is_dir():
        raise ValueError(f"{out}: expected an output file name, found a folder")
    if out.exists() or out.is_symlink():
        try:
            a, b = os.stat(out), os.stat(input_path)
            same = (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
        except OSError:
            same = False
        if same:
            raise ValueError(
                f"{out} is the input scan {input_path} (the same file through a link): refusing to "
                "overwrite the input; choose another output"
            )
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        if parent.is_symlink():
            raise ValueError(f"{out}: its folder {parent} is a dangling link, expected a directory")
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{out}: its parent {parent} is a file, expected a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{out}: expected a writable folder, found {parent} not writable")
    return out


def _load_nifti(path: Path) -> Any:
    import nibabel as nib

    if not path.is_file():
        raise ValueError(f"{path}: expected a NIfTI file, found no such file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{path}: expected a readable file, found no read permission")
    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises ImageFileError, EOFError, gzip errors …
        raise ValueError(
            f"{path}: not a readable NIfTI file ({type(e).__name__}: {e})".replace("\n", " ")
        ) from e
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ValueError(f"{path}: expected a NIfTI image, found {type(img).__name__}")
    return img


@dataclass(frozen=True)
class InputInfo:
    """What the header of an input says (no voxel read)."""

    path: Path
    shape: tuple[int, ...]  # (C, X, Y, Z)
    affine: np.ndarray
    zooms: tuple[float, float, float]
    volume: int | None  # the 4D series' volume chosen, or None


def inspect_input(path: str | Path, in_chans: int | None = None, volume: int | None = None) -> InputInfo:
    """Read a NIfTI header and check its shape for a model taking ``in_chans`` channels.

    Args:
        path: the file.
        in_chans: channels the model takes (None: any).
        volume: for a 4D series, the index of the volume to segment (``--volume N``).

    Raises:
        ValueError: unreadable, RGB/vector voxels, 2D, 5D+, a channel count the model does not
            take (with ``--volume N`` named for series), a volume index out of range.
    """
    path = Path(path)
    img = _load_nifti(path)
    dtype = img.get_data_dtype()
    if dtype.names is not None or dtype.kind == "V":
        raise ValueError(
            f"{path}: expected scalar (grey-level) voxels, found RGB/vector voxels of type {dtype.descr}; "
            "convert the image to grey levels first"
        )
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 5 and shape[3] == 1:  # NIfTI puts vector components in dim 5, time in dim 4
        shape = (*shape[:3], shape[4])
    if len(shape) == 2 or (len(shape) in (3, 4) and 1 in shape[:3]):
        raise ValueError(
            f"{path}: expected a 3D volume, found a 2D image of shape {shape} "
            "(an axis of length 1 or fewer than 3 axes)"
        )
    if len(shape) not in (3, 4):
        raise ValueError(
            f"{path}: expected a 3D volume (or 4D, channels last), found {len(shape)}D shape {shape}"
        )
    chans = shape[3] if len(shape) == 4 else 1
    if volume is not None:
        if len(shape) == 3:
            raise ValueError(f"{path}: --volume {volume} picks a volume of a 4D series, found a 3D file")
        if not 0 <= volume < chans:
            raise ValueError(
                f"{path}: --volume must be in 0..{chans - 1} (the series has {chans}), found {volume}"
            )
        chans = 1
    if in_chans is not None and chans != in_chans:
        hint = f": pick one with --volume N (0..{chans - 1})" if in_chans == 1 and chans > 1 else ""
        found = f"a 4D series of {chans} volumes{hint}" if len(shape) == 4 else f"{chans}"
        raise ValueError(f"{path}: the model expects {in_chans} channel(s), found {found}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return InputInfo(path, (chans, *shape[:3]), np.asarray(img.affine, dtype=np.float64), zooms, volume)


@dataclass(frozen=True)
class Estimate:
    """The size of a prediction, before it runs."""

    model_grid: tuple[int, ...]
    windows: int
    bytes: int


def _windows(size: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    n = 1
    for s, r in zip(size, roi, strict=True):
        stride = max(int(r * (1 - overlap)), 1)
        n *= 1 if s <= r else math.ceil((s - r) / stride) + 1
    return n


def estimate(info: InputInfo, s: Settings) -> Estimate:
    """Model grid, window count and peak memory of one case, from its header alone.

    Memory: float32 input and a copy on the model grid, the aggregated logits and MONAI's
    weight map on the model grid, and the logits resampled onto the input grid.
    """
    import nibabel as nib

    c, *shape = info.shape
    zooms = list(info.zooms)
    if s.contract.orientation:
        ornt = nib.orientations.io_orientation(info.affine)
        out_shape, out_zooms = [0, 0, 0], [0.0, 0.0, 0.0]
        for i, (axis, _) in enumerate(ornt):
            out_shape[int(axis)], out_zooms[int(axis)] = shape[i], zooms[i]
        shape, zooms = out_shape, out_zooms
    if s.contract.spacing_mm:
        shape = [
            max(round(n * z / t), 1) for n, z, t in zip(shape, zooms, s.contract.spacing_mm, strict=True)
        ]
    if s.contract.axis_order == "zyx":
        shape = shape[::-1]
    if s.slice_axis is not None:
        plane = [n for i, n in enumerate(shape) if i != s.slice_axis]
        windows = shape[s.slice_axis] * _windows(plane, s.roi, s.overlap)
    else:
        windows = _windows(shape, s.roi, s.overlap)
    grid_vox, in_vox, k = math.prod(shape), math.prod(info.shape[1:]), s.num_classes
    nbytes = 4 * (grid_vox * (2 * c + 2 * k + 1) + in_vox * (c + k))
    return Estimate(tuple(shape), windows, nbytes)


def _budget(max_memory_gb: float | None, max_windows: int | None) -> tuple[float, int, str]:
    if max_memory_gb is None and os.environ.get(ENV_MAX_GB):
        max_memory_gb = float(os.environ[ENV_MAX_GB])
    if max_windows is None and os.environ.get(ENV_MAX_WINDOWS):
        max_windows = int(os.environ[ENV_MAX_WINDOWS])
    how = "set by --max-memory-gb or " + ENV_MAX_GB
    if max_memory_gb is None:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        max_memory_gb, how = (
            ram / 2**30 / 2,
            f"half this machine's RAM; raise it with --max-memory-gb or {ENV_MAX_GB}",
        )
    return float(max_memory_gb), int(max_windows if max_windows is not None else DEFAULT_MAX_WINDOWS), how


def _gb(x: float) -> str:
    return f"{x:.1f}" if x >= 1 else f"{x:.3g}"


def check_budget(
    est: Estimate,
    info: InputInfo,
    s: Settings,
    max_memory_gb: float | None = None,
    max_windows: int | None = None,
) -> None:
    """Refuse a case whose estimate exceeds the memory or window budget, with the numbers.

    Args:
        est: :func:`estimate` of the case.
        info: its header facts.
        s: the settings.
        max_memory_gb: budget in GiB (default: ``MEDZOO_PREDICT_MAX_GB``, else half the RAM).
        max_windows: window cap (default: ``MEDZOO_PREDICT_MAX_WINDOWS``, else 5000).

    Raises:
        ValueError: over budget.
    """
    gb, cap, how = _budget(max_memory_gb, max_windows)
    grid = "×".join(map(str, est.model_grid))
    need = est.bytes / 2**30
    if need > gb:
        sp = s.contract.spacing_mm
        raise ValueError(
            f"{info.path.name}: needs about {_gb(need)} GB (model grid {grid}"
            + (f" at {sp} mm" if sp else "")
            + f" × {s.num_classes} classes, float32) but the memory budget is {_gb(gb)} GB ({how})"
        )
    if est.windows > cap:
        raise ValueError(
            f"{info.path.name}: needs {est.windows} sliding windows of {'×'.join(map(str, s.roi))} "
            f"(model grid {grid}, "
            f"overlap {s.overlap}) but the cap is {cap} (--max-windows or {ENV_MAX_WINDOWS}); "
            "lower the overlap"
        )


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


def _read(path: str | Path, in_chans: int | None, volume: int | None) -> tuple[Any, np.ndarray, int]:
    """:func:`read_volume`, also returning the count of non-finite voxels it replaced.

    A 4D file is taken as channels last (one volume per channel), or as a series whose volume
    ``volume`` is taken. Non-finite voxels are set to 0 and counted (and logged).

    Raises:
        ValueError: see :func:`inspect_input`; also a volume whose voxels are all non-finite or
            all equal (nothing to segment).
    """
    path = Path(path)
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


def _infer(model: nn.Module, x: torch.Tensor, s: Settings, progress: bool) -> torch.Tensor:
    """``(C, *grid)`` → ``(K, *grid)`` logits, by 3D windows or by 2D slices."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = x.to(device)
    if s.slice_axis is None:
        out = sliding_window_predict(
            model,
            x[None],
            roi_size=s.roi,
            overlap=s.overlap,
            sw_batch_size=s.sw_batch_size,
            progress=progress,
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


def _write_atomic(out: Path, write: Callable[[str], None], suffix: str) -> None:
    """Write through a hidden temporary name in the same folder, then rename: never half a file."""
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part" + suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a result is shared like any file
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _write_labels(labels: np.ndarray, case: Mapping[str, Any], out: Path) -> None:
    import nibabel as nib

    header = case["header"].copy()
    header.set_data_dtype(labels.dtype)
    cls = nib.Nifti2Image if case["nifti2"] else nib.Nifti1Image
    img = cls(labels, case["affine"], header)
    _write_atomic(out, lambda p: nib.save(img, p), ".nii.gz" if out.name.endswith(".gz") else ".nii")


def _preview_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".gz").removesuffix(".nii") + ".png")


def _run_case(
    model: nn.Module, case: Mapping[str, Any], s: Settings, out: Path, progress: bool, preview: bool
) -> Prediction:
    start = time.perf_counter()
    x = case["image"]
    logits = _infer(model, x.as_tensor() if hasattr(x, "as_tensor") else x, s, progress)
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


def estimate_windows(grid: Sequence[int], s: Settings) -> int:
    """Sliding windows over a model grid (slices × windows per slice for 2D models)."""
    if s.slice_axis is None:
        return _windows(grid, s.roi, s.overlap)
    plane = [n for i, n in enumerate(grid) if i != s.slice_axis]
    return grid[s.slice_axis] * _windows(plane, s.roi, s.overlap)


def _model_settings(model: nn.Module, **kw: Any) -> Settings:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return resolve_settings(cfg, **kw)


def _checked_settings(model: Any, allow_untrained_head: bool, preview: bool, **window: Any) -> Settings:
    """The run's settings from the model and the caller, after the weights and preview checks."""
    s = _model_settings(model, **window)
    record = (getattr(model, "pretrained_cfg", {}) or {}).get("weights")
    check_weights_trained(record, (record or {}).get("id") or s.name, allow_untrained_head)
    if preview:
        from zoo.plots import require_matplotlib

        require_matplotlib()
    return s


def predict_nifti(
    model: nn.Module,
    image_path: str | Path,
    out_path: str | Path,
    spacing_mm: tuple[float, ...] | None = None,
    overlap: float | None = None,
    sw_batch_size: int | None = None,
    progress: bool = True,
    intensity: Mapping[str, Any] | str | None = None,
    roi_size: Sequence[int] | None = None,
    volume: int | None = None,
    slice_axis: int | None = None,
    allow_untrained_head: bool = False,
    max_memory_gb: float | None = None,
    max_windows: int | None = None,
    preview: bool = False,
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
        spacing_mm: target spacing; None uses the contract's.
        overlap: sliding-window overlap in [0, 1) (default: the model's registered value).
        sw_batch_size: windows per forward (>= 1; default :data:`AUTO_SW_BATCH`).
        progress: progress bar.
        intensity: overrides the contract's intensity transform (any form ``parse_intensity`` reads).
        roi_size: window size (default: the model's ``img_size``, else its registered ROI).
        volume: the volume of a 4D series to segment.
        slice_axis: 2D models: axis (0, 1, 2) of the model grid to cut slices along.
        allow_untrained_head: predict even with encoder-only weights or a new head.
        max_memory_gb / max_windows: the resource budget (see :func:`check_budget`).
        preview: also write a PNG of three mid-slices with the labels (``zoo.plots``).

    Returns:
        A :class:`Prediction` summary.

    Raises:
        ValueError: any refused input, output or setting (one line, expected and found).
            Nothing is written then.
    """
    s = _checked_settings(
        model,
        allow_untrained_head,
        preview,
        roi_size=roi_size,
        overlap=overlap,
        sw_batch_size=sw_batch_size,
        spacing_mm=spacing_mm,
        intensity=intensity,
        slice_axis=slice_axis,
    )
    out = check_output(image_path, out_path)
    info = inspect_input(image_path, s.in_chans, volume)
    check_budget(estimate(info, s), info, s, max_memory_gb, max_windows)
    case = preprocess(image_path, s, volume, keep_original=preview)
    model.eval()
    return _run_case(model, case, s, out, progress, preview)


# ------------------------------------------------------------------------------------------------
# whole studies


_NIFTI = (".nii", ".nii.gz")


def list_cases(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """The input files of a study: a folder (its ``*.nii``/``*.nii.gz``), a datalist JSON, a glob.

    A datalist is a list of paths or ``{"image": path}`` entries, or a MONAI datalist whose
    ``testing`` (else ``validation`` and ``training``) entries give ``image``; relative paths are
    relative to the JSON file.

    Raises:
        ValueError: nothing found, or a datalist of another form.
    """
    if isinstance(source, list | tuple):
        return [Path(p) for p in source]
    text = str(source)
    p = Path(text)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.name.endswith(_NIFTI) and not f.name.startswith("."))
        if not files:
            raise ValueError(f"{p}: expected .nii or .nii.gz files in the folder, found none")
        return files
    if p.suffix == ".json" and p.is_file():
        try:
            dl = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{p}: not a valid JSON datalist ({e})") from e
        if isinstance(dl, dict):
            entries = dl.get("testing") or [*(dl.get("validation") or []), *(dl.get("training") or [])]
        else:
            entries = dl
        paths = []
        for e in entries if isinstance(entries, list) else []:
            image = e.get("image") if isinstance(e, dict) else e
            if isinstance(image, list):
                raise ValueError(f"{p}: one file per case expected, found a list of images {image}")
            if isinstance(image, str):
                paths.append(Path(image) if Path(image).is_absolute() else p.parent / image)
        if not paths:
            raise ValueError(
                f"{p}: expected a list of image paths or a MONAI datalist with 'testing' entries, found none"
            )
        return paths
    if any(ch in text for ch in "*?["):
        files = sorted(Path(f) for f in _glob.glob(text, recursive=True) if f.endswith(_NIFTI))
        if not files:
            raise ValueError(f"{text}: the pattern matches no .nii or .nii.gz file")
        return files
    raise ValueError(f"{text}: expected a folder, a datalist .json or a glob pattern, found no such path")


def _output_name(path: Path) -> str:
    name = path.name
    return name if name.endswith(".nii.gz") else name.removesuffix(".nii") + ".nii.gz"


def _study_outputs(cases: Sequence[Path], out_dir: Path) -> dict[Path, Path]:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: expected an output folder, found a file")
    if out_dir.exists():
        here = os.stat(out_dir)
        for c in cases:
            if c.exists() and os.path.samestat(os.stat(c.parent), here):
                raise ValueError(
                    f"{out_dir} holds the input scans (e.g. {c.name}): refusing to write label maps among "
                    "them, where they could overwrite a scan or be read as one; choose another output folder"
                )
    outs: dict[Path, Path] = {}
    seen: dict[str, Path] = {}
    for c in cases:
        name = _output_name(c)
        if name in seen:
            raise ValueError(f"{c} and {seen[name]} would both be written as {out_dir / name}; rename one")
        seen[name] = c
        outs[c] = out_dir / name
    inputs = {}
    for c in cases:
        with_stat = c.exists()
        if with_stat:
            st = os.stat(c)
            inputs[(st.st_dev, st.st_ino)] = c
    for c, o in outs.items():
        if o.exists() or o.is_symlink():
            try:
                st = os.stat(o)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in inputs:
                raise ValueError(
                    f"{o} would overwrite the input scan {inputs[(st.st_dev, st.st_ino)]}: "
                    "refusing; choose an output folder that is not the input folder"
                )
        check_output(c, o)  # also walks up to the first existing folder: a file there is refused
    return outs


class _CaseDataset(torch.utils.data.Dataset):
    """Reads, checks and preprocesses one case per item, in DataLoader workers; errors travel as data."""

    def __init__(
        self,
        cases: Sequence[Path],
        s: Settings,
        volume: int | None,
        budget: tuple[float | None, int | None],
        preview: bool,
    ) -> None:
        self.cases, self.s, self.volume, self.budget, self.preview = list(cases), s, volume, budget, preview

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path = self.cases[i]
        try:
            info = inspect_input(path, self.s.in_chans, self.volume)
            check_budget(estimate(info, self.s), info, self.s, *self.budget)
            return {"path": path, **preprocess(path, self.s, self.volume, keep_original=self.preview)}
        except Exception as e:  # one bad file must not stop the study: reported, then skipped
            return {
                "path": path,
                "error": f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e),
            }


def _set_threads(n: int, worker_id: int) -> None:
    # DataLoader workers start with one thread; the reductions of the z-score and the resampling
    # then sum in another order than in this process, and a few voxels at a tie flip label. The
    # same thread count gives the same label maps as predict_nifti.
    torch.set_num_threads(n)


def _first(batch: list[Any]) -> Any:
    return batch[0]


def _rank() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def auto_workers() -> int:
    """Reading processes for a study: one when a core is left over by the model's threads, else 0.

    A reader only hides reading and preprocessing behind the model when it has a core of its own;
    on a machine whose every core runs the model's threads it takes cycles from the model
    instead (2 cores: 0.87× the throughput of reading in turn, benchmarks/predict_study.md).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return 1 if cores > torch.get_num_threads() else 0


def predict_study(
    model: nn.Module,
    source: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    spacing_mm: tuple[float, ...] | None = None,
    overlap: float | None = None,
    sw_batch_size: int | None = None,
    intensity: Mapping[str, Any] | str | None = None,
    roi_size: Sequence[int] | None = None,
    volume: int | None = None,
    slice_axis: int | None = None,
    allow_untrained_head: bool = False,
    max_memory_gb: float | None = None,
    max_windows: int | None = None,
    preview: bool = False,
    num_workers: int | None = None,
    progress: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
    on_case: Callable[[Path, Prediction | None, str | None], None] | None = None,
) -> StudyResult:
    """Segment every scan of a folder, datalist or glob into ``out_dir`` (same file names).

    A DataLoader with ``num_workers`` processes reads and preprocesses the next volumes while
    the model runs. Outputs that exist are skipped (a rerun resumes). A file that fails is
    reported in :attr:`StudyResult.failed` and the study goes on. Under ``torchrun``
    (``RANK``/``WORLD_SIZE``) process ``r`` takes cases ``r, r + W, …`` and writes them itself.

    Args:
        model: a model from :func:`zoo.create`.
        source: a folder, a datalist JSON, a glob pattern, or a list of paths.
        out_dir: the output folder (created).
        num_workers: reading processes (0: read in this process, no overlap); default
            :func:`auto_workers`.
        rank / world_size: override the ``torchrun`` environment.
        on_case: called after each case with ``(path, prediction or None, error or None)``.
        Others: as :func:`predict_nifti`.

    Returns:
        A :class:`StudyResult` of this process's cases.

    Raises:
        ValueError: settings, weights or outputs refused before any case runs.
    """
    from torch.utils.data import DataLoader

    s = _checked_settings(
        model,
        allow_untrained_head,
        preview,
        roi_size=roi_size,
        overlap=overlap,
        sw_batch_size=sw_batch_size,
        spacing_mm=spacing_mm,
        intensity=intensity,
        slice_axis=slice_axis,
    )
    if num_workers is None:
        num_workers = auto_workers()
    elif isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"workers must be an integer >= 0 (reading processes), found {num_workers!r}")
    out_dir = Path(out_dir)
    cases = list_cases(source)
    outs = _study_outputs(cases, out_dir)
    r, w = _rank()
    r, w = (rank if rank is not None else r), (world_size if world_size is not None else w)
    mine = cases[r::w]
    result = StudyResult(cases=len(mine))
    todo = []
    for c in mine:
        if outs[c].exists():
            result.skipped.append(c)
        else:
            todo.append(c)
    if result.skipped:
        log.info("rank %d: %d case(s) already written, skipped", r, len(result.skipped))
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = _CaseDataset(todo, s, volume, (max_memory_gb, max_windows), preview)
    loader = DataLoader(
        ds,
        batch_size=1,
        collate_fn=_first,
        num_workers=num_workers,
        prefetch_factor=1 if num_workers else None,
        persistent_workers=False,
        worker_init_fn=functools.partial(_set_threads, torch.get_num_threads()),
        # A forked child that starts its own OpenMP pool after the parent's can hang: spawn.
        multiprocessing_context="spawn" if num_workers and torch.get_num_threads() > 1 else None,
    )
    bar = _progress(len(todo), progress, r, w)
    model.eval()
    for case in loader:
        path = case["path"]
        err = case.get("error")
        pred = None
        if err is None:
            try:
                pred = _run_case(model, case, s, outs[path], False, preview)
            except (ValueError, RuntimeError, OSError) as e:
                err = f"{type(e).__name__}: {e}".replace("\n", " ")
        if err is not None:
            result.failed[str(path)] = err
            log.error("%s: skipped: %s", path, err)
        else:
            result.written.append(pred)
        if on_case is not None:
            on_case(path, pred, err)
        bar.update(1)
        del case
    bar.close()
    return result


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, show: bool, rank: int, world: int) -> Any:
    if not show or total == 0:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(
        total=total, unit="case", desc=f"rank {rank}/{world}" if world > 1 else "predict", position=rank
    )


def planned_cfg(name: str, checkpoint: str | Path | None = None, pretrained: bool = True) -> dict[str, Any]:
    """The ``pretrained_cfg`` that ``zoo.create`` would give, from the plan, without building."""
    from zoo.plan import plan

    return plan(name, checkpoint=checkpoint, pretrained=pretrained and checkpoint is None).planned_cfg()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
