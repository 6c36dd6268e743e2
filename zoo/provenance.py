"""Provenance by content: which registered weights a file is, whatever it is called.

A checkpoint is identified by its digests, never by its name or path: the sha256 of a
converted safetensors file (the registry's pin of a Hub file, or the record that the cache
keeps beside every file it converted here) and the sha256 / git blob SHA-1 of an upstream
file (the registry's ``upstream_digest``). Licences follow content: a run that started
from a file whose digest belongs to non-redistributable weights carries that restriction,
however the file was named (``zoo publish`` checks it).

The record of one load, ``model.pretrained_cfg["weights"]``, is the same everywhere a
model is built (``zoo.create``, ``zoo finetune``, ``zoo pretrain --init``):
``{"source", "id", "tag", "sha256", "covers", "newly_initialised", "identified_as"}``,
or None for random initialisation.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("zoo.provenance")

__all__ = ["WeightsOrigin", "identify_digest", "identify_file", "load_record", "random_parts"]


@dataclass(frozen=True)
class WeightsOrigin:
    """A registered weights tag that a digest belongs to."""

    name: str
    tag: str
    matched: str  # "hub sha256", "cached conversion", "upstream sha256" or "upstream gitsha1"
    license: str
    redistributable: bool

    @property
    def id(self) -> str:
        return f"{self.name}.{self.tag}"


def _origin(name: str, tag: str, matched: str) -> WeightsOrigin | None:
    from zoo._registry import get_spec

    try:
        ws = get_spec(name).weight(tag)
    except ValueError:
        return None
    return WeightsOrigin(name, tag, matched, ws.license, ws.redistributable)


def _cache_records() -> list[dict[str, Any]]:
    """The sidecar records of every converted file in medzoo's cache."""
    from zoo.hub import cache_dir

    records = []
    for sidecar in sorted((cache_dir() / "converted").glob("*.json")):
        try:
            rec = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and rec.get("name") and rec.get("tag"):
            records.append(rec)
    return records


def identify_digest(sha256: str | None = None, gitsha1: str | None = None) -> WeightsOrigin | None:
    """The registered weights whose file has this sha256 (or git blob SHA-1), if any.

    Looks at the registry's pins (Hub file sha256, upstream digest) and at the records of
    the files converted in this machine's cache.
    """
    from zoo._registry import iter_specs

    sha256 = (sha256 or "").lower() or None
    gitsha1 = (gitsha1 or "").lower() or None
    for spec in iter_specs():
        for ws in spec.weights:
            if sha256 and ws.sha256 and ws.sha256.lower() == sha256:
                return _origin(spec.name, ws.tag, "hub sha256")
            if ws.upstream_digest:
                algo, _, want = ws.upstream_digest.partition(":")
                want = want.lower()
                if (algo == "sha256" and want == sha256) or (algo == "gitsha1" and want == gitsha1):
                    return _origin(spec.name, ws.tag, f"upstream {algo}")
    for rec in _cache_records():
        source = str(rec.get("source_digest") or "")
        algo, _, want = source.partition(":")
        if sha256 and str(rec.get("sha256", "")).lower() == sha256:
            return _origin(rec["name"], rec["tag"], "cached conversion")
        if (algo == "sha256" and want.lower() == sha256) or (algo == "gitsha1" and want.lower() == gitsha1):
            return _origin(rec["name"], rec["tag"], f"upstream {algo}")
    return None


def identify_file(path: str | Path) -> tuple[str, WeightsOrigin | None]:
    """``(sha256, origin)`` of a checkpoint file: its digest and the registered weights it is, if any."""
    from zoo.hub import file_digests

    digests = file_digests(Path(path))  # sha256 and git blob SHA-1 in one read
    return digests["sha256"], identify_digest(**digests)


