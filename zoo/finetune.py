"""``zoo finetune``: fine-tune a zoo model on labelled NIfTI volumes listed in a MONAI datalist.

The datalist is MONAI's (Decathlon) JSON; paths are relative to the file's folder::

    {
      "labels": {"0": "background", "1": "grey matter", "2": "white matter"},
      "training":   [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}, ...],
      "validation": [{"image": "imagesTr/v.nii.gz", "label": "labelsTr/v.nii.gz"}, ...]
    }

``labels`` is optional (the class count is then read from the training labels); a 4D image
is channels-last (one volume per channel). The pipeline: LoadImaged → EnsureChannelFirstd →
Orientationd(RAS) → Spacingd → intensity (from the weights' preprocessing, else the
preset's) → pad to the crop → random crops of the model's input size → flips, rot90,
intensity jitter → Dice + CE; validation by sliding window with per-class Dice. Training
runs through :func:`zoo.train.train` (AdamW/Adam, warm-up + cosine or the paper's schedule,
checkpoints, resume, DDP under ``torchrun``).

The datalist is read by :func:`zoo.datalist.read_datalist` (an ``image`` may list one file per
channel, BraTS style); the loss and the Dice measure live in :mod:`zoo.seg_metrics`.

Example:
    >>> result = finetune("qtunet-t.ct-ssl", "datalist.json", "run/", FinetuneOptions(steps=2000))
    >>> model = zoo.create("run/")              # the fine-tuned model, strictly loaded
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo._registry import ModelSpec
from zoo.datalist import image_channels, make_mni_task, read_datalist
from zoo.finetune_checks import (
    check_device,
    check_output_spares_input,
    check_run_folder,
    licence_line,
    read_saved_settings,
    saved_step,
)
from zoo.presets import Preset, default_preset_for, get_preset
from zoo.seg_metrics import SegmentationLoss, evaluate_dice

log = logging.getLogger("zoo")

__all__ = [
    "FinetuneOptions",
    "FinetuneSettings",
    "FinetuneResult",
    "SegmentationLoss",
    "read_datalist",
    "make_mni_task",
    "resolve_intensity",
    "build_transforms",
    "evaluate_dice",
    "start_plan",
    "check_run_folder",
    "create_model",
    "check_output_spares_input",
    "licence_line",
    "describe_load",
    "read_saved_settings",
    "resolve_settings",
    "merge_saved",
    "build_model",
    "adapt_model",
    "build_datasets",
    "run_config",
    "finetune",
]


def resolve_intensity(
    preprocessing: Mapping[str, Any], preset: Preset, override: str | Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The intensity transform, as data: the override, else the weights', else the preset's.

    Every form goes through :func:`zoo.transforms.parse_intensity`, the one reader that
    ``zoo predict`` and ``zoo pretrain`` use too; the weights' free-text notes are never read.

    Args:
        preprocessing: the weights tag's ``preprocessing`` (its ``intensity_transform``).
        preset: the recipe, used when the weights state nothing.
        override: a kind name (``zscore``, ``zscore-nonzero``, ``none``), JSON, or
            ``clip:a,b,c,d``.

    Returns:
        The canonical transform (``{"kind": "clip_scale", …}`` or ``{"kind": "zscore", …}``),
        or None (no intensity transform).
    """
    from zoo.transforms import parse_intensity

    if override is not None:
        it = parse_intensity(override)
    elif preprocessing.get("intensity_transform") is not None:
        it = parse_intensity(preprocessing["intensity_transform"])
    elif preset.intensity is not None:
        it = parse_intensity(preset.intensity)
    else:
        it = parse_intensity("zscore_nonzero")
    return None if it["kind"] == "none" else it


