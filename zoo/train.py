"""A small, generic training loop: the base of ``zoo finetune`` and of the pretraining recipes.

One function, :func:`train`, runs any model with any loss::

    from zoo.train import LoopSettings, OptimConfig, make_loader, train

    loader = make_loader(dataset, batch_size=2)            # sharded under torchrun
    result = train(
        model,
        loss_fn=lambda model, batch: criterion(model(batch["image"]), batch["label"]),
        train_loader=loader,
        out_dir="run/",
        optim=OptimConfig(lr=1e-4, warmup_steps=100),
        total_steps=5000,
        loop=LoopSettings(save_every=500),                 # periods, resume, device …
    )

What it does, and nothing more:

* AdamW (or Adam / SGD) with linear warm-up and cosine decay (or step / poly / constant),
  optional layer-wise LR decay over the model's parts (:func:`zoo.adapt.param_groups`),
  gradient clipping and accumulation, bf16 autocast on CUDA;
* a progress bar and ``log.jsonl`` (loss, lr and wall time of every step, validation metrics);
* checkpoints in ``out_dir``: ``model.safetensors`` (the plain model, LoRA merged, loadable
  by ``zoo.create(name, checkpoint_path=...)``), ``config.json`` (what the caller passes in
  ``config`` plus the step), and ``trainer_state.pt`` (step, optimizer, scheduler, RNG
  states; read back with ``torch.load(weights_only=True)``); ``best.safetensors`` when a
  validation metric improves;
* resume: a rerun with the same ``out_dir`` continues from the last saved step, in the
  same place of the same epoch; Ctrl-C or SIGTERM saves the last completed step first;
* multi-process: under ``torchrun`` it joins the process group (NCCL on GPU, gloo on CPU),
  wraps the model in DistributedDataParallel, shards the data with the loader from
  :func:`make_loader`, and only rank 0 writes files or prints.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from zoo.train_state import (  # noqa: F401  (the run folder's names, re-exported)
    BEST_FILE,
    CONFIG_FILE,
    LENGTH_SETTINGS,
    LOCK_FILE,
    LOG_FILE,
    LORA_FILE,
    MODEL_FILE,
    STATE_FILE,
    RunSettingsChangedError,
    _jsonable,
    _load_checkpoint,
    _rng_state,
    _save_checkpoint,
    _save_tensors,
    _set_rng_state,
    check_resume,
    read_log,
    read_trainer_state,
    run_state_dict,
    settings_changes,
)

log = logging.getLogger("zoo")

__all__ = [
    "OptimConfig",
    "LoopSettings",
    "TrainResult",
    "EpochSampler",
    "make_loader",
    "build_optimizer",
    "build_scheduler",
    "train",
    "distributed_context",
    "unwrap",
    "lr_factor",
    "place_schedule",
    "read_log",
    "seed_everything",
    "settings_changes",
    "check_resume",
    "RunSettingsChangedError",
]


# ---------------------------------------------------------------------------------------
# processes


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, number of processes, device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def distributed_context(device: str | torch.device | None = None) -> DistInfo:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1).

    NCCL when CUDA is available, gloo otherwise; each process takes GPU ``LOCAL_RANK``.
    Without ``torchrun`` this is a single process on ``device`` (default: CUDA if present).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    if device is None:
        dev = torch.device("cuda", local) if cuda else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def _barrier(info: DistInfo) -> None:
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or ``torch.compile``) wrapper."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


# ---------------------------------------------------------------------------------------
# data


class EpochSampler(Sampler[int]):
    """Shuffled (or ordered) indices for one epoch and one rank, resumable mid-epoch.

    Like ``DistributedSampler``: the order of epoch ``e`` depends on ``seed + e`` only, the
    indices are padded to a multiple of the number of processes and split by rank. It
    also skips the first ``start`` indices of the epoch, so a resumed run sees exactly the
    samples the interrupted one had not seen yet.

    Args:
        dataset_len: number of samples.
        shuffle: shuffle per epoch.
        seed: base seed of the shuffles (the same on every rank).
        rank / world_size: this process and the number of processes.
    """

    def __init__(
        self, dataset_len: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1
    ):
        if dataset_len < 1:
            raise ValueError("the dataset is empty")
        self.n = dataset_len
        self.shuffle, self.seed = shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0
        self.per_rank = math.ceil(dataset_len / world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order; ``start`` indices of this rank's share are skipped."""
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        order += order[: self.per_rank * self.world_size - self.n]
        return order[self.rank :: self.world_size][self.start :]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return self.per_rank - self.start


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    collate_fn: Callable | None = None,
    drop_last: bool = True,
    dist_info: DistInfo | None = None,
) -> DataLoader:
    """A DataLoader with an :class:`EpochSampler` sharded over the processes of ``torchrun``.

    Args:
        dataset: any map-style dataset.
        batch_size: samples per process and step.
        shuffle: reshuffle every epoch.
        seed: shuffle seed (the same on every rank).
        num_workers: loader worker processes.
        collate_fn: e.g. ``monai.data.list_data_collate`` for transforms returning lists.
        drop_last: drop an incomplete last batch (keeps steps the same on every rank).
        dist_info: from :func:`distributed_context` (default: from the environment).
    """
    info = dist_info or distributed_context()
    sampler = EpochSampler(len(dataset), shuffle, seed, info.rank, info.world_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        drop_last=drop_last,
        pin_memory=info.device.type == "cuda",
        # Its own generator: creating an iterator then leaves the global RNG alone, so that a
        # resumed run draws the same dropout masks and augmentations as an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
    )


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


