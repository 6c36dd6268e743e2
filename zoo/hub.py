"""Weights: resolve → download → verify → convert → cache (publishing lives in ``zoo.publish``).

This module knows nothing about any architecture: it moves files, checks digests and
hands upstream checkpoints to the family converter named by the :class:`ModelSpec`.

Resolution for a weights tag (``zoo.create`` handles ``checkpoint_path`` before this):

1. The Hugging Face Hub, when the tag names a repository (:mod:`zoo.hub_repo`): its
   ``config.json`` in one request (the one the Hub counts), then the file at the commit that
   request gave, through ``hf_hub_download`` and its cache; ``HF_ENDPOINT``, ``HF_HUB_CACHE`` and
   ``HF_HUB_OFFLINE`` are read at call time. The sha256 of the file is checked on every load
   when the registry pins it. A repository or revision the Hub does not have falls back to upstream.
2. The upstream URL: downloaded once under a lock, checked against the published digest
   (git blob SHA-1 or sha256), converted to safetensors and cached under
   ``$MEDZOO_CACHE`` (default ``~/.cache/medzoo``) with a sidecar JSON (``name``, ``tag``,
   ``sha256`` of the converted file, ``source_digest`` of the upstream file). The transfer
   itself is :mod:`zoo.download`'s: HTTP, or Google Drive through ``gdown``, with
   ``MEDZOO_UPSTREAM_ENDPOINT`` as a mirror; it keeps the invariants below.

Invariants:

- Bounded transfers. Every file has a size bound: the registry's ``upstream_size`` (``size``
  for a Hub file) where recorded, else 16 bytes per parameter of the architecture + 64 MiB (float32 weights
  plus two Adam moments, with room to spare). A transfer is aborted past the bound, after
  ``stall`` seconds without a byte, and past an overall deadline scaled to the bound.
  Environment: ``MEDZOO_DOWNLOAD_MAX_BYTES`` (replaces the bound),
  ``MEDZOO_DOWNLOAD_STALL_TIMEOUT`` (default 60 s; also the Hub client's etag and
  download timeouts unless ``HF_HUB_ETAG_TIMEOUT`` / ``HF_HUB_DOWNLOAD_TIMEOUT`` are set),
  ``MEDZOO_DOWNLOAD_DEADLINE`` (seconds; default 120 + bound / 256 KiB/s).
- Network failures raise :class:`DownloadError` (upstream) or :class:`HubError` (Hub),
  both :class:`WeightsUnavailableError`, with one line naming the source and what to do.
  An HTML or text answer is reported as a web page, never handed to the unpickler.
- Nothing partial survives: downloads and conversions write to uniquely named
  ``.<target>.*.part`` files beside the target, removed on failure; those a killed process
  left are removed by the next process that holds the lock.
- One lock per cache file covers the check, the download, the conversion, the sidecar and
  the rename; the sidecar is written before the file is renamed into place, so a cache
  file never exists without its record. A file that fails its digest is deleted, never used.
- On every load the cached file's sha256 is checked against its sidecar, and the sidecar's
  name, tag and source digest against the registry's pin. A tag with no pinned digest
  loads with one WARNING per process that shows the sha256 to pin
  (``zoo download NAME.TAG --print-digest`` prints the registry line).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from filelock import FileLock

from zoo._files import write_atomically, write_bytes_atomically
from zoo._registry import ModelSpec, WeightSpec
from zoo.convert import web_page_excerpt
from zoo.transfer import (
    _CHUNK,
    _MIB,
    DownloadError,
    DownloadLimits,
    HubError,
    WeightsUnavailableError,
    _page_error,
    cache_dir,
    is_offline,
    limits_for,
)

log = logging.getLogger("zoo.hub")

__all__ = [
    "WeightsUnavailableError",
    "DownloadError",
    "HubError",
    "DigestMismatchError",
    "DownloadLimits",
    "cache_dir",
    "download_limits",
    "limits_for",
    "fetch_weights",
    "file_digest",
    "file_digests",
    "registry_digest_line",
    "save_safetensors",
    "web_page_excerpt",
]


class DigestMismatchError(ValueError):
    """A file whose digest differs from the one the registry pins."""


def file_digests(path: str | Path, algos: tuple[str, ...] = ("sha256", "gitsha1")) -> dict[str, str]:
    """Hex digests of a file in one read: ``sha256`` and/or ``gitsha1`` (git's blob SHA-1)."""
    path = Path(path)
    hashers = {}
    for algo in algos:
        if algo == "sha256":
            hashers[algo] = hashlib.sha256()
        elif algo == "gitsha1":
            hashers[algo] = hashlib.sha1()
            hashers[algo].update(b"blob %d\0" % path.stat().st_size)
        else:
            raise ValueError(f"unknown digest algorithm {algo!r} (sha256 or gitsha1)")
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {algo: h.hexdigest() for algo, h in hashers.items()}


def file_digest(path: str | Path, algo: str = "sha256") -> str:
    """Hex digest of a file: ``sha256``, or ``gitsha1`` (git's blob SHA-1)."""
    return file_digests(path, (algo,))[algo]


def _check_digest(path: Path, expected: str, what: str) -> None:
    algo, _, want = expected.partition(":")
    got = file_digest(path, algo)
    if got != want.lower():
        raise DigestMismatchError(f"{what}: {algo} digest {got} does not match the pinned {want}")


_WARNED: set[tuple[str, str]] = set()
_WARNED_LOCK = threading.Lock()


def _warn_unpinned(what: str, sha256: str, pin: str) -> None:
    """One WARNING per process and file: the digest of weights the registry does not pin."""
    with _WARNED_LOCK:
        if (what, sha256) in _WARNED:
            return
        _WARNED.add((what, sha256))
    log.warning(
        "%s is unpinned: the registry has no digest for it, so its content is not verified. "
        "Loaded file sha256 %s; pin it in the registry as %s",
        what,
        sha256,
        pin,
    )


# ------------------------------------------------------------------------ limits


def size_bound(spec: ModelSpec, ws: WeightSpec, hub: bool = False) -> tuple[int, bool]:
    """The most bytes a download of ``ws`` (its Hub file if ``hub``) may bring, and whether that is exact."""
    # Recorded sizes: the Hub file's ``size``; ``upstream_size`` as `zoo download --print-digest` prints it.
    exact = ws.size if hub else getattr(ws, "upstream_size", None)
    if exact:
        return int(exact), True
    params = spec.meta.get("num_params")
    if params:
        # float32 weights + Adam's two moments = 12 bytes per parameter; 16 leaves room for extras.
        return 16 * int(params) + 64 * _MIB, False
    return 4 << 30, False


def download_limits(spec: ModelSpec, ws: WeightSpec, hub: bool = False) -> DownloadLimits:
    """The size bound, stall timeout and deadline for a download of ``ws``: :func:`limits_for`
    of :func:`size_bound`."""
    return limits_for(size_bound(spec, ws, hub)[0])


def _registry_hub_download(spec: ModelSpec, ws: WeightSpec, commit: str | None, **extra: Any) -> Path:
    """The Hub file of a registered weights tag at ``commit`` (else its pinned revision), bounded
    by its recorded size."""
    from zoo.hub_repo import hub_download, hub_label

    return hub_download(
        str(ws.hf_hub_id),
        ws.hf_filename,
        commit or ws.hf_revision,
        download_limits(spec, ws, hub=True),
        refetch=f"run `zoo download {spec.name}.{ws.tag}` once while online",
        where=hub_label(str(ws.hf_hub_id), ws.hf_filename, ws.hf_revision),
        **extra,
    )


def _hub_commit(spec: ModelSpec, ws: WeightSpec) -> str | None:
    """The commit of the tag's revision, from the load's one ``config.json`` request (the one the
    Hub counts); None when the repository has none and did not say, or offline with nothing cached
    by this version (the client's cache of the revision is used then)."""
    from zoo.hub_repo import request_config

    refetch = f"run `zoo download {spec.name}.{ws.tag}` once while online"
    try:
        return request_config(str(ws.hf_hub_id), ws.hf_revision, refetch).commit
    except HubError as e:
        if e.kind == "offline":
            return None
        raise


def _from_hub(spec: ModelSpec, ws: WeightSpec) -> Path:
    from zoo.hub_repo import hub_label, remove_hub_file

    commit = _hub_commit(spec, ws)
    path = _registry_hub_download(spec, ws, commit)
    where = hub_label(str(ws.hf_hub_id), ws.hf_filename, ws.hf_revision)
    if ws.sha256 is None:
        sha = file_digest(path)
        _warn_unpinned(f"{spec.name}.{ws.tag} ({where})", sha, f"sha256={sha!r}")
        return path
    advice = (
        "; the copy was removed. The repository no longer holds the pinned file: report it, or pin "
        "the new digest only if you trust the new file"
    )
    try:
        _check_digest(path, f"sha256:{ws.sha256}", where)
        return path
    except DigestMismatchError as e:
        remove_hub_file(path)
        if is_offline():
            raise DigestMismatchError(
                f"{e}; the cached copy was removed and offline mode forbids a new download"
            ) from e
        log.warning("%s; removed it, downloading again", e)
    path = _registry_hub_download(spec, ws, commit, force_download=True)
    try:
        _check_digest(path, f"sha256:{ws.sha256}", where)
    except DigestMismatchError as e:
        remove_hub_file(path)
        raise DigestMismatchError(f"{e}{advice}") from e
    return path


# ------------------------------------------------------------------------- cache


def converted_path(spec: ModelSpec, ws: WeightSpec) -> Path:
    """Where the converted safetensors of an upstream checkpoint is cached."""
    return cache_dir() / "converted" / f"{spec.name}.{ws.tag}.safetensors"


def _part_name(target: Path) -> str:
    """The start of the temporary names of ``target``: ``zoo._files.write_atomically``'s scheme."""
    return f".{target.name}."


def _remove_stale_parts(target: Path) -> None:
    """Remove what an interrupted process left for ``target`` (call with its lock held)."""
    # The second pattern: temporary names of versions before the hidden ones.
    for pattern in (f"{_part_name(target)}*.part", f"{target.name}.*.part"):
        for p in target.parent.glob(pattern):
            log.info("removing %s, left by an interrupted download", p)
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def save_safetensors(sd: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None) -> str:
    """Write ``sd`` to ``path`` atomically through a uniquely named temporary file.

    Two writers of one path both succeed (the last rename wins); a failed write leaves nothing.

    Returns:
        The sha256 of the written file.
    """
    from safetensors.torch import save_file

    digest = ""

    def write(tmp: Path) -> None:
        nonlocal digest
        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp), metadata=metadata)
        digest = file_digest(tmp)

    write_atomically(path, write)
    return digest


