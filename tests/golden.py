"""Parity vectors recorded from the authors' reference implementations.

The files in ``tests/data/golden`` are copies of the project's shared golden set. Each
records a state_dict manifest in the reference's own key naming, a deterministic rule
that fills every floating-point entry from its key name, the input rule, and statistics
plus a strided sample of every output. A model that reproduces them computes the same
function as the reference and therefore loads the authors' checkpoints.
"""

from __future__ import annotations

import json
import math
import zlib
from functools import cache
from pathlib import Path
from typing import Any

import torch

GOLDEN_DIR = Path(__file__).parent / "data" / "golden"

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}


@cache
def load(golden_id: str) -> dict[str, Any]:
    """The parsed golden file ``<golden_id>.json``."""
    return json.loads((GOLDEN_DIR / f"{golden_id}.json").read_text())


def deterministic_value(key: str, shape: list[int]) -> torch.Tensor:
    """The golden weights rule for one floating-point state_dict entry."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    if key.endswith("running_var"):
        return torch.rand(shape, generator=g) * 0.5 + 0.75
    if len(shape) == 1 and key.endswith(".weight"):
        return 1.0 + 0.1 * torch.randn(shape, generator=g)
    return 0.02 * torch.randn(shape, generator=g)


def reference_state_dict(
    golden_id: str, integer_buffers: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The reference-format state_dict of a golden file, filled by the weights rule.

    Integer buffers (``relative_position_index``, ``num_batches_tracked``) hold values the
    reference computes, which the manifest does not record. They are taken from
    ``integer_buffers`` (usually built by our own model) and checked against the golden
    per-entry sums, so a wrong index fails here rather than as a vague output mismatch.
    """
    g = load(golden_id)
    int_sums = g["weights_check"].get("integer_entry_sums", {})
    sd: dict[str, torch.Tensor] = {}
    for key, shape, dtype in g["state_dict_manifest"]:
        dt = _DTYPES[dtype]
        if dt.is_floating_point:
            sd[key] = deterministic_value(key, shape).to(dt)
            continue
        if integer_buffers is None or key not in integer_buffers:
            raise KeyError(f"golden {golden_id}: no value supplied for integer buffer {key!r}")
        value = integer_buffers[key]
        if list(value.shape) != list(shape):
            raise ValueError(f"integer buffer {key}: shape {list(value.shape)} != golden {shape}")
        if key in int_sums and not key.endswith("num_batches_tracked"):
            got = int(value.to(torch.int64).sum())
            if got != int_sums[key]:
                raise ValueError(f"integer buffer {key}: sum {got} != golden {int_sums[key]}")
        sd[key] = value.to(dt).clone()
    return sd


def reference_state_dict_for(golden_id: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Reference-format state_dict of a golden file, integer buffers taken from ``model``."""
    ints = {k: v for k, v in model.state_dict().items() if not v.is_floating_point()}
    return reference_state_dict(golden_id, ints)


def check_weights_rule(golden_id: str, sd: dict[str, torch.Tensor]) -> None:
    """Assert the generated floats match the golden per-entry sums (checks the rule itself)."""
    wc = load(golden_id)["weights_check"]
    total = 0.0
    for key, expected in wc["per_float_entry_sum"].items():
        got = float(sd[key].double().sum())
        assert math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-6), (key, got, expected)
        total += got
    assert math.isclose(total, wc["float_total_sum"], rel_tol=1e-6), (total, wc["float_total_sum"])


def golden_input(golden_id: str) -> torch.Tensor:
    """The recorded input: ``torch.randn(shape, generator=manual_seed(0))``."""
    shape = load(golden_id)["input_shape"]
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def assert_matches_outputs(golden_id: str, outputs: Any, rtol: float = 1e-4) -> None:
    """Compare outputs (a tensor, or a list/tuple by position) with the golden record.

    Statistics and every sampled value must agree to ``rtol`` relative to the output's
    scale (its absolute maximum), the tolerance the issues set for parity.
    """
    recorded = load(golden_id)["outputs"]
    if isinstance(outputs, torch.Tensor):
        outputs = [outputs]
    outputs = list(outputs)
    assert len(outputs) == len(recorded), f"{len(outputs)} outputs, golden has {len(recorded)}"
    for out, rec in zip(outputs, recorded, strict=True):
        name = rec["name"]
        assert list(out.shape) == rec["shape"], f"{name}: shape {list(out.shape)} != {rec['shape']}"
        flat = out.detach().double().flatten()
        st = rec["stats"]
        scale = max(abs(st["min"]), abs(st["max"]), 1e-12)
        atol = rtol * scale
        n = flat.numel()
        got = {
            "mean": float(flat.mean()),
            "std": float(flat.std()),
            "min": float(flat.min()),
            "max": float(flat.max()),
            "abs_mean": float(flat.abs().mean()),
        }
        want = dict(st, abs_mean=st["abs_sum"] / n)
        for k in ("mean", "std", "min", "max", "abs_mean"):
            assert abs(got[k] - want[k]) <= atol, f"{name}: {k} {got[k]!r} != golden {want[k]!r}"
        sample = rec["sample"]
        idx = torch.arange(0, n, sample["stride"])
        values = torch.tensor(sample["values"], dtype=torch.float64)
        assert idx.numel() == values.numel(), f"{name}: sample count mismatch"
        err = (flat[idx] - values).abs().max().item()
        assert err <= atol, f"{name}: max sample deviation {err:.3g} > {atol:.3g} (rtol {rtol} of scale)"