def load_record(
    *,
    source: str,
    ident: str,
    tag: str | None,
    path: Path,
    covers: str,
    newly_initialised: list[str],
    sha256: str | None = None,
    origin: WeightsOrigin | None = None,
) -> dict[str, Any]:
    """The ``pretrained_cfg["weights"]`` record of one load (see the module docstring).

    Args:
        source: ``"registry"`` (a tag, through the Hub or upstream), ``"file"`` (a
            checkpoint path), ``"run"`` (a zoo run folder), ``"hf-hub"`` (a Hub id).
        ident: the tag id, Hub id or file name that was asked for.
        path: the file that was read.
        covers: the part the checkpoint held (``full``, ``encoder`` …).
        newly_initialised: model keys the checkpoint did not hold (random).
    """
    if sha256 is None or origin is None:
        sha256, found = identify_file(path)
        origin = origin or found
    return {
        "source": source,
        "id": ident,
        "tag": tag,
        "sha256": sha256,
        "covers": covers,
        "newly_initialised": random_parts(newly_initialised),
        "identified_as": origin.id if origin else None,
        "license": origin.license if origin else None,
        "redistributable": origin.redistributable if origin else None,
    }


def random_parts(keys: list[str]) -> list[str]:
    """Top-level module names of newly initialised keys (``decoder``, ``head`` …), for messages."""
    return sorted({k.split(".", 1)[0] for k in keys})


# ----------------------------------------------------------------------------------- lineage


