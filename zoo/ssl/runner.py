"""Run a recipe on ``zoo.train.train`` and write checkpoints that ``zoo.create`` loads.

A run folder holds

* ``model.safetensors``: the exported weights in the zoo model's naming, with metadata
  (``model``, ``covers``, ``method``, ``step``; ``covers=encoder`` for encoder-only recipes,
  ``untrained`` for parts saved only so the file loads as a whole);
* ``config.json``: model name and arguments, what the checkpoint covers, the recipe and its
  settings, the preprocessing and the data, so ``zoo.create(name, checkpoint_path=…, **args)``
  rebuilds the model;
* ``trainer/``: the generic loop's own folder (``zoo.train``): the whole recipe's state
  (model, pretext heads, momentum targets, cluster labels, step counter), optimiser,
  schedule, random state and ``log.jsonl``; a rerun with the same folder resumes from it.

Under ``torchrun`` the loop runs one process per GPU (DistributedDataParallel, sharded data)
and only rank 0 writes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo._files import write_atomically
from zoo.layers.derived import without_derived
from zoo.ssl.catalog import get_recipe
from zoo.ssl.data import Preprocessing, load_volumes, read_datalist
from zoo.ssl.recipe import Export, Recipe

log = logging.getLogger("zoo")

__all__ = [
    "PretrainResult",
    "PretrainOptions",
    "RunOptions",
    "pretrain",
    "resolve_init",
    "run_recipe",
    "write_checkpoint",
    "optim_config",
]

TRAINER_DIR = "trainer"


@dataclass
class PretrainResult:
    """What a run produced."""

    out: Path
    checkpoint: Path
    config: Path
    steps: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    resumed_from: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class RunOptions:
    """How a pretraining run's loop runs (not what it learns).

    Attributes:
        resume: continue from ``out/trainer`` when it holds a checkpoint.
        save_every: also checkpoint (and export) every this many steps (default: at the end).
        log_every: steps between log lines.
        num_workers: DataLoader workers.
        seed: seed of the data order and of the recipe's draws.
        device: default: this process's CUDA device if any, else CPU.
        progress: show the loop's progress bar.
    """

    resume: bool = True
    save_every: int | None = None
    log_every: int = 10
    num_workers: int = 0
    seed: int = 0
    device: torch.device | str | None = None
    progress: bool = False


@dataclass(frozen=True)
class PretrainOptions:
    """What :func:`pretrain` starts from and how it runs, beyond the method, model, data and folder.

    Attributes:
        init: what to start from: a checkpoint (any format ``zoo.create(checkpoint_path=)``
            reads), a run folder, or ``NAME.TAG`` (registered weights, loaded through
            ``zoo.create(..., pretrained=True)`` or the call fails before training).
        pretrained: start from the model's default weights tag.
        model_args: constructor overrides (``img_size``, ``in_chans`` …).
        recipe_args: recipe settings (see each recipe's docstring); a list, one per stage, for a
            pipeline.
        preprocessing: overrides of the recipe's paper preprocessing (a :class:`Preprocessing`
            or a dict of its fields).
        settings: optimiser/schedule/batch overrides (``lr``, ``batch_size`` …); a list, one per
            stage, for a pipeline.
        run: the loop's options (:class:`RunOptions`).
    """

    init: str | Path | None = None
    pretrained: bool | None = None
    model_args: Mapping[str, Any] | None = None
    recipe_args: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None
    preprocessing: Preprocessing | Mapping[str, Any] | None = None
    settings: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None
    run: RunOptions = field(default_factory=RunOptions)


def optim_config(settings: Mapping[str, Any], max_steps: int):
    """``zoo.train.OptimConfig`` from a recipe's paper settings (and user overrides).

    Fractions of the run (``warmup_fraction``, ``step_size_fraction``) become step counts;
    ``min_lr`` becomes ``min_lr_ratio``; keys the loop does not know are ignored (they stay
    in the run's record).
    """
    from zoo.train import OptimConfig

    s = dict(settings)
    if "warmup_fraction" in s and "warmup_steps" not in s:
        s["warmup_steps"] = int(round(float(s["warmup_fraction"]) * max_steps))
    if "step_size_fraction" in s and "step_size" not in s:
        s["step_size"] = max(1, int(round(float(s["step_size_fraction"]) * max_steps)))
    if "min_lr" in s and "min_lr_ratio" not in s:
        s["min_lr_ratio"] = float(s["min_lr"]) / float(s.get("lr", 1e-4))
    known = OptimConfig.__dataclass_fields__
    return OptimConfig(**{k: (tuple(v) if k == "betas" else v) for k, v in s.items() if k in known})


# --------------------------------------------------------------------------------------------- files


def _jsonable(value: Any) -> Any:
    from zoo.runconfig import jsonable

    return jsonable(value)


def write_checkpoint(
    out: Path, export: Export, model_name: str, model_args: Mapping[str, Any], info: Mapping[str, Any]
) -> tuple[Path, Path]:
    """Write ``model.safetensors`` and ``config.json`` into ``out`` (atomically).

    Returns:
        The two paths.
    """
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    name = export.model_name or model_name
    args = export.model_args if export.model_args is not None else dict(model_args)
    tensors = {k: v.detach().cpu().contiguous() for k, v in export.state_dict.items()}
    meta = {
        "model": name,
        "covers": export.covers,
        "method": str(info.get("method", "")),
        "step": str(info.get("step", "")),
        "untrained": ",".join(export.untrained),
        "format": "medzoo",
    }
    ckpt, cfg = out / "model.safetensors", out / "config.json"
    write_atomically(ckpt, lambda p: save_file(tensors, str(p), metadata=meta))
    from zoo.provenance import chain_licence
    from zoo.runconfig import Link, RunConfig, write_config

    record = info.get("init") if isinstance(info.get("init"), Mapping) else None
    lineage = tuple(Link(**x) for x in (record or {}).get("lineage") or [])
    licence, redistributable, _ = chain_licence(lineage)
    config = RunConfig(
        model_name=name,
        model_args={k: tuple(v) if isinstance(v, list) else v for k, v in args.items()},
        kind="pretrain",
        covers=export.covers,
        untrained=tuple(export.untrained),
        license=licence,
        redistributable=redistributable,
        init=_jsonable(record) if record else None,
        lineage=lineage,
        pretraining={**_jsonable(dict(info)), **_jsonable(export.extra)},
    )
    write_config(cfg, config)
    return ckpt, cfg


# --------------------------------------------------------------------------------------------- loop


def run_recipe(
    recipe: Recipe,
    volumes: Sequence[torch.Tensor],
    out: str | Path,
    steps: int,
    model_name: str,
    model_args: Mapping[str, Any],
    settings: Mapping[str, Any] | None = None,
    info: Mapping[str, Any] | None = None,
    run: RunOptions | None = None,
) -> PretrainResult:
    """Train ``recipe`` for ``steps`` optimiser steps with ``zoo.train.train``; write the run folder.

    Args:
        recipe: the pretext task around its model.
        volumes: preprocessed ``(C, *spatial)`` volumes.
        out: run folder.
        steps: total optimiser steps (a resumed run continues up to it).
        model_name / model_args: what ``config.json`` records for ``zoo.create``.
        settings: optimiser/schedule settings over ``recipe.optim_defaults`` (plus
            ``batch_size`` and ``grad_accum_steps``).
        info: extra facts for the checkpoint's ``pretraining`` record (data, preprocessing).
        run: resume, checkpoint period, logging, workers, seed, device, progress
            (:class:`RunOptions`; default: all defaults).
    """
    from safetensors.torch import load_file

    from zoo.train import STATE_FILE, LoopSettings, distributed_context, make_loader, seed_everything, train

    out = Path(out)
    run = run or RunOptions()
    seed = run.seed
    dist_info = distributed_context(run.device)
    cfg = {**recipe.optim_defaults, **(settings or {})}
    batch_size = int(cfg.pop("batch_size", 2))
    accum = int(cfg.pop("grad_accum_steps", 1))
    optim = optim_config(cfg, steps)
    recipe.max_steps, recipe.grad_accum_steps, recipe.batch_size = steps, accum, batch_size
    seed_everything(seed + dist_info.rank)

    trainer_dir = out / TRAINER_DIR
    recipe.run_dir, recipe.is_main = trainer_dir, dist_info.is_main
    recipe.to(dist_info.device)  # setup passes (memory banks, heads) run where training will
    dataset = recipe.dataset(volumes)
    resuming = run.resume and (trainer_dir / STATE_FILE).is_file()
    if resuming:
        # Data-dependent parts (cluster labels, heads sized by them) must exist before the strict load.
        recipe.prepare_resume(load_file(str(trainer_dir / "model.safetensors")))
    recipe.setup(dataset)
    if len(dataset) < batch_size * dist_info.world_size:
        raise ValueError(
            f"{len(dataset)} training items cannot fill one batch of {batch_size} per process × "
            f"{dist_info.world_size}; lower batch_size or add data"
        )
    loader = make_loader(dataset, batch_size, seed=seed, num_workers=run.num_workers, dist_info=dist_info)
    record = dict(
        info or {},
        method=recipe.method,
        paper=recipe.paper,
        recipe=recipe.config,
        optimizer=dict(cfg, batch_size=batch_size, grad_accum_steps=accum),
        steps=steps,
        world_size=dist_info.world_size,
    )

    def export(base: nn.Module) -> dict[str, float]:
        # Called by the loop on rank 0 at every save point and at the end (its validation hook).
        # The export's keys are in the model's naming; its derived buffers are left out, as in finetune.
        done = base.export()
        done = replace(done, state_dict=without_derived(done.state_dict, base.model))
        write_checkpoint(out, done, model_name, model_args, {**record, "step": base.step})
        return {}

    loop = LoopSettings(
        val_every=run.save_every,
        save_every=run.save_every,
        grad_accum_steps=accum,
        resume=run.resume,
        progress=run.progress,
        log_every=run.log_every,
        device=dist_info.device,
    )
    result = train(
        recipe,
        loss_fn=lambda net, batch: net(batch),
        train_loader=loader,
        out_dir=trainer_dir,
        optim=optim,
        total_steps=steps,
        loop=loop,
        val_fn=export,
        # The loop's own record, in trainer/; the run's config.json is the export's (write_checkpoint).
        config={"method": recipe.method, "model_name": model_name, "model_args": dict(model_args)},
        settings=_fixed_settings(recipe.method, model_name, model_args, batch_size, accum, info or {}),
    )
    if dist_info.is_main and not (out / "model.safetensors").is_file():
        export(recipe)  # a run resumed after its last step: the loop had nothing left to do
    return PretrainResult(
        out,
        out / "model.safetensors",
        out / "config.json",
        result.step,
        result.losses,
        result.start_step,
        result.seconds,
    )


def _fixed_settings(
    method: str,
    model_name: str,
    model_args: Mapping[str, Any],
    batch_size: int,
    accum: int,
    info: Mapping[str, Any],
) -> dict[str, Any]:
    """What a pretraining run is defined by besides its optimiser and length (checked on resume)."""
    init = info.get("init")
    if isinstance(init, Mapping):  # the load record: its identity, not the descriptive fields
        init = {k: init.get(k) for k in ("id", "sha256", "covers")}
    return {
        "method": method,
        "model_name": model_name,
        "model_args": _jsonable(dict(model_args)),
        "batch_size": batch_size,
        "grad_accum_steps": accum,
        "init": init,
        "data": _jsonable(info.get("data")),
        "preprocessing": _jsonable(info.get("preprocessing")),
    }


def resolve_init(model: Any, init: str | Path | None = None, pretrained: bool | None = None):
    """What a pretraining run starts from: ``model``'s tag, ``init`` (a file, a run folder or
    ``NAME.TAG``), ``pretrained`` (the default tag), or nothing.

    Returns:
        A :class:`zoo.plan.ModelPlan`.

    Raises:
        FileNotFoundError: ``init`` is neither an existing path nor a registered ``NAME.TAG``.
        ValueError: ``init`` names weights of another model, or two starts are given.
    """
    from zoo.finetune import start_plan
    from zoo.hub_repo import is_hub_id
    from zoo.plan import plan

    if init is None or Path(init).exists() or is_hub_id(init):
        return start_plan(model, pretrained, init)
    start = start_plan(model, pretrained)
    try:
        named = plan(str(init))
    except ValueError:
        named = None
    if named is None or named.source != "registry":
        raise FileNotFoundError(
            f"--init {init}: not an existing checkpoint file or run folder, nor a registered NAME.TAG"
        )
    if named.spec.name != start.spec.name:
        raise ValueError(
            f"--init {init} holds {named.spec.name} weights; the run pretrains {start.spec.name}"
        )
    if start.source == "registry" and start.tag != named.tag:
        raise ValueError(f"{model} and --init {init} name two different weights; give one")
    return named


def _file_names(scan: Path | Sequence[Path]) -> str:
    """A scan's file name for the run record; a scan of one file per channel joins them with ``+``."""
    return scan.name if isinstance(scan, Path) else "+".join(Path(p).name for p in scan)


