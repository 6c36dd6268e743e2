"""``zoo finetune`` and ``zoo pretrain``: training runs (both run multi-process under ``torchrun`` too)."""

from __future__ import annotations

import argparse
import json

from zoo.cli._base import JSON, UsageError, arg, command, human_output, report


@command(
    "finetune",
    help="fine-tune on labelled NIfTI volumes (MONAI datalist); torchrun too",
    args=[
        arg("name", nargs="?", help="NAME (from scratch) or NAME.TAG (those weights)"),
        arg("--data", help="MONAI datalist JSON with 'training' and 'validation' image/label pairs"),
        arg("--out", help="run folder (checkpoints, config.json, log.jsonl); an existing run resumes"),
        arg("--preset", default=None, help="recipe (default: the family's; see --list-presets)"),
        arg("--list-presets", action="store_true", help="print every preset's values and exit"),
        arg("--pretrained", action="store_true", help="load the default weights when NAME has no tag"),
        arg("--checkpoint", default=None, help="start from this checkpoint file or run folder"),
        arg("--steps", type=int, default=None, help="optimiser steps (default: the preset's recipe)"),
        arg("--epochs", type=int, default=None, help="epochs over the training cases (not --steps)"),
        arg("--batch-size", type=int, default=None, help="cases per step and process"),
        arg("--num-samples", type=int, default=None, help="crops per case"),
        arg("--lr", type=float, default=None, help="peak learning rate (default: the preset's)"),
        arg("--roi", type=int, nargs=3, default=None, help="crop size (default: the model's input)"),
        arg("--spacing", type=float, nargs=3, default=None, help="resample to this spacing (mm)"),
        arg("--intensity", default=None, help="zscore, zscore-nonzero, none, or clip:a,b,c,d"),
        arg(
            "--crop", choices=["random", "posneg"], default=None, help="crop sampling (default: the preset's)"
        ),
        arg("--num-classes", type=int, default=None, help="default: from the datalist or the labels"),
        arg("--in-chans", type=int, default=None, help="default: from the datalist or the images"),
        arg("--freeze", default=None, help="freeze a part: encoder, stem, encoder.K, decoder"),
        arg("--lora", type=int, default=None, metavar="RANK", help="LoRA of this rank on the encoder"),
        arg("--layer-decay", type=float, default=None, help="layer-wise LR decay (e.g. 0.75)"),
        arg("--val-every", type=int, default=None, help="validation period in steps"),
        arg(
            "--grad-checkpointing",
            action="store_true",
            help="recompute the encoder's blocks in backward: less memory, about one more encoder forward",
        ),
        arg(
            "--logger",
            action="append",
            choices=["tensorboard", "mlflow"],
            default=[],
            help="also log the scalars of log.jsonl to TensorBoard (RUN/tensorboard) or MLflow "
            "(MLFLOW_TRACKING_URI); repeatable",
        ),
        arg("--workers", type=int, default=0, help="data-loading processes"),
        arg("--no-cache", action="store_true", help="do not cache preprocessed volumes in memory"),
        arg("--restart", action="store_true", help="ignore a run already in --out"),
        arg("--seed", type=int, default=0, help="random seed (data order, crops, initialisation)"),
        arg("--model-kwargs", default=None, help="JSON of further architecture arguments"),
        arg("--device", default=None, help="cpu or cuda (default: cuda if available)"),
        JSON,
    ],
    interrupted=lambda a, e: f"interrupted by {e or 'SIGINT'}; rerun the same command to resume {a.out}",
)
def cmd_finetune(a: argparse.Namespace) -> int:
    """Fine-tune on a MONAI datalist; the same command runs multi-process under torchrun."""
    from zoo.finetune import FinetuneOptions, finetune
    from zoo.presets import PRESETS

    if a.list_presets:
        for p in PRESETS.values():
            print(p.describe() + "\n")
        return 0
    if not a.name or not a.data or not a.out:
        raise UsageError("NAME, --data and --out are required (or --list-presets)")
    options = FinetuneOptions(
        preset=a.preset,
        pretrained=a.pretrained or None,
        checkpoint_path=a.checkpoint,
        steps=a.steps,
        epochs=a.epochs,
        batch_size=a.batch_size,
        num_samples=a.num_samples,
        lr=a.lr,
        roi_size=a.roi,
        spacing_mm=a.spacing,
        intensity=a.intensity,
        crop=a.crop,
        num_classes=a.num_classes,
        in_chans=a.in_chans,
        freeze=a.freeze,
        lora_rank=a.lora,
        layer_decay=a.layer_decay,
        grad_checkpointing=a.grad_checkpointing,
        loggers=tuple(a.logger),
        val_every=a.val_every,
        num_workers=a.workers,
        cache=not a.no_cache,
        resume=not a.restart,
        seed=a.seed,
        device=a.device,
        progress=not a.quiet,
        model_kwargs=json.loads(a.model_kwargs) if a.model_kwargs else None,
    )
    with human_output(a):  # --json: stdout is the report
        r = finetune(a.name, a.data, a.out, options)
    if a.json:
        keep = ("out_dir", "steps", "metrics", "best", "seconds", "already_complete")
        report(a, "", {k: getattr(r, k) for k in keep})
    return 0


