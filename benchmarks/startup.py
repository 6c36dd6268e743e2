"""Start-up cost and install size: what a user waits for before `zoo list` prints, and pays in disk.

    python benchmarks/startup.py                 # timing: zoo list / zoo.create vs import torch
    python benchmarks/startup.py --env           # also: fresh venvs with `pip install .` and `.[all]`

Timing runs each command as a fresh process, alternating them in every round (so a change
in machine load hits all of them alike), and reports the median wall time of the rounds and the
ratios to `python -c "import torch"`, with the load average before and after. Targets (issue 16):
`zoo list` ≤ 1.5×, `zoo.create("qtunet-t")` ≤ 2× the torch import; (issue 27) `zoo --version`
≤ 1/3 of it (it imports no torch).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

COMMANDS = {
    "import torch": [sys.executable, "-c", "import torch"],
    "zoo --version": [sys.executable, "-m", "zoo", "--version"],
    "zoo list": [sys.executable, "-m", "zoo", "list"],
    'zoo.create("qtunet-t")': [sys.executable, "-c", "import zoo; zoo.create('qtunet-t')"],
}


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"


def time_commands(repeats: int) -> dict[str, list[float]]:
    """Wall seconds of each command, ``repeats`` rounds, alternating within each round."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    times: dict[str, list[float]] = {k: [] for k in COMMANDS}
    for _ in range(repeats):
        for label, cmd in COMMANDS.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
            times[label].append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7, help="rounds of the commands")
    ap.add_argument("--env", action="store_true", help="also measure fresh venvs (core and [all])")
    a = ap.parse_args()

    lines: list[str] = []

    def emit(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    load0 = _load()
    times = time_commands(a.repeats)
    load1 = _load()
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["import torch"]
    emit(f"Load average before / after the timing: {load0} / {load1}; {a.repeats} rounds, 1 thread.")
    emit()
    fastest = min(times["import torch"])
    emit("| command | median s | min s | × import torch (median) | × import torch (min) |")
    emit("|---|---|---|---|---|")
    for k, v in times.items():
        emit(f"| `{k}` | {med[k]:.2f} | {min(v):.2f} | {med[k] / base:.2f} | {min(v) / fastest:.2f} |")

    if a.env:
        from core_install import clean_copy, make_venv  # this folder: the same venvs as the core check

        with tempfile.TemporaryDirectory(prefix="medzoo-venv-") as tmp:
            emit()
            emit(f"Fresh venvs (`python -m venv`), load average before the installs: {_load()}.")
            emit()
            emit("| install | packages added | site-packages MB | install s |")
            emit("|---|---|---|---|")
            source = clean_copy(Path(tmp) / "src")
            for spec in (".", ".[all]"):
                _, r = make_venv(spec, Path(tmp) / "venv", source)
                shutil.rmtree(Path(tmp) / "venv", ignore_errors=True)
                cells = [f"`pip install '{r['spec']}'`", r["packages"], f"{r['mb']:.0f}"]
                cells.append(f"{r['install_s']:.0f}")
                emit("| " + " | ".join(map(str, cells)) + " |")
            emit()
            emit(f"Load average after the installs: {_load()}.")
    # run_all.py appends this file to RESULTS.md, so a regenerated RESULTS.md keeps it.
    out = REPO / "benchmarks" / "results" / "startup.md"
    out.write_text(
        "## Start-up and install size\n\n"
        + f"One run of `python benchmarks/startup.py{' --env' if a.env else ''}`"
        + (": the timing and the fresh venvs together" if a.env else "")
        + ". The core venv's build/predict checks: `benchmarks/core_install.py`.\n\n"
        + "\n".join(lines)
        + "\n"
    )


if __name__ == "__main__":
    main()
