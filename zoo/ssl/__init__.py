"""Continued self-supervised pretraining: the five papers' pretext tasks as recipes.

``zoo.ssl.pretrain(method, model, data, out)`` (CLI ``zoo pretrain METHOD --model NAME --data
datalist.json --out run/``) runs one of:

* ``volume-fusion`` (pctnet, fmunet): Volume Fusion (MIS-FM), the 5-class fusion map;
* ``byol-rot-rec`` (qtunet-*, qtunet-a-*): BYOL + rotation + reconstruction, encoder only;
* ``multi-clustering`` (ulkanet*, logonet*): masked multi-clusterer pseudo-labels;
* ``simsiam-iou`` (swinvit2d-*-simsiam-*): SimSiam with IoU-interval positives;
* ``dino`` (swinvit2d-c48): DINO on the same pairs (the code's alternative);
* ``joint-2d3d`` (resnet50-deformattn-swav): slice SwAV → masked embedding → 3D SwAV;
* ``joint-2d3d-deepcluster`` (resnet50-deformattn-deepcluster): the same with DeepCluster-v2
  in stages 1 and 3.

Each stage of the joint recipe is also a method of its own (``slice-swav``,
``slice-deepcluster``, ``masked-embedding``, ``volume-swav``, ``volume-deepcluster``).
"""

from zoo.ssl.catalog import PIPELINES, RECIPES, get_recipe, methods
from zoo.ssl.recipe import Export, Recipe
from zoo.ssl.runner import PretrainOptions, PretrainResult, RunOptions, pretrain

__all__ = [
    "RECIPES",
    "PIPELINES",
    "Export",
    "Recipe",
    "get_recipe",
    "pretrain",
    "PretrainOptions",
    "RunOptions",
    "PretrainResult",
    "methods",
]
