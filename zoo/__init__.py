"""medzoo: self-supervised 3D medical-imaging models by name, with their published weights.

>>> import zoo
>>> model = zoo.create("qtunet-t", pretrained=True)          # default weights tag (ct-ssl)
>>> zoo.list_models("qtunet*", pretrained=True)
"""

from zoo._factory import CheckpointMismatchError, LoadReport, NoPretrainedWeightsError, create, load_weights
from zoo._registry import (
    ModelSpec,
    PaperInfo,
    WeightSpec,
    get_spec,
    list_models,
    list_pretrained,
    resolve,
)
from zoo._version import __version__
from zoo.convert import CheckpointFormatError
from zoo.info import model_info

__all__ = [
    "__version__",
    "create",
    "load_weights",
    "list_models",
    "list_pretrained",
    "model_info",
    "get_spec",
    "resolve",
    "ModelSpec",
    "WeightSpec",
    "PaperInfo",
    "LoadReport",
    "CheckpointMismatchError",
    "CheckpointFormatError",
    "NoPretrainedWeightsError",
]
