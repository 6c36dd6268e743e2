"""Volume Fusion (MIS-FM, Wang et al. 2023): segment which mix of two scans each voxel is.

Paper §3.1 / Alg. 1 (spec pctnet §3.1), in the version of PyMIC's January-2024
``volume_fusion`` (spec §3.2), which matches the paper: a *background* sub-volume ``I_b`` and a
*foreground* sub-volume ``I_f`` from two different scans are fused voxel-wise,

    X = α · I_f + (1 − α) · I_b,   α ∈ {0, 1/K, …, 1},

where α is painted by M ~ U{10 … 40} boxes placed one after another at uniform centres,
sides D 8–40, H 8–80, W 8–80 voxels, each with a level drawn from {1, …, K}; later boxes
overwrite earlier ones. The target is the level map (class k ⇔ α = k/K, K + 1 = 5 classes),
learnt with ½ (soft Dice + cross-entropy). ``I_f`` is the next scan of the batch
(``torch.roll(x, 1, 0)``), as in that code.

Not the later PyMIC variant (Sep 2024, ``crop4vf.py``): that one crops both sub-volumes
from the *same* scan and paints a regular grid of blocks with a 0.7 foreground ratio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.ssl.data import Preprocessing, VolumeCropDataset
from zoo.ssl.recipe import Export, Recipe, register_recipe

__all__ = [
    "FusionBox",
    "draw_fusion_boxes",
    "paint_boxes",
    "fuse",
    "volume_fusion",
    "fusion_loss",
    "VolumeFusion",
]

Size3 = tuple[int, int, int]


@dataclass(frozen=True)
class FusionBox:
    """One painted box: half-open ``[start, stop)`` per axis (already clipped) and its level."""

    start: Size3
    stop: Size3
    level: int


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in the closed range [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def draw_fusion_boxes(
    shape: Sequence[int],
    num_levels: int = 4,
    num_boxes: tuple[int, int] = (10, 40),
    size_min: Sequence[int] = (8, 8, 8),
    size_max: Sequence[int] = (40, 80, 80),
    generator: torch.Generator | None = None,
) -> list[FusionBox]:
    """Draw the boxes of one fusion map (paper Alg. 1; PyMIC ``volume_fusion``).

    Args:
        shape: spatial size ``(D, H, W)`` of the sub-volume.
        num_levels: K; each box gets a level in {1, …, K}.
        num_boxes: closed range of the number of boxes M.
        size_min / size_max: closed ranges of the box sides per axis.
        generator: random source.

    Returns:
        The boxes in painting order; each centre is uniform over the volume and the box
        ``[c − s // 2, c − s // 2 + s)`` is clipped to it.
    """
    if num_levels < 1:
        raise ValueError(f"num_levels (K) must be >= 1, got {num_levels}")
    if not 0 < num_boxes[0] <= num_boxes[1]:
        raise ValueError(f"num_boxes must be a range 0 < low <= high, got {num_boxes}")
    if len(shape) != 3 or len(size_min) != 3 or len(size_max) != 3:
        raise ValueError(f"shape, size_min and size_max need 3 entries, got {shape}, {size_min}, {size_max}")
    if any(not 0 < a <= b for a, b in zip(size_min, size_max, strict=True)):
        raise ValueError(f"need 0 < size_min <= size_max per axis, got {size_min} and {size_max}")
    boxes = []
    for _ in range(_randint(*num_boxes, generator)):
        sides = [_randint(lo, hi, generator) for lo, hi in zip(size_min, size_max, strict=True)]
        centres = [_randint(0, n - 1, generator) for n in shape]
        start = tuple(max(0, c - s // 2) for c, s in zip(centres, sides, strict=True))
        stop = tuple(min(n, c - s // 2 + s) for c, s, n in zip(centres, sides, shape, strict=True))
        boxes.append(FusionBox(start, stop, _randint(1, num_levels, generator)))  # type: ignore[arg-type]
    return boxes


def paint_boxes(boxes: Sequence[FusionBox], shape: Sequence[int]) -> torch.Tensor:
    """The level map of ``boxes`` painted in order on zeros: a ``(D, H, W)`` int64 tensor."""
    level = torch.zeros(tuple(shape), dtype=torch.long)
    for b in boxes:
        level[tuple(slice(s, e) for s, e in zip(b.start, b.stop, strict=True))] = b.level
    return level


def fuse(
    background: torch.Tensor, foreground: torch.Tensor, level: torch.Tensor, num_levels: int
) -> torch.Tensor:
    """``α · foreground + (1 − α) · background`` with ``α = level / K`` broadcast over channels.

    Args:
        background / foreground: ``(N, C, D, H, W)``.
        level: ``(N, D, H, W)`` integers in [0, K].
    """
    alpha = (level.to(background.dtype) / num_levels).unsqueeze(1)
    return alpha * foreground + (1 - alpha) * background


def volume_fusion(
    x: torch.Tensor,
    num_levels: int = 4,
    num_boxes: tuple[int, int] = (10, 40),
    size_min: Sequence[int] = (8, 8, 8),
    size_max: Sequence[int] = (40, 80, 80),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fuse each scan of a batch with the next one (the paper's two-scan Volume Fusion).

    Args:
        x: ``(N, C, D, H, W)`` sub-volumes of N ≥ 2 different scans; sample ``i`` is the
            background of fused sample ``i`` and the foreground of fused sample ``i + 1``.
        num_levels, num_boxes, size_min, size_max, generator: see :func:`draw_fusion_boxes`.

    Returns:
        ``(fused (N, C, D, H, W), level (N, D, H, W) int64 in [0, K])``.

    Raises:
        ValueError: a batch of one (the foreground would be the same scan) or not 5-D.
    """
    if x.ndim != 5:
        raise ValueError(f"volume_fusion expects (N, C, D, H, W), got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(
            "volume_fusion needs a batch of at least 2 scans: the foreground of each sample is the "
            f"next scan in the batch, got batch size {x.shape[0]}"
        )
    shape = tuple(x.shape[2:])
    level = torch.stack(
        [
            paint_boxes(draw_fusion_boxes(shape, num_levels, num_boxes, size_min, size_max, generator), shape)
            for _ in range(x.shape[0])
        ]
    ).to(x.device)
    return fuse(x, torch.roll(x, 1, 0), level, num_levels), level


def _soft_dice_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """½ (1 − mean-over-classes soft Dice) + ½ CE, with a (soft) one-hot ``target`` of logits' shape.

    The Dice sums over the whole batch per class (PyMIC ``DiceLoss``), background included.
    """
    prob = logits.softmax(1)
    dims = [0, *range(2, logits.ndim)]
    inter = (prob * target).sum(dims)
    dice = (2 * inter + 1e-5) / (prob.sum(dims) + target.sum(dims) + 1e-5)
    ce = -(target * logits.log_softmax(1)).sum(1).mean()
    return 0.5 * (1 - dice.mean()) + 0.5 * ce


def fusion_loss(
    outputs: torch.Tensor | Sequence[torch.Tensor], level: torch.Tensor, num_levels: int = 4
) -> torch.Tensor:
    """Dice + CE (½ each) of the fusion-level prediction, with optional deep supervision.

    Args:
        outputs: logits ``(N, K + 1, D, H, W)``, or a list finest first (deep supervision):
            scale ``i`` is weighted ``2^-i`` (normalised) against the one-hot target pooled
            to its size by adaptive average pooling (PyMIC ``deep_supervise_mode`` 2).
        level: ``(N, D, H, W)`` integer target in [0, K].
    """
    outs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    if outs[0].shape[1] != num_levels + 1:
        raise ValueError(
            f"the fusion head needs K + 1 = {num_levels + 1} output channels, got {outs[0].shape[1]} "
            f"(build the model with num_classes={num_levels + 1})"
        )
    onehot = F.one_hot(level, num_levels + 1).permute(0, 4, 1, 2, 3).to(outs[0].dtype)
    weights = torch.tensor([0.5**i for i in range(len(outs))])
    weights = weights / weights.sum()
    loss = outs[0].new_zeros(())
    for w, out in zip(weights.tolist(), outs, strict=True):
        target = onehot if out.shape[2:] == onehot.shape[2:] else F.adaptive_avg_pool3d(onehot, out.shape[2:])
        loss = loss + w * _soft_dice_ce(out, target)
    return loss


@register_recipe
class VolumeFusion(Recipe):
    """Volume Fusion pretraining of the whole segmentation network (PCT-Net, FMUNet).

    Args:
        model: a ``pctnet`` family model with ``num_classes = K + 1``.
        num_levels: K (4 → 5 classes).
        num_boxes / size_min / size_max: box count and side ranges (D, H, W order).
        deep_supervision: train on the 4-scale outputs (the 2023 MIS-FM training kept
            ``multiscale_pred=True``); the checkpoint is the same either way.

    The batch must hold at least two sub-volumes from different scans.
    """

    method = "volume-fusion"
    families = ("pctnet",)
    covers = "full"
    paper = "MIS-FM (Wang et al. 2023) §3.1, Alg. 1; PyMIC volume_fusion (Jan 2024)"
    default_preprocessing = Preprocessing(
        orientation="RAS",
        spacing_mm=None,
        intensity={"kind": "clip_scale", "a_min": -1000, "a_max": 1000, "b_min": -1, "b_max": 1},
        crop_foreground=False,
        axis_order="zyx",
    )
    # Paper: batch 4, Adam 1e-3, weight decay 1e-5, lr halved every 50k of 400k iterations (110k data).
    optim_defaults = dict(
        optimizer="adam",
        lr=1e-3,
        weight_decay=1e-5,
        batch_size=4,
        schedule="step",
        step_size_fraction=0.125,
        gamma=0.5,
        warmup_steps=0,
    )

    def __init__(
        self,
        model: nn.Module,
        num_levels: int = 4,
        num_boxes: tuple[int, int] = (10, 40),
        size_min: Sequence[int] = (8, 8, 8),
        size_max: Sequence[int] = (40, 80, 80),
        deep_supervision: bool = True,
        roi: Sequence[int] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(model, **kw)
        if getattr(model, "num_classes", num_levels + 1) != num_levels + 1:
            raise ValueError(
                f"Volume Fusion with K={num_levels} needs num_classes={num_levels + 1}, "
                f"the model has {model.num_classes}"
            )
        self.num_levels = num_levels
        self.num_boxes = tuple(num_boxes)
        self.size_min, self.size_max = tuple(size_min), tuple(size_max)
        self.deep_supervision = deep_supervision
        self.roi = (
            tuple(roi) if roi is not None else tuple(getattr(model, "img_size", None) or (64, 128, 128))
        )
        self.config.update(
            num_levels=num_levels,
            num_boxes=list(self.num_boxes),
            size_min=list(self.size_min),
            size_max=list(self.size_max),
            deep_supervision=deep_supervision,
            roi=list(self.roi),
        )

    def dataset(self, volumes: Sequence[torch.Tensor], length: int | None = None) -> VolumeCropDataset:
        return VolumeCropDataset(volumes, self.roi, length=length or max(len(volumes), 8))

    def training_step(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["image"]
        fused, level = volume_fusion(x, self.num_levels, self.num_boxes, self.size_min, self.size_max)
        self.model.deep_supervision = self.deep_supervision
        try:
            out = self.model(fused)
        finally:
            self.model.deep_supervision = False
        loss = fusion_loss(out, level, self.num_levels)
        return loss, {"loss": loss.item()}

    def export(self) -> Export:
        return Export(self.model.state_dict(), covers="full")