@dataclass
class FinetuneSettings:
    """Everything a run resolved from the model, its weights, the preset and the arguments."""

    model: str
    tag: str | None
    preset: str
    in_chans: int
    num_classes: int
    label_names: dict[int, str]
    roi_size: tuple[int, ...]
    spacing_mm: tuple[float, ...] | None
    orientation: str | None
    slice_axis_first: bool
    intensity: dict[str, Any] | None
    batch_size: int
    num_samples: int
    crop: str
    total_steps: int
    val_every: int
    lr: float
    model_args: dict[str, Any] = field(default_factory=dict)
    adapters: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None

    def describe(self) -> str:
        names = ", ".join(f"{k} {v}" for k, v in sorted(self.label_names.items()))
        mode = (
            f"weights {self.model}.{self.tag}"
            if self.tag
            else f"checkpoint {self.checkpoint}"
            if self.checkpoint
            else "from scratch (random initialisation)"
        )
        return "\n".join(
            [
                f"model: {self.model}, {mode}; {self.in_chans} channel(s) in, "
                f"{self.num_classes} classes ({names})",
                f"input: orientation {self.orientation or 'native'}"
                + (", slice axis first" if self.slice_axis_first else "")
                + (f", spacing {self.spacing_mm} mm" if self.spacing_mm else ", native spacing")
                + f", intensity {self.intensity or 'unchanged'}",
                f"crops: {self.num_samples} × {self.crop} {self.roi_size} per case, "
                f"{self.batch_size} case(s) per step",
                f"run: {self.total_steps} steps, lr {self.lr:g}, validation every {self.val_every} steps"
                + (f"; adapters {self.adapters}" if self.adapters else ""),
            ]
        )


def build_transforms(s: FinetuneSettings, preset: Preset, train: bool) -> Any:
    """The MONAI dictionary transforms of a run (``train`` adds padding, crops and augmentation).

    The deterministic part is the weights' preprocessing contract
    (:meth:`zoo.transforms.InputContract.transforms`), the same transforms ``zoo predict`` runs.
    """
    from monai import transforms as T

    from zoo.transforms import InputContract

    keys = ("image", "label")
    contract = InputContract(
        orientation=s.orientation,
        spacing_mm=s.spacing_mm,
        axis_order="zyx" if s.slice_axis_first else "xyz",
        intensity=s.intensity or "none",
    )
    steps: list[Any] = contract.transforms(("image",), ("label",))
    steps.append(T.EnsureTyped(keys, dtype=(torch.float32, torch.int64), track_meta=False))
    if not train:
        return T.Compose(steps)
    steps.append(T.SpatialPadd(keys, spatial_size=s.roi_size))
    if s.crop == "posneg":
        pos, neg = preset.pos_neg
        steps.append(
            T.RandCropByPosNegLabeld(
                keys,
                "label",
                s.roi_size,
                pos=pos,
                neg=neg,
                num_samples=s.num_samples,
                allow_smaller=True,
            )
        )
    else:
        steps.append(
            T.RandSpatialCropSamplesd(keys, s.roi_size, num_samples=s.num_samples, random_size=False)
        )
    if preset.flip_prob:
        steps += [T.RandFlipd(keys, prob=preset.flip_prob, spatial_axis=a) for a in range(len(s.roi_size))]
    if preset.rot90_prob and len(set(s.roi_size[:2])) == 1:
        steps.append(T.RandRotate90d(keys, prob=preset.rot90_prob, max_k=3, spatial_axes=(0, 1)))
    if preset.scale_intensity:
        steps.append(
            T.RandScaleIntensityd("image", factors=preset.scale_intensity[0], prob=preset.scale_intensity[1])
        )
    if preset.shift_intensity:
        steps.append(
            T.RandShiftIntensityd("image", offsets=preset.shift_intensity[0], prob=preset.shift_intensity[1])
        )
    return T.Compose(steps)


# ---------------------------------------------------------------------------------------
# the pipeline: start → settings → model → data → train, each step a function of its own


@dataclass
class FinetuneResult:
    """What :func:`finetune` produced."""

    out_dir: Path
    settings: FinetuneSettings
    steps: int
    losses: list[tuple[int, float]]
    metrics: dict[str, float]
    best: float | None
    seconds: float
    init: dict[str, Any] | None = None
    already_complete: bool = False


