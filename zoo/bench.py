"""Cost of a model: parameters, FLOPs/MACs, latency and peak memory on CPU, CUDA and onnxruntime.

Counting conventions (stated because papers differ):

* FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``: 2 per multiply-accumulate of
  convolutions, linear layers and matrix products (attention matmuls included); element-wise
  ops, norms and softmax are not counted. MACs = FLOPs / 2, which is what fvcore and thop call
  "FLOPs".
* The paper's numbers are compared at the paper's setting when the registry declares one
  (``meta["paper_setting"] = {"input_size": (C, *spatial), "model_args": {...},
  "train_mode": bool}``); otherwise at ``spec.input_size``, and the comparison says so.
* Latency is the median of ``repeats`` timed forwards after ``warmup`` untimed ones, batch 1,
  under ``torch.no_grad`` (not inference_mode: tensors a model caches must stay usable for the
  export that follows); CPU threads are recorded. CUDA times use CUDA events
  (fp32, then bf16 autocast) and ``torch.cuda.max_memory_allocated``. CPU peak memory is the
  rise of the process's resident set over its size before the first forward (model and input
  already resident), watched through warm-up and timed forwards.

Example::

    from zoo.bench import benchmark
    r = benchmark("qtunet-t", repeats=3)      # CUDA too when torch.cuda.is_available()
    r.params, r.gmacs, r.gmacs_paper_setting, r.paper_gmacs, r.cpu_ms, r.ort_ms
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import re
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo._registry import ModelSpec, resolve

__all__ = [
    "BenchResult",
    "benchmark",
    "count_params",
    "count_flops",
    "paper_setting",
    "cpu_latency",
    "cuda_latency",
    "onnxruntime_latency",
    "machine_id",
    "ratio",
    "CSV_FIELDS",
]

_MIB = 1024 * 1024


@dataclass
class BenchResult:
    """One model's cost. Times in ms, memory in MiB, FLOPs/MACs in G; None = not measured."""

    name: str
    family: str
    input_shape: str
    params: int
    gflops: float
    gmacs: float
    paper_setting: str = ""
    paper_setting_declared: bool = False
    params_paper_setting: int | None = None
    gmacs_paper_setting: float | None = None
    paper_params: float | None = None
    paper_gmacs: float | None = None
    flops_convention: str = ""
    paper_inference_s: float | None = None
    cpu_threads: int = 0
    cpu_ms: float | None = None
    cpu_ms_iqr: float | None = None
    cpu_peak_mib: float | None = None
    ort_ms: float | None = None
    onnx_exporter: str = ""
    onnx_opset: int | None = None
    onnx_max_abs: float | None = None
    onnx_max_rel: float | None = None
    onnx_error: str = ""
    cuda_device: str = ""
    cuda_fp32_ms: float | None = None
    cuda_fp32_peak_mib: float | None = None
    cuda_bf16_ms: float | None = None
    cuda_bf16_peak_mib: float | None = None
    cuda_error: str = ""
    warmup: int = 0
    repeats: int = 0
    torch_version: str = field(default_factory=lambda: torch.__version__)
    machine: str = ""
    date: str = field(default_factory=lambda: time.strftime("%Y-%m-%d"))

    def row(self) -> dict[str, Any]:
        return {k: ("" if v is None else v) for k, v in asdict(self).items()}


CSV_FIELDS = [f.name for f in fields(BenchResult)]


# -- counting -----------------------------------------------------------------------------------


