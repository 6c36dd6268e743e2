"""Every pretraining recipe, by name: the one module that imports them all (``get_recipe``, ``methods``).

The recipe modules register their classes with ``zoo.ssl.recipe.register_recipe`` when imported;
this module imports each of them, so a lookup never needs the ``zoo.ssl`` package itself (no
import circle between the package and its recipes).
"""

from __future__ import annotations

import zoo.ssl.byol_rot_rec  # noqa: F401  (each recipe module registers its recipes when imported)
import zoo.ssl.multi_clustering  # noqa: F401
import zoo.ssl.simsiam_iou  # noqa: F401
import zoo.ssl.volume_fusion  # noqa: F401
from zoo.ssl.recipe import RECIPES, Recipe
from zoo.ssl.slice_swav import PIPELINES

__all__ = ["get_recipe", "methods", "RECIPES", "PIPELINES"]


def get_recipe(method: str) -> type[Recipe]:
    """The recipe class registered as ``method``."""
    if method not in RECIPES:
        from zoo._registry import UnknownNameError

        raise UnknownNameError(f"unknown pretraining method {method!r}; known: {', '.join(sorted(RECIPES))}")
    return RECIPES[method]


def methods() -> list[str]:
    """Every name ``pretrain`` accepts: single recipes and multi-stage pipelines."""
    return sorted([*RECIPES, *PIPELINES])