def _split_steps(steps: int | Sequence[int], n: int) -> list[int]:
    if isinstance(steps, int):
        return [steps // n + (1 if i < steps % n else 0) for i in range(n)]
    if len(steps) != n:
        raise ValueError(f"this pipeline has {n} stages; got {len(steps)} step counts")
    return [int(s) for s in steps]


def pretrain(
    method: str,
    model: str,
    data: str | Path | Sequence[str | Path],
    out: str | Path,
    steps: int | Sequence[int] = 1000,
    options: PretrainOptions | None = None,
) -> PretrainResult:
    """Continue pretraining ``model`` with ``method`` on unlabelled scans.

    Args:
        method: a recipe (``volume-fusion``, ``byol-rot-rec``, ``multi-clustering``,
            ``simsiam-iou``, ``dino``, one stage of the joint recipe) or a pipeline
            (``joint-2d3d``, ``joint-2d3d-deepcluster``); see ``zoo.ssl.methods()``.
        model: registry name (``qtunet-t``), or ``name.tag`` to start from published weights.
        data: a datalist JSON, or a list of image paths.
        out: run folder (created; an existing run in it is resumed). A pipeline writes each
            stage into ``out/stage<i>-<method>`` and the last stage's checkpoint into ``out``.
        steps: optimiser steps; for a pipeline, a total split evenly or one count per stage.
        options: where to start from, model/recipe/preprocessing/optimiser overrides, and the
            loop's options (:class:`PretrainOptions`; default: all defaults).

    Returns:
        :class:`PretrainResult`; the checkpoint loads with
        ``zoo.create(cfg["model_name"], checkpoint_path=result.checkpoint, **cfg["model_args"])``
        where ``cfg`` is ``result.config`` read as JSON.

    Example:
        >>> r = pretrain("byol-rot-rec", "qtunet-t", "scans.json", "runs/qt", steps=2000)
        >>> r = pretrain("volume-fusion", "fmunet", "scans.json", "runs/vf", 500, PretrainOptions(
        ...     init="fmunet.vf1k", settings={"lr": 1e-4}, run=RunOptions(save_every=100)))
    """
    import shutil

    o = options or PretrainOptions()

    from zoo.finetune import check_output_spares_input, check_run_folder, create_model, describe_load
    from zoo.ssl.slice_swav import PIPELINES

    stages = PIPELINES.get(method, (method,))
    classes = [get_recipe(m) for m in stages]
    check_output_spares_input(o.init, out)  # before planning: a folder that is no run yet is refused as such
    start = resolve_init(model, o.init, o.pretrained)  # the request, resolved once
    spec = start.spec
    for cls in classes:
        if cls.families and spec.family not in cls.families:
            raise ValueError(
                f"{cls.method} pretrains {', '.join(cls.families)} models; "
                f"{spec.name} is a {spec.family} model"
            )
    check_output_spares_input(start, out)
    check_run_folder(out, "pretrain", o.run.resume)
    net = create_model(start, **dict(o.model_args or {}))
    args = dict(net.pretrained_cfg["model_args"])
    log.info("pretraining %s from %s", spec.name, describe_load(net.pretrained_cfg["weights"]))
    prep = classes[0].default_preprocessing
    if isinstance(o.preprocessing, Preprocessing):
        prep = o.preprocessing
    elif o.preprocessing:
        prep = replace(prep, **dict(o.preprocessing))
    paths = [Path(p) for p in data] if isinstance(data, list | tuple) else read_datalist(data)
    volumes = load_volumes(paths, prep)
    info = {
        # What was loaded (zoo.provenance's record; None: random), never merely what was asked for.
        "init": net.pretrained_cfg["weights"],
        "data": {"volumes": len(paths), "files": [_file_names(p) for p in paths][:20]},
        "preprocessing": prep.as_dict(),
    }

    n = len(stages)
    per_stage = _split_steps(steps, n)
    rargs = o.recipe_args
    rargs = list(rargs) if isinstance(rargs, list | tuple) else [dict(rargs or {})] * n
    sargs = list(o.settings) if isinstance(o.settings, list | tuple) else [dict(o.settings or {})] * n
    out = Path(out)
    results = []
    for i, (cls, k) in enumerate(zip(classes, per_stage, strict=True)):
        folder = out if n == 1 else out / f"stage{i + 1}-{cls.method}"
        recipe = cls(net.train(), **dict(rargs[i]))
        stage_info = dict(info, stage=f"{i + 1}/{n} of {method}") if n > 1 else info
        results.append(run_recipe(recipe, volumes, folder, k, spec.name, args, sargs[i], stage_info, o.run))
    last = results[-1]
    if n > 1 and int(os.environ.get("RANK", "0")) == 0 and last.checkpoint.is_file():
        for f in ("model.safetensors", "config.json"):
            shutil.copyfile(last.out / f, out / f)
    # One step axis across a pipeline's stages: stage i's steps follow stage i − 1's.
    losses, offset = [], 0
    for r, k in zip(results, per_stage, strict=True):
        losses += [(offset + step, value) for step, value in r.losses]
        offset += k
    return PretrainResult(
        out,
        out / "model.safetensors",
        out / "config.json",
        sum(r.steps for r in results),
        losses,
        results[0].resumed_from,
        sum(r.seconds for r in results),
    )
