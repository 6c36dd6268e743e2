"""The GPU rows of RESULTS.md in one short run: parity, precision, latency, onnxruntime, a study.

Prepared on a machine without a GPU and tested there with ``--device cpu`` (the slow test set);
on one data-centre GPU the default run is meant to take under 8 minutes. Four checks, each
writing rows to ``benchmarks/results/gpu-<machine>.csv`` (``check, model, input, device,
precision, metric, value, note``), which ``benchmarks/run_all.py`` turns into RESULTS.md's GPU
section:

* ``parity``: every registered model (random weights, seeded) on the device against the same
  model on the CPU, fp32 (max |device − cpu| / max |cpu|, target ≤ 1e-4), and the deviation of
  bf16 and fp16 autocast from the CPU's fp32 (with the share of voxels whose argmax agrees);
* ``latency``: batch 1, fp32 and bf16, at the registered input size and the paper's
  (``zoo.bench.paper_setting``): median ms and peak memory (CUDA: ``max_memory_allocated``);
* ``onnx``: one model per family exported (reduced size), run by onnxruntime on the device's
  provider: parity against PyTorch on the CPU and median latency;
* ``study``: ``zoo.study.predict_study`` on the device against a plain MONAI loop (same model,
  same preprocessing, ``sliding_window_inference`` on the same device): seconds for the study,
  the ratio (target ≥ 1.3×) and how many label voxels differ (0: the label maps are equal).

Usage:
    OMP_WAIT_POLICY=PASSIVE python benchmarks/gpu_check.py --device cuda          # on a lent GPU
    python benchmarks/gpu_check.py --device cpu --size reduced --models fmunet    # the CPU rehearsal
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
RESULTS_DIR = HERE / "results"
FIELDS = [
    "check",
    "model",
    "input",
    "device",
    "precision",
    "metric",
    "value",
    "note",
    "date",
    "torch_version",
]
CHECKS = ("parity", "latency", "onnx", "study")


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d")


class Rows:
    """CSV rows, appended as they come (a run cut short keeps what it measured)."""

    def __init__(self, path: Path, device: str) -> None:
        import torch

        self.path, self.device, self.torch = path, device, torch.__version__
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            csv.DictWriter(f, FIELDS).writeheader()
        self.count = 0

    def add(
        self, check: str, model: str, shape: Any, precision: str, metric: str, value: Any, note: str = ""
    ) -> None:
        row = dict(
            check=check,
            model=model,
            input="1×" + "×".join(map(str, shape)) if shape else "",
            device=self.device,
            precision=precision,
            metric=metric,
            value="" if value is None else (f"{value:.6g}" if isinstance(value, float) else value),
            note=note,
            date=_now(),
            torch_version=self.torch,
        )
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, FIELDS).writerow(row)
        self.count += 1
        print(f"{check:8s} {model:32s} {precision:5s} {metric}: {row['value']} {note}", flush=True)


def _first_tensor(out: Any) -> Any:
    import torch

    if isinstance(out, torch.Tensor):
        return out
    return _first_tensor(out[0] if isinstance(out, list | tuple) else next(iter(out.values())))


def _build(spec: Any, size: str) -> tuple[Any, tuple[int, ...]]:
    import torch

    from zoo.export import reduced_config

    overrides, shape = reduced_config(spec) if size == "reduced" else ({}, tuple(spec.input_size))
    torch.manual_seed(0)
    model = spec.builder(**{**spec.model_args, **overrides}).eval()
    return model, tuple(shape)


def check_parity(rows: Rows, specs: list, device: Any, size: str) -> None:
    import torch

    from zoo.inference import autocast_for

    precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    for spec in specs:
        model, shape = _build(spec, size)
        g = torch.Generator().manual_seed(1)
        x = torch.randn((1, *shape), generator=g)
        with torch.no_grad():
            ref = _first_tensor(model(x)).float()
        model.to(device)
        for p in precisions:
            dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[p]
            try:
                with torch.no_grad(), autocast_for(device, dtype):
                    got = _first_tensor(model(x.to(device))).float().cpu()
            except RuntimeError as e:
                rows.add("parity", spec.name, shape, p, "error", str(e).splitlines()[0][:120])
                continue
            rel = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
            note = "target ≤ 1e-4" if p == "fp32" else ""
            rows.add("parity", spec.name, shape, p, "max_rel_vs_cpu_fp32", rel, note)
            if ref.ndim >= 3 and ref.shape[1] > 1:
                agree = float((got.argmax(1) == ref.argmax(1)).float().mean())
                rows.add("parity", spec.name, shape, p, "argmax_agreement", agree)
        model.cpu()
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _latency(model: Any, x: Any, device: Any, dtype: Any, repeats: int) -> tuple[float, float | None]:
    import torch

    from zoo.bench import cpu_latency, cuda_latency

    if device.type == "cuda":
        if dtype is None or dtype == torch.bfloat16:
            return cuda_latency(model, x, dtype is not None, repeats=repeats, device=device)
        raise ValueError("only fp32 and bf16 are timed")
    from zoo.inference import autocast_for

    with autocast_for(device, dtype):
        ms, _, mib = cpu_latency(model, x, warmup=1, repeats=repeats)
    return ms, mib


def check_latency(rows: Rows, specs: list, device: Any, size: str, repeats: int) -> None:
    import torch

    from zoo.bench import paper_setting

    for spec in specs:
        settings = [("registered", *_build(spec, size))]
        overrides, pshape, _, declared = paper_setting(spec)
        if declared and size != "reduced" and tuple(pshape) != settings[0][2]:
            torch.manual_seed(0)
            settings.append(("paper", spec.builder(**{**spec.model_args, **overrides}).eval(), tuple(pshape)))
        for label, model, shape in settings:
            x = torch.randn((1, *shape))
            for p, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
                try:
                    ms, mib = _latency(model, x, device, dtype, repeats)
                except (RuntimeError, ValueError) as e:
                    rows.add("latency", spec.name, shape, p, "error", str(e).splitlines()[0][:120], label)
                    continue
                rows.add("latency", spec.name, shape, p, "median_ms", ms, label)
                rows.add("latency", spec.name, shape, p, "peak_mib", mib, label)
            model.cpu()
            if device.type == "cuda":
                torch.cuda.empty_cache()


def check_onnx(rows: Rows, specs: list, device: Any, repeats: int, tmp: Path) -> None:
    import torch

    from zoo.export import ExportSettings, to_onnx
    from zoo.onnx_runtime import onnx_providers, onnx_session

    for spec in specs:
        model, shape = _build(spec, "reduced")
        path = tmp / f"{spec.name}.onnx"
        start = time.perf_counter()
        try:
            r = to_onnx(
                model, path, ExportSettings(input_shape=shape, batch_sizes=(1,), check=False), verbose=False
            )
        except Exception as e:  # an export failure is a row, not the end of the run
            rows.add("onnx", spec.name, shape, "fp32", "error", f"{type(e).__name__}: {str(e)[:100]}")
            continue
        rows.add(
            "onnx", spec.name, shape, "fp32", "export_s", time.perf_counter() - start, f"opset {r.opset}"
        )
        providers, note = onnx_providers(device)
        session = onnx_session(path, providers=providers)
        used = session.get_providers()[0]
        x = torch.randn((1, *shape))
        with torch.no_grad():
            ref = _first_tensor(model(x)).float()
        feed = {session.get_inputs()[0].name: x.numpy()}
        got = torch.from_numpy(session.run(None, feed)[0])
        rel = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
        rows.add("onnx", spec.name, shape, "fp32", "max_rel_vs_torch_cpu", rel, used)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            session.run(None, feed)
            times.append((time.perf_counter() - t0) * 1e3)
        rows.add("onnx", spec.name, shape, "fp32", "median_ms", statistics.median(times), used)
        if device.type == "cuda" and used == "CPUExecutionProvider":
            rows.add("onnx", spec.name, shape, "fp32", "fallback", note)


def check_study(rows: Rows, device: Any, tmp: Path, small: bool, cases: int | None) -> None:
    """predict_study on ``device`` against a plain MONAI loop on the same device; labels compared."""
    import nibabel as nib
    import numpy as np
    import predict_study as ps  # benchmarks/predict_study.py: the volumes, the model, the MONAI recipe
    import torch

    from zoo.study import StudySettings, predict_study

    paths = ps.make_volumes(tmp / "in", small)[:cases]
    model = ps.build_model()
    settings = StudySettings(roi_size=ps.ROI, overlap=ps.OVERLAP, device=str(device), num_workers=None)
    start = time.perf_counter()
    res = predict_study(model, paths, tmp / "zoo", settings, progress=False)
    ours = time.perf_counter() - start
    if res.failed:
        rows.add("study", "fmunet-study", (), "fp32", "error", next(iter(res.failed.values()))[:120])
        return
    start = time.perf_counter()
    _monai_loop(ps, paths, tmp / "monai", device)
    theirs = time.perf_counter() - start
    differ = 0
    for p in paths:
        a = np.asarray(nib.load(tmp / "zoo" / _gz(p)).dataobj)
        b = np.asarray(nib.load(tmp / "monai" / _gz(p)).dataobj)
        differ += int((a != b).sum())
    what = f"{len(paths)} volumes, {ps.ROI} windows"
    rows.add("study", "fmunet-study", (), "fp32", "zoo_s", ours, what)
    rows.add("study", "fmunet-study", (), "fp32", "monai_loop_s", theirs, what)
    rows.add("study", "fmunet-study", (), "fp32", "speedup", theirs / ours, "target ≥ 1.3")
    rows.add("study", "fmunet-study", (), "fp32", "differing_label_voxels", differ, "0: labels equal")
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _gz(p: Path) -> str:
    return p.name if p.name.endswith(".gz") else p.name + ".gz"


def _monai_loop(ps: Any, paths: list[Path], out: Path, device: Any) -> None:
    import nibabel as nib
    import numpy as np
    import torch
    from monai import transforms as T
    from monai.data import MetaTensor
    from monai.inferers import sliding_window_inference

    model = ps.build_model().to(device)
    pre = T.Compose(
        [
            T.LoadImaged("image", image_only=True),
            T.EnsureChannelFirstd("image"),
            T.Orientationd("image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            T.Spacingd("image", pixdim=ps.SPACING, mode="bilinear"),
            T.NormalizeIntensityd("image", nonzero=True, channel_wise=True),
        ]
    )
    out.mkdir(parents=True, exist_ok=True)
    for p in paths:
        d = pre({"image": str(p)})
        x = d["image"]
        with torch.inference_mode():
            logits = sliding_window_inference(
                x.as_tensor()[None].to(device), ps.ROI, 1, model, overlap=ps.OVERLAP, mode="gaussian"
            )[0].cpu()
        d["image"] = MetaTensor(logits, meta=x.meta, applied_operations=x.applied_operations)
        labels = pre.inverse(d)["image"].as_tensor().argmax(0).numpy().astype(np.uint8)
        src = nib.load(p)
        header = src.header.copy()
        header.set_data_dtype(np.uint8)
        nib.save(nib.Nifti1Image(labels, src.affine, header), out / _gz(p))


def _one_per_family(specs: list) -> list:
    seen: dict[str, Any] = {}
    for s in specs:
        seen.setdefault(s.family, s)
    return list(seen.values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, cpu (the rehearsal) or auto")
    p.add_argument("--size", choices=["registered", "reduced"], default="registered")
    p.add_argument("--models", default="", help="comma-separated names (default: every registered model)")
    p.add_argument("--checks", default=",".join(CHECKS), help=f"comma-separated, of {', '.join(CHECKS)}")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--small-study", action="store_true", help="the study's smaller volumes")
    p.add_argument("--study-cases", type=int, default=None, help="the study's first N volumes (default: all)")
    p.add_argument("--out", default=None, help="CSV to write (default: results/gpu-<machine>.csv)")
    a = p.parse_args(argv)

    import torch

    from zoo._registry import iter_specs
    from zoo.bench import machine_id
    from zoo.inference import resolve_device

    device = resolve_device(a.device)  # refused in one line when not there
    checks = [c for c in a.checks.split(",") if c]
    unknown = set(checks) - set(CHECKS)
    if unknown:
        p.error(f"unknown checks {sorted(unknown)}; expected {', '.join(CHECKS)}")
    wanted = [n for n in a.models.split(",") if n]
    specs = [s for s in iter_specs() if s.input_size is not None and (not wanted or s.name in wanted)]
    if wanted and len(specs) != len(wanted):
        p.error(f"unknown models among {wanted}")
    tag = "cpu-rehearsal" if device.type == "cpu" else "gpu"
    out = Path(a.out) if a.out else RESULTS_DIR / f"{tag}-{machine_id()}.csv"
    rows = Rows(out, str(device) if device.type == "cpu" else torch.cuda.get_device_name(device))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for c in checks:
            t0 = time.perf_counter()
            if c == "parity":
                check_parity(rows, specs, device, a.size)
            elif c == "latency":
                check_latency(rows, specs, device, a.size, a.repeats)
            elif c == "onnx":
                check_onnx(rows, _one_per_family(specs), device, a.repeats, tmp)
            else:
                sys.path.insert(0, str(HERE))
                check_study(rows, device, tmp, a.small_study, a.study_cases)
            print(f"-- {c}: {time.perf_counter() - t0:.0f} s", flush=True)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"{rows.count} rows in {out} ({time.perf_counter() - start:.0f} s, load {load})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
