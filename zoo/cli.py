"""The ``zoo`` command line.

Exit status, as Unix tools: 0 success; 2 usage error: the request cannot work as given (a bad
option, an unknown model name, an argument, input or checkpoint the model cannot take: a
``ValueError``; a licence refusal that needs ``--permission-obtained``: a ``PermissionError``);
1 runtime failure: the environment failed (network, disk, a missing file, a missing extra:
``OSError``, ``RuntimeError``, ``ImportError``); 130 interrupted; a
reader that closes the pipe early (``zoo list | head -1``) ends it quietly with 141.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from zoo._registry import UnknownNameError, aliases_of, get_spec, list_models, resolve
from zoo.layers.checks import InvalidArgumentError

_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 130, 141


class UsageError(ValueError):
    """A command line that cannot work as given (exit status 2)."""


def _command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    _COMMANDS[fn.__name__.removeprefix("cmd_")] = fn
    return fn


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _list_entry(name: str) -> dict[str, Any]:
    """One ``zoo list --json`` object: missing values are null, numbers are numbers."""
    spec = get_spec(name)
    return {
        "name": name,
        "family": spec.family,
        "num_params": spec.meta.get("num_params"),
        "gmacs": spec.meta.get("gmacs"),
        "input_size": list(spec.input_size) if spec.input_size else None,
        "tags": spec.tags,
        "default_tag": spec.default_tag,
        "weights_available": any(w.available for w in spec.weights),
        "aliases": aliases_of(name),
    }


@_command
def cmd_list(a: argparse.Namespace) -> int:
    names = list_models(a.pattern, pretrained=a.pretrained)
    if not names:
        print(f"zoo list: no model matches {a.pattern!r}", file=sys.stderr)
        return EXIT_FAILURE
    if a.json:
        print(json.dumps([_list_entry(n) for n in names], indent=2))
        return EXIT_OK
    rows = []
    for n in names:
        spec = get_spec(n)
        params = spec.meta.get("num_params")
        tags = ", ".join(f"{w.tag}{'*' if w.tag == spec.default_tag else ''}" for w in spec.weights)
        avail = "yes" if any(w.available for w in spec.weights) else "no"
        alias = ", ".join(aliases_of(n))
        rows.append([n, spec.family, f"{params / 1e6:.2f}M" if params else "?", tags or "—", avail, alias])
    print(_table(rows, ["name", "family", "params", "tags (*default)", "weights", "aliases"]))
    return EXIT_OK


@_command
def cmd_info(a: argparse.Namespace) -> int:
    from zoo.info import model_info

    if a.name.startswith("hf-hub:"):  # a published repository: what it holds, then its model's info
        from zoo.hub_repo import fetch_config

        repo_id, _, commit, hub_cfg = fetch_config(a.name)
        keys = ("model_name", "tag", "covers", "license", "redistributable", "derived_from", "sha256")
        print(f"{a.name}: commit {commit}; " + "; ".join(f"{k}: {hub_cfg.get(k)}" for k in keys))
        a.name = str(hub_cfg["model_name"])
    info = model_info(a.name)
    if a.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    m = info["meta"]
    print(f"{info['name']}  ({info['family']})  torch.hub entrypoint: {info['hub_entrypoint']}")
    if info["aliases"]:
        print(f"aliases: {', '.join(info['aliases'])}")
    print(info["description"])
    print(f"paper: {info['paper']['title']} ({info['paper']['venue']} {info['paper']['year']})")
    print(f"config: {json.dumps(info['model_args'])}")
    print(f"input size: {info['input_size']}")
    if m.get("num_params"):
        print(
            f"parameters: {m['num_params']:,}"
            + (f" (paper: {m['paper_params']:,})" if m.get("paper_params") else "")
        )
    if m.get("gmacs"):
        print(f"GMACs at input size: {m['gmacs']:.2f}")
    if not info["weights"]:
        print(f"weights: none. {info['no_weights_reason'] or ''}")
    for w in info["weights"]:
        star = " (default)" if w["default"] else ""
        print(f"\nweights {info['name']}.{w['tag']}{star}")
        print(f"  pretraining: {w['pretraining']}")
        print(
            f"  covers: {w['covers']}; in_chans: {w['in_chans']}; licence: {w['license']}"
            f" ({'redistributable' if w['redistributable'] else 'not redistributable'})"
        )
        if w["hf_hub_id"]:
            print(
                f"  hub: {w['hf_hub_id']}/{w['hf_filename']} @ {w['hf_revision'] or 'main'}"
                f" sha256 {w['sha256'] or 'unpinned'}"
            )
        if w["url"]:
            print(f"  upstream: {w['url']}")
            print(f"  upstream digest: {w['upstream_digest'] or 'unpinned (none published)'}")
        if w["preprocessing"]:
            print(f"  preprocessing: {json.dumps(w['preprocessing'])}")
    return 0


@_command
def cmd_download(a: argparse.Namespace) -> int:
    from zoo.convert import CheckpointFormatError
    from zoo.hub import (
        DigestMismatchError,
        WeightsUnavailableError,
        fetch_weights,
        file_digest,
        registry_digest_line,
    )

    spec, tag = resolve(a.name)
    tag = tag or spec.default_tag
    if tag is None:
        print(f"{spec.name} has no weights. {spec.no_weights_reason or ''}", file=sys.stderr)
        return 2
    ws = spec.weight(tag)
    try:
        path = fetch_weights(spec, ws, progress=not a.quiet)
    except (WeightsUnavailableError, DigestMismatchError, CheckpointFormatError, OSError) as e:
        # Network and content failures are one line for the user, never a traceback.
        print(f"zoo download: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    if a.print_digest:
        print(registry_digest_line(spec, ws, path))
        return 0
    print(f"{spec.name}.{tag}: {path} (sha256 {file_digest(path)})")
    return 0


@_command
def cmd_convert(a: argparse.Namespace) -> int:
    from zoo._factory import load_weights
    from zoo.convert import convert_checkpoint, read_checkpoint
    from zoo.hub import save_safetensors

    src, out = Path(a.checkpoint), Path(a.output)
    spec, _ = resolve(a.model)
    if src.is_dir():
        raise UsageError(
            f"{src} is a folder; zoo convert takes one checkpoint file (.pt, .pth, .safetensors)"
        )
    if out.is_dir():
        raise UsageError(f"-o {out} is a folder; give the .safetensors file to write")
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise UsageError(f"-o {out} is the input checkpoint itself; write the conversion to another file")
    sd = convert_checkpoint(read_checkpoint(src), spec)
    # Check the converted keys against the architecture before writing anything.
    args = dict(spec.model_args)
    for conv in spec.first_convs:
        w = sd.get(f"{conv}.weight")
        if w is not None and "in_chans" in args:
            args["in_chans"] = w.shape[1]
    report = load_weights(spec.builder(**args), sd, spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(sd, out, metadata={"model": spec.name})  # a unique temporary name per writer
    extra = f"; not in checkpoint: {len(report.newly_initialised)} (covers {report.covers})"
    print(f"wrote {out}: {len(sd)} tensors for {spec.name}{extra if report.newly_initialised else ''}")
    return 0


@_command
def cmd_publish(a: argparse.Namespace) -> int:
    from zoo.publish import publish, publish_run

    out = a.out or Path(a.repo.replace("/", "__"))
    if Path(a.name).is_dir():  # a zoo finetune / pretrain run folder
        if a.checkpoint:
            raise ValueError(
                "--checkpoint goes with name.tag, not with a run folder (its checkpoint is in it)"
            )
        path = publish_run(
            a.name,
            a.repo,
            out,
            dry_run=a.dry_run,
            permission_obtained=a.permission_obtained,
            revision=a.revision,
            license=a.license,
        )
    else:
        if a.license:
            raise ValueError("--license goes with a run folder; a registered tag keeps its own licence")
        path = publish(
            a.name,
            a.repo,
            out,
            dry_run=a.dry_run,
            checkpoint_path=a.checkpoint,
            permission_obtained=a.permission_obtained,
            revision=a.revision,
        )
    files = ", ".join(sorted(p.name for p in Path(path).iterdir()))
    if a.dry_run:
        print(f"wrote {path}: {files}")
    else:
        print(f"uploaded {files} to {a.repo} (copy in {path}); load with zoo.create('hf-hub:{a.repo}')")
    return 0


@_command
def cmd_card(a: argparse.Namespace) -> int:
    from zoo.cards import CARDS_DIR, stale_cards, write_cards

    if a.out:
        out = Path(a.out)
    else:
        # The default is the source checkout's model_cards/, and only when run from inside that
        # checkout: in an installed package it would land beside site-packages.
        root = CARDS_DIR.parent
        inside = Path.cwd().resolve().is_relative_to(root.resolve())
        if not (inside and (root / "pyproject.toml").is_file() and (root / "zoo").is_dir()):
            raise UsageError(
                "--out is required outside the medzoo source checkout (the default, model_cards/, "
                "belongs to the checkout)"
            )
        out = CARDS_DIR
    if a.check:
        stale = stale_cards(out)
        if stale:
            print("stale cards: " + ", ".join(stale) + " (run `zoo card`)", file=sys.stderr)
            return 1
        print("cards up to date")
        return 0
    for p in write_cards(out):
        print(p)
    return 0


@_command
def cmd_predict(a: argparse.Namespace) -> int:
    """Segment one scan, or a whole study; every check runs before weights are fetched."""
    import logging as _logging

    try:
        return _predict(a)
    except KeyboardInterrupt:
        msg = "zoo predict: interrupted; rerun the same command to resume (finished cases are kept)"
        print(msg, file=sys.stderr)
        return 130
    except Exception as e:  # the user gets one line, never a traceback (-v logs it)
        _logging.getLogger("zoo").debug("zoo predict failed", exc_info=True)
        known = isinstance(e, ValueError | RuntimeError | OSError | ImportError | KeyError)
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"zoo predict: error: {msg if known else f'{type(e).__name__}: {msg}'}", file=sys.stderr)
        return 2


def _is_study(text: str) -> bool:
    return Path(text).is_dir() or text.endswith(".json") or any(ch in text for ch in "*?[")


def _predict(a: argparse.Namespace) -> int:
    import zoo
    from zoo import predict as P
    from zoo import predict_checks as C
    from zoo import study as S

    intensity = _parse_intensity(a.intensity) if a.intensity else None
    model = None
    if a.name.endswith(".onnx") or a.name.startswith("hf-hub:"):
        # An exported file (onnxruntime, preprocessing from its metadata) or a Hub repository: the
        # plan comes from the file or the repository's config, so it is opened first.
        if a.name.endswith(".onnx"):
            from zoo.onnx_runtime import load_onnx

            model = load_onnx(a.name)
        else:
            model = zoo.create(a.name)
        cfg = dict(model.pretrained_cfg)
    else:
        from zoo._factory import NoPretrainedWeightsError

        try:
            cfg = P.planned_cfg(a.name, a.checkpoint, pretrained=not a.no_weights)
        except NoPretrainedWeightsError:  # the API's message names pretrained=False: say the flags
            spec, _ = resolve(a.name)
            why = f" ({spec.no_weights_reason.rstrip('.')})" if spec.no_weights_reason else ""
            raise ValueError(
                f"{spec.name} has no pretrained weights{why}: predict with --checkpoint FILE_OR_RUN (your "
                "own, e.g. from zoo finetune), or --no-weights to check the pipeline with random weights"
            ) from None
    kw = dict(
        roi_size=tuple(a.roi_size) if a.roi_size else None,
        overlap=a.overlap,
        sw_batch_size=a.sw_batch_size,
        spacing_mm=tuple(a.spacing) if a.spacing else None,
        intensity=intensity,
        slice_axis={"x": 0, "y": 1, "z": 2}[a.slice_axis] if a.slice_axis else None,
    )
    s = C.resolve_settings(cfg, **kw)
    if not a.no_weights and a.checkpoint is None:
        record = cfg["weights"] or {}
        C.check_weights_trained(cfg["weights"], record.get("id", a.name), a.allow_untrained_head)
    if a.preview:
        from zoo.plots import require_matplotlib

        require_matplotlib()
    budget = dict(max_memory_gb=a.max_memory_gb, max_windows=a.max_windows)
    study = _is_study(a.input)
    if study:
        cases = S.list_cases(a.input)
        S._study_outputs(cases, Path(a.output))
    else:
        C.check_output(a.input, a.output)
        info = C.inspect_input(a.input, s.in_chans, a.volume)
        est = C.estimate(info, s)
        C.check_budget(est, info, s, **budget)
    # Every check passed: now weights may be downloaded and the model built.
    if model is None:
        model = zoo.create(a.name, pretrained=not a.no_weights, checkpoint_path=a.checkpoint)
    common = dict(kw, volume=a.volume, allow_untrained_head=a.allow_untrained_head, preview=a.preview)
    common.update(budget)
    if not study:
        r = P.predict_nifti(model, a.input, a.output, P.PredictSettings(**common), progress=not a.quiet)
        print(_prediction_line(r))
        return 0

    def said(path: Path, r: P.Prediction | None, err: str | None) -> None:
        if r is not None and not a.quiet:
            print(_prediction_line(r), flush=True)

    res = S.predict_study(
        model,
        a.input,
        a.output,
        S.StudySettings(**common, num_workers=a.workers),
        progress=not a.quiet,
        on_case=said,
    )
    print(
        f"{res.cases} case(s): {len(res.written)} written, {len(res.skipped)} already there (skipped), "
        f"{len(res.failed)} failed"
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


def _parse_intensity(text: str) -> dict:
    """``--intensity``: a kind name, JSON, or ``clip:a,b,c,d`` (``zoo.transforms.parse_intensity``)."""
    from zoo.transforms import parse_intensity

    return parse_intensity(text)


@_command
def cmd_demo(a: argparse.Namespace) -> int:
    """Build a model, run it on a real volume an installed package ships, say what it found."""
    import os
    import tempfile

    import torch

    import zoo
    from zoo.hub import WeightsUnavailableError
    from zoo.predict import PredictSettings, predict_nifti, sample_volume_path
    from zoo.predict_checks import check_weights_trained

    os.environ["MEDZOO_OFFLINE"] = "1"  # the demo never touches the network: cached weights or none
    spec, _ = resolve(a.name)
    torch.manual_seed(0)  # with random weights: the same ones (and label counts) on every run
    try:
        model = zoo.create(a.name, pretrained=bool(spec.default_tag))
        weights = f"weights {model.pretrained_cfg['tag']} (from the cache)"
    except (WeightsUnavailableError, zoo.NoPretrainedWeightsError):
        torch.manual_seed(0)
        model = zoo.create(a.name)
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
    r = predict_nifti(
        model,
        src,
        out,
        PredictSettings(spacing_mm=(a.spacing,) * 3, preview=preview, allow_untrained_head=True),
        progress=False,
    )
    print(
        f"volume {r.input_shape[1:]} at {r.spacing_mm} mm → model grid {r.model_grid_shape} "
        f"at {a.spacing} mm, {r.num_windows} sliding windows, {r.seconds:.1f} s on CPU"
    )
    top = sorted(r.label_voxels.items(), key=lambda kv: -kv[1])[:5]
    print("voxels per predicted label (top 5): " + ", ".join(f"{k}: {v}" for k, v in top))
    print(f"label map written on the input grid with its affine: {r.output}")
    if r.preview:
        print(f"preview (three mid-slices with the labels): {r.preview}")
    return 0


@_command
def cmd_export(a: argparse.Namespace) -> int:
    from zoo._optional import require
    from zoo.export import ExportSettings, to_onnx
    from zoo.hub_repo import hub_model_name, is_hub_id

    require("onnx", "onnxruntime", extra="onnx", feature="ONNX export")  # before any other line is printed

    if is_hub_id(a.name):  # a published repository: its model, loaded through checkpoint_path
        if a.checkpoint:
            raise ValueError(f"{a.name} names its weights already; --checkpoint cannot be combined with it")
        a.checkpoint, a.name = a.name, hub_model_name(a.name)
    spec, name_tag = resolve(a.name)
    if a.tag and name_tag and a.tag != name_tag:
        print(f"zoo export: {a.name!r} names weights {name_tag!r} and --tag says {a.tag!r}", file=sys.stderr)
        return 2
    tag = a.tag or name_tag or (spec.default_tag if a.pretrained else None)
    if a.pretrained and tag is None:
        reason = spec.no_weights_reason or ""
        print(f"zoo export: {spec.name} has no pretrained weights. {reason}", file=sys.stderr)
        return 2
    if tag is None and a.checkpoint is None:
        print(f"{spec.name}: exporting the architecture with random weights (no tag given)", file=sys.stderr)
    kwargs = {"img_size": tuple(a.img_size) if len(a.img_size) > 1 else a.img_size[0]} if a.img_size else {}
    if a.num_classes is not None:
        kwargs["num_classes"] = a.num_classes
    shapes = [tuple(s) for s in a.input_shape] if a.input_shape else None
    r = to_onnx(
        spec.name,
        a.output,
        ExportSettings(
            input_shapes=shapes,
            tag=tag,
            checkpoint_path=a.checkpoint,
            model_kwargs=kwargs,
            opset=a.opset,
            exporter=a.exporter,
            rtol=a.rtol,
            check=not a.no_check,
        ),
    )
    axes = "batch and spatial axes dynamic" if r.dynamic_spatial else "batch axis dynamic, spatial axes fixed"
    print(f"wrote {r.path} ({r.exporter} exporter, opset {r.opset}, {axes}; export {r.export_seconds:.1f} s)")
    if r.fallback_reason:
        print(f"  fell back to {r.exporter}: {r.fallback_reason}")
    if r.parity:
        print(
            f"  onnxruntime vs PyTorch: max abs diff {r.max_abs:.3e}, max rel diff {r.max_rel:.3e} "
            f"(tolerance {r.rtol:g} of the output scale)"
        )
    return 0


@_command
def cmd_bench(a: argparse.Namespace) -> int:
    import dataclasses
    import os

    from zoo.bench import BenchSettings, benchmark, ratio

    hub_args: dict = {}
    if a.name.startswith("hf-hub:"):  # the cost of a published configuration (model arguments from the Hub)
        from zoo.hub_repo import fetch_config

        hub_cfg = fetch_config(a.name)[3]
        a.name = str(hub_cfg["model_name"])
        hub_args = {
            k: tuple(v) if isinstance(v, list) else v for k, v in (hub_cfg.get("model_args") or {}).items()
        }
    names = list_models(a.name) if any(ch in a.name for ch in "*?[") else [a.name]
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
                model_kwargs={**hub_args, **kwargs},
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
            ),
            log=(lambda s: print(s, file=sys.stderr)) if not a.quiet else None,
        )
        rows.append(r)
        if a.json:
            print(json.dumps(dataclasses.asdict(r)))  # row() writes "" for the CSV; JSON keeps null
    if a.json:
        return 0
    fmt = lambda v, f: "—" if v is None else format(v, f)  # noqa: E731
    table = []
    for r in rows:
        pr = ratio(r.gmacs_paper_setting, r.paper_gmacs)
        table.append(
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
    print(_table(table, header))
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


@_command
def cmd_finetune(a: argparse.Namespace) -> int:
    """Fine-tune on a MONAI datalist; the same command runs multi-process under torchrun."""
    from zoo.finetune import finetune
    from zoo.presets import PRESETS

    if a.list_presets:
        for p in PRESETS.values():
            print(p.describe() + "\n")
        return 0
    if not a.name or not a.data or not a.out:
        print("zoo finetune: NAME, --data and --out are required (or --list-presets)", file=sys.stderr)
        return 2
    if a.name.startswith("hf-hub:"):  # start from a published repository: its model, its weights
        from zoo.hub_repo import hub_model_name

        if a.checkpoint:
            raise ValueError(f"{a.name} names its weights already; --checkpoint cannot be combined with it")
        a.checkpoint, a.name = a.name, hub_model_name(a.name)
    try:
        finetune(
            a.name,
            a.data,
            a.out,
            preset=a.preset,
            pretrained=a.pretrained or None,
            checkpoint_path=a.checkpoint,
            steps=a.steps,
            epochs=a.epochs,
            batch_size=a.batch_size,
            num_samples=a.num_samples,
            lr=a.lr,
            roi_size=a.roi,
            spacing_mm=a.spacing,
            intensity=a.intensity,
            crop=a.crop,
            num_classes=a.num_classes,
            in_chans=a.in_chans,
            freeze=a.freeze,
            lora_rank=a.lora,
            layer_decay=a.layer_decay,
            val_every=a.val_every,
            num_workers=a.workers,
            cache=not a.no_cache,
            resume=not a.restart,
            seed=a.seed,
            device=a.device,
            progress=not a.quiet,
            model_kwargs=json.loads(a.model_kwargs) if a.model_kwargs else None,
        )
    except KeyboardInterrupt as e:
        print(f"zoo finetune: interrupted by {e or 'SIGINT'}; rerun the same command to resume {a.out}",
              file=sys.stderr)  # fmt: skip
        return 130
    return 0


@_command
def cmd_pretrain(a: argparse.Namespace) -> int:
    """Continue self-supervised pretraining with one of the papers' pretext tasks (torchrun too)."""
    from zoo.ssl import RECIPES, methods, pretrain
    from zoo.ssl.data import parse_intensity

    if a.list_methods:
        for m in methods():
            cls = RECIPES.get(m)
            what = f"{', '.join(cls.families)}: {cls.paper}" if cls else "pipeline of three stages"
            print(f"{m:24s} {what}")
        return 0
    if not a.method or not a.model or not a.data or not a.out:
        print("zoo pretrain: METHOD, --model, --data and --out are required (or --list)", file=sys.stderr)
        return 2
    prep = {}
    if a.spacing:
        prep["spacing_mm"] = tuple(a.spacing)
    if a.intensity:
        prep["intensity"] = parse_intensity(a.intensity)
    settings = {k: v for k, v in (("batch_size", a.batch_size), ("lr", a.lr)) if v is not None}
    steps = [int(s) for s in a.steps.split(",")] if "," in a.steps else int(a.steps)
    try:
        r = pretrain(
            a.method,
            a.model,
            a.data,
            a.out,
            steps=steps,
            init=a.init,
            model_args=json.loads(a.model_kwargs) if a.model_kwargs else None,
            recipe_args=json.loads(a.recipe_kwargs) if a.recipe_kwargs else None,
            preprocessing=prep or None,
            settings=settings or None,
            save_every=a.save_every,
            num_workers=a.workers,
            seed=a.seed,
            device=a.device,
            resume=not a.restart,
            progress=not a.quiet,
            pretrained=a.pretrained or None,
        )
    except KeyboardInterrupt as e:
        print(f"zoo pretrain: interrupted by {e or 'SIGINT'}; rerun the same command to resume {a.out}",
              file=sys.stderr)  # fmt: skip
        return 130
    cfg = json.loads(r.config.read_text())
    from zoo.finetune import describe_load

    print(describe_load((cfg.get("pretraining") or {}).get("init")))
    print(
        f"wrote {r.checkpoint} ({cfg['model_name']}, covers {cfg['covers']}) after {r.steps} steps; "
        f"load with zoo.create({cfg['model_name']!r}, checkpoint_path={str(r.checkpoint)!r}, **model_args "
        f"from {r.config.name})"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from zoo import __version__

    p = argparse.ArgumentParser(
        prog="zoo",
        description="medzoo: self-supervised 3D medical-imaging models",
        epilog="exit status: 0 success, 1 runtime failure, 2 a request that cannot work as given. "
        "`zoo COMMAND --help` for each.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    p.add_argument("--version", action="version", version=f"medzoo {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("list", help="registered models")
    s.add_argument(
        "pattern", nargs="?", default=None, help="glob over model names, e.g. 'qtunet*' (quote it)"
    )
    s.add_argument("--pretrained", action="store_true", help="only models with downloadable weights")
    s.add_argument("--json", action="store_true", help="a JSON array, one object per model (null: unknown)")

    s = sub.add_parser("info", help="config, size, weights with provenance and digests")
    s.add_argument("name", help="model name, name.tag or alias")
    s.add_argument("--json", action="store_true", help="everything as one JSON object (null: unknown)")

    s = sub.add_parser("download", help="fetch, verify, convert and cache weights")
    s.add_argument("name", help="name.tag (or a name: its default tag)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.add_argument(
        "--print-digest",
        action="store_true",
        help="print the registry fields (sha256 and size) that pin the downloaded file, to paste",
    )

    s = sub.add_parser("convert", help="convert an authors' checkpoint to safetensors")
    s.add_argument("checkpoint", help="the authors' checkpoint file (.pt/.pth/.safetensors)")
    s.add_argument("--model", required=True, help="the model it belongs to (name or name.tag)")
    s.add_argument("-o", "--output", required=True, help="the .safetensors file to write (not the input)")

    s = sub.add_parser("publish", help="write (and upload) a Hub folder for name.tag or a run folder")
    s.add_argument("name", help="name.tag, or the folder of a zoo finetune / pretrain run")
    s.add_argument("--repo", required=True, help="Hub repository, ORG/NAME")
    s.add_argument("--out", type=Path, default=None, help="new or empty folder to write (default: ORG__NAME)")
    s.add_argument("--checkpoint", default=None, help="publish this file instead of the registered one")
    s.add_argument("--dry-run", action="store_true", help="write the folder only")
    s.add_argument("--revision", default=None, help="Hub branch to commit to (default: the default branch)")
    s.add_argument(
        "--license", default=None, help="licence of a run's weights (default: that of what it started from)"
    )
    s.add_argument(
        "--permission-obtained",
        action="store_true",
        help="the rights holder allowed redistribution of weights whose licence does not",
    )

    s = sub.add_parser(
        "predict", help="segment a NIfTI volume or a whole study (folder, datalist, glob) into label maps"
    )
    s.add_argument("name", help="name, name.tag, hf-hub:ORG/NAME or an exported FILE.onnx")
    s.add_argument(
        "-i", "--input", required=True, help="a .nii/.nii.gz, a folder, a datalist .json or a 'glob'"
    )
    s.add_argument("-o", "--output", required=True, help="the label map file (one input) or folder (a study)")
    s.add_argument("--checkpoint", default=None, help="a checkpoint file or run folder")
    s.add_argument("--no-weights", action="store_true", help="random initialisation (pipeline check)")
    s.add_argument(
        "--allow-untrained-head",
        action="store_true",
        help="predict even with encoder-only weights or a newly initialised head (labels are random)",
    )
    s.add_argument("--spacing", type=float, nargs=3, default=None, help="resample to this spacing (mm)")
    s.add_argument("--overlap", type=float, default=None, help="sliding-window overlap in [0, 1)")
    s.add_argument(
        "--sw-batch-size",
        type=int,
        default=None,
        help="windows per forward (>= 1; default 2: keeps two CPU threads or a GPU busy; equal to 1 "
        "up to float rounding)",
    )
    s.add_argument(
        "--intensity",
        default=None,
        help="override the weights' intensity transform: zscore_nonzero, zscore, none, clip:a,b,c,d "
        "or JSON such as "
        '\'{"kind": "clip_scale", "a_min": -1000, "a_max": 1000, "b_min": -1, "b_max": 1}\'',
    )
    s.add_argument(
        "--roi-size", type=int, nargs="+", default=None, help="sliding-window size (default: the model's)"
    )
    s.add_argument("--volume", type=int, default=None, help="the volume of a 4D series to segment (0-based)")
    s.add_argument("--slice-axis", choices=["x", "y", "z"], default=None, help="2D models: slice along it")
    s.add_argument("--max-memory-gb", type=float, default=None, help="memory budget (default: half the RAM)")
    s.add_argument("--max-windows", type=int, default=None, help="window cap per volume (default 5000)")
    s.add_argument(
        "--workers",
        type=int,
        default=None,
        help="a study: processes reading the next volumes (default: 1 when a core is left over by the "
        "model's threads, else 0)",
    )
    s.add_argument("--preview", action="store_true", help="also write a PNG of mid-slices + labels")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("demo", help="run a model on a sample volume shipped with nilearn (no network)")
    s.add_argument("name", nargs="?", default="qtunet-t", help="model name or name.tag (default: qtunet-t)")
    s.add_argument("--spacing", type=float, default=2.0, help="isotropic resampling (mm) for speed")
    s.add_argument("-o", "--output", default=None, help="label map to write (default: a temporary folder)")

    s = sub.add_parser("export", help="export to ONNX and check it against PyTorch with onnxruntime")
    s.add_argument("name", help="name or name.tag")
    s.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    s.add_argument("--tag", default=None, help="weights tag to load (default: none, random weights)")
    s.add_argument("--pretrained", action="store_true", help="load the default weights tag")
    s.add_argument("--checkpoint", default=None, help="local checkpoint to load")
    s.add_argument(
        "--input-shape",
        type=int,
        nargs="+",
        action="append",
        default=None,
        metavar="N",
        help="input shape without batch, e.g. 1 96 96 96 (default: the model's); repeat "
        "the option to declare several sizes: spatial axes then become dynamic and each "
        "is checked",
    )
    s.add_argument("--img-size", type=int, nargs="+", default=None, help="build the model for this size")
    s.add_argument("--num-classes", type=int, default=None, help="output classes (default: the model's)")
    s.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    s.add_argument(
        "--exporter",
        choices=["auto", "dynamo", "torchscript"],
        default="auto",
        help="torch.onnx exporter; auto tries dynamo, then torchscript",
    )
    s.add_argument("--rtol", type=float, default=1e-4, help="tolerance relative to the output's scale")
    s.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")

    s = sub.add_parser("bench", help="parameters, FLOPs/MACs, latency and memory (CPU, CUDA, onnxruntime)")
    s.add_argument("name", help="a model name or a glob ('qtunet-*')")
    s.add_argument("--input-shape", type=int, nargs="+", default=None, help="input without batch")
    s.add_argument("--img-size", type=int, nargs="+", default=None, help="build the model for this size")
    s.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    s.add_argument("--warmup", type=int, default=1, help="untimed forward passes first")
    s.add_argument("--repeats", type=int, default=5, help="timed forward passes (the median is reported)")
    s.add_argument("--no-cpu", action="store_true", help="skip PyTorch CPU timing")
    s.add_argument("--no-onnx", action="store_true", help="skip the ONNX export and onnxruntime timing")
    s.add_argument("--no-cuda", action="store_true", help="skip CUDA even when available")
    s.add_argument("--opset", type=int, default=None, help="ONNX opset of the timed export")
    s.add_argument(
        "--baseline-opset",
        type=int,
        default=None,
        help="also time an export at this opset in the same alternating rounds (before/after)",
    )
    s.add_argument(
        "--baseline-onnx",
        default=None,
        help="also time this exported file (same input) in the same alternating rounds, e.g. an older export",
    )
    s.add_argument("--baseline-label", default=None, help="what --baseline-onnx is (e.g. main)")
    s.add_argument("--json", action="store_true", help="one JSON object per model")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")

    s = sub.add_parser("finetune", help="fine-tune on labelled NIfTI volumes (MONAI datalist); torchrun too")
    s.add_argument("name", nargs="?", help="NAME (from scratch) or NAME.TAG (those weights)")
    s.add_argument("--data", help="MONAI datalist JSON with 'training' and 'validation' image/label pairs")
    s.add_argument("--out", help="run folder (checkpoints, config.json, log.jsonl); an existing run resumes")
    s.add_argument("--preset", default=None, help="recipe (default: the family's; see --list-presets)")
    s.add_argument("--list-presets", action="store_true", help="print every preset's values and exit")
    s.add_argument("--pretrained", action="store_true", help="load the default weights when NAME has no tag")
    s.add_argument("--checkpoint", default=None, help="start from this checkpoint file or run folder")
    s.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the preset's recipe)")
    s.add_argument("--epochs", type=int, default=None, help="epochs over the training cases (not --steps)")
    s.add_argument("--batch-size", type=int, default=None, help="cases per step and process")
    s.add_argument("--num-samples", type=int, default=None, help="crops per case")
    s.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the preset's)")
    s.add_argument("--roi", type=int, nargs=3, default=None, help="crop size (default: the model's input)")
    s.add_argument("--spacing", type=float, nargs=3, default=None, help="resample to this spacing (mm)")
    s.add_argument("--intensity", default=None, help="zscore, zscore-nonzero, none, or clip:a,b,c,d")
    s.add_argument(
        "--crop", choices=["random", "posneg"], default=None, help="crop sampling (default: the preset's)"
    )
    s.add_argument("--num-classes", type=int, default=None, help="default: from the datalist or the labels")
    s.add_argument("--in-chans", type=int, default=None, help="default: from the datalist or the images")
    s.add_argument("--freeze", default=None, help="freeze a part: encoder, stem, encoder.K, decoder")
    s.add_argument("--lora", type=int, default=None, metavar="RANK", help="LoRA of this rank on the encoder")
    s.add_argument("--layer-decay", type=float, default=None, help="layer-wise LR decay (e.g. 0.75)")
    s.add_argument("--val-every", type=int, default=None, help="validation period in steps")
    s.add_argument("--workers", type=int, default=0, help="data-loading processes")
    s.add_argument("--no-cache", action="store_true", help="do not cache preprocessed volumes in memory")
    s.add_argument("--restart", action="store_true", help="ignore a run already in --out")
    s.add_argument("--seed", type=int, default=0, help="random seed (data order, crops, initialisation)")
    s.add_argument("--model-kwargs", default=None, help="JSON of further architecture arguments")
    s.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("pretrain", help="continue self-supervised pretraining (the papers' pretext tasks)")
    s.add_argument(
        "method",
        nargs="?",
        help="volume-fusion, byol-rot-rec, multi-clustering, simsiam-iou, "
        "dino, joint-2d3d, joint-2d3d-deepcluster (see --list)",
    )
    s.add_argument("--list", dest="list_methods", action="store_true", help="print the methods and exit")
    s.add_argument("--model", help="NAME (random init) or NAME.TAG (continue from those weights)")
    s.add_argument("--data", help="datalist JSON of unlabelled images (a list, or MONAI's 'training')")
    s.add_argument("--out", help="run folder (model.safetensors, config.json, trainer/); resumes a run")
    s.add_argument("--steps", default="1000", help="optimiser steps (pipelines: a total, or a,b,c per stage)")
    s.add_argument("--init", default=None, help="start from a checkpoint file, a run folder or NAME.TAG")
    s.add_argument("--pretrained", action="store_true", help="start from the model's default weights")
    s.add_argument("--batch-size", type=int, default=None, help="per process (default: the paper's)")
    s.add_argument("--lr", type=float, default=None, help="default: the paper's")
    s.add_argument("--spacing", type=float, nargs=3, default=None, help="resample to this spacing (mm)")
    s.add_argument("--intensity", default=None, help="zscore, zscore-nonzero, none, or clip:a,b,c,d")
    s.add_argument("--model-kwargs", default=None, help="JSON of architecture arguments (e.g. img_size)")
    s.add_argument("--recipe-kwargs", default=None, help="JSON of recipe settings (a list for a pipeline)")
    s.add_argument("--save-every", type=int, default=None, help="checkpoint period in steps")
    s.add_argument("--workers", type=int, default=0, help="data-loading processes")
    s.add_argument("--restart", action="store_true", help="ignore a run already in --out")
    s.add_argument("--seed", type=int, default=0, help="random seed (data order, crops, initialisation)")
    s.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("card", help="generate model cards from the registry")
    s.add_argument(
        "--out",
        default=None,
        help="folder to write the cards to (default: model_cards/ of the source checkout, only when "
        "run from inside it)",
    )
    s.add_argument("--check", action="store_true", help="fail if a checked-in card is stale")
    return p


def _quiet_stdout() -> None:
    # The reader is gone: point stdout at /dev/null so the interpreter's final flush stays silent.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (captured in-process)
        pass


def _error(command: str, message: str) -> None:
    print(f"zoo {command}: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``zoo`` with ``argv`` (default: ``sys.argv[1:]``) and return its exit status."""
    from zoo._optional import MissingExtraError, extra_for, hint

    args = build_parser().parse_args(argv)  # usage errors exit 2 here, as argparse does
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        rc = _COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return rc
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        _error(args.command, "interrupted")
        return EXIT_INTERRUPTED
    except (UsageError, UnknownNameError, InvalidArgumentError, ValueError, PermissionError) as e:
        _error(args.command, str(e))
        return EXIT_USAGE
    except MissingExtraError as e:
        _error(args.command, str(e))
        return EXIT_FAILURE
    except ModuleNotFoundError as e:
        extra = extra_for(e.name)
        if extra is None:
            raise
        _error(args.command, hint(e.name.split(".")[0], extra, feature=f"zoo {args.command}"))
        return EXIT_FAILURE
    except (RuntimeError, OSError) as e:
        _error(args.command, str(e))
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
