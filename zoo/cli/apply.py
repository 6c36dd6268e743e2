"""``zoo predict``, ``demo``, ``export``, ``bench``: running a model, exporting it, measuring it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from zoo._registry import list_models
from zoo.cli._base import JSON, UsageError, arg, command, human_output, report, table


def _parse_intensity(text: str) -> dict:
    """``--intensity``: a kind name, JSON, or ``clip:a,b,c,d`` (``zoo.transforms.parse_intensity``)."""
    from zoo.transforms import parse_intensity

    return parse_intensity(text)


def _device_args(what: str) -> list:
    """``--device`` and ``--precision``, shared by the commands that compute."""
    return [
        arg(
            "--device",
            default="auto",
            help=f"where {what} runs: auto (CUDA when present; under torchrun the rank's LOCAL_RANK GPU), "
            "cpu, cuda or cuda:N",
        ),
        arg(
            "--precision",
            choices=["fp32", "bf16", "fp16"],
            default="fp32",
            help="autocast precision of the forwards (fp16 needs CUDA; bf16 deviates from fp32)",
        ),
    ]


@command(
    "predict",
    help="segment a NIfTI volume or a whole study (folder, datalist, glob) into label maps",
    args=[
        arg("name", help="name, name.tag, hf-hub:ORG/NAME or an exported FILE.onnx"),
        arg(
            "-i",
            "--input",
            required=True,
            nargs="+",
            help="a scan (.nii/.nii.gz, .nrrd, .mha, a DICOM series folder), several files of one case "
            "(one per channel, in the model's channel order), a folder, a datalist .json or a 'glob'",
        ),
        arg(
            "--output-format",
            choices=["same", "nifti"],
            default="same",
            help="a study's label maps: in each scan's format (NRRD, MetaImage; NIfTI for NIfTI and DICOM) "
            "or all NIfTI",
        ),
        arg("-o", "--output", required=True, help="the label map file (one input) or folder (a study)"),
        arg("--checkpoint", default=None, help="a checkpoint file or run folder"),
        arg("--no-weights", action="store_true", help="random initialisation (pipeline check)"),
        arg(
            "--allow-untrained-head",
            action="store_true",
            help="predict even with encoder-only weights or a newly initialised head (labels are random)",
        ),
        arg("--spacing", type=float, nargs=3, default=None, help="resample to this spacing (mm)"),
        arg("--overlap", type=float, default=None, help="sliding-window overlap in [0, 1)"),
        arg(
            "--sw-batch-size",
            type=int,
            default=None,
            help="windows per forward (>= 1; default 2: keeps two CPU threads or a GPU busy; equal to 1 "
            "up to float rounding)",
        ),
        arg(
            "--intensity",
            default=None,
            help="override the weights' intensity transform: zscore_nonzero, zscore, none, clip:a,b,c,d "
            "or JSON such as "
            '\'{"kind": "clip_scale", "a_min": -1000, "a_max": 1000, "b_min": -1, "b_max": 1}\'',
        ),
        arg(
            "--roi-size", type=int, nargs="+", default=None, help="sliding-window size (default: the model's)"
        ),
        arg("--volume", type=int, default=None, help="the volume of a 4D series to segment (0-based)"),
        arg("--slice-axis", choices=["x", "y", "z"], default=None, help="2D models: slice along it"),
        arg("--max-memory-gb", type=float, default=None, help="memory budget (default: half the RAM)"),
        arg("--max-windows", type=int, default=None, help="window cap per volume (default 5000)"),
        arg(
            "--workers",
            type=int,
            default=None,
            help="a study: processes reading the next volumes (default: 1 when a core is left over by the "
            "model's threads, else 0)",
        ),
        arg("--preview", action="store_true", help="also write a PNG of mid-slices + labels"),
        *_device_args("the model"),
        arg(
            "--stitch-on",
            choices=["cpu", "device"],
            default=None,
            help="where the stitched logits live (default: on the GPU when they fit in a quarter of its "
            "free memory, else the CPU)",
        ),
        arg(
            "--tensorrt",
            action="store_true",
            help="FILE.onnx on a GPU: prefer onnxruntime's TensorRT provider",
        ),
        JSON,
    ],
    interrupted=lambda a, e: "interrupted; rerun the same command to resume (finished cases are kept)",
)
def cmd_predict(a: argparse.Namespace) -> int:
    """Segment one scan, or a whole study; every check runs before weights are fetched."""
    from zoo import predict_checks as C
    from zoo import study as S
    from zoo.inference import resolve_device, resolve_precision
    from zoo.plan import NoPretrainedWeightsError, plan
    from zoo.predict import PredictSettings, predict_nifti

    # A device that is not there: refused before any file is read or anything downloaded.
    device = resolve_device(a.device)
    resolve_precision(a.precision, device)
    intensity = _parse_intensity(a.intensity) if a.intensity else None
    try:  # the request, resolved once: registry, file, run folder, Hub repository (its config only) or ONNX
        p = plan(a.name, checkpoint=a.checkpoint, pretrained=not a.no_weights and a.checkpoint is None)
    except NoPretrainedWeightsError:  # the API's message names pretrained=False: say the flags
        spec = plan(a.name).spec
        why = f" ({spec.no_weights_reason.rstrip('.')})" if spec.no_weights_reason else ""
        raise ValueError(
            f"{spec.name} has no pretrained weights{why}: predict with --checkpoint FILE_OR_RUN (your "
            "own, e.g. from zoo finetune), or --no-weights to check the pipeline with random weights"
        ) from None
    cfg = p.planned_cfg()
    kw = dict(
        roi_size=tuple(a.roi_size) if a.roi_size else None,
        overlap=a.overlap,
        sw_batch_size=a.sw_batch_size,
        spacing_mm=tuple(a.spacing) if a.spacing else None,
        intensity=intensity,
        slice_axis={"x": 0, "y": 1, "z": 2}[a.slice_axis] if a.slice_axis else None,
    )
    s = C.resolve_settings(cfg, **kw)
    budget = dict(max_memory_gb=a.max_memory_gb, max_windows=a.max_windows)
    # The user's files first (the input exists and is readable, the output can be written), then
    # what the model's weights cover, then the budget.
    if len(a.input) > 1:  # one case, one file per channel, stacked in the order given
        a.input = [Path(f) for f in a.input]
    else:
        a.input = a.input[0]
    study = not isinstance(a.input, list) and S.is_study(a.input)
    if study:
        S.study_cases(a.input, a.output, nifti=a.output_format == "nifti")
    else:
        C.check_output(a.input, a.output)
        info = C.inspect_input(a.input, s.in_chans, a.volume)
    if p.source in ("registry", "hf-hub", "onnx"):  # a file or run of one's own is what one trained
        C.check_weights_trained(cfg["weights"], p.id, a.allow_untrained_head)
    if a.preview:
        from zoo.plots import require_matplotlib

        require_matplotlib()
    if not study:
        C.check_budget(C.estimate(info, s), info, s, **budget)
    # Every check passed: now weights may be downloaded and the model built.
    if p.source == "onnx":
        from zoo.onnx_runtime import load_onnx

        model = load_onnx(p.path, device=device, tensorrt=a.tensorrt)
        print(model.provider_note, file=sys.stderr)
    else:
        from zoo._factory import create_from_plan

        model = create_from_plan(p)
    common = dict(kw, volume=a.volume, allow_untrained_head=a.allow_untrained_head, preview=a.preview)
    common.update(device=str(device), precision=a.precision, stitch_on=a.stitch_on)
    common.update(budget)
    if not study:
        r = predict_nifti(model, a.input, a.output, PredictSettings(**common), progress=not a.quiet)
        report(a, _prediction_line(r), r)
        return 0

    def said(path: Path, r: object | None, err: str | None) -> None:
        if r is not None and (a.json or not a.quiet):  # --json: one object per case, then the summary
            report(a, _prediction_line(r), {"input": path, **vars(r)})

    res = S.predict_study(
        model,
        a.input,
        a.output,
        S.StudySettings(**common, num_workers=a.workers, output_format=a.output_format),
        progress=not a.quiet,
        on_case=said,
    )
    summary = {"cases": res.cases, "written": len(res.written), "skipped": res.skipped, "failed": res.failed}
    report(
        a,
        f"{res.cases} case(s): {len(res.written)} written, {len(res.skipped)} already there (skipped), "
        f"{len(res.failed)} failed",
        summary,
    )
    for path, err in res.failed.items():
        print(f"  failed: {path}: {err}", file=sys.stderr)
    return 1 if res.failed else 0


def _prediction_line(r: object) -> str:
    extra = f", {r.nonfinite_voxels} non-finite voxel(s) set to 0" if r.nonfinite_voxels else ""
    if r.foreground_share is not None:
        extra += f", z-score foreground {100 * r.foreground_share:.0f} % of voxels"
    if r.preview:
        extra += f", preview {r.preview}"
    return (
        f"wrote {r.output}: labels {sorted(r.label_voxels)} on the input grid {r.input_shape[1:]} "
        f"({r.num_windows} windows of {'×'.join(map(str, r.roi_size))}, intensity {r.intensity.get('kind')}, "
        f"{r.seconds:.1f} s{extra})"
    )


@command(
    "demo",
    help="run a model on a sample volume shipped with nilearn (no network)",
    args=[
        arg("name", nargs="?", default="qtunet-t", help="model name or name.tag (default: qtunet-t)"),
        arg("--spacing", type=float, default=2.0, help="isotropic resampling (mm) for speed"),
        arg("-o", "--output", default=None, help="label map to write (default: a temporary folder)"),
        *_device_args("the model"),
    ],
)
def cmd_demo(a: argparse.Namespace) -> int:
    """Build a model, run it on a real volume an installed package ships, say what it found."""
    import os

    from zoo.inference import resolve_device, resolve_precision

    device = resolve_device(a.device)  # refused in one line before anything is built
    resolve_precision(a.precision, device)
    # The demo never touches the network: cached weights or none (restored after: `main` may run in-process).
    offline = os.environ.get("MEDZOO_OFFLINE")
    os.environ["MEDZOO_OFFLINE"] = "1"
    try:
        return _demo(a, device)
    finally:
        if offline is None:
            os.environ.pop("MEDZOO_OFFLINE", None)
        else:
            os.environ["MEDZOO_OFFLINE"] = offline


def _demo(a: argparse.Namespace, device: Any) -> int:
    import tempfile

    import torch

    from zoo._factory import create_from_plan
    from zoo.hub import WeightsUnavailableError
    from zoo.plan import NoPretrainedWeightsError, plan
    from zoo.predict import PredictSettings, predict_nifti, sample_volume_path
    from zoo.predict_checks import check_weights_trained

    try:  # resolved once: the named (or default) weights when the model has any
        wanted = plan(a.name, pretrained=True)
    except NoPretrainedWeightsError:
        wanted = plan(a.name)
    spec = wanted.spec
    torch.manual_seed(0)  # with random weights: the same ones (and label counts) on every run
    try:
        if wanted.source == "none":
            raise WeightsUnavailableError("no weights registered")
        model = create_from_plan(wanted)
        weights = f"weights {model.pretrained_cfg['tag']} (from the cache)"
    except WeightsUnavailableError:
        torch.manual_seed(0)
        model = create_from_plan(wanted.without_weights())
        weights = "random initialisation (no weights cached; `zoo download` fetches them)"
    try:
        check_weights_trained(model.pretrained_cfg.get("weights"), spec.name)
    except ValueError:
        weights += "; they cover only part of the model, so the labels are random until fine-tuned"
    src = sample_volume_path()
    out = Path(a.output or Path(tempfile.mkdtemp(prefix="zoo-demo-")) / "segmentation.nii.gz")
    try:
        from zoo.plots import require_matplotlib

        require_matplotlib()
        preview = True
    except RuntimeError as e:
        preview = False
        print(f"no preview picture: {e}")
    print(f"model: {spec.name}, {spec.meta.get('num_params', 0) / 1e6:.2f} M parameters, {weights}")
    print(f"input: {src.name} (MNI152 T1 template shipped with nilearn)")
    asked = PredictSettings(
        spacing_mm=(a.spacing,) * 3,
        preview=preview,
        allow_untrained_head=True,
        device=str(device),
        precision=a.precision,
    )
    r = predict_nifti(model, src, out, asked, progress=False)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"volume {r.input_shape[1:]} at {r.spacing_mm} mm → model grid {r.model_grid_shape} "
        f"at {a.spacing} mm, {r.num_windows} sliding windows, {r.seconds:.1f} s on {device} ({where}, "
        f"{a.precision})"
    )
    top = sorted(r.label_voxels.items(), key=lambda kv: -kv[1])[:5]
    print("voxels per predicted label (top 5): " + ", ".join(f"{k}: {v}" for k, v in top))
    print(f"label map written on the input grid with its affine: {r.output}")
    if r.preview:
        print(f"preview (three mid-slices with the labels): {r.preview}")
    return 0


@command(
    "export",
    help="export to ONNX and check it against PyTorch with onnxruntime",
    args=[
        arg("name", help="name or name.tag"),
        arg("-o", "--output", required=True, help="the .onnx file to write"),
        arg("--tag", default=None, help="weights tag to load (default: none, random weights)"),
        arg("--pretrained", action="store_true", help="load the default weights tag"),
        arg("--checkpoint", default=None, help="local checkpoint to load"),
        arg(
            "--input-shape",
            type=int,
            nargs="+",
            action="append",
            default=None,
            metavar="N",
            help="input shape without batch, e.g. 1 96 96 96 (default: the model's); repeat "
            "the option to declare several sizes: spatial axes then become dynamic and each "
            "is checked",
        ),
        arg("--img-size", type=int, nargs="+", default=None, help="build the model for this size"),
        arg("--num-classes", type=int, default=None, help="output classes (default: the model's)"),
        arg(
            "--opset",
            type=int,
            default=None,
            help="ONNX opset (default 23 for dynamo: the fused Attention node, onnxruntime >= 1.23); below "
            "23, e.g. 20, attention is spelled as MatMul/Softmax for older runtimes (onnxruntime >= 1.17)",
        ),
        arg(
            "--exporter",
            choices=["auto", "dynamo", "torchscript"],
            default="auto",
            help="torch.onnx exporter; auto tries dynamo, then torchscript",
        ),
        arg("--rtol", type=float, default=1e-4, help="tolerance relative to the output's scale"),
        arg("--no-check", action="store_true", help="skip the onnxruntime parity check"),
        arg(
            "--dynamic-spatial",
            action="store_true",
            help="spatial axes dynamic too (checked at a second size); refused for models built for one size",
        ),
        arg(
            "--device",
            default="cpu",
            help="where onnxruntime runs the parity check: cpu (default), auto, cuda or cuda:N",
        ),
        arg(
            "--graph-passes",
            choices=["fold", "exporter"],
            default="fold",
            help="fold: constant folding and unused-node removal only (fast, default); exporter: the "
            "dynamo exporter's full optimiser with its rewrite rules",
        ),
        JSON,
    ],
)
def cmd_export(a: argparse.Namespace) -> int:
    from zoo._optional import require
    from zoo.export import ExportSettings, to_onnx
    from zoo.inference import resolve_device
    from zoo.plan import plan

    require("onnx", "onnxruntime", extra="onnx", feature="ONNX export")  # before any other line is printed
    resolve_device(a.device)  # a device that is not there: refused before any build

    kwargs = {"img_size": tuple(a.img_size) if len(a.img_size) > 1 else a.img_size[0]} if a.img_size else {}
    if a.num_classes is not None:
        kwargs["num_classes"] = a.num_classes
    # The request, resolved once: NAME, NAME.TAG, --tag, --pretrained, --checkpoint or a hf-hub: id.
    p = plan(a.name, weights=a.tag, checkpoint=a.checkpoint, pretrained=a.pretrained, **kwargs)
    if p.source == "onnx":
        raise UsageError(f"{a.name} is an exported file already; export a model name, run or hf-hub: id")
    if p.source == "none":
        print(
            f"{p.spec.name}: exporting the architecture with random weights (no tag given)", file=sys.stderr
        )
    shapes = [tuple(s) for s in a.input_shape] if a.input_shape else None
    with human_output(a):
        r = to_onnx(
            p,
            a.output,
            ExportSettings(
                input_shapes=shapes,
                opset=a.opset,
                exporter=a.exporter,
                rtol=a.rtol,
                check=not a.no_check,
                dynamic_spatial=a.dynamic_spatial,
                device=a.device,
                graph_passes=a.graph_passes,
            ),
        )
    axes = "batch and spatial axes dynamic" if r.dynamic_spatial else "batch axis dynamic, spatial axes fixed"
    if a.json:
        report(
            a,
            "",
            {
                **vars(r),
                "max_abs": r.max_abs if r.parity else None,
                "max_rel": r.max_rel if r.parity else None,
            },
        )
        return 0
    print(f"wrote {r.path} ({r.exporter} exporter, opset {r.opset}, {axes}; export {r.export_seconds:.1f} s)")
    if r.fallback_reason:
        print(f"  fell back to {r.exporter}: {r.fallback_reason}")
    if r.parity:
        print(
            f"  onnxruntime vs PyTorch: max abs diff {r.max_abs:.3e}, max rel diff {r.max_rel:.3e} "
            f"(tolerance {r.rtol:g} of the output scale)"
        )
    return 0


@command(
    "bench",
    help="parameters, FLOPs/MACs, latency and memory (CPU, CUDA, onnxruntime)",
    args=[
        arg("name", help="a model name or a glob ('qtunet-*')"),
        arg("--input-shape", type=int, nargs="+", default=None, help="input without batch"),
        arg("--img-size", type=int, nargs="+", default=None, help="build the model for this size"),
        arg("--threads", type=int, default=None, help="CPU threads (default: torch's)"),
        arg("--warmup", type=int, default=1, help="untimed forward passes first"),
        arg("--repeats", type=int, default=5, help="timed forward passes (the median is reported)"),
        arg("--no-cpu", action="store_true", help="skip PyTorch CPU timing"),
        arg("--no-onnx", action="store_true", help="skip the ONNX export and onnxruntime timing"),
        arg("--no-cuda", action="store_true", help="skip CUDA even when available"),
        arg("--device", default=None, help="cpu (no CUDA), cuda or cuda:N (time there), auto; default: auto"),
        arg("--opset", type=int, default=None, help="ONNX opset of the timed export"),
        arg(
            "--baseline-opset",
            type=int,
            default=None,
            help="also time an export at this opset in the same alternating rounds (before/after)",
        ),
        arg(
            "--baseline-onnx",
            default=None,
            help="also time this exported file (same input) in the same alternating rounds, e.g. an "
            "older export",
        ),
        arg("--baseline-label", default=None, help="what --baseline-onnx is (e.g. main)"),
        arg("--json", action="store_true", help="one JSON object per model"),
    ],
)
def cmd_bench(a: argparse.Namespace) -> int:
    import dataclasses
    import os

    from zoo.bench import BenchSettings, benchmark, ratio
    from zoo.plan import plan

    if a.device is not None:  # a device that is not there: refused before any model is planned
        from zoo.inference import resolve_device

        resolve_device(a.device)
    glob = any(ch in a.name for ch in "*?[") and not a.name.startswith("hf-hub:")
    # Each model resolved once: a name, NAME.TAG (those weights), a run folder or a hf-hub: id (its config).
    names = [plan(n) for n in list_models(a.name)] if glob else [plan(a.name)]
    if not names:
        print(f"no model matches {a.name!r}", file=sys.stderr)
        return 1
    kwargs = {"img_size": tuple(a.img_size) if len(a.img_size) > 1 else a.img_size[0]} if a.img_size else {}
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE" and not a.no_cpu:
        # libgomp reads the policy when torch is imported: too late to set it from here.
        print(
            "zoo bench: OMP_WAIT_POLICY is not PASSIVE, so PyTorch's idle threads spin-wait (onnxruntime's "
            "do not); run as OMP_WAIT_POLICY=PASSIVE zoo bench … for a fair comparison",
            file=sys.stderr,
        )
    rows = []
    for n in names:
        r = benchmark(
            n,
            BenchSettings(
                input_shape=a.input_shape,
                model_kwargs=kwargs,
                warmup=a.warmup,
                repeats=a.repeats,
                threads=a.threads,
                cpu=not a.no_cpu,
                onnx=not a.no_onnx,
                cuda=False if a.no_cuda else None,
                onnx_opset=a.opset,
                baseline_opset=a.baseline_opset,
                baseline_onnx=a.baseline_onnx,
                baseline_label=a.baseline_label or "",
                device=a.device,
            ),
            log=(lambda s: print(s, file=sys.stderr)) if not a.quiet else None,
        )
        rows.append(r)
        if a.json:
            print(json.dumps(dataclasses.asdict(r)))  # row() writes "" for the CSV; JSON keeps null
    if a.json:
        return 0
    fmt = lambda v, f: "—" if v is None else format(v, f)  # noqa: E731
    rows_out = []
    for r in rows:
        pr = ratio(r.gmacs_paper_setting, r.paper_gmacs)
        rows_out.append(
            [
                r.name,
                f"1×{r.input_shape}",
                f"{r.params / 1e6:.2f}M",
                f"{r.gmacs:.2f}",
                f"{fmt(r.paper_gmacs, '.2f')}" + (f" ({pr:.3f}×)" if pr else ""),
                fmt(r.cpu_ms, ".0f"),
                fmt(r.cpu_peak_mib, ".0f"),
                fmt(r.ort_ms, ".0f"),
                fmt(ratio(r.ort_ms, r.cpu_ms), ".2f"),
                "—" if r.load_start is None else f"{r.load_start:.2f}→{r.load_end:.2f}",
                fmt(r.cuda_fp32_ms, ".1f"),
                fmt(r.cuda_bf16_ms, ".1f"),
                fmt(r.cuda_fp32_peak_mib, ".0f"),
            ]
        )
    header = [
        "name",
        "input",
        "params",
        "GMACs",
        "paper GMACs (ratio)",
        f"CPU ms ({rows[0].cpu_threads}t)",
        "CPU MiB",
        "ORT ms",
        "ORT/torch",
        "load",
        "CUDA fp32 ms",
        "CUDA bf16 ms",
        "CUDA MiB",
    ]
    print(table(rows_out, header))
    for r in rows:
        if r.onnx_error:
            print(f"{r.name}: ONNX: {r.onnx_error}", file=sys.stderr)
        if r.cuda_error:
            print(f"{r.name}: CUDA: {r.cuda_error}", file=sys.stderr)
        if r.paper_gmacs and not r.paper_setting_declared:
            print(
                f"{r.name}: the registry declares no paper setting; paper GMACs compared at "
                f"1×{r.input_shape}",
                file=sys.stderr,
            )
    return 0