def start_plan(
    request: Any, pretrained: bool | None = None, checkpoint_path: str | Path | None = None
) -> Any:
    """What a run builds and starts from, as a :class:`zoo.plan.ModelPlan` (the request resolved once).

    ``NAME`` starts from random weights (the default tag with ``pretrained``), ``NAME.TAG`` from
    those weights, ``checkpoint_path`` (a file, a run folder or a ``hf-hub:`` id) from that;
    a run folder or a ``hf-hub:`` id may also be the request itself. A plan is passed through.

    Raises:
        ValueError: a tag and a checkpoint together, or an unknown name or tag.
        zoo.NoPretrainedWeightsError: ``pretrained`` for a model without weights.
    """
    from zoo.plan import ModelPlan, plan

    if isinstance(request, ModelPlan):
        return request
    if checkpoint_path is not None and (pretrained or (isinstance(request, str) and "." in request)):
        p = plan(request)
        if p.source == "registry" or pretrained:
            # One start only: loading a tag and then a file over it would record the wrong origin.
            raise ValueError(
                f"{request} names registered weights and a checkpoint ({checkpoint_path}) is given too; "
                f"start from one: {p.spec.name} with the checkpoint, or {p.spec.name}.TAG alone"
            )
        return plan(p.spec.name, checkpoint=checkpoint_path)
    return plan(request, checkpoint=checkpoint_path, pretrained=bool(pretrained))


def create_model(p: Any, **kwargs: Any) -> nn.Module:
    """The model of a plan (built, weights loaded through the one load path), in train mode.

    ``kwargs`` replace model arguments (``in_chans``, ``num_classes``, a crop's ``img_size``)
    without resolving the request again. Weights that are asked for load or the call fails:
    unreachable weights raise ``zoo.hub.WeightsUnavailableError`` before any training.

    Returns:
        The model; ``model.pretrained_cfg["weights"]`` records what was loaded (None: random).
    """
    from zoo._factory import create_from_plan

    model = create_from_plan(p.with_args(**kwargs) if kwargs else p)
    record = model.pretrained_cfg.get("weights")
    if p.loads_weights and record is None:
        raise RuntimeError(f"{p.id} was asked for but nothing was loaded")
    return model.train()


def describe_load(record: Mapping[str, Any] | None) -> str:
    """One line on what a model was initialised from (``pretrained_cfg["weights"]``)."""
    if record is None:
        return "initialised: random (no weights loaded)"
    line = f"loaded {record['id']} ({record['covers']}, sha256 {str(record['sha256'])[:12]}…)"
    if record.get("identified_as") and record["identified_as"] != record["id"]:
        line += f", identified as {record['identified_as']}"
    if record.get("newly_initialised"):
        line += f"; newly initialised: {', '.join(record['newly_initialised'])}"
    return line


def _labels_in(cases: Sequence[Mapping[str, str]]) -> int:
    import numpy as np

    from zoo.imageio import load_image  # NIfTI, DICOM series, NRRD, MetaImage

    top = 0
    for c in cases:
        top = max(top, int(np.asarray(load_image(c["label"]).dataobj).max()))
    return top + 1


def _check_segmenter(spec: ModelSpec) -> None:
    ok = spec.input_size is not None and len(spec.input_size) == 4 and "num_classes" in spec.model_args
    if not ok or not spec.head_keys:
        raise ValueError(
            f"{spec.name} is not a 3D segmentation model (input {spec.input_size}); zoo finetune trains "
            "3D segmenters on NIfTI volumes. Use zoo.train.train with your own loss for other tasks."
        )


