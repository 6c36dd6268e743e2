"""SimSiam with IoU-interval positives, and DINO, on 2D CT slices (Konieczkowicz, AGH thesis;
spec ssl4ct §2).

Positives are two equal 96 × 96 crops of one axial slice whose box IoU lies in
[0.3, 0.6] (``zoo.transforms.IoUPairCropd``, the thesis's Algorithm 1), each then augmented
independently (§2.2, in the code's order): RandZoom [0.8, 1.2] p 0.75; flips on both axes
p 0.5 each; RandRotate90 p 0.5; RandScaleIntensity ±0.1 p 0.75; RandShiftIntensity ±0.1
p 0.75; RandGaussianSmooth σ ∈ [0.25, 1.5] p 0.25; RandGaussianNoise σ 0.01 p 0.25.

* **SimSiam** (the thesis method): ``L = ½ D(p1, sg(z2)) + ½ D(p2, sg(z1))`` with lightly's
  ``NegativeCosineSimilarity``; SGD (momentum 0.9, lr 0.05 · B / 256, weight decay 1e-5 on
  weights only), cosine to 1e-6. The checkpoint is the whole SimSiam model (backbone and both
  heads), as the reference saves it. Deviation: the reference keeps the predictor at a fixed
  learning rate; the generic loop (``zoo.train``) schedules every parameter alike.
* **DINO** (the code's alternative, never evaluated in the thesis): student and teacher =
  backbone + lightly's ``DINOProjectionHead`` (16C → 2048 → 2048 → 256, L2 norm,
  weight-normed 256 → 1024); τ_s 0.1, τ_t 0.04, centre momentum 0.9, teacher EMA from
  0.9995 to 1 on a cosine; AdamW 5e-5, weight decay 0.04 (the code raises it to 0.4 on a cosine
  and clips each parameter's gradient at 3; the generic loop keeps it fixed and clips the global
  norm at 3). The checkpoint is the student backbone.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from zoo.ssl.data import Preprocessing, SliceDataset
from zoo.ssl.recipe import Export, Recipe, freeze_grads_while, register_recipe
from zoo.transforms import IoUPairCropd

__all__ = ["ssl_augmentation", "IoUPairDataset", "collapse_coefficient", "SimSiamIoU", "DINOIoU"]

_THESIS_PREPROCESSING = Preprocessing(
    orientation="RAS",
    spacing_mm=(1.0, 1.0, 2.5),
    intensity={"kind": "clip_scale", "a_min": -500, "a_max": 500, "b_min": 0, "b_max": 1},
    crop_foreground=True,
)


def ssl_augmentation(spatial_dims: int = 2):
    """The thesis's per-crop augmentation (spec ssl4ct §2.2), as a MONAI ``Compose``."""
    from monai.transforms import (
        Compose,
        RandFlip,
        RandGaussianNoise,
        RandGaussianSmooth,
        RandRotate90,
        RandScaleIntensity,
        RandShiftIntensity,
        RandZoom,
    )

    sigma = (0.25, 1.5)
    return Compose(
        [
            RandZoom(prob=0.75, min_zoom=0.8, max_zoom=1.2, mode="bilinear", padding_mode="constant"),
            *(RandFlip(prob=0.5, spatial_axis=a) for a in range(spatial_dims)),
            RandRotate90(prob=0.5, max_k=3),
            RandScaleIntensity(factors=0.1, prob=0.75),
            RandShiftIntensity(offsets=0.1, prob=0.75),
            RandGaussianSmooth(sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=0.25),
            RandGaussianNoise(prob=0.25, mean=0.0, std=0.01),
        ]
    )


