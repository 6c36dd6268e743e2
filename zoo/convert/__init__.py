"""Checkpoint conversion: the authors' formats → our state_dict.

One module per family (``zoo.convert.<family>``) exposes
``convert(checkpoint, spec) -> dict[str, Tensor]``. It receives whatever
``torch.load(path, weights_only=True)`` returned (or a safetensors dict) and knows the
containers and key prefixes of that family's released and trained checkpoints. Each
unwrapping step is explicit and logged; nothing is guessed silently.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

__all__ = [
    "CheckpointFormatError",
    "unwrap_container",
    "strip_prefix",
    "read_checkpoint",
    "convert_checkpoint",
    "tensor_dict",
    "layout_keys",
    "web_page_excerpt",
]


class CheckpointFormatError(ValueError):
    """A checkpoint whose container or keys are not a format this family knows."""


def tensor_dict(obj: Any, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Check that ``obj`` is a flat ``{str: Tensor}`` mapping and return it as a dict."""
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{what}: expected a mapping of tensors, found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointFormatError(
            f"{what}: expected a flat mapping of name → tensor; entries {bad[:5]} are not tensors"
        )
    return dict(obj)


def layout_keys(sd: Mapping[str, torch.Tensor], family: str) -> list[str]:
    """The keys of a flat state_dict whose layout a converter is about to recognise.

    Args:
        sd: the unwrapped state_dict.
        family: the converter's family, for the message.

    Returns:
        The keys, in order.

    Raises:
        CheckpointFormatError: when there are none (an empty file or container).
    """
    keys = list(sd)
    if not keys:
        raise CheckpointFormatError(f"{family}: checkpoint holds no tensors")
    return keys


def unwrap_container(obj: Any, containers: Iterable[str]) -> tuple[Any, str | None]:
    """Return ``obj[name]`` for the first container key present, and which one it was.

    Only the named containers are tried (e.g. Lightning's ``state_dict``, PyMIC's
    ``model_state_dict``), so an unknown layout fails instead of loading the wrong thing.
    """
    if isinstance(obj, Mapping):
        for name in containers:
            inner = obj.get(name)
            if isinstance(inner, Mapping):
                log.debug("checkpoint: using container %r", name)
                return inner, name
    return obj, None


def strip_prefix(sd: Mapping[str, torch.Tensor], prefixes: Iterable[str]) -> tuple[dict, str | None]:
    """Strip the first prefix in ``prefixes`` that *every* key starts with.

    A prefix carried by only some keys is not stripped: mixed checkpoints (a Lightning
    module with extra SSL heads, say) are the converter's job to split explicitly.
    """
    for p in prefixes:
        if sd and all(k.startswith(p) for k in sd):
            log.debug("checkpoint: stripping prefix %r", p)
            return {k[len(p) :]: v for k, v in sd.items()}, p
    return dict(sd), None


def is_safetensors(path: str | Path) -> bool:
    """Whether the file is safetensors (an 8-byte header length, then a JSON header)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and int.from_bytes(head[:8], "little") < size and head[8:9] == b"{"


def read_checkpoint(path: str | Path) -> Any:
    """Read a checkpoint file without executing code from it.

    safetensors files (recognised by content, not by name) are read with safetensors;
    anything else with ``torch.load(weights_only=True)``, which refuses pickled code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointFormatError(f"{path}: not a readable safetensors file ({e})") from e
    if (page := web_page_excerpt(path)) is not None:  # named, never quoted: it may be any file
        kind = (
            "a web page (HTML)"
            if re.match(r"(?i)\s*<(!doctype html|html|head|body)", page)
            else "a text file"
        )
        raise CheckpointFormatError(
            f"{path}: {kind}, not a checkpoint (a download link that answered with a page, or a link to "
            "another file?)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointFormatError(
            f"{path}: not a checkpoint torch.load(weights_only=True) can read ({_torch_load_reason(e)}). "
            "Files that need arbitrary code to unpickle are refused."
        ) from e


def _torch_load_reason(e: Exception) -> str:
    """torch's reason for refusing a file, without its advice to retry with ``weights_only=False``."""
    text = str(e)
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", text, re.S)
    reason = " ".join((m.group(1) if m else text.splitlines()[0] if text else "").split())
    # Only the offending global or opcode is kept: torch's allowlisting hints are for trusted files.
    reason = re.split(r"\. Please use|\. Re-running", reason)[0]
    reason = re.sub(r"invalid load key, .*", "invalid load key", reason)  # a byte of the file: not echoed
    if "weights_only" in reason and "False" in reason:
        reason = ""
    return f"{type(e).__name__}: {reason}" if reason else type(e).__name__


def convert_checkpoint(checkpoint: Any, spec: Any) -> dict[str, torch.Tensor]:
    """Convert a loaded checkpoint to ``spec``'s state_dict with its family's converter."""
    try:
        module = importlib.import_module(f"zoo.convert.{spec.family}")
    except ModuleNotFoundError as e:
        raise CheckpointFormatError(f"no converter for family {spec.family!r}") from e
    return module.convert(checkpoint, spec)


_BINARY_MAGIC = (b"PK\x03\x04", b"\x80")  # torch's zip container; a legacy pickle


def web_page_excerpt(path: str | Path, limit: int = 200) -> str | None:
    """The first ``limit`` characters of ``path`` if it is HTML or text rather than a binary checkpoint.

    For a page a server sent (its excerpt says why: a quota page, a login wall); a local file is
    only named as text, never quoted (a link may point at any file of the machine).

    Returns:
        The excerpt with whitespace collapsed, or None for a binary file.
    """
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head or head.startswith(_BINARY_MAGIC):
        return None
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: 8-byte header length, then JSON
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not just a character cut at the end of the read
            return None
        text = head[: e.start].decode("utf-8")
    if sum(not (c.isprintable() or c.isspace()) for c in text) > len(text) // 100:
        return None
    return " ".join(text.split())[:limit]
