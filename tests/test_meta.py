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


PAPER_SPECS = [s for s in SPECS if s.meta.get("paper_setting")]


def test_the_papers_with_a_cost_table_declare_the_setting_it_was_measured_at():
    declared = {s.name for s in PAPER_SPECS}
    for name in ("qtunet-t", "qtunet-b", "vtunet-t", "ulkanet", "logonet-l", "resnet50-deformattn-swav"):
        assert name in declared


@pytest.mark.parametrize("spec", PAPER_SPECS, ids=[s.name for s in PAPER_SPECS])
def test_the_model_at_the_papers_setting_has_the_papers_size(spec):
    # What `zoo bench` and RESULTS.md compare with the paper: rebuilt at meta["paper_setting"].
    from zoo.bench import count_flops, paper_setting

    over, shape, train, declared = paper_setting(spec)
    assert declared
    params, flops = count_flops(lambda: spec.builder(**{**spec.model_args, **over}), shape, train)
    m = spec.meta
    if "paper_setting_params" in m:
        assert params == m["paper_setting_params"]
    if "paper_setting_gmacs" in m:
        assert flops / 2e9 == pytest.approx(m["paper_setting_gmacs"], rel=1e-3)
    # Within 5 % of the paper's own figures (QT-UNet-T: the paper's 6.4 M is a typo for ~6.65 M).
    assert params == pytest.approx(m["paper_params"], rel=0.05)
    if m.get("paper_gmacs"):
        assert flops / 2e9 == pytest.approx(m["paper_gmacs"], rel=0.05)
