"""medzoo: self-supervised 3D medical-imaging models by name, with their published weights.

>>> import zoo
>>> model = zoo.create("qtunet-t", pretrained=True)          # default weights tag (ct-ssl)
>>> zoo.list_models("qtunet*", pretrained=True)
>>> t = zoo.transforms.for_model(model, keys=("image", "label"))   # a submodule, imported on first use
"""

from typing import TYPE_CHECKING

from zoo._version import __version__

if TYPE_CHECKING:
    from zoo._factory import (
        CheckpointMismatchError,
        LoadReport,
        NoPretrainedWeightsError,
        create,
        load_weights,
    )
    from zoo._registry import (
        ModelSpec,
        PaperInfo,
        WeightSpec,
        get_spec,
        list_models,
        list_pretrained,
        resolve,
    )
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

# The public names and submodules, imported on first attribute access (PEP 562): ``import zoo``
# loads neither torch nor MONAI (``zoo --version`` is instant); ``zoo.create`` loads what it needs.
_NAMES = {
    "create": "zoo._factory",
    "load_weights": "zoo._factory",
    "LoadReport": "zoo._factory",
    "CheckpointMismatchError": "zoo._factory",
    "NoPretrainedWeightsError": "zoo._factory",
    "list_models": "zoo._registry",
    "list_pretrained": "zoo._registry",
    "get_spec": "zoo._registry",
    "resolve": "zoo._registry",
    "ModelSpec": "zoo._registry",
    "WeightSpec": "zoo._registry",
    "PaperInfo": "zoo._registry",
    "CheckpointFormatError": "zoo.convert",
    "model_info": "zoo.info",
}
_SUBMODULES = frozenset(
    {
        "adapt",
        "bench",
        "cards",
        "convert",
        "datalist",
        "export",
        "fast",
        "finetune",
        "hub",
        "hub_repo",
        "inference",
        "info",
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
    import importlib

    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
        globals()[name] = value  # no second call
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"zoo.{name}")  # also binds it here: no second call
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES) | _SUBMODULES)
