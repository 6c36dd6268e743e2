"""Exported files at run time: onnxruntime sessions, the medzoo metadata, an exported file as a model.

A file written by :func:`zoo.export.to_onnx` describes itself in its ``metadata_props``
(:data:`METADATA_KEYS`): model, weights, preprocessing, labels, sliding window.
:func:`read_onnx_metadata` reads them back without loading the weights, and :func:`load_onnx`
wraps the file as an :class:`OnnxModel` that :func:`zoo.predict.predict_nifti` takes as it takes
a model from :func:`zoo.create`. Needs the ``onnx`` extra; a GPU needs ``onnx-gpu``
(onnxruntime-gpu), whose CUDA provider (TensorRT's when installed and asked for) a session on a
CUDA device takes, falling back to the CPU with one line that says why.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger("zoo")

__all__ = [
    "onnx_session",
    "onnx_providers",
    "read_onnx_metadata",
    "load_onnx",
    "OnnxModel",
    "METADATA_KEYS",
    "check_runtime_version",
]


def onnx_providers(
    device: str | torch.device | None = None, tensorrt: bool = False, available: list[str] | None = None
) -> tuple[list[Any], str]:
    """onnxruntime's execution providers for ``device``, and a line saying which run and why.

    Args:
        device: a CUDA device (its index is the provider's ``device_id``) or the CPU (None).
        tensorrt: put TensorRT's provider first when this onnxruntime has it.
        available: the providers to choose from (default: ``onnxruntime.get_available_providers()``).

    Returns:
        ``(providers, note)``: the list for ``InferenceSession`` (the CPU provider always last,
        for the nodes a GPU provider does not take) and the line to show the user.
    """
    import onnxruntime as ort

    from zoo._optional import PROVIDER_EXTRAS

    dev = torch.device(device) if device is not None else torch.device("cpu")
    have = list(ort.get_available_providers() if available is None else available)
    if dev.type != "cuda":
        if tensorrt:
            return ["CPUExecutionProvider"], "onnxruntime on the CPU (TensorRT needs a CUDA device)"
        return ["CPUExecutionProvider"], "onnxruntime on the CPU"
    opts = {"device_id": dev.index or 0}
    chosen: list[Any] = []
    said = []
    if tensorrt:
        if "TensorrtExecutionProvider" in have:
            chosen.append(("TensorrtExecutionProvider", dict(opts)))
            said.append("TensorRT")
        else:
            said.append("no TensorRT provider in this onnxruntime")
    if "CUDAExecutionProvider" in have:
        chosen.append(("CUDAExecutionProvider", dict(opts)))
        said.append(f"CUDA (GPU {opts['device_id']})")
    if not chosen:
        return ["CPUExecutionProvider"], (
            f"onnxruntime has no CUDA provider here (providers: {', '.join(have)}); running on the CPU "
            f"instead: pip install 'medzoo[{PROVIDER_EXTRAS['CUDAExecutionProvider']}]' (onnxruntime-gpu, in "
            "place of onnxruntime) for the GPU"
        )
    return [*chosen, "CPUExecutionProvider"], "onnxruntime on " + ", ".join(said)


def check_runtime_version(required: str | None, where: str) -> None:
    """Refuse a file that needs a newer onnxruntime than the installed one, in one line.

    Args:
        required: the file's ``medzoo.min_onnxruntime`` (None in files that predate the key).
        where: the file, for the message.

    Raises:
        ValueError: the installed onnxruntime is older than ``required``.
    """
    import onnxruntime as ort

    if not required:
        return
    have = _version_tuple(ort.__version__)
    if have < _version_tuple(required):
        raise ValueError(
            f"{where} needs onnxruntime >= {required}, found {ort.__version__}: upgrade onnxruntime, or "
            "re-export with an older opset (zoo export --opset 20)"
        )


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for p in text.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def onnx_session(
    path: str | Path,
    threads: int | None = None,
    *,
    spinning: bool = False,
    optimized_path: str | Path | None = None,
    providers: list[Any] | None = None,
):
    """An onnxruntime session on ``path`` (the CPU unless ``providers`` says otherwise).

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (default: torch's).
        spinning: let idle onnxruntime threads spin-wait. Off by default: on a shared or small
            machine spinning threads steal the cores the working ones need (measured 1.4–2.9×
            slower on 2 loaded cores); a dedicated server may gain a few percent with it on.
        optimized_path: also write the graph after onnxruntime's optimisations (all levels,
            attention and layout fusions included) there, for serving without re-optimising.
        providers: execution providers (:func:`onnx_providers`); default: the CPU's.

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
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"])


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
        device: where onnxruntime runs (:meth:`use_device`); default the CPU.
        tensorrt: prefer TensorRT's provider on a CUDA device when this onnxruntime has it.

    Attributes:
        provider_note: which providers the session runs, and why, in one line.
    """

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        device: str | torch.device | None = None,
        tensorrt: bool = False,
    ) -> None:
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
        check_runtime_version(md.get("min_onnxruntime"), self.path.name)
        self.threads, self.tensorrt = threads, tensorrt
        self.device = torch.device("cpu")
        self.provider_note = ""
        self._session = None
        self.use_device(device)
        super().train(False)

    def use_device(self, device: str | torch.device | None) -> None:
        """Run on ``device``: onnxruntime's CUDA provider on a GPU (TensorRT's first when asked for),
        its CPU provider otherwise. A GPU provider that is missing or fails to start falls back
        to the CPU, and :attr:`provider_note` says so (also logged as a warning)."""
        dev = torch.device(device) if device is not None else torch.device("cpu")
        if self._session is not None and dev == self.device:
            return
        providers, note = onnx_providers(dev, self.tensorrt)
        try:
            session = onnx_session(self.path, self.threads, providers=providers)
        except Exception as e:  # a GPU provider whose libraries (CUDA, cuDNN) do not load
            if providers == ["CPUExecutionProvider"]:
                raise
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            note = f"onnxruntime's GPU provider failed to start ({first}); running on the CPU instead"
            providers = ["CPUExecutionProvider"]
            session = onnx_session(self.path, self.threads, providers=providers)
        used = session.get_providers()
        if dev.type == "cuda" and used and used[0] == "CPUExecutionProvider" and "CPU instead" not in note:
            note = f"onnxruntime fell back to the CPU (providers in use: {', '.join(used)})"
        if dev.type == "cuda" and "CPU" in note and "instead" in note:
            log.warning(note)
        self._session, self.provider_note = session, note
        self._input = session.get_inputs()[0]
        self.device = dev if used and used[0] != "CPUExecutionProvider" else torch.device("cpu")

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
        # Host arrays in and out: onnxruntime copies to and from the GPU provider itself.
        outs = self._session.run(None, {self._input.name: x.detach().float().cpu().contiguous().numpy()})
        tensors = [torch.from_numpy(o) for o in outs]
        return tensors[0] if len(tensors) == 1 else tensors

    def extra_repr(self) -> str:
        return f"path={self.path.name}, model={self.metadata['model']}"


def load_onnx(
    path: str | Path,
    threads: int | None = None,
    device: str | torch.device | None = None,
    tensorrt: bool = False,
) -> OnnxModel:
    """An exported file as a model: see :class:`OnnxModel`.

    Raises:
        ValueError: not an ONNX file, one without medzoo metadata, or one that needs a newer
            onnxruntime than the installed one.
    """
    return OnnxModel(path, threads, device, tensorrt)
