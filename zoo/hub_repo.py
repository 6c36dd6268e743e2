"""The Hugging Face Hub's side of medzoo: the requests it makes of a Hub repository.

Two kinds of repository are read: those the registry names for a weights tag
(``WeightSpec.hf_hub_id``), and models published with ``zoo publish``, loaded back by their Hub
id, ``hf-hub:ORG/NAME[@REVISION]``. A load of either makes its requests in this order:

1. ``config.json``, in exactly one ``GET``: the Hub counts a model's downloads by the requests
   to its ``config.json`` (``GET`` and ``HEAD`` alike), so a load is counted once, cold or warm,
   and announced as ``library_name="medzoo"`` with medzoo's version. The answer's commit pins
   the rest of the load; the file is kept in medzoo's cache (``cache_dir()/hub``) with the
   commit each revision last pointed at, for offline loads and for an unreachable Hub. A
   medzoo repository is refused here, before any weights, when its config is missing (for an
   ``hf-hub:`` id; a registry tag's file is pinned by its sha256 and needs no config).
2. The weights, through ``huggingface_hub.hf_hub_download`` at that commit (its cache,
   ``HF_ENDPOINT``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``), within a byte bound, a stall timeout
   and a deadline. A commit's file once cached is read without any request; the Hub does not
   count requests for weights files.

The client's own two-request pattern for a cold file (``HEAD`` then ``GET``) would count a
config twice, which is why step 1 is a plain request through ``urllib`` with the client's
headers (its token and user agent), and step 2 is the client.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.error
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo._files import write_bytes_atomically
from zoo._version import __version__
from zoo.transfer import (
    DownloadLimits,
    HubError,
    WeightsUnavailableError,
    _Transfer,
    cache_dir,
    is_offline,
    limits_for,
    network_failure,
    open_url,
)

__all__ = [
    "HUB_PREFIX",
    "HubConfig",
    "is_hub_id",
    "parse_hub_id",
    "request_config",
    "fetch_config",
    "fetch_weights",
    "hub_download",
    "hub_label",
    "remove_hub_file",
]

log = logging.getLogger("zoo.hub")

HUB_PREFIX = "hf-hub:"
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
CONFIG_FILE = "config.json"


def is_hub_id(value: object) -> bool:
    """Whether ``value`` is a string starting with ``hf-hub:``."""
    return isinstance(value, str) and value.strip().startswith(HUB_PREFIX)


def parse_hub_id(value: str) -> tuple[str, str | None]:
    """``(repo_id, revision)`` of ``hf-hub:ORG/NAME[@REVISION]``.

    Raises:
        ValueError: when the text after ``hf-hub:`` is not ``ORG/NAME`` (with an optional ``@REVISION``).
    """
    body = value.strip()[len(HUB_PREFIX) :]
    repo_id, at, revision = body.partition("@")
    if not _REPO_RE.match(repo_id) or ".." in repo_id or (at and not revision):
        raise ValueError(f"expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION, got {value!r}")
    return repo_id, (revision or None)


def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "").rstrip("/") or "https://huggingface.co"


def _hf_cache() -> str | None:
    return os.environ.get("HF_HUB_CACHE") or None


# ------------------------------------------------------------------ config.json: one request


@dataclass(frozen=True)
class HubConfig:
    """What the ``config.json`` request of a load gave.

    Attributes:
        commit: the commit the revision pointed at (None: unknown, offline with nothing cached).
        path: the config in medzoo's cache (None: the repository has no ``config.json``).
    """

    commit: str | None
    path: Path | None


def _cache_folder(repo_id: str) -> Path:
    return cache_dir() / "hub" / ("models--" + repo_id.replace("/", "--"))


def _ref_file(repo_id: str, revision: str | None) -> Path:
    return _cache_folder(repo_id) / "refs" / urllib.parse.quote(revision or "main", safe="")


def _config_file(repo_id: str, commit: str) -> Path:
    return _cache_folder(repo_id) / "configs" / f"{commit}.json"


def _cached_config(repo_id: str, revision: str | None) -> HubConfig | None:
    """The config a revision last gave (medzoo's cache, else the Hub client's), or None."""
    from huggingface_hub import try_to_load_from_cache

    commit = revision if _COMMIT_RE.match(revision or "") else None
    ref = _ref_file(repo_id, revision)
    if commit is None and ref.is_file():
        text = ref.read_text(encoding="ascii", errors="replace").strip()
        commit = text if _COMMIT_RE.match(text) else None
    if commit is not None:
        path = _config_file(repo_id, commit)
        if path.is_file():
            return HubConfig(commit, path)
        if path.with_suffix(".none").is_file():  # the Hub said this commit has no config.json
            return HubConfig(commit, None)
    # A config fetched by an earlier medzoo through the client lies in the client's cache.
    found = try_to_load_from_cache(repo_id, CONFIG_FILE, cache_dir=_hf_cache(), revision=revision)
    if isinstance(found, str):
        return HubConfig(Path(found).parent.name, Path(found))
    return None


def _refusal(e: urllib.error.HTTPError, where: str, endpoint: str) -> HubConfig:
    """The Hub's answer to a config request that did not give the file: a missing file is an
    answer (``HubConfig(commit, None)``); everything else raises one :class:`HubError`."""
    code, status = e.headers.get("X-Error-Code", ""), e.code
    commit = e.headers.get("X-Repo-Commit", "")
    if status == 404 and code == "EntryNotFound":
        return HubConfig(commit if _COMMIT_RE.match(commit) else None, None)
    if code == "RepoNotFound" or (status == 404 and code != "RevisionNotFound"):
        what = "no such repository or no access"
        err = HubError("not-found", f"{where}: not found (HTTP {status}, {what}) on {endpoint}", "repository")
    elif code == "RevisionNotFound":
        what = "no such revision"
        err = HubError("not-found", f"{where}: not found (HTTP {status}, {what}) on {endpoint}", "revision")
    elif status in (401, 403):
        err = HubError(
            "unauthorised",
            f"{where}: access refused (HTTP {status}); log in with `hf auth login` or set HF_TOKEN to a "
            "token that may read this repository",
        )
    else:
        err = HubError("http", f"{where}: HTTP {status} from {endpoint}; retry later")
    raise err from e


def _read_bounded(resp: Any, transfer: _Transfer) -> bytes:
    length = resp.headers.get("Content-Length")
    transfer.announce(int(length) if length and length.isdigit() else None)
    parts = []
    while True:
        try:
            chunk = resp.read1(64 * 1024)
        except TimeoutError as e:
            raise transfer.stall_error() from e
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        transfer.seen(transfer.received + len(chunk))


def _get_config(repo_id: str, revision: str | None, where: str) -> HubConfig:
    """One ``GET`` of ``config.json``; the answer is cached with the commit it came from."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    from zoo.runconfig import MAX_CONFIG_BYTES

    endpoint = _endpoint()
    limits = limits_for(MAX_CONFIG_BYTES, fixed=True)
    transfer = _Transfer(where, limits, HubError)
    url = hf_hub_url(repo_id, CONFIG_FILE, revision=revision, endpoint=endpoint)
    headers = build_hf_headers(library_name="medzoo", library_version=__version__)
    try:
        resp = open_url(url, headers, limits.stall_s)
    except urllib.error.HTTPError as e:
        with e:
            answer = _refusal(e, where, endpoint)
        if answer.commit is not None:  # remembered, so that an offline load knows it too
            write_bytes_atomically(_config_file(repo_id, answer.commit).with_suffix(".none"), b"")
            if revision != answer.commit:
                write_bytes_atomically(_ref_file(repo_id, revision), answer.commit.encode())
        return answer
    except OSError as e:  # URLError, a timeout, a refused or reset connection
        raise HubError(
            "unreachable",
            f"{where}: {endpoint}: {network_failure(e, limits.stall_s)}; check the network and HF_ENDPOINT, "
            "or set HF_HUB_OFFLINE=1 to use what is cached",
        ) from e
    with resp:
        commit = resp.headers.get("X-Repo-Commit", "")
        if not _COMMIT_RE.match(commit):
            what = "answered without a commit id (X-Repo-Commit): not a Hub endpoint?"
            raise HubError("http", f"{where}: {endpoint} {what}")
        try:
            data = _read_bounded(resp, transfer)
        except OSError as e:
            raise HubError("unreachable", f"{where}: {network_failure(e, limits.stall_s)}") from e
    path = write_bytes_atomically(_config_file(repo_id, commit), data)
    if revision != commit:
        write_bytes_atomically(_ref_file(repo_id, revision), commit.encode())
    return HubConfig(commit, path)


