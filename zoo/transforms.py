"""Data transforms that belong to a model's pretraining recipe.

``IoUPairCropd`` draws the positive pairs of the IoU-positives thesis (Konieczkowicz, AGH;
reference ``src/transforms.py::IoUCropd`` of dittohed/exploring-ssl-for-ct): two equal square
(or cubic) crops of one image whose box IoU lies in ``[min_iou, max_iou]``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import Crop, MapTransform, Randomizable

__all__ = ["IoUPair", "IoUPairCropd", "box_iou"]


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
