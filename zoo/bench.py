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
  export that follows); CPU threads are recorded. PyTorch and onnxruntime are timed
  *alternating*, forward by forward, in one process (:func:`alternating_latency`), so that
  both see the same machine load; onnxruntime's threads do not spin (session options
  ``session.intra_op.allow_spinning=0``, ``session.inter_op.allow_spinning=0``) and PyTorch's
  OpenMP threads should not either (``OMP_WAIT_POLICY=PASSIVE`` in the environment before the
  process starts, which ``benchmarks/run_all.py`` sets; the row records the policy in force).
  The 1-minute load average is recorded at the start and end of each row; a row during which
  it moved (:func:`load_moved`) is measured again. CUDA times use CUDA events
  (fp32, then bf16 autocast) and ``torch.cuda.max_memory_allocated``. CPU peak memory is the
  rise of the process's resident set over its size before the first forward (model and input
  already resident), watched through warm-up and timed forwards.

Example::

    from zoo.bench import BenchSettings, benchmark
    r = benchmark("qtunet-t", BenchSettings(repeats=3))  # CUDA too when torch.cuda.is_available()
    r.params, r.gmacs, r.gmacs_paper_setting, r.paper_gmacs, r.cpu_ms, r.ort_ms
"""

from __future__ import annotations

import contextlib
import functools
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

from zoo._registry import ModelSpec

__all__ = [
    "BenchResult",
    "BenchSettings",
    "benchmark",
    "count_params",
    "count_flops",
    "paper_setting",
    "cpu_latency",
    "cuda_latency",
    "onnxruntime_latency",
    "machine_id",
    "ratio",
    "paper_gmacs_cell",
    "CSV_FIELDS",
    "alternating_latency",
    "AlternatingTiming",
    "load_average",
    "load_moved",
    "LOAD_TOLERANCE",
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
    ort_ms_iqr: float | None = None
    ort_baseline_ms: float | None = None
    ort_baseline_opset: int | None = None
    ort_baseline_graph: str = ""
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
    weights_tag: str = ""
    weights_sha256: str = ""
    timing: str = ""
    load_start: float | None = None
    load_end: float | None = None
    load_attempts: int | None = None
    omp_wait_policy: str = ""
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


# A row is measured again when the 1-minute load average moved by more than one busy core.
LOAD_TOLERANCE = 1.0


def load_average() -> float:
    """The 1-minute load average (0.0 where the OS does not report one)."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return 0.0


def load_moved(start: float, end: float, tolerance: float = LOAD_TOLERANCE) -> bool:
    """Whether the load "moved" during a row: the 1-minute load average at its end differs from
    the one at its start by more than ``tolerance`` (default 1.0, i.e. one more or one fewer busy
    core), which on a small shared machine changes what a forward costs."""
    return abs(end - start) > tolerance


@dataclass
class AlternatingTiming:
    """Latencies of several runners timed forward by forward in turn.

    Attributes:
        ms / iqr: median and interquartile range (ms) per runner.
        load_start / load_end: 1-minute load average at the start and end of the kept attempt.
        attempts: how many times the row was measured (more than 1 when the load moved).
    """

    ms: dict[str, float]
    iqr: dict[str, float]
    load_start: float
    load_end: float
    attempts: int

    @property
    def load_moved(self) -> bool:
        return load_moved(self.load_start, self.load_end)