# ---------------------------------------------------------------------------------------
# optimiser and schedule


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule, as data (printed and saved with the run).

    Attributes:
        optimizer: ``"adamw"``, ``"adam"`` or ``"sgd"``.
        lr: peak learning rate.
        weight_decay: decoupled (AdamW) or L2 (Adam, SGD) weight decay.
        betas: Adam betas.
        momentum: SGD momentum.
        schedule: ``"cosine"`` (linear warm-up then cosine to ``min_lr_ratio · lr``),
            ``"step"`` (× ``gamma`` every ``step_size`` steps), ``"poly"``
            (``(1 − t)^power``) or ``"constant"``; all after ``warmup_steps``.
        warmup_steps: linear warm-up from 0.
        min_lr_ratio: floor of the cosine schedule, as a fraction of ``lr``.
        step_size / gamma: of the step schedule.
        power: of the poly schedule.
        layer_decay: layer-wise LR decay over the model's parts (None: one rate).
        grad_clip: clip the global gradient norm to this value (None: no clipping).
    """

    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    step_size: int = 0
    gamma: float = 0.5
    power: float = 0.9
    layer_decay: float | None = None
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "adam", "sgd"):
            raise ValueError(f"optimizer must be 'adamw', 'adam' or 'sgd', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "step", "poly", "constant"):
            raise ValueError(
                f"schedule must be 'cosine', 'step', 'poly' or 'constant', got {self.schedule!r}"
            )
        if self.schedule == "step" and self.step_size < 1:
            raise ValueError("the step schedule needs step_size >= 1")
        if self.lr <= 0 or self.warmup_steps < 0:
            raise ValueError(f"need lr > 0 and warmup_steps >= 0, got {self.lr} and {self.warmup_steps}")


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser over the trainable parameters of ``model``.

    With ``cfg.layer_decay`` the model must be a registered one (its parts come from its
    spec); otherwise one group, with no weight decay on biases and norm weights.
    """
    model = unwrap(model)
    if cfg.layer_decay is not None:
        from zoo.adapt import param_groups

        groups = param_groups(model, cfg.lr, cfg.layer_decay, cfg.weight_decay)
    else:
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": cfg.weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
        ]
        groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def lr_factor(cfg: OptimConfig, step: int, total_steps: int) -> float:
    """Multiplier of each group's base rate at ``step`` (0-based) of ``total_steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = step - cfg.warmup_steps
    span = max(total_steps - cfg.warmup_steps, 1)
    if cfg.schedule == "cosine":
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t / span, 1.0)))
    if cfg.schedule == "poly":
        return max(1 - t / span, 0.0) ** cfg.power
    if cfg.schedule == "step":
        return cfg.gamma ** (t // cfg.step_size)
    return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler following :func:`lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, total_steps))


def place_schedule(
    optimizer: torch.optim.Optimizer, scheduler: Any, cfg: OptimConfig, step: int, total_steps: int
) -> None:
    """Set every group's rate to what the schedule gives at ``step`` of ``total_steps``.

    A saved optimiser holds the rate its own run length gave for the next step (0 after the last
    step of a cosine run); a resumed run, longer or not, continues with its schedule's rate instead.
    """
    factor = lr_factor(cfg, step, total_steps)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    scheduler.last_epoch = step
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


# ---------------------------------------------------------------------------------------
# the loop


@dataclass
class TrainResult:
    """What :func:`train` did."""

    out_dir: Path
    step: int
    start_step: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    metrics: list[dict[str, float]] = field(default_factory=list)
    best: float | None = None
    seconds: float = 0.0
    already_complete: bool = False


class _Interrupted(Exception):
    pass


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    # torchrun and job schedulers stop workers with SIGTERM: save like on Ctrl-C.
    def handler(signum: int, frame: Any) -> None:
        raise _Interrupted(signal.Signals(signum).name)

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@dataclass(frozen=True)
class LoopSettings:
    """How :func:`train` runs its loop: validation, checkpoints, logging, device.

    Attributes:
        val_every: validation period in steps (default: only at the end).
        monitor: a key of ``val_fn``'s metrics; higher is better; its best value writes
            ``best.safetensors``.
        save_every: checkpoint period in steps (default: at validations and at the end).
        grad_accum_steps: batches per optimiser step.
        resume: continue from ``out_dir`` when it holds a checkpoint.
        progress: progress bar on rank 0.
        log_every: steps between progress-bar updates of the loss (log.jsonl has every step).
        device: default CUDA (this process's GPU under ``torchrun``) if present, else CPU.
        amp: bf16 autocast on CUDA.
        find_unused_parameters: passed to DDP (models with parts that do not run, such as
            PCT-Net's other resolution modes, need it).
        loggers: trackers that receive ``log.jsonl``'s scalars too (``tensorboard``, ``mlflow``:
            :mod:`zoo.run_loggers`).
    """

    val_every: int | None = None
    monitor: str | None = None
    save_every: int | None = None
    grad_accum_steps: int = 1
    resume: bool = True
    progress: bool = True
    log_every: int = 10
    device: str | torch.device | None = None
    amp: bool = False
    find_unused_parameters: bool = True
    loggers: tuple[str, ...] = ()


def train(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor | tuple[torch.Tensor, Mapping[str, float]]],
    train_loader: DataLoader,
    out_dir: str | Path,
    optim: OptimConfig,
    total_steps: int,
    loop: LoopSettings | None = None,
    *,
    val_fn: Callable[[nn.Module], Mapping[str, float]] | None = None,
    config: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` for ``total_steps`` optimiser steps, saving and resuming in ``out_dir``.

    Args:
        model: the model (moved to the device; wrapped in DDP under ``torchrun``).
        loss_fn: ``loss_fn(model, batch)`` → scalar loss, or ``(loss, {"name": value})``
            for extra logged values. ``batch`` is already on the device; ``model`` is the
            (possibly DDP-wrapped) module to call.
        train_loader: batches; use :func:`make_loader` so that the data are sharded under
            ``torchrun`` and a resumed run continues mid-epoch. Epochs repeat as needed.
        out_dir: where checkpoints, ``config.json`` and ``log.jsonl`` go (rank 0 only).
        optim: optimiser and schedule.
        total_steps: optimiser steps of the whole run (a resumed run counts the earlier ones).
        loop: validation and checkpoint periods, resume, logging, device (:class:`LoopSettings`;
            default: all defaults).
        val_fn: ``val_fn(model)`` → metrics, run on rank 0 with the unwrapped model in eval
            mode every ``loop.val_every`` steps and at the end.
        config: what to write in ``config.json`` (e.g. the model name and arguments, so
            that ``zoo.create(name, checkpoint_path=...)`` can rebuild it); the step is added.
        settings: what the run is defined by besides ``optim`` and ``total_steps`` (model,
            data, batch …); saved with the run. A resumed run must match them
            (:func:`check_resume`); only the run's length may change.

    Returns:
        A :class:`TrainResult` (losses and metrics as seen by rank 0).

    Raises:
        KeyboardInterrupt: after saving the last completed step, when interrupted
            (Ctrl-C or SIGTERM; the message names the signal); rerunning with
            ``resume=True`` continues from there.
        RunSettingsChangedError: resuming with other settings than the run's.
        RuntimeError: another process is training in ``out_dir``.
    """
    loop = loop or LoopSettings()
    with _run_lock(Path(out_dir), distributed_context(loop.device)):
        return _train(
            model, loss_fn, train_loader, out_dir, optim, total_steps, loop, val_fn, config, settings
        )


@contextmanager
def _run_lock(out: Path, info: DistInfo) -> Iterator[None]:
    # Two runs writing one folder would interleave checkpoints and resume from each other's state.
    if not info.is_main:
        yield
        return
    from filelock import FileLock, Timeout

    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RuntimeError(
            f"another process is training in {out} (it holds {LOCK_FILE}); wait for it to finish or "
            "choose another --out"
        ) from None
    try:
        yield
    finally:
        # Removed while still held, so the run folder keeps only the run's files.
        (out / LOCK_FILE).unlink(missing_ok=True)
        lock.release()


def _with_run_length(config: Any, optim: OptimConfig, total_steps: int) -> Any:
    """The config to save, with the optimiser and the run length (a RunConfig: in its run section)."""
    from zoo.runconfig import RunConfig

    extra = {"optim": asdict(optim), "total_steps": total_steps}
    if isinstance(config, RunConfig):
        return dataclasses.replace(config, optim=config.optim or extra["optim"], total_steps=total_steps)
    return {**extra, **dict(config or {})}


def _train(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], Any],
    train_loader: DataLoader,
    out_dir: str | Path,
    optim: OptimConfig,
    total_steps: int,
    loop: LoopSettings,
    val_fn: Callable[[nn.Module], Mapping[str, float]] | None,
    config: Mapping[str, Any] | None,
    settings: Mapping[str, Any] | None,
) -> TrainResult:
    val_every, monitor, save_every, grad_accum_steps = (
        loop.val_every, loop.monitor, loop.save_every, loop.grad_accum_steps
    )  # fmt: skip
    resume, progress, log_every, device = loop.resume, loop.progress, loop.log_every, loop.device
    if total_steps < 1 or grad_accum_steps < 1:
        raise ValueError(
            f"need total_steps >= 1 and grad_accum_steps >= 1, got {total_steps}, {grad_accum_steps}"
        )
    if monitor is not None and val_fn is None:
        raise ValueError("monitor needs a val_fn")
    info = distributed_context(device)
    out = Path(out_dir)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    base = unwrap(model).to(info.device)
    optimizer = build_optimizer(base, optim)
    scheduler = build_scheduler(optimizer, optim, total_steps)
    config = _with_run_length(config, optim, total_steps)

    say = print if info.is_main else (lambda *_a, **_k: None)
    run_settings = json.dumps(
        _jsonable({"optim": asdict(optim), "total_steps": total_steps, **dict(settings or {})}),
        sort_keys=True,
    )
    state: dict[str, Any] = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best": None, "rng": _rng_state()}
    state["settings"] = run_settings
    if resume and (out / STATE_FILE).is_file():
        saved_state = read_trainer_state(out)
        if "settings" in saved_state:  # runs saved before settings were recorded resume unchecked
            applied = check_resume(out, json.loads(saved_state["settings"]), json.loads(run_settings))
            if applied and saved_state["step"] < total_steps:
                say(f"resuming {out} with a new length: {'; '.join(applied)}")
        saved = _load_checkpoint(out, base)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = {k: saved[k] for k in ("step", "epoch", "batch_in_epoch", "best", "rng")}
        place_schedule(optimizer, scheduler, optim, state["step"], total_steps)
        state["settings"] = run_settings
        _set_rng_state(state["rng"])
        if info.is_main:
            log.info("resuming %s at step %d", out, state["step"])
    start_step = state["step"]
    result = TrainResult(out_dir=out, step=start_step, start_step=start_step, best=state["best"])
    if start_step >= total_steps:
        result.already_complete = True
        say(
            f"the run in {out} is already complete (step {start_step} of {total_steps}); nothing to train. "
            "Give more --steps to extend it, or --restart / another --out for a new run."
        )
        return result

    net: nn.Module = base
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.device.index] if info.device.type == "cuda" else None
        net = DistributedDataParallel(
            base, device_ids=ids, find_unused_parameters=loop.find_unused_parameters
        )

    sampler = train_loader.sampler
    resumable = isinstance(sampler, EpochSampler)
    if not resumable and info.distributed:
        log.warning("train_loader does not use zoo.train.make_loader: data are not sharded across processes")
    trackers = None
    if info.is_main and loop.loggers:  # log.jsonl's scalars to TensorBoard / MLflow too
        from zoo.run_loggers import open_loggers

        trackers = open_loggers(loop.loggers, out)
    logf = (out / LOG_FILE).open("a") if info.is_main else None
    bar = None
    if progress and info.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def write_log(entry: dict[str, Any]) -> None:
        if logf is not None:
            logf.write(json.dumps(_jsonable(entry)) + "\n")
            logf.flush()
        if trackers is not None:
            trackers.log(_jsonable(entry))

    def save(saved_state: dict[str, Any]) -> None:
        if info.is_main:
            _save_checkpoint(out, base, optimizer, scheduler, saved_state, config)

    def validate() -> None:
        if val_fn is None:
            return
        if info.is_main:
            base.eval()
            with torch.no_grad():
                metrics = {k: float(v) for k, v in val_fn(base).items()}
            base.train()
            metrics["step"] = state["step"]
            result.metrics.append(metrics)
            write_log({"val": metrics})
            if bar is not None:
                shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "step")
                bar.write(f"step {state['step']}: {shown}")
            if monitor is not None:
                if monitor not in metrics:
                    raise KeyError(f"val_fn returned no {monitor!r} (it returned {sorted(metrics)})")
                if state["best"] is None or metrics[monitor] > state["best"]:
                    state["best"] = metrics[monitor]
                    result.best = state["best"]
                    meta = {"step": str(state["step"]), monitor: str(metrics[monitor])}
                    _save_tensors(out / BEST_FILE, run_state_dict(base), meta)
        _barrier(info)

    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if loop.amp and info.device.type == "cuda"
        else nullcontext()
    )
    completed = dict(state)  # the state after the last completed step: what an interruption saves
    last_saved = start_step
    started = time.perf_counter()
    base.train()

    def epoch_batches() -> Iterator[Any]:
        if resumable:
            sampler.set_epoch(state["epoch"], state["batch_in_epoch"] * (train_loader.batch_size or 1))
        elif hasattr(sampler, "set_epoch"):
            sampler.set_epoch(state["epoch"])
        return iter(train_loader)

    batches = epoch_batches()
    try:
        with _sigterm_as_interrupt():
            while state["step"] < total_steps:
                step_started = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                total, extras, micro = 0.0, {}, 0
                while micro < grad_accum_steps:
                    batch = next(batches, None)
                    if batch is None:
                        if micro == 0 and state["batch_in_epoch"] == 0:
                            raise RuntimeError("train_loader yields no batch (dataset smaller than a batch?)")
                        state["epoch"] += 1
                        state["batch_in_epoch"] = 0
                        batches = epoch_batches()
                        continue
                    batch = _to_device(batch, info.device)
                    sync = micro == grad_accum_steps - 1 or not info.distributed
                    with nullcontext() if sync else net.no_sync(), autocast:
                        out_loss = loss_fn(net, batch)
                        loss, more = out_loss if isinstance(out_loss, tuple) else (out_loss, {})
                        if not torch.isfinite(loss):
                            raise FloatingPointError(f"loss is {loss.item()} at step {state['step']}")
                        (loss / grad_accum_steps).backward()
                    total += float(loss.detach()) / grad_accum_steps
                    for k, v in more.items():
                        extras[k] = extras.get(k, 0.0) + float(v) / grad_accum_steps
                    micro += 1
                    state["batch_in_epoch"] += 1
                if optim.grad_clip:
                    torch.nn.utils.clip_grad_norm_(
                        [p for p in base.parameters() if p.grad is not None], optim.grad_clip
                    )
                # The rate this step uses: after scheduler.step() the group holds the next step's.
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                state["step"] += 1
                state["rng"] = _rng_state()
                completed = dict(state)
                step = state["step"]
                result.losses.append((step, total))
                if bar is not None:
                    bar.update(1)
                    if step % log_every == 0 or step == total_steps:
                        bar.set_postfix(loss=f"{total:.4f}", lr=f"{lr:.2e}")
                seconds = round(
                    time.perf_counter() - step_started, 4
                )  # a run's time sums these, resumes included
                write_log({"step": step, "loss": total, "lr": lr, "seconds": seconds, **extras})
                validated = False
                if val_every and step % val_every == 0 and step < total_steps:
                    validate()
                    validated = True
                if (save_every and step % save_every == 0) or validated:
                    save(dict(state))
                    last_saved = step
            validate()
            save(dict(state))
            last_saved = state["step"]
    except (KeyboardInterrupt, _Interrupted) as e:
        # Ctrl-C arrives as KeyboardInterrupt (SIGINT); SIGTERM through the handler above.
        sig = str(e) if isinstance(e, _Interrupted) else "SIGINT"
        # Save the last completed step: a half-done step is redone on resume.
        if completed["step"] > last_saved:
            save(completed)
            last_saved = completed["step"]
        if info.is_main:
            msg = (
                f"interrupted by {sig}: step {last_saved} is saved in {out}; rerun the same command to resume"
            )
            (bar.write if bar is not None else print)(msg)
        raise KeyboardInterrupt(sig) from None
    finally:
        if bar is not None:
            bar.close()
        if logf is not None:
            logf.close()
        if trackers is not None:
            trackers.close()
    _barrier(info)
    result.step = state["step"]
    result.seconds = time.perf_counter() - started
    return result


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
