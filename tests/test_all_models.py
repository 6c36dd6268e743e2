"""Every registered model, at a small configuration: it builds, runs forward and backward, and
every parameter receives a finite gradient (nothing is detached or left out of the graph).

Widths and input sizes are reduced through the model arguments; depths are the registered ones,
so each block of the real configuration is exercised. A new registration is covered
automatically; a family without an entry in ``tests/small_configs.py`` fails here until it gets one.
"""

from __future__ import annotations

import fnmatch

import pytest
import torch
from torch import nn

import zoo
from tests.small_configs import small_config
from zoo._registry import iter_specs

SPECS = list(iter_specs())

# Parameters that by design take no part in a forward pass, by model glob → key globs, with why.
UNUSED_BY_DESIGN: dict[str, tuple[str, ...]] = {
    # PCT-Net builds the embedding and head of all three resolution modes (the reference does, so its
    # checkpoints load strictly) and runs only the configured one; its Transformer stages keep a
    # norm layer the reference never calls.
    "pctnet*": ("embeddings.0.*", "embeddings.2.*", "pred_heads.0.*", "pred_heads.2.*", "*.norm_layer.*"),
}


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, tuple | list):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_forward_backward_reaches_every_parameter(spec):
    kwargs, shape = small_config(spec.name)
    torch.manual_seed(0)
    model = zoo.create(spec.name, **kwargs).train()
    for m in model.modules():  # randomness would zero some gradients by chance, not by a bug
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
        if hasattr(m, "drop_prob"):
            m.drop_prob = 0.0
    x = torch.randn(shape, requires_grad=True)
    outs = [t for t in _tensors(model(x)) if t.requires_grad]
    assert outs, f"{spec.name}: no output depends on the parameters"
    assert all(torch.isfinite(t).all() for t in outs)
    sum(t.float().square().mean() for t in outs).backward()

    unused = next((v for k, v in UNUSED_BY_DESIGN.items() if fnmatch.fnmatch(spec.name, k)), ())
    no_grad, bad = [], []
    for key, p in model.named_parameters():
        if any(fnmatch.fnmatch(key, u) for u in unused):
            continue
        if p.grad is None:
            no_grad.append(key)
        elif not torch.isfinite(p.grad).all():
            bad.append(key)
    assert not no_grad, f"{spec.name}: no gradient for {no_grad[:10]} ({len(no_grad)})"
    assert not bad, f"{spec.name}: non-finite gradient for {bad[:10]}"
    assert x.grad is not None and x.grad.abs().sum() > 0
