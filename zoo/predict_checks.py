"""The checks of a prediction that need no voxel and no model: settings, weights, output, header, budget.

Each runs before any compute (and, from the CLI, before weights are downloaded or a model is
built): the window settings and the weights' contract resolve into one :class:`Settings`, the
weights can segment, the output can be written and is not the input, the input's header is of a
shape the model takes, and the memory and window count of the run fit a budget. Every refusal is
one ``ValueError`` line naming what was expected and what was found.

:mod:`zoo.predict` (one volume) and :mod:`zoo.study` (a folder, datalist or glob) both run them.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoo.imageio import ENV_MAX_GB, memory_budget_gb
from zoo.transforms import InputContract, parse_intensity

log = logging.getLogger("zoo")

__all__ = [
    "AUTO_SW_BATCH",
    "ENV_MAX_GB",
    "ENV_MAX_WINDOWS",
    "DEFAULT_MAX_WINDOWS",
    "Settings",
    "resolve_settings",
    "check_weights_trained",
    "check_output",
    "InputInfo",
    "inspect_input",
    "Estimate",
    "estimate",
    "estimate_windows",
    "check_budget",
]

# Defaults of the resource budget; the env vars and the CLI flags override them.
ENV_MAX_WINDOWS = "MEDZOO_PREDICT_MAX_WINDOWS"
DEFAULT_MAX_WINDOWS = 5000  # ~an hour of a mid-size 3D model on a CPU; 0.999 overlap asks for 35,937
_SPACING_RANGE = (0.01, 100.0)  # mm: below a hundredth of a mm no scanner, above 10 cm no anatomy

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
    covers = record.get("covers") or "full"  # None: a record that does not say (an ONNX export)
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
    from zoo.imageio import NIFTI

    out = Path(out_path)
    if not out.name.lower().endswith((*NIFTI, ".nrrd", ".mha")):
        raise ValueError(f"{out}: the output must be a .nii, .nii.gz, .nrrd or .mha file, found {out.name!r}")
    if isinstance(input_path, list | tuple):
        input_path = input_path[0]
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
    check_writable_parent(out)
    return out


def check_writable_parent(out: Path) -> None:
    """Refuse an output whose folder cannot be made or written: the first existing folder above
    it must be a writable directory, and no folder on the way a dangling link.

    Raises:
        ValueError: one line naming the output and the folder.
    """
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        if parent.is_symlink():
            raise ValueError(f"{out}: its folder {parent} is a dangling link, expected a directory")
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{out}: its parent {parent} is a file, expected a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{out}: expected a writable folder, found {parent} not writable")


def _no_content(e: BaseException) -> str:
    """A reader's error without the bytes of the file it quotes (gzip's ``b'ro'``, nibabel's header
    size, which is the file's first four bytes): the file may be any file a link points at."""
    text = re.sub(r"\(?b(['\"]).*?\1\)?", "", " ".join(str(e).split()))
    return re.sub(r"[Ss]izeof header is -?\d+", "the header size is wrong", text).strip() or type(e).__name__


def _load_nifti(path: Any) -> Any:
    """The scan at ``path`` as a nibabel image (``zoo.imageio``: NIfTI, DICOM series, NRRD,
    MetaImage; a list of files is one case, one file per channel)."""
    import nibabel as nib

    from zoo.imageio import is_dicom_series, load_image

    if isinstance(path, list | tuple):
        for p in path:
            _check_readable(Path(p))
        return load_image(path)
    _check_readable(path)
    try:
        img = load_image(path)
    except ValueError:
        raise
    except Exception as e:  # nibabel raises ImageFileError, EOFError, gzip errors …
        what = "DICOM series" if is_dicom_series(path) else "NIfTI file"
        raise ValueError(f"{path}: not a readable {what} ({type(e).__name__}: {_no_content(e)})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ValueError(f"{path}: expected a NIfTI image, found {type(img).__name__}")
    return img


def _check_readable(path: Path) -> None:
    from zoo.imageio import is_dicom_series

    if path.is_dir() and is_dicom_series(path):
        return
    if not path.is_file():
        raise ValueError(
            f"{path}: expected a scan (NIfTI, NRRD, MetaImage or a DICOM folder), found no such file"
        )
    if not os.access(path, os.R_OK):
        raise ValueError(f"{path}: expected a readable file, found no read permission")


@dataclass(frozen=True)
class InputInfo:
    """What the header of an input says (no voxel read)."""

    path: Path
    shape: tuple[int, ...]  # (C, X, Y, Z)
    affine: np.ndarray
    zooms: tuple[float, float, float]
    volume: int | None  # the 4D series' volume chosen, or None


def inspect_input(path: Any, in_chans: int | None = None, volume: int | None = None) -> InputInfo:
    """Read a NIfTI header and check its shape for a model taking ``in_chans`` channels.

    Args:
        path: the file.
        in_chans: channels the model takes (None: any).
        volume: for a 4D series, the index of the volume to segment (``--volume N``).

    Raises:
        ValueError: unreadable, RGB/vector voxels, 2D, 5D+, a channel count the model does not
            take (with ``--volume N`` named for series), a volume index out of range.
    """
    path = [Path(p) for p in path] if isinstance(path, list | tuple) else Path(path)
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
    if max_windows is None and os.environ.get(ENV_MAX_WINDOWS):
        max_windows = int(os.environ[ENV_MAX_WINDOWS])
    how = "set by --max-memory-gb or " + ENV_MAX_GB
    if max_memory_gb is None:
        max_memory_gb, from_env = memory_budget_gb()
        if not from_env:
            how = f"half this machine's RAM; raise it with --max-memory-gb or {ENV_MAX_GB}"
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


def estimate_windows(grid: Sequence[int], s: Settings) -> int:
    """Sliding windows over a model grid (slices × windows per slice for 2D models)."""
    if s.slice_axis is None:
        return _windows(grid, s.roi, s.overlap)
    plane = [n for i, n in enumerate(grid) if i != s.slice_axis]
    return grid[s.slice_axis] * _windows(plane, s.roi, s.overlap)
