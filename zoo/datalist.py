"""Datalists: the JSON files that name a task's scans, read once for every command.

The format is MONAI's (Medical Segmentation Decathlon)::

    {
      "labels": {"0": "background", "1": "tumour"},
      "modality": {"0": "FLAIR", "1": "T1w", "2": "T1gd", "3": "T2w"},
      "training":   [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}, ...],
      "validation": [{"image": ["a_flair.nii.gz", "a_t1.nii.gz", ...], "label": "a_seg.nii.gz"}, ...]
    }

Paths are read by :func:`monai.data.load_decathlon_datalist`, so they are resolved the way
MONAI resolves them: against ``base_dir`` when given, else against the JSON file's folder;
absolute paths stay as they are. An ``image`` may be one file (a 3D volume, or a 4D one with
the channels last) or a list of files, one per channel in order (BraTS style); MONAI's
``LoadImaged`` with ``ensure_channel_first`` stacks such a list as channels.

Two shorter forms name unlabelled scans only (``zoo pretrain``): a bare JSON list of paths or
of ``{"image": ...}`` objects, and string entries inside ``"training"``.

:func:`make_mni_task` writes a small real task of this format from nilearn's MNI152 template.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["read_datalist", "image_channels", "make_mni_task"]

_SPLITS = ("training", "validation")


def is_dicom_series(path: Any) -> bool:
    from zoo.imageio import is_dicom_series as dicom

    return dicom(path)


def read_datalist(
    path: str | Path,
    *,
    base_dir: str | Path | None = None,
    require_label: bool = True,
    splits: Sequence[str] = _SPLITS,
) -> dict[str, Any]:
    """Read a datalist; every file it names is checked to exist.

    Args:
        path: the JSON file.
        base_dir: folder that relative paths are resolved against (default: the file's folder).
        require_label: every entry needs a ``label`` (False: image-only entries are accepted,
            as for prediction or pretraining; a ``label`` given is still checked).
        splits: the lists to read; the first must be present and non-empty, the others may be
            absent (then empty).

    Returns:
        ``{split: [entry, ...] for each split, "labels": {int: name} or None,
        "num_modalities": int or None}``; each entry is the datalist's dictionary with absolute
        paths, ``image`` a ``str`` or a ``list[str]`` (one file per channel, in order).

    Raises:
        ValueError: one line naming the file and the entry: an unreadable JSON, no ``splits[0]``
            cases, an entry without ``image`` (or ``label``), a path that is not a string,
            a file that does not exist.
    """
    path = Path(path)
    base = Path(base_dir if base_dir is not None else path.parent).resolve()
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON datalist ({' '.join(str(e).split())})") from e
    bare = isinstance(raw, list)
    if bare:  # a bare list of scans: the first split, nothing else
        raw = {splits[0]: raw}
    if not isinstance(raw, Mapping):
        raise ValueError(
            f"{path}: expected a JSON object with a {splits[0]!r} list, found {type(raw).__name__}"
        )
    out: dict[str, Any] = {}
    for split in splits:
        items = raw.get(split)
        if items is None or items == []:
            out[split] = []
            continue
        if not isinstance(items, list):
            raise ValueError(f"{path}: {split!r} must be a list of entries, found {type(items).__name__}")
        out[split] = _entries(path, base, split, items, require_label, by_monai=not bare)
    if not out[splits[0]]:
        found = f"found keys {sorted(raw)}" if splits[0] not in raw else "it is empty"
        raise ValueError(f"{path}: the datalist has no {splits[0]!r} cases ({found})")
    labels = raw.get("labels")
    if isinstance(labels, Mapping):
        labels = {int(k): str(v) for k, v in labels.items()}
    elif isinstance(labels, list):
        labels = dict(enumerate(map(str, labels)))
    else:
        labels = None
    modality = raw.get("modality")
    out["labels"] = labels
    out["num_modalities"] = len(modality) if isinstance(modality, Mapping | list) else None
    return out


def _entries(
    path: Path, base: Path, split: str, items: list[Any], require_label: bool, by_monai: bool
) -> list[dict[str, Any]]:
    """One split's entries: checked, then resolved by MONAI (the short forms: the same way, here)."""
    from monai.data import load_decathlon_datalist

    needed = ("image", "label") if require_label else ("image",)
    for i, item in enumerate(items):
        if isinstance(item, str) and not require_label:
            continue
        if not isinstance(item, Mapping) or any(k not in item for k in needed):
            keys = sorted(item) if isinstance(item, Mapping) else type(item).__name__
            raise ValueError(
                f"{path}: {split}[{i}] needs {' and '.join(repr(k) for k in needed)} entries, found {keys}"
            )
        for k in ("image", "label"):
            if k in item:
                _check_kind(path, f"{split}[{i}] {k}", item[k], allow_list=k == "image")
    if by_monai and all(isinstance(item, Mapping) for item in items):
        resolved = load_decathlon_datalist(path, is_segmentation=True, data_list_key=split, base_dir=base)
    else:  # a bare list, string entries: not MONAI's form; joined as MONAI joins (os.path.join)
        resolved = [
            {"image": os.path.normpath(os.path.join(base, item))}
            if isinstance(item, str)
            else dict(item, **{k: _join(base, item[k]) for k in ("image", "label") if k in item})
            for item in items
        ]
    for i, entry in enumerate(resolved):
        for k in ("image", "label"):
            files = entry.get(k)
            for j, f in enumerate([files] if isinstance(files, str) else files or []):
                if not (Path(f).is_file() or is_dicom_series(f)):  # a DICOM series is a folder
                    where = f"{k}[{j}]" if isinstance(files, list) else k
                    raise ValueError(f"{path}: {split}[{i}] {where} {f} does not exist")
    return resolved


def _join(base: Path, value: str | list[str]) -> str | list[str]:
    if isinstance(value, str):
        return os.path.normpath(os.path.join(base, value))
    return [os.path.normpath(os.path.join(base, v)) for v in value]


def _check_kind(path: Path, where: str, value: Any, allow_list: bool) -> None:
    if isinstance(value, str) and value:
        return
    if allow_list and isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return
    what = "a path or a non-empty list of paths (one per channel)" if allow_list else "a path"
    raise ValueError(f"{path}: {where} must be {what}, found {value!r}")


def image_channels(image: str | Sequence[str]) -> int:
    """The input channels of an entry's ``image``: the list's length, or a 4D file's last axis.

    Raises:
        ValueError: a list whose files are not single 3D volumes (each file is one channel).
    """
    from zoo.imageio import header_shape  # NIfTI, DICOM series, NRRD, MetaImage: headers only

    if isinstance(image, str):
        shape = header_shape(image)
        return shape[3] if len(shape) == 4 else 1
    for f in image:
        shape = header_shape(f)
        if len(shape) > 3 and any(s > 1 for s in shape[3:]):
            raise ValueError(f"{f}: a file of a per-channel image list must be one 3D volume, found {shape}")
    return len(image)


def make_mni_task(
    out_dir: str | Path,
    n_train: int = 4,
    n_val: int = 2,
    spacing_mm: float = 2.0,
    threshold: float = 0.5,
    seed: int = 0,
) -> Path:
    """A small real segmentation task from nilearn's MNI152 template: write NIfTI files and a datalist.

    Image: the MNI152 2009a T1 template; label: 1 (grey matter) where the template's grey-
    matter probability is ≥ ``threshold`` and not below the white-matter one, 2 (white
    matter) where the white-matter probability is ≥ ``threshold`` and above the grey-matter
    one, else 0. Every case is the template and its maps resampled to ``spacing_mm`` and
    warped by its own random elastic + affine deformation (training and validation cases
    use different random draws), with 2 % Gaussian intensity noise.

    Args:
        out_dir: folder for ``imagesTr/``, ``labelsTr/`` and ``datalist.json``.
        n_train / n_val: number of training / validation cases.
        spacing_mm: isotropic voxel size of the written volumes.
        threshold: probability threshold of the tissue labels.
        seed: seed of the deformations.

    Returns:
        The path of ``datalist.json``.
    """
    import nibabel as nib
    import numpy as np
    from monai import transforms as T

    from zoo.predict import sample_volume_path

    t1 = sample_volume_path()
    maps = {k: t1.with_name(t1.name.replace("_t1_", f"_{k}_")) for k in ("gm", "wm")}
    out = Path(out_dir)
    for sub in ("imagesTr", "labelsTr"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    keys = ("image", "gm", "wm")
    load = T.Compose(
        [
            T.LoadImaged(keys, image_only=True),
            T.EnsureChannelFirstd(keys),
            T.Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            T.Spacingd(keys, pixdim=(spacing_mm,) * 3, mode="bilinear"),
        ]
    )
    base = load({"image": str(t1), "gm": str(maps["gm"]), "wm": str(maps["wm"])})
    affine = np.asarray(base["image"].affine, dtype=np.float64)
    scale = float(base["image"].as_tensor().quantile(0.99))
    warp = T.Rand3DElasticd(
        keys,
        sigma_range=(6.0, 8.0),
        magnitude_range=(40.0, 80.0),
        prob=1.0,
        rotate_range=(0.15, 0.15, 0.15),
        scale_range=(0.08, 0.08, 0.08),
        mode="bilinear",
        padding_mode="zeros",
    )
    entries: dict[str, list[dict[str, str]]] = {"training": [], "validation": []}
    for split, count, offset in (("training", n_train, 0), ("validation", n_val, 10_000)):
        for i in range(count):
            warp.set_random_state(seed + offset + i)
            rng = np.random.default_rng(seed + offset + i)
            case = warp({k: base[k].clone() for k in keys})
            img = case["image"].as_tensor()[0].numpy() / scale
            img = (img + rng.normal(0.0, 0.02, img.shape) * (img > 0.05)).astype(np.float32)
            gm, wm = (case[k].as_tensor()[0].numpy() for k in ("gm", "wm"))
            label = np.zeros(gm.shape, np.uint8)
            label[(gm >= threshold) & (gm >= wm)] = 1
            label[(wm >= threshold) & (wm > gm)] = 2
            stem = f"{'train' if split == 'training' else 'val'}_{i:03d}.nii.gz"
            nib.save(nib.Nifti1Image(img, affine), str(out / "imagesTr" / stem))
            nib.save(nib.Nifti1Image(label, affine), str(out / "labelsTr" / stem))
            entries[split].append({"image": f"imagesTr/{stem}", "label": f"labelsTr/{stem}"})
    datalist = {
        "name": "MNI152 tissue (medzoo sample task)",
        "description": (
            f"nilearn MNI152 2009a T1 at {spacing_mm} mm, elastically deformed per case; labels from the "
            f"GM/WM probability maps thresholded at {threshold}"
        ),
        "labels": {"0": "background", "1": "grey matter", "2": "white matter"},
        "modality": {"0": "T1"},
        **entries,
    }
    path = out / "datalist.json"
    path.write_text(json.dumps(datalist, indent=2) + "\n")
    return path
