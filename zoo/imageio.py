"""Scans in the formats they arrive in: NIfTI, DICOM series, NRRD, MetaImage; several files per case.

NIfTI is read by nibabel, as before. DICOM series (a folder of slices), NRRD (``.nrrd``,
``.nhdr``) and MetaImage (``.mha``, ``.mhd``) are read by MONAI's ``LoadImage`` with its ITK
reader (the ``[io]`` extra: ``itk-io``), into an in-memory NIfTI image with the scan's RAS
affine, so the rest of the pipeline is one pipeline. Label maps of NRRD and MetaImage scans are
written back in their format by MONAI's ITK writer, on the same grid and geometry; a DICOM
series' labels are written as NIfTI (a DICOM segmentation object needs a library of its own;
NIfTI is what the other tools read).

A case may be several files, one per channel (``t1.nii.gz t1ce.nii.gz t2.nii.gz flair.nii.gz``):
they are stacked in the order given after checking that their grids match.

Headers are read before voxels: :func:`header_shape` gives what :func:`load_image` would give
without reading a voxel, and a read into memory is refused past the memory budget before ITK (or
the stacking of a case's files) allocates anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "NIFTI",
    "ITK_SUFFIXES",
    "is_nifti",
    "is_image_path",
    "is_dicom_series",
    "load_image",
    "header_shape",
    "check_read_size",
    "write_labels_itk",
    "output_suffix",
]

NIFTI = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
_GRID_ATOL = 1e-4  # mm: two files of one case share their grid up to rounding in their headers


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI)


def is_itk_file(path: str | Path) -> bool:
    return str(path).lower().endswith(ITK_SUFFIXES)


def is_dicom_series(path: str | Path) -> bool:
    """A folder holding DICOM files (the ``DICM`` marker at byte 128 of its first regular files)."""
    p = Path(path)
    if not p.is_dir():
        return False
    for i, f in enumerate(sorted(p.iterdir())):
        if i >= 8:
            break
        if f.is_file():
            try:
                with open(f, "rb") as fh:
                    fh.seek(128)
                    if fh.read(4) == b"DICM":
                        return True
            except OSError:
                continue
    return False


def is_image_path(path: str | Path) -> bool:
    """A scan medzoo reads: a NIfTI, NRRD or MetaImage file, or a DICOM series folder."""
    return is_nifti(path) or is_itk_file(path) or is_dicom_series(path)


def output_suffix(path: str | Path, nifti: bool = False) -> str:
    """The suffix of a scan's label map: its own format (NRRD, MetaImage) or ``.nii.gz``."""
    name = str(path).lower()
    if not nifti:
        for suffix in (".nrrd", ".mha"):
            if name.endswith(suffix):
                return suffix
        if name.endswith(".nhdr"):
            return ".nrrd"
        if name.endswith(".mhd"):
            return ".mha"
    return ".nii.gz"


def _itk_io(path: Path) -> tuple[Any, int]:
    """ITK's reader of ``path`` with the image information read (no voxel), and the slice count:
    1 for a file, the number of slice files of the first series of a DICOM folder (as MONAI's
    ITK reader picks it)."""
    from zoo._optional import require

    require("itk", extra="io", feature=f"reading {path.name} (DICOM, NRRD, MetaImage)")
    import itk

    files, count = str(path), 1
    if path.is_dir():
        names = itk.GDCMSeriesFileNames.New()
        names.SetUseSeriesDetails(True)
        names.SetGlobalWarningDisplay(False)
        names.SetDirectory(str(path))
        series = names.GetSeriesUIDs()
        slices = list(names.GetFileNames(series[0])) if series else []
        if not slices:
            raise ValueError(f"{path}: expected a DICOM series, found no readable slice")
        files, count = slices[0], len(slices)
    try:
        io = itk.ImageIOFactory.CreateImageIO(files, itk.CommonEnums.IOFileMode_ReadMode)
        if io is None:
            raise RuntimeError("no ITK reader for this file")
        io.SetFileName(files)
        io.ReadImageInformation()
    except RuntimeError as e:
        raise ValueError(
            f"{path}: not a readable DICOM series, NRRD or MetaImage ({type(e).__name__})"
        ) from e
    return io, count


def _shape_of(path: Path) -> tuple[int, ...]:
    import nibabel as nib

    if is_nifti(path) or not (is_itk_file(path) or path.is_dir()):
        return tuple(int(n) for n in nib.load(str(path)).shape)
    io, count = _itk_io(path)
    dims = [int(io.GetDimensions(i)) for i in range(io.GetNumberOfDimensions())]
    if path.is_dir():  # one slice per file: the series stacks them
        dims = [*dims[:2], count]
    comps = int(io.GetNumberOfComponents())
    return (*dims, comps) if comps > 1 else tuple(dims)


def header_shape(path: str | Path | Sequence[str | Path]) -> tuple[int, ...]:
    """The shape :func:`load_image` gives for ``path``, from the headers alone (no voxel read)."""
    if isinstance(path, str | Path):
        return _shape_of(Path(path))
    shapes = [_shape_of(Path(p)) for p in path]
    return (*shapes[0][:3], len(shapes))


ENV_MAX_GB = "MEDZOO_PREDICT_MAX_GB"


