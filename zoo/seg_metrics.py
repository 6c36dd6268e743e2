"""The fine-tuning objective and its measure: Dice + cross-entropy, and sliding-window Dice.

:class:`SegmentationLoss` is what ``zoo finetune`` minimises (with PyMIC-style deep
supervision when the model returns several outputs); :func:`evaluate_dice` is its validation:
whole volumes by sliding-window inference, per-class Dice, background excluded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SegmentationLoss", "evaluate_dice"]


def _main_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, list | tuple) else out


class SegmentationLoss(nn.Module):
    """Weighted Dice + cross-entropy on softmax outputs, with optional deep supervision.

    Args:
        num_classes: output channels (background included).
        dice_weight / ce_weight: weights of the two terms.
        squared_pred: squared denominators in the Dice term.
        include_background: count the background channel in the Dice term.
        deep_supervision: when the model returns a list of outputs (finest first), weight
            scale ``i`` by ``1/2^i`` (normalised) against labels averaged down to its size
            (PyMIC's deep supervision); otherwise only the first output counts.

    Shapes:
        outputs ``(B, K, *spatial)`` (or a list of them), labels ``(B, 1, *spatial)`` integers.
    """

    def __init__(
        self,
        num_classes: int,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        squared_pred: bool = False,
        include_background: bool = False,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        from monai.losses import DiceLoss

        if dice_weight < 0 or ce_weight < 0 or dice_weight + ce_weight == 0:
            raise ValueError(f"need non-negative loss weights, not both 0; got {dice_weight}, {ce_weight}")
        self.num_classes = num_classes
        self.dice_weight, self.ce_weight = dice_weight, ce_weight
        self.deep_supervision = deep_supervision
        self.dice = DiceLoss(softmax=True, include_background=include_background, squared_pred=squared_pred)

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], label: torch.Tensor) -> torch.Tensor:
        outs = list(outputs) if isinstance(outputs, list | tuple) else [outputs]
        if not self.deep_supervision:
            outs = outs[:1]
        weights = torch.tensor([0.5**i for i in range(len(outs))])
        weights = weights / weights.sum()
        target = F.one_hot(label[:, 0].long(), self.num_classes).movedim(-1, 1).float()
        total = outs[0].new_zeros(())
        for w, out in zip(weights.tolist(), outs, strict=True):
            t = target
            if out.shape[2:] != target.shape[2:]:
                t = (
                    F.adaptive_avg_pool3d(target, out.shape[2:])
                    if out.ndim == 5
                    else F.adaptive_avg_pool2d(target, out.shape[2:])
                )
            term = out.new_zeros(())
            if self.dice_weight:
                term = term + self.dice_weight * self.dice(out, t)
            if self.ce_weight:
                term = term + self.ce_weight * F.cross_entropy(out.float(), t)
            total = total + w * term
        return total


def evaluate_dice(
    model: nn.Module,
    cases: Sequence[Mapping[str, torch.Tensor]],
    num_classes: int,
    roi_size: Sequence[int],
    overlap: float = 0.5,
    mode: str = "gaussian",
    sw_batch_size: int = 1,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Per-class Dice of ``model`` on whole volumes by sliding-window inference.

    Args:
        model: the segmentation model (eval mode is set here).
        cases: ``{"image": (C, *spatial), "label": (1, *spatial)}`` each (preprocessed).
        num_classes: classes including background (background is not scored).
        roi_size / overlap / mode / sw_batch_size: of the sliding window.

    Returns:
        ``{"dice_1": …, …, "dice_mean": …}`` over all cases (a class absent from both
        prediction and label in every case is NaN and left out of the mean).
    """
    from monai.inferers import sliding_window_inference
    from monai.metrics import compute_dice

    # Functional Dice: MONAI's DiceMetric.aggregate would all-gather across processes, and
    # validation runs on rank 0 alone.
    scores = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for case in cases:
            x = torch.as_tensor(case["image"])[None].float().to(device)
            y = torch.as_tensor(case["label"])[None].long().to(device)
            logits = sliding_window_inference(
                x,
                tuple(roi_size),
                sw_batch_size,
                lambda t: _main_output(model(t)),
                overlap=overlap,
                mode=mode,
            )
            pred = F.one_hot(logits.argmax(1), num_classes).movedim(-1, 1)
            truth = F.one_hot(y[:, 0], num_classes).movedim(-1, 1)
            scores.append(compute_dice(pred, truth, include_background=False, ignore_empty=True).cpu())
    model.train(was_training)
    per = torch.nanmean(torch.cat(scores).float(), dim=0)
    out = {f"dice_{c}": float(per[c - 1]) for c in range(1, num_classes)}
    valid = per[~torch.isnan(per)]
    out["dice_mean"] = float(valid.mean()) if len(valid) else float("nan")
    return out
