"""Fine-tuning on real MRI that an installed package ships: MNI152 T1 → grey/white matter.

The task (``zoo.finetune.make_mni_task``): nilearn's MNI152 2009a T1 template resampled to
3 mm, each case warped by its own random elastic + affine deformation (training and
validation cases from different random draws) with 2 % intensity noise; labels from the
template's grey- and white-matter probability maps, thresholded at 0.5 (1 = GM where
P(GM) ≥ 0.5 and P(GM) ≥ P(WM), 2 = WM where P(WM) ≥ 0.5 and P(WM) > P(GM), else 0).

Runs the real ``zoo finetune`` pipeline (MONAI loading, z-score intensity, pos/neg crops,
Dice + CE, AdamW with warm-up and cosine decay, sliding-window validation Dice):

1. a small model from scratch: FMUNet (the MIS-FM U-Net) at widths 8–128 (2.97 M parameters);
2. every registered pretrained model whose weights are already in the local cache
   (no download is attempted), fine-tuned the same way at its own input size.

A validation mean Dice ≥ 0.80 shows that the pipeline learns. Usage::

    python benchmarks/finetune_mni.py                 # < 30 min on 2 CPU cores
    python benchmarks/finetune_mni.py --write         # also rewrite benchmarks/finetune_mni.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
# Pretrained candidates: (name.tag, crop size). Used only when their weights are cached.
PRETRAINED = (
    ("qtunet-t.ct-ssl", (64, 64, 64)),
    ("fmunet.vf1k", (48, 48, 48)),
    ("pctnet.vf110k", (32, 64, 64)),
)


def cached(name: str) -> bool:
    """Whether ``name``'s weights load from the local caches alone."""
    import zoo
    from zoo.hub import WeightsUnavailableError

    old = {k: os.environ.get(k) for k in ("MEDZOO_OFFLINE", "HF_HUB_OFFLINE")}
    os.environ.update(MEDZOO_OFFLINE="1", HF_HUB_OFFLINE="1")
    try:
        zoo.create(name, pretrained=True)
        return True
    except (WeightsUnavailableError, OSError, ValueError, RuntimeError):
        return False
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(name: str, datalist: Path, out: Path, args: argparse.Namespace, roi, **kw) -> dict:
    from zoo.finetune import finetune

    r = finetune(
        name, datalist, out, preset="default", steps=args.steps, lr=args.lr, batch_size=2, num_samples=2,
        roi_size=roi, spacing_mm=None, intensity="zscore-nonzero", val_every=max(args.steps // 4, 1),
        progress=not args.quiet, seed=args.seed, **kw,
    )  # fmt: skip
    first = sum(loss for _, loss in r.losses[:10]) / min(len(r.losses), 10)
    last = sum(loss for _, loss in r.losses[-10:]) / min(len(r.losses), 10)
    return {"name": name, "roi": roi, "metrics": r.metrics, "best": r.best, "seconds": r.seconds,
            "steps": r.steps, "loss_first": first, "loss_last": last}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--roi", type=int, default=32, help="crop side of the model trained from scratch")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--spacing", type=float, default=3.0)
    p.add_argument("--train", type=int, default=6, help="training cases")
    p.add_argument("--val", type=int, default=2, help="validation cases")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--work", default=None, help="folder for the data and runs (default: a temporary one)")
    p.add_argument("--write", action="store_true", help="write benchmarks/finetune_mni.md")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from zoo.finetune import make_mni_task

    work = Path(args.work or tempfile.mkdtemp(prefix="zoo-finetune-mni-"))
    started = time.perf_counter()
    datalist = make_mni_task(work / "data", args.train, args.val, args.spacing, threshold=0.5, seed=args.seed)
    results = [
        run("fmunet", datalist, work / "fmunet-scratch", args, (args.roi,) * 3,
            model_kwargs={"feature_chns": (8, 16, 32, 64, 128)})
    ]  # fmt: skip
    results[0]["label"] = "FMUNet widths 8–128 (2.97 M params), from scratch"
    skipped = []
    for name, roi in PRETRAINED:
        if cached(name):
            res = run(name, datalist, work / name.replace(".", "-"), args, roi)
            res["label"] = f"{name}, fine-tuned"
            results.append(res)
        else:
            skipped.append(name)
    total = time.perf_counter() - started

    lines = [
        "# Fine-tuning on MNI152 (real MRI shipped with nilearn)",
        "",
        f"Produced by `python benchmarks/finetune_mni.py --write` ({args.steps} steps per model, "
        f"lr {args.lr:g}, seed {args.seed}). Task: MNI152 2009a T1 at {args.spacing:g} mm, {args.train} "
        f"training and {args.val} validation cases, each warped by its own random elastic + affine "
        "deformation; labels 1 = grey matter (P(GM) ≥ 0.5), 2 = white matter (P(WM) ≥ 0.5). Pipeline: "
        "`zoo finetune` with preset `default` "
        "(AdamW, 5 % warm-up + cosine, Dice + CE, 2 cases × 2 pos/neg crops per step, z-score over nonzero "
        "voxels), validation Dice by sliding window (overlap 0.5), background excluded.",
        "",
        "| model | crop | steps | loss first 10 → last 10 | Dice GM | Dice WM | mean Dice | time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = r["metrics"]
        lines.append(
            f"| {r['label']} | {'×'.join(map(str, r['roi']))} | {r['steps']} | {r['loss_first']:.3f} → "
            f"{r['loss_last']:.3f} | {m['dice_1']:.3f} | {m['dice_2']:.3f} | **{m['dice_mean']:.3f}** | "
            f"{r['seconds'] / 60:.1f} min |"
        )
    lines += [
        "",
        "Pretrained weights: " + (
            ", ".join(f"`{n}` not in the local cache (skipped; `zoo download {n}`, then rerun)"
                      for n in skipped)
            if skipped else "every candidate was cached"
        ) + ".",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
        f"total {total / 60:.1f} min (data preparation included).",
        "",
        "A validation mean Dice ≥ 0.80 is the bar for \"the pipeline learns\": "
        + ("met." if results[0]["metrics"]["dice_mean"] >= 0.80 else "NOT met."),
    ]  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        (HERE / "finetune_mni.md").write_text(text)
    return 0 if results[0]["metrics"]["dice_mean"] >= 0.80 else 1


if __name__ == "__main__":
    sys.exit(main())