@command(
    "pretrain",
    help="continue self-supervised pretraining (the papers' pretext tasks)",
    args=[
        arg(
            "method",
            nargs="?",
            help="volume-fusion, byol-rot-rec, multi-clustering, simsiam-iou, "
            "dino, joint-2d3d, joint-2d3d-deepcluster (see --list)",
        ),
        arg("--list", dest="list_methods", action="store_true", help="print the methods and exit"),
        arg("--model", help="NAME (random init) or NAME.TAG (continue from those weights)"),
        arg("--data", help="datalist JSON of unlabelled images (a list, or MONAI's 'training')"),
        arg("--out", help="run folder (model.safetensors, config.json, trainer/); resumes a run"),
        arg("--steps", default="1000", help="optimiser steps (pipelines: a total, or a,b,c per stage)"),
        arg("--init", default=None, help="start from a checkpoint file, a run folder or NAME.TAG"),
        arg("--pretrained", action="store_true", help="start from the model's default weights"),
        arg("--batch-size", type=int, default=None, help="per process (default: the paper's)"),
        arg("--lr", type=float, default=None, help="default: the paper's"),
        arg("--spacing", type=float, nargs=3, default=None, help="resample to this spacing (mm)"),
        arg("--intensity", default=None, help="zscore, zscore-nonzero, none, or clip:a,b,c,d"),
        arg("--model-kwargs", default=None, help="JSON of architecture arguments (e.g. img_size)"),
        arg("--recipe-kwargs", default=None, help="JSON of recipe settings (a list for a pipeline)"),
        arg("--save-every", type=int, default=None, help="checkpoint period in steps"),
        arg("--workers", type=int, default=0, help="data-loading processes"),
        arg("--restart", action="store_true", help="ignore a run already in --out"),
        arg("--seed", type=int, default=0, help="random seed (data order, crops, initialisation)"),
        arg("--device", default=None, help="cpu or cuda (default: cuda if available)"),
        JSON,
    ],
    interrupted=lambda a, e: f"interrupted by {e or 'SIGINT'}; rerun the same command to resume {a.out}",
)
def cmd_pretrain(a: argparse.Namespace) -> int:
    """Continue self-supervised pretraining with one of the papers' pretext tasks (torchrun too)."""
    from zoo.finetune import describe_load
    from zoo.ssl import RECIPES, PretrainOptions, RunOptions, methods, pretrain
    from zoo.ssl.data import parse_intensity

    if a.list_methods:
        for m in methods():
            cls = RECIPES.get(m)
            what = f"{', '.join(cls.families)}: {cls.paper}" if cls else "pipeline of three stages"
            print(f"{m:24s} {what}")
        return 0
    if not a.method or not a.model or not a.data or not a.out:
        raise UsageError("METHOD, --model, --data and --out are required (or --list)")
    prep = {}
    if a.spacing:
        prep["spacing_mm"] = tuple(a.spacing)
    if a.intensity:
        prep["intensity"] = parse_intensity(a.intensity)
    settings = {k: v for k, v in (("batch_size", a.batch_size), ("lr", a.lr)) if v is not None}
    steps = [int(s) for s in a.steps.split(",")] if "," in a.steps else int(a.steps)
    options = PretrainOptions(
        init=a.init,
        pretrained=a.pretrained or None,
        model_args=json.loads(a.model_kwargs) if a.model_kwargs else None,
        recipe_args=json.loads(a.recipe_kwargs) if a.recipe_kwargs else None,
        preprocessing=prep or None,
        settings=settings or None,
        run=RunOptions(
            save_every=a.save_every,
            num_workers=a.workers,
            seed=a.seed,
            device=a.device,
            resume=not a.restart,
            progress=not a.quiet,
        ),
    )
    with human_output(a):
        r = pretrain(a.method, a.model, a.data, a.out, steps, options)
    cfg = json.loads(r.config.read_text())
    init = describe_load((cfg.get("pretraining") or {}).get("init"))
    text = (
        f"{init}\nwrote {r.checkpoint} ({cfg['model_name']}, covers {cfg['covers']}) after {r.steps} steps; "
        f"load with zoo.create({str(r.out)!r}) (model and arguments from its {r.config.name})"
    )
    data = {"out": r.out, "checkpoint": r.checkpoint, "model": cfg["model_name"], "covers": cfg["covers"]}
    report(a, text, {**data, "steps": r.steps})
    return 0
