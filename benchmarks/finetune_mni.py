"""What self-supervised pretraining buys on a small real MRI task: MNI152 → grey/white matter.

The comparison the papers make, at a size a 2-core machine runs in about 20 minutes:

1. **Pretraining** with the family's own recipe (MIS-FM's Volume Fusion for FMUNet, through
   ``zoo.ssl.pretrain``, the code path of ``zoo pretrain``) on *unlabelled* MNI152-derived
   volumes: nilearn's MNI152 2009a T1 resampled to ``--spacing`` mm, each volume warped by its
   own random elastic + affine deformation and given its own intensity change (gain and gamma).
2. **Fine-tuning** (``zoo.finetune.finetune``, the code path of ``zoo finetune``) on 1, 2 and 4
   *labelled* volumes (other deformations), once from the pretrained checkpoint and once from
   random initialisation; the same steps, crops, learning rate and seeds for both. Validation
   Dice (grey and white matter, background excluded) on 2 held-out volumes, by sliding window.

Writes ``benchmarks/finetune_mni.json`` (every run, and the command), ``finetune_mni.md`` (the
mean ± std table) and ``finetune_mni.png`` (the plot, matplotlib; ``--replot`` redraws it from the
JSON). Usage::

    python benchmarks/finetune_mni.py --write                     # ≈ 20 min on 2 busy cores
    python benchmarks/finetune_mni.py --ft-steps 20 --pt-steps 20 --seeds 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

MODEL = "fmunet"
WIDTHS = {"feature_chns": (8, 16, 32, 64, 128)}
LABELLED = (1, 2, 4)


def unlabelled_volumes(work: Path, n: int, spacing: float, seed: int) -> list[Path]:
    """``n`` MNI152 volumes, each warped and given its own gain and gamma; their labels are discarded."""
    import nibabel as nib
    import numpy as np

    from zoo.datalist import make_mni_task

    # Seeds far from the labelled set's: no unlabelled volume repeats a labelled deformation.
    datalist = make_mni_task(work / "unlabelled", n_train=n, n_val=0, spacing_mm=spacing, seed=seed + 5000)
    rng = np.random.default_rng(seed)
    paths = []
    for entry in json.loads(datalist.read_text())["training"]:
        path = datalist.parent / entry["image"]
        img = nib.load(str(path))
        data = np.clip(np.asarray(img.dataobj, dtype=np.float32), 0, None)
        gain, gamma = rng.uniform(0.7, 1.3), rng.uniform(0.7, 1.5)
        out = work / "unlabelled" / f"ssl_{len(paths):03d}.nii.gz"
        nib.save(nib.Nifti1Image((gain * data**gamma).astype(np.float32), img.affine), str(out))
        paths.append(out)
    return paths


def pretrain(paths: list[Path], out: Path, args: argparse.Namespace) -> dict:
    from zoo.ssl import PretrainOptions, RunOptions
    from zoo.ssl import pretrain as run

    started = time.perf_counter()
    options = PretrainOptions(
        model_args=WIDTHS, recipe_args=dict(roi=(32, 32, 32), size_min=(4, 4, 4), size_max=(16, 16, 16)),
        preprocessing=dict(spacing_mm=None, intensity={"kind": "zscore_nonzero"}, axis_order="xyz"),
        settings=dict(batch_size=2, lr=args.pt_lr), run=RunOptions(seed=0, progress=not args.quiet),
    )  # fmt: skip
    r = run("volume-fusion", MODEL, [str(p) for p in paths], out, args.pt_steps, options)
    losses = [v for _, v in r.losses]
    k = max(len(losses) // 10, 1)
    return {
        "steps": r.steps,
        "seconds": time.perf_counter() - started,
        "loss_first": sum(losses[:k]) / k,
        "loss_last": sum(losses[-k:]) / k,
    }


def finetune_once(datalist: Path, out: Path, init: Path | None, seed: int, args: argparse.Namespace) -> dict:
    from zoo.finetune import FinetuneOptions, finetune

    options = FinetuneOptions(
        checkpoint_path=init, preset="default", steps=args.ft_steps, lr=args.ft_lr, batch_size=1,
        num_samples=2, roi_size=(32, 32, 32), intensity="zscore-nonzero", val_every=args.ft_steps, seed=seed,
        progress=False, model_kwargs=None if init else WIDTHS,
    )  # fmt: skip
    r = finetune(MODEL, datalist, out, options, print_fn=lambda _m: None)
    m = r.metrics
    return {"dice_gm": m["dice_1"], "dice_wm": m["dice_2"], "dice_mean": m["dice_mean"], "seconds": r.seconds,
            "init_sha256": (r.init or {}).get("sha256")}  # fmt: skip


def subset(datalist: Path, k: int, out: Path) -> Path:
    """The datalist with only its first ``k`` training cases (absolute paths)."""
    dl = json.loads(datalist.read_text())
    base = datalist.parent
    absolute = lambda e: {key: str(base / v) for key, v in e.items()}  # noqa: E731
    dl["training"] = [absolute(e) for e in dl["training"][:k]]
    dl["validation"] = [absolute(e) for e in dl["validation"]]
    out.write_text(json.dumps(dl, indent=1))
    return out


def loadavg() -> list[str]:
    """The 1, 5 and 15 minute load averages (empty where /proc is absent)."""
    path = Path("/proc/loadavg")
    return path.read_text().split()[:3] if path.exists() else []


def plot(summary: dict, path: Path) -> None:
    """Mean Dice ± std over seeds against labelled volumes, pretrained vs random initialisation."""
    from zoo.plots import OKABE_ITO, require_matplotlib

    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(6, 4))
    styles = {"pretrained": (OKABE_ITO[5], "o", -0.04), "random": (OKABE_ITO[4], "s", 0.04)}
    for name, runs in summary.items():
        colour, marker, dx = styles.get(name, ("black", "^", 0.0))
        ks = [k for k in LABELLED if str(k) in runs]
        ax.errorbar(
            [k + dx for k in ks],  # side by side, so that the error bars do not hide each other
            [runs[str(k)]["mean"] for k in ks],
            yerr=[runs[str(k)]["std"] for k in ks],
            color=colour, marker=marker, capsize=4, lw=1.8,
            label=f"{name} init (n = {runs[str(ks[0])]['n']} seeds)",
        )  # fmt: skip
    ax.set_xticks(list(LABELLED))
    ax.set_xlabel("labelled training volumes")
    ax.set_ylabel("validation mean Dice (grey + white matter)")
    ax.set_title("fmunet on the MNI152 task: mean ± std over seeds", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--spacing", type=float, default=4.0)
    p.add_argument("--unlabelled", type=int, default=8, help="unlabelled volumes for pretraining")
    p.add_argument("--pt-steps", type=int, default=200, help="pretraining steps")
    p.add_argument("--pt-lr", type=float, default=3e-3)
    p.add_argument("--ft-steps", type=int, default=60, help="fine-tuning steps (every run)")
    p.add_argument("--ft-lr", type=float, default=3e-3)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--work", default=None, help="folder for the data and runs (default: a temporary one)")
    p.add_argument("--write", action="store_true", help="write finetune_mni.{json,md,png} in benchmarks/")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument(
        "--replot", action="store_true", help="redraw finetune_mni.png from finetune_mni.json only"
    )
    args = p.parse_args()
    if args.replot:
        plot(json.loads((HERE / "finetune_mni.json").read_text())["summary"], HERE / "finetune_mni.png")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    from zoo.datalist import make_mni_task

    # The command as others would rerun it: no --write, and no local --work folder in the record.
    argv, skip = [], False
    for a in sys.argv[1:]:
        if not skip and a not in ("--write", "--work") and not a.startswith("--work="):
            argv.append(a)
        skip = a == "--work"
    command = ("python benchmarks/finetune_mni.py " + shlex.join(argv)).strip()
    work = Path(args.work or tempfile.mkdtemp(prefix="zoo-finetune-mni-"))
    started = time.perf_counter()
    load_start = loadavg()
    datalist = make_mni_task(work / "labelled", max(LABELLED), 2, args.spacing, threshold=0.5, seed=0)
    ssl = pretrain(unlabelled_volumes(work, args.unlabelled, args.spacing, 0), work / "pretrain", args)
    print(f"pretraining: {ssl}", flush=True)
    runs = []
    for k in LABELLED:
        dl = subset(datalist, k, work / f"datalist-{k}.json")
        for seed in range(args.seeds):
            for name, init in (("pretrained", work / "pretrain"), ("random", None)):
                res = finetune_once(dl, work / f"ft-{name}-{k}-{seed}", init, seed, args)
                runs.append({"init": name, "labelled": k, "seed": seed, **res})
                print(f"{name:10s} k={k} seed={seed}: Dice {res['dice_mean']:.3f} ({res['seconds']:.0f} s)",
                      flush=True)  # fmt: skip
    total = time.perf_counter() - started
    record, text = report(runs, ssl, args, command, total, load_start, loadavg())
    print(text)
    if args.write:
        (HERE / "finetune_mni.json").write_text(json.dumps(record, indent=1) + "\n")
        (HERE / "finetune_mni.md").write_text(text + "\n")
        plot(record["summary"], HERE / "finetune_mni.png")
    return 0


def verdict(summary: dict) -> str:
    """One sentence on the outcome: which differences exceed the spread over seeds."""
    parts, beyond = [], 0
    for k in LABELLED:
        pre, rnd = summary["pretrained"][str(k)], summary["random"][str(k)]
        diff, spread = pre["mean"] - rnd["mean"], max(pre["std"], rnd["std"])
        beyond += abs(diff) > spread
        parts.append(f"{diff:+.3f} with {k} (seed spread ±{spread:.3f})")
    head = (
        "Outcome: no difference beyond the spread over seeds"
        if not beyond
        else f"Outcome: {beyond} of {len(LABELLED)} differences exceed the spread over seeds"
    )
    return f"{head}: pretrained − random = {', '.join(parts)} labelled volume(s)."


def report(
    runs: list[dict], ssl: dict, args: argparse.Namespace, command: str, total: float, load_start, load_end
) -> tuple[dict, str]:
    """The record (``finetune_mni.json``) and the Markdown of a finished benchmark."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name in ("pretrained", "random"):
        summary[name] = {}
        for k in LABELLED:
            vals = [r["dice_mean"] for r in runs if r["init"] == name and r["labelled"] == k]
            summary[name][str(k)] = {
                "mean": statistics.fmean(vals),
                "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                "n": len(vals),
            }
    record = {
        "task": f"MNI152 2009a T1 at {args.spacing:g} mm → grey/white matter (zoo.finetune.make_mni_task)",
        "model": MODEL,
        "model_args": {k: list(v) for k, v in WIDTHS.items()},
        "pretraining": {
            "method": "volume-fusion",
            "unlabelled_volumes": args.unlabelled,
            "steps": args.pt_steps,
            "lr": args.pt_lr,
            **ssl,
        },  # fmt: skip
        "finetune": {
            "preset": "default",
            "steps": args.ft_steps,
            "lr": args.ft_lr,
            "crop": [32, 32, 32],
            "batch": "1 case × 2 pos/neg crops",
            "intensity": "zscore-nonzero",
            "validation_volumes": 2,
        },  # fmt: skip
        "command": command,
        "summary": summary,
        "runs": runs,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "loadavg": {"start": load_start, "end": load_end},
        "minutes": total / 60,
    }
    rows = [
        f"| {k} | {summary['pretrained'][str(k)]['mean']:.3f} ± {summary['pretrained'][str(k)]['std']:.3f} | "
        f"{summary['random'][str(k)]['mean']:.3f} ± {summary['random'][str(k)]['std']:.3f} | "
        f"{summary['pretrained'][str(k)]['mean'] - summary['random'][str(k)]['mean']:+.3f} |"
        for k in LABELLED
    ]
    text = "\n".join(
        [
            "# What pretraining buys: MNI152 grey/white matter, pretrained vs random initialisation",
            "",
            f"Produced by `{command} --write` in {total / 60:.1f} min; {record['machine']}; load average "
            f"{' '.join(load_start)} at the start, {' '.join(load_end)} at the end (the machine was shared).",
            "",
            f"- Model: FMUNet (the MIS-FM U-Net) at widths 8–128 (`model_kwargs={WIDTHS}`).",
            "- Pretraining: Volume Fusion (MIS-FM's own recipe, `zoo pretrain volume-fusion`), "
            f"{args.pt_steps} steps, lr {args.pt_lr:g}, batch 2 of 32³ crops, on {args.unlabelled} "
            f"unlabelled volumes: the MNI152 T1 at {args.spacing:g} mm, each elastically + affinely warped "
            f"and given its own gain (0.7–1.3) and gamma (0.7–1.5). Loss {ssl['loss_first']:.3f} → "
            f"{ssl['loss_last']:.3f} "
            "(first → last tenth).",
            f"- Fine-tuning: `zoo finetune` preset `default` (AdamW, warm-up + cosine, Dice + CE), "
            f"{args.ft_steps} steps, lr {args.ft_lr:g}, 1 case × 2 pos/neg 32³ crops per step, z-score over "
            "nonzero voxels; from the pretrained run folder (`--checkpoint`) or from random initialisation, "
            f"with the same seeds (0–{args.seeds - 1}).",
            "- Validation: mean Dice of grey and white matter on 2 held-out warped volumes (sliding window, "
            "overlap 0.5).",
            "",
            "| labelled volumes | pretrained (mean ± std) | random init (mean ± std) | difference |",
            "|---|---|---|---|",
            *rows,
            "",
            verdict(summary),
            "",
            "![Dice against labelled volumes](finetune_mni.png)",
            "",
            "Every run (Dice per class, seconds) is in `finetune_mni.json`. This is one small model, a few "
            "minutes of pretraining and one synthetic-deformation task: it measures whether the code path "
            "transfers something, not what the published weights are worth.",
        ]
    )
    return record, text


if __name__ == "__main__":
    sys.exit(main())
