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
