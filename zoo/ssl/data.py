"""Unlabelled volumes for continued pretraining: datalists, preprocessing, crops and slices.

A *datalist* is a JSON file naming the scans, in any of these shapes (relative paths are
resolved against the JSON file's folder):

* ``["a.nii.gz", "b.nii.gz"]``;
* ``[{"image": "a.nii.gz"}, …]``;
* ``{"training": [{"image": …}, …]}`` (MONAI's Decathlon layout; ``"validation"`` is ignored;
  an ``image`` may list one file per channel).

They are read by :func:`zoo.datalist.read_datalist`, the reader ``zoo finetune`` uses too.

Volumes are read once, preprocessed (orientation, spacing, intensity, foreground crop) and
kept in memory; the datasets then draw random crops or slices from them. Every recipe names
its paper's preprocessing as its default (:class:`Preprocessing`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from zoo.transforms import InputContract

log = logging.getLogger("zoo")

__all__ = [
    "Preprocessing",
    "read_datalist",
    "mni152_paths",
    "load_volume",
    "load_volumes",
    "random_crop",
    "crop_or_pad",
    "VolumeCropDataset",
    "SliceDataset",
    "parse_intensity",
]


# The one preprocessing type: the contract of zoo.transforms, with its foreground crop for recipes.
Preprocessing = InputContract


def parse_intensity(text: str) -> dict[str, Any]:
    """The CLI's intensity option as a canonical intensity transform.

    The one parser of :func:`zoo.transforms.parse_intensity`: ``zscore``, ``zscore-nonzero``,
    ``none``, ``clip:a_min,a_max,b_min,b_max`` or a JSON object, as in ``zoo finetune`` and
    ``zoo predict``.
    """
    from zoo.transforms import parse_intensity as _parse

    return _parse(text)


def read_datalist(path: str | Path) -> list[Path | list[Path]]:
    """The image paths of a datalist JSON (see the module docstring), checked to exist.

    Read by :func:`zoo.datalist.read_datalist` (image-only entries; ``label`` and
    ``"validation"`` are not used here). A scan given as a list of files (one per channel)
    stays a list.

    Raises:
        ValueError: an unreadable or empty list, an entry without ``"image"``, or a file that
            does not exist (one line naming the file and the entry).
    """
    from zoo.datalist import read_datalist as read

    entries = read(path, require_label=False, splits=("training",))["training"]
    return [
        Path(e["image"]) if isinstance(e["image"], str) else [Path(f) for f in e["image"]] for e in entries
    ]


def mni152_paths() -> list[Path]:
    """nilearn's three MNI152 volumes (T1, grey and white matter maps; 1 mm, 197×233×189).

    Real volumes that an installed package ships: the smoke runs and tests use them.
    """
    try:
        import nilearn
    except ImportError as e:
        raise RuntimeError("the MNI152 sample volumes come with nilearn: pip install nilearn") from e
    folder = Path(nilearn.__file__).parent / "datasets" / "data"
    paths = sorted(folder.glob("mni_icbm152_*_tal_nlin_sym_09a_converted.nii.gz"))
    if not paths:
        raise RuntimeError(f"nilearn is installed but ships no MNI152 volumes in {folder}")
    return paths


def load_volume(path: str | Path | Sequence[str | Path], prep: Preprocessing) -> torch.Tensor:
    """Read and preprocess one scan into a ``(C, *spatial)`` float32 tensor (order per ``prep``).

    ``path`` may list one file per channel (same grid), stacked in order.
    """
    import numpy as np
    from monai.data import MetaTensor
    from monai.transforms import CropForeground, Orientation, Spacing

    from zoo.predict import intensity_transform, read_volume

    if isinstance(path, str | Path):
        img, arr = read_volume(path)
    else:
        parts = [read_volume(p) for p in path]
        img = parts[0][0]
        for p, (other, a) in zip(path, parts, strict=True):
            if a.shape[1:] != parts[0][1].shape[1:] or not np.allclose(other.affine, img.affine, atol=1e-4):
                raise ValueError(f"{p}: not on the grid of {path[0]} (the channels of one scan must match)")
        arr = np.concatenate([a for _, a in parts], axis=0)
    x: torch.Tensor = MetaTensor(
        torch.from_numpy(arr), affine=torch.as_tensor(img.affine, dtype=torch.float64)
    )
    if prep.orientation:
        x = Orientation(axcodes=prep.orientation)(x)
    if prep.spacing_mm:
        x = Spacing(pixdim=tuple(prep.spacing_mm), mode="bilinear")(x)
    x = intensity_transform(dict(prep.intensity))(torch.as_tensor(x))  # the contract's transforms, in order
    if prep.crop_foreground:
        thr = prep.foreground_threshold
        x = CropForeground(select_fn=lambda v: v > thr, allow_smaller=True)(x)
    x = x.as_tensor() if hasattr(x, "as_tensor") else x  # plain tensor: no MetaTensor downstream
    x = torch.as_tensor(x, dtype=torch.float32)
    if prep.axis_order == "zyx":
        x = x.permute(0, 3, 2, 1)
    return x.contiguous()


def load_volumes(
    paths: Sequence[str | Path | Sequence[str | Path]], prep: Preprocessing
) -> list[torch.Tensor]:
    """:func:`load_volume` for each path, logging the shapes."""
    vols = [load_volume(p, prep) for p in paths]
    log.info("loaded %d volume(s): %s", len(vols), ", ".join(str(tuple(v.shape[1:])) for v in vols))
    return vols


def _pad_to(x: torch.Tensor, size: Sequence[int], value: float) -> torch.Tensor:
    """Pad ``x`` (C, *spatial) symmetrically up to at least ``size`` per axis."""
    pads: list[int] = []
    for have, want in zip(reversed(x.shape[1:]), reversed(tuple(size)), strict=True):
        extra = max(0, want - have)
        pads += [extra // 2, extra - extra // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


def random_crop(
    x: torch.Tensor, size: Sequence[int], generator: torch.Generator | None = None
) -> torch.Tensor:
    """A uniformly placed ``size`` crop of ``x`` (C, *spatial), padding with its minimum where smaller."""
    x = _pad_to(x, size, float(x.min()))
    starts = [
        int(torch.randint(0, have - want + 1, (1,), generator=generator))
        for have, want in zip(x.shape[1:], size, strict=True)
    ]
    return x[(slice(None), *(slice(s, s + w) for s, w in zip(starts, size, strict=True)))]


def crop_or_pad(x: torch.Tensor, size: Sequence[int], value: float = 0.0) -> torch.Tensor:
    """Centre crop or pad ``x`` (C, *spatial) to ``size`` (torchio's ``CropOrPad``)."""
    x = _pad_to(x, size, value)
    starts = [(have - want) // 2 for have, want in zip(x.shape[1:], size, strict=True)]
    return x[(slice(None), *(slice(s, s + w) for s, w in zip(starts, size, strict=True)))]


class VolumeCropDataset(Dataset):
    """Random ``roi`` crops of in-memory volumes; item ``i`` comes from volume ``i % n``.

    Args:
        volumes: preprocessed ``(C, *spatial)`` tensors.
        roi: crop size; volumes smaller than it are padded with their minimum.
        length: items per epoch (default: one per volume).
        center: take the centre crop/pad instead of a random crop (the joint 2D/3D recipe).

    Returns (item):
        ``{"image": (C, *roi) tensor, "index": i}``.
    """

    def __init__(
        self,
        volumes: Sequence[torch.Tensor],
        roi: Sequence[int],
        length: int | None = None,
        center: bool = False,
    ) -> None:
        if not volumes:
            raise ValueError("VolumeCropDataset needs at least one volume")
        self.volumes = list(volumes)
        self.roi = tuple(int(s) for s in roi)
        if any(len(self.roi) != v.ndim - 1 for v in self.volumes):
            raise ValueError(f"roi {self.roi} must have one entry per spatial axis of the volumes")
        self.length = int(length or len(self.volumes))
        self.center = center

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        vol = self.volumes[i % len(self.volumes)]
        crop = crop_or_pad(vol, self.roi) if self.center else random_crop(vol, self.roi)
        return {"image": crop.contiguous(), "index": i}


class SliceDataset(Dataset):
    """The 2D slices of in-memory volumes along one axis, padded to at least ``min_size``.

    Slices whose foreground (voxels above ``threshold``) covers less than ``min_foreground`` of
    the slice are left out (empty slices carry no signal for the 2D pretext tasks).

    Args:
        volumes: ``(C, *spatial)`` tensors, three spatial axes.
        axis: spatial axis to slice along (-1: the last, axial in RAS ``xyz`` order).
        min_size: in-plane size every slice is padded up to (96 in the IoU thesis).
        min_foreground: least foreground fraction for a slice to be kept.
        threshold: foreground threshold.

    Returns (item):
        ``{"image": (C, H, W) tensor, "index": i}``.
    """

    def __init__(
        self,
        volumes: Sequence[torch.Tensor],
        axis: int = -1,
        min_size: Sequence[int] | int = 0,
        min_foreground: float = 0.05,
        threshold: float = 0.0,
    ) -> None:
        size = (min_size, min_size) if isinstance(min_size, int) else tuple(min_size)
        self.slices: list[torch.Tensor] = []
        for v in volumes:
            if v.ndim != 4:
                raise ValueError(f"SliceDataset needs (C, X, Y, Z) volumes, got shape {tuple(v.shape)}")
            dim = 1 + (axis % 3)
            for s in v.unbind(dim):
                if (s > threshold).float().mean() >= min_foreground:
                    self.slices.append(_pad_to(s, size, float(s.min())).contiguous())
        if not self.slices:
            raise ValueError("no slice has enough foreground; lower min_foreground or check the intensity")

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.slices[i], "index": i}