def request_config(repo_id: str, revision: str | None, refetch: str) -> HubConfig:
    """``config.json`` of a Hub repository at ``revision``, in one request (the load's counted one).

    Offline, or when the Hub cannot be reached, the config this revision last gave is used from
    the cache (with a warning when the Hub was asked and did not answer).

    Args:
        repo_id / revision: the repository and revision (None: the default branch).
        refetch: how to get the file into the cache, for the offline message.

    Raises:
        HubError: ``offline`` (nothing cached), ``unreachable``, ``unauthorised``, ``too-large``,
            ``http``, or ``not-found`` with ``missing`` = ``"repository"`` or ``"revision"``.
    """
    where = hub_label(repo_id, CONFIG_FILE, revision)
    if is_offline():
        cached = _cached_config(repo_id, revision)
        if cached is not None:
            return cached
        raise HubError(
            "offline",
            f"{where}: not in the local cache and offline mode is on (HF_HUB_OFFLINE/MEDZOO_OFFLINE); "
            + refetch,
        )
    try:
        return _get_config(repo_id, revision, where)
    except HubError as e:
        cached = _cached_config(repo_id, revision) if e.kind in ("unreachable", "http") else None
        if cached is None:
            raise
        log.warning("%s; using the config cached for commit %s", e, cached.commit)
        return cached


