"""Opt-in fast inference: bf16 autocast and ``torch.compile``, for users who accept small deviations.

The models' default (fp32, eager) path reproduces the authors' outputs to 1e-4; it is already
tuned (SDPA window attention with cached masks, channels-last convolutions). This module adds
what changes the numbers or costs a compile:

* ``bf16=True``: ``torch.autocast`` to bfloat16 — on CUDA when the GPU supports it, on CPUs
  with AVX-512 BF16 (AMX) where oneDNN has bf16 kernels. Convolutions, linear layers and
  attention run in bf16 with fp32 accumulation; norms and softmax statistics stay fp32. The
  output is cast back to fp32.
* ``compile=True``: ``torch.compile`` (inductor). On CPU with ``freeze=True`` (default) the
  weights are folded as constants (weight pre-packing for oneDNN, constant-folded attention
  masks): the model must not be trained or have its weights changed afterwards.

Deviation from the fp32 eager output, measured on this project's benchmark machine (Xeon with
AMX, random weights, ``benchmarks/efficiency.py``; per-model table in
``benchmarks/EFFICIENCY.md``): bf16 gives a relative L2 error of 2e-3–1.2e-2 (max |Δ| 0.4–2 % of
max |y|) for QT-UNet, VT-UNet, PCT-Net, ResNet50-DeformAttn, ULKANet and LoGoNet, and 7e-2
(max 9 %) for FMUNet, whose InstanceNorm-residual stack amplifies rounding. Compile alone stays
at fp32 rounding level (≤ 1e-6 relative). :data:`BF16_REL_L2_BOUND` and
:data:`COMPILE_REL_L2_BOUND` are the bounds the tests assert.

Example:
    >>> import zoo, zoo.fast
    >>> model = zoo.create("qtunet-t")
    >>> fast = zoo.fast.enable(model, bf16=True)          # or compile=True, or both
    >>> logits = fast(torch.randn(1, 1, 96, 96, 96))      # fp32 logits, under inference_mode
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["enable", "FastModel", "bf16_supported", "BF16_REL_L2_BOUND", "COMPILE_REL_L2_BOUND"]

# Relative L2 error ||y_fast − y_fp32|| / ||y_fp32|| the tests hold fast mode to.
BF16_REL_L2_BOUND = 1e-1
COMPILE_REL_L2_BOUND = 1e-4


def bf16_supported(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 autocast runs on native bf16 hardware on ``device``.

    CPU: AVX-512 BF16 (or AMX-BF16) is required; ``torch.backends.cpu.get_cpu_capability()``
    must report an AVX-512 level and the CPU must have the bf16 instructions (elsewhere bf16
    is emulated and slower than fp32). CUDA: ``torch.cuda.is_bf16_supported()``.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type != "cpu":
        return False
    capability = torch.backends.cpu.get_cpu_capability()
    if "AVX512" not in capability and "AMX" not in capability:
        return False
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if probe is not None:
        return bool(probe())
    with contextlib.suppress(OSError):
        flags = Path("/proc/cpuinfo").read_text()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


def _to_fp32(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, (list, tuple)):
        return type(out)(_to_fp32(o) for o in out)
    if isinstance(out, dict):
        return {k: _to_fp32(v) for k, v in out.items()}
    return out


class FastModel(nn.Module):
    """A model wrapped for inference: ``inference_mode``, optional bf16 autocast and compile.

    Attributes not found on the wrapper (``pretrained_cfg``, ``num_classes`` …) are read from
    the wrapped model, so it drops into :func:`zoo.inference.sliding_window_predict`. Its
    state_dict is the wrapped model's under ``model.``; load weights into ``.model``.

    Args:
        model: the model (put in ``eval()``).
        bf16: autocast to bfloat16.
        compile: ``torch.compile`` the model.
        device_type: ``"cpu"`` or ``"cuda"``, for autocast.
        freeze: with ``compile`` on CPU, fold weights as constants (inference only).
    """

    def __init__(
        self, model: nn.Module, bf16: bool, compile: bool, device_type: str, freeze: bool = True
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.bf16 = bf16
        self.compiled = compile
        self.device_type = device_type
        self._run = model
        self._warm = False
        if compile:
            options = {"freezing": True} if freeze and device_type == "cpu" else None
            self._run = torch.compile(model, dynamic=False, options=options)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)

    def train(self, mode: bool = True) -> FastModel:
        if mode:
            raise RuntimeError("a zoo.fast model is for inference only; train the wrapped .model")
        return super().train(False)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        autocast = (
            torch.autocast(self.device_type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            if self.compiled and not self._warm:
                # One eager call first: it builds the per-size window plans, which the compiled
                # graph then reads as constants instead of tracing (and breaking on) their build.
                self.model(*args, **kwargs)
                self._warm = True
            out = self._run(*args, **kwargs)
        return _to_fp32(out) if self.bf16 else out


def enable(
    model: nn.Module,
    bf16: bool = False,
    compile: bool = False,
    device: torch.device | str | None = None,
    freeze: bool = True,
) -> FastModel:
    """Wrap ``model`` for fast inference.

    Args:
        model: a zoo model (any ``nn.Module``).
        bf16: bf16 autocast. Off unless asked: precision changes only when the caller says so
            (``compile=True`` alone stays fp32). True on hardware without native bf16 raises,
            because emulated bf16 is slower than fp32.
        compile: ``torch.compile`` (the first call runs eagerly once, then compiles: tens of
            seconds to minutes).
        device: where the model runs; default: the device of its first parameter.
        freeze: with ``compile`` on CPU, constant-fold the weights (see module docstring).

    Returns:
        A :class:`FastModel`; outputs are fp32 whatever ``bf16`` is.

    Raises:
        RuntimeError: ``bf16=True`` without native bf16 support on the device.
    """
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    dev = torch.device(device)
    if bf16 and not bf16_supported(dev):
        raise RuntimeError(
            f"bf16 autocast needs native bf16 on {dev} (CPU: AVX-512 BF16/AMX, capability "
            f"{torch.backends.cpu.get_cpu_capability()}; CUDA: torch.cuda.is_bf16_supported()); "
            "pass bf16=False"
        )
    return FastModel(model, bf16=bool(bf16), compile=compile, device_type=dev.type, freeze=freeze)
