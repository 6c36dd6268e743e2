"""How close zoo models come to this machine's compute peak, as ratios measured in one run.

Efficiency = model FLOPs ÷ (median forward latency × fp32 matmul peak). The peak is measured
in the same process as the model, with a 2048² fp32 matmul on the same threads, and it is
re-sampled after every timed forward so that both see the same contention on a shared
machine. FLOPs are counted once per model with ``torch.utils.flop_counter.FlopCounterMode``
on the meta device (``zoo.bench.count_flops``: convolutions, linear layers and attention
matmuls; element-wise work is free), so every mode divides the same numerator.

Each model runs in a fresh subprocess so that peak resident memory is its own. ``mem_rise`` is
the rise of the resident set during a timed (warm) forward above its size just before it
(sampled every millisecond), i.e. the working memory of one forward; ``mem_first`` is the same
for the first forward, which also builds whatever the model caches (masks, indices).

The children run with ``OMP_WAIT_POLICY=PASSIVE`` unless told otherwise (``--omp-wait-policy``).
On a machine whose cores are oversubscribed, OpenMP's default spin-waiting makes every parallel
region wait for a descheduled peer thread, and 2-thread latencies then measure the scheduler
(several times the 1-thread latency) rather than the code. The setting applies to the matmul
peak as much as to the model, and it is recorded with each result.

Modes:
    eager    fp32, ``torch.inference_mode`` (the baseline).
    bf16     ``zoo.fast.enable(model, bf16=True)``: bf16 autocast (CPU needs AVX-512 BF16/AMX).
    compile  ``zoo.fast.enable(model, compile=True)``: ``torch.compile`` (inductor), fp32.
    bf16+compile  both.

bf16 and compile also report their deviation from the fp32 eager output of the same model
and input (max |Δ| / max |fp32|, and the relative L2 error).

Usage:
    python benchmarks/efficiency.py                         # default models, eager
    python benchmarks/efficiency.py --modes eager bf16 compile --models qtunet-t pctnet
    python benchmarks/efficiency.py --src /path/to/old/checkout --label before
    python benchmarks/efficiency.py --baseline-src /path/to/old/checkout   # before/after pairs
    python benchmarks/efficiency.py --json out.json --markdown out.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]

DEFAULT_MODELS = (
    "qtunet-t",
    "vtunet-t",
    "pctnet",
    "fmunet",
    "resnet50-deformattn",
    "ulkanet",
    "logonet",
)
TARGETS = {  # issue 9: fp32 eager efficiency per family
    "qtunet": 0.15,
    "pctnet": 0.33,
    "logonet": 0.25,
    "deformattn": 0.45,
}
_MIB = 1024 * 1024
_PEAK_N = 2048


# ------------------------------------------------------------------------------ measuring


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _RSSPeak:
    """Highest resident set seen every millisecond while the block runs."""

    def __enter__(self) -> _RSSPeak:
        self.peak = _rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss())


def _matmul_peak(a, b, reps: int = 3) -> float:
    """Best FLOP/s of ``reps`` fp32 2048² matmuls (best: the machine's peak at this moment)."""
    import torch

    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * _PEAK_N**3 / best


def _flatten(out: Any) -> list:
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flatten(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flatten(o)]
    return []


def _deviation(ref: Any, out: Any) -> dict[str, float]:
    refs, outs = _flatten(ref), _flatten(out)
    max_rel, l2 = 0.0, 0.0
    for r, o in zip(refs, outs, strict=True):
        r, o = r.float(), o.float()
        d = (o - r).abs()
        max_rel = max(max_rel, float(d.max() / r.abs().max().clamp_min(1e-12)))
        l2 = max(l2, float((o - r).norm() / r.norm().clamp_min(1e-12)))
    return {"max_abs_over_max_ref": max_rel, "rel_l2": l2}


def measure_one(name: str, mode: str, threads: int, warmup: int, repeats: int) -> dict[str, Any]:
    """Measure one model in one mode in this process (see the module docstring)."""
    import torch

    torch.set_num_threads(threads)
    import zoo
    from zoo._registry import resolve
    from zoo.bench import count_flops

    spec, _ = resolve(name)

    def build():
        return spec.builder(**spec.model_args).eval()

    shape = tuple(int(s) for s in spec.input_size)
    _, flops = count_flops(build, shape)

    torch.manual_seed(0)
    model = build()
    x = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0))
    a = torch.randn(_PEAK_N, _PEAK_N)
    b = torch.randn(_PEAK_N, _PEAK_N)
    _matmul_peak(a, b, 2)  # warm the BLAS

    ref = None
    run = model
    first_s = None
    if mode != "eager":
        with torch.inference_mode():
            ref = model(x)
        bf16, comp = "bf16" in mode, "compile" in mode
        try:
            from zoo.fast import enable
        except ImportError:  # a checkout without zoo.fast (the "before" code)
            enable = None
        if enable is not None:
            run = enable(model, bf16=bf16, compile=comp)
        else:
            run = torch.compile(model) if comp else model
            if bf16:
                inner = run

                def run(t, _m=inner):
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        return _m(t)

    with torch.inference_mode():
        before = _rss()
        with _RSSPeak() as mem:
            t0 = time.perf_counter()
            out = run(x)
            first_s = time.perf_counter() - t0
        first_rise = (mem.peak - before) / _MIB
        for _ in range(max(warmup - 1, 0)):
            out = run(x)
        dev = _deviation(ref, out) if ref is not None else None
        del out
        times, peaks, rises = [], [], []
        for _ in range(repeats):
            before = _rss()
            with _RSSPeak() as mem:
                t0 = time.perf_counter()
                run(x)
                times.append(time.perf_counter() - t0)
            rises.append((mem.peak - before) / _MIB)
            peaks.append(_matmul_peak(a, b))
    lat = statistics.median(times)
    peak = statistics.median(peaks)
    return {
        "name": spec.name,
        "family": spec.family,
        "mode": mode,
        "input": "1×" + "×".join(map(str, shape)),
        "gflops": flops / 1e9,
        "threads": threads,
        "latency_s": lat,
        "latency_min_s": min(times),
        "latency_max_s": max(times),
        "first_call_s": first_s,
        "peak_gflops": peak / 1e9,
        "efficiency": flops / (lat * peak),
        "mem_rise_mib": max(rises),
        "mem_first_mib": first_rise,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "deviation": dev,
        "repeats": repeats,
        "warmup": warmup,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        # Which code ran, without writing this machine's paths into the results.
        "zoo": "this tree" if Path(zoo.__file__).resolve().parents[1] == _REPO else "baseline copy",
    }