def _sidecar(target: Path) -> Path:
    return target.with_suffix(".json")


def _source_matches(meta: dict[str, Any], pin: str) -> bool:
    recorded = meta.get("source_digest")
    sha = meta.get("source_sha256")
    return recorded == pin or (sha is not None and pin == f"sha256:{sha}")


def _cached_converted(target: Path, spec: ModelSpec, ws: WeightSpec) -> dict[str, Any] | None:
    """The cached file's record if the file is intact and agrees with the registry; a bad one is removed."""
    sidecar = _sidecar(target)
    if not target.exists():
        sidecar.unlink(missing_ok=True)
        return None
    try:
        meta = json.loads(sidecar.read_text())
        if not isinstance(meta, dict):
            raise ValueError("its record is not a JSON object")
        if (meta.get("name"), meta.get("tag")) != (spec.name, ws.tag):
            raise ValueError(f"its record names {meta.get('name')}.{meta.get('tag')}")
        if ws.upstream_digest and not _source_matches(meta, ws.upstream_digest):
            raise DigestMismatchError(
                f"it was converted from {meta.get('source_digest')}, "
                f"but the registry pins {ws.upstream_digest}"
            )
        _check_digest(target, f"sha256:{meta['sha256']}", f"cached {target.name}")
        stamp = _safetensors_metadata(target)
        if (stamp.get("name"), stamp.get("tag"), stamp.get("source_digest")) != (
            spec.name,
            ws.tag,
            meta.get("source_digest"),
        ):
            raise DigestMismatchError(
                "the file is not the one its record describes (the file says "
                f"{stamp.get('name')}.{stamp.get('tag')} from {stamp.get('source_digest')})"
            )
        return meta
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("cache file %s is not valid (%s); removing it", target, e)
        target.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
        return None


