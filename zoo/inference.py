"""Whole-volume inference for models built for one input size, on the device the caller names.

Where it runs: :func:`resolve_device` turns ``auto``/``cpu``/``cuda``/``cuda:N`` into a device and
refuses one that is not there (one line, before anything is read); under ``torchrun`` each rank
takes its ``LOCAL_RANK`` GPU. On a GPU the windows run on the device while the stitched output
lives where the memory allows (MONAI's ``sw_device``/``device`` split, :func:`stitch_device`), and
``precision`` runs the forwards under autocast.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "sliding_window_predict",
    "resolve_device",
    "resolve_precision",
    "stitch_device",
    "autocast_for",
    "DEVICE_CHOICES",
    "PRECISIONS",
]

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Of the free GPU memory, the share the stitched output (logits, weights and counts) may take
# before it is kept on the CPU instead: the rest is for the windows' activations.
_STITCH_SHARE = 0.25


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The device a command computes on, or a one-line refusal.

    Args:
        device: ``"auto"`` (None too): CUDA when present — under ``torchrun`` the rank's
            ``LOCAL_RANK`` GPU — else the CPU; ``"cpu"``; ``"cuda"`` (the rank's GPU under
            torchrun, else GPU 0); ``"cuda:N"``.

    Returns:
        A ``torch.device`` with an index for CUDA.

    Raises:
        ValueError: an unknown name, CUDA without a usable GPU, or a GPU index past the count.
    """
    text = "auto" if device is None else str(device).strip().lower()
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    local = os.environ.get("LOCAL_RANK")
    rank_gpu = int(local) if local is not None and local.isdigit() else 0
    if text == "auto":
        if n == 0:
            return torch.device("cpu")
        text = "cuda"
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        index = text.partition(":")[2]
        if index and not index.isdigit():
            raise ValueError(f"device {device!r}: expected {DEVICE_CHOICES}")
        if n == 0:
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"device {device!r} is not available: {why}; use --device cpu (or auto)")
        i = int(index) if index else rank_gpu
        if i >= n:
            raise ValueError(
                f"device {device!r} is not available: {n} CUDA GPU(s) visible (cuda:0 … cuda:{n - 1})"
            )
        return torch.device("cuda", i)
    raise ValueError(f"device {device!r}: expected {DEVICE_CHOICES}")


def resolve_precision(precision: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``: None for fp32.

    Raises:
        ValueError: an unknown precision, or fp16 on the CPU (use bf16 there).
    """
    p = (precision or "fp32").lower()
    if p not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if p == "fp32":
        return None
    if p == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; on the CPU use bf16 (or fp32)")
    if p == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"{torch.cuda.get_device_name(device)} does not support bf16; use fp16 or fp32")
    return _DTYPES[p]


def autocast_for(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` to ``dtype``, or nothing at fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def stitch_device(
    volume_shape: Sequence[int], num_classes: int, device: torch.device, free_bytes: int | None = None
) -> torch.device:
    """Where the stitched output of a sliding window lives: on the GPU when it fits, else the CPU.

    MONAI keeps three volume-sized float32 buffers while stitching (the weighted logits, the
    importance weights, the counts): ``(num_classes + 2)`` values per voxel. They stay on the GPU
    when they take at most a quarter of its free memory (the rest is for the windows).

    Args:
        volume_shape: ``B × C × *spatial`` of the input.
        num_classes: output channels.
        device: where the windows run.
        free_bytes: free GPU memory (default: ``torch.cuda.mem_get_info``).
    """
    if device.type != "cuda":
        return device
    voxels = int(volume_shape[0])
    for s in volume_shape[2:]:
        voxels *= int(s)
    need = voxels * (int(num_classes) + 2) * 4
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    return device if need <= _STITCH_SHARE * free_bytes else torch.device("cpu")


def sliding_window_predict(
    model: nn.Module,
    volume: torch.Tensor,
    roi_size: Sequence[int] | None = None,
    overlap: float | None = None,
    sw_batch_size: int = 1,
    mode: str = "gaussian",
    progress: bool = False,
    *,
    precision: str | None = None,
    stitch_on: str | torch.device | None = None,
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
        precision: ``fp32`` (default), ``bf16`` or ``fp16``: the forwards under autocast; the
            stitched logits stay float32.
        stitch_on: where the stitched output lives (``"cpu"``, ``"cuda"``…); default: the
            windows' device when the output fits (:func:`stitch_device`), else the CPU. The
            windows run where the model's parameters are.
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
    param = next(model.parameters(), None)
    sw_dev = param.device if param is not None else torch.device("cpu")
    dtype = resolve_precision(precision, sw_dev)
    if stitch_on is None:
        k = int(getattr(model, "num_classes", 0) or 0) or volume.shape[1]
        out_dev = stitch_device(tuple(volume.shape), k, sw_dev)
    else:
        out_dev = torch.device(stitch_on)
    net = model if dtype is None else _Autocast(model, sw_dev, dtype)
    kwargs = {"sw_device": sw_dev, "device": out_dev, **kwargs}
    bar = _window_bar(volume, roi, ov) if progress else None
    predictor = net if bar is None else _Counted(net, bar)
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


class _Autocast(nn.Module):
    """``model`` under autocast, its outputs back to float32 for stitching."""

    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.device, self.dtype = model, device, dtype

    def forward(self, x: torch.Tensor) -> Any:
        with autocast_for(self.device, self.dtype):
            out = self.model(x)
        if isinstance(out, torch.Tensor):
            return out.float()
        return type(out)(o.float() for o in out)