# ------------------------------------------------------------------------------ reporting


def _mode(r: dict[str, Any]) -> str:
    return f"{r['mode']} ({r['code']})" if r.get("code") else r["mode"]


def markdown(results: list[dict[str, Any]], title: str = "") -> str:
    lines = [f"### {title}", ""] if title else []
    lines += [
        "| model | input | mode | GFLOP | latency s (min–max) | matmul peak GFLOP/s | efficiency "
        "| target | mem rise MiB (first) | deviation from fp32 (max, rel L2) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | | {_mode(r)} | | error: {r['error']} | | | | | |")
            continue
        target = TARGETS.get(r["family"])
        dev = r.get("deviation")
        dev_s = f"{dev['max_abs_over_max_ref']:.1e}, {dev['rel_l2']:.1e}" if dev else "—"
        lines.append(
            f"| {r['name']} | {r['input']} | {_mode(r)} | {r['gflops']:.1f} | "
            f"{r['latency_s']:.3f} ({r['latency_min_s']:.3f}–{r['latency_max_s']:.3f}) | "
            f"{r['peak_gflops']:.0f} | **{100 * r['efficiency']:.1f} %** | "
            f"{'' if target is None else f'{100 * target:.0f} %'} | {r['mem_rise_mib']:.0f} "
            f"({r.get('mem_first_mib', float('nan')):.0f}) | {dev_s} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument(
        "--modes", nargs="+", default=["eager"], choices=["eager", "bf16", "compile", "bf16+compile"]
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--omp-wait-policy", default="PASSIVE", help="OMP_WAIT_POLICY of the children ('' leaves it unset)"
    )
    p.add_argument("--src", help="directory to put first on PYTHONPATH (e.g. an older checkout)")
    p.add_argument(
        "--baseline-src",
        help="also measure the code under this directory (its eager mode), right before each model's "
        "own eager run, so that each before/after pair sees the same machine load",
    )
    p.add_argument("--label", default="", help="title of the printed table")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--markdown", help="write the table here")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.one:
        try:
            r = measure_one(args.one, args.modes[0], args.threads, args.warmup, args.repeats)
        except Exception as e:  # reported as a row, not a crash of the whole table
            r = {"name": args.one, "mode": args.modes[0], "error": f"{type(e).__name__}: {e}"[:300]}
        print("RESULT " + json.dumps(r), flush=True)
        return 0

    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if args.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    if args.src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.src, env.get("PYTHONPATH", "")]))
    base_env = None
    if args.baseline_src:
        base_env = dict(env)
        base_env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [args.baseline_src, os.environ.get("PYTHONPATH")])
        )
    results = []
    for name in args.models:
        runs = [(m, env, "") for m in args.modes]
        if base_env is not None and "eager" in args.modes:
            runs.insert(args.modes.index("eager"), ("eager", base_env, "before"))
        for mode, run_env, code in runs:
            cmd = [
                sys.executable,
                __file__,
                "--one",
                name,
                "--modes",
                mode,
                "--threads",
                str(args.threads),
                "--warmup",
                str(args.warmup),
                "--repeats",
                str(args.repeats),
            ]
            t0 = time.time()
            proc = subprocess.run(cmd, env=run_env, capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if line:
                r = json.loads(line[-1][7:])
            else:
                err = (proc.stderr.strip().splitlines() or ["?"])[-1][:300]
                r = {"name": name, "mode": mode, "error": err}
            if code:
                r["code"] = code
            results.append(r)
            eff = f"{100 * r['efficiency']:.1f} %" if "efficiency" in r else r.get("error")
            label = f"{mode} {code}".strip()
            print(f"{name:22s} {label:15s} {eff}  ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    table = markdown(results, args.label)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
