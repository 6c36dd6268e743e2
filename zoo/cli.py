"""The ``zoo`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from zoo._registry import aliases_of, get_spec, list_models, resolve

_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def _command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    _COMMANDS[fn.__name__.removeprefix("cmd_")] = fn
    return fn


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


@_command
def cmd_list(a: argparse.Namespace) -> int:
    names = list_models(a.pattern, pretrained=a.pretrained)
    rows = []
    for n in names:
        spec = get_spec(n)
        params = spec.meta.get("num_params")
        tags = ", ".join(
            f"{w.tag}{'*' if w.tag == spec.default_tag else ''}" for w in spec.weights
        )
        avail = "yes" if any(w.available for w in spec.weights) else "no"
        alias = ", ".join(aliases_of(n))
        rows.append([n, spec.family, f"{params / 1e6:.2f}M" if params else "?", tags or "—", avail, alias])
    if not rows:
        print(f"no model matches {a.pattern!r}", file=sys.stderr)
        return 1
    print(_table(rows, ["name", "family", "params", "tags (*default)", "weights", "aliases"]))
    return 0


@_command
def cmd_info(a: argparse.Namespace) -> int:
    from zoo.info import model_info

    info = model_info(a.name)
    if a.json:
        print(json.dumps(info, indent=2))
        return 0
    m = info["meta"]
    print(f"{info['name']}  ({info['family']})  torch.hub entrypoint: {info['hub_entrypoint']}")
    if info["aliases"]:
        print(f"aliases: {', '.join(info['aliases'])}")
    print(info["description"])
    print(f"paper: {info['paper']['title']} ({info['paper']['venue']} {info['paper']['year']})")
    print(f"config: {json.dumps(info['model_args'])}")
    print(f"input size: {info['input_size']}")
    if m.get("num_params"):
        print(f"parameters: {m['num_params']:,}" + (f" (paper: {m['paper_params']:,})" if m.get("paper_params") else ""))
    if m.get("gmacs"):
        print(f"GMACs at input size: {m['gmacs']:.2f}")
    if not info["weights"]:
        print(f"weights: none. {info['no_weights_reason'] or ''}")
    for w in info["weights"]:
        star = " (default)" if w["default"] else ""
        print(f"\nweights {info['name']}.{w['tag']}{star}")
        print(f"  pretraining: {w['pretraining']}")
        print(f"  covers: {w['covers']}; in_chans: {w['in_chans']}; licence: {w['license']}"
              f" ({'redistributable' if w['redistributable'] else 'not redistributable'})")
        if w["hf_hub_id"]:
            print(f"  hub: {w['hf_hub_id']}/{w['hf_filename']} @ {w['hf_revision'] or 'main'}"
                  f" sha256 {w['sha256'] or 'unpinned'}")
        if w["url"]:
            print(f"  upstream: {w['url']}")
            print(f"  upstream digest: {w['upstream_digest'] or 'none published'}")
        if w["preprocessing"]:
            print(f"  preprocessing: {json.dumps(w['preprocessing'])}")
    return 0


@_command
def cmd_download(a: argparse.Namespace) -> int:
    from zoo.hub import fetch_weights, file_digest

    spec, tag = resolve(a.name)
    tag = tag or spec.default_tag
    if tag is None:
        print(f"{spec.name} has no weights. {spec.no_weights_reason or ''}", file=sys.stderr)
        return 2
    path = fetch_weights(spec, spec.weight(tag), progress=not a.quiet)
    print(f"{spec.name}.{tag}: {path} (sha256 {file_digest(path)})")
    return 0


@_command
def cmd_convert(a: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from zoo._factory import load_weights
    from zoo.convert import convert_checkpoint, read_checkpoint

    spec, _ = resolve(a.model)
    sd = convert_checkpoint(read_checkpoint(a.checkpoint), spec)
    # Check the converted keys against the architecture before writing anything.
    args = dict(spec.model_args)
    for conv in spec.first_convs:
        w = sd.get(f"{conv}.weight")
        if w is not None and "in_chans" in args:
            args["in_chans"] = w.shape[1]
    report = load_weights(spec.builder(**args), sd, spec)
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp), metadata={"model": spec.name})
    tmp.replace(out)
    extra = f"; not in checkpoint: {len(report.newly_initialised)} (covers {report.covers})"
    print(f"wrote {out}: {len(sd)} tensors for {spec.name}{extra if report.newly_initialised else ''}")
    return 0


@_command
def cmd_publish(a: argparse.Namespace) -> int:
    from zoo.hub import publish

    out = a.out or Path(a.repo.replace("/", "__"))
    path = publish(
        a.name, a.repo, out, dry_run=a.dry_run, checkpoint_path=a.checkpoint,
        permission_obtained=a.permission_obtained,
    )
    verb = "wrote" if a.dry_run else "uploaded"
    print(f"{verb} {path}: " + ", ".join(sorted(p.name for p in Path(path).iterdir())))
    return 0


@_command
def cmd_card(a: argparse.Namespace) -> int:
    from zoo.cards import CARDS_DIR, stale_cards, write_cards

    out = Path(a.out) if a.out else CARDS_DIR
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
    import zoo
    from zoo.predict import predict_nifti

    model = zoo.create(a.name, pretrained=not a.no_weights, checkpoint_path=a.checkpoint)
    spacing = tuple(a.spacing) if a.spacing else None
    r = predict_nifti(model, a.input, a.output, spacing_mm=spacing, overlap=a.overlap,
                      sw_batch_size=a.sw_batch_size, progress=not a.quiet)
    print(f"wrote {r.output}: labels {sorted(r.label_voxels)} on the input grid {r.input_shape[1:]} "
          f"({r.num_windows} windows, {r.seconds:.1f} s)")
    return 0


@_command
def cmd_demo(a: argparse.Namespace) -> int:
    """Build a model, run it on a real volume an installed package ships, say what it found."""
    import os
    import tempfile

    import zoo
    from zoo.hub import WeightsUnavailableError
    from zoo.predict import predict_nifti, sample_volume_path

    os.environ["MEDZOO_OFFLINE"] = "1"  # the demo never touches the network: cached weights or none
    spec, _ = resolve(a.name)
    try:
        model = zoo.create(a.name, pretrained=bool(spec.default_tag))
        weights = f"weights {model.pretrained_cfg['tag']} (from the cache)"
    except (WeightsUnavailableError, zoo.NoPretrainedWeightsError):
        model = zoo.create(a.name)
        weights = "random initialisation (no weights cached; `zoo download` fetches them)"
    src = sample_volume_path()
    out = Path(a.output or Path(tempfile.mkdtemp(prefix="zoo-demo-")) / "segmentation.nii.gz")
    print(f"model: {spec.name}, {spec.meta.get('num_params', 0) / 1e6:.2f} M parameters, {weights}")
    print(f"input: {src.name} (MNI152 T1 template shipped with nilearn)")
    r = predict_nifti(model, src, out, spacing_mm=(a.spacing,) * 3, progress=False)
    print(f"volume {r.input_shape[1:]} at {r.spacing_mm} mm → model grid {r.model_grid_shape} at {a.spacing} mm, "
          f"{r.num_windows} sliding windows, {r.seconds:.1f} s on CPU")
    top = sorted(r.label_voxels.items(), key=lambda kv: -kv[1])[:5]
    print("voxels per predicted label (top 5): " + ", ".join(f"{k}: {v}" for k, v in top))
    print(f"label map written on the input grid with its affine: {r.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zoo", description="medzoo: self-supervised 3D medical-imaging models")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="registered models")
    s.add_argument("pattern", nargs="?", default=None, help="glob, e.g. 'qtunet*'")
    s.add_argument("--pretrained", action="store_true", help="only models with downloadable weights")

    s = sub.add_parser("info", help="config, size, weights with provenance and digests")
    s.add_argument("name")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("download", help="fetch, verify, convert and cache weights")
    s.add_argument("name", help="name.tag (or a name: its default tag)")
    s.add_argument("-q", "--quiet", action="store_true")

    s = sub.add_parser("convert", help="convert an authors' checkpoint to safetensors")
    s.add_argument("checkpoint")
    s.add_argument("--model", required=True)
    s.add_argument("-o", "--output", required=True)

    s = sub.add_parser("publish", help="write (and upload) a Hub folder for name.tag")
    s.add_argument("name")
    s.add_argument("--repo", required=True, help="Hub repository, ORG/NAME")
    s.add_argument("--out", type=Path, default=None, help="folder to write (default: ORG__NAME)")
    s.add_argument("--checkpoint", default=None, help="publish this file instead of the registered one")
    s.add_argument("--dry-run", action="store_true", help="write the folder only")
    s.add_argument("--permission-obtained", action="store_true",
                   help="the rights holder allowed redistribution of weights whose licence does not")

    s = sub.add_parser("predict", help="segment a NIfTI volume (sliding window), write a NIfTI label map")
    s.add_argument("name", help="name or name.tag")
    s.add_argument("-i", "--input", required=True)
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--checkpoint", default=None, help="local checkpoint instead of the registered weights")
    s.add_argument("--no-weights", action="store_true", help="random initialisation (pipeline check)")
    s.add_argument("--spacing", type=float, nargs=3, default=None, help="resample to this spacing (mm)")
    s.add_argument("--overlap", type=float, default=None)
    s.add_argument("--sw-batch-size", type=int, default=1)
    s.add_argument("-q", "--quiet", action="store_true")

    s = sub.add_parser("demo", help="run a model on a sample volume shipped with nilearn (no network)")
    s.add_argument("name", nargs="?", default="qtunet-t")
    s.add_argument("--spacing", type=float, default=2.0, help="isotropic resampling (mm) for speed")
    s.add_argument("-o", "--output", default=None)

    s = sub.add_parser("card", help="generate model cards from the registry")
    s.add_argument("--out", default=None)
    s.add_argument("--check", action="store_true", help="fail if a checked-in card is stale")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return _COMMANDS[args.command](args)
    except (ValueError, RuntimeError, FileNotFoundError, PermissionError) as e:
        print(f"zoo {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
