"""Continue-pretraining smoke run: every recipe of ``zoo.ssl`` on real volumes an installed
package ships (nilearn's three MNI152 images), then each pretrained encoder in ``zoo finetune``.

For each recipe: a bounded number of steps of the real pipeline (``zoo.ssl.pretrain``: the
recipe's paper preprocessing with the spacing and intensity set for MRI, its pretext task,
``zoo.train``'s loop, the exported checkpoint), the loss per step, the checkpoint loaded back
with ``zoo.create(..., checkpoint_path=)``; for the segmentation models, the checkpoint is then
fine-tuned for a few steps on the MNI152 grey/white-matter task (``zoo.finetune``).

Two sizes: ``--size small`` (default; reduced widths and 32³ crops, minutes on 2 CPU cores) and
``--size paper`` (the registered configurations and the papers' crops; for a GPU).

Writes into ``--out`` (default ``benchmarks/pretrain-smoke``): ``loss_curves.png`` (one panel per
recipe, matplotlib; ``--replot`` redraws it from the JSON), ``pretrain_smoke.json`` (losses,
timings, what each checkpoint covers, the fine-tuning Dice) and ``pretrain_smoke.md``. Usage::

    python benchmarks/pretrain_smoke.py                        # all recipes, small
    python benchmarks/pretrain_smoke.py --steps 40 --only byol-rot-rec volume-fusion
    python benchmarks/pretrain_smoke.py --size paper --steps 20 --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

MRI = dict(spacing_mm=(2.0, 2.0, 2.0), intensity={"kind": "zscore_nonzero"})

# method → (model, model_args, recipe_args, preprocessing, settings, fine-tune roi or None), per size.
SMALL = {
    "volume-fusion": (
        "fmunet",
        dict(feature_chns=(8, 16, 32, 64, 128)),
        dict(roi=(32, 64, 64), size_min=(4, 8, 8), size_max=(20, 40, 40)),
        dict(MRI, axis_order="zyx"),
        dict(batch_size=2, lr=3e-3),
        (32, 64, 64),
    ),
    "byol-rot-rec": (
        "qtunet-t",
        dict(img_size=64),
        dict(hole_size=(16, 32), hidden_dim=1024),
        MRI,
        dict(batch_size=4, lr=4e-4, warmup_fraction=0.1),
        (64, 64, 64),
    ),
    "multi-clustering": (
        "ulkanet",
        dict(img_size=64, dims=(16, 32, 64, 128), depths=(1, 1, 2, 1), decoder_dims=(48, 48, 32, 16, 16)),
        dict(n_clusterers=8, k_range=(8, 32), kmeans_iterations=50, crops_per_volume=4),
        MRI,
        dict(batch_size=2, lr=1e-3, warmup_fraction=0.1),
        (64, 64, 64),
    ),
    "simsiam-iou": (
        "swinvit2d-c48-simsiam-iou30-60",
        dict(embed_dim=24, img_size=64, proj_hidden_dim=512, out_dim=512, pred_hidden_dim=128),
        dict(crop_size=64),
        MRI,
        dict(batch_size=32, lr=0.05),
        None,
    ),
    "dino": (
        "swinvit2d-c48",
        dict(embed_dim=24, img_size=64),
        dict(crop_size=64, out_dim=256, hidden_dim=512, bottleneck_dim=64),
        MRI,
        dict(batch_size=32, lr=5e-4, warmup_fraction=0.1),
        None,
    ),
    "joint-2d3d": (
        "resnet50-deformattn-swav",
        dict(n_frames=16, img_size=(64, 64), nmb_prototypes=(64,)),
        [
            dict(global_size=64, n_local=2, local_size=32, n_prototypes=64, freeze_prototypes_steps=0),
            {},
            dict(freeze_prototypes_steps=0),
        ],
        dict(MRI, intensity={"kind": "none"}, crop_foreground=False, axis_order="zyx"),
        [dict(batch_size=32, lr=0.05), dict(batch_size=3, lr=0.05), dict(batch_size=3, lr=0.05)],
        None,
    ),
}

PAPER = {
    "volume-fusion": ("pctnet", {}, {}, dict(MRI, axis_order="zyx"), dict(batch_size=4), (64, 128, 128)),
    "byol-rot-rec": ("qtunet-t", {}, {}, MRI, dict(batch_size=8), (96, 96, 96)),
    "multi-clustering": (
        "logonet",
        {},
        dict(n_clusterers=80, k_range=(80, 500), crops_per_volume=32),
        MRI,
        dict(batch_size=1),
        (96, 96, 96),
    ),
    "simsiam-iou": ("swinvit2d-c48-simsiam-iou30-60", {}, {}, MRI, dict(batch_size=128), None),
    "dino": ("swinvit2d-c48", {}, {}, MRI, dict(batch_size=64), None),
    "joint-2d3d": (
        "resnet50-deformattn-swav",
        {},
        [dict(n_local=2), {}, {}],
        dict(MRI, intensity={"kind": "none"}, crop_foreground=False, axis_order="zyx"),
        [dict(batch_size=64), dict(batch_size=3), dict(batch_size=3)],
        None,
    ),
}


def _plot(curves: dict[str, list[tuple[int, float]]], path: Path) -> str:
    """Loss curves, one panel per recipe: every step, and the mean ± std of each block of steps."""
    sys.path.insert(0, str(HERE.parent))
    import numpy as np

    from zoo.plots import OKABE_ITO, require_matplotlib

    plt = require_matplotlib()
    n = len(curves)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, pts) in zip(axes.flat, curves.items(), strict=False):
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("pretraining step")
        ax.set_ylabel("pretext loss")
        ax.grid(alpha=0.3)
        if not pts:
            ax.text(0.5, 0.5, "no steps (failed)", ha="center", transform=ax.transAxes)
            continue
        steps, losses = np.array([s for s, _ in pts]), np.array([v for _, v in pts])
        ax.plot(steps, losses, lw=0.8, alpha=0.5, color=OKABE_ITO[4], marker=".", label="every step")
        k = max(len(losses) // 4, 2)  # one run per recipe: the spread shown is within blocks of k steps
        blocks = [slice(b, b + k) for b in range(0, len(losses) - k + 1, k)]
        ax.errorbar(
            [steps[b].mean() for b in blocks], [losses[b].mean() for b in blocks],
            yerr=[losses[b].std() for b in blocks], color=OKABE_ITO[5], marker="o", capsize=3, lw=1.6,
            label=f"mean ± std of {k} steps",
        )  # fmt: skip
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return "matplotlib"


def run(
    method: str, cfg: tuple, steps: int, work: Path, device: str | None, ft_steps: int, task: Path | None
) -> dict:
    import zoo
    from zoo.ssl import PretrainOptions, RunOptions, pretrain
    from zoo.ssl.data import mni152_paths

    name, margs, rargs, prep, settings, ft_roi = cfg
    t0 = time.perf_counter()
    stages = len(rargs) if isinstance(rargs, list) else 1
    per_stage = [max(1, steps // stages)] * stages if stages > 1 else steps
    r = pretrain(
        method,
        name,
        mni152_paths(),
        work / method,
        steps=per_stage,
        options=PretrainOptions(
            model_args=margs,
            recipe_args=rargs,
            preprocessing=prep,
            settings=settings,
            run=RunOptions(device=device, log_every=1, resume=False),
        ),
    )
    seconds = time.perf_counter() - t0
    cfgj = json.loads(r.config.read_text())
    zoo.create(cfgj["model_name"], checkpoint_path=r.checkpoint, **cfgj["model_args"])
    values = [v for _, v in r.losses]
    out = {
        "method": method,
        "model": cfgj["model_name"],
        "model_args": cfgj["model_args"],
        "covers": cfgj["covers"],
        "untrained": cfgj["untrained"],
        "steps": r.steps,
        "seconds": round(seconds, 1),
        "first_loss": values[0],
        "last_loss": values[-1],
        "losses": r.losses,
        "loaded": True,
    }
    if ft_roi is not None and task is not None and ft_steps > 0:
        from zoo.finetune import FinetuneOptions, finetune

        kwargs = {
            k: v for k, v in cfgj["model_args"].items() if k not in ("img_size", "in_chans", "num_classes")
        }
        try:
            ft = finetune(
                cfgj["model_name"],
                task,
                work / f"{method}-finetune",
                FinetuneOptions(
                    checkpoint_path=r.checkpoint,
                    steps=ft_steps,
                    val_every=ft_steps,
                    batch_size=1,
                    roi_size=ft_roi,
                    model_kwargs=kwargs,
                    device=device,
                    progress=False,
                ),
                print_fn=lambda s: None,
            )
            out["finetune"] = {
                "steps": ft.steps,
                "metrics": ft.metrics,
                "seconds": round(ft.seconds, 1),
                "first_loss": ft.losses[0][1],
                "last_loss": ft.losses[-1][1],
            }
        except Exception as e:  # the pretrained checkpoint stands; report why fine-tuning failed
            traceback.print_exc()
            out["finetune"] = {"error": f"{type(e).__name__}: {e}"}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=["small", "paper"], default="small")
    ap.add_argument("--steps", type=int, default=20, help="pretraining steps per recipe")
    ap.add_argument("--finetune-steps", type=int, default=20, help="0 skips fine-tuning")
    ap.add_argument("--only", nargs="+", default=None, help="some methods")
    ap.add_argument("--out", type=Path, default=HERE / "pretrain-smoke")
    ap.add_argument("--work", type=Path, default=None, help="run folders (default: a temporary folder)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--replot", action="store_true", help="redraw loss_curves.png from pretrain_smoke.json")
    a = ap.parse_args(argv)
    if a.replot:
        saved = json.loads((a.out / "pretrain_smoke.json").read_text())["results"]
        _plot({r["method"]: r.get("losses", []) for r in saved}, a.out / "loss_curves.png")
        return 0
    if a.threads:
        torch.set_num_threads(a.threads)
    table = SMALL if a.size == "small" else PAPER
    methods = a.only or list(table)
    work = a.work or Path(tempfile.mkdtemp(prefix="pretrain-smoke-"))
    a.out.mkdir(parents=True, exist_ok=True)
    task = None
    if a.finetune_steps > 0:
        from zoo.datalist import make_mni_task

        task = make_mni_task(work / "mni-task", n_train=2, n_val=1, spacing_mm=2.0)
    results = []
    for m in methods:
        print(f"== {m} ({table[m][0]}, {a.size})", flush=True)
        try:
            res = run(m, table[m], a.steps, work, a.device, a.finetune_steps, task)
        except Exception as e:  # one failing recipe must not hide the others
            traceback.print_exc()
            res = {"method": m, "model": table[m][0], "error": f"{type(e).__name__}: {e}"}
        results.append(res)
        line = (
            (
                f"   loss {res['first_loss']:.4f} → {res['last_loss']:.4f} in {res['steps']} steps, "
                f"{res['seconds']} s; checkpoint covers {res['covers']}"
            )
            if "error" not in res
            else f"   {res['error']}"
        )
        print(line, flush=True)
        if "finetune" in res and "error" in res["finetune"]:
            print(f"   fine-tuning failed: {res['finetune']['error']}", flush=True)
        elif "finetune" in res:
            print(f"   fine-tuned {res['finetune']['steps']} steps: {res['finetune']['metrics']}", flush=True)
    plotted = _plot({r["method"]: r.get("losses", []) for r in results}, a.out / "loss_curves.png")
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "plot": plotted,
    }
    (a.out / "pretrain_smoke.json").write_text(
        json.dumps({"size": a.size, "env": env, "results": results}, indent=1) + "\n"
    )
    rows = [
        "| method | model | covers | steps | loss first → last | s | fine-tune (steps, val Dice) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['method']} | {r['model']} | error: {r['error'][:80]} | | | | |")
            continue
        ft = r.get("finetune")
        if ft and "error" in ft:
            ftxt = f"error: {ft['error'][:60]}"
        else:
            ftxt = f"{ft['steps']}, {ft['metrics'].get('dice_mean', ft['metrics']):.3f}" if ft else "—"
        rows.append(
            f"| {r['method']} | {r['model']} | {r['covers']} | {r['steps']} | "
            f"{r['first_loss']:.4f} → {r['last_loss']:.4f} | {r['seconds']} | {ftxt} |"
        )
    (a.out / "pretrain_smoke.md").write_text(
        f"# Continue-pretraining smoke run ({a.size})\n\n{env}\n\n" + "\n".join(rows) + "\n"
    )
    print("\n".join(rows))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
