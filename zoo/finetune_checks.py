"""The checks of a ``zoo finetune`` run that need no data: the run folder, a saved run, licence, device.

:func:`zoo.finetune.finetune` runs every check before any volume is read, in this order: the
output folder's owner (:func:`check_output_spares_input`, :func:`check_run_folder`: a folder that
is not a run of ours is refused whatever else is wrong), the settings and the saved run's
(:func:`read_saved_settings`), "already complete" (:func:`saved_step`), the licence the run will
carry (:func:`licence_line`) and the device (:func:`check_device`). Each reads at most a
``config.json``: a refusal costs well under a second, however large the data.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "check_output_spares_input",
    "check_run_folder",
    "read_saved_settings",
    "saved_step",
    "licence_line",
    "check_device",
]


def check_output_spares_input(p: Any, out_dir: str | Path) -> None:
    """Refuse a run folder that holds (or is) its own starting checkpoint: saving would overwrite it.

    Args:
        p: a :class:`zoo.plan.ModelPlan`, or the checkpoint path as given (checked before it is
            even planned: a folder that is no run yet must be refused for what it is), or None.

    Raises:
        ValueError: naming both paths.
    """
    from zoo.hub_repo import is_hub_id

    if p is None or is_hub_id(p):
        return
    if isinstance(p, str | Path):
        start = Path(p)
        if not start.exists():
            return
    else:
        start = p.run or p.path
        if start is None or p.source in ("registry", "hf-hub"):
            return
    ckpt, out = Path(start).resolve(), Path(out_dir).resolve()
    if ckpt == out or out in ckpt.parents:
        raise ValueError(
            f"the checkpoint {start} lies in the output folder {out_dir}: the run would overwrite "
            "the weights it starts from; choose another --out"
        )


def check_run_folder(out_dir: str | Path, kind: str, resume: bool = True) -> bool:
    """Refuse a non-empty ``out_dir`` that is not a run of this ``kind``; True when it holds one.

    A run folder has an owner: ``zoo finetune`` (or ``zoo pretrain``) writes only into a new or
    empty folder, or into one of its own runs (resumed, or restarted with ``--restart``). A
    folder holding anything else (a published model, another kind of run, someone's files)
    is refused before anything is read or written.

    Raises:
        ValueError: naming the folder, what it holds and what to do.
    """
    from zoo.runconfig import ConfigError, read_config
    from zoo.train_state import CONFIG_FILE, STATE_FILE

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; a run writes a folder")
    found = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not found:
        return False
    why = "it is not a zoo run"
    if (out / CONFIG_FILE).is_file():
        try:
            cfg = read_config(out / CONFIG_FILE)
        except (ConfigError, OSError) as e:
            why = f"its config.json is not a run's ({str(e).split(': ')[-1]})"
        else:
            own = (out / STATE_FILE).is_file() or kind == "pretrain"
            if cfg.kind == kind and own:
                return True
            why = f"it holds a {cfg.kind or 'published'} {cfg.model_name} model, not a {kind} run"
    elif kind == "pretrain" and ((out / "trainer" / STATE_FILE).is_file() or (out / STATE_FILE).is_file()):
        return True  # a pretraining run interrupted before its first export: its trainer state
    elif kind == "pretrain" and all(f.startswith("stage") or f.startswith(".") for f in found):
        return True  # a pipeline interrupted before its last stage: its stage folders
    raise ValueError(
        f"--out {out} already holds {', '.join(found[:6])}{' …' if len(found) > 6 else ''} and {why}; "
        "a run writes only into a new or empty folder or one of its own runs: choose another --out"
    )


def read_saved_settings(out_dir: str | Path) -> dict[str, Any] | None:
    """The settings of a resumable ``zoo finetune`` run in ``out_dir`` (None: no run to resume)."""
    from zoo.runconfig import ConfigError, read_config
    from zoo.train_state import CONFIG_FILE, STATE_FILE

    out = Path(out_dir)
    if not (out / STATE_FILE).is_file() or not (out / CONFIG_FILE).is_file():
        return None
    try:
        cfg = read_config(out / CONFIG_FILE)
    except (ConfigError, OSError):
        return None  # not a run of ours: check_run_folder names what the folder holds
    saved = cfg.finetune if cfg.kind == "finetune" else None
    return dict(saved) if isinstance(saved, Mapping) else None


def saved_step(out_dir: str | Path) -> int | None:
    """The last saved step of the run in ``out_dir``, from its ``config.json`` (None: none saved)."""
    from zoo.runconfig import ConfigError, read_config
    from zoo.train_state import CONFIG_FILE, STATE_FILE

    out = Path(out_dir)
    if not (out / STATE_FILE).is_file() or not (out / CONFIG_FILE).is_file():
        return None
    try:
        return read_config(out / CONFIG_FILE).step
    except (ConfigError, OSError):
        return None


def licence_line(p: Any) -> str:
    """One line on the licence a run started from the plan ``p`` will carry: that of its chain.

    Known before loading for registered weights, run folders and Hub repositories (their
    recorded lineage); a plain file is identified by content when it is loaded.
    """
    from zoo.provenance import chain_licence
    from zoo.runconfig import Link

    if p.source == "none":
        return (
            "licence: none (random initialisation); `zoo publish` asks for one with --license, "
            "e.g. apache-2.0 (the project's)"
        )
    chain = tuple(p.lineage)
    ws = p.weights
    if ws is not None:
        chain += (Link(p.id, None, ws.license, ws.redistributable, ws.covers, "registry"),)
    if p.source == "file" and not chain:
        return f"licence: that of {p.id}, identified by its content when it is loaded"
    licence, redistributable, link = chain_licence(chain)
    if licence is None:
        return f"licence: unknown (nothing in the chain of {p.id} states one); publishing needs --license"
    line = f"licence: {licence}, from {link.id}"
    if licence == "none":
        line = f"licence: none (the upstream of {link.id} publishes no licence)"
    if redistributable is False:
        line += "; no redistribution: the run trains, `zoo publish` needs the licensor's permission"
    return line


def check_device(device: str | None) -> str | None:
    """Refuse a device that is not one or not present here (before any data is read).

    Raises:
        ValueError: naming the device and what is available.
    """
    import torch

    if device is None:
        return None
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a device; use cpu or cuda (cuda:N)") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index is not None and dev.index >= n):
            raise ValueError(
                f"--device {device}: {n} CUDA device(s) available here"
                + ("; use --device cpu" if n == 0 else f"; use cuda:0 … cuda:{n - 1}")
            )
    return device
