"""The README's picture of a real result, and the cost of a fine-tune step on CPU.

fmunet at reduced widths (8…128 channels) is fine-tuned from random weights for ``--steps`` steps
on the MNI152 grey/white-matter task (``zoo.datalist.make_mni_task``: 2 training and 1 validation
volume at 4 mm, each warped differently), then segments the demo volume (the MNI152 template
that ``zoo demo`` uses, resampled to the run's 4 mm). Writes ``docs/finetuned_preview.png`` (the
segmentation), ``docs/finetune_loss.png`` and ``docs/finetune_val_dice.png`` (the run's curves)
and ``benchmarks/readme_result.json`` (Dice, the median step time, wall times, the load). Usage::

    python benchmarks/readme_result.py            # ≈ 3 min on 2 busy CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
DOCS = HERE.parent / "docs"
WIDTHS = {"feature_chns": [8, 16, 32, 64, 128]}


def loadavg() -> list[str]:
    path = Path("/proc/loadavg")
    return path.read_text().split()[:3] if path.exists() else []


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--work", default=None, help="folder for the data and the run (default: a temporary one)")
    args = p.parse_args()
    from zoo.cli import main as zoo
    from zoo.datalist import make_mni_task
    from zoo.predict import sample_volume_path
    from zoo.train import read_log

    work = Path(args.work or tempfile.mkdtemp(prefix="zoo-readme-result-"))
    load_start, started = loadavg(), time.perf_counter()
    task = make_mni_task(work / "mni", n_train=2, n_val=1, spacing_mm=4.0)
    run = work / "run"
    argv = ["finetune", "fmunet", "--data", str(task), "--out", str(run), "--steps", str(args.steps),
            "--preset", "default", "--lr", "3e-3", "--roi", "32", "32", "32", "--batch-size", "1",
            "--num-samples", "2", "--spacing", "4", "4", "4", "--intensity", "zscore-nonzero",
            "--val-every", str(max(args.steps // 3, 1)), "--model-kwargs", json.dumps(WIDTHS),
            "-q"]  # fmt: skip
    t0 = time.perf_counter()
    assert zoo(argv) == 0
    finetune_s = time.perf_counter() - t0
    seg = work / "seg" / "mni152.nii.gz"
    t0 = time.perf_counter()
    assert zoo(["predict", str(run), "-i", str(sample_volume_path()), "-o", str(seg), "--preview", "-q"]) == 0
    predict_s = time.perf_counter() - t0
    log = read_log(run)
    steps = [e["seconds"] for e in log if "seconds" in e]
    vals = [e["val"] for e in log if "val" in e]
    DOCS.mkdir(exist_ok=True)
    preview = sorted(seg.parent.glob("*.png"))
    shutil.copyfile(preview[0], DOCS / "finetuned_preview.png")
    shutil.copyfile(run / "loss.png", DOCS / "finetune_loss.png")
    shutil.copyfile(run / "val_dice.png", DOCS / "finetune_val_dice.png")
    record = {
        "command": "python benchmarks/readme_result.py"
        + (f" --steps {args.steps}" if args.steps != 60 else ""),
        "finetune_argv": [a if not a.startswith(str(work)) else Path(a).name for a in argv],
        "steps": len(steps),
        "step_seconds_median": round(statistics.median(steps), 3),
        "step_seconds_min": round(min(steps), 3),
        "finetune_seconds": round(finetune_s, 1),
        "predict_seconds": round(predict_s, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "final_validation": {k: round(v, 4) for k, v in vals[-1].items()},
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "loadavg": {"start": load_start, "end": loadavg()},
    }
    (HERE / "readme_result.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