def alternating_latency(
    runners: Mapping[str, Callable[[], Any]],
    warmup: int = 1,
    repeats: int = 5,
    max_attempts: int = 3,
    tolerance: float = LOAD_TOLERANCE,
) -> AlternatingTiming:
    """Time ``runners`` alternating, one call of each per round, so that they share the load.

    The order inside a round rotates (no runner always runs right after another's caches).
    When the load moved during the timed rounds (:func:`load_moved`) they are run again, up to
    ``max_attempts`` times; the attempt with the steadiest load is kept.

    Args:
        runners: name → a callable doing one forward.
        warmup: untimed calls of each runner first.
        repeats: timed rounds.
        max_attempts: measurements of the row at most.
        tolerance: load-average change that counts as moved.

    Returns:
        An :class:`AlternatingTiming`.
    """
    if not runners:
        raise ValueError("alternating_latency needs at least one runner")
    if repeats < 1 or max_attempts < 1:
        raise ValueError(f"repeats and max_attempts must be ≥ 1, got {repeats}, {max_attempts}")
    names = list(runners)
    for _ in range(warmup):
        for n in names:
            runners[n]()
    best: AlternatingTiming | None = None
    for attempt in range(1, max_attempts + 1):
        times: dict[str, list[float]] = {n: [] for n in names}
        start = load_average()
        for r in range(repeats):
            for n in names[r % len(names) :] + names[: r % len(names)]:
                t0 = time.perf_counter()
                runners[n]()
                times[n].append((time.perf_counter() - t0) * 1e3)
        end = load_average()
        stats = {n: _median_iqr(t) for n, t in times.items()}
        cur = AlternatingTiming(
            ms={n: m for n, (m, _) in stats.items()},
            iqr={n: q for n, (_, q) in stats.items()},
            load_start=start,
            load_end=end,
            attempts=attempt,
        )
        if best is None or abs(end - start) < abs(best.load_end - best.load_start):
            best = cur
        best.attempts = attempt
        if not load_moved(start, end, tolerance):
            break
    assert best is not None
    return best


def onnxruntime_latency(
    path: str | Path, x: torch.Tensor, warmup: int = 1, repeats: int = 5, threads: int | None = None
) -> float:
    """Median ms of onnxruntime CPU runs of ``x`` on the model at ``path`` (threads do not spin)."""
    from zoo.onnx_runtime import onnx_session

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


@dataclass(frozen=True)
class BenchSettings:
    """What :func:`benchmark` measures and how; the defaults time PyTorch and onnxruntime at batch 1.

    Attributes:
        input_shape: input without batch; default ``spec.input_size`` (or the size that
            ``model_kwargs["img_size"]`` implies).
        model_kwargs: constructor overrides (``img_size=`` …) for the timed model.
        warmup / repeats: untimed and timed CPU forwards (and onnxruntime runs).
        threads: CPU threads for PyTorch and onnxruntime (default: current torch setting).
        cpu: time PyTorch on the CPU.
        onnx: export to ONNX at the timed size (parity checked) and time onnxruntime.
        cuda: time on CUDA; None = when ``torch.cuda.is_available()``.
        cuda_repeats: timed CUDA forwards (warm-up: 3).
        onnx_opset: opset of the timed export (default: :data:`zoo.export.DYNAMO_OPSET`).
        baseline_opset: also export at this opset and time that graph in the same rounds
            (``ort_baseline_ms``): a before/after of the exporter measured under one load.
        baseline_onnx: instead, time this already exported file in the same rounds (e.g. the
            export of an older medzoo, ``benchmarks/run_all.py --baseline-src``); it must take the
            same input.
        baseline_label: what the baseline graph is (``ort_baseline_graph``), e.g. ``main``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (:func:`zoo.inference.resolve_device`,
            refused before anything is built): ``cpu`` skips CUDA, a CUDA device is timed there;
            None leaves it to ``cuda``.
    """

    input_shape: Sequence[int] | None = None
    model_kwargs: Mapping[str, Any] | None = None
    warmup: int = 1
    repeats: int = 5
    threads: int | None = None
    cpu: bool = True
    onnx: bool = True
    cuda: bool | None = None
    cuda_repeats: int = 20
    onnx_opset: int | None = None
    baseline_opset: int | None = None
    baseline_onnx: str | Path | None = None
    baseline_label: str = ""
    device: str | None = None


