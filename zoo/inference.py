"""Whole-volume inference for models built for one input size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["sliding_window_predict"]


def sliding_window_predict(
    model: nn.Module,
    volume: torch.Tensor,
    roi_size: Sequence[int] | None = None,
    overlap: float | None = None,
    sw_batch_size: int = 1,
    mode: str = "gaussian",
    progress: bool = False,
    **kwargs: Any,
) -> torch.Tensor:
    """Run ``model`` over a volume larger than its input with MONAI's sliding window.

    Args:
        model: a zoo model; its ``pretrained_cfg["sliding_window"]`` supplies the
            defaults for ``roi_size`` and ``overlap`` (the paper's settings).
        volume: ``B × C × *spatial`` tensor; spatial dims smaller than the window are
            padded by MONAI and cropped back.
        roi_size: window size; defaults to the model's registered window.
        overlap: window overlap in [0, 1); defaults to the registered value, else 0.5.
        sw_batch_size: windows per forward.
        mode: blending of overlapping windows (``"gaussian"`` or ``"constant"``).
        progress: show a progress bar.
        **kwargs: passed to :func:`monai.inferers.sliding_window_inference`.

    Returns:
        ``B × K × *spatial`` logits on the volume's grid.

    Raises:
        ValueError: no window size, a window of other dimensionality, overlap outside [0, 1),
            ``sw_batch_size`` below 1, or non-finite voxels in ``volume``.
    """
    from monai.inferers import sliding_window_inference

    cfg = getattr(model, "pretrained_cfg", {}).get("sliding_window", {})
    roi = tuple(roi_size or cfg.get("roi_size") or ())
    if not roi:
        raise ValueError("roi_size is needed: this model registers no sliding-window default")
    spatial = volume.ndim - 2
    if len(roi) != spatial:
        raise ValueError(f"roi_size {roi} has {len(roi)} dims; the volume has {spatial} spatial dims")
    ov = cfg.get("overlap", 0.5) if overlap is None else overlap
    if not 0 <= ov < 1:
        raise ValueError(f"overlap must lie in [0, 1), got {ov}")
    if isinstance(sw_batch_size, bool) or not isinstance(sw_batch_size, int) or sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be an integer >= 1, got {sw_batch_size!r}")
    # One NaN spreads through every window that sees it (convolutions, attention, norms): the
    # model would return NaN logits silently. Checked here; the model's forward stays unchecked.
    bad = int((~torch.isfinite(volume)).sum()) if volume.is_floating_point() else 0
    if bad:
        raise ValueError(
            f"volume: expected finite values, found {bad} NaN/infinite voxel(s) of {volume.numel()}; "
            "replace them first (zoo.predict sets them to 0 and says so)"
        )
    bar = _window_bar(volume, roi, ov) if progress else None
    predictor = model if bar is None else _Counted(model, bar)
    try:
        with torch.inference_mode():
            return sliding_window_inference(
                volume, roi, sw_batch_size, predictor, overlap=ov, mode=mode, **kwargs
            )
    finally:
        if bar is not None:
            bar.close()


def _window_bar(volume: torch.Tensor, roi: Sequence[int], overlap: float) -> Any:
    """A progress bar that says what it counts: windows (MONAI's own bar counts unnamed "it")."""
    from tqdm.auto import tqdm

    total = volume.shape[0]
    for size, r in zip(volume.shape[2:], roi, strict=True):
        step = 1 if r >= size else max(int(r * (1 - overlap)), 1)
        total *= 1 if r >= size else -(-(size - r) // step) + 1
    return tqdm(total=total, desc="sliding window", unit="window", leave=False)


class _Counted:
    """The model, counting the windows it is given on ``bar``."""

    def __init__(self, model: Any, bar: Any) -> None:
        self.model, self.bar = model, bar

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        out = self.model(x, *args, **kwargs)
        self.bar.update(int(x.shape[0]))
        return out