# ------------------------------------------------------------- files through the Hub client


def hub_label(repo_id: str, filename: str, revision: str | None) -> str:
    return f"Hub {repo_id}/{filename}@{revision or 'main'}"


def _network_errors() -> tuple[type[BaseException], ...]:
    """Timeouts and connection failures of whichever HTTP library this huggingface_hub uses."""
    errors: list[type[BaseException]] = [TimeoutError, ConnectionError]
    for module, names in (
        ("httpx2", ("TimeoutException", "NetworkError")),
        ("httpx", ("TimeoutException", "NetworkError")),
        ("requests", ("Timeout", "ConnectionError")),
    ):
        try:
            mod = __import__(module)
        except ImportError:
            continue
        errors += [getattr(mod, n) for n in names if hasattr(mod, n)]
    return tuple(errors)


def _hub_error(e: BaseException, where: str, stall: float, refetch: str) -> HubError | None:
    """One clear :class:`HubError` for a failure of the Hub client, or None if ``e`` is not one.

    Args:
        e: what the client raised.
        where: the file, as messages name it (``Hub ORG/NAME/FILE@REV``).
        stall: the timeout that applied, for the message.
        refetch: how to get the file into the cache, for the offline message.
    """
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = _endpoint()
    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(e, GatedRepoError) or (isinstance(e, HfHubHTTPError) and status in (401, 403)):
        return HubError(
            "unauthorised",
            f"{where}: access refused (HTTP {status}); log in with `hf auth login` or set HF_TOKEN to a "
            "token that may read this repository",
        )
    if isinstance(e, OfflineModeIsEnabled) or (isinstance(e, LocalEntryNotFoundError) and is_offline()):
        return HubError(
            "offline",
            f"{where}: not in the local Hub cache and offline mode is on "
            f"(HF_HUB_OFFLINE/MEDZOO_OFFLINE); {refetch}",
        )
    # LocalEntryNotFoundError is an EntryNotFoundError too: a cache miss, not a 404.
    if isinstance(e, RepositoryNotFoundError | RevisionNotFoundError | EntryNotFoundError) and not isinstance(
        e, LocalEntryNotFoundError
    ):
        return HubError(
            "not-found",
            f"{where}: not found (HTTP 404, {type(e).__name__}) on {endpoint}; check the repository, "
            "file and revision in the registry",
        )
    cause = e.__cause__ if isinstance(e, LocalEntryNotFoundError) and e.__cause__ is not None else e
    if isinstance(cause, _network_errors()):
        return HubError(
            "unreachable",
            f"{where}: {endpoint}: {network_failure(cause, stall)}; check the network and HF_ENDPOINT, "
            "or set HF_HUB_OFFLINE=1 to use what is cached",
        )
    if isinstance(e, LocalEntryNotFoundError):
        return HubError("unreachable", f"{where}: {endpoint} could not be queried ({e}); check the network")
    if isinstance(e, HfHubHTTPError):
        return HubError("http", f"{where}: HTTP {status} from {endpoint}; retry later")
    return None


