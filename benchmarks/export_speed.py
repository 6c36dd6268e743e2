"""Export time with the exporter's full optimiser against constant folding alone, same rounds.

Each model is exported by :func:`zoo.export.to_onnx` once per round with ``graph_passes="exporter"``
(the dynamo exporter's optimiser, rewrite rules included: what medzoo did before) and once with
``graph_passes="fold"`` (rewrite rules off, onnxscript's constant folding and unused-node removal),
in alternating order, each in a fresh process so neither warms the other's caches. Both files are
parity checked against PyTorch by onnxruntime (≤ 1e-4 of the output scale); the row keeps the
median wall time of the whole ``to_onnx`` call, the trace-to-file time, the file size and the
load average at the start and end.

Usage:
    OMP_WAIT_POLICY=PASSIVE python benchmarks/export_speed.py qtunet-t ulkanet logonet \
        [--reduced] [--rounds 1]

Writes ``benchmarks/results/export_speed.md`` (and prints the table).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
OUT = HERE / "results" / "export_speed.md"

_CHILD = r"""
import json, sys, time, os, torch
from zoo._registry import registered
from zoo.export import ExportSettings, reduced_config, to_onnx
import zoo
name, passes, reduced, path = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
spec = registered(name)
overrides, shape = reduced_config(spec) if reduced else ({}, None)
torch.manual_seed(0)
model = zoo.create(name, **overrides)
start = time.perf_counter()
settings = ExportSettings(input_shape=shape, batch_sizes=(1,), graph_passes=passes)
r = to_onnx(model, path, settings, verbose=False)
total = time.perf_counter() - start
data = os.path.getsize(path) + (os.path.getsize(path + ".data") if os.path.exists(path + ".data") else 0)
print(json.dumps(dict(total=total, export=r.export_seconds, max_rel=r.max_rel, bytes=data,
                      shape=list(r.input_shapes[0]), exporter=r.exporter)))
"""


def _load() -> float:
    return os.getloadavg()[0]


def _one(name: str, passes: str, reduced: bool, tmp: Path) -> dict:
    path = tmp / f"{name}-{passes}.onnx"
    env = dict(os.environ, PYTHONPATH=str(HERE.parent), OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, name, passes, "1" if reduced else "0", str(path)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+")
    p.add_argument("--reduced", action="store_true", help="export at zoo.export.reduced_config's size")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name in a.models:
            load0 = _load()
            runs: dict[str, list[dict]] = {"exporter": [], "fold": []}
            for k in range(a.rounds):
                order = ("exporter", "fold") if k % 2 == 0 else ("fold", "exporter")
                for passes in order:
                    runs[passes].append(_one(name, passes, a.reduced, tmp))
                    print(f"{name} {passes}: {runs[passes][-1]}", file=sys.stderr, flush=True)
            rows.append((name, runs, load0, _load()))
    lines = [
        "| model | input | to_onnx s, exporter optimiser | to_onnx s, fold only | ratio "
        "| trace→file s (before → after) | file MB (before → after) | max rel diff (before / after) "
        "| load start → end |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs, l0, l1 in rows:
        old, new = runs["exporter"], runs["fold"]
        bad = [r["error"] for r in old + new if "error" in r]
        if bad:
            lines.append(f"| {name} | — | failed: {bad[0]} | | | | | | {l0:.2f} → {l1:.2f} |")
            continue
        med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
        t_old, t_new = med(old, "total"), med(new, "total")
        rel_old, rel_new = max(r["max_rel"] for r in old), max(r["max_rel"] for r in new)
        shape = "1×" + "×".join(map(str, old[0]["shape"]))
        lines.append(
            f"| {name} | {shape} | {t_old:.1f} | {t_new:.1f} | {t_new / t_old:.2f} | "
            f"{med(old, 'export'):.1f} → {med(new, 'export'):.1f} | "
            f"{med(old, 'bytes') / 1e6:.1f} → {med(new, 'bytes') / 1e6:.1f} | "
            f"{rel_old:.1e} / {rel_new:.1e} | {l0:.2f} → {l1:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        f"Export time, {a.rounds} round(s), {'reduced' if a.reduced else 'registered'} size, "
        f"{os.cpu_count()} cores, OMP_WAIT_POLICY=PASSIVE (benchmarks/export_speed.py)\n\n" + text
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