def benchmark(
    name: Any,
    settings: BenchSettings | None = None,
    *,
    log: Callable[[str], None] | None = None,
) -> BenchResult:
    """Measure one registered model.

    Args:
        name: registry name (the architecture is built with random weights), or ``name.tag``:
            those weights are loaded through :func:`zoo.create` (``pretrained=True``) and the
            timed export carries them; unavailable weights raise before anything is measured.
        settings: shape, model overrides, rounds, threads, back ends and baseline
            (:class:`BenchSettings`); None takes the defaults.
        log: progress callback (e.g. ``print``).

    Returns:
        A :class:`BenchResult`.
    """
    from zoo.export import ExportSettings, default_input_shape, to_onnx

    if settings is not None and not isinstance(settings, BenchSettings):
        raise TypeError(f"settings must be a BenchSettings, got {type(settings).__name__}")
    opts = settings if settings is not None else BenchSettings()
    input_shape, warmup, repeats, threads = opts.input_shape, opts.warmup, opts.repeats, opts.threads
    cpu, onnx, cuda, cuda_repeats = opts.cpu, opts.onnx, opts.cuda, opts.cuda_repeats
    onnx_opset, baseline_opset = opts.onnx_opset, opts.baseline_opset
    baseline_onnx, baseline_label = opts.baseline_onnx, opts.baseline_label
    say = log or (lambda s: None)
    cuda_dev: torch.device | str = "cuda"
    if opts.device is not None:  # a device that is not there: refused before any build
        from zoo.inference import resolve_device

        cuda_dev = resolve_device(opts.device)
        cuda = cuda_dev.type == "cuda"
    if baseline_opset and baseline_onnx:
        raise ValueError("give baseline_opset or baseline_onnx, not both")
    if baseline_onnx is not None and not Path(baseline_onnx).is_file():
        raise ValueError(f"baseline_onnx: expected an exported .onnx file, found no file at {baseline_onnx}")
    from zoo.plan import ModelPlan, plan

    p = name if isinstance(name, ModelPlan) else plan(name)  # the request, resolved once
    spec, tag = p.spec, p.tag
    kwargs = dict(opts.model_kwargs or {})
    if threads:
        torch.set_num_threads(int(threads))
    n_threads = torch.get_num_threads()
    base = dict(p.model_args)  # the registry's, a weights tag's, or a run's / Hub repository's
    args = {**base, **kwargs}
    loaded = None
    if p.loads_weights:
        # NAME.TAG (or a run, a Hub id) times and exports those weights; unavailable weights fail
        # here, before any work.
        from zoo._factory import create_from_plan

        loaded = create_from_plan(p.with_args(**kwargs)).eval()

    def build(extra: Mapping[str, Any] = kwargs) -> nn.Module:
        return spec.builder(**{**base, **extra}).eval()

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

    model = loaded if loaded is not None else build()
    if loaded is not None:
        record = loaded.pretrained_cfg.get("weights") or {}
        res.weights_tag, res.weights_sha256 = str(tag), str(record.get("sha256") or "")
    x = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0))
    res.omp_wait_policy = os.environ.get("OMP_WAIT_POLICY", "")
    if cpu:
        # Peak memory first, before the export's own forwards leave the allocator warm.
        with torch.no_grad(), _PeakRSS() as mem:
            model(x)
        res.cpu_peak_mib = mem.rise_mib
    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as tmp:
        runners: dict[str, Callable[[], Any]] = {}
        if cpu:

            def run_torch() -> None:
                with torch.no_grad():
                    model(x)

            runners["torch"] = run_torch
        if onnx:
            from zoo.onnx_runtime import onnx_session

            say(f"{spec.name}: ONNX export (parity checked)")
            graphs = [("ort", onnx_opset)] + ([("ort_baseline", baseline_opset)] if baseline_opset else [])
            try:
                for key, opset in graphs:
                    ex = to_onnx(
                        model,
                        Path(tmp) / f"{key}.onnx",
                        ExportSettings(input_shape=shape, batch_sizes=(1,), opset=opset),
                        verbose=False,
                    )
                    if key == "ort":
                        res.onnx_exporter, res.onnx_opset = ex.exporter, ex.opset
                        res.onnx_max_abs, res.onnx_max_rel = ex.max_abs, ex.max_rel
                    else:
                        res.ort_baseline_opset = ex.opset
                    session = onnx_session(ex.path, n_threads)
                    feed = {session.get_inputs()[0].name: x.numpy()}
                    runners[key] = functools.partial(session.run, None, feed)
                if baseline_onnx is not None:
                    import onnx

                    session = onnx_session(baseline_onnx, n_threads)
                    feed = {session.get_inputs()[0].name: x.numpy()}
                    session.run(None, feed)  # a file that cannot take this input fails here, not mid-timing
                    runners["ort_baseline"] = functools.partial(session.run, None, feed)
                    res.ort_baseline_graph = baseline_label or Path(baseline_onnx).name
                    imports = onnx.load(str(baseline_onnx), load_external_data=False).opset_import
                    res.ort_baseline_opset = next(
                        (i.version for i in imports if i.domain in ("", "ai.onnx")), None
                    )
            except Exception as e:  # a failed export is a result to report, not a crash
                res.onnx_error = (
                    f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(e) else type(e).__name__
                )
                runners.pop("ort_baseline", None)
        if runners:
            say(
                f"{spec.name}: {' / '.join(runners)} alternating ({n_threads} threads, {warmup} warm-up + "
                f"{repeats} rounds, load {load_average():.2f})"
            )
            t = alternating_latency(runners, warmup, repeats)
            res.timing = "alternating" if len(runners) > 1 else "alone"
            res.load_start, res.load_end, res.load_attempts = t.load_start, t.load_end, t.attempts
            res.cpu_ms, res.cpu_ms_iqr = t.ms.get("torch"), t.iqr.get("torch")
            res.ort_ms, res.ort_ms_iqr = t.ms.get("ort"), t.iqr.get("ort")
            res.ort_baseline_ms = t.ms.get("ort_baseline")
    if cuda is None:
        cuda = torch.cuda.is_available()
    if cuda:
        res.cuda_device = torch.cuda.get_device_name(cuda_dev) if torch.cuda.is_available() else ""
        try:
            say(f"{spec.name}: CUDA fp32")
            t = cuda_latency(model, x, False, repeats=cuda_repeats, device=cuda_dev)
            res.cuda_fp32_ms, res.cuda_fp32_peak_mib = t
            say(f"{spec.name}: CUDA bf16 autocast")
            t = cuda_latency(model, x, True, repeats=cuda_repeats, device=cuda_dev)
            res.cuda_bf16_ms, res.cuda_bf16_peak_mib = t
        except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
            res.cuda_error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        finally:
            model.cpu()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return res


