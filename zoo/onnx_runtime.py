"""Exported files at run time: onnxruntime sessions, the medzoo metadata, an exported file as a model.

A file written by :func:`zoo.export.to_onnx` describes itself in its ``metadata_props``
(:data:`METADATA_KEYS`): model, weights, preprocessing, labels, sliding window.
:func:`read_onnx_metadata` reads them back without loading the weights, and :func:`load_onnx`
wraps the file as an :class:`OnnxModel` that :func:`zoo.predict.predict_nifti` takes as it takes
a model from :func:`zoo.create`. Needs the ``onnx`` extra.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["onnx_session", "read_onnx_metadata", "load_onnx", "OnnxModel", "METADATA_KEYS"]


def onnx_session(
    path: str | Path,
    threads: int | None = None,
    *,
    spinning: bool = False,
    optimized_path: str | Path | None = None,
):
    """An onnxruntime CPU session on ``path``.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (default: torch's).
        spinning: let idle onnxruntime threads spin-wait. Off by default: on a shared or small
            machine spinning threads steal the cores the working ones need (measured 1.4–2.9×
            slower on 2 loaded cores); a dedicated server may gain a few percent with it on.
        optimized_path: also write the graph after onnxruntime's optimisations (all levels,
            attention and layout fusions included) there, for serving without re-optimising.

    Returns:
        An ``onnxruntime.InferenceSession`` with graph optimisation ``ORT_ENABLE_ALL``.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    flag = "1" if spinning else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", flag)
    opts.add_session_config_entry("session.inter_op.allow_spinning", flag)
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


# metadata_props keys (values are strings; JSON where structured). A file carries all of them.
# The medzoo metadata of an exported file is read (and checked) where config.json is: zoo.runconfig.
from zoo.runconfig import METADATA_KEYS, read_onnx_metadata  # noqa: E402


class OnnxModel(nn.Module):
    """An exported file run by onnxruntime, usable where a zoo model is expected for inference.

    Callable on a float tensor (batch first) and returns a float tensor; ``pretrained_cfg`` is
    rebuilt from the file's metadata alone, so :func:`zoo.predict.predict_nifti` and
    :func:`zoo.inference.sliding_window_predict` take it as they take a model from
    :func:`zoo.create`. Inference only: ``train()`` refuses, there are no parameters.

    Args:
        path: the ``.onnx`` file (exported by :func:`zoo.export.to_onnx`).
        threads: onnxruntime intra-op threads (default: torch's).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.metadata = read_onnx_metadata(self.path)
        md = self.metadata
        self.pretrained_cfg = {
            "name": md["model"],
            "tag": md["weights_tag"] or None,
            "family": md["family"],
            "model_args": md["model_args"],
            "input_size": md["input_size"] if len(md["input_size"]) > 1 else None,
            "preprocessing": md["preprocessing"],
            "sliding_window": md["sliding_window"] or {},
            "weights": md["weights"],
            "onnx": str(self.path),
        }
        if md["labels"] is not None:
            self.pretrained_cfg["labels"] = md["labels"]
        self.num_classes = md["num_classes"]
        self._session = onnx_session(self.path, threads)
        self._input = self._session.get_inputs()[0]
        super().train(False)

    def train(self, mode: bool = True) -> OnnxModel:
        if mode:
            raise RuntimeError(f"{self.path.name} is an ONNX file run by onnxruntime: inference only")
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if x.dtype != torch.float32:
            x = x.float()
        dims = self._input.shape
        if len(dims) != x.ndim or any(
            isinstance(d, int) and d != s for d, s in zip(dims[1:], x.shape[1:], strict=False)
        ):
            raise ValueError(f"{self.path.name} takes inputs of shape {tuple(dims)}, got {tuple(x.shape)}")
        outs = self._session.run(None, {self._input.name: x.detach().cpu().contiguous().numpy()})
        tensors = [torch.from_numpy(o) for o in outs]
        return tensors[0] if len(tensors) == 1 else tensors

    def extra_repr(self) -> str:
        return f"path={self.path.name}, model={self.metadata['model']}"


def load_onnx(path: str | Path, threads: int | None = None) -> OnnxModel:
    """An exported file as a model: see :class:`OnnxModel`.

    Raises:
        ValueError: not an ONNX file or one without medzoo metadata.
    """
    return OnnxModel(path, threads)