def _safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error type
        raise ValueError(f"not a readable safetensors file ({e})") from e


def _warn_if_unpinned(spec: ModelSpec, ws: WeightSpec, meta: dict[str, Any]) -> None:
    if ws.upstream_digest is None and meta.get("source_sha256"):
        sha = meta["source_sha256"]
        _warn_unpinned(f"{spec.name}.{ws.tag} (upstream {ws.url})", sha, f"upstream_digest='sha256:{sha}'")


def _from_upstream(spec: ModelSpec, ws: WeightSpec, progress: bool) -> Path:
    from zoo.convert import convert_checkpoint, read_checkpoint
    from zoo.download import fetch_upstream  # it builds on this module's limits and errors

    target = converted_path(spec, ws)
    what = f"{spec.name}.{ws.tag}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        _remove_stale_parts(target)
        if (meta := _cached_converted(target, spec, ws)) is not None:
            _warn_if_unpinned(spec, ws, meta)
            return target
        if is_offline():
            raise WeightsUnavailableError(
                f"{what} is not in the cache ({target}) and offline mode is on "
                "(HF_HUB_OFFLINE/MEDZOO_OFFLINE). Download it once with `zoo download "
                f"{what}` while online, or pass checkpoint_path= to a local file."
            )
        assert ws.url is not None
        limits = download_limits(spec, ws)
        work = Path(tempfile.mkdtemp(dir=target.parent, prefix=_part_name(target), suffix=".part"))
        try:
            raw = work / "upstream"
            url = fetch_upstream(ws.url, raw, limits, progress, what)
            if (page := web_page_excerpt(raw)) is not None:
                raise _page_error(what, url, page)
            source_sha = file_digest(raw)
            if ws.upstream_digest:
                _check_digest(raw, ws.upstream_digest, f"{what}: upstream file {url}")
            sd = convert_checkpoint(read_checkpoint(raw), spec)
            converted = work / "converted.safetensors"
            source_digest = ws.upstream_digest or f"sha256:{source_sha}"
            # Also inside the file: a file swapped in with a recomputed record still lacks these.
            stamp = {"source": ws.url or "", "name": spec.name, "tag": ws.tag, "source_digest": source_digest}
            digest = save_safetensors(sd, converted, metadata=stamp)
            meta = {
                "name": spec.name,
                "tag": ws.tag,
                "sha256": digest,
                "source_url": ws.url,
                "source_digest": source_digest,
                "source_sha256": source_sha,
                "source_size": raw.stat().st_size,
            }
            # The record goes first: a cache file never exists without it.
            write_bytes_atomically(_sidecar(target), json.dumps(meta, indent=1))
            os.replace(converted, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        _warn_if_unpinned(spec, ws, meta)
    log.info("cached %s", target)
    return target


# --------------------------------------------------------------------- resolver


def fetch_weights(spec: ModelSpec, ws: WeightSpec, progress: bool = True) -> Path:
    """Local path of the verified safetensors file for one weights tag.

    Tries the Hub (when the tag names a repository), then the upstream URL. A Hub
    repository or file that does not exist (404) falls back to upstream; other errors
    are collected and reported together.

    Raises:
        HubError / DownloadError (both WeightsUnavailableError): when no source can provide the file.
        DigestMismatchError: when a downloaded file fails its pinned digest.
    """
    errors: list[WeightsUnavailableError] = []
    if ws.hf_hub_id:
        try:
            return _from_hub(spec, ws)
        except HubError as e:
            errors.append(e)
            if ws.url:
                log.info("%s; trying upstream", e)
    if ws.url:
        try:
            path = _from_upstream(spec, ws, progress)
        except WeightsUnavailableError as e:
            errors.append(e)
        else:
            # Said once: here when the upstream served the file, in the error when it did not either.
            if errors and getattr(errors[0], "kind", None) != "not-found":
                log.warning("%s; loaded from upstream instead", errors[0])
            return path
    if not errors:
        raise WeightsUnavailableError(
            f"cannot obtain weights {spec.name}.{ws.tag}: no Hub repository and no upstream URL registered"
        )
    last = errors[-1]
    message = f"cannot obtain weights {spec.name}.{ws.tag}: " + "; ".join(str(e) for e in errors)
    err = HubError(last.kind, message) if isinstance(last, HubError) else type(last)(message)
    raise err from last


def registry_digest_line(spec: ModelSpec, ws: WeightSpec, path: Path) -> str:
    """The registry fields that pin what ``fetch_weights`` just verified or downloaded (to paste).

    Returns:
        ``upstream_digest=…, upstream_size=…`` for a converted upstream file (from its sidecar),
        ``sha256=…, size=…`` for a Hub file.
    """
    sidecar = _sidecar(path)
    if path.parent == converted_path(spec, ws).parent and sidecar.is_file():
        meta = json.loads(sidecar.read_text())
        sha, size = meta.get("source_sha256"), meta.get("source_size")
        if sha and size:
            return f'upstream_digest="sha256:{sha}", upstream_size={size},  # {spec.name}.{ws.tag}'
        return f'upstream_digest="{meta["source_digest"]}",  # {spec.name}.{ws.tag}'
    size = path.stat().st_size
    return f'sha256="{file_digest(path)}", size={size},  # {spec.name}.{ws.tag} ({ws.hf_hub_id})'