def paper_gmacs_cell(r: BenchResult) -> str:
    """The paper's GMACs beside ours *at the paper's setting*, saying the setting when it is not this row's.

    ``12.38 | 32.50 (0.979×)`` would put a ratio taken at another input size beside our number at
    this one; so: ``32.50 (0.979×)`` when this row is at the paper's setting (the GMACs column is
    ours there), else ``32.50 at 1×C×D×H×W: ours 31.82 (0.979×)``.
    """
    if not r.paper_gmacs:
        return "—"
    pr = ratio(r.gmacs_paper_setting, r.paper_gmacs)
    same = (
        r.paper_setting == r.input_shape
        and r.gmacs_paper_setting == r.gmacs
        and r.params_paper_setting in (None, r.params)
    )
    if same:
        return f"{r.paper_gmacs:.2f}" + (f" ({pr:.3f}×)" if pr else "")
    ours = "—" if r.gmacs_paper_setting is None else f"{r.gmacs_paper_setting:.2f}"
    return f"{r.paper_gmacs:.2f} at 1×{r.paper_setting}: ours {ours}" + (f" ({pr:.3f}×)" if pr else "")


def ratio(ours: float | None, paper: float | None) -> float | None:
    """``ours / paper`` or None when either is missing or zero."""
    if not ours or not paper or (isinstance(paper, float) and math.isnan(paper)):
        return None
    return float(ours) / float(paper)
