"""Benchmark every registered model and write the results tables.

Each model runs ``zoo bench NAME --json`` in a fresh subprocess (so peak memory is its own
and one failure does not stop the run). Rows are merged into
``benchmarks/results/<machine>.csv`` (a model run again replaces its row) and
``benchmarks/RESULTS.md`` is regenerated from every CSV in ``benchmarks/results/``.

Usage:
    python benchmarks/run_all.py                        # every model, full size (hours on 2 cores)
    python benchmarks/run_all.py qtunet-t fmunet        # some models (globs allowed: 'qtunet*')
    python benchmarks/run_all.py --threads 8 --repeats 10
    python benchmarks/run_all.py --markdown-only        # rebuild RESULTS.md from the CSVs
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
RESULTS_MD = HERE / "RESULTS.md"
sys.path.insert(0, str(HERE.parent))

from zoo.bench import CSV_FIELDS, machine_id  # noqa: E402


def _names(patterns: list[str]) -> list[str]:
    from zoo._registry import list_models

    if not patterns:
        return list_models()
    out: list[str] = []
    for p in patterns:
        found = list_models(p) if any(c in p for c in "*?[") else [p]
        if not found:
            raise SystemExit(f"no model matches {p!r}")
        out += [n for n in found if n not in out]
    return out


def baseline_export(name: str, src: Path, cache: Path, timeout: float) -> Path | None:
    """``cache/NAME.onnx`` exported by the medzoo in ``src`` (another checkout, e.g. main's), made
    once and reused, so that a graph change is timed against the old graph in the same rounds."""
    out = cache / f"{name}.onnx"
    if out.is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    # The old code exports at its registered size; parity was that code's own check, not this run's.
    # Older checkouts take to_onnx's options as keywords, newer ones as an ExportSettings.
    code = (
        "import sys; import zoo.export as E; a, p = sys.argv[1:3]; S = getattr(E, 'ExportSettings', None); "
        "E.to_onnx(a, p, S(batch_sizes=(1,), check=False), verbose=False) if S else "
        "E.to_onnx(a, p, batch_sizes=(1,), check=False, verbose=False)"
    )
    part = cache / f"{name}.part.onnx"
    env = {**os.environ, "PYTHONPATH": str(src.resolve()), "OMP_WAIT_POLICY": "PASSIVE"}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, name, str(part)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=src,
            env=env,
        )
    except subprocess.TimeoutExpired:
        print(f"  {name}: baseline export timed out after {timeout} s", file=sys.stderr)
        return None
    if proc.returncode != 0 or not part.is_file():
        tail = "\n    ".join(proc.stderr.strip().splitlines()[-4:])
        print(f"  {name}: baseline export failed (exit {proc.returncode})\n    {tail}", file=sys.stderr)
        return None
    if Path(f"{part}.data").exists():
        print(f"  {name}: baseline export has external data; not supported here", file=sys.stderr)
        return None
    part.replace(out)
    return out


def run_one(name: str, args: argparse.Namespace) -> dict[str, Any] | None:
    cmd = [
        sys.executable,
        "-m",
        "zoo.cli",
        "bench",
        name,
        "--json",
        "-q",
        "--warmup",
        str(args.warmup),
        "--repeats",
        str(args.repeats),
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.no_onnx:
        cmd.append("--no-onnx")
    if args.no_cuda:
        cmd.append("--no-cuda")
    if args.baseline_opset:
        cmd += ["--baseline-opset", str(args.baseline_opset)]
    if args.baseline_src:
        base = baseline_export(name, Path(args.baseline_src), Path(args.baseline_cache), args.timeout)
        if base is None:
            return None
        cmd += ["--baseline-onnx", str(base), "--baseline-label", args.baseline_label]
    # libgomp reads the wait policy when torch loads: it must be in the child's environment.
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=args.timeout, cwd=HERE.parent, env=env
        )
    except subprocess.TimeoutExpired:
        print(f"  {name}: timed out after {args.timeout} s", file=sys.stderr)
        return None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n    ".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        print(f"  {name}: failed (exit {proc.returncode})\n    {tail}", file=sys.stderr)
        return None
    row = json.loads(lines[-1])
    print(
        f"  {name}: done in {time.perf_counter() - start:.0f} s (load {row.get('load_start')} → "
        f"{row.get('load_end')}, ORT/torch {row.get('ort_ms')}/{row.get('cpu_ms')})",
        file=sys.stderr,
    )
    return row


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.part")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in sorted(rows, key=lambda r: r["name"]):
            w.writerow({k: r.get(k, "") for k in CSV_FIELDS})
    tmp.replace(path)


# -- Markdown ------------------------------------------------------------------------------------------


def _f(row: dict[str, str], key: str) -> float | None:
    v = row.get(key, "")
    try:
        return float(v) if v not in ("", "None") else None
    except ValueError:
        return None


def _num(v: float | None, fmt: str, scale: float = 1.0) -> str:
    return "—" if v is None else format(v / scale, fmt)


def _millions(v: float | None) -> str:
    return "—" if v is None else f"{v / 1e6:.2f} M"


def _ratio(a: float | None, b: float | None) -> str:
    return "—" if not a or not b else f"{a / b:.3f}"


def _cost_table(rows: list[dict[str, str]]) -> list[str]:
    out = [
        "| model | params | paper params | ratio | GMACs at input | paper's setting | GMACs there "
        "| paper GMACs | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        declared = r.get("paper_setting_declared") in ("True", "true", "1")
        has_paper = _f(r, "paper_gmacs") is not None
        setting = f"1×{r['paper_setting']}" if declared else ("input size†" if has_paper else "—")
        ours_p = _f(r, "params_paper_setting") if declared else _f(r, "params")
        cells = [
            r["name"],
            _millions(_f(r, "params")),
            _millions(_f(r, "paper_params")),
            _ratio(ours_p, _f(r, "paper_params")),
            f"{_num(_f(r, 'gmacs'), '.2f')} (1×{r['input_shape']})",
            setting,
            _num(_f(r, "gmacs_paper_setting"), ".2f") if has_paper else "—",
            _num(_f(r, "paper_gmacs"), ".2f"),
            _ratio(_f(r, "gmacs_paper_setting"), _f(r, "paper_gmacs")),
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out


def _load(r: dict[str, str]) -> str:
    a, b = _f(r, "load_start"), _f(r, "load_end")
    if a is None or b is None:
        return "—"
    tries = r.get("load_attempts") or "1"
    return f"{a:.1f} → {b:.1f}" + (f" ({tries} tries)" if tries not in ("", "1") else "")


def _time_table(rows: list[dict[str, str]]) -> list[str]:
    out = [
        "| model | input | CPU ms (threads) | CPU peak MiB | onnxruntime ms | ORT / torch "
        "| ORT / torch, baseline graph | timing | load avg (start → end) | ONNX exporter (opset) "
        "| ONNX max rel diff | CUDA fp32 ms | CUDA bf16 ms | CUDA peak MiB (fp32 / bf16) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cpu, ort = _f(r, "cpu_ms"), _f(r, "ort_ms")
        exporter = r.get("onnx_exporter") or (
            f"failed: {r['onnx_error'][:60]}" if r.get("onnx_error") else "—"
        )
        if r.get("onnx_exporter") and r.get("onnx_opset"):
            exporter += f" ({r['onnx_opset']})"
        base = _f(r, "ort_baseline_ms")
        graph = r.get("ort_baseline_graph") or ""
        what = (
            f"{graph}, opset {r.get('ort_baseline_opset', '?')}"
            if graph
            else f"opset {r.get('ort_baseline_opset', '?')}"
        )
        base_cell = "—" if base is None else f"{_ratio(base, cpu)} ({what})"
        timing = r.get("timing") or "separate blocks"
        cuda_mem = "—"
        if _f(r, "cuda_fp32_peak_mib") is not None:
            cuda_mem = (
                f"{_num(_f(r, 'cuda_fp32_peak_mib'), '.0f')} / {_num(_f(r, 'cuda_bf16_peak_mib'), '.0f')}"
            )
        out.append(
            f"| {r['name']} | 1×{r['input_shape']} | {_num(cpu, '.0f')} ({r.get('cpu_threads', '?')}) "
            f"| {_num(_f(r, 'cpu_peak_mib'), '.0f')} | {_num(ort, '.0f')} | {_ratio(ort, cpu)} | {base_cell} "
            f"| {timing} | {_load(r)} | {exporter} "
            f"| {_num(_f(r, 'onnx_max_rel'), '.1e')} | {_num(_f(r, 'cuda_fp32_ms'), '.1f')} "
            f"| {_num(_f(r, 'cuda_bf16_ms'), '.1f')} | {cuda_mem} |"
        )
    return out


def _paper_time_table(rows: list[dict[str, str]]) -> list[str]:
    """Paper inference times per case vs our per-window latency, each relative to its family's fastest."""
    timed = [r for r in rows if _f(r, "paper_inference_s") is not None]
    if not timed:
        return []
    out = [
        "",
        "Inference time next to the paper's. The paper times whole cases on a GPU (sliding window); we "
        "time one window, so only the ratios within a family compare like with like.",
        "",
        "| model | paper s / case | paper, relative | ours ms / window | device | ours, relative |",
        "|---|---|---|---|---|---|",
    ]
    for fam in sorted({r["family"] for r in timed}):
        group = [r for r in timed if r["family"] == fam]
        use_gpu = all(_f(r, "cuda_fp32_ms") for r in group)
        key = "cuda_fp32_ms" if use_gpu else "cpu_ms"
        base_p = min(_f(r, "paper_inference_s") for r in group)
        ours = [_f(r, key) for r in group if _f(r, key)]
        base_o = min(ours) if ours else None
        for r in sorted(group, key=lambda r: _f(r, "paper_inference_s")):
            o, paper_s = _f(r, key), _f(r, "paper_inference_s")
            cells = [
                r["name"],
                _num(paper_s, ".2f"),
                _ratio(paper_s, base_p),
                _num(o, ".1f"),
                "CUDA fp32" if use_gpu else "CPU",
                _ratio(o, base_o),
            ]
            out.append("| " + " | ".join(cells) + " |")
    return out


EFFICIENCY_DIR = HERE / "efficiency-results"


def _efficiency_table(ort_rows: dict[str, dict[str, str]]) -> list[str]:
    """Before/after figures of ``benchmarks/efficiency.py``, with onnxruntime's latency beside them."""
    pairs = EFFICIENCY_DIR / "eager-before-after.json"
    if not pairs.exists():
        return []
    runs = json.loads(pairs.read_text())
    fast = []
    for name in ("bf16.json", "compile.json"):
        if (EFFICIENCY_DIR / name).exists():
            fast += json.loads((EFFICIENCY_DIR / name).read_text())
    by = {(r["name"], r.get("code") or r["mode"]): r for r in runs + fast}
    names = list(dict.fromkeys(r["name"] for r in runs))
    out = [
        "## Inference efficiency, before and after the fast paths",
        "",
        "From `benchmarks/efficiency.py` (details and caveats: `benchmarks/EFFICIENCY.md`). Efficiency = "
        "model FLOPs ÷ (median latency × the fp32 matmul peak measured in the same run); 2 threads, batch 1, "
        "fp32 eager, `inference_mode`; memory = rise of the resident set during a warm forward. bf16 and "
        "compile are the opt-in `zoo.fast` modes (relative L2 deviation from fp32 in brackets). onnxruntime: "
        "the same model exported by `zoo export`, from this machine's `run_all.py` row (a separate run, "
        "same threads; — where that row ran at another thread count).",
        "",
        "| model | input | GFLOP | efficiency before → after | latency s before → after "
        "| memory MiB before → after | bf16 s | compile s | onnxruntime s | ORT / torch (after) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        b, a = by.get((n, "before")), by.get((n, "after")) or by.get((n, "eager"))
        if b is None or a is None:
            continue
        bf, co = by.get((n, "bf16")), by.get((n, "compile"))
        row = ort_rows.get(n, {})
        # efficiency.py ran 2 threads: a row timed at another thread count is no comparison
        ort = _f(row, "ort_ms") if row.get("cpu_threads") == "2" else None

        def fast_cell(r: dict | None) -> str:
            if r is None:
                return "—"
            dev = (r.get("deviation") or {}).get("rel_l2")
            return f"{r['latency_s']:.2f}" + (f" ({dev:.0e})" if dev is not None else "")

        cells = [
            n,
            a["input"],
            f"{a['gflops']:.1f}",
            f"{100 * b['efficiency']:.1f} % → **{100 * a['efficiency']:.1f} %**",
            f"{b['latency_s']:.2f} → {a['latency_s']:.2f}",
            f"{b['mem_rise_mib']:.0f} → {a['mem_rise_mib']:.0f}",
            fast_cell(bf),
            fast_cell(co),
            _num(ort, ".2f", 1000.0),
            _ratio(ort / 1000.0 if ort else None, a["latency_s"]),
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out + [""]


def gpu_section(results_dir: Path = RESULTS_DIR) -> list[str]:
    """RESULTS.md's GPU section from ``results/gpu-*.csv`` (``benchmarks/gpu_check.py``), or the line
    that says the GPU rows are missing."""
    files = sorted(results_dir.glob("gpu-*.csv"))
    parts = ["## GPU", ""]
    if not files:
        return parts + [
            "**The GPU rows are missing**: no GPU has been lent to this project yet, so no CUDA code path "
            "has run. `benchmarks/gpu_check.py` is ready (rehearsed here with `--device cpu`, in the slow "
            "test set); on a GPU, `OMP_WAIT_POLICY=PASSIVE python benchmarks/gpu_check.py --device cuda` "
            "writes `results/gpu-<machine>.csv` (CUDA parity of every model against the CPU, the bf16/fp16 "
            "deviation, latency and peak memory at fp32 and bf16, onnxruntime's CUDA provider, and a "
            "whole study against a plain MONAI loop) and this section is rebuilt from it.",
            "",
        ]
    for f in files:
        rows = read_csv(f)
        device = rows[0]["device"] if rows else "?"
        parts += [f"### {f.stem.removeprefix('gpu-')} ({device})", ""]
        parts += [
            "| check | model | input | precision | metric | value | note |",
            "|---|---|---|---|---|---|---|",
        ]
        parts += [
            "| "
            + " | ".join(r[k] for k in ("check", "model", "input", "precision", "metric", "value", "note"))
            + " |"
            for r in rows
        ]
        parts.append("")
    return parts


def write_markdown(path: Path = RESULTS_MD) -> Path:
    from zoo._registry import iter_specs

    all_names = [s.name for s in iter_specs()]
    parts = [
        "# Benchmarks",
        "",
        "Generated by `python benchmarks/run_all.py` from `benchmarks/results/*.csv`; do not edit by hand.",
        "",
        "Conventions:",
        "",
        "- **Parameters**: trainable parameters of the model built from its registered configuration.",
        "- **FLOPs / MACs**: `torch.utils.flop_counter.FlopCounterMode`, one forward at batch 1: "
        "convolutions, linear layers and matrix products, attention matmuls included; element-wise ops, "
        'norms and softmax are not counted. MACs = FLOPs / 2 (what fvcore and thop call "FLOPs"). '
        "*GMACs at input* is measured at the registered input size; *GMACs there* at the paper's setting "
        '(`meta["paper_setting"]`: input size, model arguments, train-mode forward) and is the number '
        "compared with the paper's.",
        "- † the registry states no paper setting for this model: the paper's number is compared at the "
        "registered input size, which may not be like with like (see the convention notes below).",
        "- **Latency**: median of the timed forwards after warm-up, batch 1, `torch.no_grad`, fp32; CPU "
        "threads in parentheses (PyTorch and onnxruntime use the same number). CUDA: CUDA events, fp32 "
        "and bf16 autocast; peak = `torch.cuda.max_memory_allocated` (weights included).",
        "- **Timing** *alternating*: PyTorch and onnxruntime (and the baseline graph, when measured) "
        "run forward by forward in turn in one process, idle threads not spinning "
        "(`OMP_WAIT_POLICY=PASSIVE`; onnxruntime `session.intra_op.allow_spinning=0`, inter-op too), so "
        "the ratio holds under load even where the milliseconds do not. *separate blocks*: older rows, "
        "each runtime timed on its own (their ratio measured the machine's load as much as the graph). "
        "The 1-minute load average is given at the start and end of the row; a row during which it moved "
        "by more than 1.0 was measured again (tries). *Baseline graph*: the same model exported at the "
        "named opset (before the Attention operator), or by the named older medzoo (`--baseline-src`), "
        "timed in the same rounds.",
        "- **CPU peak MiB**: rise of the process's resident set above its size before the first forward "
        "(weights and input already resident).",
        "- **ONNX**: exported at the benchmarked size (batch axis dynamic) and checked against PyTorch with "
        "onnxruntime; max rel diff = max |onnx − torch| / max |torch|.",
        "",
    ]
    for csv_path in sorted(RESULTS_DIR.glob("*.csv")):
        if csv_path.stem.startswith(("gpu-", "cpu-rehearsal-")):  # gpu_check.py's rows: gpu_section()
            continue
        rows = read_csv(csv_path)
        if not rows:
            continue
        machine = csv_path.stem
        dates = sorted({r.get("date", "") for r in rows if r.get("date")})
        torch_v = sorted({r.get("torch_version", "") for r in rows if r.get("torch_version")})
        parts += [
            f"## {machine}",
            "",
            f"{len(rows)} model(s), measured {', '.join(dates) or '?'} "
            f"with torch {', '.join(torch_v) or '?'}; warm-up / timed forwards: "
            f"{rows[0].get('warmup', '?')} / {rows[0].get('repeats', '?')}.",
            "",
            "### Size and cost against the papers",
            "",
            *_cost_table(rows),
            "",
            "### Latency and memory",
            "",
            *_time_table(rows),
            *_paper_time_table(rows),
            "",
        ]
        conventions = {}
        for r in rows:
            if r.get("flops_convention"):
                conventions.setdefault(r["flops_convention"], []).append(r["name"])
        if conventions:
            parts += ["How each paper counted:", ""]
            parts += [f"- {', '.join(names)}: {conv}" for conv, names in conventions.items()]
            parts.append("")
        missing = [n for n in all_names if n not in {r["name"] for r in rows}]
        if missing:
            parts += [
                f"Not benchmarked on this machine yet: {', '.join(missing)} "
                f"(`python benchmarks/run_all.py {' '.join(missing[:2])} …`).",
                "",
            ]
    parts += gpu_section()
    local = read_csv(RESULTS_DIR / f"{machine_id()}.csv")
    parts += _efficiency_table({r["name"]: r for r in local})
    # written by benchmarks/startup.py and benchmarks/onnx_predict.py; kept across regenerations
    for extra in ("onnx_predict.md", "startup.md"):
        if (RESULTS_DIR / extra).is_file():
            parts += ["", (RESULTS_DIR / extra).read_text().strip(), ""]
    path.write_text("\n".join(parts).rstrip() + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", help="names or globs (default: every registered model)")
    p.add_argument("--machine", default=None, help="CSV name (default: a description of this machine)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-onnx", action="store_true")
    p.add_argument("--no-cuda", action="store_true")
    p.add_argument(
        "--baseline-opset",
        type=int,
        default=None,
        help="also time an export at this opset, alternating with the others (before/after)",
    )
    p.add_argument(
        "--baseline-src",
        default=None,
        help="also time the graph that the medzoo checkout at this path exports (e.g. main's), "
        "alternating with the others",
    )
    p.add_argument("--baseline-label", default="baseline", help="name of that graph in the table")
    p.add_argument(
        "--baseline-cache",
        default=str(HERE / ".baseline-onnx"),
        help="where the baseline exports are kept and reused (default: benchmarks/.baseline-onnx)",
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per model")
    p.add_argument(
        "--markdown-only",
        action="store_true",
        help="only rebuild RESULTS.md and the model cards from the CSVs",
    )
    args = p.parse_args(argv)

    if not args.markdown_only:
        machine = args.machine or machine_id()
        csv_path = RESULTS_DIR / f"{machine}.csv"
        rows = {r["name"]: r for r in read_csv(csv_path)}
        names = _names(args.models)
        print(f"benchmarking {len(names)} model(s) into {csv_path}", file=sys.stderr)
        for name in names:
            row = run_one(name, args)
            if row is not None:
                row["machine"] = machine
                rows[name] = row
                write_csv(csv_path, list(rows.values()))  # after each model: a long run keeps its progress
    print(f"wrote {write_markdown()}", file=sys.stderr)
    from zoo.cards import write_cards  # the cards quote the CSV rows: keep them in step

    print(f"regenerated {len(write_cards())} model cards", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
