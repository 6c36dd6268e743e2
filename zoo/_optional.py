"""Optional dependencies: which extra installs each, and the one-line hint when one is missing.

The core install (registry, models, weights, predict) needs none of these; each feature
that does calls :func:`require` at its entry point, so a missing extra fails there with
``pip install 'medzoo[EXTRA]'`` instead of a traceback deep inside the feature.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

__all__ = ["EXTRAS", "PROVIDER_EXTRAS", "MissingExtraError", "require", "extra_for", "hint"]

# Top-level module name → the extra that installs it (see [project.optional-dependencies]).
EXTRAS: dict[str, str] = {
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "lightly": "train",
    "sklearn": "train",
    "peft": "lora",
    "nilearn": "demo",
    "matplotlib": "plots",
    "itk": "io",
    "fire": "bundle",
    "ignite": "bundle",
    "tensorboard": "tensorboard",
    "mlflow": "mlflow",
    "accelerate": "examples",
}
# onnxruntime execution provider → the extra whose onnxruntime build has it (onnxruntime-gpu).
PROVIDER_EXTRAS: dict[str, str] = {
    "CUDAExecutionProvider": "onnx-gpu",
    "TensorrtExecutionProvider": "onnx-gpu",
}


class MissingExtraError(ImportError):
    """An optional dependency of a feature is not installed; the message names the extra."""


def hint(module: str, extra: str, feature: str | None = None) -> str:
    """The one-line message for a missing optional module."""
    what = f"{feature} needs {module}" if feature else f"{module} is not installed"
    return f"{what}: pip install 'medzoo[{extra}]'"


def extra_for(module: str | None) -> str | None:
    """The extra that installs ``module`` (a dotted name is looked up by its top level), or None."""
    if not module:
        return None
    return EXTRAS.get(module.split(".", 1)[0])


def _importable(name: str) -> bool:
    import sys

    # A ``None`` entry in sys.modules is Python's own "blocked" marker (import raises).
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def require(*modules: str, extra: str | None = None, feature: str | None = None) -> ModuleType:
    """Import optional ``modules`` or fail with one line naming the extra that installs them.

    Args:
        modules: top-level module names (``"onnx"``, ``"onnxruntime"``).
        extra: the extra to name; default: the first module's, from :data:`EXTRAS`.
        feature: what needs them, for the message (``"ONNX export"``).

    Returns:
        The first module, imported.

    Raises:
        MissingExtraError: ``"ONNX export needs onnxruntime: pip install 'medzoo[onnx]'"``.
    """
    for name in modules:
        if not _importable(name):
            raise MissingExtraError(hint(name, extra or extra_for(name) or "all", feature)) from None
    return importlib.import_module(modules[0])
