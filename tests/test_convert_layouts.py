"""What every converter shares: a checkpoint with no tensors is refused with the family's name."""

from __future__ import annotations

import importlib

import pytest

from zoo._registry import get_spec
from zoo.convert import CheckpointFormatError, layout_keys


@pytest.mark.parametrize(
    ("family", "name", "checkpoint"),
    [
        ("deformattn", "resnet50-deformattn", {}),
        ("deformattn", "resnet50-deformattn", {"state_dict": {}}),  # the authors' 3D container, empty
        ("swinvit2d", "swinvit2d-c48", {}),  # the thesis saves bare state_dicts: no container
    ],
)
def test_an_empty_checkpoint_is_refused_naming_the_family(family, name, checkpoint):
    convert = importlib.import_module(f"zoo.convert.{family}").convert
    with pytest.raises(CheckpointFormatError, match=rf"^{family}: checkpoint holds no tensors$"):
        convert(checkpoint, get_spec(name))


def test_layout_keys_keeps_the_order():
    assert layout_keys({"b": 1, "a": 2}, "x") == ["b", "a"]
