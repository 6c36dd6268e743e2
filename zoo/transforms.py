"""Data transforms: the preprocessing contract of a model's weights, and pretraining crops.

**The preprocessing contract.** Every weights tag states, as data, how a scan becomes its input:
:class:`InputContract` (orientation, spacing, axis order, intensity transform, and for 2D models
the slice axis). The registry's ``preprocessing`` mapping holds these under the keys
``orientation`` (an axis code such as ``"RAS"``, or None to keep the file's), ``spacing_mm``
(``[x, y, z]`` or None to keep the grid), ``axis_order`` (``"xyz"`` or ``"zyx"``: axial axis
first, for models trained on SimpleITK arrays), ``intensity_transform`` and ``slice_axis``; any
other key is documentation for people and is never read by code. :func:`for_model` turns it into
the MONAI ``Compose`` that ``zoo predict`` and ``zoo finetune`` use themselves, and
:func:`parse_intensity` is the one reader of intensity settings (registry, CLI flags, run configs).

Intensity transforms, in their canonical form (:func:`canonical_intensity`):

* ``{"kind": "zscore", "nonzero": bool, "channel_wise": bool}``: MONAI ``NormalizeIntensity``;
  ``"zscore_nonzero"`` is shorthand for ``nonzero=True, channel_wise=True``;
* ``{"kind": "clip_scale", "a_min", "a_max", "b_min", "b_max", "clip"}``: MONAI
  ``ScaleIntensityRange`` (clip to ``[a_min, a_max]``, map linearly to ``[b_min, b_max]``);
* ``{"kind": "none"}``.

``IoUPairCropd`` draws the positive pairs of the IoU-positives thesis (Konieczkowicz, AGH;
reference ``src/transforms.py::IoUCropd`` of dittohed/exploring-ssl-for-ct): two equal square
(or cubic) crops of one image whose box IoU lies in ``[min_iou, max_iou]``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import Crop, MapTransform, Randomizable

__all__ = [
    "IoUPair",
    "IoUPairCropd",
    "box_iou",
    "INTENSITY_KINDS",
    "canonical_intensity",
    "parse_intensity",
    "InputContract",
    "contract_of",
    "for_model",
    "LABEL_KEYS",
    "AsLabeld",
    "ReplaceNonFinited",
    "ZScored",
]

log = logging.getLogger("zoo")

INTENSITY_KINDS = ("zscore_nonzero", "zscore", "clip_scale", "none")
_AXCODE_GROUPS = (set("LR"), set("AP"), set("SI"))
# The spellings every command accepts for the kinds (``zoo finetune`` used dashes).
_KIND_ALIASES = {"zscore-nonzero": "zscore_nonzero", "clip-scale": "clip_scale"}


def box_iou(start1: Sequence[int], start2: Sequence[int], size: int) -> float:
    """IoU of two axis-aligned hypercubes of side ``size`` given their start corners.

    Boxes are half-open, ``[start, start + size)`` along each axis, so crops that only touch
    have IoU 0.
    """
    inter = 1
    for a, b in zip(start1, start2, strict=True):
        inter *= max(0, min(a, b) + size - max(a, b))
    volume = size ** len(start1)
    return inter / (2 * volume - inter)


@dataclass(frozen=True)
class IoUPair:
    """One drawn pair: start corners (spatial axes, image order), IoU, and whether it is in range."""

    start1: tuple[int, ...]
    start2: tuple[int, ...]
    iou: float
    found: bool
    draws: int


class IoUPairCropd(Randomizable, MapTransform):
    """Crop two equal squares/cubes from each image whose box IoU lies in ``[min_iou, max_iou]``.

    Sampling follows the thesis's Algorithm 1: draw the first crop uniformly inside the image,
    then draw the second up to ``r1 = max_retries_existing`` times; if none lands in the IoU
    interval (closed at both ends) draw a new first crop, for at most
    ``r2 = ceil(max_retries_total / max_retries_existing)`` rounds (30 and 120 → 4 in the
    thesis). When ``min_iou > 0`` the second crop is drawn only where it can overlap the first
    (starts within ``crop_size`` of the first's, clipped to the image). If every round fails, the
    last drawn pair is returned anyway, as the reference does; such fallbacks are counted in
    :attr:`num_fallbacks` (and marked in ``info_key`` when set) instead of printed.

    Every key gets the same two boxes: ``data[key]`` (channel-first, ``spatial_dims`` spatial
    axes) becomes ``data[f"{key}1"]`` and ``data[f"{key}2"]``; the original is removed unless
    ``keep_original``.

    Args:
        keys: keys of the images to crop (all must share their spatial shape).
        crop_size: side of both crops (96 in the thesis).
        min_iou: lower IoU bound, in [0, 1].
        max_iou: upper IoU bound, in [min_iou, 1]; ``[0, 1]`` is plain random cropping.
        spatial_dims: 2 for slices (the thesis), 3 for volumes.
        max_retries_existing: r1, draws of the second crop per first crop.
        max_retries_total: draw budget; r2 = ceil(budget / r1) rounds.
        keep_original: keep ``data[key]`` next to the crops.
        info_key: when set, ``data[info_key]`` receives ``{"iou", "found", "start1", "start2"}``,
            which survives DataLoader workers (the counters live in each worker's copy).
        allow_missing_keys: skip absent keys instead of raising.

    Raises:
        ValueError: for bounds outside [0, 1] or reversed, non-positive sizes or retries, and,
            when called, a crop larger than the image or a wrong number of dimensions.

    Example:
        >>> t = IoUPairCropd("img", crop_size=96, min_iou=0.3, max_iou=0.6).set_random_state(0)
        >>> out = t({"img": torch.rand(1, 200, 180)})
        >>> out["img1"].shape, out["img2"].shape
        (torch.Size([1, 96, 96]), torch.Size([1, 96, 96]))
    """

    def __init__(
        self,
        keys: KeysCollection,
        crop_size: int = 96,
        min_iou: float = 0.0,
        max_iou: float = 1.0,
        spatial_dims: int = 2,
        max_retries_existing: int = 30,
        max_retries_total: int = 120,
        keep_original: bool = False,
        info_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not (0.0 <= min_iou <= max_iou <= 1.0):
            raise ValueError(
                f"expected 0 <= min_iou <= max_iou <= 1, got min_iou={min_iou}, max_iou={max_iou}"
            )
        if int(crop_size) != crop_size or crop_size < 1:
            raise ValueError(f"crop_size must be a positive integer, got {crop_size!r}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        if max_retries_existing < 1 or max_retries_total < 1:
            raise ValueError(
                "max_retries_existing and max_retries_total must be >= 1, got "
                f"{max_retries_existing} and {max_retries_total}"
            )
        self.crop_size = int(crop_size)
        self.min_iou = float(min_iou)
        self.max_iou = float(max_iou)
        self.spatial_dims = spatial_dims
        self.max_retries_existing = int(max_retries_existing)
        self.max_rounds = math.ceil(max_retries_total / max_retries_existing)
        self.keep_original = keep_original
        self.info_key = info_key
        self._cropper = Crop()
        self.last_pair: IoUPair | None = None
        self.reset_stats()

    # -- statistics ------------------------------------------------------------------------

    def reset_stats(self) -> None:
        """Zero the pair and fallback counters."""
        self.num_pairs = 0
        self.num_fallbacks = 0

    @property
    def fallback_rate(self) -> float:
        """Fraction of pairs returned without meeting the IoU interval (0 before any call)."""
        return self.num_fallbacks / self.num_pairs if self.num_pairs else 0.0

    @property
    def stats(self) -> dict[str, float]:
        """``{"pairs", "fallbacks", "fallback_rate"}`` since construction or :meth:`reset_stats`."""
        return {"pairs": self.num_pairs, "fallbacks": self.num_fallbacks, "fallback_rate": self.fallback_rate}

    # -- sampling --------------------------------------------------------------------------

    def _draw(self, low: Sequence[int], high: Sequence[int]) -> tuple[int, ...]:
        start = [0] * len(low)
        # Reference draw order (its x = image axis 1 first, then axis 0, then axis 2), so a
        # seeded RandomState draws the reference's crops.
        for axis in (1, 0, *range(2, len(low))):
            start[axis] = int(self.R.randint(low[axis], high[axis] + 1))
        return tuple(start)

    def randomize(self, spatial_shape: Sequence[int]) -> IoUPair:
        """Draw one pair of crop start corners for an image of ``spatial_shape``."""
        shape = tuple(int(s) for s in spatial_shape)
        if len(shape) != self.spatial_dims:
            raise ValueError(f"expected {self.spatial_dims} spatial dims, found spatial shape {shape}")
        if any(s < self.crop_size for s in shape):
            raise ValueError(
                f"crop_size {self.crop_size} is larger than the image: spatial shape {shape} "
                f"(pad the image to at least {self.crop_size} per axis first)"
            )
        c = self.crop_size
        whole_low, whole_high = (0,) * len(shape), tuple(s - c for s in shape)
        draws = 0
        for _ in range(self.max_rounds):
            start1 = self._draw(whole_low, whole_high)
            if self.min_iou > 0:
                low = tuple(max(a - c, 0) for a in start1)
                high = tuple(min(a + 2 * c, s) - c for a, s in zip(start1, shape, strict=True))
            else:
                low, high = whole_low, whole_high
            for _ in range(self.max_retries_existing):
                start2 = self._draw(low, high)
                draws += 1
                iou = box_iou(start1, start2, c)
                if self.min_iou <= iou <= self.max_iou:
                    return IoUPair(start1, start2, iou, True, draws)
        return IoUPair(start1, start2, iou, False, draws)

    def _slices(self, start: Sequence[int]) -> tuple[slice, ...]:
        return tuple(slice(a, a + self.crop_size) for a in start)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        shapes = {k: tuple(np.shape(d[k])) for k in keys}
        for k, shp in shapes.items():
            if len(shp) != self.spatial_dims + 1:
                raise ValueError(
                    f"{k!r}: expected a channel-first image with {self.spatial_dims} spatial dims "
                    f"({self.spatial_dims + 1} dims), found shape {shp}"
                )
        spatial = {shp[1:] for shp in shapes.values()}
        if len(spatial) != 1:
            raise ValueError(
                f"all keys must share one spatial shape to receive the same crops, found {shapes}"
            )

        pair = self.randomize(spatial.pop())
        self.last_pair = pair
        self.num_pairs += 1
        self.num_fallbacks += not pair.found
        for k in keys:
            d[f"{k}1"] = self._cropper(d[k], self._slices(pair.start1))
            d[f"{k}2"] = self._cropper(d[k], self._slices(pair.start2))
            if not self.keep_original:
                del d[k]
        if self.info_key is not None:
            d[self.info_key] = {
                "iou": pair.iou,
                "found": pair.found,
                "start1": pair.start1,
                "start2": pair.start2,
            }
        return d


# ---------------------------------------------------------------------------------------------
# the preprocessing contract


def canonical_intensity(spec: Mapping[str, Any] | str) -> dict[str, Any]:
    """An intensity transform in its one explicit form, checked.

    Args:
        spec: ``{"kind": …, …}`` or a bare kind name (see the module docstring).

    Returns:
        ``{"kind": "zscore", "nonzero", "channel_wise"}``, ``{"kind": "clip_scale", "a_min",
        "a_max", "b_min", "b_max", "clip"}`` or ``{"kind": "none"}``.

    Raises:
        ValueError: unknown kind, or missing/invalid ``clip_scale`` bounds.
    """
    cfg = {"kind": spec} if isinstance(spec, str) else dict(spec)
    kind = _KIND_ALIASES.get(cfg.get("kind"), cfg.get("kind"))
    if kind == "zscore_nonzero":
        return {"kind": "zscore", "nonzero": True, "channel_wise": bool(cfg.get("channel_wise", True))}
    if kind == "zscore":
        nonzero, channel_wise = bool(cfg.get("nonzero", False)), bool(cfg.get("channel_wise", True))
        return {"kind": "zscore", "nonzero": nonzero, "channel_wise": channel_wise}
    if kind == "clip_scale":
        missing = [k for k in ("a_min", "a_max", "b_min", "b_max") if k not in cfg]
        if missing:
            raise ValueError(f"intensity_transform clip_scale needs {', '.join(missing)}; got {cfg}")
        try:
            out = {k: float(cfg[k]) for k in ("a_min", "a_max", "b_min", "b_max")}
        except (TypeError, ValueError) as e:
            raise ValueError(f"intensity_transform clip_scale needs numbers, got {cfg}") from e
        if not all(math.isfinite(v) for v in out.values()):
            raise ValueError(f"intensity_transform clip_scale needs finite bounds, got {cfg}")
        if not out["a_max"] > out["a_min"]:
            raise ValueError(f"intensity_transform clip_scale needs a_max > a_min, got {cfg}")
        return {"kind": "clip_scale", **out, "clip": bool(cfg.get("clip", True))}
    if kind == "none":
        return {"kind": "none"}
    raise ValueError(
        f"intensity_transform: unknown kind {kind!r}; expected one of {', '.join(INTENSITY_KINDS)}"
    )


def parse_intensity(value: str | Mapping[str, Any]) -> dict[str, Any]:
    """The one reader of intensity settings: registry entries, run configs and every CLI flag.

    Args:
        value: a mapping, a kind name (``zscore``, ``zscore_nonzero`` / ``zscore-nonzero``,
            ``none``), a JSON object (``'{"kind": "clip_scale", "a_min": -1000, …}'``), or the
            short form ``clip:a_min,a_max,b_min,b_max``.

    Returns:
        The canonical form (:func:`canonical_intensity`).

    Raises:
        ValueError: anything else, naming what was expected and what was found.
    """
    if isinstance(value, Mapping):
        return canonical_intensity(value)
    if not isinstance(value, str):
        raise ValueError(f"intensity: expected a kind name, JSON or clip:a,b,c,d; found {value!r}")
    text = value.strip()
    if text.startswith("{"):
        try:
            cfg = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"intensity: not valid JSON ({e}): {text}") from e
        if not isinstance(cfg, dict):
            raise ValueError(f"intensity: expected a JSON object, found {text}")
        return canonical_intensity(cfg)
    if text.startswith("clip:"):
        parts = text[5:].split(",")
        try:
            vals = [float(v) for v in parts]
        except ValueError:
            vals = []
        if len(vals) != 4:
            raise ValueError(f"intensity: clip:a_min,a_max,b_min,b_max needs 4 numbers, found {text!r}")
        return canonical_intensity(
            dict(zip(("a_min", "a_max", "b_min", "b_max"), vals, strict=True), kind="clip_scale")
        )
    kind = _KIND_ALIASES.get(text, text)
    if kind not in INTENSITY_KINDS:
        raise ValueError(
            f"intensity_transform: unknown kind {text!r}; expected one of {', '.join(INTENSITY_KINDS)}, "
            "a JSON object or clip:a_min,a_max,b_min,b_max"
        )
    return canonical_intensity(kind)


def _axcode(value: Any, where: str) -> str | None:
    if value is None:
        return None
    code = str(value).strip().upper()
    if len(code) == 3 and all(sum(ch in group for ch in code) == 1 for group in _AXCODE_GROUPS):
        return code
    raise ValueError(
        f"{where}orientation: expected an axis code such as 'RAS' or null (keep the file's), found {value!r}"
    )


@dataclass(frozen=True)
class InputContract:
    """How a scan becomes the input of a model's weights; the one typed form of ``preprocessing``.

    Attributes:
        orientation: axis code the volume is reoriented to, or None to keep the file's.
        spacing_mm: ``(x, y, z)`` voxel size to resample to (after reorientation), or None.
        axis_order: ``"xyz"`` (nibabel order) or ``"zyx"`` (axial axis first).
        intensity: canonical intensity transform (:func:`canonical_intensity`).
        slice_axis: for 2D models, the spatial axis (0, 1, 2 of the reoriented volume) along
            which the volume is cut into slices; None for 3D models.
        crop_foreground: crop to the bounding box of voxels above ``foreground_threshold`` (after
            the intensity transform), as MONAI's ``CropForeground``; the pretraining recipes'
            volumes (prediction keeps the whole grid).
        foreground_threshold: see ``crop_foreground``.
    """

    orientation: str | None = "RAS"
    spacing_mm: tuple[float, float, float] | None = None
    axis_order: str = "xyz"
    intensity: Mapping[str, Any] = field(default_factory=lambda: canonical_intensity("zscore_nonzero"))
    slice_axis: int | None = None
    crop_foreground: bool = False
    foreground_threshold: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "orientation", _axcode(self.orientation, ""))
        if self.axis_order not in ("xyz", "zyx"):
            raise ValueError(f"axis_order: expected 'xyz' or 'zyx', found {self.axis_order!r}")
        if self.spacing_mm is not None:
            sp = self.spacing_mm
            ok = isinstance(sp, list | tuple) and len(sp) == 3
            ok = ok and all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in sp)
            if not ok:
                raise ValueError(f"spacing_mm: expected 3 positive numbers (mm) or null, found {sp!r}")
            object.__setattr__(self, "spacing_mm", tuple(float(v) for v in sp))
        object.__setattr__(self, "intensity", parse_intensity(self.intensity))
        if self.slice_axis is not None and self.slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis: expected 0, 1, 2 or null, found {self.slice_axis!r}")
        if not isinstance(self.crop_foreground, bool):
            raise ValueError(f"crop_foreground: expected true or false, found {self.crop_foreground!r}")
        thr = self.foreground_threshold
        if isinstance(thr, bool) or not isinstance(thr, int | float) or not math.isfinite(thr):
            raise ValueError(f"foreground_threshold: expected a number, found {thr!r}")

    @classmethod
    def from_preprocessing(cls, prep: Mapping[str, Any] | None, where: str = "") -> InputContract:
        """Read the structured keys of a ``preprocessing`` mapping (registry, run config).

        Args:
            prep: the mapping; keys other than the contract's are documentation and ignored.
            where: prefix for error messages (``"qtunet-t.ct-ssl: "``).

        Returns:
            The contract. A mapping without ``intensity_transform`` gets z-score over nonzero
            voxels, logged.

        Raises:
            ValueError: a structured key holding something else than its type (free text
                included: text is never interpreted).
        """
        prep = dict(prep or {})
        for key in ("orientation", "spacing_mm"):
            if prep.get(key) == "native":  # the token older run configs wrote for null; not free text
                prep[key] = None
        intensity = prep.get("intensity_transform")
        if intensity is None:
            log.info("%sno intensity_transform stated; using z-score over nonzero voxels", where)
            intensity = "zscore_nonzero"
        try:
            return cls(
                orientation=_axcode(prep["orientation"], where) if "orientation" in prep else "RAS",
                spacing_mm=prep.get("spacing_mm"),
                axis_order=prep.get("axis_order", "xyz"),
                intensity=intensity,
                slice_axis=prep.get("slice_axis"),
                # A bool is the contract's; text (the registry's "image > 0, margin 1") documents it.
                crop_foreground=prep.get("crop_foreground") is True,
                foreground_threshold=prep.get("foreground_threshold", 0.0),
            )
        except ValueError as e:
            msg = str(e)
            raise ValueError(msg if msg.startswith(where) else where + msg) from None

    def replace(self, **changes: Any) -> InputContract:
        """A copy with ``changes`` (None values are ignored: "no override")."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        """The structured keys, JSON-ready (what a run's ``config.json`` records)."""
        return {
            "orientation": self.orientation,
            "spacing_mm": list(self.spacing_mm) if self.spacing_mm else None,
            "axis_order": self.axis_order,
            "intensity_transform": dict(self.intensity),
            "slice_axis": self.slice_axis,
            "crop_foreground": self.crop_foreground,
            "foreground_threshold": self.foreground_threshold,
        }

    def transforms(
        self, keys: Sequence[str] = ("image",), label_keys: Sequence[str] = (), load: bool = True
    ) -> list[Any]:
        """The MONAI dictionary transforms of the contract, in order.

        Load → channel first → non-finite voxels to 0 → orientation → spacing → intensity →
        axis order. ``keys`` are images (float32, bilinear, intensity); ``label_keys`` are label
        maps: read in the file's type, resampled nearest, never intensity-transformed, and
        int64 at the end (:class:`AsLabeld`), so their values survive.
        """
        from monai import transforms as T

        images, labels = tuple(keys), tuple(label_keys)
        every = images + labels
        if not every or set(images) & set(labels):
            raise ValueError(f"keys {images} and label_keys {labels}: expected disjoint, not both empty")
        steps: list[Any] = []
        if load:
            if images:
                steps.append(T.LoadImaged(images, image_only=True))
            if labels:  # the file's integers, not float32
                steps.append(T.LoadImaged(labels, image_only=True, dtype=None))
            steps.append(T.EnsureChannelFirstd(every))
        if images:  # before resampling spreads them
            steps.append(ReplaceNonFinited(images))
        if self.orientation:
            steps.append(
                T.Orientationd(every, axcodes=self.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S")))
            )
        if self.spacing_mm:
            modes = ("bilinear",) * len(images) + ("nearest",) * len(labels)
            steps.append(T.Spacingd(every, pixdim=self.spacing_mm, mode=modes))
        if images:
            steps += self._intensity_steps(images, every)
        if self.axis_order == "zyx":
            steps.append(T.Transposed(every, indices=(0, 3, 2, 1)))
        if labels:
            steps.append(AsLabeld(labels))
        return steps

    def _intensity_steps(self, images: tuple[str, ...], every: tuple[str, ...]) -> list[Any]:
        """The intensity transform of ``images``, then the foreground crop of ``every`` key."""
        from monai import transforms as T

        steps: list[Any] = []
        it = self.intensity
        if it["kind"] == "clip_scale":
            steps.append(
                T.ScaleIntensityRanged(
                    images, it["a_min"], it["a_max"], it["b_min"], it["b_max"], clip=it["clip"]
                )
            )
        elif it["kind"] == "zscore":
            steps.append(ZScored(images, nonzero=it["nonzero"], channel_wise=it["channel_wise"]))
        if self.crop_foreground:
            thr = float(self.foreground_threshold)
            steps.append(
                T.CropForegroundd(
                    every, source_key=images[0], select_fn=lambda v: v > thr, allow_smaller=True
                )
            )
        return steps

    def compose(
        self, keys: Sequence[str] = ("image",), label_keys: Sequence[str] = (), load: bool = True
    ) -> Any:
        """:meth:`transforms` as a MONAI ``Compose``."""
        from monai.transforms import Compose

        return Compose(self.transforms(keys, label_keys, load))


def contract_of(model_or_name: Any) -> InputContract:
    """The contract of a model built by ``zoo.create`` or of a registry name (``name.tag``).

    A name without a tag uses the default tag's preprocessing, else the architecture's
    documented one (``meta["preprocessing"]``).
    """
    if isinstance(model_or_name, str):
        from zoo._registry import resolve

        spec, tag = resolve(model_or_name)
        tag = tag or spec.default_tag
        prep = spec.weight(tag).preprocessing if tag else spec.meta.get("preprocessing")
        where = f"{spec.name}.{tag}: " if tag else f"{spec.name}: "
        return InputContract.from_preprocessing(prep, where)
    cfg = getattr(model_or_name, "pretrained_cfg", None) or {}
    prep = cfg.get("preprocessing")
    if not prep and cfg.get("name"):
        from zoo._registry import get_spec

        prep = get_spec(cfg["name"]).meta.get("preprocessing")
    return InputContract.from_preprocessing(prep, f"{cfg.get('name', 'model')}: ")


LABEL_KEYS = ("label", "seg")
"""The dictionary keys :func:`for_model` treats as label maps unless told otherwise."""


def for_model(
    model_or_name: Any, keys: Sequence[str] = ("image",), label_keys: Sequence[str] | None = None
) -> Any:
    """The MONAI ``Compose`` that turns file paths into what a model's weights expect.

    Images get the weights' whole contract; label maps are read as integers, oriented and
    resampled with nearest-neighbour like their image, and never intensity-transformed.

    Args:
        model_or_name: a model from ``zoo.create`` (its ``pretrained_cfg``), or a registry name.
        keys: dictionary keys holding image or label paths.
        label_keys: which keys hold label maps (added to ``keys`` when missing there); default
            those of ``keys`` named ``label`` or ``seg`` (:data:`LABEL_KEYS`).

    Returns:
        ``Compose`` of LoadImaged → EnsureChannelFirstd → non-finite to 0 → Orientationd →
        Spacingd → intensity → Transposed (axial-first models); ``zoo predict`` runs the same
        transforms on images, ``zoo finetune`` on images and labels.

    Example:
        >>> t = zoo.transforms.for_model("pctnet.vf110k", keys=("image", "label"))
        >>> d = t({"image": "ct.nii.gz", "label": "seg.nii.gz"})
        >>> d["image"]  # (1, Z, Y, X) float32, HU clipped to [-1, 1]
        >>> d["label"]  # (1, Z, Y, X) int64, the file's label values on the same grid
    """
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    if label_keys is None:
        labels = tuple(k for k in keys if k in LABEL_KEYS)
    else:
        labels = (label_keys,) if isinstance(label_keys, str) else tuple(label_keys)
    images = tuple(k for k in keys if k not in labels)
    return contract_of(model_or_name).compose(images, labels)


class AsLabeld(MapTransform):
    """Label maps as int64, rounded; a map that was not integer-valued is named in a warning."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key])
            if x.is_floating_point():
                rounded = x.round()
                if x.numel() and bool((x - rounded).abs().max() > 1e-3):
                    log.warning("%s: a label map with non-integer values; rounded to integers", key)
                x = rounded
            d[key] = x.to(torch.int64)
        return d


class ReplaceNonFinited(MapTransform):
    """Set NaN/inf voxels to 0 and log how many (a model given one NaN returns NaN everywhere)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            bad = ~torch.isfinite(torch.as_tensor(x))
            n = int(bad.sum())
            if n:
                log.warning("%s: %d non-finite voxel(s) set to 0", key, n)
                x = x.clone()
                x[bad] = 0
                d[key] = x
        return d


class ZScored(MapTransform):
    """MONAI ``NormalizeIntensity`` that reports the share of voxels it counted as foreground.

    With ``nonzero=True`` the mean and std come from nonzero voxels only. When the background is
    near zero but not zero (resampled or noisy scans) it is counted as foreground and the
    statistics go wrong silently; a warning says so when much of the counted foreground sits
    within 1 % of the 99th-percentile magnitude of zero.
    """

    def __init__(self, keys: KeysCollection, nonzero: bool = True, channel_wise: bool = True) -> None:
        from monai.transforms import NormalizeIntensity

        super().__init__(keys)
        self.nonzero = nonzero
        self.t = NormalizeIntensity(nonzero=nonzero, channel_wise=channel_wise)
        self.last_foreground_share: float | None = None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            if self.nonzero:
                self.last_foreground_share = self._report(key, torch.as_tensor(x))
            d[key] = self.t(x.clone())  # NormalizeIntensity may write into its input
        return d

    @staticmethod
    def _report(key: Hashable, x: torch.Tensor) -> float:
        flat = x.detach().reshape(-1).float()
        fg = flat != 0
        share = float(fg.float().mean())
        log.info(
            "z-score over nonzero voxels of %s: %.1f %% of voxels counted as foreground", key, 100 * share
        )
        if fg.any():
            mags = flat[fg].abs()
            sample = mags[:: max(1, mags.numel() // 1_000_000)]
            ref = float(torch.quantile(sample, 0.99))
            faint = float((mags < 0.01 * ref).float().mean()) if ref > 0 else 0.0
            if faint > 0.1:
                log.warning(
                    "z-score over nonzero voxels of %s: %.1f %% of voxels counted as foreground, %.0f %% of "
                    "them within 1 %% of zero: background noise is probably counted; zero the background "
                    "first or use another intensity transform",
                    key,
                    100 * share,
                    100 * faint,
                )
        return share