def remove_hub_file(path: Path) -> None:
    """Delete a cached Hub file: the snapshot link and the blob it points at."""
    blob = path.resolve()
    for p in {path, blob}:
        p.unlink(missing_ok=True)


def _remove_hub_incomplete(repo_id: str) -> None:
    """Delete the Hub client's partial blobs of a repository (an aborted transfer)."""
    from huggingface_hub import constants

    root = Path(_hf_cache() or constants.HF_HUB_CACHE)
    folder = root / ("models--" + repo_id.replace("/", "--")) / "blobs"
    for p in folder.glob("*.incomplete"):
        p.unlink(missing_ok=True)


def hub_download(
    repo_id: str,
    filename: str,
    revision: str | None,
    limits: DownloadLimits,
    *,
    refetch: str,
    where: str | None = None,
    **extra: Any,
) -> Path:
    """``hf_hub_download`` of one file within ``limits``, its failures as one :class:`HubError`.

    Args:
        repo_id / filename / revision: the file (revision None: the default branch).
        limits: byte bound, stall timeout and deadline (:func:`limits_for`).
        refetch: how to get the file into the cache, for the offline message.
        where: how messages name the file (default ``Hub ORG/NAME/FILE@REV``).
        **extra: further ``hf_hub_download`` arguments (``force_download``, ``library_name`` …).

    Returns:
        The path of the file in the Hub cache.

    Raises:
        HubError: ``kind`` offline, unreachable, not-found, unauthorised, too-large or http;
            the client's own exception is its ``__cause__``. Partial blobs are removed.
    """
    from huggingface_hub import constants

    offline = is_offline()
    # The client reads HF_HUB_OFFLINE once, at import, and its read timeout from a module constant at
    # each download: both are set for this call and put back after it, so that a later upload (or
    # any other client call in this process) does not inherit an offline mode that has been lifted.
    saved = constants.HF_HUB_OFFLINE, constants.HF_HUB_DOWNLOAD_TIMEOUT
    constants.HF_HUB_OFFLINE = offline
    if "HF_HUB_DOWNLOAD_TIMEOUT" not in os.environ:
        constants.HF_HUB_DOWNLOAD_TIMEOUT = limits.stall_s
    try:
        agent = {"library_name": "medzoo", "library_version": __version__, **extra}
        return _bounded_hub_download(repo_id, filename, revision, limits, refetch, where, offline, **agent)
    finally:
        constants.HF_HUB_OFFLINE, constants.HF_HUB_DOWNLOAD_TIMEOUT = saved


