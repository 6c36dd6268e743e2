"""`zoo predict FILE.onnx` against `zoo predict NAME` on the same volume, alternating.

Both commands run as fresh processes on nilearn's MNI152 template (the sample volume medzoo
ships through its demo extra) with the same weights, settings and thread count, one after the
other in every round (order alternating), so both see the same machine load. The weights are a
seeded random initialisation saved as a checkpoint (no network); the ONNX file is exported
from that checkpoint by `zoo.export.to_onnx`, parity checked. The label maps of the two paths
are compared voxel by voxel.

Usage:
    OMP_WAIT_POLICY=PASSIVE python benchmarks/onnx_predict.py [--model qtunet-t] [--rounds 3]

Writes ``benchmarks/results/onnx_predict.md`` (included in RESULTS.md by ``run_all.py``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
OUT = HERE / "results" / "onnx_predict.md"


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qtunet-t")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--spacing", type=float, default=2.0, help="isotropic resampling (mm) for both paths")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)

    import nibabel as nib
    import numpy as np
    import torch
    from safetensors.torch import save_file

    import zoo
    from zoo.export import ExportSettings, to_onnx
    from zoo.predict import sample_volume_path

    mni = sample_volume_path()
    with tempfile.TemporaryDirectory(prefix="zoo-onnx-predict-") as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        ckpt = tmp / "weights.safetensors"
        save_file(zoo.create(args.model).state_dict(), str(ckpt))
        model = zoo.create(args.model, checkpoint_path=ckpt)
        onnx_path = tmp / f"{args.model}.onnx"
        ex = to_onnx(model, onnx_path, ExportSettings(batch_sizes=(1,)), verbose=False)
        common = [
            "-i",
            str(mni),
            "-q",
            "--spacing",
            *[str(args.spacing)] * 3,
            "--intensity",
            "zscore_nonzero",
        ]
        cmds = {
            "torch": [args.model, "--checkpoint", str(ckpt), "-o", str(tmp / "seg_torch.nii.gz")],
            "onnx": [str(onnx_path), "-o", str(tmp / "seg_onnx.nii.gz")],
        }
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(args.threads)}
        times: dict[str, list[float]] = {k: [] for k in cmds}
        load_start = _load()
        for r in range(args.rounds):
            for key in list(cmds)[r % 2 :] + list(cmds)[: r % 2]:
                for stale in tmp.glob(f"seg_{key}.nii.gz"):
                    stale.unlink()
                t0 = time.perf_counter()
                proc = subprocess.run(
                    [sys.executable, "-m", "zoo.cli", "predict", *cmds[key], *common],
                    capture_output=True,
                    text=True,
                    env=env,
                    cwd=HERE.parent,
                )
                times[key].append(time.perf_counter() - t0)
                if proc.returncode != 0:
                    print(proc.stderr[-2000:], file=sys.stderr)
                    return 1
                print(f"round {r + 1} {key}: {times[key][-1]:.1f} s", file=sys.stderr)
        load_end = _load()
        a = np.asarray(nib.load(tmp / "seg_torch.nii.gz").dataobj)
        b = np.asarray(nib.load(tmp / "seg_onnx.nii.gz").dataobj)
        same = float((a == b).mean())
        labels = len(np.unique(a))
    med = {k: statistics.median(v) for k, v in times.items()}
    shown = {"torch": f"{args.model} --checkpoint …", "onnx": "FILE.onnx"}
    lines = [
        "## `zoo predict FILE.onnx` vs `zoo predict NAME`",
        "",
        f"From `benchmarks/onnx_predict.py`: {args.model} (seeded random weights as a checkpoint; the ONNX "
        f"file exported from it, max rel diff {ex.max_rel:.1e}), nilearn's MNI152 T1 template resampled to "
        f"{args.spacing:g} mm, z-score intensity, sliding window at the model's ROI; each command a fresh "
        f"process (start-up, reading, preprocessing, windows, writing), {args.threads} thread(s), "
        f"`OMP_WAIT_POLICY=PASSIVE`, alternating, {args.rounds} rounds.",
        "",
        "| command | median s | runs s |",
        "|---|---|---|",
        *[
            f"| `zoo predict {shown[k]}` | {med[k]:.1f} | {', '.join(f'{t:.1f}' for t in times[k])} |"
            for k in cmds
        ],
        "",
        f"ONNX / PyTorch: **{med['onnx'] / med['torch']:.2f}×** (target ≤ 1.2×). Label maps: "
        f"{same * 100:.3f} % of voxels equal ({labels} labels). Load average before / after: "
        f"{load_start} / {load_end}.",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
