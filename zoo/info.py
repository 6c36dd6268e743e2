"""``model_info``: what the registry knows about a name, as plain data."""

from __future__ import annotations

import dataclasses
from typing import Any

from zoo._registry import aliases_of, resolve


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def model_info(name: str) -> dict[str, Any]:
    """Configuration, measured size, paper and weights (with provenance) of a model.

    Args:
        name: model name, ``name.tag`` or alias.

    Returns:
        A JSON-serialisable dict.
    """
    spec, tag = resolve(name)
    weights = []
    for w in spec.weights:
        d = {k: _plain(v) for k, v in dataclasses.asdict(w).items()}
        d["preprocessing"] = _plain(dict(w.preprocessing))
        d["default"] = w.tag == spec.default_tag
        weights.append(d)
    return {
        "name": spec.name,
        "family": spec.family,
        "tag": tag,
        "aliases": aliases_of(spec.name),
        "hub_entrypoint": spec.hub_entrypoint,
        "description": spec.description,
        "model_args": _plain(dict(spec.model_args)),
        "input_size": _plain(spec.input_size),
        "meta": _plain(dict(spec.meta)),
        "paper": dataclasses.asdict(spec.paper),
        "weights": weights,
        "default_tag": spec.default_tag,
        "no_weights_reason": spec.no_weights_reason,
        "sliding_window": _plain(dict(spec.sliding_window)),
    }
