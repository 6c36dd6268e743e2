"""Whole-study throughput: ``zoo predict DIR`` vs a loop of single-file predictions vs plain MONAI.

Eight real volumes (nilearn's MNI152 template: at its own 1 mm grid, and resampled onto a CT-like
grid: 512×512×160 at 0.5×0.5×1.25 mm by default; ``--small`` for the half-size variant used on a
loaded machine) go through the same model and the same preprocessing three ways:

* ``study``: :func:`zoo.study.predict_study` (what ``zoo predict NAME -i DIR -o OUT`` runs): a
  DataLoader worker reads and preprocesses the next volume while the model runs, two windows
  per forward (the default, ``zoo.predict_checks.AUTO_SW_BATCH``);
* ``study_sw1``: the same with one window per forward (what prefetching alone gives);
* ``loop``: :func:`zoo.predict.predict_nifti` called once per file (defaults);
* ``monai``: the plain MONAI recipe, LoadImaged → EnsureChannelFirstd → Orientationd → Spacingd →
  NormalizeIntensityd → ``sliding_window_inference`` → inverse of the spatial transforms → argmax.

Each way runs in its own process (fresh, so peak memory is its own), rounds alternate the order,
the label maps are compared voxel by voxel with the MONAI recipe's (a voxel that differs is
reported with the MONAI logits' margin between its two best classes there: batching windows
changes float rounding, so only near-ties may flip), and the load average is recorded next to
each figure. Run: ``python benchmarks/predict_study.py --threads 2 --rounds 2``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results" / "predict_study.json"

SPACING = (2.0, 2.0, 2.0)  # the model's contract: RAS, 2 mm, z-score over nonzero voxels
ROI = (64, 64, 64)
OVERLAP = 0.25
WIDTHS = (8, 16, 32, 64, 128)  # FMUNet narrowed so a CPU study takes minutes, not hours
UNTIMED = [0.0]  # seconds a way spent on the benchmark's own bookkeeping, taken off its time


def make_volumes(folder: Path, small: bool) -> list[Path]:
    """Four volumes at 1 mm (the template, some flipped) and four on a CT-like grid."""
    import nibabel as nib
    import numpy as np
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    from zoo.predict import sample_volume_path

    src = nib.load(sample_volume_path())
    data = np.asarray(src.dataobj, dtype=np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(4):
        d = data if i % 2 == 0 else data[::-1].copy()
        aff = src.affine.copy()
        if i % 2:
            aff = aff @ np.array(
                [[-1, 0, 0, d.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float
            )
        p = folder / f"mni_1mm_{i}.nii.gz"
        nib.save(nib.Nifti1Image(d, aff), p)
        paths.append(p)
    # CT-like: finer in-plane, coarser across slices; 512×512×160 covers the template's head in full.
    target = (0.5, 0.5, 1.25) if not small else (1.0, 1.0, 1.25)
    x = MetaTensor(torch.from_numpy(data)[None], affine=torch.as_tensor(src.affine))
    ct = Spacing(pixdim=target, mode="bilinear")(x)
    arr = ct[0].numpy().astype(np.int16)
    want = (512, 512, 160) if not small else (256, 256, 160)
    out = np.zeros(want, np.int16)
    sl = tuple(slice(0, min(a, b)) for a, b in zip(arr.shape, want, strict=True))
    out[sl] = arr[sl]
    for i in range(4):
        p = folder / f"ctlike_{i}.nii.gz"
        nib.save(nib.Nifti1Image(out if i % 2 == 0 else out[:, ::-1].copy(), ct.affine.numpy()), p)
        paths.append(p)
    return paths


def build_model():
    import torch

    import zoo

    torch.manual_seed(0)
    model = zoo.create("fmunet", num_classes=4, feature_chns=WIDTHS).eval()
    model.pretrained_cfg["preprocessing"] = {
        "orientation": "RAS",
        "spacing_mm": list(SPACING),
        "intensity_transform": {"kind": "zscore", "nonzero": True, "channel_wise": True},
    }
    return model


def run_study(paths: list[Path], out: Path, **kw) -> None:
    from zoo.study import StudySettings, predict_study

    res = predict_study(
        build_model(), paths, out, StudySettings(roi_size=ROI, overlap=OVERLAP, **kw), progress=False
    )
    assert not res.failed, res.failed


def run_study_sw1(paths: list[Path], out: Path) -> None:
    run_study(paths, out, sw_batch_size=1)


def run_loop(paths: list[Path], out: Path) -> None:
    from zoo.predict import PredictSettings, predict_nifti

    model = build_model()
    for p in paths:
        name = p.name if p.name.endswith(".gz") else p.name + ".gz"
        predict_nifti(model, p, out / name, PredictSettings(roi_size=ROI, overlap=OVERLAP), progress=False)


def run_monai(paths: list[Path], out: Path) -> None:
    import nibabel as nib
    import numpy as np
    import torch
    from monai import transforms as T
    from monai.inferers import sliding_window_inference

    model = build_model()
    pre = T.Compose(
        [
            T.LoadImaged("image", image_only=True),
            T.EnsureChannelFirstd("image"),
            T.Orientationd("image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            T.Spacingd("image", pixdim=SPACING, mode="bilinear"),
            T.NormalizeIntensityd("image", nonzero=True, channel_wise=True),
        ]
    )
    out.mkdir(parents=True, exist_ok=True)
    for p in paths:
        d = pre({"image": str(p)})
        x = d["image"]
        with torch.inference_mode():
            logits = sliding_window_inference(
                x.as_tensor()[None], ROI, 1, model, overlap=OVERLAP, mode="gaussian"
            )[0]
        from monai.data import MetaTensor

        d["image"] = MetaTensor(logits, meta=x.meta, applied_operations=x.applied_operations)
        back = pre.inverse(d)["image"]
        logits_back = back.as_tensor()
        labels = logits_back.argmax(0).numpy().astype(np.uint8)
        t0 = time.perf_counter()  # the margin is for the comparison, not part of the recipe: untimed
        top2 = logits_back.topk(2, dim=0).values
        np.save(out / (p.name.split(".")[0] + ".margin.npy"), (top2[0] - top2[1]).numpy())
        UNTIMED[0] += time.perf_counter() - t0
        src = nib.load(p)
        header = src.header.copy()
        header.set_data_dtype(np.uint8)
        name = p.name if p.name.endswith(".gz") else p.name + ".gz"
        nib.save(nib.Nifti1Image(labels, src.affine, header), out / name)


def child(method: str, folder: Path, out: Path, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    paths = sorted(folder.glob("*.nii.gz"))
    start = time.perf_counter()
    ways = {"study": run_study, "study_sw1": run_study_sw1, "loop": run_loop, "monai": run_monai}
    ways[method](paths, out)
    seconds = time.perf_counter() - start - UNTIMED[0]
    print(json.dumps({"method": method, "seconds": seconds, "volumes": len(paths)}))


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for q in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += q.memory_info().rss
    return total


def measure(method: str, folder: Path, out: Path, threads: int) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_WAIT_POLICY": "PASSIVE",
        "OMP_NUM_THREADS": str(threads),
    }
    cmd = [sys.executable, __file__, "--child", method, "--folder", str(folder), "--out", str(out)]
    cmd += ["--threads", str(threads)]
    load_before = os.getloadavg()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.1)

    t = threading.Thread(target=sample)
    t.start()
    stdout, stderr = proc.communicate()
    t.join()
    if proc.returncode:
        raise RuntimeError(f"{method} failed: {stderr[-2000:]}")
    rec = json.loads(stdout.strip().splitlines()[-1])
    rec.update(
        volumes_per_min=60 * rec["volumes"] / rec["seconds"],
        peak_rss_mb=peak[0] / 2**20,
        loadavg_before=load_before[0],
        loadavg_after=os.getloadavg()[0],
    )
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--small", action="store_true", help="CT-like volumes of 256×256×160 (a loaded machine)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, Path(a.folder), Path(a.out), a.threads)
        return

    import nibabel as nib
    import numpy as np

    work = Path(tempfile.mkdtemp(prefix="zoo-study-bench-"))
    folder = work / "scans"
    make_volumes(folder, a.small)
    sizes = {p.name: nib.load(p).shape for p in sorted(folder.glob("*.nii.gz"))}
    runs = []
    methods = ["study", "study_sw1", "loop", "monai"]
    for r in range(a.rounds):
        order = methods[r % len(methods) :] + methods[: r % len(methods)]
        for m in order:
            out = work / f"out_{m}_{r}"
            rec = measure(m, folder, out, a.threads)
            rec["round"] = r
            runs.append(rec)
            print(
                f"round {r} {m:6s} {rec['seconds']:7.1f} s  {rec['volumes_per_min']:6.2f} vol/min  "
                f"peak RSS {rec['peak_rss_mb']:7.0f} MB  load {rec['loadavg_before']:.2f}",
                flush=True,
            )
    identical, agreement = {}, {}
    for m in ("study", "study_sw1", "loop"):
        differ, worst = 0, 0.0
        for name in sizes:
            a_ = np.asarray(nib.load(work / f"out_{m}_0" / name).dataobj)
            b_ = np.asarray(nib.load(work / "out_monai_0" / name).dataobj)
            margin = np.load(work / "out_monai_0" / (name.split(".")[0] + ".margin.npy"))
            bad = a_ != b_
            differ += int(bad.sum())
            worst = max(worst, float(margin[bad].max()) if bad.any() else 0.0)
        total = sum(int(np.prod(v)) for v in sizes.values())
        identical[m] = differ == 0
        agreement[m] = {"voxels_differing": differ, "of": total, "max_monai_margin_where_differing": worst}
    summary = {}
    for m in methods:
        rs = [x for x in runs if x["method"] == m]
        summary[m] = {
            "volumes_per_min_mean": float(np.mean([x["volumes_per_min"] for x in rs])),
            "peak_rss_mb_max": float(max(x["peak_rss_mb"] for x in rs)),
        }
    ratios = {
        f"study/{m}": summary["study"]["volumes_per_min_mean"] / summary[m]["volumes_per_min_mean"]
        for m in ("study_sw1", "loop", "monai")
    }
    per_round = [
        {m: next(x["seconds"] for x in runs if x["method"] == m and x["round"] == r) for m in methods}
        for r in range(a.rounds)
    ]
    result = {
        "threads": a.threads,
        "volumes": {k: list(v) for k, v in sizes.items()},
        "model": f"fmunet feature_chns={WIDTHS}, 4 classes; RAS, {SPACING} mm, z-score nonzero; "
        f"window {ROI}, overlap {OVERLAP}",
        "runs": runs,
        "per_round_seconds": per_round,
        "summary": summary,
        "ratios": ratios,
        "identical_label_maps_vs_monai": identical,
        "label_agreement_vs_monai": agreement,
        "cpu_count": os.cpu_count(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"ratios": ratios, "agreement": agreement, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
