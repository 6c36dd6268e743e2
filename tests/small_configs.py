"""Small configurations of every registered model, by name glob (no pytest: ``benchmarks/core_install.py``
loads this file inside a fresh core-only environment too).

Widths and input sizes are reduced through the model arguments; depths are the registered ones.
"""

from __future__ import annotations

import fnmatch

# name glob → (model arguments, input shape with batch 2: BatchNorm in train mode needs > 1 sample).
SMALL: dict[str, tuple[dict, tuple[int, ...]]] = {
    "qtunet-*": (dict(img_size=32, embed_dim=12), (2, 1, 32, 32, 32)),
    "vtunet-*": (dict(img_size=32, embed_dim=12), (2, 1, 32, 32, 32)),
    "ulkanet*": (
        dict(img_size=32, dims=(8, 16, 32, 64), decoder_dims=(16, 16, 16, 8, 8)),
        (2, 1, 32, 32, 32),
    ),
    "logonet*": (
        dict(
            img_size=32,
            dims=(8, 16, 32, 64),
            decoder_dims=(16, 16, 16, 8, 8),
            local_dims=(8, 16),
            local_decoder_dims=(8, 8, 8),
        ),
        (2, 1, 32, 32, 32),
    ),
    "pctnet*": (
        dict(
            img_size=(16, 32, 32), feature_chns=(4, 8, 16, 32, 64), num_heads=(1, 2, 4), deep_supervision=True
        ),
        (2, 1, 16, 32, 32),
    ),
    "fmunet*": (dict(feature_chns=(4, 8, 16, 32, 64), deep_supervision=True), (2, 1, 16, 32, 32)),
    # The inter-slice attention runs along the slices: n_frames must divide by its 8 heads.
    "resnet50-deformattn*": (
        dict(n_frames=8, img_size=(32, 32), embed_dim=64, ffn_hidden=32),
        (2, 8, 3, 32, 32),
    ),
    "swinvit2d-*simsiam*": (
        dict(img_size=(32, 32), embed_dim=12, proj_hidden_dim=16, out_dim=16, pred_hidden_dim=8),
        (2, 1, 32, 32),
    ),
    "swinvit2d-c48": (dict(img_size=(32, 32), embed_dim=12), (2, 1, 32, 32)),
    # Swin-UNETR's residual units normalise per instance: the deepest map must be larger than 1×1.
    "swinunetr2d-*": (dict(img_size=(64, 64), feature_size=12), (2, 1, 64, 64)),
}


def small_config(name: str) -> tuple[dict, tuple[int, ...]]:
    """The small model arguments and the batch-2 input shape of the registered ``name``.

    Raises:
        AssertionError: for a name that no glob of ``SMALL`` covers (a new family needs an entry).
    """
    for pattern, value in SMALL.items():
        if fnmatch.fnmatch(name, pattern):
            return value
    raise AssertionError(f"{name}: no small configuration in tests/small_configs.py::SMALL")
