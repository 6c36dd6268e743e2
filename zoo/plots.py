"""Pictures of results: a label map over its scan, and the curves of a training run.

matplotlib is an optional extra (``pip install 'medzoo[plots]'``); it is imported only here,
only when a picture is asked for.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["preview_png", "plot_training_curves", "require_matplotlib", "OKABE_ITO"]

_HINT = "pictures need matplotlib: pip install 'medzoo[plots]'"

# Okabe & Ito's colour-blind-safe palette (orange, sky blue, bluish green, yellow, blue, vermillion,
# reddish purple): neighbouring labels get colours that differ in hue and lightness.
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")


def require_matplotlib() -> Any:
    """Import matplotlib with a file-only backend, or fail with the one line that installs it.

    Raises:
        RuntimeError: matplotlib is not installed.
    """
    try:
        import matplotlib
    except ImportError as e:
        raise RuntimeError(_HINT) from e
    matplotlib.use("Agg", force=False)  # no display: files only
    import matplotlib.pyplot as plt

    return plt


def _save_atomic(fig: Any, out: Path) -> None:
    from zoo._files import write_atomically

    write_atomically(out, lambda p: fig.savefig(str(p), dpi=80, bbox_inches="tight"), ".png")


def preview_png(
    image: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    names: Mapping[int, str],
    out: str | Path,
    title: str = "",
) -> Path:
    """Three orthogonal mid-slices of a scan with its label map overlaid, and a legend.

    Both arrays are on the same voxel grid; they are shown in RAS orientation (whatever the
    file's storage order), with the voxel aspect of ``affine``.

    Args:
        image: ``X × Y × Z`` intensities.
        labels: ``X × Y × Z`` integer labels (0 is background, drawn transparent).
        affine: the voxel-to-world matrix of both.
        names: label value → name, for the legend.
        out: the PNG to write (atomically).
        title: a line above the panels.

    Returns:
        The PNG path.
    """
    import nibabel as nib

    plt = require_matplotlib()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    ornt = nib.orientations.io_orientation(affine)
    img = nib.orientations.apply_orientation(np.asarray(image, dtype=np.float32), ornt)
    lab = nib.orientations.apply_orientation(np.asarray(labels), ornt)
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    zooms = [float(zooms[int(np.nonzero(ornt[:, 0] == k)[0][0])]) for k in range(3)]
    lo, hi = np.percentile(img, (1, 99.5)) if img.size else (0.0, 1.0)
    present = [int(v) for v in np.unique(lab) if v != 0]
    from matplotlib.colors import to_rgba

    # By label value, so a label keeps its colour across previews; beyond seven, tab20 continues.
    colours = {
        v: to_rgba(OKABE_ITO[(v - 1) % 7]) if v <= 7 else plt.get_cmap("tab20")((v - 8) % 20) for v in present
    }
    top = int(lab.max()) if lab.size else 0
    cmap = ListedColormap([(0, 0, 0, 0)] + [colours.get(v, (0, 0, 0, 0)) for v in range(1, top + 1)])
    cx, cy, cz = (s // 2 for s in img.shape)
    # (data slice, label slice, aspect of rows vs columns, view name), each drawn with rows = the
    # second in-plane axis flipped so superior / anterior is up.
    views = [
        (img[:, :, cz].T, lab[:, :, cz].T, zooms[1] / zooms[0], "axial"),
        (img[:, cy, :].T, lab[:, cy, :].T, zooms[2] / zooms[0], "coronal"),
        (img[cx, :, :].T, lab[cx, :, :].T, zooms[2] / zooms[1], "sagittal"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(10, 4))
    for ax, (im, lb, aspect, view) in zip(axes, views, strict=True):
        ax.imshow(im, cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspect, interpolation="nearest")
        ax.imshow(
            lb,
            cmap=cmap,
            vmin=0,
            vmax=max(top, 1),
            origin="lower",
            aspect=aspect,
            alpha=0.45,
            interpolation="nearest",
        )
        ax.set_title(view)
        ax.axis("off")
    handles = [Patch(color=colours[v], label=f"{v}: {names.get(v, f'class {v}')}") for v in present]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), frameon=False, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    out = Path(out)
    try:
        _save_atomic(fig, out)
    finally:
        plt.close(fig)
    return out


def plot_training_curves(
    log_jsonl: str | Path, out_dir: str | Path | None = None, names: Mapping[int, str] | None = None
) -> list[Path]:
    """Loss and validation-Dice curves of a run as PNGs (``loss.png``, ``val_dice.png``).

    The loss of every logged step is drawn raw (thin) and smoothed (a centred moving mean, thick);
    the Dice of each label under its name, with the mean in black.

    Args:
        log_jsonl: the run's ``log.jsonl`` (``{"step", "loss", …}`` and ``{"val": {…}}`` lines).
        out_dir: where to write them (default: next to ``log.jsonl``).
        names: label value → name (the datalist's); default ``label N``.

    Returns:
        The PNGs written (none for a log without steps; no Dice plot without validations).

    Raises:
        ValueError: a line that is not JSON.
    """
    log_jsonl = Path(log_jsonl)
    out_dir = Path(out_dir) if out_dir is not None else log_jsonl.parent
    steps, losses, val_steps, dice = [], [], [], {}
    last_step = 0
    for i, line in enumerate(log_jsonl.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{log_jsonl}:{i}: expected one JSON object per line, found {line[:60]!r}"
            ) from e
        if "val" in entry:
            metrics = entry["val"]
            val_steps.append(int(metrics.get("step", last_step)))
            for k, v in metrics.items():
                if k.startswith("dice") and isinstance(v, int | float):
                    dice.setdefault(k, []).append(float(v))
        elif "loss" in entry:
            last_step = int(entry.get("step", last_step + 1))
            steps.append(last_step)
            losses.append(float(entry["loss"]))
    if not steps:
        return []
    plt = require_matplotlib()
    from matplotlib.ticker import MaxNLocator

    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, losses, lw=0.8, alpha=0.45, color=OKABE_ITO[5], label="every step")
    k = max(len(losses) // 20, 1)
    if k > 1:  # a centred moving mean shows the trend under the per-step noise
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k // 2 : k // 2 + len(smooth)], smooth, lw=2, color=OKABE_ITO[5], label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    ax.grid(alpha=0.3)
    try:
        _save_atomic(fig, out_dir / "loss.png")
    finally:
        plt.close(fig)
    written.append(out_dir / "loss.png")
    if val_steps and dice:
        names = names or {}
        fig, ax = plt.subplots(figsize=(6, 4))
        labels = sorted((int(key[5:]), vals) for key, vals in dice.items() if key[5:].isdigit())
        for n, (c, vals) in enumerate(labels):
            colour = OKABE_ITO[n % len(OKABE_ITO)]
            ax.plot(
                val_steps[: len(vals)],
                vals,
                marker="o",
                lw=1.2,
                color=colour,
                label=names.get(c, f"label {c}"),
            )
        if "dice_mean" in dice:
            vals = dice["dice_mean"]
            ax.plot(val_steps[: len(vals)], vals, marker="s", lw=2.2, color="black", label="mean")
        ax.set_xlabel("step")
        ax.set_ylabel("validation Dice")
        ax.set_ylim(0, 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        try:
            _save_atomic(fig, out_dir / "val_dice.png")
        finally:
            plt.close(fig)
        written.append(out_dir / "val_dice.png")
    return written
