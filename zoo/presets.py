"""Fine-tuning recipes of the papers, as data: ``zoo finetune NAME --preset NAME``.

Each :class:`Preset` holds the optimiser, schedule, batch, crops, augmentations, loss and
inference overlap that a paper (or its code) states for fine-tuning, with the source of
every value. Durations are kept in the paper's own unit (epochs over the training cases,
or iterations); :meth:`Preset.total_steps` turns them into optimiser steps for a dataset.
Values a paper leaves open are our choice and say so in ``notes``.

Presets: ``qtunet-btcv`` (QT-UNet, §4.1 of the spec: the authors' code), ``logonet-btcv`` and
``logonet-msd`` (Masked LoGoNet, Table 14), ``pctnet`` (MIS-FM paper) and ``pctnet-demo`` (the
MIS-FM repository's demo), and ``default`` for every other family.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.train import OptimConfig

__all__ = ["Preset", "PRESETS", "get_preset", "default_preset_for", "list_presets", "finetune_card_section"]


@dataclass(frozen=True)
class Preset:
    """A fine-tuning recipe.

    Attributes:
        name: preset name (``logonet-btcv``).
        source: where the values come from.
        optim: optimiser and schedule (warm-up given separately, as a fraction).
        warmup_fraction: warm-up steps as a fraction of the run (LoGoNet: 100 of 5000 epochs).
        epochs: duration in epochs over the training cases, or None.
        iterations: duration in optimiser steps, or None (exactly one of the two is set).
        step_every_fraction: for step schedules, the decay period as a fraction of the run.
        batch_size: cases per process and step.
        num_samples: crops drawn per case (a step sees ``batch_size × num_samples`` crops).
        crop: ``"random"`` (RandSpatialCropSamplesd) or ``"posneg"`` (RandCropByPosNegLabeld).
        pos_neg: positive/negative ratio of ``"posneg"`` crops.
        roi_size: crop size when the model does not fix one (else the model's input size).
        spacing_mm: target spacing when the weights do not state one (None: native).
        intensity: intensity transform when the weights do not state one, e.g.
            ``{"kind": "clip_scale", "a_min": -175, "a_max": 250, "b_min": 0, "b_max": 1}`` or
            ``{"kind": "zscore", "nonzero": True, "channel_wise": True}``.
        flip_prob: RandFlipd probability per axis.
        rot90_prob: RandRotate90d probability (in the first two spatial axes).
        scale_intensity: (factor, probability) of RandScaleIntensityd, or None.
        shift_intensity: (offset, probability) of RandShiftIntensityd, or None.
        dice_weight / ce_weight: weights of the Dice and cross-entropy terms.
        squared_pred: Dice with squared denominators (V-Net / QT-UNet's DiceLoss).
        include_background: the Dice term counts the background channel.
        deep_supervision: train on every output scale the model offers (weights 1/2^i).
        overlap: sliding-window overlap of validation and inference.
        sw_mode: sliding-window blending, ``"constant"`` or ``"gaussian"``.
        val_every_fraction: validation period as a fraction of the run.
        notes: the source's gaps and our choices, one line each.
    """

    name: str
    source: str
    optim: OptimConfig
    warmup_fraction: float = 0.0
    epochs: int | None = None
    iterations: int | None = None
    step_every_fraction: float | None = None
    batch_size: int = 2
    num_samples: int = 2
    crop: str = "posneg"
    pos_neg: tuple[float, float] = (1.0, 1.0)
    roi_size: tuple[int, ...] = (96, 96, 96)
    spacing_mm: tuple[float, ...] | None = None
    intensity: Mapping[str, Any] | None = None
    flip_prob: float = 0.0
    rot90_prob: float = 0.0
    scale_intensity: tuple[float, float] | None = None
    shift_intensity: tuple[float, float] | None = None
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    squared_pred: bool = False
    include_background: bool = False
    deep_supervision: bool = False
    overlap: float = 0.5
    sw_mode: str = "gaussian"
    val_every_fraction: float = 0.1
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if (self.epochs is None) == (self.iterations is None):
            raise ValueError(f"preset {self.name}: set exactly one of epochs and iterations")
        if self.crop not in ("random", "posneg"):
            raise ValueError(f"preset {self.name}: crop must be 'random' or 'posneg', got {self.crop!r}")

    def total_steps(self, num_train: int, world_size: int = 1) -> int:
        """Optimiser steps of the full recipe for ``num_train`` training cases."""
        if self.iterations is not None:
            return self.iterations
        per_epoch = max(num_train // (self.batch_size * world_size), 1)
        return self.epochs * per_epoch

    def optim_for(self, total_steps: int, lr: float | None = None) -> OptimConfig:
        """The optimiser config of a run of ``total_steps`` (warm-up and step period resolved)."""
        changes: dict[str, Any] = {"warmup_steps": int(round(self.warmup_fraction * total_steps))}
        if self.step_every_fraction is not None:
            changes["step_size"] = max(int(round(self.step_every_fraction * total_steps)), 1)
        if lr is not None:
            changes["lr"] = lr
        return dataclasses.replace(self.optim, **changes)

    def describe(self) -> str:
        """The preset's values, one per line, for printing at the start of a run."""
        o = self.optim
        dur = f"{self.epochs} epochs" if self.epochs is not None else f"{self.iterations} iterations"
        sched = {
            "cosine": f"cosine, warm-up {self.warmup_fraction:.0%} of the run"
            if self.warmup_fraction
            else "cosine",
            "step": f"× {o.gamma} every {self.step_every_fraction:.1%} of the run"
            if self.step_every_fraction
            else "step",
            "poly": f"poly (power {o.power})",
            "constant": "constant",
        }[o.schedule]
        aug = [
            f"flip p={self.flip_prob}" if self.flip_prob else "",
            f"rot90 p={self.rot90_prob}" if self.rot90_prob else "",
        ]
        if self.scale_intensity:
            aug.append(f"scale intensity ±{self.scale_intensity[0]} p={self.scale_intensity[1]}")
        if self.shift_intensity:
            aug.append(f"shift intensity ±{self.shift_intensity[0]} p={self.shift_intensity[1]}")
        loss = []
        if self.dice_weight:
            loss.append(f"{self.dice_weight}·Dice{' (squared)' if self.squared_pred else ''}")
        if self.ce_weight:
            loss.append(f"{self.ce_weight}·CE")
        lines = [
            f"preset {self.name}: {self.source}",
            f"  optimiser: {o.optimizer} lr {o.lr:g}, weight decay {o.weight_decay:g}, betas {o.betas}",
            f"  schedule: {sched}; {dur}",
            f"  batch: {self.batch_size} case(s) × {self.num_samples} {self.crop} crop(s)"
            + (f" (pos:neg {self.pos_neg[0]:g}:{self.pos_neg[1]:g})" if self.crop == "posneg" else ""),
            f"  loss: {' + '.join(loss)}"
            + (", background in Dice" if self.include_background else "")
            + (", deep supervision" if self.deep_supervision else ""),
            f"  augmentation: {', '.join(a for a in aug if a) or 'crops only'}",
            f"  validation: sliding window, overlap {self.overlap}, {self.sw_mode} blending",
        ]
        if self.spacing_mm:
            lines.append(f"  spacing (unless the weights state one): {self.spacing_mm} mm")
        if self.intensity:
            lines.append(f"  intensity (unless the weights state one): {dict(self.intensity)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


_BTCV_WINDOW = {"kind": "clip_scale", "a_min": -175.0, "a_max": 250.0, "b_min": 0.0, "b_max": 1.0}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="qtunet-btcv",
            source="QT-UNet (Håversen et al. 2024): the authors' configs and BTCV data module",
            optim=OptimConfig(optimizer="adam", lr=4e-4, weight_decay=0.0, schedule="cosine"),
            epochs=350,
            batch_size=1,
            num_samples=1,
            crop="random",
            spacing_mm=(1.5, 1.5, 2.0),
            intensity=_BTCV_WINDOW,
            flip_prob=0.1,
            rot90_prob=0.1,
            shift_intensity=(0.1, 0.5),
            dice_weight=1.0,
            ce_weight=0.0,
            squared_pred=True,
            include_background=True,
            overlap=0.5,
            sw_mode="constant",
            notes=(
                "lr 4e-4 is the code's yaml; the paper's Table 5 prints 0.4×10⁻⁴ (4e-5).",
                "Cosine annealing over 350 epochs, no warm-up; the code steps it per epoch, here per step.",
                "Loss: MONAI DiceLoss(squared_pred=True, softmax, with background); VT-UNet: DiceCE 0.7/0.3.",
                "The BTCV crop type is not stated: one random ROI crop per case (our choice).",
            ),
        ),
        Preset(
            name="logonet-btcv",
            source="Masked LoGoNet (Karimi Monsefi et al., KDD 2024), Table 14, BTCV column",
            optim=OptimConfig(
                optimizer="adamw", lr=1e-4, weight_decay=1e-5, betas=(0.9, 0.999), schedule="cosine"
            ),
            warmup_fraction=100 / 5000,
            epochs=5000,
            batch_size=2,
            num_samples=2,
            crop="random",
            spacing_mm=(1.5, 1.5, 2.0),
            intensity=_BTCV_WINDOW,
            flip_prob=0.2,
            rot90_prob=0.2,
            scale_intensity=(0.1, 0.1),
            shift_intensity=(0.1, 0.1),
            dice_weight=1.0,
            ce_weight=1.0,
            overlap=0.5,
            notes=(
                "Trained on 16 GPUs with batch 2 per GPU; under torchrun the batch is per process, as there.",
                "BatchNorm throughout: with one process, keep ≥ 2 crops per step (or freeze BN statistics).",
            ),
        ),
        Preset(
            name="logonet-msd",
            source="Masked LoGoNet (Karimi Monsefi et al., KDD 2024), Table 14, MSD column",
            optim=OptimConfig(
                optimizer="adamw", lr=1e-4, weight_decay=1e-5, betas=(0.9, 0.999), schedule="cosine"
            ),
            warmup_fraction=50 / 1000,
            epochs=1000,
            batch_size=1,
            num_samples=2,
            crop="random",
            spacing_mm=(1.0, 1.0, 1.0),
            intensity={"kind": "clip_scale", "a_min": -100.0, "a_max": 2000.0, "b_min": 0.0, "b_max": 1.0},
            flip_prob=0.2,
            rot90_prob=0.2,
            scale_intensity=(0.1, 0.1),
            shift_intensity=(0.1, 0.1),
            dice_weight=1.0,
            ce_weight=1.0,
            overlap=0.5,
            notes=("The paper applies this HU window to the MRI task too; use --intensity zscore for MRI.",),
        ),
        Preset(
            name="pctnet",
            source="MIS-FM / PCT-Net (Wang et al. 2023), §4 fine-tuning recipe",
            optim=OptimConfig(
                optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="step", step_size=5_000, gamma=0.5
            ),
            iterations=30_000,
            step_every_fraction=5_000 / 30_000,
            batch_size=2,
            num_samples=1,
            crop="random",
            roi_size=(64, 128, 128),
            flip_prob=0.5,
            dice_weight=0.5,
            ce_weight=0.5,
            deep_supervision=True,
            overlap=0.5,
            notes=(
                "The paper states neither patch size, normalisation nor resampling: the patch is the model's "
                "input size, intensity and spacing come from the weights' preprocessing.",
                "Deep supervision (4 scales, weights 1/2^i normalised, soft labels by average pooling) as in "
                "the 2023 release's training code; flips on all axes as in its demo.",
            ),
        ),
        Preset(
            name="pctnet-demo",
            source="MIS-FM repository demo (left atrium MRI), spec §4",
            optim=OptimConfig(optimizer="adam", lr=1e-3, weight_decay=1e-5, schedule="poly", power=0.8),
            iterations=6_000,
            batch_size=2,
            num_samples=1,
            crop="random",
            roi_size=(64, 128, 128),
            intensity={"kind": "zscore", "nonzero": False, "channel_wise": True},
            flip_prob=0.5,
            dice_weight=0.5,
            ce_weight=0.5,
            deep_supervision=True,
            overlap=0.5,
            notes=("PolynomialLR is stepped every 250 iterations in the demo; here every step.",),
        ),
        Preset(
            name="default",
            source="medzoo default for families whose paper gives no fine-tuning recipe",
            optim=OptimConfig(optimizer="adamw", lr=1e-4, weight_decay=1e-5, schedule="cosine"),
            warmup_fraction=0.05,
            iterations=5_000,
            batch_size=2,
            num_samples=2,
            crop="posneg",
            intensity={"kind": "zscore", "nonzero": True, "channel_wise": True},
            flip_prob=0.2,
            rot90_prob=0.2,
            scale_intensity=(0.1, 0.1),
            shift_intensity=(0.1, 0.1),
            dice_weight=1.0,
            ce_weight=1.0,
            overlap=0.5,
        ),
    )
}