def _tensor_digest(path: Path, keys: list[str]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``keys`` of a safetensors file."""
    import hashlib

    import torch
    from safetensors import safe_open

    h = hashlib.sha256()
    with safe_open(str(path), framework="pt") as f:
        for k in sorted(keys):
            t = f.get_tensor(k).contiguous()
            h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _safetensors_keys(path: Path) -> list[str] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception:  # not a safetensors file: an upstream checkpoint, identified by its digest only
        return None


def _registered_files(spec: Any) -> list[tuple[Any, Path]]:
    """``(WeightSpec, converted file)`` of ``spec``'s tags whose weights this machine holds."""
    from zoo.hub import converted_path

    out = []
    for ws in spec.weights:
        try:
            path = converted_path(spec, ws)
        except Exception:
            continue
        if path.is_file():
            out.append((ws, path))
    return out


def _derived_keys(spec: Any) -> set[str]:
    """The derived-buffer keys of ``spec``'s registered configuration (built on the meta device)."""
    import torch

    from zoo.layers.derived import derived_buffer_keys

    try:
        with torch.device("meta"):
            return derived_buffer_keys(spec.builder(**spec.model_args))
    except Exception:  # a builder that needs real tensors: every registered key is compared, as before
        return set()


def identify_parts(path: str | Path, spec: Any) -> WeightsOrigin | None:
    """Registered weights of ``spec`` whose tensors ``path`` holds byte for byte, in a part or whole.

    A run whose encoder was frozen holds its starting encoder unchanged: those tensors carry
    that encoder's licence whatever the run's records say. Compared against the registered
    files this machine holds (the converted cache), part by part (``full``, ``encoder`` …).
    """
    path = Path(path)
    mine = _safetensors_keys(path)
    if not mine:
        return None
    mine_set = set(mine)
    parts = {"full": ("",), **spec.partial_components}
    derived: set[str] | None = None
    for ws, reg in _registered_files(spec):
        theirs = _safetensors_keys(reg) or []
        if derived is None and not mine_set.issuperset(theirs):
            derived = _derived_keys(spec)
        # A run's file leaves out the buffers the model rebuilds; a cached conversion may hold them.
        theirs = [k for k in theirs if k in mine_set or k not in (derived or ())]
        for part, prefixes in parts.items():
            keys = [k for k in theirs if k.startswith(tuple(prefixes))]
            if not keys or not mine_set.issuperset(keys):
                continue
            if _tensor_digest(path, keys) == _tensor_digest(reg, keys):
                return WeightsOrigin(
                    spec.name, ws.tag, f"content ({part} tensors)", ws.license, ws.redistributable
                )
    return None


def file_link(
    path: str | Path,
    *,
    ident: str,
    source: str,
    covers: str,
    spec: Any = None,
    identified: tuple[str, WeightsOrigin | None] | None = None,
) -> Any:
    """The :class:`zoo.runconfig.Link` of one loaded file, identified by content.

    Its whole-file digest is looked up among registered weights (pins, upstream digests,
    cached conversions), then its tensors part by part (:func:`identify_parts`); registered
    weights carry their licence, anything else is the user's own (licence unknown).
    ``identified`` is :func:`identify_file`'s ``(sha256, origin)`` when the caller has it
    already (the file is not read twice).
    """
    from zoo.runconfig import Link

    sha, origin = identified if identified is not None else identify_file(path)
    if origin is None and spec is not None:
        origin = identify_parts(path, spec)
    if origin is not None:
        how = (
            "content"
            if origin.matched.startswith("content")
            else ("registry" if source == "registry" else source)
        )
        return Link(origin.id, sha, origin.license, origin.redistributable, covers, how)
    return Link(ident, sha, None, None, covers, source)


def _link_from_record(record: Any, model_name: str | None, run: Path | None) -> list[Any]:
    """Links of what a version-1 config's ``init`` names (a load record, ``name.tag`` or a path)."""
    from zoo._registry import resolve
    from zoo.runconfig import Link

    if record is None:
        return []
    if isinstance(record, str):
        try:
            spec, tag = resolve(record)
        except ValueError:
            spec, tag = None, None
        if spec is not None and tag is not None:
            ws = spec.weight(tag)
            return [Link(f"{spec.name}.{tag}", None, ws.license, ws.redistributable, ws.covers, "registry")]
        p = Path(record)
        p = p if p.is_absolute() or p.exists() or run is None else run / p
        if p.is_file():
            return [file_link(p, ident=p.name, source="file", covers="full")]
        return [Link(Path(record).name, None, None, None, "full", "missing")]
    if not isinstance(record, dict):
        return []
    links = [Link(**link) for link in record.get("lineage") or [] if isinstance(link, dict) and "id" in link]
    if links:
        return links
    sha = record.get("sha256")
    origin = identify_digest(sha256=sha) if sha else None
    reg_id = origin.id if origin else record.get("identified_as")
    if reg_id is None and record.get("tag") and model_name and record.get("source") == "registry":
        reg_id = f"{model_name}.{record['tag']}"
    covers = str(record.get("covers") or "full")
    if reg_id:
        try:
            spec, tag = resolve(reg_id)
            ws = spec.weight(tag) if tag else None
        except ValueError:
            ws = None
        if ws is not None:
            return [Link(reg_id, sha, ws.license, ws.redistributable, covers, "registry")]
    source = str(record.get("source") or "file")
    known = sha is not None or source == "hf-hub"
    return [
        Link(
            str(record.get("id") or "a checkpoint"),
            sha,
            record.get("license"),
            record.get("redistributable"),
            covers,
            source if known else "missing",
        )
    ]


def lineage_of_config(config: Any, folder: Path | None = None) -> tuple[Any, ...]:
    """The chain of weights a config's weights descend from, oldest first.

    Schema 2 records it (``lineage``); an older config's is established from its ``init``
    (by digest where it recorded one). A registered tag's own folder is that tag.
    """
    from zoo.runconfig import Link

    if config.lineage:
        return tuple(config.lineage)
    if config.kind == "tag" and config.tag:
        ws = config.spec.weight(config.tag) if config.tag in config.spec.tags else None
        if ws is not None:
            return (
                Link(
                    f"{config.model_name}.{config.tag}",
                    config.sha256,
                    ws.license,
                    ws.redistributable,
                    ws.covers,
                    "registry",
                ),
            )
    return tuple(_link_from_record(config.init, config.model_name, folder))


def chain_licence(chain: Any) -> tuple[str | None, bool | None, Any]:
    """``(licence, redistributable, the link that decides)`` of a chain.

    A link that may not be redistributed decides (the first); else the newest link with a
    known licence; ``redistributable`` is None when no link states one.
    """
    for link in chain:
        if link.redistributable is False:
            return link.license, False, link
    for link in reversed(tuple(chain)):
        if link.license is not None:
            return link.license, link.redistributable, link
    return None, None, None