class IoUPairDataset(Dataset):
    """Positive pairs of slices: IoU-interval crops, then independent augmentations.

    Returns (item):
        ``{"view1": (C, s, s), "view2": (C, s, s), "iou": float, "found": bool, "index": i}``.
    """

    def __init__(
        self,
        slices: Dataset,
        crop_size: int = 96,
        min_iou: float = 0.3,
        max_iou: float = 0.6,
        augment: bool = True,
    ) -> None:
        self.slices = slices
        self.pairs = IoUPairCropd(
            "image", crop_size=crop_size, min_iou=min_iou, max_iou=max_iou, info_key="pair"
        )
        self.augment = ssl_augmentation() if augment else None

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        # Fresh draws per item, from torch's generator (seeded and restored by the loop).
        self.pairs.set_random_state(seed=int(torch.randint(2**31, (1,))))
        d = self.pairs({"image": self.slices[i]["image"]})
        views = []
        for key in ("image1", "image2"):
            v = d[key]
            if self.augment is not None:
                self.augment.set_random_state(seed=int(torch.randint(2**31, (1,))))
                v = self.augment(v)
            views.append(torch.as_tensor(v, dtype=torch.float32).contiguous())
        return {
            "view1": views[0],
            "view2": views[1],
            "iou": float(d["pair"]["iou"]),
            "found": bool(d["pair"]["found"]),
            "index": i,
        }


def collapse_coefficient(p: torch.Tensor) -> float:
    """The thesis's collapse measure ``max(0, 1 − √d · s)``, s = mean per-channel std of L2-normalised p."""
    d = p.shape[1]
    s = torch.nn.functional.normalize(p.detach().float(), dim=1).std(dim=0).mean()
    return max(0.0, 1.0 - math.sqrt(d) * float(s))


class _SlicePairs(Recipe):
    """Shared data side of the two slice recipes."""

    families = ("swinvit2d",)
    requires = ("lightly",)
    default_preprocessing = _THESIS_PREPROCESSING

    def __init__(
        self,
        model: nn.Module,
        crop_size: int = 96,
        min_iou: float = 0.3,
        max_iou: float = 0.6,
        augment: bool = True,
        **kw: Any,
    ) -> None:
        super().__init__(model, **kw)
        self.crop_size, self.min_iou, self.max_iou, self.augment = crop_size, min_iou, max_iou, augment
        self.config.update(crop_size=crop_size, min_iou=min_iou, max_iou=max_iou, augment=augment)

    def dataset(self, volumes: Sequence[torch.Tensor], length: int | None = None) -> Dataset:
        slices = SliceDataset(volumes, axis=-1, min_size=self.crop_size)
        return IoUPairDataset(slices, self.crop_size, self.min_iou, self.max_iou, self.augment)