def count_params(model: nn.Module) -> int:
    """Trainable parameters (the registry's ``num_params`` convention)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_flops(
    build: Callable[[], nn.Module], input_shape: Sequence[int], train_mode: bool = False
) -> tuple[int, float]:
    """``(parameters, FLOPs)`` of one batch-1 forward, counted by ``FlopCounterMode``.

    The model is built and run on the meta device (no memory, no compute); models that
    cannot run there are counted on the CPU.

    Args:
        build: returns a fresh model (built under the current default device).
        input_shape: input shape without batch.
        train_mode: count a ``train()`` forward (fvcore-style papers), still without grad.
    """
    from torch.utils.flop_counter import FlopCounterMode

    last: Exception | None = None
    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                model = build()
                x = torch.zeros((1, *input_shape))
            model.train(train_mode)
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                model(x)
            return count_params(model), float(counter.get_total_flops())
        except (NotImplementedError, RuntimeError) as e:
            last = e
    raise RuntimeError(f"could not count FLOPs at {tuple(input_shape)}: {last}") from last


def paper_setting(spec: ModelSpec) -> tuple[dict[str, Any], tuple[int, ...], bool, bool]:
    """The configuration the paper's cost table used, from ``spec.meta["paper_setting"]``.

    Returns:
        ``(model_args overrides, input shape without batch, train_mode, declared)``;
        ``declared`` is False when the registry states no paper setting and
        ``spec.input_size`` stands in for it.
    """
    ps = spec.meta.get("paper_setting")
    if not ps:
        return {}, tuple(spec.input_size or ()), False, False
    shape = tuple(int(s) for s in ps.get("input_size", spec.input_size))
    return dict(ps.get("model_args", {})), shape, bool(ps.get("train_mode", False)), True


# -- timing ---------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return _maxrss_bytes()


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if platform.system() == "Darwin" else int(r) * 1024


class _PeakRSS:
    """Peak resident set while the block runs: the process's exact peak (``ru_maxrss``) when the
    block sets a new one, else the highest of samples taken every millisecond."""

    def __enter__(self) -> _PeakRSS:
        self.before = _rss_bytes()
        self.maxrss_before = _maxrss_bytes()
        self.sampled = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.sampled = max(self.sampled, _rss_bytes())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        maxrss = _maxrss_bytes()
        peak = maxrss if maxrss > self.maxrss_before else max(self.sampled, _rss_bytes())
        self.rise_mib = max(peak - self.before, 0) / _MIB


def _median_iqr(times: list[float]) -> tuple[float, float]:
    if len(times) < 4:
        return statistics.median(times), max(times) - min(times)
    q = statistics.quantiles(times, n=4)
    return statistics.median(times), q[2] - q[0]


def cpu_latency(
    model: nn.Module, x: torch.Tensor, warmup: int = 1, repeats: int = 5
) -> tuple[float, float, float]:
    """``(median ms, IQR ms, peak memory rise MiB)`` of CPU forwards of ``x``."""
    model = model.eval()
    # Memory is watched from the first forward on: later ones reuse what the allocator kept.
    with torch.no_grad(), _PeakRSS() as mem:
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1e3)
    med, iqr = _median_iqr(times)
    return med, iqr, mem.rise_mib


def cuda_latency(
    model: nn.Module,
    x: torch.Tensor,
    bf16: bool = False,
    warmup: int = 3,
    repeats: int = 20,
    device: str | torch.device = "cuda",
) -> tuple[float, float]:
    """``(median ms, peak allocated MiB)`` of CUDA forwards, timed with CUDA events.

    The model and input are moved to ``device``; ``bf16`` runs under
    ``torch.autocast("cuda", dtype=torch.bfloat16)``. Peak memory is
    ``torch.cuda.max_memory_allocated`` during the timed forwards (weights included).

    Raises:
        RuntimeError: when CUDA is not available (or bf16 is not supported).
    """
    if not torch.cuda.is_available():
        raise RuntimeError("CUDA is not available")
    dev = torch.device(device)
    if bf16 and not torch.cuda.is_bf16_supported():
        raise RuntimeError(f"{torch.cuda.get_device_name(dev)} does not support bf16")
    model = model.to(dev).eval()
    x = x.to(dev)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        for _ in range(warmup):
            model(x)
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        times = []
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            model(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        peak = torch.cuda.max_memory_allocated(dev) / _MIB
    return statistics.median(times), peak


def onnxruntime_latency(
    path: str | Path, x: torch.Tensor, warmup: int = 1, repeats: int = 5, threads: int | None = None
) -> float:
    """Median ms of onnxruntime CPU runs of ``x`` on the model at ``path``."""
    from zoo.export import onnx_session

    session = onnx_session(path, threads)
    feed = {session.get_inputs()[0].name: x.numpy()}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# -- machine ---------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    text = re.sub(r"\((r|tm|c)\)", "", text.lower())
    text = re.sub(r"\b(cpu|processor|@.*|corporation|core\(tm\)|with .*)$", "", text.strip())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def machine_id() -> str:
    """A file-name-safe description of this machine: GPU (when present), CPU model, CPU count."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1]
                break
    parts = [_slug(cpu) or "cpu", f"{os.cpu_count()}cpu"]
    if torch.cuda.is_available():
        parts.insert(0, _slug(torch.cuda.get_device_name(0)))
    return "-".join(p for p in parts if p)


# -- one model ---------------------------------------------------------------------------------------


def _fmt_shape(shape: Sequence[int]) -> str:
    return "×".join(str(int(s)) for s in shape)