_FAMILY_DEFAULT = {"qtunet": "qtunet-btcv", "logonet": "logonet-btcv", "pctnet": "pctnet"}


def default_preset_for(family: str) -> str:
    """The preset a family fine-tunes with unless told otherwise."""
    return _FAMILY_DEFAULT.get(family, "default")


def get_preset(name: str) -> Preset:
    """The preset called ``name``.

    Raises:
        ValueError: naming the presets that exist.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}") from None


def list_presets() -> list[str]:
    """Names of the presets."""
    return list(PRESETS)


# ---------------------------------------------------------------------------------------
# model cards

# Written by benchmarks/finetune_mni.py --write; read here for the cards' measured result.
MNI_RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "finetune_mni.json"


def _fmt_size(size: Any) -> str:
    return "×".join(str(int(v)) for v in size)


def finetune_card_section(spec: Any, tag: str | None = None, results: str | Path | None = None) -> str:
    """The "Fine-tune" section of a model card: preset, command, crop, spacing, lr, a measured result.

    Args:
        spec: the model's :class:`~zoo._registry.ModelSpec` (or its registry name).
        tag: the weights the command starts from (default: the model's default tag).
        results: the benchmark record (default: ``benchmarks/finetune_mni.json`` of this
            checkout; the measured part is left out, saying so, when it is absent).

    Returns:
        Markdown starting with ``## Fine-tune``.
    """
    if isinstance(spec, str):
        from zoo._registry import get_spec

        spec = get_spec(spec)
    tag = tag or spec.default_tag
    ws = spec.weight(tag) if tag else None
    preset = get_preset(default_preset_for(spec.family))
    target = f"{spec.name}.{tag}" if tag else spec.name
    crop = spec.input_size[1:] if spec.input_size else preset.roi_size
    prep = dict(ws.preprocessing) if ws else {}
    # The same rule as zoo.finetune.resolve_settings: the weights' spacing, else native for weights.
    spacing = prep.get("spacing_mm") if isinstance(prep.get("spacing_mm"), list | tuple) else None
    if spacing:
        spacing_text = f"{_fmt_size(spacing) if all(float(v).is_integer() for v in spacing) else spacing} mm"
    elif ws is None and preset.spacing_mm:
        spacing_text = f"{preset.spacing_mm} mm (the preset's)"
    else:
        spacing_text = "native (the weights state none; set one with `--spacing`)"
    o = preset.optim
    length = f"{preset.epochs} epochs" if preset.epochs is not None else f"{preset.iterations} iterations"
    start = (
        f"Starts from `{target}`"
        + (f" (covers the {ws.covers}; the rest is initialised anew)" if ws and ws.covers != "full" else "")
        + ("; the output head is re-initialised for your classes." if ws else ".")
    )
    lines = [
        "## Fine-tune",
        "",
        f"Preset `{preset.name}` ({preset.source}); `zoo finetune --list-presets` prints every value.",
        "",
        "```bash",
        f"zoo finetune {target} --data datalist.json --out runs/{target.replace('.', '-')}",
        "```",
        "",
        start + " `datalist.json` is a MONAI datalist of NIfTI image/label pairs (`training`, `validation`).",
        "",
        "| setting | value |",
        "|---|---|",
        f"| crop | {_fmt_size(crop)} (the model's input; `--roi`) |",
        f"| spacing | {spacing_text} |",
        f"| learning rate | {o.lr:g} ({o.optimizer}, {o.schedule} schedule; `--lr`) |",
        f"| batch | {preset.batch_size} case(s) × {preset.num_samples} {preset.crop} crop(s) |",
        f"| run length | {length} (`--steps`) |",
        "",
    ]
    lines += _measured_lines(spec.name, Path(results) if results else MNI_RESULTS)
    return "\n".join(lines).rstrip() + "\n"


def _measured_lines(name: str, path: Path) -> list[str]:
    import json

    try:
        rec = json.loads(path.read_text())
        summary, model, command = rec["summary"], rec["model"], rec["command"]
        k = max(summary["pretrained"], key=int)
        pre, rnd = summary["pretrained"][k], summary["random"][k]
    except (OSError, ValueError, KeyError, TypeError):
        return ["Measured result: none recorded yet (`python benchmarks/finetune_mni.py --write`)."]
    which = "this model" if model == name else f"`{model}`, not this model,"
    ft = rec.get("finetune", {})
    return [
        f"Measured result (MNI152 grey/white-matter sample task, {which} at reduced widths "
        f"`{rec.get('model_args')}`): mean validation Dice {pre['mean']:.3f} ± {pre['std']:.3f} after "
        f"{rec.get('pretraining', {}).get('method', 'self-supervised')} pretraining vs "
        f"{rnd['mean']:.3f} ± {rnd['std']:.3f} from random initialisation, {k} labelled volume(s), "
        f"{ft.get('steps', '?')} fine-tuning steps, {pre.get('n', '?')} seeds. Produced by:",
        "",
        "```bash",
        command,
        "```",
    ]