def _bounded_hub_download(
    repo_id: str,
    filename: str,
    revision: str | None,
    limits: DownloadLimits,
    refetch: str,
    where: str | None,
    offline: bool,
    **extra: Any,
) -> Path:
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.utils import tqdm as hf_tqdm

    endpoint = _endpoint()
    etag_timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or limits.stall_s)
    where = where or hub_label(repo_id, filename, revision)
    transfer = _Transfer(where, limits, HubError)
    try:
        if not offline and not extra.get("force_download") and _COMMIT_RE.match(revision or ""):
            from huggingface_hub import try_to_load_from_cache

            # A file of a commit never changes: once cached, no request at all (the client would
            # not make one either, but the HEAD below comes before it).
            cached = try_to_load_from_cache(repo_id, filename, cache_dir=_hf_cache(), revision=revision)
            if isinstance(cached, str):
                return Path(cached)
        if not offline and not extra.get("force_download"):
            # One HEAD without retries first: the client alone retries an endpoint that does not
            # answer for minutes (a 60 s timeout, 5 times), then reports it as "not cached".
            url = hf_hub_url(repo_id, filename, revision=revision, endpoint=endpoint)
            agent = {k: extra[k] for k in ("library_name", "library_version", "user_agent") if k in extra}
            meta = get_hf_file_metadata(url, timeout=etag_timeout, endpoint=endpoint, **agent)
            transfer.announce(meta.size)

        class _Bounded(hf_tqdm):  # the client reports every chunk here: the byte bound and deadline
            def update(self, n: float | None = 1) -> bool | None:
                transfer.seen(transfer.received + int(n or 0))
                return super().update(n)

        path = hf_hub_download(
            repo_id=repo_id,
            filename=filename,
            revision=revision,
            endpoint=endpoint,
            cache_dir=_hf_cache(),
            local_files_only=offline,
            etag_timeout=etag_timeout,
            tqdm_class=_Bounded,
            **extra,
        )
        return Path(path)
    except HubError:
        _remove_hub_incomplete(repo_id)
        raise
    except Exception as e:
        err = _hub_error(e, where, limits.stall_s, refetch)
        if err is None:
            raise
        _remove_hub_incomplete(repo_id)
        raise err from e


# ----------------------------------------------------------------------- hf-hub: ids


def _id_error(e: HubError, repo_id: str, revision: str | None) -> WeightsUnavailableError:
    """The message of a ``hf-hub:`` id for a repository or revision the Hub does not have."""
    missing = e.missing
    if missing == "repository":
        return WeightsUnavailableError(f"hf-hub:{repo_id}: no such repository on the Hub (or no access)")
    if missing == "revision":
        return WeightsUnavailableError(f"hf-hub:{repo_id}: the repository has no revision {revision!r}")
    return e


def fetch_config(hub_id: str) -> tuple[str, str | None, str, Path]:
    """``(repo_id, revision, commit, config file)`` of a Hub id: ``config.json`` only (bounded), no weights.

    The file is read and checked by :func:`zoo.runconfig.read_config`; this module only fetches.

    Raises:
        ValueError: the repository has no ``config.json`` (not a medzoo repository).
        WeightsUnavailableError: no such repository or revision; HubError for the rest.
    """
    repo_id, revision = parse_hub_id(hub_id)
    try:
        cfg = request_config(repo_id, revision, refetch="load it once while online")
    except HubError as e:
        raise _id_error(e, repo_id, revision) from e
    if cfg.path is None or cfg.commit is None:
        at = f"@{revision}" if revision else ""
        raise ValueError(
            f"hf-hub:{repo_id}{at} is not a medzoo repository: it has no config.json (model name, arguments "
            "and preprocessing); a medzoo repository holds config.json and model.safetensors, as "
            "`zoo publish` writes them"
        )
    return repo_id, revision, cfg.commit, cfg.path


def fetch_weights(repo_id: str, commit: str, max_bytes: int) -> Path:
    """``model.safetensors`` of a medzoo repository at ``commit`` (the one its config came from),
    at most ``max_bytes`` (the caller's bound from the model the config describes)."""
    where = f"hf-hub:{repo_id}@{commit} model.safetensors"
    try:
        return hub_download(
            repo_id,
            "model.safetensors",
            commit,
            limits_for(max_bytes),
            refetch="load it once while online",
            where=where,
        )
    except HubError as e:
        if e.kind == "not-found":
            raise ValueError(
                f"hf-hub:{repo_id}@{commit} is not a medzoo repository: it has no model.safetensors (the "
                "weights); a medzoo repository holds config.json and model.safetensors, as `zoo publish` "
                "writes them"
            ) from e
        raise
