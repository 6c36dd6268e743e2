"""``zoo list``, ``info``, ``download``, ``convert``, ``card``: the registry and its weights."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from zoo._registry import aliases_of, get_spec, list_models, resolve
from zoo.cli._base import EXIT_FAILURE, EXIT_OK, JSON, UsageError, arg, command, report, table


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


@command(
    "list",
    help="registered models",
    args=[
        arg("pattern", nargs="?", default=None, help="glob over model names, e.g. 'qtunet*' (quote it)"),
        arg("--pretrained", action="store_true", help="only models with downloadable weights"),
        arg("--json", action="store_true", help="a JSON array, one object per model (null: unknown)"),
    ],
)
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
    print(table(rows, ["name", "family", "params", "tags (*default)", "weights", "aliases"]))
    return EXIT_OK


@command(
    "info",
    help="config, size, weights with provenance and digests",
    args=[
        arg("name", help="model name, name.tag or alias"),
        arg("--json", action="store_true", help="everything as one JSON object (null: unknown)"),
    ],
)
def cmd_info(a: argparse.Namespace) -> int:
    from zoo.info import model_info

    if a.name.startswith("hf-hub:"):  # a published repository: what it holds, then its model's info
        from zoo.plan import plan

        p = plan(a.name)  # its config.json, checked; no weights
        keys = ("model_name", "tag", "covers", "license", "redistributable", "derived_from", "sha256")
        print(f"{a.name}: commit {p.hub.commit}; " + "; ".join(f"{k}: {getattr(p.config, k)}" for k in keys))
        a.name = p.spec.name
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
        if w["preprocessing"].get("channels"):  # the order the authors' loader stacked the inputs in
            print(f"  channel order: {', '.join(w['preprocessing']['channels'])}")
        if w["preprocessing"]:
            print(f"  preprocessing: {json.dumps(w['preprocessing'])}")
    return EXIT_OK


@command(
    "download",
    help="fetch, verify, convert and cache weights",
    args=[
        arg("name", help="name.tag (or a name: its default tag), or hf-hub:ORG/NAME[@REV]"),
        arg(
            "--print-digest",
            action="store_true",
            help="print the registry fields (sha256 and size) that pin the downloaded file, to paste",
        ),
        JSON,
    ],
)
def cmd_download(a: argparse.Namespace) -> int:
    from zoo.convert import CheckpointFormatError
    from zoo.hub import WeightsUnavailableError, fetch_weights, file_digest, registry_digest_line
    from zoo.hub_repo import is_hub_id

    if is_hub_id(a.name):
        return _download_hub_id(a)
    spec, tag = resolve(a.name)
    tag = tag or spec.default_tag
    if tag is None:
        raise UsageError(f"{spec.name} has no weights. {spec.no_weights_reason or ''}")
    ws = spec.weight(tag)
    try:
        path = fetch_weights(spec, ws, progress=not a.quiet)
    except CheckpointFormatError as e:
        # Here the file is the one the registry names, as the server delivered it: a layout the
        # converter does not know means those weights are not available as registered (exit 1),
        # where the same class for a user's own file (zoo convert) is a request that cannot work (2).
        raise WeightsUnavailableError(f"{spec.name}.{tag}: the downloaded file is not usable: {e}") from e
    if a.print_digest:
        print(registry_digest_line(spec, ws, path))
        return EXIT_OK
    digest = file_digest(path)
    data = {"name": spec.name, "tag": tag, "path": path, "sha256": digest, "bytes": path.stat().st_size}
    report(a, f"{spec.name}.{tag}: {path} (sha256 {digest})", data)
    return EXIT_OK


def _download_hub_id(a: argparse.Namespace) -> int:
    """A published model into the caches (its config, its weights at the config's commit), as a load
    would fetch it: ``zoo download hf-hub:ORG/NAME`` once, then loads work offline."""
    from zoo._factory import weights_file
    from zoo.hub import file_digest
    from zoo.plan import plan

    if a.print_digest:
        raise UsageError("--print-digest prints registry fields, for a registered NAME.TAG, not a Hub id")
    p = plan(a.name)
    path = weights_file(p)
    assert path is not None and p.hub is not None  # a Hub id's plan always names its weights
    digest = file_digest(path)
    data = {"name": p.spec.name, "tag": p.tag, "hub": p.hub.id, "path": path, "sha256": digest}
    report(a, f"{p.hub.id}: {path} (sha256 {digest})", {**data, "bytes": path.stat().st_size})
    return EXIT_OK


@command(
    "convert",
    help="convert an authors' checkpoint to safetensors",
    args=[
        arg("checkpoint", help="the authors' checkpoint file (.pt/.pth/.safetensors)"),
        arg("--model", required=True, help="the model it belongs to (name or name.tag)"),
        arg("-o", "--output", required=True, help="the .safetensors file to write (not the input)"),
        JSON,
    ],
)
def cmd_convert(a: argparse.Namespace) -> int:
    from zoo._factory import load_weights
    from zoo.convert import convert_checkpoint, read_checkpoint
    from zoo.hub import save_safetensors
    from zoo.layers.derived import without_derived

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
    model = spec.builder(**args)
    loaded = load_weights(model, sd, spec)
    sd = without_derived(sd, model)  # rebuilt from the configuration when loaded: not stored
    out.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(sd, out, metadata={"model": spec.name})  # a unique temporary name per writer
    extra = f"; not in checkpoint: {len(loaded.newly_initialised)} (covers {loaded.covers})"
    text = f"wrote {out}: {len(sd)} tensors for {spec.name}{extra if loaded.newly_initialised else ''}"
    data = {"output": out, "model": spec.name, "tensors": len(sd), "covers": loaded.covers}
    report(a, text, {**data, "newly_initialised": list(loaded.newly_initialised)})
    return EXIT_OK


@command(
    "card",
    help="generate model cards from the registry",
    args=[
        arg(
            "--out",
            default=None,
            help="folder to write the cards to (default: model_cards/ of the source checkout, only when "
            "run from inside it)",
        ),
        arg("--check", action="store_true", help="fail if a checked-in card is stale"),
    ],
)
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
            return EXIT_FAILURE
        print("cards up to date")
        return EXIT_OK
    for p in write_cards(out):
        print(p)
    return EXIT_OK