@register_recipe
class SimSiamIoU(_SlicePairs):
    """SimSiam with IoU-interval positives on ``swinvit2d-c48-simsiam-*`` models.

    Args:
        model: a ``SwinViT2dSimSiam`` (backbone, projection and prediction heads).
        crop_size / min_iou / max_iou: the positive pairs (96, [0.3, 0.6]).
        augment: apply the per-crop augmentation.
    """

    method = "simsiam-iou"
    covers = "full"
    paper = "Konieczkowicz, AGH MSc thesis 2024, ch. 3-4 (main_simsiam.py)"
    # 100 epochs, batch 128, SGD 0.9, lr 0.05·128/256 = 0.025, wd 1e-5, cosine to 1e-6, no warm-up.
    optim_defaults = dict(
        optimizer="sgd",
        lr=0.025,
        momentum=0.9,
        weight_decay=1e-5,
        batch_size=128,
        schedule="cosine",
        warmup_steps=0,
        min_lr=1e-6,
    )

    def __init__(self, model: nn.Module, **kw: Any) -> None:
        if not all(hasattr(model, a) for a in ("backbone", "projection_head", "prediction_head")):
            raise ValueError(f"{type(model).__name__} is not a SimSiam model (swinvit2d-c48-simsiam-*)")
        super().__init__(model, **kw)
        from lightly.loss import NegativeCosineSimilarity

        self.criterion = NegativeCosineSimilarity()

    def training_step(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        z1, p1 = self.model(batch["view1"])
        z2, p2 = self.model(batch["view2"])  # z is returned detached: the stop-gradient
        loss = 0.5 * self.criterion(p1, z2) + 0.5 * self.criterion(p2, z1)
        return loss, {
            "loss": loss.item(),
            "collapse": collapse_coefficient(p1),
            "iou": float(torch.as_tensor(batch["iou"]).float().mean()),
        }

    def export(self) -> Export:
        return Export(self.model.state_dict(), covers="full")


@register_recipe
class DINOIoU(_SlicePairs):
    """DINO on IoU-interval (or random, ``min_iou=0, max_iou=1``) slice pairs, ``swinvit2d-c48``.

    Args:
        model: a ``SwinViT2d`` backbone (its pooled 16·C feature feeds the head).
        out_dim / hidden_dim / bottleneck_dim: the DINO head (1024, 2048, 256).
        student_temp / teacher_temp / center_momentum: the loss (0.1, 0.04, 0.9).
        momentum: start of the teacher EMA (0.9995, cosine to 1).
        freeze_last_layer_steps: steps the head's last layer stays frozen (one epoch in the code).
    """

    method = "dino"
    covers = "full"
    paper = "Konieczkowicz, AGH MSc thesis 2024 (main_dino.py; code only, no reported results)"
    optim_defaults = dict(
        optimizer="adamw",
        lr=5e-5,
        weight_decay=0.04,
        batch_size=2,
        schedule="cosine",
        warmup_fraction=10 / 300,
        min_lr=1e-6,
        grad_clip=3.0,
    )

    def __init__(
        self,
        model: nn.Module,
        out_dim: int = 1024,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        center_momentum: float = 0.9,
        momentum: float = 0.9995,
        freeze_last_layer_steps: int = 0,
        **kw: Any,
    ) -> None:
        if not hasattr(model, "num_features") or hasattr(model, "projection_head"):
            raise ValueError(f"DINO pretrains the bare backbone (swinvit2d-c48), got {type(model).__name__}")
        super().__init__(model, **kw)
        from lightly.loss import DINOLoss
        from lightly.models.modules.heads import DINOProjectionHead

        self.head = DINOProjectionHead(model.num_features, hidden_dim, bottleneck_dim, out_dim)
        self.teacher_backbone = copy.deepcopy(model).requires_grad_(False)
        # weight_norm'd layers refuse deepcopy: build the teacher head and copy the weights in.
        self.teacher_head = DINOProjectionHead(model.num_features, hidden_dim, bottleneck_dim, out_dim)
        self.teacher_head.load_state_dict(self.head.state_dict())
        self.teacher_head.requires_grad_(False)
        self.criterion = DINOLoss(
            out_dim,
            warmup_teacher_temp=teacher_temp,
            teacher_temp=teacher_temp,
            warmup_teacher_temp_epochs=0,
            student_temp=student_temp,
            center_momentum=center_momentum,
        )
        self.momentum0, self.freeze_last_layer_steps = momentum, freeze_last_layer_steps
        freeze_grads_while(
            self.head.last_layer.parameters(), lambda: self.current_step < self.freeze_last_layer_steps
        )
        self.config.update(
            out_dim=out_dim,
            hidden_dim=hidden_dim,
            bottleneck_dim=bottleneck_dim,
            student_temp=student_temp,
            teacher_temp=teacher_temp,
            center_momentum=center_momentum,
            momentum=momentum,
            freeze_last_layer_steps=freeze_last_layer_steps,
        )

    def training_step(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        x1, x2 = batch["view1"], batch["view2"]
        s1, s2 = self.head(self.model(x1)), self.head(self.model(x2))
        with torch.no_grad():
            t1, t2 = (
                self.teacher_head(self.teacher_backbone(x1)),
                self.teacher_head(self.teacher_backbone(x2)),
            )
        loss = self.criterion([t1, t2], [s1, s2])  # cross-view terms only: (t1, s2) and (t2, s1)
        return loss, {"loss": loss.item()}

    @torch.no_grad()
    def before_step(self, step: int) -> None:
        progress = min(step / max(self.max_steps, 1), 1.0)
        m = 1 - (1 - self.momentum0) * (math.cos(math.pi * progress) + 1) / 2
        for online, target in ((self.model, self.teacher_backbone), (self.head, self.teacher_head)):
            for p, q in zip(online.parameters(), target.parameters(), strict=True):
                q.mul_(m).add_(p.detach(), alpha=1 - m)

    def export(self) -> Export:
        return Export(self.model.state_dict(), covers="full")
