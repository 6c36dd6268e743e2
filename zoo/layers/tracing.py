"""Helpers for code that runs both eagerly and under graph capture (ONNX export, compile)."""

from __future__ import annotations

import torch

__all__ = ["is_tracing", "channels_last_3d"]


def is_tracing() -> bool:
    """True while a graph is being captured (TorchScript trace, torch.compile, torch.export)."""
    return bool(
        torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or getattr(torch.compiler, "is_exporting", lambda: False)()
    )


def channels_last_3d(x: torch.Tensor) -> torch.Tensor:
    """``x`` in NDHWC memory for oneDNN; contiguous NCDHW while TorchScript traces it, because the
    TorchScript ONNX exporter cannot express memory formats (the values are the same)."""
    return x.contiguous() if torch.jit.is_tracing() else x.contiguous(memory_format=torch.channels_last_3d)
