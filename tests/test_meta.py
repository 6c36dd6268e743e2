"""The numbers in the registry are the real models' numbers (torchvision's rule).

Every spec's ``meta["num_params"]`` and ``meta["gmacs"]`` are re-measured here on the
model built from its configuration: a card or benchmark table can then quote them.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from zoo._registry import iter_specs

SPECS = list(iter_specs())


def build(spec, device: str):
    with torch.device(device):
        return spec.builder(**dict(spec.model_args)).eval()


def build_anywhere(spec):
    """On the meta device when the constructor allows it (no memory, no init), else on CPU."""
    try:
        return build(spec, "meta")
    except (NotImplementedError, RuntimeError):
        return build(spec, "cpu")


def count_macs(spec) -> float:
    """Multiply-accumulates of one forward at the spec's input size (FLOPs / 2), in G."""
    for device in ("meta", "cpu"):
        try:
            model = build(spec, device)
            x = torch.zeros((1, *spec.input_size), device=device)
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                model(x)
            return counter.get_total_flops() / 2 / 1e9
        except (NotImplementedError, RuntimeError):
            if device == "cpu":
                raise
    raise AssertionError("unreachable")


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_registered_parameter_count_is_the_models(spec):
    model = build_anywhere(spec)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n == spec.meta["num_params"]


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_registered_macs_are_the_models(spec):
    if "gmacs" not in spec.meta:
        pytest.fail(f"{spec.name} registers no gmacs")
    assert count_macs(spec) == pytest.approx(spec.meta["gmacs"], rel=0.01)
