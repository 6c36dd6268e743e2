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

__all__ = [
    "InitReading",
    "WeightsOrigin",
    "identify_digest",
    "identify_file",
    "load_record",
    "random_parts",
    "read_init",
]


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


# A digest is remembered per file state: planning a version-1 run whose init is a path (every
# `zoo predict RUN`) would otherwise read a multi-GB checkpoint whole each time.
_DIGESTS: dict[tuple[Any, ...], dict[str, str]] = {}
_DIGESTS_KEPT = 64


def _remembered_digests(path: Path) -> dict[str, str]:
    """``file_digests`` of ``path``, read again only when its size, times or inode changed.

    A memo rather than a lazy hash: every plan carries its lineage, identified, so a lazy hash
    would still be taken on each command. The key holds the ctime, which ``touch`` cannot set
    back, so a file rewritten in place is read again.
    """
    from zoo.hub import file_digests

    st = path.stat()
    key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    found = _DIGESTS.get(key)
    if found is None:
        found = file_digests(path)
        if len(_DIGESTS) >= _DIGESTS_KEPT:
            _DIGESTS.pop(next(iter(_DIGESTS)))
        _DIGESTS[key] = found
    return dict(found)


# How a start was found to be registered weights without a digest match made now.
_BY_RECORD, _BY_TAG, _BY_NAME = "load record", "registry tag", "name"


@dataclass(frozen=True)
class InitReading:
    """What a config's ``init`` names (a load record, ``name.tag`` or a path), read once.

    The one reader of that record: :func:`lineage_of_config` takes its ``lineage`` for a
    config that recorded none, ``zoo.publish`` words the card from the rest.

    Attributes:
        form: ``none`` (random), ``record``, ``hf-hub`` (a record of a Hub load), ``name``
            (a registered ``name.tag``), ``file`` (a path) or ``gone`` (a path no longer there).
        record: the load record; for a path, ``{"source": "file", "id", "sha256"}``.
        sha256: the digest of the file it started from (None: not recorded, or a name).
        registered: the registered weights it is: by its digest now, else by what the load
            identified (the cache may since be gone), else by a registry record's tag or its name.
        lineage: the chain it descends from, oldest first, it included (recorded, or established here).
    """

    form: str
    record: dict[str, Any] | None = None
    sha256: str | None = None
    registered: WeightsOrigin | None = None
    lineage: tuple[Any, ...] = ()

    @property
    def by_digest(self) -> bool:
        """Whether the registered weights were found by the digest, now."""
        return self.registered is not None and self.registered.matched not in (_BY_RECORD, _BY_TAG, _BY_NAME)

    @property
    def license(self) -> str | None:
        """The licence of the start itself: registered weights', or what a Hub load recorded.

        A file's or a run's inherited licence is its lineage's (:func:`chain_licence`)."""
        if self.registered is not None:
            return self.registered.license
        return (self.record or {}).get("license") if self.form == "hf-hub" else None

    @property
    def redistributable(self) -> bool | None:
        if self.registered is not None:
            return self.registered.redistributable
        return (self.record or {}).get("redistributable") if self.form == "hf-hub" else None


def _registered_as(name_tag: str | None, matched: str) -> WeightsOrigin | None:
    """The registered weights ``name_tag`` names (an id with a tag), or None."""
    from zoo._registry import resolve

    if not name_tag:
        return None
    try:
        spec, tag = resolve(name_tag)
    except ValueError:
        return None
    return _origin(spec.name, tag, matched) if tag is not None else None


def read_init(init: Any, model_name: str | None, run: Path | None) -> InitReading:
    """Read a config's ``init``: identity by digest, licence and lineage (see :class:`InitReading`).

    Args:
        init: the ``init`` as :func:`zoo.runconfig.migrate` leaves it (a dict, a string or None).
        model_name: the config's model (a registry record's tag is that model's).
        run: the folder a relative path is looked up from too.
    """
    from zoo.runconfig import Link

    if isinstance(init, str):
        named = _registered_as(init, _BY_NAME)
        if named is not None:
            covers = _covers_of(named)
            link = Link(named.id, None, named.license, named.redistributable, covers, "registry")
            return InitReading("name", None, None, named, (link,))
        p = Path(init)
        p = p if p.is_absolute() or p.exists() or run is None else run / p
        if not p.is_file():
            gone = Link(Path(init).name, None, None, None, "full", "missing")
            return InitReading(
                "gone", {"source": "file", "id": Path(init).name, "sha256": None}, None, None, (gone,)
            )
        digests = _remembered_digests(p)
        origin = identify_digest(**digests)
        link = file_link(
            p, ident=p.name, source="file", covers="full", identified=(digests["sha256"], origin)
        )
        record = {"source": "file", "id": p.name, "sha256": digests["sha256"]}
        return InitReading("file", record, digests["sha256"], origin, (link,))
    if not isinstance(init, dict):
        return InitReading("none")
    record = dict(init)
    sha = record.get("sha256")
    source = str(record.get("source") or "file")
    # The digest decides; what the load identified at the time (the cache may since be gone) backs it
    # up; a registry load that recorded neither is its tag.
    registered = identify_digest(sha256=sha) if sha else None
    if registered is None and record.get("identified_as"):
        registered = _registered_as(str(record["identified_as"]), _BY_RECORD)
    elif registered is None and record.get("tag") and model_name and source == "registry":
        registered = _registered_as(f"{model_name}.{record['tag']}", _BY_TAG)
    form = "hf-hub" if source == "hf-hub" else "record"
    recorded = tuple(
        Link(**link) for link in record.get("lineage") or [] if isinstance(link, dict) and "id" in link
    )
    if recorded:
        return InitReading(form, record, sha, registered, recorded)
    covers = str(record.get("covers") or "full")
    if registered is not None:
        link = Link(registered.id, sha, registered.license, registered.redistributable, covers, "registry")
    else:
        known = sha is not None or source == "hf-hub"
        link = Link(
            str(record.get("id") or "a checkpoint"),
            sha,
            record.get("license"),
            record.get("redistributable"),
            covers,
            source if known else "missing",
        )
    return InitReading(form, record, sha, registered, (link,))


def _covers_of(origin: WeightsOrigin) -> str:
    from zoo._registry import get_spec

    return get_spec(origin.name).weight(origin.tag).covers


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
    return read_init(config.init, config.model_name, folder).lineage


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
