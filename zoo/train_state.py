"""What a training run keeps on disk, and the check that a rerun may resume it.

The run folder of :func:`zoo.train.train`: ``model.safetensors`` (the plain model, LoRA
merged), ``lora_state.safetensors`` (with LoRA), both without the buffers a model rebuilds from
its configuration (:mod:`zoo.layers.derived`), so a run's file is the file ``zoo publish``
uploads; ``trainer_state.pt`` (step, optimiser, schedule, random states; read back with
``torch.load(weights_only=True)``), ``config.json`` and ``log.jsonl``; files are replaced
atomically. A rerun resumes only with the settings the run was started with
(:func:`check_resume`); the run's length may change.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zoo._files import write_atomically

__all__ = [
    "MODEL_FILE",
    "BEST_FILE",
    "LORA_FILE",
    "STATE_FILE",
    "CONFIG_FILE",
    "LOG_FILE",
    "LOCK_FILE",
    "LENGTH_SETTINGS",
    "settings_changes",
    "check_resume",
    "RunSettingsChangedError",
    "read_log",
    "read_trainer_state",
    "run_state_dict",
]

MODEL_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
LORA_FILE = "lora_state.safetensors"
STATE_FILE = "trainer_state.pt"
CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
LOCK_FILE = ".train.lock"


def _save_tensors(path: Path, sd: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
    write_atomically(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def run_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a run saves of ``model``: its plain state_dict (LoRA merged) less its derived buffers.

    ``zoo.create`` and a resume rebuild those buffers, so they need not be stored; a file that
    stores them (a run saved before they were left out) loads all the same.
    """
    from zoo.adapt import plain_state_dict
    from zoo.layers.derived import without_derived

    return without_derived(plain_state_dict(model), model)


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "gauss": gauss,
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(
    out: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    progress: dict[str, Any],
    config: Mapping[str, Any],
) -> None:
    from zoo.adapt import has_lora
    from zoo.layers.derived import without_derived

    base = model
    meta = {"step": str(progress["step"])}
    _save_tensors(out / MODEL_FILE, run_state_dict(base), meta)
    if has_lora(base):
        _save_tensors(out / LORA_FILE, without_derived(base.state_dict(), base), meta)
    state = {
        **progress,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }
    write_atomically(out / STATE_FILE, lambda p: torch.save(state, p))
    from zoo.runconfig import RunConfig, write_config

    if isinstance(config, RunConfig):  # zoo's own runs: the one writer of config.json
        write_config(out / CONFIG_FILE, dataclasses.replace(config, step=int(progress["step"])))
        return
    cfg = {**config, "step": progress["step"]}
    write_atomically(out / CONFIG_FILE, lambda p: p.write_text(json.dumps(_jsonable(cfg), indent=2) + "\n"))


def _jsonable(obj: Any) -> Any:
    from zoo.runconfig import jsonable

    return jsonable(obj)


def read_trainer_state(out: Path) -> dict[str, Any]:
    """The run folder's ``trainer_state.pt``, read without running code from it.

    Raises:
        CheckpointFormatError: one line, "not a medzoo trainer state", for anything else (a pickle
            of other objects, a text file, a truncated file), never torch's advice to unpickle it.
    """
    from zoo.convert import CheckpointFormatError, _torch_load_reason

    path = Path(out) / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointFormatError(
            f"{path}: not a medzoo trainer state ({_torch_load_reason(e)}); refusing to resume from it: "
            "choose another output folder"
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointFormatError(
            f"{path}: not a medzoo trainer state (expected a mapping with an integer 'step'); refusing to "
            "resume from it: choose another output folder"
        )
    return state


def _load_checkpoint(out: Path, model: nn.Module) -> dict[str, Any]:
    from safetensors.torch import load_file

    from zoo._factory import CheckpointMismatchError
    from zoo.adapt import has_lora
    from zoo.convert import CheckpointFormatError
    from zoo.layers.derived import derived_buffer_keys

    base = model
    path = out / (LORA_FILE if has_lora(base) else MODEL_FILE)
    try:
        weights = load_file(str(path))
    except Exception as e:  # safetensors' own error types; never the file's content
        raise CheckpointFormatError(f"{path}: not a readable safetensors file ({type(e).__name__})") from None
    # Strict but for the derived buffers: newer runs leave them out, older ones hold them.
    result = base.load_state_dict(weights, strict=False)
    missing = sorted(set(result.missing_keys) - derived_buffer_keys(base))
    if missing or result.unexpected_keys:
        raise CheckpointMismatchError(
            f"{path} does not fit the model to resume: {len(missing)} key(s) missing "
            f"({', '.join(missing[:3])}), {len(result.unexpected_keys)} unexpected "
            f"({', '.join(result.unexpected_keys[:3])}); choose another output folder"
        )
    return read_trainer_state(out)


# Settings that set only the run's length: a rerun may change them (the schedule follows the new
# length); every other setting is fixed for the life of a run.
LENGTH_SETTINGS = ("total_steps", "optim.warmup_steps", "optim.step_size")


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def settings_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """What differs between a saved run's settings and a rerun's.

    Args:
        saved / current: nested settings (JSON-like); compared key by dotted key.

    Returns:
        ``(refused, applied)``: ``"key: saved → current"`` lines; ``applied`` holds the
        run-length settings (:data:`LENGTH_SETTINGS`), ``refused`` every other difference.
    """
    a, b = _flat(json.loads(json.dumps(_jsonable(saved)))), _flat(json.loads(json.dumps(_jsonable(current))))
    refused, applied = [], []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "(unset)") != b.get(key, "(unset)"):
            line = f"{key} {a.get(key, '(unset)')} → {b.get(key, '(unset)')}"
            (applied if key in LENGTH_SETTINGS else refused).append(line)
    return refused, applied


class RunSettingsChangedError(ValueError):
    """A rerun asked to resume a run with other settings than the run was started with."""


def check_resume(out_dir: str | Path, saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Refuse a resume whose settings differ from the saved run's; return the length changes applied.

    Raises:
        RunSettingsChangedError: naming every changed setting and how to start a new run.
    """
    refused, applied = settings_changes(saved, current)
    if refused:
        # The optimiser state, schedule and data order were built from the saved settings: resuming
        # them under other values would give a run that matches neither, so a change starts a new run.
        raise RunSettingsChangedError(
            f"the run in {out_dir} was started with other settings ({'; '.join(refused)}); rerun with "
            "the saved settings to resume it, or start a new run: --restart (replaces it) or another --out"
        )
    return applied


def read_log(out_dir: str | Path) -> list[dict[str, Any]]:
    """The entries of ``out_dir/log.jsonl`` (training steps and validations, in order)."""
    path = Path(out_dir) / LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