# The caller's overrides → the settings field each one sets.
_OVERRIDE_FIELDS = {
    "steps": "total_steps",
    "epochs": "total_steps",
    "batch_size": "batch_size",
    "num_samples": "num_samples",
    "lr": "lr",
    "roi_size": "roi_size",
    "spacing_mm": "spacing_mm",
    "intensity": "intensity",
    "crop": "crop",
    "num_classes": "num_classes",
    "in_chans": "in_chans",
    "val_every": "val_every",
    "freeze": "adapters",
    "lora_rank": "adapters",
    "layer_decay": "adapters",
    "preset": "preset",
}


def resolve_settings(
    start: Any,
    datalist: Mapping[str, Any],
    preset: Preset,
    overrides: Mapping[str, Any],
    world_size: int = 1,
) -> FinetuneSettings:
    """The settings of a new run: the preset and the weights' preprocessing, then the caller's overrides.

    Args:
        start: the :class:`zoo.plan.ModelPlan` of the model and its weights.
        datalist: :func:`read_datalist`'s result.
        preset: the recipe.
        overrides: the caller's values (keys of :data:`_OVERRIDE_FIELDS`; None = not given).
        world_size: processes (an epoch is shared between them).
    """
    from zoo.transforms import InputContract

    spec = start.spec
    o = {k: v for k, v in overrides.items() if v is not None}
    ws = start.weights
    prep = dict(ws.preprocessing) if ws else {}
    n_cls = o.get("num_classes") or (
        len(datalist["labels"]) if datalist["labels"] else _labels_in(datalist["training"])
    )
    n_in = o.get("in_chans") or datalist["num_modalities"] or image_channels(datalist["training"][0]["image"])
    names = datalist["labels"] or {i: ("background" if i == 0 else f"class {i}") for i in range(n_cls)}
    roi = tuple(int(r) for r in o["roi_size"]) if "roi_size" in o else tuple(spec.input_size[1:])
    spacing = o.get("spacing_mm") or (
        prep.get("spacing_mm") if isinstance(prep.get("spacing_mm"), list | tuple) else None
    )
    spacing = tuple(float(v) for v in spacing) if spacing else (preset.spacing_mm if not ws else None)
    bs = o.get("batch_size") or preset.batch_size
    per_epoch = max(len(datalist["training"]) // (bs * world_size), 1)
    total = o.get("steps") or (
        o["epochs"] * per_epoch
        if o.get("epochs")
        else preset.total_steps(len(datalist["training"]), world_size)
    )
    return FinetuneSettings(
        model=spec.name,
        tag=start.tag if ws is not None else None,
        preset=preset.name,
        in_chans=n_in,
        num_classes=n_cls,
        label_names=names,
        roi_size=roi,
        spacing_mm=spacing,
        # The weights' orientation (None: keep the file's); RAS for a model trained from scratch.
        orientation=InputContract.from_preprocessing(prep).orientation if ws else "RAS",
        slice_axis_first=prep.get("axis_order") == "zyx",
        intensity=resolve_intensity(prep, preset, o.get("intensity")),
        batch_size=bs,
        num_samples=o.get("num_samples") or preset.num_samples,
        crop=o.get("crop") or preset.crop,
        total_steps=total,
        val_every=o.get("val_every") or max(int(round(preset.val_every_fraction * total)), 1),
        lr=o.get("lr") or preset.optim.lr,
        adapters={k: o[k] for k in ("freeze", "lora_rank", "layer_decay") if o.get(k)},
        checkpoint=_checkpoint_of(start),
    )


def _checkpoint_of(p: Any) -> str | None:
    """What a run records as its checkpoint start: the file, run folder or Hub id (None: none)."""
    if p.source == "hf-hub":
        return p.request
    if p.source in ("run", "file"):
        return str(p.run if p.run is not None and p.path.name == "model.safetensors" else p.path)
    return None


def _settings_from_record(rec: Mapping[str, Any]) -> FinetuneSettings:
    fields = {k: rec[k] for k in FinetuneSettings.__dataclass_fields__ if k in rec}
    for key in ("roi_size", "spacing_mm"):
        if fields.get(key) is not None:
            fields[key] = tuple(fields[key])
    fields["label_names"] = {int(k): v for k, v in (fields.get("label_names") or {}).items()}
    return FinetuneSettings(**fields)


def merge_saved(
    new: FinetuneSettings, saved: Mapping[str, Any], given: set[str], out_dir: str | Path = "the run folder"
) -> tuple[FinetuneSettings, list[str]]:
    """A rerun's settings: the saved run's, with the caller's overrides checked against them.

    Settings the caller did not give are the saved run's (not the preset's). A given value
    that differs is refused, except the run's length, which is applied.

    Returns:
        The settings to resume with, and the applied changes (``"total_steps 8 → 12"``).

    Raises:
        zoo.train.RunSettingsChangedError: naming the changed settings and how to start anew.
    """
    from zoo.train import check_resume

    old = _settings_from_record(saved)
    fixed = {"model", "tag", "checkpoint"} | {_OVERRIDE_FIELDS[k] for k in given if k in _OVERRIDE_FIELDS}
    pick = lambda s: {f: getattr(s, f) for f in sorted(fixed)}  # noqa: E731
    applied = check_resume(out_dir, pick(old), pick(new))
    merged = old
    if "total_steps" in fixed and new.total_steps != old.total_steps:
        merged = dataclasses.replace(old, total_steps=new.total_steps)
    return merged, applied


def build_model(
    settings: FinetuneSettings, start: Any, preset: Preset, model_kwargs: Mapping[str, Any] | None
) -> tuple[nn.Module, bool]:
    """The model to train, through :func:`create_model`; returns it and whether it has deep supervision."""
    spec = start.spec
    kwargs: dict[str, Any] = dict(model_kwargs or {})
    if "img_size" in spec.model_args:  # a model built for one input size is built for the crop
        kwargs["img_size"] = settings.roi_size
    create = dict(in_chans=settings.in_chans, num_classes=settings.num_classes, **kwargs)
    deep = preset.deep_supervision
    try:
        model = create_model(start, **create, **({"deep_supervision": True} if deep else {}))
    except ValueError as e:
        if not deep or "deep_supervision" not in str(e):
            raise
        deep = False  # the preset asks for it, this architecture has none
        model = create_model(start, **create)
    settings.model_args = {
        k: v for k, v in model.pretrained_cfg["model_args"].items() if k != "deep_supervision"
    }
    return model, deep


def adapt_model(model: nn.Module, settings: FinetuneSettings, grad_checkpointing: bool = False) -> nn.Module:
    """Freeze a part and/or add LoRA, as ``settings.adapters`` says; checkpoint the encoder's blocks."""
    from zoo.adapt import add_lora, freeze, set_grad_checkpointing

    if grad_checkpointing:  # the same maths for less memory, so a resumed run may change it
        set_grad_checkpointing(model)
    if settings.adapters.get("freeze"):
        freeze(model, settings.adapters["freeze"])
    if settings.adapters.get("lora_rank"):
        add_lora(model, r=settings.adapters["lora_rank"])
    return model


def build_datasets(settings: FinetuneSettings, preset: Preset, datalist: Mapping[str, Any], cache: bool):
    """Training and validation datasets through the preprocessing of :func:`build_transforms`."""
    from monai.data import CacheDataset, Dataset

    train_tf = build_transforms(settings, preset, train=True)
    val_tf = build_transforms(settings, preset, train=False)
    if cache:
        kw = dict(cache_rate=1.0, num_workers=0, progress=False)
        return CacheDataset(datalist["training"], train_tf, **kw), CacheDataset(
            datalist["validation"], val_tf, **kw
        )
    return Dataset(datalist["training"], train_tf), Dataset(datalist["validation"], val_tf)


def run_config(
    settings: FinetuneSettings,
    preset: Preset,
    model: nn.Module,
    data: str | Path,
    cases: Mapping[str, int] | None = None,
) -> Any:
    """The run's ``config.json`` (a :class:`zoo.runconfig.RunConfig`): what ``zoo.create(run)`` and
    ``zoo publish`` read back.

    ``init`` and ``lineage`` record what was actually loaded (``pretrained_cfg["weights"]``),
    never what was asked for; the licence is that of the chain. ``cases``: the number of training
    and validation cases (for the card; a datalist may grow without changing the run).
    """
    from zoo.provenance import chain_licence
    from zoo.runconfig import Link, RunConfig

    record = model.pretrained_cfg.get("weights")
    lineage = tuple(Link(**x) for x in (record or {}).get("lineage") or [])
    licence, redistributable, _ = chain_licence(lineage)
    s = settings
    return RunConfig(
        model_name=s.model,
        model_args=dict(s.model_args),
        kind="finetune",
        tag=record.get("tag") if record else None,
        covers="full",
        labels={str(k): v for k, v in s.label_names.items()},
        preprocessing={
            "orientation": s.orientation or "native",
            "axis_order": "zyx" if s.slice_axis_first else "xyz",
            "spacing_mm": list(s.spacing_mm) if s.spacing_mm else "native",
            "intensity_transform": s.intensity,
        },
        sliding_window={"roi_size": tuple(s.roi_size), "overlap": preset.overlap, "mode": preset.sw_mode},
        license=licence,
        redistributable=redistributable,
        init=record,
        lineage=lineage,
        finetune={"data": str(Path(data).resolve()), **asdict(s), "cases": dict(cases or {})},
    )


@dataclass(frozen=True)
class FinetuneOptions:
    """How :func:`finetune` runs: every setting beyond the model, the data and the run folder.

    None means "not given": the value then comes from the saved run, the weights or the preset.

    Attributes:
        preset: recipe name (default: the saved run's, else the family's; :mod:`zoo.presets`).
        pretrained: load the default weights tag when the name names none.
        checkpoint_path: start from this checkpoint file or run folder instead.
        steps / epochs: run length (default: the preset's full recipe).
        batch_size / num_samples / lr / crop: override the preset.
        roi_size: crop and sliding-window size (default: the model's input size).
        spacing_mm / intensity: override the weights' and the preset's preprocessing
            (``intensity``: ``zscore``, ``zscore-nonzero``, ``none``, ``clip:a,b,c,d``).
        num_classes / in_chans: default from the datalist (``labels``, ``modality``, a list of
            per-channel files) or the files.
        freeze: a part to freeze (``encoder``, ``encoder.1`` …), see :func:`zoo.adapt.freeze`.
        lora_rank: add LoRA of this rank to the encoder (decoder and head train in full).
        layer_decay: layer-wise LR decay over the model's parts.
        grad_checkpointing: recompute the encoder's blocks in the backward pass (less memory).
        loggers: trackers that get ``log.jsonl``'s scalars too: ``tensorboard``, ``mlflow``.
        val_every: validation period in steps (default: the preset's fraction of the run).
        num_workers: data-loading processes.
        cache: cache the deterministic part of the transforms in memory.
        resume: continue a run found in the run folder (False: start over there).
        seed: seed of weights, shuffles and augmentations.
        model_kwargs: further architecture arguments (e.g. smaller widths for a quick check).
        device: ``cpu`` / ``cuda`` (default: CUDA if present).
        progress: progress bar.
    """

    preset: str | None = None
    pretrained: bool | None = None
    checkpoint_path: str | Path | None = None
    steps: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    num_samples: int | None = None
    lr: float | None = None
    roi_size: Sequence[int] | None = None
    spacing_mm: Sequence[float] | None = None
    intensity: str | None = None
    crop: str | None = None
    num_classes: int | None = None
    in_chans: int | None = None
    freeze: str | None = None
    lora_rank: int | None = None
    layer_decay: float | None = None
    grad_checkpointing: bool = False
    loggers: Sequence[str] = ()
    val_every: int | None = None
    num_workers: int = 0
    cache: bool = True
    resume: bool = True
    seed: int = 0
    model_kwargs: Mapping[str, Any] | None = None
    device: str | None = None
    progress: bool = True

    def overrides(self) -> dict[str, Any]:
        """The settings a caller may override (keys of ``_OVERRIDE_FIELDS``; None: not given)."""
        return {k: getattr(self, k) for k in _OVERRIDE_FIELDS}


def _complete_result(out_dir: str | Path, settings: FinetuneSettings, step: int) -> FinetuneResult:
    """The result of a run found complete: its last validation and best mean Dice, from its log."""
    from zoo.train import read_log

    vals = [e["val"] for e in read_log(out_dir) if "val" in e]
    best = max((v.get("dice_mean", float("-inf")) for v in vals), default=None)
    return FinetuneResult(
        Path(out_dir), settings, step, [], vals[-1] if vals else {}, best, 0.0, already_complete=True
    )


def finetune(
    name: str,
    data: str | Path,
    out_dir: str | Path,
    options: FinetuneOptions | None = None,
    print_fn: Callable[[str], None] = print,
) -> FinetuneResult:
    """Fine-tune a zoo segmentation model on a MONAI datalist; see the module docstring.

    The flow reads in one direction: :func:`resolve_start` → settings (preset ← the saved
    run's ← the options: :func:`resolve_settings`, :func:`merge_saved`) →
    :func:`build_model` (``zoo.create``, the one weights path) → :func:`build_datasets`
    → ``zoo.train.train``.

    Args:
        name: ``NAME`` (from scratch unless ``pretrained``) or ``NAME.TAG`` (those weights,
            loaded or the call fails before training).
        data: the datalist JSON (:func:`zoo.datalist.read_datalist`).
        out_dir: run folder: ``model.safetensors``, ``best.safetensors``, ``config.json``,
            ``trainer_state.pt``, ``log.jsonl``. An existing run there is resumed with its
            saved settings; a given setting that differs from them is refused (only
            ``steps``/``epochs`` may change).
        options: a :class:`FinetuneOptions` (default: all defaults).
        print_fn: where the start-up summary and the results go (rank 0 only).

    Returns:
        A :class:`FinetuneResult`.
    """
    from monai.data import list_data_collate
    from monai.utils import set_determinism

    from zoo.train import LoopSettings, distributed_context, make_loader, train

    o = options or FinetuneOptions()
    rank0 = int(os.environ.get("RANK", "0")) == 0  # torchrun's; the process group is joined at the device
    say = print_fn if rank0 else (lambda _msg: None)

    # 1. every check before any volume is read, each a file or two at most: the request, the output
    # folder's owner (a foreign folder is refused whatever the datalist), settings, resume
    # compatibility, "already complete", the licence, the device
    check_output_spares_input(o.checkpoint_path, out_dir)
    start = start_plan(name, o.pretrained, o.checkpoint_path)
    _check_segmenter(start.spec)
    check_output_spares_input(start, out_dir)
    check_run_folder(out_dir, "finetune", o.resume)
    dl = read_datalist(data)
    if not dl["validation"]:
        raise ValueError(f"{data}: the datalist has no 'validation' cases (needed for the Dice report)")
    overrides = o.overrides()
    given = {k for k, v in overrides.items() if v is not None}
    saved = read_saved_settings(out_dir) if o.resume else None
    if saved is not None:  # the saved run's class and channel counts: no label or image file is opened
        overrides.update({k: saved.get(k) for k in ("num_classes", "in_chans") if k not in given})
    p = get_preset(o.preset or (saved or {}).get("preset") or default_preset_for(start.spec.family))
    settings = resolve_settings(start, dl, p, overrides, int(os.environ.get("WORLD_SIZE", "1")))
    if saved is not None:
        settings, applied = merge_saved(settings, saved, given, out_dir)
        done = saved_step(out_dir)
        if done is not None and done >= settings.total_steps:
            say(
                f"the run in {out_dir} is already complete (step {done} of {settings.total_steps}); nothing "
                "to train. Give more --steps to extend it, or --restart / another --out for a new run."
            )
            return _complete_result(out_dir, settings, done)
        say(
            f"resuming the run in {out_dir} with its saved settings"
            + (f"; applied {applied}" if applied else "")
        )
    say(licence_line(start))
    info = distributed_context(check_device(o.device))
    say(p.describe())
    say(settings.describe())

    # 2. the model, through the one weights path
    set_determinism(o.seed)
    model, deep = build_model(settings, start, p, o.model_kwargs)
    record = model.pretrained_cfg.get("weights")
    say(describe_load(record))
    adapt_model(model, settings, o.grad_checkpointing)
    if o.grad_checkpointing:
        say("gradient checkpointing: the encoder's blocks are recomputed in the backward pass")

    # 3. data and objective
    train_ds, val_ds = build_datasets(settings, p, dl, o.cache)
    per_rank = -(-len(train_ds) // info.world_size)
    loader = make_loader(
        train_ds, settings.batch_size, seed=o.seed, num_workers=o.num_workers, collate_fn=list_data_collate,
        drop_last=per_rank >= settings.batch_size, dist_info=info,
    )  # fmt: skip
    n_cls, roi = settings.num_classes, settings.roi_size
    criterion = SegmentationLoss(
        n_cls, p.dice_weight, p.ce_weight, p.squared_pred, p.include_background, deep
    )

    def loss_fn(net: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return criterion(net(batch["image"]), batch["label"])

    def val_fn(net: nn.Module) -> dict[str, float]:
        return evaluate_dice(net, val_ds, n_cls, roi, p.overlap, p.sw_mode, device=info.device)

    # 4. train
    optim = p.optim_for(settings.total_steps, settings.lr)
    if settings.adapters.get("layer_decay"):
        optim.layer_decay = settings.adapters["layer_decay"]
    config = run_config(settings, p, model, data, {k: len(dl[k]) for k in ("training", "validation")})
    fixed = {k: v for k, v in config.finetune.items() if k not in ("total_steps", "val_every", "cases")}
    started = time.perf_counter()
    loop = LoopSettings(
        val_every=settings.val_every,
        monitor="dice_mean",
        resume=o.resume,
        progress=o.progress,
        device=info.device,
        loggers=tuple(o.loggers),
    )
    res = train(
        model, loss_fn, loader, out_dir, optim, settings.total_steps, loop, val_fn=val_fn, config=config,
        settings={"finetune": fixed, "init": record and {k: record[k] for k in ("id", "sha256", "covers")}},
    )  # fmt: skip
    metrics = res.metrics[-1] if res.metrics else {}
    names = settings.label_names
    if info.is_main:
        from zoo.plots import plot_training_curves

        try:  # loss and validation-Dice curves next to log.jsonl (needs the plots extra)
            plot_training_curves(Path(out_dir) / "log.jsonl", names=settings.label_names)
        except (RuntimeError, ImportError, OSError, ValueError) as e:
            log.info("no training-curve plots: %s", e)
    if info.is_main and metrics:
        rows = [f"  {names.get(c, c)}: {metrics[f'dice_{c}']:.4f}" for c in range(1, n_cls)]
        say("validation Dice (sliding window, background excluded):\n" + "\n".join(rows))
        say(f"  mean: {metrics['dice_mean']:.4f} (best {res.best:.4f})")
        say(f"saved {Path(out_dir) / 'model.safetensors'} (+ best.safetensors, config.json); load with "
            f"zoo.create({str(out_dir)!r})")  # fmt: skip
    return FinetuneResult(
        out_dir=Path(out_dir),
        settings=settings,
        steps=res.step,
        losses=res.losses,
        metrics=metrics,
        best=res.best,
        seconds=time.perf_counter() - started,
        init=record,
        already_complete=res.already_complete,
    )
