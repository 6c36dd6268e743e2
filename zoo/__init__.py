"""medzoo: self-supervised 3D medical-imaging models by name, with their published weights.

>>> import zoo
>>> model = zoo.create("qtunet-t", pretrained=True)          # default weights tag (ct-ssl)
>>> zoo.list_models("qtunet*", pretrained=True)
>>> t = zoo.transforms.for_model(model, keys=("image", "label"))   # a submodule, imported on first use
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

# Public submodules, imported on first attribute access (PEP 562) so that ``import zoo`` stays as
# fast as the names above need: ``zoo.transforms`` loads MONAI's transforms only when used.
_SUBMODULES = frozenset(
    {
        "adapt",
        "bench",
        "cards",
        "datalist",
        "export",
        "fast",
        "finetune",
        "hub",
        "hub_repo",
        "inference",
        "layers",
        "models",
        "onnx_runtime",
        "plan",
        "plots",
        "predict",
        "presets",
        "provenance",
        "publish",
        "runconfig",
        "seg_metrics",
        "ssl",
        "study",
        "train",
        "transforms",
    }
)


def __getattr__(name: str) -> object:
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"zoo.{name}")  # also binds it here: no second call
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBMODULES)