def memory_budget_gb() -> tuple[float, bool]:
    """The memory a scan's prediction may use, in GiB, and whether ``MEDZOO_PREDICT_MAX_GB`` set it
    (else half this machine's RAM); the one reader of that variable."""
    import os

    from zoo.runconfig import machine_memory_bytes

    env = os.environ.get(ENV_MAX_GB)
    if env:
        try:
            return float(env), True
        except ValueError:
            raise ValueError(f"{ENV_MAX_GB}: expected a number of GB, found {env!r}") from None
    return machine_memory_bytes() / 2**30 / 2, False


def _budget_bytes() -> tuple[int, str]:
    gb, from_env = memory_budget_gb()
    return int(gb * 2**30), ENV_MAX_GB if from_env else f"half this machine's RAM; {ENV_MAX_GB} raises it"


def check_read_size(path: str | Path | Sequence[str | Path], max_bytes: int | None = None) -> None:
    """Refuse a scan whose headers announce more voxels than fit the memory budget as float32.

    Args:
        path: a file, a DICOM folder, or a case's files.
        max_bytes: the budget (default ``MEDZOO_PREDICT_MAX_GB``, else half the RAM).

    Raises:
        ValueError: over the budget, naming the voxels and the budget; nothing was read.
    """
    paths = [Path(path)] if isinstance(path, str | Path) else [Path(p) for p in path]
    budget, how = (max_bytes, "the budget given") if max_bytes is not None else _budget_bytes()
    voxels = sum(int(np.prod(_shape_of(p), dtype=np.float64)) for p in paths)
    if 4 * voxels > budget:
        who = (
            f"{paths[0]}: its header announces"
            if len(paths) == 1
            else f"{paths[0]} and the rest of the case: their headers announce"
        )
        raise ValueError(
            f"{who} {voxels:,} voxels ({4 * voxels / 2**30:.1f} GB as float32), over the memory budget of "
            f"{budget / 2**30:.1f} GB ({how}); not read"
        )


def _itk_image(path: Path) -> Any:
    """A NRRD / MetaImage file or a DICOM folder as an in-memory ``nib.Nifti1Image`` (RAS affine)."""
    import nibabel as nib

    from zoo._optional import require

    require("itk", extra="io", feature=f"reading {path.name} (DICOM, NRRD, MetaImage)")
    from monai.transforms import LoadImage

    try:
        arr, meta = LoadImage(reader="ITKReader", image_only=False)(str(path))
    except Exception as e:  # ITK raises RuntimeError for unreadable files, with its own text
        what = "DICOM series, NRRD or MetaImage"
        raise ValueError(f"{path}: not a readable {what} ({type(e).__name__})") from e
    data = np.asarray(arr, dtype=np.float32)
    if data.ndim == 4 and data.shape[0] == 1:
        data = data[0]
    affine = np.asarray(meta["affine"], dtype=np.float64)
    return nib.Nifti1Image(data, affine)


def _one(path: Path) -> Any:
    import nibabel as nib

    if is_nifti(path) or not (is_itk_file(path) or path.is_dir()):
        return nib.load(str(path))
    return _itk_image(path)


def load_image(path: str | Path | Sequence[str | Path]) -> Any:
    """A scan as a ``nib.Nifti1Image``: a NIfTI file as nibabel loads it (voxels read on demand),
    other formats read into memory, several files stacked as channels (4D, channels last).

    Raises:
        ValueError: files of one case on different grids (naming the first that differs).
    """
    import nibabel as nib

    if isinstance(path, str | Path):
        if not is_nifti(path):  # read into memory whole: bounded first (a NIfTI is read on demand)
            check_read_size(path)
        return _one(Path(path))
    check_read_size(path)
    paths = [Path(p) for p in path]
    images = [_one(p) for p in paths]
    first = images[0]
    for p, img in zip(paths[1:], images[1:], strict=True):
        if img.shape[:3] != first.shape[:3] or len(img.shape) > 3 and img.shape[3] > 1:
            raise ValueError(
                f"{p}: expected one 3D volume on the grid of {paths[0].name} {tuple(first.shape[:3])}, "
                f"found {tuple(img.shape)}"
            )
        if not np.allclose(img.affine, first.affine, atol=_GRID_ATOL):
            raise ValueError(
                f"{p}: not on the grid of {paths[0].name} (its affine differs by up to "
                f"{float(np.abs(img.affine - first.affine).max()):.3g} mm): the channels of a case must "
                "match"
            )
    data = np.stack(
        [np.asarray(i.dataobj, dtype=np.float32).reshape(first.shape[:3]) for i in images], axis=-1
    )
    return nib.Nifti1Image(data, first.affine, first.header if isinstance(first, nib.Nifti1Image) else None)


def write_labels_itk(labels: np.ndarray, affine: np.ndarray, path: str) -> None:
    """Write a label map as NRRD or MetaImage (by ``path``'s suffix) with the scan's RAS affine."""
    from zoo._optional import require

    require("itk", extra="io", feature="writing NRRD or MetaImage label maps")
    from monai.data import ITKWriter

    w = ITKWriter(output_dtype=labels.dtype)
    w.set_data_array(labels, channel_dim=None)
    w.set_metadata({"affine": affine, "original_affine": affine}, resample=False)
    w.write(path)