def benchmark(
    name: str,
    *,
    input_shape: Sequence[int] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    warmup: int = 1,
    repeats: int = 5,
    threads: int | None = None,
    cpu: bool = True,
    onnx: bool = True,
    cuda: bool | None = None,
    cuda_repeats: int = 20,
    log: Callable[[str], None] | None = None,
) -> BenchResult:
    """Measure one registered model.

    Args:
        name: registry name (weights are irrelevant to cost; the architecture is built).
        input_shape: input without batch; default ``spec.input_size`` (or the size that
            ``model_kwargs["img_size"]`` implies).
        model_kwargs: constructor overrides (``img_size=`` …) for the timed model.
        warmup / repeats: untimed and timed CPU forwards (and onnxruntime runs).
        threads: CPU threads for PyTorch and onnxruntime (default: current torch setting).
        cpu: time PyTorch on the CPU.
        onnx: export to ONNX at the timed size (parity checked) and time onnxruntime.
        cuda: time on CUDA; None = when ``torch.cuda.is_available()``.
        cuda_repeats: timed CUDA forwards (warm-up: 3).
        log: progress callback (e.g. ``print``).

    Returns:
        A :class:`BenchResult`.
    """
    from zoo.export import default_input_shape, to_onnx

    say = log or (lambda s: None)
    spec, _ = resolve(name)
    kwargs = dict(model_kwargs or {})
    if threads:
        torch.set_num_threads(int(threads))
    n_threads = torch.get_num_threads()
    args = {**spec.model_args, **kwargs}

    def build(extra: Mapping[str, Any] = kwargs) -> nn.Module:
        return spec.builder(**{**spec.model_args, **extra}).eval()

    # Shape: explicit, else the registered one with the overridden img_size.
    if input_shape is None:
        probe = nn.Module()
        probe.pretrained_cfg = {"input_size": spec.input_size, "model_args": args}
        input_shape = default_input_shape(probe, spec)
    shape = tuple(int(s) for s in input_shape)

    say(f"{spec.name}: counting FLOPs at 1×{_fmt_shape(shape)}")
    params, flops = count_flops(build, shape)
    p_over, p_shape, p_train, declared = paper_setting(spec)
    if declared:
        pp, pflops = count_flops(lambda: build(p_over), p_shape, train_mode=p_train)
    else:
        pp, pflops = params, flops
    m = spec.meta
    res = BenchResult(
        name=spec.name,
        family=spec.family,
        input_shape=_fmt_shape(shape),
        params=params,
        gflops=flops / 1e9,
        gmacs=flops / 2e9,
        paper_setting=_fmt_shape(p_shape) + (" train-mode" if p_train else ""),
        paper_setting_declared=declared,
        params_paper_setting=pp,
        gmacs_paper_setting=pflops / 2e9,
        paper_params=m.get("paper_params"),
        paper_gmacs=m.get("paper_gmacs"),
        flops_convention=str(m.get("flops_convention", "")),
        paper_inference_s=m.get("paper_inference_s"),
        cpu_threads=n_threads,
        warmup=warmup,
        repeats=repeats,
        machine=machine_id(),
    )

    model = build()
    x = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0))
    if cpu:
        say(f"{spec.name}: CPU latency ({n_threads} threads, {warmup} warm-up + {repeats} runs)")
        res.cpu_ms, res.cpu_ms_iqr, res.cpu_peak_mib = cpu_latency(model, x, warmup, repeats)
    if onnx:
        say(f"{spec.name}: ONNX export and onnxruntime latency")
        with tempfile.TemporaryDirectory(prefix="zoo-bench-") as tmp:
            try:
                ex = to_onnx(model, Path(tmp) / "model.onnx", shape, batch_sizes=(1,), verbose=False)
                res.onnx_exporter, res.onnx_opset = ex.exporter, ex.opset
                res.onnx_max_abs, res.onnx_max_rel = ex.max_abs, ex.max_rel
                res.ort_ms = onnxruntime_latency(ex.path, x, warmup, repeats, n_threads)
            except Exception as e:  # a failed export is a result to report, not a crash
                res.onnx_error = (
                    f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(e) else type(e).__name__
                )
    if cuda is None:
        cuda = torch.cuda.is_available()
    if cuda:
        res.cuda_device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
        try:
            say(f"{spec.name}: CUDA fp32")
            res.cuda_fp32_ms, res.cuda_fp32_peak_mib = cuda_latency(model, x, False, repeats=cuda_repeats)
            say(f"{spec.name}: CUDA bf16 autocast")
            res.cuda_bf16_ms, res.cuda_bf16_peak_mib = cuda_latency(model, x, True, repeats=cuda_repeats)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
            res.cuda_error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        finally:
            model.cpu()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return res


def ratio(ours: float | None, paper: float | None) -> float | None:
    """``ours / paper`` or None when either is missing or zero."""
    if not ours or not paper or (isinstance(paper, float) and math.isnan(paper)):
        return None
    return float(ours) / float(paper)
