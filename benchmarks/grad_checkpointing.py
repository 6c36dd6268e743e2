"""Peak memory of one training step with and without gradient checkpointing, per model (issue 27).

One forward + backward at batch 1 on the CPU, in train mode, for each model at its registered
width; ``model.set_grad_checkpointing()`` recomputes the encoder's blocks in the backward pass.
Each measurement runs in a fresh subprocess; the figure is the rise of the resident set during
the step above its size just before it (sampled every millisecond), i.e. the working memory
of the step (activations kept for backward, gradients, temporaries). The step's wall time
(shared machine: indicative only) comes with it.

Usage:
    python benchmarks/grad_checkpointing.py                       # default models, 96³
    python benchmarks/grad_checkpointing.py --models qtunet-t --size 64 --markdown out.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# One model per family; the 2D family at its 2D size, ResNet50-DeformAttn at its (slices, C, H, W).
DEFAULT_MODELS = ("qtunet-t", "ulkanet", "pctnet", "resnet50-deformattn", "swinunetr2d-c48")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Peak:
    """Highest resident set size seen by a 1 ms sampling thread while in the ``with`` block."""

    def __enter__(self) -> _Peak:
        self.peak, self._stop = _rss(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _input_shape(name: str, size: int) -> tuple[tuple[int, ...], dict]:
    """The batch-1 input and the model overrides for a cube of side ``size`` (3D models)."""
    import zoo

    spec = zoo.get_spec(name)
    c, *space = spec.input_size
    if name.startswith("resnet50-deformattn"):
        return (1, c, *space), {}  # (slices, channels, H, W): its own input, not a cube
    if len(space) == 2:
        return (1, c, *space), {}  # the 2D family at its 2D size
    overrides = {"img_size": (size,) * 3} if "img_size" in spec.model_args else {}
    return (1, c, size, size, size), overrides


def child(name: str, checkpointing: bool, size: int, threads: int) -> dict:
    import torch

    import zoo

    torch.set_num_threads(threads)
    shape, overrides = _input_shape(name, size)
    model = zoo.create(name, **overrides).train()
    model.set_grad_checkpointing(checkpointing)
    torch.manual_seed(0)
    x = torch.randn(shape)
    before = _rss()
    t0 = time.perf_counter()
    with _Peak() as peak:
        out = model(x)
        out = out[0] if isinstance(out, list | tuple) else out
        out.float().square().mean().backward()
    seconds = time.perf_counter() - t0
    return {
        "model": name,
        "checkpointing": checkpointing,
        "input": list(shape),
        "rise_mib": (peak.peak - before) / 2**20,
        "seconds": seconds,
    }


def run(models: list[str], size: int, threads: int) -> list[dict]:
    rows = []
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for name in models:
        for ckpt in (False, True):  # one at a time: each step is CPU- and memory-heavy
            cmd = [sys.executable, __file__, "--child", name, "--size", str(size), "--threads", str(threads)]
            cmd += ["--checkpointing"] if ckpt else []
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if res.returncode:
                raise RuntimeError(f"{name} (checkpointing={ckpt}) failed:\n{res.stderr[-2000:]}")
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict], threads: int) -> str:
    by = {(r["model"], r["checkpointing"]): r for r in rows}
    lines = [
        f"| model | input (batch 1) | step RSS rise, plain (MiB) | with checkpointing (MiB) | saving | "
        f"step time plain → checkpointed (s, {threads} threads) |",
        "|---|---|---:|---:|---:|---|",
    ]
    for name in dict.fromkeys(r["model"] for r in rows):
        a, b = by[(name, False)], by[(name, True)]
        saving = 1 - b["rise_mib"] / a["rise_mib"]
        shape = "×".join(map(str, a["input"][1:]))
        lines.append(
            f"| {name} | {shape} | {a['rise_mib']:.0f} | {b['rise_mib']:.0f} | {saving:.0%} | "
            f"{a['seconds']:.1f} → {b['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    ap.add_argument("--size", type=int, default=96, help="cube side of the 3D models' input")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--markdown", type=Path, help="write the table here")
    ap.add_argument("--json", type=Path, help="write the raw rows here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.checkpointing, args.size, args.threads)))
        return
    rows = run(args.models, args.size, args.threads)
    table = markdown(rows, args.threads)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
